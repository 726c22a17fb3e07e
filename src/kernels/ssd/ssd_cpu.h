// CPU reference of the chunked SSD (Mamba-2), float and double; the equations and
// layouts are in ssd_args.h. OpenMP over (batch, head); each walks its chunks in
// order, so results do not depend on the thread count.
//
// Backward. With dy_t = dL/dy_t, x~_j = dt_j x_j, and dS_out the gradient of the
// state leaving a chunk (the final state's gradient for the last chunk), a
// reverse scan over chunks gives
//
//   dS_in  = exp(u_last) dS_out + sum_i exp(u_i) dy_i C_i^T
//
// (dS_in of chunk 0 is the initial state's gradient). Inside a chunk, every
// gradient is a sum of the same matrices the forward pass multiplies:
//
//   dx~_j = sum_{i >= j} exp(u_i - u_j) (C_i . B_j) dy_i + exp(u_last - u_j) dS_out B_j
//   dx_j  = dt_j dx~_j + D dy_j                    dD  = sum dy_j . x_j
//   dB_j  = sum_{i >= j} exp(u_i - u_j) (dy_i . x~_j) C_i + exp(u_last - u_j) dS_out^T x~_j
//   dC_i  = sum_{j <= i} exp(u_i - u_j) (dy_i . x~_j) B_j + exp(u_i) S_in^T dy_i
//
// (dB and dC summed over the heads of a group). The decays enter through u only.
// A pair (i, j) adds d/du_i and subtracts d/du_j, so the gradient of u_i is
//
//   du_i = dy_i . (y_i - D x_i)  -  x~_i . dx~_i  +  [i = last] <dS_out, S_out>
//
// (row sums minus column sums of the weighted "attention" matrix, plus the decay
// of the states), and u_i = sum_{k <= i} dt_k A turns it into
//   da_k = sum_{i >= k} du_i,   ddt_k = x_k . dx~_k + A da_k,   dA = sum dt_k da_k,
// then ddt goes through the softplus (and into ddt_bias). The states entering each
// chunk are recomputed by a forward pass; nothing is saved but the inputs.
#pragma once

#include "kernels/ssd/ssd_args.h"

namespace strata::kernels {

// final_state may be null.
template <class T>
void ssd_forward_cpu(const SsdSizes& sizes, const SsdInputs<T, T>& inputs, T* y, T* final_state);

// grad_y like y; grad_final_state (batch, heads, head_dim, d_state) or null.
template <class T>
void ssd_backward_cpu(const SsdSizes& sizes, const SsdInputs<T, T>& inputs, const T* grad_y, const T* grad_final_state,
                      const SsdGrads<T, T>& grads);

}  // namespace strata::kernels
