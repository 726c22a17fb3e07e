#include "kernels/ssd/gated_rms_norm_cpu.h"

#include <cmath>

namespace strata::kernels {

namespace {

template <class T>
T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

// g = x silu(z), or x without a gate.
template <class T>
T gated(const T* x, const T* z, int64_t k) {
  return z ? x[k] * z[k] * sigmoid(z[k]) : x[k];
}

bool worth_threads(int64_t rows, int64_t dim) { return rows * dim > (int64_t{1} << 15); }

}  // namespace

template <class T>
void gated_rms_norm_forward_cpu(const T* x, const T* z, const T* weight, T* y, T* rstd, int64_t rows, int64_t dim,
                                int64_t group_size, double eps) {
  const int64_t groups = dim / group_size;
#pragma omp parallel for schedule(static) if (worth_threads(rows, dim))
  for (int64_t row_group = 0; row_group < rows * groups; ++row_group) {
    const int64_t first = row_group * group_size;  // the group's first element
    T sum_of_squares = 0;
    for (int64_t k = first; k < first + group_size; ++k) {
      const T g = gated(x, z, k);
      sum_of_squares += g * g;
    }
    const T scale = T(1) / std::sqrt(sum_of_squares / T(group_size) + T(eps));
    rstd[row_group] = scale;
    for (int64_t k = first; k < first + group_size; ++k)
      y[k] = gated(x, z, k) * scale * (weight ? weight[k % dim] : T(1));
  }
}

template <class T>
void gated_rms_norm_backward_cpu(const T* dy, const T* x, const T* z, const T* weight, const T* rstd, T* dx, T* dz,
                                 T* dweight, int64_t rows, int64_t dim, int64_t group_size) {
  const int64_t groups = dim / group_size;
#pragma omp parallel for schedule(static) if (worth_threads(rows, dim))
  for (int64_t row_group = 0; row_group < rows * groups; ++row_group) {
    const int64_t first = row_group * group_size;
    const T scale = rstd[row_group];
    T mean_a_ghat = 0;  // mean over the group of (dy weight) ghat
    for (int64_t k = first; k < first + group_size; ++k)
      mean_a_ghat += dy[k] * (weight ? weight[k % dim] : T(1)) * gated(x, z, k) * scale;
    mean_a_ghat /= T(group_size);
    for (int64_t k = first; k < first + group_size; ++k) {
      const T a = dy[k] * (weight ? weight[k % dim] : T(1));
      const T dg = scale * (a - gated(x, z, k) * scale * mean_a_ghat);
      if (!z) {
        dx[k] = dg;
        continue;
      }
      const T s = sigmoid(z[k]);
      dx[k] = dg * z[k] * s;
      dz[k] = dg * x[k] * s * (T(1) + z[k] * (T(1) - s));
    }
  }
  if (!dweight) return;
#pragma omp parallel for schedule(static) if (worth_threads(rows, dim))
  for (int64_t column = 0; column < dim; ++column) {
    T sum = 0;
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t k = row * dim + column;
      sum += dy[k] * gated(x, z, k) * rstd[row * groups + column / group_size];
    }
    dweight[column] = sum;
  }
}

template void gated_rms_norm_forward_cpu<float>(const float*, const float*, const float*, float*, float*, int64_t,
                                                int64_t, int64_t, double);
template void gated_rms_norm_forward_cpu<double>(const double*, const double*, const double*, double*, double*, int64_t,
                                                 int64_t, int64_t, double);
template void gated_rms_norm_backward_cpu<float>(const float*, const float*, const float*, const float*, const float*,
                                                 float*, float*, float*, int64_t, int64_t, int64_t);
template void gated_rms_norm_backward_cpu<double>(const double*, const double*, const double*, const double*,
                                                  const double*, double*, double*, double*, int64_t, int64_t, int64_t);

}  // namespace strata::kernels
