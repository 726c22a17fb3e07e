// Parameter initialisers. Each overwrites `tensor` in place (not recorded by
// autograd) with values drawn from `generator` (Philox: the same seed gives the
// same values whatever device the tensor is on). Layers call them on CPU tensors
// when they are built; Module::to moves the result.
#pragma once

#include "strata/core/rng.h"
#include "strata/core/tensor.h"

namespace strata::nn::init {

void normal_(Tensor& tensor, double mean, double stddev, Generator& generator);
void uniform_(Tensor& tensor, double low, double high, Generator& generator);
void constant_(Tensor& tensor, double value);
inline void zeros_(Tensor& tensor) { constant_(tensor, 0.0); }
inline void ones_(Tensor& tensor) { constant_(tensor, 1.0); }

}  // namespace strata::nn::init
