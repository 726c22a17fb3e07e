// AttentionBlock; see include/strata/nn/attention.h.
#include "strata/nn/attention.h"

#include <cmath>
#include <utility>
#include <vector>

#include "strata/ops/attention.h"
#include "strata/ops/ops.h"
#include "strata/ops/rope.h"

namespace strata::nn {
namespace {

constexpr std::pair<AttentionPattern, const char*> kPatternNames[] = {
    {AttentionPattern::Dense, "dense"}, {AttentionPattern::Sliding, "sliding"},
    {AttentionPattern::Power, "power"}, {AttentionPattern::S2, "s2"},
    {AttentionPattern::Neighborhood, "neighborhood"}, {AttentionPattern::Sinks, "sinks"},
    {AttentionPattern::Selective, "selective"}, {AttentionPattern::TopK, "topk"},
    {AttentionPattern::Neighborhood2D, "neighborhood2d"}, {AttentionPattern::Dma, "dma"}};

bool is_block_sparse(AttentionPattern pattern) {
  return pattern == AttentionPattern::Sliding || pattern == AttentionPattern::Power ||
         pattern == AttentionPattern::S2 || pattern == AttentionPattern::Neighborhood ||
         pattern == AttentionPattern::Neighborhood2D;
}

// SmoothL1 (beta 1) of a - b, the mean over the elements: 0.5 d^2 where |d| < 1, else
// |d| - 0.5. Written as 0.5 c^2 + relu(|d| - 1) with c = min(|d|, 1) = |d| - relu(|d|
// - 1) and |d| = relu(d) + relu(-d), from differentiable ops.
Tensor smooth_l1(const Tensor& a, const Tensor& b) {
  Tensor d = ops::sub(a, b);
  Tensor magnitude = ops::add(ops::relu(d), ops::relu(ops::neg(d)));
  Tensor excess = ops::relu(ops::add(magnitude, -1.0));
  Tensor clipped = ops::sub(magnitude, excess);
  return ops::mean(ops::add(ops::mul(ops::mul(clipped, clipped), 0.5), excess));
}

// (batch, length, heads * head_dim) -> (batch, heads, length, head_dim)
Tensor split_heads(const Tensor& x, int64_t heads, int64_t head_dim) {
  return ops::permute(ops::reshape(x, {x.size(0), x.size(1), heads, head_dim}), {0, 2, 1, 3});
}

// (batch, heads, length, head_dim) -> (batch, length, heads * head_dim)
Tensor merge_heads(const Tensor& x) {
  return ops::reshape(ops::permute(x, {0, 2, 1, 3}), {x.size(0), x.size(2), x.size(1) * x.size(3)});
}

// 2 sigmoid(x W^T) per head, transposed to (batch, heads, length): 1 where W = 0.
Tensor token_temperature(const Tensor& x, const Tensor& weight) {
  return ops::transpose(ops::mul(ops::sigmoid(ops::linear(x, weight)), 2.0), 1, 2);
}

}  // namespace

AttentionPattern parse_attention_pattern(const std::string& name) {
  for (const auto& [pattern, pattern_name] : kPatternNames)
    if (name == pattern_name) return pattern;
  STRATA_FAIL("attention: unknown pattern '{}' (dense, sliding, power, s2, neighborhood, sinks, selective, topk, "
             "neighborhood2d, dma)",
             name);
}

const char* attention_pattern_name(AttentionPattern pattern) {
  for (const auto& [candidate, name] : kPatternNames)
    if (candidate == pattern) return name;
  return "unknown";
}

void AttentionBlockOptions::validate() const {
  STRATA_CHECK(d_model > 0 && n_heads > 0 && n_kv_heads > 0,
               "attention: d_model ({}), n_heads ({}) and n_kv_heads ({}) must be positive", d_model, n_heads,
               n_kv_heads);
  STRATA_CHECK(d_model % n_heads == 0, "attention: d_model ({}) must be a multiple of n_heads ({})", d_model, n_heads);
  STRATA_CHECK((d_model / n_heads) % 2 == 0, "attention: head_dim = d_model / n_heads ({}) must be even for RoPE",
               d_model / n_heads);
  STRATA_CHECK(n_heads % n_kv_heads == 0, "attention: n_heads ({}) must be a multiple of n_kv_heads ({})", n_heads,
               n_kv_heads);
  STRATA_CHECK(rope_base > 1.0, "attention: rope_base must be > 1, got {}", rope_base);
  STRATA_CHECK(block_size == 64 || block_size == 128, "attention: block_size must be 64 or 128, got {}", block_size);
  STRATA_CHECK(window_blocks > 0, "attention: window_blocks must be positive, got {}", window_blocks);
  STRATA_CHECK(local_blocks > 0, "attention: local_blocks must be positive, got {}", local_blocks);
  STRATA_CHECK(sink_blocks >= 0, "attention: sink_blocks must be >= 0, got {}", sink_blocks);
  STRATA_CHECK(vertical_stride > 0, "attention: vertical_stride must be positive, got {}", vertical_stride);
  STRATA_CHECK(dense_heads >= 0 && dense_heads < n_heads,
               "attention: dense_heads ({}) must be in [0, n_heads) = [0, {}) (s2 needs a sparse head)", dense_heads,
               n_heads);
  STRATA_CHECK(dilation > 0, "attention: dilation must be positive, got {}", dilation);
  STRATA_CHECK(std::isfinite(selective_beta), "attention: selective_beta must be finite, got {}", selective_beta);
  if (pattern == AttentionPattern::Dma)
    STRATA_CHECK(keep_window > 0, "attention (dma): keep_window must be positive, got {}", keep_window);
  STRATA_CHECK(top_k >= 1 + (topk_keep_first ? 1 : 0), "attention: top_k must be at least {}, got {}",
               1 + (topk_keep_first ? 1 : 0), top_k);
  if (pattern == AttentionPattern::Neighborhood2D)
    STRATA_CHECK(grid_height > 0 && grid_width > 0 && window_height > 0 && window_width > 0,
                 "attention (neighborhood2d): grid ({} x {}) and window ({} x {}) must be positive", grid_height,
                 grid_width, window_height, window_width);
}

AttentionBlock::AttentionBlock(const AttentionBlockOptions& options, Generator& generator) : options_(options) {
  options_.validate();
  head_dim_ = options_.d_model / options_.n_heads;
  int64_t d = options_.d_model, kv_width = options_.n_kv_heads * head_dim_;
  q_proj = register_module("q_proj", std::make_shared<Linear>(d, d, false, generator));
  k_proj = register_module("k_proj", std::make_shared<Linear>(d, kv_width, false, generator));
  v_proj = register_module("v_proj", std::make_shared<Linear>(d, kv_width, false, generator));
  o_proj = register_module("o_proj", std::make_shared<Linear>(d, d, false, generator));
  if (options_.pattern == AttentionPattern::Sinks) {
    register_parameter("sinks", Tensor::zeros({options_.n_heads}), false);
  } else if (options_.pattern == AttentionPattern::Selective) {
    register_parameter("selective_beta", Tensor::full({1}, options_.selective_beta), false);
    register_parameter("query_temperature_weight", Tensor::zeros({options_.n_heads, d}), false);
    register_parameter("value_temperature_weight", Tensor::zeros({options_.n_kv_heads, d}), false);
  } else if (options_.pattern == AttentionPattern::Dma) {
    dt_proj = register_module("dt_proj", std::make_shared<Linear>(kv_width, options_.n_kv_heads, false, generator));
    register_parameter("A", Tensor::zeros({options_.n_kv_heads}), false);
  }
}

kernels::BlockLayout AttentionBlock::build_layout(const kernels::LayoutGeometry& geometry) const {
  switch (options_.pattern) {
    case AttentionPattern::Sliding:
      return kernels::sliding_window_layout(geometry, options_.window_blocks, true);
    case AttentionPattern::Power:
      return kernels::power_layout(geometry, options_.local_blocks, options_.sink_blocks);
    case AttentionPattern::S2:
      return kernels::s2_layout(geometry, options_.n_heads, options_.local_blocks, options_.vertical_stride,
                                options_.dense_heads);
    case AttentionPattern::Neighborhood:
      return kernels::neighborhood_layout(geometry, options_.window_blocks, options_.dilation, true);
    case AttentionPattern::Neighborhood2D:
      return kernels::neighborhood_2d_layout(geometry, options_.grid_height, options_.grid_width,
                                             options_.window_height, options_.window_width, options_.dilation,
                                             options_.dilation);
    default:
      return kernels::BlockLayout();
  }
}

const kernels::BlockLayout& AttentionBlock::layout(int64_t query_length, int64_t key_length, Device device) {
  auto key = std::make_tuple(query_length, key_length, static_cast<int>(device.type), device.index);
  auto found = layouts_.find(key);
  if (found != layouts_.end()) return found->second;
  kernels::LayoutGeometry geometry{query_length, key_length, options_.block_size};
  return layouts_.emplace(key, build_layout(geometry).to(device)).first->second;
}

const Tensor& AttentionBlock::neighborhood_2d_mask(Device device, DType dtype) {
  auto key = std::make_tuple(static_cast<int>(device.type), device.index, static_cast<int>(dtype));
  auto found = neighborhood_2d_masks_.find(key);
  if (found != neighborhood_2d_masks_.end()) return found->second;
  Tensor mask = kernels::neighborhood_2d_mask(options_.grid_height, options_.grid_width, options_.window_height,
                                              options_.window_width, options_.dilation, options_.dilation);
  return neighborhood_2d_masks_.emplace(key, mask.to(dtype).to(device)).first->second;
}

Tensor AttentionBlock::attend_in_ssa_mode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x,
                                          int64_t query_offset) {
  if (ssa_mode_ == SsaMode::Pattern) return attend(q, k, v, x, query_offset);
  ops::AttentionOptions full_options;
  full_options.causal = true;
  Tensor full = ops::attention(q, k, v, full_options).out;
  if (ssa_mode_ == SsaMode::Full) return full;
  Tensor sparse = attend(q, k, v, x, query_offset);
  // With equal weights the two terms have the value and the gradients of one
  // SmoothL1(O_full, O_sparse) counted twice; they are kept apart as the paper
  // writes them (a pull of full toward sparse, "sparsity", and of sparse toward full,
  // "commitment").
  alignment_loss_ = ops::add(smooth_l1(full, sparse.detach()), smooth_l1(full.detach(), sparse));
  return ssa_mode_ == SsaMode::AlignSparse ? sparse : full;
}

