// A decoder-only mixture-of-experts Transformer language model: the pre-norm
// Transformer of models/transformer.cpp (token and learned position embeddings,
// causal multi-head attention composed of ops, a final norm, a tied head) whose
// feed-forward slot is an nn::MoEFeedForward in every `moe_every`-th block (blocks
// moe_every - 1, 2 moe_every - 1, ...; 1 = all blocks; 0 = none, the dense
// counterpart with the same code) and a dense SwiGLU elsewhere.
// Blocks listed in `pkm.layers` get an nn::ProductKeyMemory in that slot instead.
//
// The auxiliary losses of the MoE layers (load balancing and router z-loss, already
// weighted) are summed into auxiliary_loss() by each forward pass; the trainer adds
// it to the task loss. metrics() reports each MoE layer's expert usage.
//
// Recipe keys (section `model`): vocab_size, d_model, n_layers, n_heads, max_length,
// mlp_ratio (dense SwiGLU hidden / d_model), norm (layernorm | rmsnorm), dropout,
// tie_embeddings, activation_checkpointing, moe_every, and
//   moe: experts, top_k, expert_hidden, capacity_factor (0 = dropless),
//        router (softmax | sigmoid), renormalize, aux_loss_weight, z_loss_weight,
//        shared_expert, chunk_size
//   pkm: layers (list of block indices), n_keys, top_k, d_key   (optional)
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "models/gpt_blocks.h"
#include "strata/autograd/autograd.h"
#include "strata/models/model.h"
#include "strata/nn/layers.h"
#include "strata/nn/moe.h"
#include "strata/ops/moe.h"
#include "strata/ops/ops.h"

namespace strata::models {
namespace {

struct MoETransformerOptions {
  int64_t vocab_size, d_model, n_layers, n_heads, max_length, mlp_hidden, moe_every;
  std::string norm;
  double dropout;
  bool tie_embeddings, activation_checkpointing;
  nn::MoEFeedForwardOptions moe;
  std::vector<int64_t> pkm_layers;
  int64_t pkm_n_keys = 0, pkm_top_k = 0, pkm_d_key = 0;

  static MoETransformerOptions read(const config::Config& c) {
    MoETransformerOptions o;
    o.vocab_size = c.get_positive<int64_t>("model.vocab_size", 256);
    o.d_model = c.get_positive<int64_t>("model.d_model");
    o.n_layers = c.get_positive<int64_t>("model.n_layers");
    o.n_heads = c.get_positive<int64_t>("model.n_heads");
    o.max_length = c.get_positive<int64_t>("model.max_length");
    double ratio = c.get_positive<double>("model.mlp_ratio", 8.0 / 3.0);
    o.mlp_hidden = static_cast<int64_t>(std::llround(ratio * static_cast<double>(o.d_model)));
    o.norm = c.get_choice("model.norm", {"layernorm", "rmsnorm"}, std::string("rmsnorm"));
    o.dropout = c.get_in_range<double>("model.dropout", 0.0, 0.99, 0.0);
    o.tie_embeddings = c.get<bool>("model.tie_embeddings", true);
    o.activation_checkpointing = c.get<bool>("model.activation_checkpointing", false);
    o.moe_every = c.get_in_range<int64_t>("model.moe_every", 0, o.n_layers, 2);
    STRATA_CHECK(o.d_model % o.n_heads == 0, "model.d_model ({}) must be a multiple of model.n_heads ({})", o.d_model,
                 o.n_heads);

    nn::MoEFeedForwardOptions& m = o.moe;
    m.d_model = o.d_model;
    m.experts = c.get_positive<int64_t>("model.moe.experts", 8);
    m.top_k = c.get_in_range<int64_t>("model.moe.top_k", 1, m.experts, 2);
    m.expert_hidden = c.get_positive<int64_t>("model.moe.expert_hidden", o.mlp_hidden);
    m.capacity_factor = c.get_in_range<double>("model.moe.capacity_factor", 0.0, 1e6, 0.0);
    m.router = ops::parse_router_scoring(c.get_choice("model.moe.router", {"softmax", "sigmoid"}, std::string("softmax")));
    m.renormalize = c.get<bool>("model.moe.renormalize", true);
    m.aux_loss_weight = c.get_in_range<double>("model.moe.aux_loss_weight", 0.0, 1e6, 0.01);
    m.z_loss_weight = c.get_in_range<double>("model.moe.z_loss_weight", 0.0, 1e6, 0.001);
    m.shared_expert = c.get<bool>("model.moe.shared_expert", false);
    m.chunk_size = c.get_positive<int64_t>("model.moe.chunk_size", 1);
    m.validate();

    if (c.has("model.pkm")) {
      o.pkm_layers = c.get<std::vector<int64_t>>("model.pkm.layers");
      for (int64_t layer : o.pkm_layers)
        STRATA_CHECK(layer >= 0 && layer < o.n_layers, "model.pkm.layers: block {} is outside 0..{}", layer,
                     o.n_layers - 1);
      o.pkm_n_keys = c.get_positive<int64_t>("model.pkm.n_keys");
      o.pkm_top_k = c.get_in_range<int64_t>("model.pkm.top_k", 1, o.pkm_n_keys, std::min<int64_t>(8, o.pkm_n_keys));
      o.pkm_d_key = c.get_positive<int64_t>("model.pkm.d_key", o.d_model / 2);
    }
    return o;
  }

