// Raw launcher (nvcc-safe: no Tensor, no fmt). float32, float64 and bfloat16.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {
// Returns false when the dtype is not supported.
bool accumulate_cuda(DType dtype, void* destination, const void* source, int64_t n);
}  // namespace strata::kernels
