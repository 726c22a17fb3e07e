// A LLaMA-shaped decoder-only language model: token embedding (no learned
// positions: RoPE in every attention block), n_layers pre-norm blocks
//   h = x + Attention(RMSNorm(x)),  out = h + SwiGLU(RMSNorm(h)),
// a final RMSNorm and an output head, tied to the embedding by default. The
// attention block (include/strata/nn/attention.h) has grouped-query heads and a
// pattern chosen in the recipe.
//
// Recipe keys (section `model`): vocab_size (256), d_model, n_layers, n_heads,
// n_kv_heads (n_heads), max_length (0 = no limit), mlp_ratio (8/3), rope_base
// (10000), norm_eps (1e-6), tie_embeddings (true), activation_checkpointing
// (false), and `attention`: pattern (dense | sliding | power | s2 | neighborhood |
// sinks | selective), block_size (64 | 128, block-sparse patterns), and the
// pattern's own keys, which only that pattern accepts:
//   sliding: window_blocks          power: local_blocks, sink_blocks
//   s2: local_blocks, vertical_stride, dense_heads
//   neighborhood: window_blocks, dilation         selective: beta
//   topk: top_k (4), keep_first (false)
//   dma: keep_window (the keys each query keeps, the top by the learned key bias)
// Every pattern but dense also accepts dense_layers: a list of 0-based layer indices
// (each in [0, n_layers), no repeats; default none) whose attention is plain dense
// causal attention, while the other layers use the pattern. It builds S2-Attention's
// hybrid (some layers dense, the rest sparse), e.g. 8 layers with one of every six
// dense: `dense_layers: [0, 6]`. A dense layer has only the q, k, v, o projections
// (none of a pattern's own parameters) and ignores model.ssa.
//
// SSA (arXiv 2511.20102), for the block-sparse patterns (sliding, power, s2,
// neighborhood, topk), section `model.ssa`: train (sparse | full | ssa, default
// sparse), inference (sparse | full, default sparse), alpha (10), full_probability
// (0.5). train: sparse trains the pattern (SA), full trains plain dense causal
// attention (FA), ssa draws full or sparse for the whole network each training
// forward pass (probability full_probability of full), computes both outputs in every
// sparse layer (those not in dense_layers), feeds the drawn one on, and adds alpha *
// mean over the sparse layers of [SmoothL1(O_full, sg(O_sparse)) + SmoothL1(sg(O_full),
// O_sparse)] as the auxiliary loss. Outside training (eval, generation) the model
// attends by `inference`, which `strata eval CHECKPOINT model.ssa.inference=full`
// overrides.
//
// Generation: start_decoding/decode keep a KV cache per layer and attend each new
// token over it (every pattern but neighborhood).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "strata/autograd/autograd.h"
#include "strata/models/model.h"
#include "strata/nn/attention.h"
#include "strata/nn/layers.h"
#include "strata/ops/ops.h"

namespace strata::models {
namespace {

struct LlamaOptions {
  int64_t vocab_size, n_layers, max_length, mlp_hidden;
  double norm_eps;
  bool tie_embeddings, activation_checkpointing;
  nn::AttentionBlockOptions attention;
  // model.attention.dense_layers: is_dense_layer[i] when layer i attends densely
  // instead of by attention.pattern.
  std::vector<bool> is_dense_layer;
  // SSA (model.ssa): how training and inference attend; see the header comment.
  std::string ssa_train = "sparse", ssa_inference = "sparse";
  double ssa_alpha = 10.0, ssa_full_probability = 0.5;

