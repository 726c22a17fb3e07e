// nn::AttentionBlock in the tests of its patterns (attention_block_test,
// dma_attention_block_test).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "strata/nn/attention.h"
#include "support/check.h"

namespace strata::testing {

// A block built from `seed`, in double, with each parameter named in `redrawn`
// drawn again uniform in [-range, range] (from seed + 7) instead of its initial
// value, where that value would hide the parameter's term.
inline std::shared_ptr<nn::AttentionBlock> attention_block_in_double(
    const nn::AttentionBlockOptions& o, uint64_t seed, const std::vector<std::pair<std::string, double>>& redrawn) {
  Generator generator{seed, 0};
  auto block = std::make_shared<nn::AttentionBlock>(o, generator);
  block->to(DType::Float64);
  autograd::NoGradGuard no_grad;
  for (const auto& [name, range] : redrawn) {
    for (nn::NamedParameter& p : block->named_parameters())
      if (p.name == name) p.tensor.copy_(random(p.tensor.shape(), seed + 7, DType::Float64, -range, range));
  }
  return block;
}

}  // namespace strata::testing
