#include "strata/nn/moe.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "strata/nn/init.h"
#include "strata/ops/ops.h"

namespace strata::nn {

namespace {

// The experts' stacked weights, as one child module so their paths read
// "experts.gate_up_weight" and "experts.down_weight". Each expert matrix is drawn like
// an nn::Linear weight: U(-1/sqrt(in), 1/sqrt(in)).
class StackedExperts : public Module {
 public:
  StackedExperts(int64_t experts, int64_t d_model, int64_t hidden, Generator& generator) {
    Tensor gate_up = Tensor::empty({experts, 2 * hidden, d_model});
    init::uniform_(gate_up, -1.0 / std::sqrt(static_cast<double>(d_model)), 1.0 / std::sqrt(static_cast<double>(d_model)),
                   generator);
    register_parameter("gate_up_weight", gate_up);
    Tensor down = Tensor::empty({experts, d_model, hidden});
    init::uniform_(down, -1.0 / std::sqrt(static_cast<double>(hidden)), 1.0 / std::sqrt(static_cast<double>(hidden)),
                   generator);
    register_parameter("down_weight", down);
  }
};

void check_input(const char* layer, const Tensor& x, int64_t d_model) {
  STRATA_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == d_model, "{}: expected input (..., {}), got {}", layer,
               d_model, x.defined() ? x.str() : std::string("an undefined tensor"));
}

}  // namespace

void MoEFeedForwardOptions::validate() const {
  STRATA_CHECK(d_model > 0 && expert_hidden > 0, "MoEFeedForward: d_model ({}) and expert_hidden ({}) must be positive",
               d_model, expert_hidden);
  STRATA_CHECK(experts >= 1, "MoEFeedForward: experts ({}) must be positive", experts);
  STRATA_CHECK(top_k >= 1 && top_k <= experts, "MoEFeedForward: top_k ({}) must be in 1..experts ({})", top_k,
               experts);
  STRATA_CHECK(std::isfinite(capacity_factor) && capacity_factor >= 0.0,
               "MoEFeedForward: capacity_factor ({}) must be 0 (dropless) or positive", capacity_factor);
  STRATA_CHECK(aux_loss_weight >= 0.0 && z_loss_weight >= 0.0,
               "MoEFeedForward: aux_loss_weight ({}) and z_loss_weight ({}) must not be negative", aux_loss_weight,
               z_loss_weight);
  STRATA_CHECK(chunk_size >= 1, "MoEFeedForward: chunk_size ({}) must be positive", chunk_size);
}

MoEFeedForward::MoEFeedForward(const MoEFeedForwardOptions& options, Generator& generator) : options_(options) {
  options.validate();
  router_ = register_module("router", std::make_shared<Linear>(options.d_model, options.experts, false, generator));
  experts_ = register_module(
      "experts", std::make_shared<StackedExperts>(options.experts, options.d_model, options.expert_hidden, generator));
  if (options.shared_expert)
    shared_expert_ = register_module(
        "shared_expert", std::make_shared<GatedMLP>(options.d_model, options.expert_hidden, false, generator));
}

