// AttentionBlock: causal self-attention with grouped-query heads, rotary positions
// and a choice of attention pattern, on the fused kernels of strata/ops/attention.h.
//
//   q = x Wq (n_heads heads), k = x Wk, v = x Wv (n_kv_heads heads each; query head
//   h reads kv head h / (n_heads / n_kv_heads)), RoPE on q and k, attention by the
//   pattern, out = concat(heads) Wo. No biases (LLaMA).
//
// Patterns (causal throughout; block-sparse ones work on blocks of block_size
// tokens, see include/strata/kernels/block_layout.h for each layout):
//   dense         every earlier token
//   sliding       the window_blocks key blocks ending at the query's own block
//   power         PowerAttention: local_blocks + sink_blocks + power-of-two block distances
//   s2            S2-Attention: dense_heads dense heads, the others shifted strided shards
//                 (local_blocks, vertical_stride)
//   neighborhood  window_blocks blocks spaced `dilation` apart, ending at the query's block
//   topk          top_k key blocks per query block chosen from mean-pooled q and k on the
//                 fly (kernels::topk_block_layout: the diagonal block, block 0 with
//                 topk_keep_first, the best-scoring others; shared by each GQA group)
//   neighborhood2d  NOT causal, for vision-style inputs: the tokens are a grid_height x
//                 grid_width grid (row-major) and each attends its window_height x
//                 window_width neighbours spaced `dilation` apart on both axes (NATTEN's
//                 2-D neighborhood attention, exact: block layout plus element mask)
//   dma           Dynamic Mask Attention (arXiv 2508.02124, the Doge models): a bias per
//                 key of each kv head from the values, bias = A_g softplus(dt), dt =
//                 concat_heads(v) W_dt^T (dt_proj: n_kv_heads * head_dim -> n_kv_heads,
//                 A per kv head, initialised to 0 as the Doge code does); each query keeps
//                 the keep_window earlier keys of largest bias (ops::dynamic_mask_attention)
//   sinks         dense plus a learned sink logit per head (zero value vector)
//   selective     dense with Selective Attention's temperatures (arXiv 2411.12892): the
//                 query of the token at 1-based position n is scaled by
//                   tau_q = (1 + exp(-exp(beta)) log n) * 2 sigmoid(x_n . w_h)
//                 and its value by tau_v = 2 sigmoid(x_n . u_g) per kv head g; beta is
//                 one learned scalar per layer (init 1.5, as the authors' code), w and u
//                 are learned projections initialised to zero, so training starts from
//                 plain attention with the position term.
// The block layouts are built once per (length, device) and kept in the block.
//
// SSA (arXiv 2511.20102) modes, set by the model for a whole forward pass (see
// set_ssa_mode): the pattern's attention, plain dense causal attention of the same
// q, k, v ("full"), or both, returning one and keeping the alignment loss between them.
//
// Generation: forward_step appends the new tokens' k and v to a KVCache and attends
// the new queries over the whole cache; the rows equal those of forward on the full
// sequence (every pattern but neighborhood, whose window is centred on equal
// lengths; topk, whose one new query selects alone instead of pooled with its block,
// so its rows may differ; and neighborhood2d, which does not decode).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "strata/core/rng.h"
#include "strata/kernels/block_layout.h"
#include "strata/nn/layers.h"

