// The optimizer's multi-tensor kernels: the fused AdamW step, and the global
// squared norm and in-place scaling that gradient clipping uses. They take many
// tensors at once: on CUDA, tensors go into one launch (up to a few hundred per
// launch), so a model's small parameters (norm weights, biases) do not cost a
// launch each. No autograd: they write in place and bump the storages' versions.
//
// strata bench calls adamw_step directly on raw tensors.
#pragma once

#include <cstdint>
#include <vector>

#include "strata/core/tensor.h"

namespace strata::kernels {

struct AdamWHyperparameters {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  int64_t step = 1;  // the step being taken, from 1: bias corrections are 1 - beta^step
};

// One parameter's tensors, all contiguous with the parameter's shape, on one device.
// param: float32 (or float64 on the CPU); grad: the param's dtype, or bfloat16 on
// CUDA; exp_avg and exp_avg_sq: the param's dtype.
struct AdamWTensors {
  Tensor param, grad, exp_avg, exp_avg_sq;
  bool weight_decay = true;  // false: decoupled decay skipped (norm weights, biases)
};

// Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019), as PyTorch's
// AdamW computes it, in one pass over each tensor:
//   p <- p (1 - lr wd)                    (when weight_decay)
//   m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2
//   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Every tensor of the list must be on the same device. Memory traffic (what a
// bandwidth figure should count): 28 bytes per element with float32 grads (read p,
// g, m, v; write p, m, v), 26 with bfloat16 grads.
void adamw_step(const std::vector<AdamWTensors>& tensors, const AdamWHyperparameters& hyperparameters);

// sum_i sum_j tensors[i][j]^2, accumulated in double in one reduction over all
// tensors (contiguous, one device; float32, float64 or bfloat16), read back to the
// host. NaN or inf in any element makes the result NaN or inf. The order of the
// additions is fixed, so the result is the same on every run.
double squared_norm(const std::vector<Tensor>& tensors);

// tensors[i] *= factor, in place, for all i (contiguous, one device).
void scale_in_place(const std::vector<Tensor>& tensors, double factor);

}  // namespace strata::kernels
