#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/moe/moe_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;
constexpr int kRowThreads = 128;
constexpr int kPermutationBlock = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;

int grid_for(int64_t items, int64_t per_block) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((items + per_block - 1) / per_block, kMaxBlocks)));
}

// ---- top-k ----------------------------------------------------------------------

// Whether (key_a, index_a) ranks above (key_b, index_b): larger key, then lower index.
__device__ __forceinline__ bool ranks_above(float key_a, int index_a, float key_b, int index_b) {
  return key_a > key_b || (key_a == key_b && index_a < index_b);
}

template <class T>
__global__ void topk_kernel(const T* values, int64_t rows, int64_t n, int64_t k, int32_t* indices) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  for (int64_t r = blockIdx.x * warps_per_block + threadIdx.x / kWarp; r < rows; r += gridDim.x * warps_per_block) {
    const T* row = values + r * n;
    float previous_key = INFINITY;  // (inf, -1) ranks above every element
    int previous_index = -1;
    for (int64_t j = 0; j < k; ++j) {
      float best_key = -INFINITY;  // (-inf, INT_MAX) ranks below every element
      int best_index = INT_MAX;
      for (int64_t c = lane; c < n; c += kWarp) {
        float key = to_float(row[c]);
        if (isnan(key)) key = -INFINITY;
        int index = static_cast<int>(c);
        if (ranks_above(previous_key, previous_index, key, index) && ranks_above(key, index, best_key, best_index)) {
          best_key = key;
          best_index = index;
        }
      }
      for (int offset = kWarp / 2; offset > 0; offset /= 2) {
        float other_key = __shfl_xor_sync(kFullMask, best_key, offset);
        int other_index = __shfl_xor_sync(kFullMask, best_index, offset);
        if (ranks_above(other_key, other_index, best_key, best_index)) {
          best_key = other_key;
          best_index = other_index;
        }
      }
      if (lane == 0) indices[r * k + j] = best_index;
      previous_key = best_key;
      previous_index = best_index;
    }
  }
}

// ---- permutation ----------------------------------------------------------------

// Launch 1. Shared memory: experts counters, then the block's experts.
__global__ void permutation_count_kernel(const int32_t* expert_of, int64_t assignments, int64_t experts,
                                         int32_t* block_counts, int32_t* local_rank) {
  extern __shared__ int32_t shared[];
  int32_t* counts = shared;
  int32_t* block_experts = shared + experts;
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = 0;
  const int64_t a = blockIdx.x * static_cast<int64_t>(kPermutationBlock) + threadIdx.x;
  const int32_t expert = a < assignments ? expert_of[a] : -1;
  block_experts[threadIdx.x] = expert;
  __syncthreads();
  if (expert >= 0) {
    int32_t rank = 0;
    for (int i = 0; i < static_cast<int>(threadIdx.x); ++i) rank += block_experts[i] == expert;
    local_rank[a] = rank;
    atomicAdd(&counts[expert], 1);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) block_counts[blockIdx.x * experts + e] = counts[e];
}

// Launch 2: block_counts (blocks, experts) becomes the exclusive prefix over blocks;
// totals[e] the expert's assignment count.
__global__ void permutation_scan_kernel(int32_t* block_counts, int64_t blocks, int64_t experts, int64_t* totals) {
  const int lane = threadIdx.x % kWarp;
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (e >= experts) return;  // whole warps leave together
  int64_t running = 0;
  for (int64_t base = 0; base < blocks; base += kWarp) {
    const int64_t b = base + lane;
    const int32_t count = b < blocks ? block_counts[b * experts + e] : 0;
    int32_t inclusive = count;
    for (int offset = 1; offset < kWarp; offset *= 2) {
      int32_t below = __shfl_up_sync(kFullMask, inclusive, offset);
      if (lane >= offset) inclusive += below;
    }
    if (b < blocks) block_counts[b * experts + e] = static_cast<int32_t>(running + inclusive - count);
    running += __shfl_sync(kFullMask, inclusive, kWarp - 1);
  }
  if (lane == 0) totals[e] = running;
}

