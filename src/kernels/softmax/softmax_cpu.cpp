// CPU reference: one (outer, inner) column at a time, accumulated in double,
// OpenMP over columns.
#include "kernels/softmax/softmax_cpu.h"

#include <algorithm>
#include <cmath>

namespace strata::kernels {

namespace {
// Work below this many elements stays on one thread.
constexpr int64_t kParallelThreshold = 32768;
}  // namespace

template <class T>
void softmax_forward_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log) {
#pragma omp parallel for collapse(2) if (outer * dim * inner > kParallelThreshold)
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      const T* in = x + o * dim * inner + i;
      T* out = y + o * dim * inner + i;
      double maximum = -INFINITY;
      for (int64_t k = 0; k < dim; ++k) maximum = std::max(maximum, static_cast<double>(in[k * inner]));
      double total = 0.0;
      for (int64_t k = 0; k < dim; ++k) total += std::exp(in[k * inner] - maximum);
      if (log) {
        const double log_total = std::log(total);
        for (int64_t k = 0; k < dim; ++k) out[k * inner] = static_cast<T>(in[k * inner] - maximum - log_total);
      } else {
        for (int64_t k = 0; k < dim; ++k) out[k * inner] = static_cast<T>(std::exp(in[k * inner] - maximum) / total);
      }
    }
  }
}

template <class T>
void softmax_backward_cpu(const T* y, const T* dy, T* dx, int64_t outer, int64_t dim, int64_t inner, bool log) {
#pragma omp parallel for collapse(2) if (outer * dim * inner > kParallelThreshold)
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      const int64_t base = o * dim * inner + i;
      double total = 0.0;  // softmax: sum(dy * y); log_softmax: sum(dy)
      for (int64_t k = 0; k < dim; ++k) {
        const int64_t at = base + k * inner;
        total += log ? static_cast<double>(dy[at]) : static_cast<double>(dy[at]) * y[at];
      }
      for (int64_t k = 0; k < dim; ++k) {
        const int64_t at = base + k * inner;
        dx[at] = static_cast<T>(log ? dy[at] - std::exp(static_cast<double>(y[at])) * total
                                    : y[at] * (dy[at] - total));
      }
    }
  }
}

template void softmax_forward_cpu<float>(const float*, float*, int64_t, int64_t, int64_t, bool);
template void softmax_forward_cpu<double>(const double*, double*, int64_t, int64_t, int64_t, bool);
template void softmax_backward_cpu<float>(const float*, const float*, float*, int64_t, int64_t, int64_t, bool);
template void softmax_backward_cpu<double>(const double*, const double*, double*, int64_t, int64_t, int64_t, bool);

}  // namespace strata::kernels
