// Block-sparse attention layouts: which key blocks each query block attends, per
// head. The sequence of queries is cut into blocks of `block_size` positions (64
// or 128; the last block may be shorter), and so is the sequence of keys. A
// layout lists, for each head and each query block, the key blocks it attends, in
// increasing order (CSR: rows are query blocks); the transpose (CSC: for each key
// block, the query blocks that attend it) is kept beside it, because the backward
// pass accumulates dK and dV one key block at a time. Absent blocks are skipped
// entirely by both passes of ops::block_sparse_attention, so its time falls with
// the density.
//
// A layout has 1 head (shared by every attention head) or one per attention head,
// and 1 batch (shared by every sequence) or one per sequence of the batch (the
// layouts computed from the inputs, topk_block_layout): then rows and columns are
// indexed by batch * heads + head before the block.
// Positions follow the causal alignment of ops::attention: with Lq queries and Lk
// keys, query i sits at key position i + (Lk - Lq), so the last query sees the
// last key (decoding with a cache). The builders below call the key block that
// holds the last key visible to a query block's last query its *diagonal*; for
// Lq == Lk it is the query block's own index. A layout says nothing inside a
// block: the attention's `causal` flag masks keys after the query within the
// diagonal blocks.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "strata/core/tensor.h"

namespace strata::kernels {

// The sequence lengths a layout is built for and its block size.
struct LayoutGeometry {
  int64_t query_length = 0;
  int64_t key_length = 0;
  int64_t block_size = 64;

  int64_t query_blocks() const { return (query_length + block_size - 1) / block_size; }
  int64_t key_blocks() const { return (key_length + block_size - 1) / block_size; }
  // The key block holding the last key the last query of `query_block` sees under
  // causal alignment, or -1 when that query sees no key (Lq > Lk).
  int64_t diagonal(int64_t query_block) const;
};

class BlockLayout {
 public:
  BlockLayout() = default;

  // key_blocks[head][query_block]: the key blocks it attends, in any order, without
  // duplicates, each in [0, key_blocks). One head or several.
  static BlockLayout from_lists(const LayoutGeometry& geometry,
                                const std::vector<std::vector<std::vector<int32_t>>>& key_blocks);
  // present(head, query_block, key_block) for every triple.
  static BlockLayout from_predicate(const LayoutGeometry& geometry, int64_t heads,
                                    const std::function<bool(int64_t, int64_t, int64_t)>& present);

  // Index arrays already built (on any device), int32: rows of batches * heads heads,
  // laid out as above. Only the sizes are checked (the arrays may be on the GPU).
  static BlockLayout from_arrays(const LayoutGeometry& geometry, int64_t batches, int64_t heads, Tensor row_offsets,
                                 Tensor column_indices, Tensor column_offsets, Tensor row_indices);

  bool defined() const { return row_offsets_.defined(); }
  const LayoutGeometry& geometry() const { return geometry_; }
  int64_t block_size() const { return geometry_.block_size; }
  int64_t query_length() const { return geometry_.query_length; }
  int64_t key_length() const { return geometry_.key_length; }
  int64_t query_blocks() const { return geometry_.query_blocks(); }
  int64_t key_blocks() const { return geometry_.key_blocks(); }
  int64_t heads() const { return heads_; }
  int64_t batches() const { return batches_; }
  int64_t present_blocks() const;  // over all heads and batches
  double density() const;          // present_blocks / (batches * heads * query_blocks * key_blocks)
  // The same arrays read as batches * heads heads of one batch, and back: a layout of
  // B batches of H heads for q (B, H, L, d) is a layout of B * H heads for q viewed
  // as (1, B * H, L, d), which is how block_sparse_attention runs it.
  BlockLayout fold_batches() const;
  BlockLayout with_batches(int64_t batches) const;