  static LlamaOptions read(const config::Config& c) {
    LlamaOptions o;
    o.vocab_size = c.get_positive<int64_t>("model.vocab_size", 256);
    nn::AttentionBlockOptions& a = o.attention;
    a.d_model = c.get_positive<int64_t>("model.d_model");
    o.n_layers = c.get_positive<int64_t>("model.n_layers");
    a.n_heads = c.get_positive<int64_t>("model.n_heads");
    a.n_kv_heads = c.get_positive<int64_t>("model.n_kv_heads", a.n_heads);
    o.max_length = c.get_in_range<int64_t>("model.max_length", 0, INT64_MAX, 0);
    double ratio = c.get_positive<double>("model.mlp_ratio", 8.0 / 3.0);
    o.mlp_hidden = std::max<int64_t>(1, std::llround(ratio * static_cast<double>(a.d_model)));
    a.rope_base = c.get_in_range<double>("model.rope_base", 1.0 + 1e-9, 1e12, 10000.0);
    o.norm_eps = c.get_positive<double>("model.norm_eps", 1e-6);
    o.tie_embeddings = c.get<bool>("model.tie_embeddings", true);
    o.activation_checkpointing = c.get<bool>("model.activation_checkpointing", false);

    const std::string p = "model.attention.";
    std::string pattern = c.get_choice(p + "pattern", {"dense", "sliding", "power", "s2", "neighborhood", "sinks",
                                                       "selective", "topk", "dma"});
    a.pattern = nn::parse_attention_pattern(pattern);
    bool sparse = pattern == "sliding" || pattern == "power" || pattern == "s2" || pattern == "neighborhood" ||
                  pattern == "topk";
    if (sparse) {
      a.block_size = c.get_positive<int64_t>(p + "block_size", 64);
      STRATA_CHECK(a.block_size == 64 || a.block_size == 128, "{}block_size: expected 64 or 128, got {}", p,
                   a.block_size);
    }
    if (pattern == "sliding" || pattern == "neighborhood")
      a.window_blocks = c.get_positive<int64_t>(p + "window_blocks");
    if (pattern == "neighborhood") a.dilation = c.get_positive<int64_t>(p + "dilation", 1);
    if (pattern == "power" || pattern == "s2") a.local_blocks = c.get_positive<int64_t>(p + "local_blocks", 1);
    if (pattern == "power") a.sink_blocks = c.get_in_range<int64_t>(p + "sink_blocks", 0, INT64_MAX, 1);
    if (pattern == "s2") {
      a.vertical_stride = c.get_positive<int64_t>(p + "vertical_stride");
      a.dense_heads = c.get_in_range<int64_t>(p + "dense_heads", 0, a.n_heads - 1, 0);
    }
    if (pattern == "selective") a.selective_beta = c.get<double>(p + "beta", 1.5);
    if (pattern == "dma") a.keep_window = c.get_positive<int64_t>(p + "keep_window");
    if (pattern == "topk") {
      a.topk_keep_first = c.get<bool>(p + "keep_first", false);
      a.top_k = c.get_in_range<int64_t>(p + "top_k", a.topk_keep_first ? 2 : 1, INT64_MAX, 4);
    }
    o.is_dense_layer.assign(static_cast<size_t>(o.n_layers), false);
    if (pattern != "dense") {
      const std::string key = p + "dense_layers";
      for (int64_t layer : c.get<std::vector<int64_t>>(key, {})) {
        STRATA_CHECK(layer >= 0 && layer < o.n_layers,
                     "{}: layer {} is out of range: model.n_layers is {} (layers 0..{})", key, layer, o.n_layers,
                     o.n_layers - 1);
        STRATA_CHECK(!o.is_dense_layer[static_cast<size_t>(layer)], "{}: layer {} is listed twice", key, layer);
        o.is_dense_layer[static_cast<size_t>(layer)] = true;
      }
    }
    if (sparse) {
      const std::string s = "model.ssa.";
      o.ssa_train = c.get_choice(s + "train", {"sparse", "full", "ssa"}, "sparse");
      o.ssa_inference = c.get_choice(s + "inference", {"sparse", "full"}, "sparse");
      o.ssa_alpha = c.get_in_range<double>(s + "alpha", 0.0, 1e6, 10.0);
      o.ssa_full_probability = c.get_in_range<double>(s + "full_probability", 0.0, 1.0, 0.5);
    }
    a.validate();
    return o;
  }

