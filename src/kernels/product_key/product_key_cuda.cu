#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/product_key/product_key_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxBlocks = 65535 * 8;

__global__ void value_indices_kernel(const int32_t* first, const int32_t* second, const int32_t* best,
                                     int64_t picks, int64_t k, int64_t n_keys, int32_t* value_index) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < picks;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = p / k * k, candidate = best[p];
    value_index[p] = static_cast<int32_t>(first[row + candidate / k] * n_keys + second[row + candidate % k]);
  }
}

template <class T>
__global__ void value_grad_kernel(const T* grad_out, const int32_t* value_index, const float* weights, int64_t tokens,
                                  int64_t k, int64_t dim, float* grad_values) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const T* from = grad_out + t * dim;
    for (int64_t j = 0; j < k; ++j) {
      const float weight = weights[t * k + j];
      float* to = grad_values + static_cast<int64_t>(value_index[t * k + j]) * dim;
      for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) atomicAdd(to + c, weight * to_float(from[c]));
    }
  }
}

int blocks_for(int64_t items, int64_t per_block) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((items + per_block - 1) / per_block, kMaxBlocks)));
}

}  // namespace

void product_key_value_indices_cuda(const int32_t* first, const int32_t* second, const int32_t* best, int64_t tokens,
                                    int64_t k, int64_t n_keys, int32_t* value_index) {
  const int64_t picks = tokens * k;
  if (picks == 0) return;
  value_indices_kernel<<<blocks_for(picks, kThreads), kThreads, 0, cuda::stream()>>>(first, second, best, picks, k,
                                                                                     n_keys, value_index);
  STRATA_CUDA_CHECK_LAUNCH("value_indices_kernel");
}

bool product_key_value_grad_cuda(DType grad_dtype, const void* grad_out, const int32_t* value_index,
                                 const float* weights, int64_t tokens, int64_t k, int64_t dim, float* grad_values) {
  if (grad_dtype != DType::Float32 && grad_dtype != DType::BFloat16) return false;
  if (tokens == 0 || k == 0 || dim == 0) return true;
  const int blocks = blocks_for(tokens, 1);
  if (grad_dtype == DType::Float32) {
    value_grad_kernel<float><<<blocks, kThreads, 0, cuda::stream()>>>(static_cast<const float*>(grad_out), value_index,
                                                                      weights, tokens, k, dim, grad_values);
  } else {
    value_grad_kernel<__nv_bfloat16><<<blocks, kThreads, 0, cuda::stream()>>>(
        static_cast<const __nv_bfloat16*>(grad_out), value_index, weights, tokens, k, dim, grad_values);
  }
  STRATA_CUDA_CHECK_LAUNCH("value_grad_kernel");
  return true;
}

}  // namespace strata::kernels
