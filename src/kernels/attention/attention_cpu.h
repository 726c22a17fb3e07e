// CPU reference of fused attention, dense or block-sparse, float and double; the
// equations and shapes are in attention_args.h.
//
// Forward: OpenMP over query rows (batch, head, i). A row computes its visible
// scores into a buffer of Lk values (one row at a time, never the L x L matrix),
// then their maximum, the sum of exp(s - max) with the sink, and out and lse.
//
// Backward: P is recomputed from the saved lse. Each output is owned by one OpenMP
// iteration, so the result does not depend on the thread count: delta per query
// row, then dq (and dbias) per query row, then dk and dv per (batch, kv head, key)
// over the visible queries of every head of the group, found through the block
// list's columns (CSC). The recomputation costs a second pass over the scores.
//
// A dynamic key mask (AttentionKeyMask, DMA) enters through the score: -inf for a
// key the query drops, plus the key's bias otherwise; the reference visits every
// causally visible key (no tile skipping), and the key bias gradient is summed in
// the dk/dv iteration that owns the key.
#pragma once

#include "kernels/attention/attention_args.h"

namespace strata::kernels {

// out (batch, heads, Lq, head_dim), lse (batch, heads, Lq).
template <class T>
void attention_forward_cpu(const AttentionSizes& sizes, const AttentionBlocks& blocks,
                           const AttentionInputs<T, T>& inputs, T* out, T* lse);

// out and lse from the forward pass over the same inputs; grad_lse (batch, heads,
// Lq) or null. Writes delta (batch, heads, Lq), which the caller uses for dsink.
template <class T>
void attention_backward_cpu(const AttentionSizes& sizes, const AttentionBlocks& blocks,
                            const AttentionInputs<T, T>& inputs, const T* out, const T* lse, const T* grad_out,
                            const T* grad_lse, T* delta, const AttentionGrads<T, T>& grads);

// probabilities (batch, heads, Lq, Lk): exp(s_ij - lse_i) where visible, else 0.
template <class T>
void attention_probabilities_cpu(const AttentionSizes& sizes, const AttentionBlocks& blocks,
                                 const AttentionInputs<T, T>& inputs, const T* lse, T* probabilities);

}  // namespace strata::kernels