  bool is_moe_block(int64_t index) const { return moe_every > 0 && (index + 1) % moe_every == 0; }
  bool is_pkm_block(int64_t index) const {
    return std::find(pkm_layers.begin(), pkm_layers.end(), index) != pkm_layers.end();
  }
};

// Pre-norm block; its feed-forward slot is dense SwiGLU, MoE or product-key memory.
class MoETransformerBlock : public PreNormBlock {
 public:
  MoETransformerBlock(const MoETransformerOptions& o, int64_t index, Generator& generator)
      : PreNormBlock(o.norm, o.d_model, o.n_heads, o.dropout, generator) {
    if (o.is_pkm_block(index))
      memory_ = register_module("memory", std::make_shared<nn::ProductKeyMemory>(o.d_model, o.pkm_d_key, o.pkm_n_keys,
                                                                                 o.pkm_top_k, generator));
    else if (o.is_moe_block(index))
      moe_ = register_module("moe", std::make_shared<nn::MoEFeedForward>(o.moe, generator));
    else
      mlp_ = register_module("mlp", std::make_shared<nn::GatedMLP>(o.d_model, o.mlp_hidden, false, generator));
  }

  // {x} -> {block output} or, for an MoE block, {block output, weighted auxiliary loss}:
  // returning the loss (rather than reading it off the layer) keeps it differentiable
  // through activation checkpointing, whose recomputation builds a new graph.
  std::vector<Tensor> forward(const Tensor& x) {
    Tensor out = residual_forward(x, [&](const Tensor& normed) {
      return moe_ ? moe_->forward(normed) : memory_ ? memory_->forward(normed) : mlp_->forward(normed);
    });
    if (moe_) return {out, moe_->auxiliary_loss()};
    return {out};
  }

  const std::shared_ptr<nn::MoEFeedForward>& moe() const { return moe_; }
  const std::shared_ptr<nn::ProductKeyMemory>& memory() const { return memory_; }

 private:
  std::shared_ptr<nn::GatedMLP> mlp_;
  std::shared_ptr<nn::MoEFeedForward> moe_;
  std::shared_ptr<nn::ProductKeyMemory> memory_;
};

class MoETransformerLM : public GPTLanguageModel {
 public:
  MoETransformerLM(const MoETransformerOptions& o, Generator& generator)
      : GPTLanguageModel("moe_transformer", ends_of(o), generator,
                         [&](int64_t i) { return std::make_shared<MoETransformerBlock>(o, i, generator); }),
        activation_checkpointing_(o.activation_checkpointing) {}

  Tensor forward(const Tensor& tokens) override {
    Tensor x = embed(tokens);
    auxiliary_loss_ = Tensor();
    for (size_t i = 0; i < block_count(); ++i) {
      auto layer = block<MoETransformerBlock>(i);
      std::vector<Tensor> outputs =
          activation_checkpointing_ && is_training()
              ? autograd::checkpoint([layer](const std::vector<Tensor>& in) { return layer->forward(in[0]); }, {x},
                                     "checkpoint(moe transformer block)")
              : layer->forward(x);
      x = outputs[0];
      if (outputs.size() > 1)
        auxiliary_loss_ = auxiliary_loss_.defined() ? ops::add(auxiliary_loss_, outputs[1]) : outputs[1];
    }
    return logits(x);
  }

  // The summed, weighted auxiliary losses of the MoE blocks in the last forward pass
  // (undefined when the model has no MoE block).
  Tensor auxiliary_loss() override { return auxiliary_loss_; }

  // Per MoE block i: moe.<i>.expert_<e> (the fraction of the block's routed
  // assignments expert e processed), moe.<i>.dropped (the fraction capacity dropped),
  // moe.<i>.load_balance and moe.<i>.z_loss (unweighted); per memory block:
  // pkm.<i>.usage (the fraction of value rows read).
  std::vector<std::pair<std::string, double>> metrics() override {
    std::vector<std::pair<std::string, double>> out;
    for (size_t i = 0; i < block_count(); ++i) {
      auto layer = block<MoETransformerBlock>(i);
      if (layer->moe()) {
        nn::ExpertUsage usage = layer->moe()->usage();
        if (usage.assignments == 0) continue;
        const std::string prefix = "moe." + std::to_string(i) + ".";
        const double assignments = static_cast<double>(usage.assignments);
        for (size_t e = 0; e < usage.tokens_per_expert.size(); ++e)
          out.emplace_back(prefix + "expert_" + std::to_string(e),
                           static_cast<double>(usage.tokens_per_expert[e]) / assignments);
        out.emplace_back(prefix + "dropped", static_cast<double>(usage.dropped) / assignments);
        out.emplace_back(prefix + "load_balance", usage.load_balancing_loss);
        out.emplace_back(prefix + "z_loss", usage.z_loss);
      }
      if (layer->memory()) out.emplace_back("pkm." + std::to_string(i) + ".usage", layer->memory()->value_usage());
    }
    return out;
  }

 private:
  bool activation_checkpointing_;
  Tensor auxiliary_loss_;
};

const bool registered = register_family("moe_transformer", [](const config::Config& c, Generator& generator) {
  return std::make_shared<MoETransformerLM>(MoETransformerOptions::read(c), generator);
});

}  // namespace
}  // namespace strata::models
