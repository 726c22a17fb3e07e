// The arguments of the attention kernels, shared by the CPU reference and the CUDA
// launchers (nvcc-safe: plain pointers and sizes). The equations are those of
// include/strata/ops/attention.h without the temperatures (the op folds them into
// q and k first):
//
//   s_ij  = scale * q_i . k_j + bias_ij            over the keys j visible to query i
//   lse_i = log(sum_j exp(s_ij) + exp(sink_h))     (no sink term without sinks)
//   out_i = sum_j exp(s_ij - lse_i) v_j
//
// and the backward pass, from the saved lse (P is recomputed, never stored):
//
//   delta_i = dout_i . out_i - dlse_i              (dlse = 0 when lse has no gradient)
//   p_ij = exp(s_ij - lse_i),  dp_ij = dout_i . v_j,  ds_ij = p_ij (dp_ij - delta_i)
//   dq_i = scale sum_j ds_ij k_j,  dk_j = scale sum_i ds_ij q_i,  dv_j = sum_i p_ij dout_i
//   dbias_ij = ds_ij,  dsink_h = -sum_i exp(sink_h - lse_i) delta_i
//
// Key j is visible to query i of head h when (not causal or j <= i + Lk - Lq) and,
// with a block list, j's key block is listed for i's query block (of head h, or of
// the layout's one head). A row that sees no key has out = 0 and lse = -inf (or the
// sink); its gradients are zero.
//
// Shapes, all contiguous: q, out, dout, dq (batch, heads, Lq, head_dim); k, v, dk,
// dv (batch, kv_heads, Lk, head_dim); query head h reads kv head h / (heads /
// kv_heads); lse, delta (batch, heads, Lq); sinks (heads); dbias (batch, heads, Lq,
// Lk). The bias is read through four strides (zero on broadcast dims).
//
// `Value` is the element type of q, k, v, out and their gradients; `Acc` that of
// bias, sinks, lse, delta and dbias. The CPU reference uses one type for both
// (float or double); CUDA takes Value = void (float32, bfloat16 or float16, named by
// a DType) and Acc = float.
#pragma once

#include <cstdint>

#include "strata/core/host_device.h"

namespace strata::kernels {

struct AttentionSizes {
  int64_t batch = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t length_q = 0;
  int64_t length_k = 0;
  int64_t head_dim = 0;
  bool causal = false;
  double scale = 1.0;

  STRATA_HOST_DEVICE int64_t group() const { return heads / kv_heads; }
  // Causal: key j is visible to query i when j <= i + causal_offset().
  STRATA_HOST_DEVICE int64_t causal_offset() const { return length_k - length_q; }
};

// A BlockLayout's index arrays on the kernel's device; row_offsets == nullptr means
// dense attention (every key, subject to `causal`).
struct AttentionBlocks {
  int64_t block_size = 0;
  int64_t heads = 0;  // 1 (shared by all heads) or the number of attention heads
  int64_t query_blocks = 0;
  int64_t key_blocks = 0;
  const int32_t* row_offsets = nullptr;     // (heads * query_blocks + 1)
  const int32_t* column_indices = nullptr;  // key blocks of each row, increasing
  const int32_t* column_offsets = nullptr;  // (heads * key_blocks + 1)
  const int32_t* row_indices = nullptr;     // query blocks of each column, increasing

  STRATA_HOST_DEVICE bool sparse() const { return row_offsets != nullptr; }
  STRATA_HOST_DEVICE int64_t row(int64_t head, int64_t query_block) const {
    return (heads == 1 ? 0 : head) * query_blocks + query_block;
  }
  STRATA_HOST_DEVICE int64_t column(int64_t head, int64_t key_block) const {
    return (heads == 1 ? 0 : head) * key_blocks + key_block;
  }
};

template <class Acc>
struct AttentionBias {
  const Acc* data = nullptr;  // null: no bias
  int64_t stride_batch = 0, stride_head = 0, stride_q = 0, stride_k = 0;

  STRATA_HOST_DEVICE Acc at(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return data[b * stride_batch + h * stride_head + i * stride_q + j * stride_k];
  }
};

// Dynamic mask attention (DMA, arXiv 2508.02124; ops::dynamic_mask_attention): a bias
// per (batch, kv head, key), the same for every query, and a keep mask given per key
// as the range of queries that keep it. Query i "ends" at key position
// e_i = i + Lk - Lq (the causal alignment); key j is kept by query i when
//   j <= e_i < keep_end[j]
// so the kept keys of a query are causally visible (causal must be set). keep_end
// comes from kernels/dynamic_mask/ (top-w keys of each prefix by bias): a key stays
// in the top w of a growing prefix until w better keys have arrived, so its
// queries are one range. block_keep_end holds the maximum of keep_end over each
// block of kKeepEndBlock keys: a tile of keys is skipped by every query whose
// e_i >= that maximum.
constexpr int64_t kKeepEndBlock = 32;

template <class Acc>
struct AttentionKeyMask {
  const Acc* bias = nullptr;              // (batch, kv_heads, Lk); null: no dynamic mask
  const int32_t* keep_end = nullptr;      // (batch, kv_heads, Lk)
  const int32_t* block_keep_end = nullptr;  // (batch, kv_heads, ceil(Lk / kKeepEndBlock))

  STRATA_HOST_DEVICE bool active() const { return bias != nullptr; }
  // Index of key j of kv head `kv_head` in the (batch, kv_heads, Lk) arrays.
  STRATA_HOST_DEVICE int64_t at(const AttentionSizes& s, int64_t b, int64_t kv_head, int64_t j) const {
    return (b * s.kv_heads + kv_head) * s.length_k + j;
  }
  STRATA_HOST_DEVICE bool kept(const AttentionSizes& s, int64_t b, int64_t kv_head, int64_t i, int64_t j) const {
    const int64_t end = i + s.causal_offset();
    return j <= end && end < keep_end[at(s, b, kv_head, j)];
  }
};

template <class Value, class Acc>
struct AttentionInputs {
  const Value* q = nullptr;
  const Value* k = nullptr;
  const Value* v = nullptr;
  AttentionBias<Acc> bias;
  const Acc* sinks = nullptr;  // (heads) or null
  AttentionKeyMask<Acc> key_mask;
};

// dq, dk and dv are assigned. dbias is null when the bias needs no gradient; else the
// caller zeroes it and the kernels write its visible entries (each exactly once).
template <class Value, class Acc>
struct AttentionGrads {
  Value* dq = nullptr;
  Value* dk = nullptr;
  Value* dv = nullptr;
  Acc* dbias = nullptr;
  // With a key mask: d key_bias (batch, kv_heads, Lk) = the sum of dS over the
  // queries and the heads of the group, assigned (no zeroing needed); null when
  // the key bias needs no gradient.
  Acc* dkey_bias = nullptr;
};

}  // namespace strata::kernels
