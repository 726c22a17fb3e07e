// Sparse layers built on strata/ops/moe.h: a mixture-of-experts feed-forward layer
// (a drop-in for the MLP slot of any block) and a product-key memory layer.
// Parameters are created on the CPU in float32 from the Generator given to the
// constructor, as in strata/nn/layers.h.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "strata/core/rng.h"
#include "strata/nn/layers.h"
#include "strata/nn/module.h"
#include "strata/ops/moe.h"

namespace strata::nn {

struct MoEFeedForwardOptions {
  int64_t d_model = 0;
  int64_t experts = 8;
  int64_t top_k = 2;
  int64_t expert_hidden = 0;  // SwiGLU hidden size of each expert (and of the shared expert)
  double capacity_factor = 0.0;  // 0: dropless (see ops::MoERouteOptions)
  ops::RouterScoring router = ops::RouterScoring::Softmax;
  bool renormalize = true;
  double aux_loss_weight = 0.01;  // times the load-balancing loss
  double z_loss_weight = 0.001;   // times the router z-loss
  bool shared_expert = false;     // a dense SwiGLU expert every token also passes through
  int64_t chunk_size = 1;         // > 1: Hydra's chunk-level routing within each sequence

  // Throws strata::Error naming the first bad field.
  void validate() const;
};

// What the last forward pass routed, for metrics.
struct ExpertUsage {
  std::vector<int64_t> tokens_per_expert;  // assignments each expert processed (after capacity)
  int64_t assignments = 0;                 // tokens * top_k
  int64_t dropped = 0;                     // assignments capacity dropped
  double load_balancing_loss = 0.0;        // 1 when perfectly balanced
  double z_loss = 0.0;
};

// y = sum over the token's top-k experts of w_e * SwiGLU_e(x) (+ SwiGLU_shared(x)).
// The router is a bias-free linear map to one logit per expert; the experts' weights
// are stacked, gate and up together, so all experts run as two grouped GEMMs:
//   router.weight          (experts, d_model)
//   experts.gate_up_weight (experts, 2 * expert_hidden, d_model)   rows [0, hidden): gate
//   experts.down_weight    (experts, d_model, expert_hidden)
//   shared_expert.*        a GatedMLP, when enabled
// Each forward pass keeps its auxiliary loss (with its graph) for the caller to add
// to the training loss.
class MoEFeedForward : public Module {
 public:
  MoEFeedForward(const MoEFeedForwardOptions& options, Generator& generator);

  // x (..., d_model) -> (..., d_model). Chunk-level routing takes x as
  // (batch, length, d_model) and routes chunks within each sequence.
  Tensor forward(const Tensor& x);

  // aux_loss_weight * load-balancing loss + z_loss_weight * z-loss of the last
  // forward pass: a scalar (float32, float64 for float64 inputs) that is
  // differentiable with respect to the router; undefined before the first pass.
  const Tensor& auxiliary_loss() const { return auxiliary_loss_; }
  // The routing of the last forward pass, read back to the host.
  ExpertUsage usage() const;

  const MoEFeedForwardOptions& options() const { return options_; }

 private:
  MoEFeedForwardOptions options_;
  std::shared_ptr<Linear> router_;
  std::shared_ptr<Module> experts_;
  std::shared_ptr<GatedMLP> shared_expert_;
  Tensor auxiliary_loss_;
  // The last pass's routing, detached: expert counts, dropped mask and both losses.
  Tensor last_counts_, last_dropped_, last_load_balancing_loss_, last_z_loss_;
};

// A product-key memory (Lample et al., 2019) in the feed-forward slot:
//   query = W_q x (d_key), then ops::product_key_memory over n_keys^2 value rows of
//   size d_model (the values are drawn from N(0, 1 / d_model), as the paper does).
//   query.weight (d_key, d_model); sub_keys_1, sub_keys_2 (n_keys, d_key / 2),
//   uniform in +-1/sqrt(d_key / 2); values (n_keys^2, d_model).
// The keys and values are not weight-decayed: each step reads only a few value rows,
// and decoupled decay would shrink all the unread ones every step.
class ProductKeyMemory : public Module {
 public:
  ProductKeyMemory(int64_t d_model, int64_t d_key, int64_t n_keys, int64_t top_k, Generator& generator);

  // x (..., d_model) -> (..., d_model).
  Tensor forward(const Tensor& x);
  // The fraction of the n_keys^2 values the last forward pass read (memory usage).
  double value_usage() const;

  int64_t n_keys() const { return n_keys_; }
  int64_t top_k() const { return top_k_; }

 private:
  int64_t d_model_, d_key_, n_keys_, top_k_;
  std::shared_ptr<Linear> query_;
  Tensor last_value_indices_;
};

}  // namespace strata::nn
