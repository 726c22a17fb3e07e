// Rotary position embedding (RoPE; Su et al., "RoFormer", arXiv 2104.09864), in the
// half-split layout of GPT-NeoX and LLaMA: the head dimension is cut into halves
// x = [x1, x2] of d/2 each, and pair i = (x1_i, x2_i) of the token at position m is
// rotated by the angle m * theta_i, theta_i = base^(-2i / d):
//
//   out1_i = x1_i cos(m theta_i) - x2_i sin(m theta_i)
//   out2_i = x2_i cos(m theta_i) + x1_i sin(m theta_i)
//
// Rotations compose, so after rotating q at position m and k at position n the
// product q_m . k_n depends on the positions only through m - n (the relative
// position property attention relies on).
//
// One fused kernel (CPU: float32, float64; CUDA: float32, bfloat16 with float32
// arithmetic) reads x once and writes the rotated copy; the cos/sin tables are made
// on the host in double precision. The gradient is the rotation by the opposite
// angles, the same kernel.
#pragma once

#include "strata/core/tensor.h"

namespace strata::ops {

// x (batch, heads, length, head_dim) with an even head_dim; positions (length)
// int32/int64 on any device (read on the host), one position per token.
Tensor rotary_embedding(const Tensor& x, const Tensor& positions, double base = 10000.0);
// The same with positions offset, offset + 1, ..., offset + length - 1 (a
// sequence, or the next tokens after `offset` cached ones).
Tensor rotary_embedding(const Tensor& x, int64_t offset = 0, double base = 10000.0);

}  // namespace strata::ops
