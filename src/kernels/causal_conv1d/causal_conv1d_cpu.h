// CPU reference of the causal depthwise conv1d, float and double; the equations are
// in causal_conv1d_args.h. The forward and the step run OpenMP over (batch,
// channel); the backward over channels, with the batch inside, so each channel's
// weight and bias gradients are one iteration's and the result does not depend on
// the thread count.
#pragma once

#include "kernels/causal_conv1d/causal_conv1d_args.h"

namespace strata::kernels {

template <class T>
void causal_conv1d_forward_cpu(const CausalConv1dSizes& sizes, const T* x, const T* weight, const T* bias, T* y);

// grad_bias may be null (no bias).
template <class T>
void causal_conv1d_backward_cpu(const CausalConv1dSizes& sizes, const T* x, const T* weight, const T* bias,
                                const T* grad_y, T* grad_x, T* grad_weight, T* grad_bias);

// x, y (batch, channels); conv_state (batch, channels, K-1) is read and updated.
template <class T>
void causal_conv1d_step_cpu(const CausalConv1dSizes& sizes, T* conv_state, const T* x, const T* weight, const T* bias,
                            T* y);

}  // namespace strata::kernels
