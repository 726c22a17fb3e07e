// Raw CUDA launchers of mixture-of-experts routing (nvcc-safe: no Tensor, no fmt).
// Same contracts as moe_cpu.h (read its vocabulary first); all pointers are
// contiguous device memory. `dtype` is that of the activations, float32 or bfloat16
// (each launcher returns false for any other); scales and routing weights are
// float32, and every sum accumulates in float32.
//
// top-k: one warp per row. Round j takes the warp's maximum among the values ranked
// strictly below the pick of round j - 1 (value descending, then index ascending),
// so no per-row "taken" set is kept: k rounds over the row, no shared memory.
//
// Permutation: a deterministic stable counting sort in four small launches, with
// no floating point and no order-dependent atomics:
//   1. per block of 256 assignments: its histogram over experts (shared-memory
//      integer atomics: the counts do not depend on their order) and each
//      assignment's rank among the earlier ones of its expert in the block;
//   2. one warp per expert: exclusive prefix sums of the block histograms over
//      blocks (the expert's rows before each block) and the expert's total;
//   3. one thread: capacity clamp and expert offsets (experts is small);
//   4. per assignment: position = block base + rank; kept when under capacity;
//      row = offsets[expert] + position.
// Rows moves (gather, combine, weight gradient) read and write each row once, so
// they are deterministic as well: dispatch's gradient is a combine, not a scatter.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

// Shared memory of the histogram launch holds one counter per expert.
constexpr int64_t kMoeCudaMaxExperts = 8192;

bool topk_cuda(DType dtype, const void* values, int64_t rows, int64_t n, int64_t k, int32_t* indices);

// int32 elements of scratch memory moe_permutation_cuda needs.
int64_t moe_permutation_cuda_workspace(int64_t assignments, int64_t experts);
void moe_permutation_cuda(const int32_t* expert_of_assignment, int64_t assignments, int64_t experts, int64_t capacity,
                          int64_t* offsets, int64_t* kept_per_expert, int32_t* sorted_assignment,
                          int32_t* assignment_row, bool* dropped, int32_t* workspace);

bool moe_gather_rows_cuda(DType dtype, const void* source, const int32_t* sorted_assignment, const float* scale,
                          int64_t rows, int64_t top_k, int64_t dim, void* out);
bool moe_combine_rows_cuda(DType dtype, const void* source, const int32_t* row_of, const float* weights,
                           int64_t tokens, int64_t top_k, int64_t dim, void* out);
bool moe_combine_weight_grad_cuda(DType dtype, const void* grad_out, const void* source, const int32_t* row_of,
                                  int64_t tokens, int64_t top_k, int64_t dim, float* grad_weights);

}  // namespace strata::kernels
