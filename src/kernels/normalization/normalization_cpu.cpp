// CPU reference: loops that follow the equations in normalization_cpu.h, OpenMP
// over rows (and over columns for the parameter gradients, so no two threads
// add into one sum and the result does not depend on the thread count).
#include "kernels/normalization/normalization_cpu.h"

#include <cmath>

namespace strata::kernels {

namespace {

constexpr int64_t kParallelThreshold = 32768;

// dweight[c] = sum_r dy[r, c] * xhat[r, c], dbias[c] = sum_r dy[r, c], with
// xhat = (x - mean) * rstd (mean null: no centering).
template <class T>
void parameter_gradients(const T* dy, const T* x, const T* mean, const T* rstd, T* dweight, T* dbias, int64_t rows,
                         int64_t dim) {
  if (dweight == nullptr && dbias == nullptr) return;
#pragma omp parallel for if (rows * dim > kParallelThreshold)
  for (int64_t c = 0; c < dim; ++c) {
    double weight_sum = 0.0, bias_sum = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const double centered = mean ? static_cast<double>(x[r * dim + c]) - mean[r] : static_cast<double>(x[r * dim + c]);
      weight_sum += dy[r * dim + c] * centered * rstd[r];
      bias_sum += dy[r * dim + c];
    }
    if (dweight) dweight[c] = static_cast<T>(weight_sum);
    if (dbias) dbias[c] = static_cast<T>(bias_sum);
  }
}

}  // namespace

template <class T>
void layer_norm_forward_cpu(const T* x, const T* weight, const T* bias, T* y, T* mean, T* rstd, int64_t rows,
                            int64_t dim, double eps) {
#pragma omp parallel for if (rows * dim > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = x + r * dim;
    T* out = y + r * dim;
    double sum = 0.0;
    for (int64_t c = 0; c < dim; ++c) sum += in[c];
    const double row_mean = sum / static_cast<double>(dim);
    double squares = 0.0;
    for (int64_t c = 0; c < dim; ++c) squares += (in[c] - row_mean) * (in[c] - row_mean);
    const double row_rstd = 1.0 / std::sqrt(squares / static_cast<double>(dim) + eps);
    for (int64_t c = 0; c < dim; ++c) {
      double value = (in[c] - row_mean) * row_rstd;
      if (weight) value *= weight[c];
      if (bias) value += bias[c];
      out[c] = static_cast<T>(value);
    }
    mean[r] = static_cast<T>(row_mean);
    rstd[r] = static_cast<T>(row_rstd);
  }
}

template <class T>
void layer_norm_backward_cpu(const T* dy, const T* x, const T* weight, const T* mean, const T* rstd, T* dx,
                             T* dweight, T* dbias, int64_t rows, int64_t dim) {
#pragma omp parallel for if (rows * dim > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = x + r * dim;
    const T* grad = dy + r * dim;
    double sum_g = 0.0, sum_g_xhat = 0.0;
    for (int64_t c = 0; c < dim; ++c) {
      const double xhat = (in[c] - static_cast<double>(mean[r])) * rstd[r];
      const double g = weight ? static_cast<double>(grad[c]) * weight[c] : static_cast<double>(grad[c]);
      sum_g += g;
      sum_g_xhat += g * xhat;
    }
    const double mean_g = sum_g / static_cast<double>(dim), mean_g_xhat = sum_g_xhat / static_cast<double>(dim);
    for (int64_t c = 0; c < dim; ++c) {
      const double xhat = (in[c] - static_cast<double>(mean[r])) * rstd[r];
      const double g = weight ? static_cast<double>(grad[c]) * weight[c] : static_cast<double>(grad[c]);
      dx[r * dim + c] = static_cast<T>(rstd[r] * (g - mean_g - xhat * mean_g_xhat));
    }
  }
  parameter_gradients(dy, x, mean, rstd, dweight, dbias, rows, dim);
}

template <class T>
void rms_norm_forward_cpu(const T* x, const T* weight, T* y, T* rstd, int64_t rows, int64_t dim, double eps) {
#pragma omp parallel for if (rows * dim > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = x + r * dim;
    double squares = 0.0;
    for (int64_t c = 0; c < dim; ++c) squares += static_cast<double>(in[c]) * in[c];
    const double row_rstd = 1.0 / std::sqrt(squares / static_cast<double>(dim) + eps);
    for (int64_t c = 0; c < dim; ++c) {
      double value = in[c] * row_rstd;
      if (weight) value *= weight[c];
      y[r * dim + c] = static_cast<T>(value);
    }
    rstd[r] = static_cast<T>(row_rstd);
  }
}

template <class T>
void rms_norm_backward_cpu(const T* dy, const T* x, const T* weight, const T* rstd, T* dx, T* dweight, int64_t rows,
                           int64_t dim) {
#pragma omp parallel for if (rows * dim > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = x + r * dim;
    const T* grad = dy + r * dim;
    double sum_g_xhat = 0.0;
    for (int64_t c = 0; c < dim; ++c) {
      const double g = weight ? static_cast<double>(grad[c]) * weight[c] : static_cast<double>(grad[c]);
      sum_g_xhat += g * in[c] * rstd[r];
    }
    const double mean_g_xhat = sum_g_xhat / static_cast<double>(dim);
    for (int64_t c = 0; c < dim; ++c) {
      const double g = weight ? static_cast<double>(grad[c]) * weight[c] : static_cast<double>(grad[c]);
      const double xhat = static_cast<double>(in[c]) * rstd[r];
      dx[r * dim + c] = static_cast<T>(rstd[r] * (g - xhat * mean_g_xhat));
    }
  }
  parameter_gradients<T>(dy, x, nullptr, rstd, dweight, nullptr, rows, dim);
}

#define STRATA_INSTANTIATE(T)                                                                                      \
  template void layer_norm_forward_cpu<T>(const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, double);     \
  template void layer_norm_backward_cpu<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*, int64_t, \
                                           int64_t);                                                               \
  template void rms_norm_forward_cpu<T>(const T*, const T*, T*, T*, int64_t, int64_t, double);                     \
  template void rms_norm_backward_cpu<T>(const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::kernels
