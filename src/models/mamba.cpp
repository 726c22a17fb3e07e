// The Mamba language models: `mamba` (Gu & Dao, 2023; mixer_seq_simple.py) and
// `mamba2` (Dao & Gu, 2024), the same skeleton around different mixers: a token
// embedding, n_layers pre-norm residual blocks x <- x + Mixer(norm(x)) (no MLP: a
// Mamba has about twice the blocks of a Transformer of the same size), a final norm
// and an output head tied to the embedding. No position embedding, so no length
// limit: a model trained at one length runs at any other.
//
// Initialisation as the reference does it: embedding N(0, 0.02^2), the mixers' own
// (include/strata/nn/mamba.h), and each out_proj.weight divided by sqrt(n_layers) so
// the residual stream's variance does not grow with depth.
//
// Generation: start_decoding/decode step every mixer (conv and scan state per
// layer, constant in the sequence length), so a token costs the same at any position.
//
// Recipe keys (section `model`), both families: vocab_size (256), d_model,
// n_layers, d_state (mamba 16, mamba2 128), expand (2), d_conv (4), dt_min (1e-3),
// dt_max (0.1), dt_init_floor (1e-4), norm (rmsnorm | layernorm), norm_eps (1e-5),
// tie_embeddings (true), activation_checkpointing (false).
//   mamba:  dt_rank (auto = ceil(d_model / 16)), lti (false), bidirectional (false)
//   mamba2: head_dim (64), groups (1), chunk_size (256), A_init_range ([1, 16])
#include <cmath>
#include <type_traits>

#include "models/gpt_blocks.h"
#include "strata/autograd/autograd.h"
#include "strata/models/model.h"
#include "strata/nn/layers.h"
#include "strata/nn/mamba.h"
#include "strata/ops/ops.h"

namespace strata::models {
namespace {

// What the two families share.
struct LMOptions {
  int64_t vocab_size, n_layers, d_model;
  std::string norm;
  double norm_eps;
  bool tie_embeddings, activation_checkpointing;

