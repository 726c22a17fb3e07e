// CPU reference of the embedding lookup. weight (vocab, dim), ids (tokens) int64
// already checked to lie in [0, vocab), all contiguous.
//
//   forward   out[t][c] = weight[ids[t]][c]                    out (tokens, dim)
//   backward  grad_weight[ids[t]][c] += grad_out[t][c]         grad_weight (vocab, dim), zeroed by the caller
//
// The backward walks the tokens in order, so repeated ids add up in a fixed order.
#pragma once

#include <cstdint>

namespace strata::kernels {

template <class T>
void embedding_forward_cpu(const T* weight, const int64_t* ids, T* out, int64_t tokens, int64_t dim);
template <class T>
void embedding_backward_cpu(const T* grad_out, const int64_t* ids, T* grad_weight, int64_t tokens, int64_t dim);

}  // namespace strata::kernels
