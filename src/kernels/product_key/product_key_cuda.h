// Raw CUDA launchers of the product-key memory's own kernels (nvcc-safe: no Tensor,
// no fmt); contracts as in product_key_cpu.h, contiguous device pointers.
//
// The value gradient adds each (token, pick) row into a float32 buffer with
// atomicAdd (one block per token, threads over the columns): a bfloat16 table gets
// the buffer rounded once by the caller, and the order in which two tokens that
// picked the same value are added, so the last bit of that row, depends on
// scheduling (as for ops::embedding).
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

void product_key_value_indices_cuda(const int32_t* first, const int32_t* second, const int32_t* best, int64_t tokens,
                                    int64_t k, int64_t n_keys, int32_t* value_index);

// grad_dtype: float32 or bfloat16 (false for any other); weights float32.
bool product_key_value_grad_cuda(DType grad_dtype, const void* grad_out, const int32_t* value_index,
                                 const float* weights, int64_t tokens, int64_t k, int64_t dim, float* grad_values);

}  // namespace strata::kernels
