// Raw launcher of the rotary-embedding kernel (nvcc-safe: no Tensor, no fmt).
// x, out: (rows, length, head_dim) contiguous; cos_table, sin_table: (length,
// head_dim / 2) float32. Pair i of position m: out1 = x1 c - s x2, out2 = x2 c + s x1
// with s = sin, or s = -sin when `inverse` (the transposed rotation, the backward).
// float32 and bfloat16 (float32 arithmetic); returns false for other dtypes.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {
bool rotary_embedding_cuda(DType dtype, const void* x, void* out, const float* cos_table, const float* sin_table,
                           int64_t rows, int64_t length, int64_t head_dim, bool inverse);
}  // namespace strata::kernels
