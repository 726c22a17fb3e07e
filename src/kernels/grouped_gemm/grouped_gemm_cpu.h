// CPU reference of the grouped expert GEMM (no Tensor): rows are grouped by expert
// (expert e owns rows [offsets[e], offsets[e + 1]), offsets validated by the caller:
// offsets[0] = 0, non-decreasing, offsets[experts] = rows), and each group is
// multiplied by its own expert's matrix. Each group is one product of the blocked
// CPU GEMM (kernels/gemm/gemm_cpu.h); an empty group costs nothing. T: float or double.
#pragma once

#include <cstdint>

namespace strata::kernels {

// out (rows, n) = x (rows, k) times the expert matrix of each row's group: with
// transpose_weight, weight is (experts, n, k) and out = x W[e]^T (the forward pass of
// grouped_linear); without, weight is (experts, k, n) and out = x W[e] (its input
// gradient).
template <class T>
void grouped_gemm_rows_cpu(const T* x, const T* weight, const int64_t* offsets, int64_t experts, int64_t k, int64_t n,
                           bool transpose_weight, T* out);

// grad_weight[e] (n_out, n_in) = grad_out[group e]^T (n_out, rows_e) x[group e]
// (rows_e, n_in); zero for an empty group. grad_out (rows, n_out), x (rows, n_in).
template <class T>
void grouped_gemm_weight_grad_cpu(const T* grad_out, const T* x, const int64_t* offsets, int64_t experts,
                                  int64_t n_out, int64_t n_in, T* grad_weight);

}  // namespace strata::kernels
