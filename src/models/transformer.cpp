// A decoder-only Transformer language model (GPT-2 shape, pre-norm): token and
// learned position embeddings, n_layers blocks of causal multi-head attention and
// an MLP (GELU or SwiGLU), a final norm, and an output head (tied to the token
// embedding by default). Attention is composed from ops for now:
//   scores = Q K^T / sqrt(d_head), causally masked, softmax, times V;
// the fused attention kernels of the attention family replace it later.
//
// Recipe keys (section `model`): vocab_size, d_model, n_layers, n_heads,
// max_length, mlp (gelu | swiglu), mlp_ratio, norm (layernorm | rmsnorm), dropout,
// tie_embeddings, activation_checkpointing.
#include <cmath>

#include "models/gpt_blocks.h"
#include "strata/autograd/autograd.h"
#include "strata/models/model.h"
#include "strata/nn/layers.h"
#include "strata/ops/ops.h"

namespace strata::models {
namespace {

struct TransformerOptions {
  int64_t vocab_size, d_model, n_layers, n_heads, max_length, mlp_hidden;
  std::string mlp, norm;
  double dropout;
  bool tie_embeddings, activation_checkpointing;

  static TransformerOptions read(const config::Config& c) {
    TransformerOptions o;
    o.vocab_size = c.get_positive<int64_t>("model.vocab_size", 256);
    o.d_model = c.get_positive<int64_t>("model.d_model");
    o.n_layers = c.get_positive<int64_t>("model.n_layers");
    o.n_heads = c.get_positive<int64_t>("model.n_heads");
    o.max_length = c.get_positive<int64_t>("model.max_length");
    o.mlp = c.get_choice("model.mlp", {"gelu", "swiglu"}, std::string("gelu"));
    double ratio = c.get_positive<double>("model.mlp_ratio", o.mlp == "swiglu" ? 8.0 / 3.0 : 4.0);
    o.mlp_hidden = static_cast<int64_t>(std::llround(ratio * static_cast<double>(o.d_model)));
    o.norm = c.get_choice("model.norm", {"layernorm", "rmsnorm"}, std::string("layernorm"));
    o.dropout = c.get_in_range<double>("model.dropout", 0.0, 0.99, 0.0);
    o.tie_embeddings = c.get<bool>("model.tie_embeddings", true);
    o.activation_checkpointing = c.get<bool>("model.activation_checkpointing", false);
    STRATA_CHECK(o.d_model % o.n_heads == 0, "model.d_model ({}) must be a multiple of model.n_heads ({})", o.d_model,
                 o.n_heads);
    return o;
  }
};

class TransformerBlock : public PreNormBlock {
 public:
  TransformerBlock(const TransformerOptions& o, Generator& generator)
      : PreNormBlock(o.norm, o.d_model, o.n_heads, o.dropout, generator) {
    if (o.mlp == "swiglu") {
      gated_mlp_ = register_module("mlp", std::make_shared<nn::GatedMLP>(o.d_model, o.mlp_hidden, false, generator));
    } else {
      mlp_ = register_module("mlp", std::make_shared<nn::MLP>(o.d_model, o.mlp_hidden, nn::Activation::GELU, true, generator));
    }
  }

  Tensor forward(const Tensor& x) {
    return residual_forward(x, [&](const Tensor& normed) {
      return gated_mlp_ ? gated_mlp_->forward(normed) : mlp_->forward(normed);
    });
  }

 private:
  std::shared_ptr<nn::MLP> mlp_;
  std::shared_ptr<nn::GatedMLP> gated_mlp_;
};

class TransformerLM : public GPTLanguageModel {
 public:
  TransformerLM(const TransformerOptions& o, Generator& generator)
      : GPTLanguageModel("transformer", ends_of(o), generator,
                         [&](int64_t) { return std::make_shared<TransformerBlock>(o, generator); }),
        activation_checkpointing_(o.activation_checkpointing) {}

  Tensor forward(const Tensor& tokens) override {
    Tensor x = embed(tokens);
    for (size_t i = 0; i < block_count(); ++i) {
      auto layer = block<TransformerBlock>(i);
      if (activation_checkpointing_ && is_training()) {
        auto run_block = [layer](const std::vector<Tensor>& in) { return std::vector<Tensor>{layer->forward(in[0])}; };
        x = autograd::checkpoint(run_block, {x}, "checkpoint(transformer block)")[0];
      } else {
        x = layer->forward(x);
      }
    }
    return logits(x);
  }

 private:
  bool activation_checkpointing_;
};

const bool registered = register_family("transformer", [](const config::Config& c, Generator& generator) {
  return std::make_shared<TransformerLM>(TransformerOptions::read(c), generator);
});

}  // namespace
}  // namespace strata::models
