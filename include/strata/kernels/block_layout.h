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
// A layout has 1 head (shared by every attention head) or one per attention head.
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

  bool defined() const { return row_offsets_.defined(); }
  const LayoutGeometry& geometry() const { return geometry_; }
  int64_t block_size() const { return geometry_.block_size; }
  int64_t query_length() const { return geometry_.query_length; }
  int64_t key_length() const { return geometry_.key_length; }
  int64_t query_blocks() const { return geometry_.query_blocks(); }
  int64_t key_blocks() const { return geometry_.key_blocks(); }
  int64_t heads() const { return heads_; }
  int64_t present_blocks() const;  // over all heads
  double density() const;          // present_blocks / (heads * query_blocks * key_blocks)

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
  std::vector<int32_t> key_blocks_of(int64_t head, int64_t query_block) const;
  std::vector<int32_t> query_blocks_of(int64_t head, int64_t key_block) const;

  Device device() const { return row_offsets_.device(); }
  // The same layout with its index arrays on `device` (itself when already there).
  // Move a layout to the GPU once and reuse it: the attention ops do not copy it.
  BlockLayout to(Device device) const;
  std::string str() const;  // "block layout: 2 heads, 4 x 4 blocks of 64, density 0.625 on cpu"

 private:
  LayoutGeometry geometry_;
  int64_t heads_ = 0;
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
// The blocks present in a or b. The geometries must match; a one-head layout is
// repeated over the heads of the other.
BlockLayout union_layouts(const BlockLayout& a, const BlockLayout& b);

}  // namespace strata::kernels
