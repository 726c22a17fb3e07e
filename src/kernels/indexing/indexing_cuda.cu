// One thread per element of the result (index_select, gather) or of the source
// (index_add, scatter_add), in a grid-stride loop. Consecutive threads take
// consecutive `i`, so reads and writes of the inner dim are coalesced.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/indexing/indexing_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8)); }

__device__ __forceinline__ bool in_range(int64_t value, int64_t n, int64_t* error) {
  if (value >= 0 && value < n) return true;
  error[1] = value;
  error[0] = 1;
  return false;
}

template <class T>
__global__ void index_select_kernel(const T* a, const int64_t* index, T* out, int64_t outer, int64_t n, int64_t k,
                                    int64_t inner, int64_t* error) {
  int64_t total = outer * k * inner;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t i = p % inner, j = (p / inner) % k, o = p / (inner * k);
    int64_t row = index[j];
    out[p] = in_range(row, n, error) ? a[(o * n + row) * inner + i] : T(0.0f);
  }
}

template <class T>
__global__ void gather_kernel(const T* a, const int64_t* index, T* out, int64_t outer, int64_t n, int64_t k,
                              int64_t inner, int64_t* error) {
  int64_t total = outer * k * inner;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t i = p % inner, o = p / (inner * k);
    int64_t row = index[p];
    out[p] = in_range(row, n, error) ? a[(o * n + row) * inner + i] : T(0.0f);
  }
}

// Elementwise index (scatter_add) or one index per j (index_add).
template <class T, bool kPerElementIndex>
__global__ void scatter_add_kernel(const T* src, const int64_t* index, float* accumulator, int64_t outer, int64_t n,
                                   int64_t k, int64_t inner, int64_t* error) {
  int64_t total = outer * k * inner;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t i = p % inner, j = (p / inner) % k, o = p / (inner * k);
    int64_t row = kPerElementIndex ? index[p] : index[j];
    if (in_range(row, n, error)) atomicAdd(accumulator + (o * n + row) * inner + i, to_float(src[p]));
  }
}

template <class T>
void launch_index_select(const void* a, const int64_t* index, void* out, int64_t outer, int64_t n, int64_t k,
                         int64_t inner, int64_t* error) {
  index_select_kernel<T><<<blocks_for(outer * k * inner), kThreads, 0, cuda::stream()>>>(
      static_cast<const T*>(a), index, static_cast<T*>(out), outer, n, k, inner, error);
  STRATA_CUDA_CHECK_LAUNCH("index_select_kernel");
}

template <class T>
void launch_gather(const void* a, const int64_t* index, void* out, int64_t outer, int64_t n, int64_t k, int64_t inner,
                   int64_t* error) {
  gather_kernel<T><<<blocks_for(outer * k * inner), kThreads, 0, cuda::stream()>>>(
      static_cast<const T*>(a), index, static_cast<T*>(out), outer, n, k, inner, error);
  STRATA_CUDA_CHECK_LAUNCH("gather_kernel");
}

template <class T, bool kPerElementIndex>
void launch_scatter_add(const void* src, const int64_t* index, float* accumulator, int64_t outer, int64_t n, int64_t k,
                        int64_t inner, int64_t* error) {
  scatter_add_kernel<T, kPerElementIndex><<<blocks_for(outer * k * inner), kThreads, 0, cuda::stream()>>>(
      static_cast<const T*>(src), index, accumulator, outer, n, k, inner, error);
  STRATA_CUDA_CHECK_LAUNCH("scatter_add_kernel");
}

}  // namespace

bool index_select_cuda(DType dtype, const void* a, const int64_t* index, void* out, int64_t outer, int64_t n,
                       int64_t k, int64_t inner, int64_t* error) {
  if (outer * k * inner == 0) return dtype == DType::Float32 || dtype == DType::BFloat16;
  switch (dtype) {
    case DType::Float32: launch_index_select<float>(a, index, out, outer, n, k, inner, error); return true;
    case DType::BFloat16: launch_index_select<__nv_bfloat16>(a, index, out, outer, n, k, inner, error); return true;
    default: return false;
  }
}

bool gather_cuda(DType dtype, const void* a, const int64_t* index, void* out, int64_t outer, int64_t n, int64_t k,
                 int64_t inner, int64_t* error) {
  if (outer * k * inner == 0) return dtype == DType::Float32 || dtype == DType::BFloat16;
  switch (dtype) {
    case DType::Float32: launch_gather<float>(a, index, out, outer, n, k, inner, error); return true;
    case DType::BFloat16: launch_gather<__nv_bfloat16>(a, index, out, outer, n, k, inner, error); return true;
    default: return false;
  }
}

bool index_add_cuda(DType source_dtype, const void* src, const int64_t* index, float* accumulator, int64_t outer,
                    int64_t n, int64_t k, int64_t inner, int64_t* error) {
  if (outer * k * inner == 0) return source_dtype == DType::Float32 || source_dtype == DType::BFloat16;
  switch (source_dtype) {
    case DType::Float32:
      launch_scatter_add<float, false>(src, index, accumulator, outer, n, k, inner, error);
      return true;
    case DType::BFloat16:
      launch_scatter_add<__nv_bfloat16, false>(src, index, accumulator, outer, n, k, inner, error);
      return true;
    default: return false;
  }
}

bool scatter_add_cuda(DType source_dtype, const void* src, const int64_t* index, float* accumulator, int64_t outer,
                      int64_t n, int64_t k, int64_t inner, int64_t* error) {
  if (outer * k * inner == 0) return source_dtype == DType::Float32 || source_dtype == DType::BFloat16;
  switch (source_dtype) {
    case DType::Float32:
      launch_scatter_add<float, true>(src, index, accumulator, outer, n, k, inner, error);
      return true;
    case DType::BFloat16:
      launch_scatter_add<__nv_bfloat16, true>(src, index, accumulator, outer, n, k, inner, error);
      return true;
    default: return false;
  }
}

}  // namespace strata::kernels
