#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/accumulate/accumulate_cuda.h"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {
// Accumulates in float32 (float64 for double) and rounds once.
template <class T, class Accumulator>
__global__ void accumulate_kernel(T* destination, const T* source, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    destination[i] = static_cast<T>(static_cast<Accumulator>(destination[i]) + static_cast<Accumulator>(source[i]));
}

template <class T, class Accumulator>
void launch(void* destination, const void* source, int64_t n) {
  int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 4096));
  accumulate_kernel<T, Accumulator><<<blocks, 256, 0, cuda::stream()>>>(static_cast<T*>(destination),
                                                                       static_cast<const T*>(source), n);
  STRATA_CUDA_CHECK_LAUNCH("accumulate_kernel");
}
}  // namespace

bool accumulate_cuda(DType dtype, void* destination, const void* source, int64_t n) {
  if (n == 0) return true;
  switch (dtype) {
    case DType::Float32: launch<float, float>(destination, source, n); return true;
    case DType::Float64: launch<double, double>(destination, source, n); return true;
    case DType::BFloat16: launch<__nv_bfloat16, float>(destination, source, n); return true;
    default: return false;
  }
}

}  // namespace strata::kernels
