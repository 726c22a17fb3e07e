// Optimizers: AdamW and SGD over a model's named parameters.
//
// An optimizer is built from Module::named_parameters() AFTER the model has been
// moved to its device (Module::to replaces the parameter tensors; an optimizer
// built earlier would update the old ones). Its state tensors live beside the
// parameters, keyed by "<parameter path>.<slot>" ("layers.0.mlp.up.weight.exp_avg"),
// plus "step", the number of steps taken: state() and load_state() are what a
// checkpoint saves and restores.
//
// Mixed precision, how the pieces fit:
//   - parameters are float32 master weights and stay so (Module never casts them
//     unless asked to with Module::to(DType));
//   - under ops::AutocastGuard, matmul and linear on CUDA read those float32
//     weights, multiply in bfloat16 with float32 accumulation and return float32;
//     norms, softmax and losses stay in float32. Their backward returns float32
//     gradients to the float32 leaves;
//   - clip_grad_norm (grad_clip.h) reduces all grads in one pass in double;
//   - AdamW keeps float32 exp_avg/exp_avg_sq and updates the float32 weights in one
//     fused pass; it also accepts bfloat16 grads on CUDA (for grads produced
//     directly in bfloat16, e.g. by a bf16 all-reduce).
// So nothing else is needed for bf16 training: wrap forward and backward in an
// AutocastGuard and keep everything here as it is.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "strata/nn/module.h"

namespace strata::optim {

using NamedState = std::vector<std::pair<std::string, Tensor>>;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a gradient (parameters without one are
  // left as they are, and so is their state).
  void step();
  // Drops every parameter's gradient.
  void zero_grad();

  double lr() const { return lr_; }
  void set_lr(double lr);  // for the next step(); schedules call it every step
  int64_t steps_taken() const { return steps_taken_; }
  const std::vector<nn::NamedParameter>& parameters() const { return parameters_; }

  // The state tensors themselves (not copies), in parameter order, each parameter's
  // slots in a fixed order, then "step" (an int64 scalar on the CPU).
  NamedState state() const;
  // Copies `state` into this optimizer's state. The names must be exactly those of
  // state() and the shapes equal (dtypes and devices are converted); otherwise the
  // error lists every missing, unexpected and mis-shaped entry and nothing changes.
  void load_state(const NamedState& state);

 protected:
  // `slot_names`: the per-parameter state this optimizer keeps ("exp_avg", ...),
  // created as zeros of the parameter's shape, dtype and device.
  Optimizer(std::vector<nn::NamedParameter> parameters, double lr, std::vector<std::string> slot_names);

  // The update, called by step() once steps_taken() counts the step being taken.
  virtual void update() = 0;
  Tensor& slot(size_t parameter, size_t slot) { return slots_[parameter][slot]; }
  // The parameter's gradient, checked against the parameter; undefined when it has none.
  Tensor gradient_of(size_t parameter) const;

 private:
  std::vector<nn::NamedParameter> parameters_;
  std::vector<std::string> slot_names_;
  std::vector<std::vector<Tensor>> slots_;  // [parameter][slot]
  double lr_;
  int64_t steps_taken_ = 0;
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  // decoupled; skipped for parameters registered with weight_decay = false
};

// AdamW (Loshchilov & Hutter, 2019) with PyTorch's arithmetic; the kernel is
// kernels::adamw_step (include/strata/kernels/adamw.h). State: exp_avg and
// exp_avg_sq per parameter. Bias correction uses the optimizer's step count, so a
// parameter that had no gradient at some steps is corrected as if it had.
class AdamW : public Optimizer {
 public:
  AdamW(std::vector<nn::NamedParameter> parameters, const AdamWOptions& options = {});
  const AdamWOptions& options() const { return options_; }

 private:
  void update() override;
  AdamWOptions options_;
};

struct SGDOptions {
  double lr = 1e-2;
  double momentum = 0.0;
  double weight_decay = 0.0;  // L2, added to the gradient; skipped for no-decay parameters
  bool nesterov = false;
};

// SGD with momentum as PyTorch computes it (no dampening):
//   g <- g + wd p;  b <- mu b + g;  g <- nesterov ? g + mu b : b;  p <- p - lr g
// State: momentum_buffer per parameter (only when momentum != 0).
class SGD : public Optimizer {
 public:
  SGD(std::vector<nn::NamedParameter> parameters, const SGDOptions& options = {});
  const SGDOptions& options() const { return options_; }

 private:
  void update() override;
  SGDOptions options_;
};

}  // namespace strata::optim