  // The attention of layer `layer`: the pattern's, or plain dense causal attention of
  // the same shape for a layer in dense_layers.
  nn::AttentionBlockOptions attention_of_layer(int64_t layer) const {
    if (!is_dense_layer[static_cast<size_t>(layer)]) return attention;
    nn::AttentionBlockOptions dense;
    dense.d_model = attention.d_model;
    dense.n_heads = attention.n_heads;
    dense.n_kv_heads = attention.n_kv_heads;
    dense.rope_base = attention.rope_base;
    return dense;
  }
};

class LlamaBlock : public nn::Module {
 public:
  LlamaBlock(const LlamaOptions& o, const nn::AttentionBlockOptions& attention, Generator& generator) {
    int64_t d = attention.d_model;
    attention_norm_ = register_module("attention_norm", std::make_shared<nn::RMSNorm>(d, o.norm_eps));
    attention_ = register_module("attention", std::make_shared<nn::AttentionBlock>(attention, generator));
    mlp_norm_ = register_module("mlp_norm", std::make_shared<nn::RMSNorm>(d, o.norm_eps));
    mlp_ = register_module("mlp", std::make_shared<nn::GatedMLP>(d, o.mlp_hidden, false, generator));
  }

  // x (batch, length, d_model) -> {(batch, length, d_model)}, and the attention's SSA
  // alignment loss after it when the attention computes one (returned rather than
  // read off the layer so that it stays differentiable through activation
  // checkpointing, whose recomputation builds a new graph).
  std::vector<Tensor> forward(const Tensor& x) {
    Tensor out = feed_forward(ops::add(x, attention_->forward(attention_norm_->forward(x))));
    const auto mode = attention_->ssa_mode();
    if (mode == nn::AttentionBlock::SsaMode::AlignSparse || mode == nn::AttentionBlock::SsaMode::AlignFull)
      return {out, attention_->alignment_loss()};
    return {out};
  }
  // x_t (batch, 1, d_model), appending to `cache`.
  Tensor step(const Tensor& x_t, nn::KVCache& cache) {
    return feed_forward(ops::add(x_t, attention_->forward_step(attention_norm_->forward(x_t), cache)));
  }

  nn::AttentionBlock& attention() { return *attention_; }

 private:
  Tensor feed_forward(const Tensor& h) { return ops::add(h, mlp_->forward(mlp_norm_->forward(h))); }

  std::shared_ptr<nn::RMSNorm> attention_norm_, mlp_norm_;
  std::shared_ptr<nn::AttentionBlock> attention_;
  std::shared_ptr<nn::GatedMLP> mlp_;
};

struct LlamaDecodingState : DecodingState {
  int64_t batch = 0;
  std::vector<nn::KVCache> caches;  // one per layer
};

class LlamaLM : public Model {
 public:
  LlamaLM(const LlamaOptions& o, Generator& generator) : options_(o) {
    int64_t d = o.attention.d_model;
    embedding_ = register_module("embedding", std::make_shared<nn::Embedding>(o.vocab_size, d, generator));
    layers_ = register_module("layers", std::make_shared<nn::ModuleList>());
    for (int64_t i = 0; i < o.n_layers; ++i)
      layers_->push_back(std::make_shared<LlamaBlock>(o, o.attention_of_layer(i), generator));
    final_norm_ = register_module("final_norm", std::make_shared<nn::RMSNorm>(d, o.norm_eps));
    if (!o.tie_embeddings) head_ = register_module("head", std::make_shared<nn::Linear>(d, o.vocab_size, false, generator));
  }

  Tensor forward(const Tensor& tokens) override {
    STRATA_CHECK(tokens.dim() == 2, "llama: tokens must be (batch, length), got {}", tokens.str());
    STRATA_CHECK(options_.max_length == 0 || tokens.size(1) <= options_.max_length,
                 "llama: sequence length {} exceeds model.max_length {}", tokens.size(1), options_.max_length);
    Tensor x = embedding_->forward(tokens);  // (batch, length, d_model)
    set_ssa_mode(is_training() ? training_ssa_mode() : inference_ssa_mode());
    Tensor alignment;  // summed over the sparse layers
    for (size_t i = 0; i < layers_->size(); ++i) {
      auto block = layers_->get<LlamaBlock>(i);
      std::vector<Tensor> outputs =
          options_.activation_checkpointing && is_training()
              ? autograd::checkpoint([block](const std::vector<Tensor>& in) { return block->forward(in[0]); }, {x},
                                     "checkpoint(llama block)")
              : block->forward(x);
      x = outputs[0];
      if (outputs.size() > 1) alignment = alignment.defined() ? ops::add(alignment, outputs[1]) : outputs[1];
    }
    auxiliary_loss_ = alignment.defined()
                          ? ops::mul(alignment, options_.ssa_alpha / static_cast<double>(sparse_layer_count()))
                          : Tensor();
    return logits(x);
  }

