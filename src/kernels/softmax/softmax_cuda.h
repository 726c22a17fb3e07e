// Raw CUDA launchers of the fused softmax and log-softmax (nvcc-safe: no Tensor,
// no fmt). Tensors are contiguous and viewed as (outer, dim, inner); the softmax
// runs over `dim`. float32 and bfloat16, float32 arithmetic. dim < 2^31.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

// Return false when the dtype is not supported.
bool softmax_forward_cuda(DType dtype, const void* x, void* y, int64_t outer, int64_t dim, int64_t inner, bool log);
bool softmax_backward_cuda(DType dtype, const void* y, const void* dy, void* dx, int64_t outer, int64_t dim,
                           int64_t inner, bool log);

}  // namespace strata::kernels