// Launch 3: kept counts (in place over the totals) and offsets.
__global__ void permutation_offsets_kernel(int64_t experts, int64_t capacity, int64_t* kept, int64_t* offsets) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  offsets[0] = 0;
  for (int64_t e = 0; e < experts; ++e) {
    if (capacity > 0 && kept[e] > capacity) kept[e] = capacity;
    offsets[e + 1] = offsets[e] + kept[e];
  }
}

// Launch 4.
__global__ void permutation_scatter_kernel(const int32_t* expert_of, int64_t assignments, int64_t experts,
                                           int64_t capacity, const int32_t* block_bases, const int32_t* local_rank,
                                           const int64_t* offsets, int32_t* sorted_assignment,
                                           int32_t* assignment_row, bool* dropped) {
  for (int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; a < assignments;
       a += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t expert = expert_of[a];
    const int64_t position = block_bases[(a / kPermutationBlock) * experts + expert] + local_rank[a];
    const bool kept = capacity <= 0 || position < capacity;
    const int32_t row = kept ? static_cast<int32_t>(offsets[expert] + position) : -1;
    dropped[a] = !kept;
    assignment_row[a] = row;
    if (kept) sorted_assignment[row] = static_cast<int32_t>(a);
  }
}

// ---- row moves ------------------------------------------------------------------

template <class T>
__global__ void gather_rows_kernel(const T* source, const int32_t* sorted_assignment, const float* scale,
                                   int64_t rows, int64_t top_k, int64_t dim, T* out) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t a = sorted_assignment[r];
    const T* from = source + (a / top_k) * dim;
    T* to = out + r * dim;
    if (scale == nullptr) {
      for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) to[c] = from[c];
    } else {
      const float factor = scale[a];
      for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) to[c] = from_float<T>(factor * to_float(from[c]));
    }
  }
}

template <class T>
__global__ void combine_rows_kernel(const T* source, const int32_t* row_of, const float* weights, int64_t tokens,
                                    int64_t top_k, int64_t dim, T* out) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
      float sum = 0.0f;
      for (int64_t j = 0; j < top_k; ++j) {
        const int64_t a = t * top_k + j;
        const int32_t row = row_of[a];
        if (row < 0) continue;
        sum += (weights ? weights[a] : 1.0f) * to_float(source[static_cast<int64_t>(row) * dim + c]);
      }
      out[t * dim + c] = from_float<T>(sum);
    }
  }
}

// One warp per assignment.
template <class T>
__global__ void combine_weight_grad_kernel(const T* grad_out, const T* source, const int32_t* row_of,
                                           int64_t assignments, int64_t top_k, int64_t dim, float* grad_weights) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  for (int64_t a = blockIdx.x * warps_per_block + threadIdx.x / kWarp; a < assignments;
       a += gridDim.x * warps_per_block) {
    const int32_t row = row_of[a];
    float dot = 0.0f;
    if (row >= 0) {
      const T* g = grad_out + (a / top_k) * dim;
      const T* s = source + static_cast<int64_t>(row) * dim;
      for (int64_t c = lane; c < dim; c += kWarp) dot += to_float(g[c]) * to_float(s[c]);
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(kFullMask, dot, offset);
    if (lane == 0) grad_weights[a] = dot;
  }
}

// Calls run(T{}) for the activation type of dtype; false for unsupported dtypes.
template <class Run>
bool with_activation_type(DType dtype, Run&& run) {
  if (dtype == DType::Float32) {
    run(float{});
    return true;
  }
  if (dtype == DType::BFloat16) {
    run(__nv_bfloat16{});
    return true;
  }
  return false;
}

}  // namespace

bool topk_cuda(DType dtype, const void* values, int64_t rows, int64_t n, int64_t k, int32_t* indices) {
  return with_activation_type(dtype, [&]<class T>(T) {
    if (rows == 0) return;
    topk_kernel<T><<<grid_for(rows, kRowThreads / kWarp), kRowThreads, 0, cuda::stream()>>>(
        static_cast<const T*>(values), rows, n, k, indices);
    STRATA_CUDA_CHECK_LAUNCH("topk_kernel");
  });
}

