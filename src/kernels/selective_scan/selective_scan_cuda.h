// Raw CUDA launchers of the selective scan (nvcc-safe: no Tensor, no fmt). The
// equations, shapes and gradient conventions are in selective_scan_args.h; the
// tiling is described at the top of selective_scan_cuda.cu.
//
// `dtype` is that of the activations (u, delta, B, C, z, out, du, ddelta, dz):
// float32 or bfloat16; each launcher returns false for any other. Parameters,
// states and the summed gradients (dA, dB, dC, dD, ddelta_bias, dinitial_state) are
// float32, with float32 state and accumulation throughout.
#pragma once

#include <cstdint>

#include "kernels/selective_scan/selective_scan_args.h"
#include "strata/core/dtype.h"

namespace strata::kernels {

constexpr int64_t kSelectiveScanCudaMaxState = 256;

// Steps between two checkpointed states for N = d_state (the forward pass stores the
// state entering each chunk of this many steps, for the backward pass).
int64_t selective_scan_cuda_chunk_length(int64_t d_state);

// checkpoints: (batch, d_inner, n_chunks, N) with n_chunks = ceil(length / chunk
// length), or null when no backward pass will follow. outputs.final_state and
// outputs.states may be null.
bool selective_scan_forward_cuda(DType dtype, const SelectiveScanSizes& sizes,
                                 const SelectiveScanInputs<void, float>& inputs,
                                 const SelectiveScanOutputs<void, float>& outputs, float* checkpoints);

// checkpoints from the forward pass over the same inputs; output_grads.final_state
// and output_grads.states may be null.
bool selective_scan_backward_cuda(DType dtype, const SelectiveScanSizes& sizes,
                                  const SelectiveScanInputs<void, float>& inputs, const float* checkpoints,
                                  const SelectiveScanOutputs<const void, const float>& output_grads,
                                  const SelectiveScanGrads<void, float>& grads);

// One position (sizes.length == 1, sizes.reverse false, inputs.initial_state null):
// state (batch, d_inner, N) float32 is read and overwritten with the next state;
// out (batch, d_inner).
bool selective_scan_step_cuda(DType dtype, const SelectiveScanSizes& sizes,
                              const SelectiveScanInputs<void, float>& inputs, float* state, void* out);

}  // namespace strata::kernels
