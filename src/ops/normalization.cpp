// layer_norm and rms_norm: the kernels of strata/kernels/normalization.h (which
// check the arguments) plus the tape node. The node saves x, weight and the
// per-row statistics; its backward is the fused backward kernel.
#include "ops/op_utils.h"
#include "strata/kernels/normalization.h"
#include "strata/ops/ops.h"

namespace strata::ops {

namespace {
// A handle for a closure to keep: same storage, no autograd history.
Tensor saved(const Tensor& t) { return t.defined() ? t.detach() : Tensor(); }
}  // namespace

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  detail::check_defined("layer_norm", x, "x");
  const Tensor input = x.contiguous();  // the copy the kernel would make, kept for the backward
  kernels::NormForward forward = kernels::layer_norm_forward(input, weight, bias, eps);
  Tensor y = forward.y;
  autograd::record("layer_norm", {x, weight, bias}, y,
                   [input = saved(input), weight = saved(weight), mean = forward.mean, rstd = forward.rstd,
                    with_bias = bias.defined()](const Tensor& grad) {
                     kernels::NormGradients grads = kernels::layer_norm_backward(grad, input, weight, mean, rstd, with_bias);
                     return std::vector<Tensor>{grads.dx, grads.dweight, grads.dbias};
                   });
  return y;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  detail::check_defined("rms_norm", x, "x");
  const Tensor input = x.contiguous();
  kernels::NormForward forward = kernels::rms_norm_forward(input, weight, eps);
  Tensor y = forward.y;
  autograd::record("rms_norm", {x, weight}, y,
                   [input = saved(input), weight = saved(weight), rstd = forward.rstd](const Tensor& grad) {
                     kernels::NormGradients grads = kernels::rms_norm_backward(grad, input, weight, rstd);
                     return std::vector<Tensor>{grads.dx, grads.dweight};
                   });
  return y;
}

}  // namespace strata::ops
