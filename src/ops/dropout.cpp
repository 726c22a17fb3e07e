// dropout: out = x * mask / (1 - p) with a uint8 keep-mask drawn by rand_bernoulli
// (counter-based Philox, so one seed gives the same mask on the CPU and on CUDA).
// The backward applies the saved mask and scale to the gradient.
#include "ops/op_utils.h"
#include "strata/ops/ops.h"

namespace strata::ops {

namespace {
// x * mask * scale, mask uint8 (0 or 1) of x's shape.
Tensor apply_mask(const Tensor& x, const Tensor& mask, double scale) {
  return mul(mul(x, cast(mask, x.dtype())), scale);
}
}  // namespace

Tensor dropout(const Tensor& x, double p, bool training, Generator& generator) {
  detail::check_defined("dropout", x, "input");
  STRATA_CHECK(p >= 0.0 && p < 1.0, "dropout: p = {} is outside [0, 1)", p);
  if (!training || p == 0.0) return x;
  detail::check_compute_dtype("dropout", x);
  Tensor mask = rand_bernoulli(x.shape(), 1.0 - p, x.device(), generator);
  double scale = 1.0 / (1.0 - p);
  Tensor out;
  {
    autograd::NoGradGuard no_grad;
    out = apply_mask(x, mask, scale);
  }
  autograd::record("dropout", {x}, out, [mask, scale](const Tensor& grad) {
    return std::vector<Tensor>{apply_mask(grad, mask, scale)};
  });
  return out;
}

}  // namespace strata::ops
