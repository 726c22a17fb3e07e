// A language model's token-by-token decoding against its forward pass.
#pragma once

#include <algorithm>

#include "strata/models/model.h"
#include "support/check.h"

namespace strata::testing {

// The largest |decode - forward| over the positions of tokens (batch, length):
// `model` decodes them one at a time from `state` (fresh from start_decoding),
// each step's logits must be (batch, vocab), and `full` is forward(tokens)
// (batch, length, vocab). Run it under autograd::NoGradGuard.
inline double max_decode_difference(models::Model& model, models::DecodingState& state, const Tensor& tokens,
                                    const Tensor& full, int64_t vocab) {
  const int64_t batch = tokens.size(0), length = tokens.size(1);
  double worst = 0;
  for (int64_t t = 0; t < length; ++t) {
    Tensor logits = model.decode(ops::contiguous(ops::squeeze(ops::slice(tokens, 1, t, t + 1), 1)), state);
    REQUIRE(logits.shape() == Shape{batch, vocab});
    worst = std::max(worst, max_abs_difference(logits, ops::squeeze(ops::slice(full, 1, t, t + 1), 1)));
  }
  return worst;
}

}  // namespace strata::testing
