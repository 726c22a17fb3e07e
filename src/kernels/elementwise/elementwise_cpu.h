// CPU reference kernels of the element-wise family (float32 and float64, OpenMP).
// Each returns false when the dtype is not supported; `out` is dense.
#pragma once

#include "kernels/elementwise/elementwise_math.h"
#include "strata/core/dtype.h"

namespace strata::kernels {

bool unary_cpu(UnaryOp op, DType dtype, void* out, const void* in, const ElementwiseLayout& layout, double scalar);
bool binary_cpu(BinaryOp op, DType dtype, void* out, const void* a, const void* b, const ElementwiseLayout& layout,
                double scalar);
// out = mask ? value : a, with the mask (bool or uint8, one byte per element) as input 1.
bool masked_fill_cpu(DType dtype, void* out, const void* a, const uint8_t* mask, const ElementwiseLayout& layout,
                     double value);

}  // namespace strata::kernels