  // CSR, int32: row_offsets (heads * query_blocks + 1); the key blocks of row
  // r = head * query_blocks + query_block are column_indices[row_offsets[r] ..
  // row_offsets[r + 1]), increasing.
  const Tensor& row_offsets() const { return row_offsets_; }
  const Tensor& column_indices() const { return column_indices_; }
  // CSC, int32: column_offsets (heads * key_blocks + 1); the query blocks that
  // attend column c = head * key_blocks + key_block are row_indices[column_offsets[c]
  // .. column_offsets[c + 1]), increasing.
  const Tensor& column_offsets() const { return column_offsets_; }
  const Tensor& row_indices() const { return row_indices_; }

  // Host copies of one row or column (any device).
  std::vector<int32_t> key_blocks_of(int64_t head, int64_t query_block, int64_t batch = 0) const;
  std::vector<int32_t> query_blocks_of(int64_t head, int64_t key_block, int64_t batch = 0) const;

  Device device() const { return row_offsets_.device(); }
  // The same layout with its index arrays on `device` (itself when already there).
  // Move a layout to the GPU once and reuse it: the attention ops do not copy it.
  BlockLayout to(Device device) const;
  std::string str() const;  // "block layout: 2 heads, 4 x 4 blocks of 64, density 0.625 on cpu"

