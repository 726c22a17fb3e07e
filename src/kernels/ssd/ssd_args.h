// The arguments of the chunked SSD kernels (Mamba-2's state-space duality), shared
// by the CPU reference and the CUDA launchers (nvcc-safe: plain pointers and sizes).
//
// Per batch b and head h (group g = h / (heads / groups)), with the state
// S_t (head_dim x d_state) = (P x N):
//
//   dt_t = softplus(dt[b,t,h] + dt_bias[h])          (bias and softplus optional)
//   S_t  = exp(dt_t A[h]) S_{t-1} + dt_t x_t B_t^T   x_t = x[b,t,h,:] (P), B_t = B[b,t,g,:] (N)
//   y_t  = S_t C_t + D[h] x_t                        C_t = C[b,t,g,:] (N)
//
// with S_{-1} = initial_state[b,h] (zero when absent). The chunked algorithm cuts
// the sequence into chunks of chunk_size positions (the last one may be shorter).
// Inside a chunk with positions i, j = 0 .. len-1 and the cumulative log decay
// u_i = sum_{k <= i} dt_k A (inclusive, restarting at each chunk), it computes
//
//   y_i   = sum_{j <= i} exp(u_i - u_j) (C_i . B_j) dt_j x_j       intra-chunk ("attention" form,
//         + exp(u_i) S_in C_i + D x_i                             L = exp(segsum)), inter-chunk
//   S_out = exp(u_last) S_in + sum_j exp(u_last - u_j) dt_j x_j B_j^T
//
// where S_in is the state entering the chunk; the states pass from chunk to chunk
// by a sequential scan over chunks. Every exponent is <= 0 for A < 0, dt >= 0.
//
// Layouts (all contiguous): x, y (batch, length, heads, head_dim); dt (batch,
// length, heads); A, D, dt_bias (heads); B, C (batch, length, groups, d_state);
// states (batch, heads, head_dim, d_state).
//
// `Value` is the element type of x, dt, B, C, y and their gradients; `Param` that of
// A, D, dt_bias, the states and their gradients. The CPU reference uses one type for
// both (float or double); CUDA takes Value = void (float32 or bfloat16, named by a
// DType) and Param = float.
#pragma once

#include <cstdint>

#include "strata/core/host_device.h"

namespace strata::kernels {

struct SsdSizes {
  int64_t batch = 0;
  int64_t length = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t groups = 1;
  int64_t d_state = 0;
  int64_t chunk_size = 256;
  bool dt_softplus = false;

  STRATA_HOST_DEVICE int64_t heads_per_group() const { return heads / groups; }
  STRATA_HOST_DEVICE int64_t chunks() const { return (length + chunk_size - 1) / chunk_size; }
};

template <class Value, class Param>
struct SsdInputs {
  const Value* x = nullptr;              // (batch, length, heads, head_dim)
  const Value* dt = nullptr;             // (batch, length, heads)
  const Param* A = nullptr;              // (heads)
  const Value* B = nullptr;              // (batch, length, groups, d_state)
  const Value* C = nullptr;              // (batch, length, groups, d_state)
  const Param* D = nullptr;              // (heads) or null
  const Param* dt_bias = nullptr;        // (heads) or null
  const Param* initial_state = nullptr;  // (batch, heads, head_dim, d_state) or null
};

// Every gradient is assigned (the kernels sum over the batch, positions and the
// heads of a group themselves, in a fixed order). dD, ddt_bias and dinitial_state
// are null exactly when their input is absent; the others are always set.
template <class Value, class Param>
struct SsdGrads {
  Value* dx = nullptr;              // (batch, length, heads, head_dim)
  Value* ddt = nullptr;             // (batch, length, heads), through softplus and bias
  Param* dA = nullptr;              // (heads)
  Value* dB = nullptr;              // (batch, length, groups, d_state)
  Value* dC = nullptr;              // (batch, length, groups, d_state)
  Param* dD = nullptr;              // (heads)
  Param* ddt_bias = nullptr;        // (heads)
  Param* dinitial_state = nullptr;  // (batch, heads, head_dim, d_state)
};

}  // namespace strata::kernels
