// CPU reference of the rotary-embedding kernel (float32 with float tables, float64
// with double tables); the layout is that of rope_cuda.h.
#include "kernels/rope/rope_cpu.h"

namespace strata::kernels {

template <class T>
void rotary_embedding_cpu(const T* x, T* out, const T* cos_table, const T* sin_table, int64_t rows, int64_t length,
                          int64_t head_dim, bool inverse) {
  const int64_t half = head_dim / 2;
  const T sign = inverse ? T(-1) : T(1);
#pragma omp parallel for collapse(2) if (rows * length * head_dim > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t m = 0; m < length; ++m) {
      const int64_t at = (r * length + m) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const T c = cos_table[m * half + i], s = sign * sin_table[m * half + i];
        const T x1 = x[at + i], x2 = x[at + half + i];
        out[at + i] = x1 * c - x2 * s;
        out[at + half + i] = x2 * c + x1 * s;
      }
    }
  }
}

template void rotary_embedding_cpu<float>(const float*, float*, const float*, const float*, int64_t, int64_t, int64_t,
                                          bool);
template void rotary_embedding_cpu<double>(const double*, double*, const double*, const double*, int64_t, int64_t,
                                           int64_t, bool);

}  // namespace strata::kernels
