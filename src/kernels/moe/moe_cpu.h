// CPU reference kernels of mixture-of-experts routing (no Tensor): top-k selection,
// the sort-based permutation of tokens into expert order, and the row moves of
// dispatch and combine. Raw contiguous pointers; T is float or double.
//
// Vocabulary shared with moe_cuda.h and ops/moe.cpp: token t chooses top_k experts;
// its j-th choice is the assignment a = t * top_k + j. The permutation lists the kept
// assignments grouped by expert (expert 0 first) and, within an expert, in increasing
// a (so in token order): `sorted_assignment[row] = a` and `assignment_row[a] = row`
// (-1 for a dropped assignment). Expert e owns rows [offsets[e], offsets[e + 1]).
#pragma once

#include <cstdint>

namespace strata::kernels {

// For each of `rows` rows of `values` (rows, n): the indices of its k largest values,
// largest first; equal values are taken lower index first, and NaN ranks as -inf.
// indices: (rows, k) int32; 1 <= k <= n.
template <class T>
void topk_cpu(const T* values, int64_t rows, int64_t n, int64_t k, int32_t* indices);

// Stable counting sort of the assignments by expert. expert_of_assignment:
// (assignments) int32 in [0, experts). capacity > 0: an expert keeps its first
// `capacity` assignments in token order and drops the rest; capacity <= 0: none is
// dropped. Writes offsets (experts + 1), kept_per_expert (experts), assignment_row
// (assignments), dropped (assignments) and the first offsets[experts] entries of
// sorted_assignment (room for `assignments`).
void moe_permutation_cpu(const int32_t* expert_of_assignment, int64_t assignments, int64_t experts, int64_t capacity,
                         int64_t* offsets, int64_t* kept_per_expert, int32_t* sorted_assignment,
                         int32_t* assignment_row, bool* dropped);

// out[r, :] = scale[a] * source[a / top_k, :] with a = sorted_assignment[r], for r <
// rows; scale null means 1. source (tokens, dim), out (rows, dim). Dispatch, and the
// expert-output gradient of combine (scale = the routing weights).
template <class T>
void moe_gather_rows_cpu(const T* source, const int32_t* sorted_assignment, const T* scale, int64_t rows,
                         int64_t top_k, int64_t dim, T* out);

// out[t, :] = sum over j with row = row_of[t * top_k + j] >= 0 of
// weights[t * top_k + j] * source[row, :] (weights null means 1); a token with no
// row gets zeros. source (source_rows, dim), out (tokens, dim). Combine, the
// gradient of dispatch (weights null) and the product-key value bag.
template <class T>
void moe_combine_rows_cpu(const T* source, const int32_t* row_of, const T* weights, int64_t tokens, int64_t top_k,
                          int64_t dim, T* out);

// grad_weights[t * top_k + j] = <grad_out[t, :], source[row, :]> for row = row_of[...]
// >= 0, else 0: the gradient of combine with respect to its weights.
template <class T>
void moe_combine_weight_grad_cpu(const T* grad_out, const T* source, const int32_t* row_of, int64_t tokens,
                                 int64_t top_k, int64_t dim, T* grad_weights);

}  // namespace strata::kernels