  // SSA: alpha * the mean over the sparse layers of the alignment losses of the last
  // forward pass (undefined unless it trained with model.ssa.train = ssa).
  Tensor auxiliary_loss() override { return auxiliary_loss_; }

  Task task() const override { return Task::LanguageModel; }
  int64_t max_length() const override { return options_.max_length; }

  std::unique_ptr<DecodingState> start_decoding(int64_t batch) override {
    if (options_.attention.pattern == nn::AttentionPattern::Neighborhood) return nullptr;
    STRATA_CHECK(batch > 0, "llama start_decoding: batch must be positive, got {}", batch);
    auto state = std::make_unique<LlamaDecodingState>();
    state->batch = batch;
    state->caches.resize(layers_->size());
    return state;
  }

  Tensor decode(const Tensor& tokens_t, DecodingState& state) override {
    auto* llama_state = dynamic_cast<LlamaDecodingState*>(&state);
    STRATA_CHECK(llama_state != nullptr, "llama decode: the state was not made by this model's start_decoding");
    STRATA_CHECK(tokens_t.dim() == 1 && tokens_t.size(0) == llama_state->batch,
                 "llama decode: tokens_t must be (batch = {}), got {}", llama_state->batch, tokens_t.str());
    set_ssa_mode(inference_ssa_mode());
    Tensor x = embedding_->forward(ops::unsqueeze(tokens_t, 1));  // (batch, 1, d_model)
    for (size_t i = 0; i < layers_->size(); ++i) x = layers_->get<LlamaBlock>(i)->step(x, llama_state->caches[i]);
    return ops::squeeze(logits(x), 1);
  }

 private:
  using SsaMode = nn::AttentionBlock::SsaMode;

  SsaMode inference_ssa_mode() const { return options_.ssa_inference == "full" ? SsaMode::Full : SsaMode::Pattern; }
  // One draw per forward pass for the whole network (model.ssa.train = ssa), from the
  // default generator, which checkpoints save and restore.
  SsaMode training_ssa_mode() const {
    if (options_.ssa_train == "full") return SsaMode::Full;
    if (options_.ssa_train == "sparse") return SsaMode::Pattern;
    const bool full = rand_uniform({1}, 0.0, 1.0).item() < options_.ssa_full_probability;
    return full ? SsaMode::AlignFull : SsaMode::AlignSparse;
  }
  // The layers in dense_layers stay in Pattern mode: their pattern is dense already.
  void set_ssa_mode(SsaMode mode) {
    for (size_t i = 0; i < layers_->size(); ++i)
      if (!options_.is_dense_layer[i]) layers_->get<LlamaBlock>(i)->attention().set_ssa_mode(mode);
  }
  int64_t sparse_layer_count() const {
    return static_cast<int64_t>(std::count(options_.is_dense_layer.begin(), options_.is_dense_layer.end(), false));
  }

  // (..., d_model) -> (..., vocab)
  Tensor logits(const Tensor& x) const {
    Tensor normed = final_norm_->forward(x);
    return head_ ? head_->forward(normed) : ops::linear(normed, embedding_->weight());
  }

  LlamaOptions options_;
  std::shared_ptr<nn::Embedding> embedding_;
  std::shared_ptr<nn::ModuleList> layers_;
  std::shared_ptr<nn::RMSNorm> final_norm_;
  std::shared_ptr<nn::Linear> head_;
  Tensor auxiliary_loss_;
};

const bool registered = register_family("llama", [](const config::Config& c, Generator& generator) {
  return std::make_shared<LlamaLM>(LlamaOptions::read(c), generator);
});

}  // namespace
}  // namespace strata::models