namespace strata::nn {

enum class AttentionPattern { Dense, Sliding, Power, S2, Neighborhood, Sinks, Selective, TopK, Neighborhood2D, Dma };
AttentionPattern parse_attention_pattern(const std::string& name);  // "dense", "sliding", ...
const char* attention_pattern_name(AttentionPattern pattern);

struct AttentionBlockOptions {
  int64_t d_model = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // divides n_heads; n_heads = multi-head, 1 = multi-query
  double rope_base = 10000.0;
  AttentionPattern pattern = AttentionPattern::Dense;
  int64_t block_size = 64;       // 64 or 128 (the block-sparse kernels' tiles)
  int64_t window_blocks = 4;     // sliding, neighborhood
  int64_t local_blocks = 1;      // power, s2
  int64_t sink_blocks = 1;       // power
  int64_t vertical_stride = 4;   // s2
  int64_t dense_heads = 0;       // s2
  int64_t dilation = 1;          // neighborhood
  double selective_beta = 1.5;   // selective: initial beta
  int64_t top_k = 4;             // topk: key blocks per query block (>= 1 + topk_keep_first)
  bool topk_keep_first = false;  // topk: always keep key block 0
  int64_t grid_height = 0;       // neighborhood2d: the token grid (length = height * width)
  int64_t grid_width = 0;
  int64_t window_height = 3;     // neighborhood2d: the window (odd sizes are NATTEN's)
  int64_t window_width = 3;
  int64_t keep_window = 0;       // dma: the keys each query keeps (top by bias), > 0

  // Errors name the offending field.
  void validate() const;
};

// The keys and values seen so far, (batch, n_kv_heads, cached, head_dim) each.
struct KVCache {
  Tensor k, v;
  int64_t length() const { return k.defined() ? k.size(2) : 0; }
};

class AttentionBlock : public Module {
 public:
  AttentionBlock(const AttentionBlockOptions& options, Generator& generator);

  // x (batch, length, d_model) -> (batch, length, d_model)
  Tensor forward(const Tensor& x);
  // x_t (batch, new_tokens, d_model) at positions cache.length() ..; appends its k, v
  // to `cache` and returns (batch, new_tokens, d_model).
  Tensor forward_step(const Tensor& x_t, KVCache& cache);

  const AttentionBlockOptions& options() const { return options_; }
  int64_t head_dim() const { return head_dim_; }
  // The layout the block uses for Lq queries against Lk keys on `device` (one head or
  // n_heads); undefined for the dense patterns and for topk (chosen per input).
  const kernels::BlockLayout& layout(int64_t query_length, int64_t key_length, Device device);

  // SSA: Pattern attends by the pattern; Full by dense causal attention; AlignSparse
  // and AlignFull compute both from the same q, k, v, return the pattern's (sparse)
  // or the dense output, and keep alignment_loss() = SmoothL1(O_full, sg(O_sparse)) +
  // SmoothL1(sg(O_full), O_sparse) (means over the elements of the per-head outputs,
  // sg = stop-gradient) for the caller to read right after forward.
  enum class SsaMode { Pattern, Full, AlignSparse, AlignFull };
  void set_ssa_mode(SsaMode mode) { ssa_mode_ = mode; }
  SsaMode ssa_mode() const { return ssa_mode_; }
  const Tensor& alignment_loss() const { return alignment_loss_; }

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;
  std::shared_ptr<Linear> dt_proj;  // dma only

 private:
  // q (batch, n_heads, Lq, hd), k, v (batch, n_kv_heads, Lk, hd); x (batch, Lq, d_model)
  // the queries' inputs (for the selective temperatures); query_offset the 0-based
  // position of the first query (the number of tokens cached before it).
  Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, int64_t query_offset);
  kernels::BlockLayout build_layout(const kernels::LayoutGeometry& geometry) const;
  // attend() by ssa_mode_.
  Tensor attend_in_ssa_mode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, int64_t query_offset);
  // neighborhood2d's element mask (0 / -inf), built once per device.
  const Tensor& neighborhood_2d_mask(Device device, DType dtype);

  AttentionBlockOptions options_;
  int64_t head_dim_;
  std::map<std::tuple<int64_t, int64_t, int, int>, kernels::BlockLayout> layouts_;
  std::map<std::tuple<int, int, int>, Tensor> neighborhood_2d_masks_;
  SsaMode ssa_mode_ = SsaMode::Pattern;
  Tensor alignment_loss_;
};

}  // namespace strata::nn
