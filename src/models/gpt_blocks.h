// Pieces of the GPT-shaped (pre-norm, learned positions) language models that
// models/transformer.cpp and models/moe_transformer.cpp both build on: the norm
// a recipe picks (models/mamba.cpp applies its norms with apply_norm too), causal
// multi-head self-attention composed of ops, and the model's two ends around its
// blocks.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "strata/core/tensor.h"
#include "strata/models/model.h"
#include "strata/nn/layers.h"
#include "strata/ops/ops.h"

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

// A pre-norm block around a feed-forward slot that the derived block registers
// after this constructor (modules attention_norm, attention, mlp_norm, in order):
//   h = x + Attention(Norm(x)),  out = h + Dropout(Slot(Norm(h))).
class PreNormBlock : public nn::Module {
 protected:
  PreNormBlock(const std::string& norm, int64_t d_model, int64_t n_heads, double dropout, Generator& generator);

  // x (batch, length, d_model) -> out (batch, length, d_model), with
  // slot(Norm(h)) -> (batch, length, d_model).
  template <class Slot>
  Tensor residual_forward(const Tensor& x, Slot&& slot) {
    Tensor h = ops::add(x, attention_->forward(apply_norm(attention_norm_, x)));
    return ops::add(h, ops::dropout(slot(apply_norm(mlp_norm_, h)), dropout_, is_training()));
  }

 private:
  double dropout_;
  std::shared_ptr<nn::Module> attention_norm_, mlp_norm_;
  std::shared_ptr<CausalSelfAttention> attention_;
};

// The ends of a GPT-shaped language model around the blocks a derived model
// builds: token and learned position embeddings (token_embedding,
// position_embedding), the blocks (layers.<i>), a final norm (final_norm) and an
// output head (head), tied to the token embedding unless tie_embeddings is off.
// The modules are made in that order, which fixes the initial weights a seed gives.
class GPTLanguageModel : public Model {
 public:
  struct Ends {
    int64_t vocab_size, d_model, n_layers, max_length;
    std::string norm;  // layernorm | rmsnorm
    double dropout;
    bool tie_embeddings;
  };
  using BlockFactory = std::function<std::shared_ptr<nn::Module>(int64_t index)>;
  // The Ends of a model's options, which name these fields the same way.
  template <class Options>
  static Ends ends_of(const Options& o) {
    return {o.vocab_size, o.d_model, o.n_layers, o.max_length, o.norm, o.dropout, o.tie_embeddings};
  }

  Task task() const override { return Task::LanguageModel; }
  int64_t max_length() const override { return ends_.max_length; }

 protected:
  // family names the model in error messages.
  GPTLanguageModel(std::string family, const Ends& ends, Generator& generator, const BlockFactory& make_block);

  // tokens (batch, length) int64 -> (batch, length, d_model): token plus position
  // embeddings, then dropout; checks the shape and the length against max_length.
  Tensor embed(const Tensor& tokens);
  // x (batch, length, d_model) out of the last block -> logits (batch, length, vocab_size)
  Tensor logits(const Tensor& x);

  size_t block_count() const { return layers_->size(); }
  template <class Block>
  std::shared_ptr<Block> block(size_t index) const {
    return layers_->get<Block>(index);
  }

 private:
  std::string family_;
  Ends ends_;
  std::shared_ptr<nn::Embedding> token_embedding_, position_embedding_;
  std::shared_ptr<nn::ModuleList> layers_;
  std::shared_ptr<nn::Module> final_norm_;
  std::shared_ptr<nn::Linear> head_;
};

}  // namespace strata::models
