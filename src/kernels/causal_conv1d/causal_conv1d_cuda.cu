// CUDA causal depthwise conv1d (kernel size 2..8) with optional SiLU: forward,
// backward and the one-token step.
//
// Taps. A channel's K weights are kept in registers right-aligned in an 8-tap
// window: tap j (0..7) multiplies x[t - 7 + j], so weight[c,k] sits at tap
// k + 8 - K and taps below 8 - K are skipped. Every register index is then a
// compile-time constant whatever K is, so one instantiation per dtype serves all
// kernel sizes.
//
// Forward: a grid-stride loop over (row = (batch, channel), group of kItems = 4
// consecutive positions). A thread loads the kItems + 7 inputs its outputs read into
// registers (neighbouring threads read neighbouring windows, so the overlap is
// served by L1) and writes its 4 outputs; nothing is staged in shared memory.
//
// Backward: a block serves one channel (or a segment of one when the channels are
// few), looping over all (batch, group of 4 positions) of it. A thread loads the
// inputs x[t0-7 .. t0+10] and output gradients dy[t0 .. t0+10], recomputes the
// pre-activations it needs for silu' (the forward's output is not saved), and forms
//   dx[t]  = sum_k weight[c,k] dpre[t+(K-1)-k]
// for its 4 positions (each dpre is recomputed by the up to 3 threads whose outputs
// read it), while adding dpre[t] x[t-(K-1)+k] and dpre[t] for its own positions into
// registers. At the end the block sums those K + 1 partials (warp shuffles, then
// shared memory across warps) and adds them to the float32 weight and bias
// gradients with one atomicAdd each, so their summation order depends on scheduling.
//
// Step: one thread per (batch, channel) row of the rolling state.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/causal_conv1d/causal_conv1d_cuda.h"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 4;
constexpr int kTaps = static_cast<int>(kCausalConv1dMaxKernel);

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// weight[c, :] right-aligned into taps[8]; returns the first tap in use, 8 - K.
__device__ __forceinline__ int load_taps(const float* weight, int64_t c, int kernel_size, float (&taps)[kTaps]) {
  const int first_tap = kTaps - kernel_size;
#pragma unroll
  for (int j = 0; j < kTaps; ++j) taps[j] = j >= first_tap ? weight[c * kernel_size + j - first_tap] : 0.0f;
  return first_tap;
}

template <class T>
__global__ void causal_conv1d_forward_kernel(const CausalConv1dSizes s, const T* x, const float* weight,
                                             const float* bias, T* y) {
  const int64_t groups_per_row = (s.length + kItems - 1) / kItems;
  const int64_t total = s.batch * s.channels * groups_per_row;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = item / groups_per_row, t0 = item % groups_per_row * kItems;
    const int64_t c = row % s.channels;
    float taps[kTaps];
    const int first_tap = load_taps(weight, c, static_cast<int>(s.kernel_size), taps);
    const T* x_row = x + row * s.length;
    float window[kItems + kTaps - 1];  // window[m] = x[t0 - 7 + m]
#pragma unroll
    for (int m = 0; m < kItems + kTaps - 1; ++m) {
      const int64_t t = t0 - (kTaps - 1) + m;
      window[m] = m >= first_tap && t >= 0 && t < s.length ? load(x_row, t) : 0.0f;
    }
    const float b = bias ? bias[c] : 0.0f;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (t0 + i >= s.length) break;
      float pre = b;
#pragma unroll
      for (int j = 0; j < kTaps; ++j)
        if (j >= first_tap) pre += taps[j] * window[i + j];
      store(y, row * s.length + t0 + i, s.silu ? pre * sigmoid(pre) : pre);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    causal_conv1d_backward_kernel(const CausalConv1dSizes s, int segments, const T* x, const float* weight,
                                  const float* bias, const T* grad_y, T* grad_x, float* grad_weight, float* grad_bias) {
  __shared__ float partials[kWarps][kTaps + 1];
  const int64_t c = blockIdx.x / segments;
  const int segment = blockIdx.x % segments;
  float taps[kTaps];
  const int first_tap = load_taps(weight, c, static_cast<int>(s.kernel_size), taps);
  const float b = bias ? bias[c] : 0.0f;
  const int64_t groups_per_row = (s.length + kItems - 1) / kItems;

  float grad_taps[kTaps + 1] = {};  // dweight at taps 0..7, then dbias
  for (int64_t item = segment * static_cast<int64_t>(kThreads) + threadIdx.x; item < s.batch * groups_per_row;
       item += static_cast<int64_t>(segments) * kThreads) {
    const int64_t row = (item / groups_per_row * s.channels + c) * s.length, t0 = item % groups_per_row * kItems;
    float inputs[kItems + 2 * (kTaps - 1)];  // inputs[m] = x[t0 - 7 + m]
#pragma unroll
    for (int m = 0; m < kItems + 2 * (kTaps - 1); ++m) {
      const int64_t t = t0 - (kTaps - 1) + m;
      inputs[m] = m >= first_tap && t >= 0 && t < s.length ? load(x, row + t) : 0.0f;
    }
    float grad_pre[kItems + kTaps - 1];  // dpre at t0 + q, zero past the end
#pragma unroll
    for (int q = 0; q < kItems + kTaps - 1; ++q) {
      const int64_t t = t0 + q;
      float g = 0.0f;
      if (t < s.length) {
        g = load(grad_y, row + t);
        if (s.silu) {
          float pre = b;
#pragma unroll
          for (int j = 0; j < kTaps; ++j)
            if (j >= first_tap) pre += taps[j] * inputs[q + j];
          const float gate = sigmoid(pre);
          g *= gate * (1.0f + pre * (1.0f - gate));
        }
      }
      grad_pre[q] = g;
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (t0 + i >= s.length) break;
      float dx = 0.0f;
#pragma unroll
      for (int j = 0; j < kTaps; ++j) {
        if (j < first_tap) continue;
        dx += taps[j] * grad_pre[i + kTaps - 1 - j];  // weight[c,k] dpre[t + (K-1) - k]
        grad_taps[j] += grad_pre[i] * inputs[i + j];  // dpre[t] x[t - (K-1) + k]
      }
      grad_taps[kTaps] += grad_pre[i];
      store(grad_x, row + t0 + i, dx);
    }
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j <= kTaps; ++j) {
    float v = grad_taps[j];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) partials[warp][j] = v;
  }
  __syncthreads();
  if (threadIdx.x <= kTaps && (threadIdx.x >= first_tap || threadIdx.x == kTaps)) {
    float sum = 0.0f;
    for (int w = 0; w < kWarps; ++w) sum += partials[w][threadIdx.x];
    if (threadIdx.x == kTaps) {
      if (grad_bias) atomicAdd(&grad_bias[c], sum);
    } else {
      atomicAdd(&grad_weight[c * s.kernel_size + threadIdx.x - first_tap], sum);
    }
  }
}