 private:
  LayoutGeometry geometry_;
  int64_t heads_ = 0;
  int64_t batches_ = 1;
  Tensor row_offsets_, column_indices_, column_offsets_, row_indices_;
};

// ---- builders (one head unless the pattern differs per head) ---------------------
// d(i) below is geometry.diagonal(i); "causal" keeps key blocks j <= d(i).

// Every key block for every query block.
BlockLayout dense_layout(const LayoutGeometry& geometry);
// j <= d(i).
BlockLayout causal_layout(const LayoutGeometry& geometry);
// The window_blocks key blocks ending at the diagonal: d(i) - window_blocks < j <= d(i);
// not causal: |j - d(i)| < window_blocks.
BlockLayout sliding_window_layout(const LayoutGeometry& geometry, int64_t window_blocks, bool causal = true);
// Global tokens (Longformer/BigBird style): the first global_blocks key blocks are
// seen by every query block, and the first global_blocks query blocks see every key
// block (causal: up to their diagonal). With causal and Lq == Lk this is the
// attention-sink pattern: every query keeps the first blocks.
BlockLayout global_layout(const LayoutGeometry& geometry, int64_t global_blocks, bool causal = true);
// Dilated (strided) blocks: j = d(i) - m * dilation for m in [0, window_blocks)
// (not causal: also d(i) + m * dilation). A window_blocks that covers the sequence
// gives the strided pattern of the Sparse Transformer.
BlockLayout dilated_layout(const LayoutGeometry& geometry, int64_t window_blocks, int64_t dilation, bool causal = true);
// PowerAttention (arXiv 2503.03588), causal: j <= d(i) and (d(i) - j < local_blocks, or
// j < sink_blocks, or d(i) - j a power of two). O(log n) blocks per query block, and
// every earlier block is reachable within log2(n) layers.
BlockLayout power_layout(const LayoutGeometry& geometry, int64_t local_blocks, int64_t sink_blocks);
// S2-Attention (arXiv 2407.17678), causal, one layout per head: the first dense_heads
// heads are dense causal; sparse head s (0-based among the others, n_sparse of them)
// keeps j <= d(i) with d(i) - j < local_blocks or (j + s * step + offset) %
// vertical_stride == 0, step = max(1, vertical_stride / n_sparse). The heads are
// shifted copies of one strided pattern, so together they cover every block.
// offset = 1 is the DKernel/vLLM convention (the block before each stride boundary).
BlockLayout s2_layout(const LayoutGeometry& geometry, int64_t heads, int64_t local_blocks, int64_t vertical_stride,
                      int64_t dense_heads = 0, int64_t offset = 1);
// 1-D neighborhood attention (arXiv 2403.04690) at block granularity, Lq == Lk: query
// block i attends window_blocks key blocks spaced `dilation` apart, centred on i
// and shifted (not shrunk) at the borders, so every query block keeps the same
// number of key blocks while the sequence has enough blocks of its dilation group
// (blocks with the same index mod dilation). Causal: the window_blocks blocks i,
// i - dilation, ... that exist.
BlockLayout neighborhood_layout(const LayoutGeometry& geometry, int64_t window_blocks, int64_t dilation = 1,
                                bool causal = false);
// 2-D neighborhood attention (NATTEN, arXiv 2403.04690) over tokens laid out row-major
// on a height x width grid (Lq == Lk == height * width; token t sits at row t / width,
// column t % width). Query (r, c) attends the window_h x window_w keys (r', c') with
// r' in rows(r) and c' in columns(c), where along an axis of n positions, window w
// and dilation d, position i sees the w positions of its dilation group (those equal
// to i mod d) starting at group index clamp(i / d - w / 2, 0, group size - w): centred
// where possible, shifted (not shrunk) at the borders, so every query has exactly
// window_h * window_w keys (for odd windows this is NATTEN's window start).
// Requires window * dilation <= n along each axis. Not causal.
//
// The layout holds, for each query block, every key block that contains a key of
// any of its queries; inside those blocks the pattern is finer than a block, so the
// exact attention is the layout plus neighborhood_2d_mask as the attention bias.
BlockLayout neighborhood_2d_layout(const LayoutGeometry& geometry, int64_t height, int64_t width, int64_t window_h,
                                   int64_t window_w, int64_t dilation_h = 1, int64_t dilation_w = 1);
// The same pattern element by element: float32 (height * width, height * width), 0 where
// query row i sees key column j and -inf elsewhere, on the CPU. Pass it (moved to q's
// device once) as AttentionOptions::bias with the layout above; it broadcasts over
// batch and heads.
Tensor neighborhood_2d_mask(int64_t height, int64_t width, int64_t window_h, int64_t window_w, int64_t dilation_h = 1,
                            int64_t dilation_w = 1);

// Top-k block selection computed from the inputs (NSA / MoBA; SSA's sparse branch),
// on the device of q, not differentiated. q (batch, heads, Lq, d), k (batch, kv_heads,
// Lk, d), float32 or float64 on the CPU, float32, bfloat16 or float16 on CUDA. Each
// query block and each key block is mean-pooled (over its positions; the last block
// may be shorter); the score of key block j for query block i is pooled_q_i .
// pooled_k_j, and query block i keeps its diagonal block d(i) (and block 0 with
// keep_first), plus the highest-scoring other visible key blocks (causal: j <= d(i))
// up to top_k blocks in all (ties go to the lower block index). With share_by_group
// the pooled query is also averaged over the query heads of each kv head, so the heads
// of a group select the same blocks (NSA's GQA-shared selection); else each query
// head selects its own. Returns batch batches of `heads` heads, CSR and CSC, on q's
// device; pass it to block_sparse_attention with the same q, k.
//
// Under causal attention the pooled query of a block also averages the block's later
// queries, so the choice of blocks for a query depends on later positions of its own
// block (as block-level selection does in MoBA-style kernels). No gradient flows
// through the choice, so training gets no signal to exploit that; the attention
// itself stays causal.
struct TopKBlockOptions {
  int64_t block_size = 64;  // 64 or 128
  int64_t top_k = 4;        // blocks per query block, >= 1 + keep_first
  bool causal = true;
  bool keep_first = false;  // always keep key block 0 (an attention sink)
  bool share_by_group = true;
};
BlockLayout topk_block_layout(const Tensor& q, const Tensor& k, const TopKBlockOptions& options);

// The blocks present in a or b. The geometries must match; a one-head layout is
// repeated over the heads of the other.
BlockLayout union_layouts(const BlockLayout& a, const BlockLayout& b);

}  // namespace strata::kernels