Tensor AttentionBlock::attend(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x,
                              int64_t query_offset) {
  ops::AttentionOptions attention_options;
  attention_options.causal = true;
  if (options_.pattern == AttentionPattern::TopK) {
    // The layout is chosen from these q and k (not cached, not differentiated).
    kernels::TopKBlockOptions selection;
    selection.block_size = options_.block_size;
    selection.top_k = options_.top_k;
    selection.keep_first = options_.topk_keep_first;
    return ops::block_sparse_attention(q, k, v, kernels::topk_block_layout(q, k, selection), attention_options).out;
  }
  if (options_.pattern == AttentionPattern::Neighborhood2D) {
    STRATA_CHECK(q.size(2) == k.size(2), "attention (neighborhood2d): no cached decoding (a grid of {} x {} tokens)",
                 options_.grid_height, options_.grid_width);
    attention_options.causal = false;
    const DType bias_dtype = q.dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
    attention_options.bias = neighborhood_2d_mask(q.device(), bias_dtype);
  }
  if (options_.pattern == AttentionPattern::Dma) {
    // The key bias A_g softplus(dt) from every cached value, (batch, n_kv_heads, Lk):
    // it depends on the key's own value only, so a decoding step sees the biases the
    // full sequence would.
    Tensor dt = ops::transpose(dt_proj->forward(merge_heads(v)), 1, 2);
    Tensor key_bias = ops::mul(ops::softplus(dt), ops::reshape(parameter("A"), {1, options_.n_kv_heads, 1}));
    return ops::dynamic_mask_attention(q, k, v, key_bias, options_.keep_window);
  }
  if (options_.pattern == AttentionPattern::Sinks) attention_options.sinks = parameter("sinks");
  if (options_.pattern == AttentionPattern::Selective) {
    // Position term 1 + exp(-exp(beta)) log n for the 1-based positions n of the
    // queries, (Lq), times the token term (batch, n_heads, Lq).
    int64_t length = q.size(2);
    std::vector<double> log_positions(static_cast<size_t>(length));
    for (int64_t i = 0; i < length; ++i) log_positions[static_cast<size_t>(i)] = std::log(double(query_offset + i + 1));
    Tensor log_n = Tensor::from_vector(log_positions, {length}).to(q.dtype()).to(q.device());
    Tensor strength = ops::exp(ops::neg(ops::exp(parameter("selective_beta"))));  // (1)
    Tensor position_term = ops::add(ops::mul(log_n, strength), 1.0);
    attention_options.query_temperature =
        ops::mul(token_temperature(x, parameter("query_temperature_weight")), position_term);
  }
  if (!is_block_sparse(options_.pattern)) return ops::attention(q, k, v, attention_options).out;
  int64_t query_length = q.size(2), key_length = k.size(2);
  if (query_length == key_length) return ops::block_sparse_attention(q, k, v, layout(query_length, key_length, q.device()), attention_options).out;
  // Decoding: one query at the end of the cache; the builders place it at the last
  // key, so its row is the full sequence's row for that position. Not cached: the
  // key length changes every step.
  STRATA_CHECK(query_length == 1, "attention ({}): a step over the cache takes one token at a time, got {}",
               attention_pattern_name(options_.pattern), q.str());
  STRATA_CHECK(options_.pattern != AttentionPattern::Neighborhood,
               "attention (neighborhood): no cached decoding (the window is laid out for equal lengths)");
  kernels::LayoutGeometry geometry{query_length, key_length, options_.block_size};
  return ops::block_sparse_attention(q, k, v, build_layout(geometry).to(q.device()), attention_options).out;
}

