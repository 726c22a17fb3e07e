#include "kernels/grouped_gemm/grouped_gemm_cpu.h"

#include <algorithm>

#include "kernels/gemm/gemm_cpu.h"

namespace strata::kernels {

template <class T>
void grouped_gemm_rows_cpu(const T* x, const T* weight, const int64_t* offsets, int64_t experts, int64_t k, int64_t n,
                           bool transpose_weight, T* out) {
  // Expert matrix e read as (k, n): W[e]^T of a stored (n, k) matrix, or W[e] itself.
  const MatrixLayout weight_layout = transpose_weight ? MatrixLayout{1, k, 0} : MatrixLayout{n, 1, 0};
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t start = offsets[e], group_rows = offsets[e + 1] - offsets[e];
    if (group_rows == 0) continue;
    gemm_cpu<T>(group_rows, n, k, 1, T(1), x + start * k, MatrixLayout{k, 1, 0}, weight + e * n * k, weight_layout,
                T(0), out + start * n, MatrixLayout{n, 1, 0});
  }
}

template <class T>
void grouped_gemm_weight_grad_cpu(const T* grad_out, const T* x, const int64_t* offsets, int64_t experts,
                                  int64_t n_out, int64_t n_in, T* grad_weight) {
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t start = offsets[e], group_rows = offsets[e + 1] - offsets[e];
    T* destination = grad_weight + e * n_out * n_in;
    if (group_rows == 0) {
      std::fill(destination, destination + n_out * n_in, T(0));
      continue;
    }
    // grad_out's group read transposed: element (o, r) at (start + r) * n_out + o.
    gemm_cpu<T>(n_out, n_in, group_rows, 1, T(1), grad_out + start * n_out, MatrixLayout{1, n_out, 0},
                x + start * n_in, MatrixLayout{n_in, 1, 0}, T(0), destination, MatrixLayout{n_in, 1, 0});
  }
}

template void grouped_gemm_rows_cpu<float>(const float*, const float*, const int64_t*, int64_t, int64_t, int64_t, bool,
                                           float*);
template void grouped_gemm_rows_cpu<double>(const double*, const double*, const int64_t*, int64_t, int64_t, int64_t,
                                            bool, double*);
template void grouped_gemm_weight_grad_cpu<float>(const float*, const float*, const int64_t*, int64_t, int64_t,
                                                  int64_t, float*);
template void grouped_gemm_weight_grad_cpu<double>(const double*, const double*, const int64_t*, int64_t, int64_t,
                                                   int64_t, double*);

}  // namespace strata::kernels
