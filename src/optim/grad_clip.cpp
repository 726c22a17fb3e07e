#include "strata/optim/grad_clip.h"

#include <cmath>

#include "strata/kernels/adamw.h"

namespace strata::optim {

double clip_grad_norm(const std::vector<Tensor>& parameters, double max_norm) {
  STRATA_CHECK(max_norm > 0.0, "clip_grad_norm: max_norm {} must be positive", max_norm);
  std::vector<Tensor> grads;
  for (const Tensor& p : parameters) {
    Tensor grad = p.grad();
    if (!grad.defined()) continue;
    STRATA_CHECK(grad.is_contiguous(), "clip_grad_norm: the gradient {} of parameter '{}' is not contiguous",
                 grad.str(), p.name());
    grads.push_back(grad);
  }
  double norm = std::sqrt(kernels::squared_norm(grads));
  if (std::isfinite(norm) && norm > max_norm) kernels::scale_in_place(grads, max_norm / (norm + 1e-6));
  return norm;
}

}  // namespace strata::optim
