// Mixture-of-experts ops (sequence.md, primitives P13 and P14): the router, the
// sort-based dispatch and combine around the experts, the grouped expert GEMM, and
// the product-key memory lookup. Dtypes as in ops.h: float32 and float64 on the
// CPU; float32 and bfloat16 on CUDA with float32 accumulation. Index tensors are
// int32 (int64 for offsets and counts).
//
// How they fit (tokens = batch * length, E experts, k choices per token):
//   logits  = linear(x, router_weight)                           (tokens, E)
//   routing = moe_route(logits, {.top_k = k, ...})
//   xs      = moe_dispatch(x, routing)                            (rows, d)   rows <= tokens * k
//   hs      = grouped_linear(xs, W_up, routing.expert_offsets)    (rows, hidden)   ... the expert MLP
//   ys      = grouped_linear(hs, W_down, routing.expert_offsets)  (rows, d)
//   y       = moe_combine(ys, routing)                            (tokens, d) = sum_j w_tj * expert_j(x_t)
//   loss   += alpha * routing.load_balancing_loss + beta * routing.z_loss
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "strata/core/tensor.h"

namespace strata::ops {

// ---- top-k ----------------------------------------------------------------------
// values (rows, n) -> (rows, k) int32: the indices of each row's k largest values,
// largest first. Equal values are taken lower index first and NaN ranks as -inf, so
// the result is a function of the values alone (the same on every device).
// 1 <= k <= n. Not differentiable (gather the values with ops::gather).
Tensor topk_indices(const Tensor& values, int64_t k);

// ---- router ---------------------------------------------------------------------
enum class RouterScoring {
  Softmax,  // s = softmax(logits) over the experts (Switch, GShard, Mixtral)
  Sigmoid,  // s = sigmoid(logits), each expert scored on its own (DeepSeek-V3)
};
RouterScoring parse_router_scoring(const std::string& name);  // "softmax" | "sigmoid"
const char* router_scoring_name(RouterScoring scoring);

struct MoERouteOptions {
  int64_t top_k = 2;
  RouterScoring scoring = RouterScoring::Softmax;
  // Divide each token's k weights by their sum (for softmax scoring: a softmax over
  // the k chosen logits, as Mixtral and Hydra do).
  bool renormalize = true;
  // capacity = ceil(capacity_factor * tokens * top_k / experts) assignments per
  // expert; each expert keeps its first `capacity` in token order and drops the rest
  // (weight 0, not dispatched: the token's residual carries it). 0: dropless.
  double capacity_factor = 0.0;
  // Chunk-level routing (Hydra): each run of chunk_size consecutive tokens is routed
  // by the mean of its logits, and all its tokens take the chunk's experts and
  // weights. Chunks restart at every sequence_length tokens (0: the tokens are one
  // sequence), and the last chunk of a sequence may be shorter. In a causal LM this
  // lets a token's experts depend on the later tokens of its chunk.
  int64_t chunk_size = 1;
  int64_t sequence_length = 0;
};

struct MoERouting {
  int64_t experts = 0, top_k = 0;
  int64_t capacity = 0;  // per expert; 0 when dropless
  int64_t rows = 0;      // kept assignments: the rows of dispatch's output

  Tensor expert_indices;  // (tokens, k) int32: each token's experts, best first (ties: lower index)
  // (tokens, k), the logits' dtype: each choice's weight (0 where dropped),
  // differentiable with respect to the logits.
  Tensor weights;
  Tensor dropped;  // (tokens, k) bool: the choices capacity dropped

  // The permutation (a stable counting sort by expert; see kernels/moe/moe_cpu.h).
  // Assignment a = t * k + j is token t's j-th choice.
  Tensor expert_offsets;     // (E + 1) int64: expert e processes rows [offsets[e], offsets[e + 1])
  Tensor expert_counts;      // (E) int64: assignments each expert processes (after capacity)
  Tensor sorted_assignment;  // (rows) int32: the assignment each row holds, grouped by expert, token order within
  Tensor assignment_row;     // (tokens, k) int32: the row of each assignment, -1 where dropped