int64_t moe_permutation_cuda_workspace(int64_t assignments, int64_t experts) {
  const int64_t blocks = (assignments + kPermutationBlock - 1) / kPermutationBlock;
  return blocks * experts + assignments;
}

void moe_permutation_cuda(const int32_t* expert_of_assignment, int64_t assignments, int64_t experts, int64_t capacity,
                          int64_t* offsets, int64_t* kept_per_expert, int32_t* sorted_assignment,
                          int32_t* assignment_row, bool* dropped, int32_t* workspace) {
  const int64_t blocks = (assignments + kPermutationBlock - 1) / kPermutationBlock;
  int32_t* block_counts = workspace;  // (blocks, experts)
  int32_t* local_rank = workspace + blocks * experts;
  cudaStream_t stream = cuda::stream();
  if (blocks > 0) {
    const size_t shared_bytes = static_cast<size_t>(experts + kPermutationBlock) * sizeof(int32_t);
    permutation_count_kernel<<<static_cast<unsigned>(blocks), kPermutationBlock, shared_bytes, stream>>>(
        expert_of_assignment, assignments, experts, block_counts, local_rank);
    STRATA_CUDA_CHECK_LAUNCH("permutation_count_kernel");
  }
  const int warps_per_block = kRowThreads / kWarp;
  permutation_scan_kernel<<<static_cast<unsigned>((experts + warps_per_block - 1) / warps_per_block), kRowThreads, 0,
                            stream>>>(block_counts, blocks, experts, kept_per_expert);
  STRATA_CUDA_CHECK_LAUNCH("permutation_scan_kernel");
  permutation_offsets_kernel<<<1, 1, 0, stream>>>(experts, capacity, kept_per_expert, offsets);
  STRATA_CUDA_CHECK_LAUNCH("permutation_offsets_kernel");
  if (blocks > 0) {
    permutation_scatter_kernel<<<grid_for(assignments, kPermutationBlock), kPermutationBlock, 0, stream>>>(
        expert_of_assignment, assignments, experts, capacity, block_counts, local_rank, offsets, sorted_assignment,
        assignment_row, dropped);
    STRATA_CUDA_CHECK_LAUNCH("permutation_scatter_kernel");
  }
}

bool moe_gather_rows_cuda(DType dtype, const void* source, const int32_t* sorted_assignment, const float* scale,
                          int64_t rows, int64_t top_k, int64_t dim, void* out) {
  return with_activation_type(dtype, [&]<class T>(T) {
    if (rows == 0 || dim == 0) return;
    gather_rows_kernel<T><<<grid_for(rows, 1), kRowThreads, 0, cuda::stream()>>>(
        static_cast<const T*>(source), sorted_assignment, scale, rows, top_k, dim, static_cast<T*>(out));
    STRATA_CUDA_CHECK_LAUNCH("gather_rows_kernel");
  });
}

bool moe_combine_rows_cuda(DType dtype, const void* source, const int32_t* row_of, const float* weights,
                           int64_t tokens, int64_t top_k, int64_t dim, void* out) {
  return with_activation_type(dtype, [&]<class T>(T) {
    if (tokens == 0 || dim == 0) return;
    combine_rows_kernel<T><<<grid_for(tokens, 1), kRowThreads, 0, cuda::stream()>>>(
        static_cast<const T*>(source), row_of, weights, tokens, top_k, dim, static_cast<T*>(out));
    STRATA_CUDA_CHECK_LAUNCH("combine_rows_kernel");
  });
}

bool moe_combine_weight_grad_cuda(DType dtype, const void* grad_out, const void* source, const int32_t* row_of,
                                  int64_t tokens, int64_t top_k, int64_t dim, float* grad_weights) {
  return with_activation_type(dtype, [&]<class T>(T) {
    const int64_t assignments = tokens * top_k;
    if (assignments == 0) return;
    combine_weight_grad_kernel<T><<<grid_for(assignments, kRowThreads / kWarp), kRowThreads, 0, cuda::stream()>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(source), row_of, assignments, top_k, dim,
        grad_weights);
    STRATA_CUDA_CHECK_LAUNCH("combine_weight_grad_kernel");
  });
}

}  // namespace strata::kernels
