#include "kernels/causal_conv1d/causal_conv1d_cpu.h"

#include <cmath>
#include <vector>

namespace strata::kernels {

namespace {

template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// Threads pay off from about 2^16 multiply-adds; below that their start-up costs more.
bool worth_threads(const CausalConv1dSizes& sizes) {
  return sizes.batch * sizes.channels * sizes.length * sizes.kernel_size > (int64_t{1} << 16);
}

// pre[t] of one (batch, channel) row: bias + sum_k weight[k] x[t-(K-1)+k].
template <class T>
T pre_activation(const T* x_row, const T* weight_row, T bias, int64_t kernel_size, int64_t t) {
  T pre = bias;
  for (int64_t k = 0; k < kernel_size; ++k) {
    int64_t source = t - (kernel_size - 1) + k;
    if (source >= 0) pre += weight_row[k] * x_row[source];
  }
  return pre;
}

}  // namespace

template <class T>
void causal_conv1d_forward_cpu(const CausalConv1dSizes& sizes, const T* x, const T* weight, const T* bias, T* y) {
  const int64_t K = sizes.kernel_size;
#pragma omp parallel for schedule(static) if (worth_threads(sizes))
  for (int64_t bc = 0; bc < sizes.batch * sizes.channels; ++bc) {
    const int64_t c = bc % sizes.channels;
    const T* x_row = x + bc * sizes.length;
    for (int64_t t = 0; t < sizes.length; ++t) {
      T pre = pre_activation(x_row, weight + c * K, bias ? bias[c] : T(0), K, t);
      y[bc * sizes.length + t] = sizes.silu ? pre * sigmoid(pre) : pre;
    }
  }
}

template <class T>
void causal_conv1d_backward_cpu(const CausalConv1dSizes& sizes, const T* x, const T* weight, const T* bias,
                                const T* grad_y, T* grad_x, T* grad_weight, T* grad_bias) {
  const int64_t K = sizes.kernel_size, length = sizes.length;
#pragma omp parallel if (worth_threads(sizes))
  {
    std::vector<T> grad_pre(length);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < sizes.channels; ++c) {
      const T* weight_row = weight + c * K;
      for (int64_t b = 0; b < sizes.batch; ++b) {
        const int64_t row = (b * sizes.channels + c) * length;
        const T* x_row = x + row;
        for (int64_t t = 0; t < length; ++t) {
          T dy = grad_y[row + t];
          if (sizes.silu) {
            // silu'(p) = sigmoid(p) (1 + p (1 - sigmoid(p)))
            T pre = pre_activation(x_row, weight_row, bias ? bias[c] : T(0), K, t);
            T s = sigmoid(pre);
            dy *= s * (T(1) + pre * (T(1) - s));
          }
          grad_pre[t] = dy;
        }
        for (int64_t t = 0; t < length; ++t) {
          T dx = 0;
          for (int64_t k = 0; k < K; ++k) {
            int64_t target = t + (K - 1) - k;
            if (target < length) dx += weight_row[k] * grad_pre[target];
          }
          grad_x[row + t] = dx;
          for (int64_t k = 0; k < K; ++k) {
            int64_t source = t - (K - 1) + k;
            if (source >= 0) grad_weight[c * K + k] += grad_pre[t] * x_row[source];
          }
          if (grad_bias) grad_bias[c] += grad_pre[t];
        }
      }
    }
  }
}

template <class T>
void causal_conv1d_step_cpu(const CausalConv1dSizes& sizes, T* conv_state, const T* x, const T* weight, const T* bias,
                            T* y) {
  const int64_t K = sizes.kernel_size;
#pragma omp parallel for schedule(static) if (worth_threads(sizes))
  for (int64_t bc = 0; bc < sizes.batch * sizes.channels; ++bc) {
    const int64_t c = bc % sizes.channels;
    T* state = conv_state + bc * (K - 1);
    T pre = (bias ? bias[c] : T(0)) + weight[c * K + K - 1] * x[bc];
    for (int64_t k = 0; k < K - 1; ++k) pre += weight[c * K + k] * state[k];
    for (int64_t k = 0; k + 1 < K - 1; ++k) state[k] = state[k + 1];
    state[K - 2] = x[bc];
    y[bc] = sizes.silu ? pre * sigmoid(pre) : pre;
  }
}

template void causal_conv1d_forward_cpu<float>(const CausalConv1dSizes&, const float*, const float*, const float*,
                                               float*);
template void causal_conv1d_forward_cpu<double>(const CausalConv1dSizes&, const double*, const double*, const double*,
                                                double*);
template void causal_conv1d_backward_cpu<float>(const CausalConv1dSizes&, const float*, const float*, const float*,
                                                const float*, float*, float*, float*);
template void causal_conv1d_backward_cpu<double>(const CausalConv1dSizes&, const double*, const double*, const double*,
                                                 const double*, double*, double*, double*);
template void causal_conv1d_step_cpu<float>(const CausalConv1dSizes&, float*, const float*, const float*, const float*,
                                            float*);
template void causal_conv1d_step_cpu<double>(const CausalConv1dSizes&, double*, const double*, const double*,
                                             const double*, double*);

}  // namespace strata::kernels
