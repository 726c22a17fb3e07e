// State-space ops: the selective scan of Mamba-1 (S6) and the causal depthwise
// conv1d in front of it, each differentiable, each with a one-token step for
// generation (constant memory per token). Dtypes as in ops.h: float32 and float64
// on the CPU; float32 and bfloat16 activations on CUDA, with float32 states and
// accumulation.
#pragma once

#include <vector>

#include "strata/core/tensor.h"

namespace strata::ops {

// ---- selective scan -------------------------------------------------------------
// Per batch b, channel d of d_inner, state n of N, and group g = d / (d_inner / groups)
// (groups = 1: B and C shared by all channels):
//   delta_t = softplus(delta[b,d,t] + delta_bias[d])     (bias and softplus optional)
//   h_t[n]  = exp(delta_t A[d,n]) h_{t-1}[n] + delta_t B[b,g,n,t] u[b,d,t]
//   y[b,d,t] = (sum_n C[b,g,n,t] h_t[n] + D[d] u[b,d,t]) * silu(z[b,d,t])   (D, z optional)
// (zero-order hold for A, Euler for B, as Mamba's reference does). With `reverse` the
// scan runs from the last position to the first (Vim's backward direction).
//
// u, delta, z: (batch, d_inner, length); A: (d_inner, N), N <= 256 on CUDA;
// B, C: (batch, groups, N, length); D, delta_bias: (d_inner). u, delta, B, C and z
// share one dtype; A, D, delta_bias and initial_state have it too or are float32.
// The backward pass recomputes the states rather than storing (batch, length,
// d_inner, N); every input gets a gradient.
//
// return_states adds the state after every step, h_t for each position t (A2Mamba
// and Spatial-Mamba read them), as (batch, d_inner, length, N): each channel's
// states contiguous, position t at [b, d, t, :] in either direction (with
// `reverse`, h_t has seen positions t .. length-1). It is differentiable: its
// gradient joins the adjoint of h_t in the backward scan and so reaches u, delta,
// A, B, delta_bias and initial_state (everything that makes the states). It costs
// N floats per element of u, the memory the backward pass otherwise avoids.
struct SelectiveScanOptions {
  Tensor D;              // (d_inner): skip connection, y += D u
  Tensor z;              // (batch, d_inner, length): gate, y *= silu(z)
  Tensor delta_bias;     // (d_inner): added to delta before the softplus
  Tensor initial_state;  // (batch, d_inner, N): the state before the first step (zero if absent)
  bool delta_softplus = false;
  bool reverse = false;
  bool return_final_state = false;
  bool return_states = false;
};

struct SelectiveScanResult {
  Tensor y;            // (batch, d_inner, length), u's dtype
  Tensor final_state;  // (batch, d_inner, N) after the last step, when asked for: float32 (float64 for float64 u)
  Tensor states;       // (batch, d_inner, length, N) after each step, when asked for: final_state's dtype
};

SelectiveScanResult selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                   const Tensor& C, const SelectiveScanOptions& options = {});

// ---- K routes in one launch -----------------------------------------------------
// VMamba-style multi-direction scans: K independent selective scans, route k with
// its own u, delta, B, C, z and its own parameters A, D, delta_bias, each running
// forward or (reversed[k]) from the last position to the first, all in one kernel
// launch (the grid covers batch x K x channel blocks). Route k gives exactly what
// selective_scan gives on the route-k slices with reverse = reversed[k].
//
// u, delta, z: (batch, K, d_inner, length); A: (K, d_inner, N);
// B, C: (batch, K, groups, N, length); D, delta_bias: (K, d_inner);
// initial_state: (batch, K, d_inner, N); reversed: K flags, or empty for none;
// 1 <= K <= 64. options.reverse must be false (reversed says it per route); the
// other options are selective_scan's. Results: y (batch, K, d_inner, length),
// final_state (batch, K, d_inner, N), states (batch, K, d_inner, length, N).
//
// These layouts are the single scan's with the routes folded into the channels
// (K * d_inner channels in K * groups groups), so the routes cost no copies of
// contiguous inputs. route_gather (ops/routes.h) gives K routed sequences as
// (batch, K, length, channels); transposing the last two dims gives u's layout.
SelectiveScanResult selective_scan_routes(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                          const Tensor& C, const std::vector<bool>& reversed,
                                          const SelectiveScanOptions& options = {});

// One position of the forward scan, for generation: u, delta, z (batch, d_inner);
// B, C (batch, groups, N); A, D, delta_bias as above. `state` (batch, d_inner, N),
// contiguous, float32 (float64 for float64 u), is read and overwritten with the next
// state; returns y (batch, d_inner). Feeding positions 0, 1, ... from a zero state
// reproduces selective_scan. Not differentiable: run it under autograd::NoGradGuard.
struct SelectiveScanStepOptions {
  Tensor D;
  Tensor z;
  Tensor delta_bias;
  bool delta_softplus = false;
};

Tensor selective_scan_step(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                           const Tensor& C, const SelectiveScanStepOptions& options = {});

// ---- causal depthwise conv1d ----------------------------------------------------
// x (batch, channels, length), weight (channels, kernel_size) with kernel_size in
// 2..8, bias (channels) optional:
//   y[b,c,t] = act(bias[c] + sum_k weight[c,k] x[b,c,t - (kernel_size-1) + k])
// with x = 0 before position 0 and act = silu when `silu`, else the identity.
Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(), bool silu = false);

// One position, for generation: x (batch, channels); `conv_state` (batch, channels,
// kernel_size - 1), contiguous, x's dtype, holds the previous inputs oldest first; it
// is read, shifted left and given x at its end. Returns y (batch, channels). From a
// zero state this reproduces causal_conv1d position by position. Not
// differentiable: run it under autograd::NoGradGuard.
Tensor causal_conv1d_step(const Tensor& conv_state, const Tensor& x, const Tensor& weight,
                          const Tensor& bias = Tensor(), bool silu = false);

}  // namespace strata::ops