  static LMOptions read(const config::Config& c) {
    LMOptions o;
    o.vocab_size = c.get_positive<int64_t>("model.vocab_size", 256);
    o.n_layers = c.get_positive<int64_t>("model.n_layers");
    o.d_model = c.get_positive<int64_t>("model.d_model");
    o.norm = c.get_choice("model.norm", {"rmsnorm", "layernorm"}, std::string("rmsnorm"));
    o.norm_eps = c.get_positive<double>("model.norm_eps", 1e-5);
    o.tie_embeddings = c.get<bool>("model.tie_embeddings", true);
    o.activation_checkpointing = c.get<bool>("model.activation_checkpointing", false);
    return o;
  }
};

// dt_min, dt_max and dt_init_floor, into either mixer's options.
template <class MixerOptions>
void read_dt_range(const config::Config& c, MixerOptions& o) {
  o.dt_min = c.get_positive<double>("model.dt_min", o.dt_min);
  o.dt_max = c.get_positive<double>("model.dt_max", o.dt_max);
  STRATA_CHECK(o.dt_min <= o.dt_max, "model.dt_min ({}) must not exceed model.dt_max ({})", o.dt_min, o.dt_max);
  o.dt_init_floor = c.get_positive<double>("model.dt_init_floor", o.dt_init_floor);
}

nn::MambaOptions read_mamba(const config::Config& c, int64_t d_model) {
  nn::MambaOptions o;
  o.d_model = d_model;
  o.d_state = c.get_in_range<int64_t>("model.d_state", 1, 256, o.d_state);
  o.expand = c.get_positive<int64_t>("model.expand", o.expand);
  o.d_conv = c.get_in_range<int64_t>("model.d_conv", 2, 8, o.d_conv);
  o.dt_rank = c.get<std::string>("model.dt_rank", "auto") == "auto" ? 0 : c.get_positive<int64_t>("model.dt_rank");
  read_dt_range(c, o);
  o.lti = c.get<bool>("model.lti", false);
  o.bidirectional = c.get<bool>("model.bidirectional", false);
  if (o.bidirectional && c.has("data.name")) {
    // Position t of a bidirectional block reads the inputs after t; on a task whose
    // target at t is the input at t + 1 the model would just copy it.
    std::string task = c.get<std::string>("data.name");
    STRATA_CHECK(task == "selective_copying" || task == "induction_heads" || task == "mqar",
                 "model.bidirectional: the blocks would see the next input, which data '{}' asks the model to "
                 "predict; use it with selective_copying, induction_heads or mqar, whose answers are not inputs",
                 task);
  }
  o.validate();
  return o;
}

nn::Mamba2Options read_mamba2(const config::Config& c, int64_t d_model) {
  nn::Mamba2Options o;
  o.d_model = d_model;
  o.d_state = c.get_positive<int64_t>("model.d_state", o.d_state);
  o.expand = c.get_positive<int64_t>("model.expand", o.expand);
  o.d_conv = c.get_in_range<int64_t>("model.d_conv", 2, 8, o.d_conv);
  o.head_dim = c.get_positive<int64_t>("model.head_dim", o.head_dim);
  o.groups = c.get_positive<int64_t>("model.groups", o.groups);
  o.chunk_size = c.get_positive<int64_t>("model.chunk_size", o.chunk_size);
  std::vector<double> range = c.get<std::vector<double>>("model.A_init_range", {o.A_init_min, o.A_init_max});
  STRATA_CHECK(range.size() == 2 && range[0] > 0 && range[0] <= range[1],
               "model.A_init_range: expected [low, high] with 0 < low <= high");
  o.A_init_min = range[0];
  o.A_init_max = range[1];
  read_dt_range(c, o);
  STRATA_CHECK(o.d_inner() % o.head_dim == 0, "model.head_dim ({}) must divide expand * d_model ({})", o.head_dim,
               o.d_inner());
  STRATA_CHECK(o.heads() % o.groups == 0, "model.groups ({}) must divide the {} heads", o.groups, o.heads());
  o.validate();
  return o;
}

std::shared_ptr<nn::Module> make_norm(const LMOptions& o) {
  if (o.norm == "rmsnorm") return std::make_shared<nn::RMSNorm>(o.d_model, o.norm_eps);
  return std::make_shared<nn::LayerNorm>(o.d_model, o.norm_eps);
}

// x <- x + mixer(norm(x))
template <class Mixer>
class ResidualBlock : public nn::Module {
 public:
  ResidualBlock(const LMOptions& lm, const typename Mixer::Options& mixer, Generator& generator) {
    norm_ = register_module("norm", make_norm(lm));
    mixer_ = register_module("mixer", std::make_shared<Mixer>(mixer, generator));
    Tensor out_weight = mixer_->out_proj->weight();
    out_weight.copy_(ops::mul(out_weight.detach(), 1.0 / std::sqrt(static_cast<double>(lm.n_layers))));
  }

  // (batch, L, d_model) -> (batch, L, d_model)
  Tensor forward(const Tensor& x) const { return ops::add(x, mixer_->forward(apply_norm(norm_, x))); }
  // (batch, d_model) -> (batch, d_model), one position
  Tensor step(const Tensor& x_t, nn::MambaDecodingState& state) const {
    return ops::add(x_t, mixer_->step(apply_norm(norm_, x_t), state));
  }
  nn::MambaDecodingState start_decoding(int64_t batch) const { return mixer_->start_decoding(batch); }