Tensor MoEFeedForward::forward(const Tensor& x) {
  const MoEFeedForwardOptions& o = options_;
  check_input("MoEFeedForward", x, o.d_model);
  STRATA_CHECK(o.chunk_size == 1 || x.dim() == 3,
               "MoEFeedForward: chunk-level routing needs x as (batch, length, d_model), got {}", x.str());
  const int64_t tokens = x.numel() / o.d_model;
  Tensor flat = ops::reshape(x, {tokens, o.d_model});

  ops::MoERouteOptions route;
  route.top_k = o.top_k;
  route.scoring = o.router;
  route.renormalize = o.renormalize;
  route.capacity_factor = o.capacity_factor;
  route.chunk_size = o.chunk_size;
  route.sequence_length = o.chunk_size > 1 ? x.size(1) : 0;
  ops::MoERouting routing = ops::moe_route(router_->forward(flat), route);

  // Every expert's SwiGLU at once: (rows, d_model) -> (rows, 2 hidden) -> (rows, d_model).
  Tensor dispatched = ops::moe_dispatch(flat, routing);
  Tensor gate_up = ops::grouped_linear(dispatched, experts_->parameter("gate_up_weight"), routing.expert_offsets);
  std::vector<Tensor> gate_and_up = ops::split(gate_up, {o.expert_hidden, o.expert_hidden}, 1);
  Tensor hidden = ops::mul(ops::silu(gate_and_up[0]), gate_and_up[1]);
  Tensor expert_out = ops::grouped_linear(hidden, experts_->parameter("down_weight"), routing.expert_offsets);
  Tensor y = ops::moe_combine(expert_out, routing);
  if (shared_expert_) y = ops::add(y, shared_expert_->forward(flat));

  auxiliary_loss_ = ops::add(ops::mul(routing.load_balancing_loss, o.aux_loss_weight),
                             ops::mul(routing.z_loss, o.z_loss_weight));
  last_counts_ = routing.expert_counts;
  last_dropped_ = routing.dropped;
  last_load_balancing_loss_ = routing.load_balancing_loss.detach();
  last_z_loss_ = routing.z_loss.detach();
  return ops::reshape(y, x.shape());
}

ExpertUsage MoEFeedForward::usage() const {
  ExpertUsage usage;
  if (!last_counts_.defined()) return usage;
  usage.tokens_per_expert = last_counts_.to_vector<int64_t>();
  std::vector<bool> dropped = last_dropped_.to_vector<bool>();
  usage.assignments = static_cast<int64_t>(dropped.size());
  usage.dropped = std::count(dropped.begin(), dropped.end(), true);
  usage.load_balancing_loss = last_load_balancing_loss_.item();
  usage.z_loss = last_z_loss_.item();
  return usage;
}

ProductKeyMemory::ProductKeyMemory(int64_t d_model, int64_t d_key, int64_t n_keys, int64_t top_k,
                                   Generator& generator)
    : d_model_(d_model), d_key_(d_key), n_keys_(n_keys), top_k_(top_k) {
  STRATA_CHECK(d_model > 0 && n_keys > 0, "ProductKeyMemory: d_model ({}) and n_keys ({}) must be positive", d_model,
               n_keys);
  STRATA_CHECK(d_key >= 2 && d_key % 2 == 0, "ProductKeyMemory: d_key ({}) must be even and positive", d_key);
  STRATA_CHECK(top_k >= 1 && top_k <= n_keys, "ProductKeyMemory: top_k ({}) must be in 1..n_keys ({})", top_k,
               n_keys);
  query_ = register_module("query", std::make_shared<Linear>(d_model, d_key, false, generator));
  const double key_bound = 1.0 / std::sqrt(static_cast<double>(d_key / 2));
  for (const char* name : {"sub_keys_1", "sub_keys_2"}) {
    Tensor keys = Tensor::empty({n_keys, d_key / 2});
    init::uniform_(keys, -key_bound, key_bound, generator);
    register_parameter(name, keys, false);
  }
  Tensor values = Tensor::empty({n_keys * n_keys, d_model});
  init::normal_(values, 0.0, 1.0 / std::sqrt(static_cast<double>(d_model)), generator);
  register_parameter("values", values, false);
}

Tensor ProductKeyMemory::forward(const Tensor& x) {
  check_input("ProductKeyMemory", x, d_model_);
  const int64_t tokens = x.numel() / d_model_;
  Tensor query = query_->forward(ops::reshape(x, {tokens, d_model_}));
  ops::ProductKeyResult result =
      ops::product_key_memory(query, parameter("sub_keys_1"), parameter("sub_keys_2"), parameter("values"), top_k_);
  last_value_indices_ = result.value_indices;
  return ops::reshape(result.output, x.shape());
}

double ProductKeyMemory::value_usage() const {
  if (!last_value_indices_.defined()) return 0.0;
  std::vector<int32_t> picked = last_value_indices_.to_vector<int32_t>();
  std::unordered_set<int32_t> distinct(picked.begin(), picked.end());
  return static_cast<double>(distinct.size()) / static_cast<double>(n_keys_ * n_keys_);
}

}  // namespace strata::nn
