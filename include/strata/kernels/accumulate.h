// destination += source for two contiguous tensors of one shape, dtype and device.
// The autograd engine accumulates gradients with it (a layer below the ops).
#pragma once

#include "strata/core/tensor.h"

namespace strata::kernels {

void accumulate(Tensor& destination, const Tensor& source);

}  // namespace strata::kernels
