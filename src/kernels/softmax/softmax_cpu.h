// CPU reference of the fused softmax and log-softmax (no Tensor: raw pointers).
// The input is viewed as (outer, dim, inner), contiguous, and the softmax runs
// over `dim` for each (outer, inner) pair: inner == 1 is a softmax over the last
// dim, a row of `dim` consecutive elements.
#pragma once

#include <cstdint>

namespace strata::kernels {

// y = softmax(x) or log_softmax(x) over dim, max-subtracted so exp never overflows.
template <class T>
void softmax_forward_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log);

// dx from the saved output y:
//   softmax:     dx = y * (dy - sum(dy * y))
//   log_softmax: dx = dy - exp(y) * sum(dy)
template <class T>
void softmax_backward_cpu(const T* y, const T* dy, T* dx, int64_t outer, int64_t dim, int64_t inner, bool log);

}  // namespace strata::kernels
