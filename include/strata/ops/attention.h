// Fused softmax attention, dense and block-sparse, differentiable. The (Lq x Lk)
// score matrix is never stored: the kernels keep a running maximum and sum per
// query over tiles of keys (online softmax) and save only the log-sum-exp for the
// backward pass, which recomputes the probabilities from it.
//
// q (batch, heads, Lq, head_dim); k, v (batch, kv_heads, Lk, head_dim) with heads a
// multiple of kv_heads (grouped-query attention: query head h reads kv head
// h / (heads / kv_heads)). For query i, key j of one (batch, head):
//
//   s_ij = scale * (tq_i q_i) . (tk_j k_j) + bias_ij      (tq, tk: temperatures, default 1)
//   lse_i = log( sum_{j visible} exp(s_ij) + exp(sink_h) )  (the sink term only with sinks)
//   out_i = sum_{j visible} exp(s_ij - lse_i) v_j
//
// A sink is a learned logit per head with a zero value vector (gpt-oss, "attention
// sinks"): it takes a share exp(sink_h - lse_i) of the attention away from the keys.
// Causal attention aligns the sequences at their ends: key j is visible to query i
// when j <= i + (Lk - Lq), so one query against a cache of Lk keys sees all of
// them. A query that sees no key (Lq > Lk, or a block-sparse row without blocks)
// gets out = 0 and lse = log(exp(sink)) = sink, or -inf without sinks.
//
// Dtypes: float32 and float64 on the CPU; float32, bfloat16 and float16 on CUDA
// with float32 accumulation. bias, sinks and temperatures may be of any float
// dtype and are used in float32 (float64 when q is float64); lse is float32
// (float64). Every input gets a gradient, including through lse when it is
// returned and used. Under ops::AutocastGuard, float32 CUDA q, k and v are cast to
// bfloat16 on the tape (the tensor-core kernels) and out is returned in float32.
#pragma once

#include <optional>

#include "strata/core/tensor.h"
#include "strata/kernels/block_layout.h"

namespace strata::ops {

struct AttentionOptions {
  bool causal = false;
  std::optional<double> scale;  // default 1 / sqrt(head_dim)
  // Additive bias broadcastable to (batch, heads, Lq, Lk): a trained bias, an ALiBi
  // slope table, or a mask (-inf where a key must not be seen). Read through its
  // strides, so a broadcast bias such as (batch, 1, 1, Lk) is never expanded in the
  // forward pass; its gradient is formed at full size and summed down.
  Tensor bias;
  Tensor sinks;  // (heads): sink logits
  // Selective Attention (arXiv 2411.12892): per-query and per-key temperatures that
  // scale the scores. query_temperature broadcasts to (batch, heads, Lq) and
  // scales q_i; key_temperature broadcasts to (batch, kv_heads, Lk) and scales k_j
  // (per kv head, since it multiplies the key vector every query head of the group
  // reads). Applied to q and k before the kernel, so the gradients come from the
  // product rule.
  Tensor query_temperature;
  Tensor key_temperature;
  bool return_lse = false;
  // Diagnostics: also return the probabilities exp(s_ij - lse_i) (batch, heads, Lq,
  // Lk) in lse's dtype, zero where a key is not visible (a row sums to 1 minus the
  // sink's share). Stored at full size and not differentiable: for small sizes
  // (attention maps, sink calibration); at most 2^28 elements.
  bool return_probabilities = false;
};

struct AttentionResult {
  Tensor out;            // (batch, heads, Lq, head_dim), q's dtype
  Tensor lse;            // (batch, heads, Lq), when return_lse
  Tensor probabilities;  // (batch, heads, Lq, Lk), when return_probabilities
};

AttentionResult attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options = {});

// The same attention restricted to the blocks of `layout` (see block_layout.h):
// keys in blocks the layout omits are not visible, and their tiles are skipped in
// both passes. The layout's lengths must be Lq and Lk, its heads 1 or `heads`, and
// it must be on q's device (BlockLayout::to). `causal` still masks inside blocks.
AttentionResult block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const kernels::BlockLayout& layout, const AttentionOptions& options = {});

// Trainable dynamic mask attention (DMA, arXiv 2508.02124), causal. key_bias
// (batch, kv_heads, Lk) is one logit bias per key of each kv head, shared by every
// query (the model forms it from the values: A_h softplus(dt)). Query i keeps, among
// the keys causally visible to it (j <= i + Lk - Lq), the keep_window keys of largest
// bias (ties go to the lower index) and drops the others:
//
//   out_i = sum_{j kept by i} exp(s_ij - lse_i) v_j,   s_ij = scale q_i . k_j + key_bias_j
//
// Gradients reach q, k, v and key_bias (the sum of dS over the queries and the
// heads of the group); the selection itself is not differentiated. Key tiles that
// no query of a query tile keeps are skipped in both passes. keep_window >= Lk is
// dense causal attention with the bias added. Dtypes as ops::attention; key_bias may
// be any float dtype (used in float32, or float64 for float64 q).
Tensor dynamic_mask_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_bias,
                              int64_t keep_window, std::optional<double> scale = std::nullopt);

}  // namespace strata::ops
