// Raw CUDA launchers of the reduction family (nvcc-safe: no Tensor, no fmt).
// Inputs are dense (outer, reduce, inner) blocks, outputs dense (outer, inner);
// float32 and bfloat16 storage with float32 accumulation. Each returns false when
// the dtype (pair) is not supported.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

// Floats of scratch memory sum_cuda needs for this problem (0 when it runs in one pass).
int64_t sum_cuda_workspace(int64_t outer, int64_t reduce, int64_t inner);
// out = scale * sum over the reduced axis. (in, out) dtypes: float32 or bfloat16 each.
bool sum_cuda(DType in_dtype, const void* in, DType out_dtype, void* out, int64_t outer, int64_t reduce,
              int64_t inner, double scale, float* workspace);
// values = max over the reduced axis (NaN wins); indices = position of its first occurrence.
bool max_cuda(DType dtype, const void* in, void* values, int64_t* indices, int64_t outer, int64_t reduce,
              int64_t inner);
// out = log(sum(exp(x))) over the reduced axis. (in, out) dtypes: float32 -> float32,
// bfloat16 -> bfloat16 or float32 (the float32 result keeps what the backward needs).
bool logsumexp_cuda(DType in_dtype, const void* in, DType out_dtype, void* out, int64_t outer, int64_t reduce,
                    int64_t inner);
// grad_in (outer, reduce, inner) = grad_out at the position indices names, zero elsewhere.
bool max_backward_cuda(DType dtype, const void* grad_out, const int64_t* indices, void* grad_in, int64_t outer,
                       int64_t reduce, int64_t inner);

}  // namespace strata::kernels
