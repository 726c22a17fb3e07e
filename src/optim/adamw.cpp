#include <algorithm>
#include <cmath>

#include "strata/kernels/adamw.h"
#include "strata/optim/optimizer.h"

namespace strata::optim {

AdamW::AdamW(std::vector<nn::NamedParameter> parameters, const AdamWOptions& options)
    : Optimizer(std::move(parameters), options.lr, {"exp_avg", "exp_avg_sq"}), options_(options) {
  STRATA_CHECK(options.beta1 >= 0.0 && options.beta1 < 1.0 && options.beta2 >= 0.0 && options.beta2 < 1.0,
               "AdamW: betas ({}, {}) must lie in [0, 1)", options.beta1, options.beta2);
  STRATA_CHECK(options.eps > 0.0, "AdamW: eps {} must be positive", options.eps);
  STRATA_CHECK(options.weight_decay >= 0.0 && std::isfinite(options.weight_decay),
               "AdamW: weight decay {} must be a finite non-negative number", options.weight_decay);
}

void AdamW::update() {
  kernels::AdamWHyperparameters hyperparameters{lr(), options_.beta1, options_.beta2, options_.eps,
                                                options_.weight_decay, steps_taken()};
  // One multi-tensor call per device (in practice one device).
  std::vector<std::pair<Device, std::vector<kernels::AdamWTensors>>> by_device;
  for (size_t i = 0; i < parameters().size(); ++i) {
    Tensor grad = gradient_of(i);
    if (!grad.defined()) continue;
    const nn::NamedParameter& p = parameters()[i];
    kernels::AdamWTensors tensors{p.tensor, grad, slot(i, 0), slot(i, 1), p.weight_decay};
    auto group = std::find_if(by_device.begin(), by_device.end(),
                              [&](const auto& entry) { return entry.first == p.tensor.device(); });
    if (group == by_device.end()) group = by_device.insert(by_device.end(), {p.tensor.device(), {}});
    group->second.push_back(std::move(tensors));
  }
  for (const auto& [device, tensors] : by_device) kernels::adamw_step(tensors, hyperparameters);
}

}  // namespace strata::optim
