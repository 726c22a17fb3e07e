#include "strata/autograd/autograd.h"
#include "strata/ops/ops.h"
#include "strata/optim/optimizer.h"

namespace strata::optim {

namespace {
std::vector<std::string> sgd_slots(const SGDOptions& options) {
  if (options.momentum == 0.0) return {};
  return {"momentum_buffer"};
}
}  // namespace

SGD::SGD(std::vector<nn::NamedParameter> parameters, const SGDOptions& options)
    : Optimizer(std::move(parameters), options.lr, sgd_slots(options)), options_(options) {
  STRATA_CHECK(options.momentum >= 0.0, "SGD: momentum {} is negative", options.momentum);
  STRATA_CHECK(options.weight_decay >= 0.0, "SGD: weight decay {} is negative", options.weight_decay);
  STRATA_CHECK(!options.nesterov || options.momentum > 0.0, "SGD: Nesterov momentum needs a positive momentum");
}

// Written with ops (a few element-wise launches per parameter): SGD is the simple
// baseline, AdamW the optimizer with a fused kernel.
void SGD::update() {
  autograd::NoGradGuard no_grad;
  for (size_t i = 0; i < parameters().size(); ++i) {
    Tensor grad = gradient_of(i);
    if (!grad.defined()) continue;
    const nn::NamedParameter& p = parameters()[i];
    Tensor value = p.tensor.detach();
    Tensor direction = grad.dtype() == value.dtype() ? grad : grad.to(value.dtype());
    if (options_.weight_decay != 0.0 && p.weight_decay)
      direction = ops::add(direction, ops::mul(value, options_.weight_decay));
    if (options_.momentum != 0.0) {
      Tensor& buffer = slot(i, 0);
      buffer.copy_(ops::add(ops::mul(buffer, options_.momentum), direction));
      direction = options_.nesterov ? ops::add(direction, ops::mul(buffer, options_.momentum)) : buffer;
    }
    value.copy_(ops::sub(value, ops::mul(direction, lr())));
  }
}

}  // namespace strata::optim
