// Raw CUDA launcher of top-k block selection (nvcc-safe: no Tensor, no fmt); the
// selection rule is in topk_blocks.h.
#pragma once

#include <cstdint>

#include "kernels/block_sparse/topk_blocks.h"
#include "strata/core/dtype.h"

namespace strata::kernels {

// The float32 workspaces the launcher needs, in elements.
inline int64_t topk_blocks_cuda_workspace(const TopKBlockSizes& s) {
  return (s.batch * s.selecting_heads() * s.query_blocks() + s.batch * s.kv_heads * s.key_blocks()) * s.head_dim;
}

// q (batch, heads, Lq, head_dim), k (batch, kv_heads, Lk, head_dim) contiguous, of
// `dtype` (float32, bfloat16 or float16; false for any other). Fills row_offsets
// (rows + 1, rows = batch * heads * query_blocks), column_indices (as many as the
// row lengths sum to), column_offsets (batch * heads * key_blocks + 1) and
// row_indices (as many as column_indices). workspace: topk_blocks_cuda_workspace
// floats; column_counts: batch * heads * key_blocks int32.
bool topk_blocks_cuda(DType dtype, const TopKBlockSizes& sizes, const void* q, const void* k, int32_t* row_offsets,
                      int32_t* column_indices, int32_t* column_offsets, int32_t* row_indices, float* workspace,
                      int32_t* column_counts);

}  // namespace strata::kernels
