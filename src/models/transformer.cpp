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

class TransformerBlock : public nn::Module {
 public:
  TransformerBlock(const TransformerOptions& o, Generator& generator) : dropout_(o.dropout) {
    attention_norm_ = register_module("attention_norm", make_norm(o.norm, o.d_model));
    attention_ =
        register_module("attention", std::make_shared<CausalSelfAttention>(o.d_model, o.n_heads, o.dropout, generator));
    mlp_norm_ = register_module("mlp_norm", make_norm(o.norm, o.d_model));
    if (o.mlp == "swiglu") {
      gated_mlp_ = register_module("mlp", std::make_shared<nn::GatedMLP>(o.d_model, o.mlp_hidden, false, generator));
    } else {
      mlp_ = register_module("mlp", std::make_shared<nn::MLP>(o.d_model, o.mlp_hidden, nn::Activation::GELU, true, generator));
    }
  }

  Tensor forward(const Tensor& x) {
    Tensor h = ops::add(x, attention_->forward(apply_norm(attention_norm_, x)));
    Tensor normed = apply_norm(mlp_norm_, h);
    Tensor mlp_out = gated_mlp_ ? gated_mlp_->forward(normed) : mlp_->forward(normed);
    return ops::add(h, ops::dropout(mlp_out, dropout_, is_training()));
  }

 private:
  double dropout_;
  std::shared_ptr<nn::Module> attention_norm_, mlp_norm_;
  std::shared_ptr<CausalSelfAttention> attention_;
  std::shared_ptr<nn::MLP> mlp_;
  std::shared_ptr<nn::GatedMLP> gated_mlp_;
};

class TransformerLM : public Model {
 public:
  TransformerLM(const TransformerOptions& o, Generator& generator) : options_(o) {
    token_embedding_ = register_module("token_embedding", std::make_shared<nn::Embedding>(o.vocab_size, o.d_model, generator));
    position_embedding_ =
        register_module("position_embedding", std::make_shared<nn::Embedding>(o.max_length, o.d_model, generator));
    layers_ = register_module("layers", std::make_shared<nn::ModuleList>());
    for (int64_t i = 0; i < o.n_layers; ++i) layers_->push_back(std::make_shared<TransformerBlock>(o, generator));
    final_norm_ = register_module("final_norm", make_norm(o.norm, o.d_model));
    if (!o.tie_embeddings)
      head_ = register_module("head", std::make_shared<nn::Linear>(o.d_model, o.vocab_size, false, generator));
  }

  Tensor forward(const Tensor& tokens) override {
    STRATA_CHECK(tokens.dim() == 2, "transformer: tokens must be (batch, length), got {}", tokens.str());
    int64_t length = tokens.size(1);
    STRATA_CHECK(length <= options_.max_length, "transformer: sequence length {} exceeds model.max_length {}", length,
                 options_.max_length);
    Tensor positions = Tensor::arange(length, DType::Int64, tokens.device());
    Tensor x = ops::add(token_embedding_->forward(tokens), position_embedding_->forward(positions));
    x = ops::dropout(x, options_.dropout, is_training());
    for (size_t i = 0; i < layers_->size(); ++i) {
      auto block = layers_->get<TransformerBlock>(i);
      if (options_.activation_checkpointing && is_training()) {
        x = autograd::checkpoint([block](const std::vector<Tensor>& in) { return std::vector<Tensor>{block->forward(in[0])}; },
                                 {x}, "checkpoint(transformer block)")[0];
      } else {
        x = block->forward(x);
      }
    }
    x = apply_norm(final_norm_, x);
    return head_ ? head_->forward(x) : ops::linear(x, token_embedding_->weight());
  }

  Task task() const override { return Task::LanguageModel; }
  int64_t max_length() const override { return options_.max_length; }

 private:
  TransformerOptions options_;
  std::shared_ptr<nn::Embedding> token_embedding_, position_embedding_;
  std::shared_ptr<nn::ModuleList> layers_;
  std::shared_ptr<nn::Module> final_norm_;
  std::shared_ptr<nn::Linear> head_;
};

const bool registered = register_family("transformer", [](const config::Config& c, Generator& generator) {
  return std::make_shared<TransformerLM>(TransformerOptions::read(c), generator);
});

}  // namespace
}  // namespace strata::models
