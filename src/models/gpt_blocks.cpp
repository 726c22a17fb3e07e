#include "models/gpt_blocks.h"

#include <cmath>
#include <utility>
#include <vector>

#include "strata/ops/ops.h"

namespace strata::models {

std::shared_ptr<nn::Module> make_norm(const std::string& kind, int64_t d_model) {
  if (kind == "rmsnorm") return std::make_shared<nn::RMSNorm>(d_model);
  return std::make_shared<nn::LayerNorm>(d_model);
}

Tensor apply_norm(const std::shared_ptr<nn::Module>& norm, const Tensor& x) {
  if (auto* rms = dynamic_cast<nn::RMSNorm*>(norm.get())) return rms->forward(x);
  return static_cast<nn::LayerNorm*>(norm.get())->forward(x);
}

CausalSelfAttention::CausalSelfAttention(int64_t d_model, int64_t n_heads, double dropout, Generator& generator)
    : n_heads_(n_heads), d_head_(d_model / n_heads), dropout_(dropout) {
  qkv_ = register_module("qkv", std::make_shared<nn::Linear>(d_model, 3 * d_model, true, generator));
  out_ = register_module("out", std::make_shared<nn::Linear>(d_model, d_model, true, generator));
}

Tensor CausalSelfAttention::forward(const Tensor& x) {
  int64_t batch = x.size(0), length = x.size(1), d_model = x.size(2);
  // (batch, length, 3, heads, d_head) -> 3 x (batch, heads, length, d_head)
  Tensor qkv = ops::permute(ops::reshape(qkv_->forward(x), {batch, length, 3, n_heads_, d_head_}), {2, 0, 3, 1, 4});
  std::vector<Tensor> parts = ops::split(qkv, {1, 1, 1}, 0);
  Tensor q = ops::squeeze(parts[0], 0), k = ops::squeeze(parts[1], 0), v = ops::squeeze(parts[2], 0);
  Tensor scores = ops::mul(ops::matmul(q, ops::transpose(k, -2, -1)), 1.0 / std::sqrt(static_cast<double>(d_head_)));
  scores = ops::masked_fill(scores, ops::causal_mask(length, x.device()), -INFINITY);
  Tensor probabilities = ops::dropout(ops::softmax(scores, -1), dropout_, is_training());
  Tensor context = ops::matmul(probabilities, v);  // (batch, heads, length, d_head)
  context = ops::reshape(ops::permute(context, {0, 2, 1, 3}), {batch, length, d_model});
  return ops::dropout(out_->forward(context), dropout_, is_training());
}

PreNormBlock::PreNormBlock(const std::string& norm, int64_t d_model, int64_t n_heads, double dropout,
                           Generator& generator)
    : dropout_(dropout) {
  attention_norm_ = register_module("attention_norm", make_norm(norm, d_model));
  attention_ =
      register_module("attention", std::make_shared<CausalSelfAttention>(d_model, n_heads, dropout, generator));
  mlp_norm_ = register_module("mlp_norm", make_norm(norm, d_model));
}

GPTLanguageModel::GPTLanguageModel(std::string family, const Ends& ends, Generator& generator,
                                   const BlockFactory& make_block)
    : family_(std::move(family)), ends_(ends) {
  token_embedding_ =
      register_module("token_embedding", std::make_shared<nn::Embedding>(ends.vocab_size, ends.d_model, generator));
  position_embedding_ =
      register_module("position_embedding", std::make_shared<nn::Embedding>(ends.max_length, ends.d_model, generator));
  layers_ = register_module("layers", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < ends.n_layers; ++i) layers_->push_back(make_block(i));
  final_norm_ = register_module("final_norm", make_norm(ends.norm, ends.d_model));
  if (!ends.tie_embeddings)
    head_ = register_module("head", std::make_shared<nn::Linear>(ends.d_model, ends.vocab_size, false, generator));
}

Tensor GPTLanguageModel::embed(const Tensor& tokens) {
  STRATA_CHECK(tokens.dim() == 2, "{}: tokens must be (batch, length), got {}", family_, tokens.str());
  int64_t length = tokens.size(1);
  STRATA_CHECK(length <= ends_.max_length, "{}: sequence length {} exceeds model.max_length {}", family_, length,
               ends_.max_length);
  Tensor positions = Tensor::arange(length, DType::Int64, tokens.device());
  Tensor x = ops::add(token_embedding_->forward(tokens), position_embedding_->forward(positions));
  return ops::dropout(x, ends_.dropout, is_training());
}

Tensor GPTLanguageModel::logits(const Tensor& x) {
  Tensor normed = apply_norm(final_norm_, x);
  return head_ ? head_->forward(normed) : ops::linear(normed, token_embedding_->weight());
}

}  // namespace strata::models
