#include "strata/nn/init.h"

namespace strata::nn::init {

void normal_(Tensor& tensor, double mean, double stddev, Generator& generator) {
  STRATA_CHECK(stddev >= 0.0, "init::normal_: standard deviation {} is negative", stddev);
  tensor.copy_(rand_normal(tensor.shape(), mean, stddev, tensor.dtype(), tensor.device(), generator));
}

void uniform_(Tensor& tensor, double low, double high, Generator& generator) {
  STRATA_CHECK(low <= high, "init::uniform_: low {} is above high {}", low, high);
  tensor.copy_(rand_uniform(tensor.shape(), low, high, tensor.dtype(), tensor.device(), generator));
}

void constant_(Tensor& tensor, double value) { tensor.fill_(value); }

}  // namespace strata::nn::init
