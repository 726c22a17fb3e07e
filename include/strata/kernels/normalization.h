// Layer normalisation and RMS normalisation over the last dim, without autograd:
// the kernels behind ops::layer_norm and ops::rms_norm, callable directly on
// tensors of any device (the benchmark times them this way).
//
// x is (..., dim), read as rows of dim elements (a non-contiguous x is copied
// first). float32 and float64 on the CPU; float32 and bfloat16 on CUDA, with
// float32 arithmetic. weight and bias are (dim) in x's dtype on x's device, or
// undefined tensors (no scale, no shift).
//
//   layer_norm: y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)
//               (var is the biased variance of the row)
//   rms_norm:   y = x * rstd * weight,                  rstd = 1 / sqrt(mean(x^2) + eps)
//
// The forward returns the per-row statistics the backward needs, shaped like x
// without its last dim, in float32 (float64 for float64 x). The backward
// recomputes xhat = (x - mean) * rstd from them and x; with g = dy * weight:
//   layer_norm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   rms_norm:   dx = rstd * (g - xhat * mean(g * xhat))
//   dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy.
// Gradients come back as fresh tensors (assigned, not accumulated): a caller
// that accumulates parameter gradients adds them itself. On CUDA the parameter
// gradients are reduced without atomics, so they are deterministic.
#pragma once

#include "strata/core/tensor.h"

namespace strata::kernels {

struct NormForward {
  Tensor y;     // like x, contiguous
  Tensor mean;  // (...): layer_norm; undefined for rms_norm
  Tensor rstd;  // (...)
};

struct NormGradients {
  Tensor dx;       // like x, contiguous
  Tensor dweight;  // (dim) in x's dtype; undefined when weight is
  Tensor dbias;    // (dim) in x's dtype; undefined unless asked for
};

NormForward layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
// x, weight, mean and rstd as given to and returned by layer_norm_forward; dy
// like x. dbias is computed when with_bias_grad (the forward had a bias).
NormGradients layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                  const Tensor& rstd, bool with_bias_grad);

NormForward rms_norm_forward(const Tensor& x, const Tensor& weight, double eps);
NormGradients rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd);

}  // namespace strata::kernels
