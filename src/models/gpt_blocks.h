// Pieces of the GPT-shaped (pre-norm, learned positions) language models that
// models/transformer.cpp and models/moe_transformer.cpp both build on: the norm
// a recipe picks and causal multi-head self-attention composed of ops.
#pragma once

#include <memory>
#include <string>

#include "strata/core/tensor.h"
#include "strata/nn/layers.h"

namespace strata::models {

// kind: "layernorm" or "rmsnorm" (the recipe reader checks the choice), each with its
// layer's default epsilon.
std::shared_ptr<nn::Module> make_norm(const std::string& kind, int64_t d_model);

// x normalized by a norm that make_norm built.
Tensor apply_norm(const std::shared_ptr<nn::Module>& norm, const Tensor& x);

// Causal multi-head self-attention with a fused QKV projection (parameters qkv and
// out), composed of ops for now:
//   scores = Q K^T / sqrt(d_head), causally masked, softmax, times V;
// dropout on the attention probabilities and on the output.
class CausalSelfAttention : public nn::Module {
 public:
  CausalSelfAttention(int64_t d_model, int64_t n_heads, double dropout, Generator& generator);

  // x (batch, length, d_model) -> (batch, length, d_model)
  Tensor forward(const Tensor& x);

 private:
  int64_t n_heads_, d_head_;
  double dropout_;
  std::shared_ptr<nn::Linear> qkv_, out_;
};

}  // namespace strata::models