Tensor AttentionBlock::forward(const Tensor& x) {
  STRATA_CHECK(x.dim() == 3 && x.size(2) == options_.d_model, "attention: x must be (batch, length, {}), got {}",
               options_.d_model, x.str());
  KVCache fresh;
  return forward_step(x, fresh);
}

Tensor AttentionBlock::forward_step(const Tensor& x_t, KVCache& cache) {
  STRATA_CHECK(x_t.dim() == 3 && x_t.size(2) == options_.d_model,
               "attention: x_t must be (batch, new_tokens, {}), got {}", options_.d_model, x_t.str());
  STRATA_CHECK(cache.length() == 0 || cache.k.size(0) == x_t.size(0),
               "attention: a cache of batch {} cannot take x_t {}", cache.length() ? cache.k.size(0) : 0, x_t.str());
  int64_t offset = cache.length();
  double base = options_.rope_base;
  Tensor q = ops::rotary_embedding(split_heads(q_proj->forward(x_t), options_.n_heads, head_dim_), offset, base);
  Tensor k = ops::rotary_embedding(split_heads(k_proj->forward(x_t), options_.n_kv_heads, head_dim_), offset, base);
  Tensor v = split_heads(v_proj->forward(x_t), options_.n_kv_heads, head_dim_);
  if (options_.pattern == AttentionPattern::Selective) {
    // Value temperature per kv head and token: (batch, n_kv_heads, new_tokens, 1).
    v = ops::mul(v, ops::unsqueeze(token_temperature(x_t, parameter("value_temperature_weight")), 3));
  }
  if (offset > 0) {
    k = ops::concat({cache.k, k}, 2);
    v = ops::concat({cache.v, v}, 2);
  }
  cache.k = k;
  cache.v = v;
  return o_proj->forward(merge_heads(attend_in_ssa_mode(q, k, v, x_t, offset)));
}

}  // namespace strata::nn
