// Top-k block selection (kernels::topk_block_layout in strata/kernels/block_layout.h):
// the sizes shared by the CPU reference and the CUDA launcher (nvcc-safe).
//
// A *selecting head* s is a kv head (share_by_group: its pooled query is the mean over
// the query heads h with h / group == s) or a query head (s = h). Row (b, h, i) of the
// layout, i a query block, is index (b * heads + h) * query_blocks + i; it keeps
// row_length(i) key blocks: the forced ones (the diagonal d(i), block 0 with
// keep_first) and the best-scoring other visible blocks, ties to the lower index.
// Row lengths depend on the geometry only, so the row offsets are computed on the
// host and the kernels fill in the column indices.
#pragma once

#include <cstdint>

#include "strata/core/host_device.h"

namespace strata::kernels {

struct TopKBlockSizes {
  int64_t batch = 0, heads = 0, kv_heads = 0, length_q = 0, length_k = 0, head_dim = 0;
  int64_t block_size = 64, top_k = 1;
  bool causal = true, keep_first = false, share_by_group = true;

  STRATA_HOST_DEVICE int64_t query_blocks() const { return (length_q + block_size - 1) / block_size; }
  STRATA_HOST_DEVICE int64_t key_blocks() const { return (length_k + block_size - 1) / block_size; }
  STRATA_HOST_DEVICE int64_t group() const { return heads / kv_heads; }
  STRATA_HOST_DEVICE int64_t selecting_heads() const { return share_by_group ? kv_heads : heads; }
  // The key block of the last key the last query of block i sees under causal
  // alignment, or -1 (LayoutGeometry::diagonal).
  STRATA_HOST_DEVICE int64_t diagonal(int64_t i) const {
    int64_t last_query = (i + 1) * block_size < length_q ? (i + 1) * block_size - 1 : length_q - 1;
    int64_t last_key = last_query + (length_k - length_q);
    if (last_key > length_k - 1) last_key = length_k - 1;
    return last_key < 0 ? -1 : last_key / block_size;
  }
  // Key blocks j < visible(i) are candidates for query block i.
  STRATA_HOST_DEVICE int64_t visible(int64_t i) const { return causal ? diagonal(i) + 1 : key_blocks(); }
  STRATA_HOST_DEVICE int64_t row_length(int64_t i) const { return visible(i) < top_k ? visible(i) : top_k; }
  STRATA_HOST_DEVICE bool forced(int64_t i, int64_t j) const {
    return (j == diagonal(i)) || (keep_first && j == 0);
  }
};

// CPU reference: q (batch, heads, Lq, head_dim), k (batch, kv_heads, Lk, head_dim)
// contiguous, T float or double (pooled and scored in double); row_offsets
// (batch * heads * query_blocks + 1) from the row lengths; fills column_indices.
template <class T>
void topk_blocks_cpu(const TopKBlockSizes& sizes, const T* q, const T* k, const int32_t* row_offsets,
                     int32_t* column_indices);

}  // namespace strata::kernels
