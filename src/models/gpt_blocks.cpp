#include "models/gpt_blocks.h"

#include <cmath>
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

}  // namespace strata::models
