// CPU reference kernels of the product-key memory (Lample et al., "Large Memory
// Layers with Product Keys", 2019) that the generic ops do not cover (no Tensor).
// The lookup itself is composed in ops/moe.cpp: sub-key scores by matmul, top-k per
// half (kernels/moe), top-k of the k x k candidate sums, softmax, and a weighted bag
// of value rows (the combine kernel of kernels/moe). What is left is the index
// arithmetic and the sparse value gradient.
#pragma once

#include <cstdint>

namespace strata::kernels {

// For token t and pick j: with c = best[t, j] an index into the k x k candidate grid
// (row i = c / k from half 1's list, column c % k from half 2's), value_index[t, j] =
// first[t, i] * n_keys + second[t, c % k]. first, second, best, value_index:
// (tokens, k) int32.
void product_key_value_indices_cpu(const int32_t* first, const int32_t* second, const int32_t* best, int64_t tokens,
                                   int64_t k, int64_t n_keys, int32_t* value_index);

// grad_values[value_index[t, j], :] += weights[t, j] * grad_out[t, :]: only the rows
// the batch read receive gradient. grad_out (tokens, dim); grad_values (values, dim)
// holds zeros (or earlier sums) on entry. The columns are split among the threads,
// and each adds its pairs in (t, j) order, so the result does not depend on them.
template <class T>
void product_key_value_grad_cpu(const T* grad_out, const int32_t* value_index, const T* weights, int64_t tokens,
                                int64_t k, int64_t dim, T* grad_values);

}  // namespace strata::kernels
