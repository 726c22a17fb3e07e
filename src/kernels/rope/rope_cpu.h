// CPU reference of the rotary-embedding kernel; the layout and formula are those
// of rope_cuda.h, with tables in the element type.
#pragma once

#include <cstdint>

namespace strata::kernels {
template <class T>
void rotary_embedding_cpu(const T* x, T* out, const T* cos_table, const T* sin_table, int64_t rows, int64_t length,
                          int64_t head_dim, bool inverse);
}  // namespace strata::kernels
