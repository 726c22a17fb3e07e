// CPU reference of the selective scan (Mamba-1 / S6), float and double; the
// equations and shapes are in selective_scan_args.h.
//
// Forward: OpenMP over (batch, channel); each keeps its N states in a local array
// and walks the steps in order, writing the per-step states when asked for.
// `final_state` may be null, and may alias `inputs.initial_state` (a channel reads
// its initial state before it writes its final one), so the one-token step for
// generation is this scan with length 1 and the decoding state as both.
//
// Backward: the states are recomputed, never stored for the whole tensor. For one
// (batch, channel, state) the states h_s and adjoints g_s = dL/dh_s form two
// sequences of `length` values (a forward pass, then a reverse pass
//   g_s = C_s dy_s + grad_states_s + exp(delta_{s+1} A) g_{s+1},
//   g_last = C_last dy_last + grad_states_last + grad_final),
// from which every gradient is a sum. Two passes keep each output owned by one
// OpenMP iteration, so the result does not depend on the thread count: over
// channels (du, ddelta, dz, dA, dD, ddelta_bias, dinitial_state), then over
// (batch, group, state) (dB, dC, which sum over the channels of a group).
#pragma once

#include "kernels/selective_scan/selective_scan_args.h"

namespace strata::kernels {

template <class T>
void selective_scan_forward_cpu(const SelectiveScanSizes& sizes, const SelectiveScanInputs<T, T>& inputs,
                                const SelectiveScanOutputs<T, T>& outputs);

// output_grads: out (batch, d_inner, length); final_state (batch, d_inner, N) and
// states (batch, d_inner, length, N) or null.
template <class T>
void selective_scan_backward_cpu(const SelectiveScanSizes& sizes, const SelectiveScanInputs<T, T>& inputs,
                                 const SelectiveScanOutputs<const T, const T>& output_grads,
                                 const SelectiveScanGrads<T, T>& grads);

}  // namespace strata::kernels
