// CPU reference of Mamba-2's gated RMSNorm (float and double). x, z, y, dy, dx, dz:
// rows of dim elements, contiguous; each row is cut into dim / group_size groups of
// consecutive elements, normalised on their own:
//   g = x silu(z)  (g = x when z is null),  rstd = 1 / sqrt(mean over the group of g^2 + eps)
//   y = g rstd weight                       (weight null: no scale)
// rstd: (rows, dim / group_size). The backward recomputes g from x and z: with
// ghat = g rstd and a = dy weight,
//   dg = rstd (a - ghat mean_group(a ghat)),  dx = dg silu(z),  dz = dg x silu'(z),
//   dweight = sum over rows of dy ghat (assigned),
// with silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z))). dz is null when z is.
#pragma once

#include <cstdint>

namespace strata::kernels {

template <class T>
void gated_rms_norm_forward_cpu(const T* x, const T* z, const T* weight, T* y, T* rstd, int64_t rows, int64_t dim,
                                int64_t group_size, double eps);

template <class T>
void gated_rms_norm_backward_cpu(const T* dy, const T* x, const T* z, const T* weight, const T* rstd, T* dx, T* dz,
                                 T* dweight, int64_t rows, int64_t dim, int64_t group_size);

}  // namespace strata::kernels
