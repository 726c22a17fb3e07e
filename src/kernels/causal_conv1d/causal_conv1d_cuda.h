// Raw CUDA launchers of the causal depthwise conv1d (nvcc-safe: no Tensor, no fmt).
// The equations and shapes are in causal_conv1d_args.h; the tiling at the top of
// causal_conv1d_cuda.cu. `dtype` is that of x, y, grad_y, grad_x and conv_state:
// float32 or bfloat16 (each launcher returns false for any other). weight, bias and
// their gradients are float32, and so is the arithmetic.
#pragma once

#include <cstdint>

#include "kernels/causal_conv1d/causal_conv1d_args.h"
#include "strata/core/dtype.h"

namespace strata::kernels {

bool causal_conv1d_forward_cuda(DType dtype, const CausalConv1dSizes& sizes, const void* x, const float* weight,
                                const float* bias, void* y);

// grad_weight, grad_bias: float32 buffers the caller zeroed; grad_bias null when there is no bias.
bool causal_conv1d_backward_cuda(DType dtype, const CausalConv1dSizes& sizes, const void* x, const float* weight,
                                 const float* bias, const void* grad_y, void* grad_x, float* grad_weight,
                                 float* grad_bias);

// x, y (batch, channels); conv_state (batch, channels, K-1) is read and updated.
bool causal_conv1d_step_cuda(DType dtype, const CausalConv1dSizes& sizes, void* conv_state, const void* x,
                             const float* weight, const float* bias, void* y);

}  // namespace strata::kernels