  // Auxiliary losses, scalars (float32; float64 for float64 logits) differentiable
  // with respect to the logits. Averaged over the routed units (tokens, or chunks
  // weighted by their tokens):
  //   load_balancing_loss = E * sum_e f_e * P_e (Switch Transformer, GShard), where
  //     f_e is the fraction of the k * units choices that picked e (before capacity;
  //     not differentiated) and P_e the mean score of e (for sigmoid scoring, the
  //     scores normalised to sum 1 over the experts). 1 when perfectly balanced.
  //   z_loss = mean over units of logsumexp(logits)^2 (ST-MoE).
  Tensor load_balancing_loss;
  Tensor z_loss;
  Tensor router_fraction;  // (E) the f_e above, for metrics (not differentiable)
};

// logits (tokens, experts) -> the routing. The expert choices are the top-k logits
// (the same as the top-k scores). Reads the number of kept rows back to the host
// (one synchronisation on CUDA).
MoERouting moe_route(const Tensor& logits, const MoERouteOptions& options = {});

// ---- dispatch and combine ---------------------------------------------------------
// x (tokens, d) -> (rows, d): row r is the token of routing.sorted_assignment[r], so
// each expert's tokens are contiguous (rows = tokens * k minus the dropped choices).
// Gradient: each token sums its rows' gradients (no atomics).
Tensor moe_dispatch(const Tensor& x, const MoERouting& routing);
// expert_out (rows, d) -> (tokens, d): out[t] = sum_j weights[t, j] * expert_out[row(t, j)]
// over the kept choices (tokens whose choices were all dropped get zeros). Gradients
// to expert_out and to routing.weights (which may be replaced by any (tokens, k)
// tensor of expert_out's dtype, or float32).
Tensor moe_combine(const Tensor& expert_out, const MoERouting& routing);

// ---- grouped expert GEMM ----------------------------------------------------------
// x_sorted (rows, d_in) grouped by expert (expert e owns rows [offsets[e],
// offsets[e + 1])), weight (experts, d_out, d_in), offsets (experts + 1) int32/int64 on
// x's device -> (rows, d_out) with out[r] = weight[e(r)] x[r]: every expert's linear
// layer at once, one kernel launch on CUDA whatever the group sizes (empty groups
// included). On the CPU the offsets must start at 0, not decrease and end at rows;
// on CUDA they are not read back (the kernel clamps them and leaves rows outside
// every group zero). x and weight share one dtype. Under
// ops::AutocastGuard on CUDA, float32 operands are cast to bfloat16 for the product
// (tensor cores, float32 accumulation) and the result, rounded to bfloat16, is
// returned as float32. Gradients to x and weight.
Tensor grouped_linear(const Tensor& x_sorted, const Tensor& weight, const Tensor& offsets);

// ---- product-key memory -----------------------------------------------------------
// query (tokens, d_key) with d_key even; sub_keys_1, sub_keys_2 (n_keys, d_key / 2);
// values (n_keys^2, d_value). Value (i, j) of the n_keys x n_keys grid is row
// i * n_keys + j, addressed by sub-key i of half 1 and sub-key j of half 2:
//   scores_h = query_h sub_keys_h^T; the top_k sub-keys of each half; the top_k of
//   the top_k^2 sums of one score from each half; weights = softmax of those sums;
//   output = sum over the picks of weight * values[row].
// Differentiable in query, both codebooks and values; the values' gradient is built
// by adding each pick's row only (a scatter-add), not by a dense product.
// 1 <= top_k <= n_keys, n_keys^2 < 2^31.
struct ProductKeyResult {
  Tensor output;         // (tokens, d_value)
  Tensor value_indices;  // (tokens, top_k) int32: the rows picked, best first
  Tensor weights;        // (tokens, top_k): their softmax weights
};
ProductKeyResult product_key_memory(const Tensor& query, const Tensor& sub_keys_1, const Tensor& sub_keys_2,
                                    const Tensor& values, int64_t top_k);

}  // namespace strata::ops
