// The sizes of the causal depthwise conv1d kernels, shared by the CPU reference and
// the CUDA launchers (nvcc-safe). Per batch b, channel c and position t, with
// K = kernel_size:
//
//   pre[b,c,t] = bias[c] + sum_{k<K} weight[c,k] x[b,c,t-(K-1)+k]    (x = 0 before t = 0)
//   y[b,c,t]   = silu(pre) when silu, else pre
//
// x, y (batch, channels, length); weight (channels, K); bias (channels) or null; all
// contiguous. The backward pass, with dpre = dy (silu'(pre) when silu, recomputed):
//
//   dx[b,c,t]     = sum_k weight[c,k] dpre[b,c,t+(K-1)-k]     (dpre = 0 past the end)
//   dweight[c,k] += sum_{b,t} dpre[b,c,t] x[b,c,t-(K-1)+k]
//   dbias[c]     += sum_{b,t} dpre[b,c,t]
//
// dx is assigned; dweight and dbias are accumulated into buffers the caller zeroed.
// The step kernel keeps conv_state (batch, channels, K-1): the previous K-1 inputs,
// oldest first.
#pragma once

#include <cstdint>

namespace strata::kernels {

constexpr int64_t kCausalConv1dMaxKernel = 8;

struct CausalConv1dSizes {
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t length = 0;  // 1 for the step kernel
  int64_t kernel_size = 0;
  bool silu = false;
};

}  // namespace strata::kernels
