// Raw CUDA launchers of fused attention, dense or block-sparse (nvcc-safe: no
// Tensor, no fmt). The equations, shapes and gradient conventions are in
// attention_args.h; the tiling is described at the top of attention_cuda.cu.
//
// `dtype` is that of q, k, v, out and their gradients: float32, bfloat16 or
// float16; each launcher returns false for any other. bias, sinks, lse, delta and
// dbias are float32. A block list's block size must be 64 or 128.
#pragma once

#include <cstdint>

#include "kernels/attention/attention_args.h"
#include "strata/core/dtype.h"

namespace strata::kernels {

constexpr int64_t kAttentionCudaMaxHeadDim = 256;

bool attention_forward_cuda(DType dtype, const AttentionSizes& sizes, const AttentionBlocks& blocks,
                            const AttentionInputs<void, float>& inputs, void* out, float* lse);

// out and lse from the forward pass over the same inputs; grad_lse may be null.
// delta (batch, heads, Lq) is written (the caller uses it for dsink);
// dq_accumulator (batch, heads, Lq, head_dim) float32 is workspace: dq is summed
// there with float32 atomics over the key tiles, then converted into grads.dq.
bool attention_backward_cuda(DType dtype, const AttentionSizes& sizes, const AttentionBlocks& blocks,
                             const AttentionInputs<void, float>& inputs, const void* out, const float* lse,
                             const void* grad_out, const float* grad_lse, float* delta, float* dq_accumulator,
                             const AttentionGrads<void, float>& grads);

// probabilities (batch, heads, Lq, Lk) float32: exp(s_ij - lse_i) where visible, else 0.
// One thread per entry: for diagnostics at small sizes.
bool attention_probabilities_cuda(DType dtype, const AttentionSizes& sizes, const AttentionBlocks& blocks,
                                  const AttentionInputs<void, float>& inputs, const float* lse, float* probabilities);

}  // namespace strata::kernels
