// CPU reference of layer normalisation and RMS normalisation over rows of `dim`
// contiguous elements (no Tensor: raw pointers). Statistics are stored in T
// (float32 for float32, float64 for float64) and accumulated in double.
// weight, bias, dweight and dbias may be null (no scale, no shift, no gradient wanted).
#pragma once

#include <cstdint>

namespace strata::kernels {

// y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(mean((x - mean)^2) + eps).
template <class T>
void layer_norm_forward_cpu(const T* x, const T* weight, const T* bias, T* y, T* mean, T* rstd, int64_t rows,
                            int64_t dim, double eps);

// With xhat = (x - mean) * rstd and g = dy * weight:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))   (means over the row)
//   dweight = sum over rows of dy * xhat, dbias = sum over rows of dy   (assigned, not accumulated)
template <class T>
void layer_norm_backward_cpu(const T* dy, const T* x, const T* weight, const T* mean, const T* rstd, T* dx,
                             T* dweight, T* dbias, int64_t rows, int64_t dim);

// y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
template <class T>
void rms_norm_forward_cpu(const T* x, const T* weight, T* y, T* rstd, int64_t rows, int64_t dim, double eps);

// With xhat = x * rstd and g = dy * weight:
//   dx = rstd * (g - xhat * mean(g * xhat)),  dweight = sum over rows of dy * xhat.
template <class T>
void rms_norm_backward_cpu(const T* dy, const T* x, const T* weight, const T* rstd, T* dx, T* dweight, int64_t rows,
                           int64_t dim);

}  // namespace strata::kernels
