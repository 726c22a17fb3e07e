// The arguments of the selective-scan kernels (Mamba-1 / S6), shared by the CPU
// reference and the CUDA launchers (nvcc-safe: plain pointers and sizes).
//
// Per batch b, channel d (of d_inner; group g = d / (d_inner / groups)) and state
// n (of d_state = N), over the steps s = 0 .. length-1 at positions
// t = s (or length-1-s when reverse):
//
//   delta_t = softplus(delta[b,d,t] + delta_bias[d])     (softplus and bias optional)
//   h_t[n]  = exp(delta_t A[d,n]) h_{t-1}[n] + delta_t B[b,g,n,t] u[b,d,t]
//   y_t     = sum_n C[b,g,n,t] h_t[n] + D[d] u[b,d,t]
//   out_t   = y_t silu(z[b,d,t])                          (gate optional)
//
// with h before the first step = initial_state[b,d,n] (zero when absent); the state
// after the last step is the final state. Shapes: u, delta, z (batch, d_inner,
// length); A (d_inner, N); B, C (batch, groups, N, length); D, delta_bias (d_inner);
// states (batch, d_inner, N); per-step states (batch, d_inner, length, N), the
// state after the step at position t in [b, d, t, :]. All contiguous.
//
// Routes: the channels may hold `routes` independent scans (VMamba's K directions)
// folded in, route r owning channels [r, r + 1) * d_inner / routes and groups
// [r, r + 1) * groups / routes (routes divides groups, so no group, and no CUDA
// block, spans two routes). Route r runs reversed when bit r of reversed_routes
// is set, or when `reverse` is (then every route does).
//
// `Value` is the element type of the activations (u, delta, B, C, z and the output);
// `State` that of the parameters and states (A, D, delta_bias, initial and final
// state) and of the gradients that sum over the batch or over channels. The CPU
// reference uses one type for both (float or double); CUDA takes Value = void (float32
// or bfloat16, named by a DType) and State = float.
#pragma once

#include <cstdint>

#include "strata/core/host_device.h"

namespace strata::kernels {

struct SelectiveScanSizes {
  int64_t batch = 0;
  int64_t d_inner = 0;
  int64_t length = 0;
  int64_t d_state = 0;
  int64_t groups = 1;
  bool delta_softplus = false;
  bool reverse = false;
  int64_t routes = 1;             // divides groups; at most 64
  uint64_t reversed_routes = 0;   // bit r: route r runs from the last position to the first

  STRATA_HOST_DEVICE int64_t channels_per_group() const { return d_inner / groups; }
  // Whether channel d's scan runs from the last position to the first.
  STRATA_HOST_DEVICE bool reversed(int64_t d) const {
    return reverse || ((reversed_routes >> (d / (d_inner / routes))) & 1u) != 0;
  }
};

template <class Value, class State>
struct SelectiveScanInputs {
  const Value* u = nullptr;              // (batch, d_inner, length)
  const Value* delta = nullptr;          // (batch, d_inner, length)
  const State* A = nullptr;              // (d_inner, N)
  const Value* B = nullptr;              // (batch, groups, N, length)
  const Value* C = nullptr;              // (batch, groups, N, length)
  const State* D = nullptr;              // (d_inner) or null
  const Value* z = nullptr;              // (batch, d_inner, length) or null
  const State* delta_bias = nullptr;     // (d_inner) or null
  const State* initial_state = nullptr;  // (batch, d_inner, N) or null
};

// What the forward pass writes: out (batch, d_inner, length) always; final_state
// (batch, d_inner, N) and states (batch, d_inner, length, N) when not null.
template <class Value, class State>
struct SelectiveScanOutputs {
  Value* out = nullptr;
  State* final_state = nullptr;
  State* states = nullptr;
};

// Activation gradients (du, ddelta, dz) are assigned. The others are sums and
// are accumulated (+=) into buffers the caller zeroed: dA, dD, ddelta_bias over the
// batch, dB and dC over the channels of a group. dinitial_state is assigned.
// dz, dD, ddelta_bias and dinitial_state are null exactly when their input is
// absent; the others are always set.
template <class Value, class State>
struct SelectiveScanGrads {
  Value* du = nullptr;              // (batch, d_inner, length)
  Value* ddelta = nullptr;          // (batch, d_inner, length), through softplus and bias
  Value* dz = nullptr;              // (batch, d_inner, length)
  State* dA = nullptr;              // (d_inner, N)
  State* dB = nullptr;              // (batch, groups, N, length)
  State* dC = nullptr;              // (batch, groups, N, length)
  State* dD = nullptr;              // (d_inner)
  State* ddelta_bias = nullptr;     // (d_inner)
  State* dinitial_state = nullptr;  // (batch, d_inner, N)
};

}  // namespace strata::kernels