template <class T>
__global__ void causal_conv1d_step_kernel(const CausalConv1dSizes s, T* conv_state, const T* x, const float* weight,
                                          const float* bias, T* y) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // b * channels + c
  if (row >= s.batch * s.channels) return;
  const int64_t c = row % s.channels, K = s.kernel_size;
  T* state = conv_state + row * (K - 1);
  const float* w = weight + c * K;
  float pre = (bias ? bias[c] : 0.0f) + w[K - 1] * load(x, row);
  for (int64_t k = 0; k < K - 1; ++k) pre += w[k] * load(state, k);
  for (int64_t k = 0; k + 1 < K - 1; ++k) state[k] = state[k + 1];
  state[K - 2] = x[row];
  store(y, row, s.silu ? pre * sigmoid(pre) : pre);
}

int blocks_for(int64_t work) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, 65535 * 32)));
}

template <class T>
void launch_forward(const CausalConv1dSizes& sizes, const void* x, const float* weight, const float* bias, void* y) {
  const int64_t work = sizes.batch * sizes.channels * ((sizes.length + kItems - 1) / kItems);
  causal_conv1d_forward_kernel<T><<<blocks_for(work), kThreads, 0, cuda::stream()>>>(sizes, static_cast<const T*>(x),
                                                                                     weight, bias, static_cast<T*>(y));
  STRATA_CUDA_CHECK_LAUNCH("causal_conv1d_forward_kernel");
}

template <class T>
void launch_backward(const CausalConv1dSizes& sizes, const void* x, const float* weight, const float* bias,
                     const void* grad_y, void* grad_x, float* grad_weight, float* grad_bias) {
  // Enough segments per channel for about 2048 blocks, but never more than its work.
  const int64_t blocks_of_work = (sizes.batch * ((sizes.length + kItems - 1) / kItems) + kThreads - 1) / kThreads;
  const int segments = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(blocks_of_work, (2048 + sizes.channels - 1) / sizes.channels)));
  causal_conv1d_backward_kernel<T><<<static_cast<int>(sizes.channels * segments), kThreads, 0, cuda::stream()>>>(
      sizes, segments, static_cast<const T*>(x), weight, bias, static_cast<const T*>(grad_y), static_cast<T*>(grad_x),
      grad_weight, grad_bias);
  STRATA_CUDA_CHECK_LAUNCH("causal_conv1d_backward_kernel");
}

template <class T>
void launch_step(const CausalConv1dSizes& sizes, void* conv_state, const void* x, const float* weight,
                 const float* bias, void* y) {
  causal_conv1d_step_kernel<T><<<blocks_for(sizes.batch * sizes.channels), kThreads, 0, cuda::stream()>>>(
      sizes, static_cast<T*>(conv_state), static_cast<const T*>(x), weight, bias, static_cast<T*>(y));
  STRATA_CUDA_CHECK_LAUNCH("causal_conv1d_step_kernel");
}

}  // namespace

bool causal_conv1d_forward_cuda(DType dtype, const CausalConv1dSizes& sizes, const void* x, const float* weight,
                                const float* bias, void* y) {
  switch (dtype) {
    case DType::Float32:
      launch_forward<float>(sizes, x, weight, bias, y);
      return true;
    case DType::BFloat16:
      launch_forward<__nv_bfloat16>(sizes, x, weight, bias, y);
      return true;
    default:
      return false;
  }
}

bool causal_conv1d_backward_cuda(DType dtype, const CausalConv1dSizes& sizes, const void* x, const float* weight,
                                 const float* bias, const void* grad_y, void* grad_x, float* grad_weight,
                                 float* grad_bias) {
  switch (dtype) {
    case DType::Float32:
      launch_backward<float>(sizes, x, weight, bias, grad_y, grad_x, grad_weight, grad_bias);
      return true;
    case DType::BFloat16:
      launch_backward<__nv_bfloat16>(sizes, x, weight, bias, grad_y, grad_x, grad_weight, grad_bias);
      return true;
    default:
      return false;
  }
}

bool causal_conv1d_step_cuda(DType dtype, const CausalConv1dSizes& sizes, void* conv_state, const void* x,
                             const float* weight, const float* bias, void* y) {
  switch (dtype) {
    case DType::Float32:
      launch_step<float>(sizes, conv_state, x, weight, bias, y);
      return true;
    case DType::BFloat16:
      launch_step<__nv_bfloat16>(sizes, conv_state, x, weight, bias, y);
      return true;
    default:
      return false;
  }
}

}  // namespace strata::kernels
