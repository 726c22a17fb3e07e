// CPU reference kernels of the reduction family (float32 and float64, OpenMP).
// Every kernel sees its input as a dense (outer, reduce, inner) block and writes a
// dense (outer, inner) result; the op folds any reduction onto that form. Sums
// accumulate in double. Each returns false when the dtype is not supported.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

// out = scale * sum over the reduced axis.
bool sum_cpu(DType dtype, const void* in, void* out, int64_t outer, int64_t reduce, int64_t inner, double scale);
// values = max over the reduced axis (NaN wins); indices = position of its first occurrence.
bool max_cpu(DType dtype, const void* in, void* values, int64_t* indices, int64_t outer, int64_t reduce,
             int64_t inner);
// out = log(sum(exp(x))), computed as m + log(sum(exp(x - m))) with m the maximum.
bool logsumexp_cpu(DType dtype, const void* in, void* out, int64_t outer, int64_t reduce, int64_t inner);
// grad_in (outer, reduce, inner) = grad_out at the position indices names, zero elsewhere.
bool max_backward_cpu(DType dtype, const void* grad_out, const int64_t* indices, void* grad_in, int64_t outer,
                      int64_t reduce, int64_t inner);

}  // namespace strata::kernels