 private:
  std::shared_ptr<nn::Module> norm_;
  std::shared_ptr<Mixer> mixer_;
};

struct LayerStates : DecodingState {
  int64_t batch = 0;
  std::vector<nn::MambaDecodingState> layers;
};

template <class Mixer>
class RecurrentLM : public Model {
 public:
  RecurrentLM(const LMOptions& lm, const typename Mixer::Options& mixer, Generator& generator)
      : options_(lm), decodes_(true) {
    if constexpr (std::is_same_v<Mixer, nn::MambaBlock>) decodes_ = !mixer.bidirectional;
    embedding_ = register_module("embedding", std::make_shared<nn::Embedding>(lm.vocab_size, lm.d_model, generator));
    layers_ = register_module("layers", std::make_shared<nn::ModuleList>());
    for (int64_t i = 0; i < lm.n_layers; ++i)
      layers_->push_back(std::make_shared<ResidualBlock<Mixer>>(lm, mixer, generator));
    final_norm_ = register_module("final_norm", make_norm(lm));
    if (!lm.tie_embeddings)
      head_ = register_module("head", std::make_shared<nn::Linear>(lm.d_model, lm.vocab_size, false, generator));
  }

  Tensor forward(const Tensor& tokens) override {
    STRATA_CHECK(tokens.dim() == 2, "mamba: tokens must be (batch, length), got {}", tokens.str());
    Tensor x = embedding_->forward(tokens);  // (batch, L, d_model)
    for (size_t i = 0; i < layers_->size(); ++i) {
      auto block = layers_->get<ResidualBlock<Mixer>>(i);
      if (options_.activation_checkpointing && is_training()) {
        x = autograd::checkpoint(
            [block](const std::vector<Tensor>& in) { return std::vector<Tensor>{block->forward(in[0])}; }, {x},
            "checkpoint(mamba block)")[0];
      } else {
        x = block->forward(x);
      }
    }
    return logits(x);
  }

  Task task() const override { return Task::LanguageModel; }

  // nullptr for bidirectional blocks, which read positions not generated yet.
  std::unique_ptr<DecodingState> start_decoding(int64_t batch) override {
    if (!decodes_) return nullptr;
    auto state = std::make_unique<LayerStates>();
    state->batch = batch;
    for (size_t i = 0; i < layers_->size(); ++i)
      state->layers.push_back(layers_->get<ResidualBlock<Mixer>>(i)->start_decoding(batch));
    return state;
  }

  Tensor decode(const Tensor& tokens_t, DecodingState& state) override {
    auto* layer_states = dynamic_cast<LayerStates*>(&state);
    STRATA_CHECK(layer_states != nullptr && layer_states->layers.size() == layers_->size(),
                 "mamba decode: the state was not made by this model's start_decoding");
    STRATA_CHECK(tokens_t.dim() == 1 && tokens_t.size(0) == layer_states->batch,
                 "mamba decode: tokens_t must be (batch = {}), got {}", layer_states->batch, tokens_t.str());
    Tensor x = embedding_->forward(tokens_t);  // (batch, d_model)
    for (size_t i = 0; i < layers_->size(); ++i)
      x = layers_->get<ResidualBlock<Mixer>>(i)->step(x, layer_states->layers[i]);
    return logits(x);
  }

 private:
  // (..., d_model) -> (..., vocab)
  Tensor logits(const Tensor& x) const {
    Tensor normed = apply_norm(final_norm_, x);
    return head_ ? head_->forward(normed) : ops::linear(normed, embedding_->weight());
  }

  LMOptions options_;
  bool decodes_;
  std::shared_ptr<nn::Embedding> embedding_;
  std::shared_ptr<nn::ModuleList> layers_;
  std::shared_ptr<nn::Module> final_norm_;
  std::shared_ptr<nn::Linear> head_;
};

const bool mamba_registered = register_family("mamba", [](const config::Config& c, Generator& generator) {
  LMOptions lm = LMOptions::read(c);
  return std::make_shared<RecurrentLM<nn::MambaBlock>>(lm, read_mamba(c, lm.d_model), generator);
});

const bool mamba2_registered = register_family("mamba2", [](const config::Config& c, Generator& generator) {
  LMOptions lm = LMOptions::read(c);
  return std::make_shared<RecurrentLM<nn::Mamba2Block>>(lm, read_mamba2(c, lm.d_model), generator);
});

}  // namespace
}  // namespace strata::models
