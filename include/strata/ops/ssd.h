// Mamba-2's state-space duality (SSD) layer ops: the chunked SSD scan and the gated
// RMSNorm in front of out_proj. Dtypes as in ops.h: float32 and float64 on the
// CPU; float32 and bfloat16 activations on CUDA, with float32 states, parameters
// and accumulation.
#pragma once

#include <cstdint>

#include "strata/core/tensor.h"

namespace strata::ops {

// ---- chunked SSD ----------------------------------------------------------------
// Per batch b and head h of H (group g = h / (H / groups): heads of a group share
// B and C), with a scalar A[h] (negative, so that every decay is at most 1):
//   dt_t = softplus(dt[b,t,h] + dt_bias[h])              (bias and softplus optional)
//   S_t  = exp(dt_t A[h]) S_{t-1} + dt_t x[b,t,h,:] B[b,t,g,:]^T    S: (head_dim, d_state)
//   y[b,t,h,:] = S_t C[b,t,g,:] + D[h] x[b,t,h,:]         (D optional)
// computed chunk by chunk: inside a chunk of chunk_size positions as a masked
// matrix product with the decays exp(sum_{k=j+1..i} dt_k A) (the "attention" form),
// across chunks by passing the state (kernels/ssd/ssd_args.h has the equations).
// The result does not depend on chunk_size except through rounding.
//
// x: (batch, length, heads, head_dim); dt: (batch, length, heads);
// A, D, dt_bias: (heads); B, C: (batch, length, groups, d_state), heads divisible
// by groups; initial_state: (batch, heads, head_dim, d_state). x, dt, B and C share
// one dtype; A, D, dt_bias and initial_state have it too or are float32. Every input
// gets a gradient; the backward pass recomputes the chunk states from the inputs.
struct SsdOptions {
  Tensor D;              // (heads): skip connection, y += D x
  Tensor dt_bias;        // (heads): added to dt before the softplus
  Tensor initial_state;  // (batch, heads, head_dim, d_state): the state before position 0 (zero if absent)
  bool dt_softplus = false;
  int64_t chunk_size = 256;
  bool return_final_state = false;
};

struct SsdResult {
  Tensor y;            // (batch, length, heads, head_dim), x's dtype
  Tensor final_state;  // (batch, heads, head_dim, d_state) after the last position, when asked for:
                       // float32 (float64 for float64 x)
};

SsdResult ssd_chunked(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                      const SsdOptions& options = {});

// ---- gated RMSNorm --------------------------------------------------------------
// Mamba-2's norm before out_proj: the gate first, then RMS normalisation over groups
// of group_size consecutive elements of the last dim, then the weight:
//   g = x * silu(z)                                      (g = x when z is undefined)
//   y = g / sqrt(mean over the group of g^2 + eps) * weight
// x, z: (..., dim), one dtype; weight: (dim) in that dtype, or undefined (no scale).
// group_size must divide dim; 0 means dim (one group, plain RMSNorm of the gated x).
// Statistics in float32 (float64 for float64 x).
Tensor gated_rms_norm(const Tensor& x, const Tensor& z, const Tensor& weight, double eps = 1e-5,
                      int64_t group_size = 0);

}  // namespace strata::ops
