// CPU reference: OpenMP over rows; the per-row losses are added in row order
// afterwards, so the loss does not depend on the thread count.
#include "kernels/cross_entropy/cross_entropy_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace strata::kernels {

namespace {
constexpr int64_t kParallelThreshold = 32768;
}  // namespace

template <class Index>
int64_t first_invalid_target_cpu(const Index* targets, int64_t rows, int64_t classes, int64_t ignore_index) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t target = targets[r];
    if (target != ignore_index && (target < 0 || target >= classes)) return r;
  }
  return -1;
}

template <class T, class Index>
void cross_entropy_forward_cpu(const T* logits, const Index* targets, int64_t rows, int64_t classes,
                               int64_t ignore_index, T* row_logsumexp, T* loss, T* count) {
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
#pragma omp parallel for if (rows * classes > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    row_logsumexp[r] = T(0);
    if (targets[r] == ignore_index) continue;
    const T* in = logits + r * classes;
    double maximum = -INFINITY;
    for (int64_t c = 0; c < classes; ++c) maximum = std::max(maximum, static_cast<double>(in[c]));
    double total = 0.0;
    for (int64_t c = 0; c < classes; ++c) total += std::exp(in[c] - maximum);
    const double logsumexp = maximum + std::log(total);
    row_logsumexp[r] = static_cast<T>(logsumexp);
    row_loss[r] = logsumexp - in[targets[r]];
  }
  double sum = 0.0;
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] == ignore_index) continue;
    sum += row_loss[r];
    ++counted;
  }
  *loss = static_cast<T>(counted > 0 ? sum / static_cast<double>(counted) : 0.0);
  *count = static_cast<T>(counted);
}

template <class T, class Index>
void cross_entropy_backward_cpu(const T* logits, const Index* targets, const T* row_logsumexp, int64_t rows,
                                int64_t classes, int64_t ignore_index, double scale, T* dlogits) {
#pragma omp parallel for if (rows * classes > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = logits + r * classes;
    T* out = dlogits + r * classes;
    if (targets[r] == ignore_index) {
      std::fill(out, out + classes, T(0));
      continue;
    }
    for (int64_t c = 0; c < classes; ++c) {
      const double probability = std::exp(static_cast<double>(in[c]) - row_logsumexp[r]);
      out[c] = static_cast<T>((probability - (c == targets[r] ? 1.0 : 0.0)) * scale);
    }
  }
}

#define STRATA_INSTANTIATE(T, Index)                                                                          \
  template void cross_entropy_forward_cpu<T, Index>(const T*, const Index*, int64_t, int64_t, int64_t, T*, T*, \
                                                    T*);                                                       \
  template void cross_entropy_backward_cpu<T, Index>(const T*, const Index*, const T*, int64_t, int64_t,       \
                                                     int64_t, double, T*);
STRATA_INSTANTIATE(float, int32_t)
STRATA_INSTANTIATE(float, int64_t)
STRATA_INSTANTIATE(double, int32_t)
STRATA_INSTANTIATE(double, int64_t)
#undef STRATA_INSTANTIATE
template int64_t first_invalid_target_cpu<int32_t>(const int32_t*, int64_t, int64_t, int64_t);
template int64_t first_invalid_target_cpu<int64_t>(const int64_t*, int64_t, int64_t, int64_t);

}  // namespace strata::kernels
