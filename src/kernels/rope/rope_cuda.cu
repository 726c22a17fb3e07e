#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/rope/rope_cuda.h"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {
// One thread per rotated pair (row, position, i); grid-stride.
template <class T>
__global__ void rotary_embedding_kernel(const T* x, T* out, const float* cos_table, const float* sin_table,
                                        int64_t rows, int64_t length, int64_t head_dim, float sign) {
  const int64_t half = head_dim / 2, pairs = rows * length * half;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p % half, row_position = p / half, m = row_position % length;
    const int64_t at = row_position * head_dim + i;
    const float c = cos_table[m * half + i], s = sign * sin_table[m * half + i];
    const float x1 = static_cast<float>(x[at]), x2 = static_cast<float>(x[at + half]);
    out[at] = static_cast<T>(x1 * c - x2 * s);
    out[at + half] = static_cast<T>(x2 * c + x1 * s);
  }
}

template <class T>
void launch(const void* x, void* out, const float* cos_table, const float* sin_table, int64_t rows, int64_t length,
            int64_t head_dim, bool inverse) {
  const int64_t pairs = rows * length * (head_dim / 2);
  const int blocks = static_cast<int>(std::min<int64_t>((pairs + 255) / 256, 65536));
  rotary_embedding_kernel<T><<<blocks, 256, 0, cuda::stream()>>>(static_cast<const T*>(x), static_cast<T*>(out),
                                                                  cos_table, sin_table, rows, length, head_dim,
                                                                  inverse ? -1.0f : 1.0f);
  STRATA_CUDA_CHECK_LAUNCH("rotary_embedding_kernel");
}
}  // namespace

bool rotary_embedding_cuda(DType dtype, const void* x, void* out, const float* cos_table, const float* sin_table,
                           int64_t rows, int64_t length, int64_t head_dim, bool inverse) {
  if (rows * length * head_dim == 0) return true;
  switch (dtype) {
    case DType::Float32: launch<float>(x, out, cos_table, sin_table, rows, length, head_dim, inverse); return true;
    case DType::BFloat16:
      launch<__nv_bfloat16>(x, out, cos_table, sin_table, rows, length, head_dim, inverse);
      return true;
    default: return false;
  }
}

}  // namespace strata::kernels
