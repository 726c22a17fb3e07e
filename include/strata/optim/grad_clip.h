// Global gradient-norm clipping (Pascanu et al., 2013), as PyTorch's
// clip_grad_norm_ with the L2 norm.
#pragma once

#include <vector>

#include "strata/core/tensor.h"

namespace strata::optim {

// The L2 norm of all the parameters' gradients taken together (parameters without a
// gradient are skipped), computed on their device in one reduction and returned on
// the host. When it is finite and above max_norm, every gradient is scaled in place
// by max_norm / (norm + 1e-6). A NaN or infinite norm is returned as it is and the
// gradients are left untouched: the trainer decides (usually: skip the step).
// Pass max_norm = infinity to measure the norm only. All gradients must be on one device.
double clip_grad_norm(const std::vector<Tensor>& parameters, double max_norm);

}  // namespace strata::optim
