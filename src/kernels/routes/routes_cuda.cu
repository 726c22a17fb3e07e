// Route gather on CUDA: one thread per output element (grid-stride), consecutive
// threads on consecutive channels of a row, so a warp reads and writes contiguous
// runs of a row whatever the permutation; the table lookup is one int32 per row,
// served from L1/L2. A merge reads its K source rows in route order and adds them in
// float32. Bandwidth-bound: no shared memory, no atomics.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/routes/routes_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kThreads = 256;

template <class V>
__global__ void route_gather_kernel(RouteGatherSizes s, const V* src, const int32_t* index, V* out) {
  const int64_t C = s.channels, L = s.length;
  const int64_t total = (s.sum_routes ? s.batch : s.batch * s.routes) * L * C;
  for (int64_t element = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; element < total;
       element += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = element % C, row = element / C, t = row % L;
    if (s.sum_routes) {
      const int64_t b = row / L;
      float sum = 0.f;
      for (int64_t k = 0; k < s.routes; ++k) sum += to_float(src[((b * s.routes + k) * L + index[k * L + t]) * C + c]);
      out[element] = from_float<V>(sum);
    } else {
      const int64_t k = (row / L) % s.routes, b = row / L / s.routes;
      const int64_t source_row = (s.source_per_route ? b * s.routes + k : b) * L + index[k * L + t];
      out[element] = src[source_row * C + c];
    }
  }
}

template <class V>
void launch(const RouteGatherSizes& sizes, const void* src, const int32_t* index, void* out) {
  const int64_t total = (sizes.sum_routes ? sizes.batch : sizes.batch * sizes.routes) * sizes.length * sizes.channels;
  if (total == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65536));
  route_gather_kernel<V>
      <<<blocks, kThreads, 0, cuda::stream()>>>(sizes, static_cast<const V*>(src), index, static_cast<V*>(out));
  STRATA_CUDA_CHECK_LAUNCH("route_gather_kernel");
}

}  // namespace

bool route_gather_cuda(DType dtype, const RouteGatherSizes& sizes, const void* src, const int32_t* index, void* out) {
  switch (dtype) {
    case DType::Float32: launch<float>(sizes, src, index, out); return true;
    case DType::BFloat16: launch<__nv_bfloat16>(sizes, src, index, out); return true;
    default: return false;
  }
}

}  // namespace strata::kernels
