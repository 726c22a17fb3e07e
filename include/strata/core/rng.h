// Random tensors from a counter-based generator. A Generator is (seed, offset):
// every draw of n numbers consumes ceil(n / 4) counters and advances the offset, so
// saving and restoring (seed, offset) replays a run exactly (checkpoints and
// activation checkpointing rely on it).
#pragma once

#include <cstdint>

#include "strata/core/tensor.h"

namespace strata {

struct Generator {
  uint64_t seed = 0;
  uint64_t offset = 0;

  // Reserves counters for n numbers and returns the offset to draw them from.
  uint64_t reserve(int64_t n) {
    uint64_t start = offset;
    offset += static_cast<uint64_t>((n + 3) / 4);
    return start;
  }
};

// The process-wide generator used when none is passed.
Generator& default_generator();
void manual_seed(uint64_t seed);

Tensor rand_uniform(const Shape& shape, double low, double high, DType dtype = DType::Float32,
                    Device device = Device::cpu(), Generator& generator = default_generator());
Tensor rand_normal(const Shape& shape, double mean, double stddev, DType dtype = DType::Float32,
                   Device device = Device::cpu(), Generator& generator = default_generator());
// uint8 mask with P(1) = keep_probability.
Tensor rand_bernoulli(const Shape& shape, double keep_probability, Device device = Device::cpu(),
                      Generator& generator = default_generator());

}  // namespace strata
