#include "kernels/selective_scan/selective_scan_cpu.h"

#include <cmath>
#include <vector>

#include "kernels/common/softplus_cpu.h"

namespace strata::kernels {

namespace {

// Threads pay off from about 2^16 state updates; below that their start-up costs more.
bool worth_threads(const SelectiveScanSizes& sizes) {
  return sizes.batch * sizes.d_inner * sizes.length * sizes.d_state > (int64_t{1} << 16);
}

// One (batch b, channel d) of the scan: index helpers that read like the equations.
template <class T>
struct Channel {
  const SelectiveScanSizes& sizes;
  const SelectiveScanInputs<T, T>& in;
  int64_t b, d;

  int64_t group() const { return d / sizes.channels_per_group(); }
  int64_t row() const { return (b * sizes.d_inner + d) * sizes.length; }         // (b, d, 0)
  int64_t state_row() const { return (b * sizes.d_inner + d) * sizes.d_state; }  // (b, d, 0) of a state
  int64_t position(int64_t step) const { return sizes.reversed(d) ? sizes.length - 1 - step : step; }

  T u(int64_t t) const { return in.u[row() + t]; }
  T z(int64_t t) const { return in.z[row() + t]; }
  // delta[b,d,t] + delta_bias[d], before the softplus.
  T delta_raw(int64_t t) const { return in.delta[row() + t] + (in.delta_bias ? in.delta_bias[d] : T(0)); }
  T delta(int64_t t) const { return sizes.delta_softplus ? softplus(delta_raw(t)) : delta_raw(t); }
  T A(int64_t n) const { return in.A[d * sizes.d_state + n]; }
  T B(int64_t n, int64_t t) const {
    return in.B[(b * sizes.groups + group()) * sizes.d_state * sizes.length + n * sizes.length + t];
  }
  T C(int64_t n, int64_t t) const {
    return in.C[(b * sizes.groups + group()) * sizes.d_state * sizes.length + n * sizes.length + t];
  }
  T D() const { return in.D ? in.D[d] : T(0); }
  T initial_state(int64_t n) const { return in.initial_state ? in.initial_state[state_row() + n] : T(0); }
};

// Per-channel sequences in step order, filled once and shared by the N states.
template <class T>
struct StepValues {
  std::vector<T> delta, u, dy;

  explicit StepValues(int64_t length) : delta(length), u(length), dy(length) {}

  // dy_s = dL/dy_s: the output gradient through the gate.
  void fill(const Channel<T>& ch, const T* grad_out) {
    for (int64_t s = 0; s < ch.sizes.length; ++s) {
      int64_t t = ch.position(s);
      delta[s] = ch.delta(t);
      u[s] = ch.u(t);
      T gate = ch.in.z ? ch.z(t) * sigmoid(ch.z(t)) : T(1);
      dy[s] = grad_out[ch.row() + t] * gate;
    }
  }
};

// States h[s] (after step s) and adjoints g[s] = dL/dh_s of one state n of a channel;
// grad_states (batch, d_inner, length, N) or null: the gradient reaching h_s
// directly from the per-step states output.
template <class T>
void state_and_adjoint(const Channel<T>& ch, int64_t n, const StepValues<T>& steps, T grad_final,
                       const T* grad_states, T* h, T* g) {
  const int64_t length = ch.sizes.length;
  T state = ch.initial_state(n);
  for (int64_t s = 0; s < length; ++s) {
    state = std::exp(steps.delta[s] * ch.A(n)) * state + steps.delta[s] * ch.B(n, ch.position(s)) * steps.u[s];
    h[s] = state;
  }
  T carry = grad_final;  // exp(delta_{s+1} A) g_{s+1}: what h_s passes on to later steps
  for (int64_t s = length - 1; s >= 0; --s) {
    const int64_t t = ch.position(s);
    g[s] = steps.dy[s] * ch.C(n, t) + carry;
    if (grad_states) g[s] += grad_states[(ch.row() + t) * ch.sizes.d_state + n];
    carry = std::exp(steps.delta[s] * ch.A(n)) * g[s];
  }
}

}  // namespace

template <class T>
void selective_scan_forward_cpu(const SelectiveScanSizes& sizes, const SelectiveScanInputs<T, T>& inputs,
                                const SelectiveScanOutputs<T, T>& outputs) {
  const int64_t N = sizes.d_state;
#pragma omp parallel if (worth_threads(sizes))
  {
    std::vector<T> h(N);
#pragma omp for schedule(static)
    for (int64_t bd = 0; bd < sizes.batch * sizes.d_inner; ++bd) {
      Channel<T> ch{sizes, inputs, bd / sizes.d_inner, bd % sizes.d_inner};
      for (int64_t n = 0; n < N; ++n) h[n] = ch.initial_state(n);
      for (int64_t s = 0; s < sizes.length; ++s) {
        int64_t t = ch.position(s);
        T delta = ch.delta(t), u = ch.u(t);
        T y = ch.D() * u;
        for (int64_t n = 0; n < N; ++n) {
          h[n] = std::exp(delta * ch.A(n)) * h[n] + delta * ch.B(n, t) * u;
          y += ch.C(n, t) * h[n];
        }
        if (outputs.states)
          for (int64_t n = 0; n < N; ++n) outputs.states[(ch.row() + t) * N + n] = h[n];
        if (inputs.z) y *= ch.z(t) * sigmoid(ch.z(t));
        outputs.out[ch.row() + t] = y;
      }
      if (outputs.final_state)
        for (int64_t n = 0; n < N; ++n) outputs.final_state[ch.state_row() + n] = h[n];
    }
  }
}

template <class T>
void selective_scan_backward_cpu(const SelectiveScanSizes& sizes, const SelectiveScanInputs<T, T>& inputs,
                                 const SelectiveScanOutputs<const T, const T>& output_grads,
                                 const SelectiveScanGrads<T, T>& grads) {
  const int64_t N = sizes.d_state, length = sizes.length;
  const T* grad_out = output_grads.out;
  auto grad_final = [&](const Channel<T>& ch, int64_t n) {
    return output_grads.final_state ? output_grads.final_state[ch.state_row() + n] : T(0);
  };

  // Pass 1, per channel d (the batch inside, so dA, dD and ddelta_bias of d are one
  // iteration's): everything but dB and dC.
#pragma omp parallel if (worth_threads(sizes))
  {
    StepValues<T> steps(length);
    std::vector<T> h(length), g(length), du(length), ddelta(length), y(length);
#pragma omp for schedule(static)
    for (int64_t d = 0; d < sizes.d_inner; ++d) {
      for (int64_t b = 0; b < sizes.batch; ++b) {
        Channel<T> ch{sizes, inputs, b, d};
        steps.fill(ch, grad_out);
        for (int64_t s = 0; s < length; ++s) {
          du[s] = steps.dy[s] * ch.D();
          ddelta[s] = 0;
          y[s] = ch.D() * steps.u[s];  // y before the gate, for dz
        }
        for (int64_t n = 0; n < N; ++n) {
          state_and_adjoint(ch, n, steps, grad_final(ch, n), output_grads.states, h.data(), g.data());
          for (int64_t s = 0; s < length; ++s) {
            int64_t t = ch.position(s);
            T decay = std::exp(steps.delta[s] * ch.A(n));
            T previous = s > 0 ? h[s - 1] : ch.initial_state(n);
            // h_s = decay h_{s-1} + delta B u, with decay = exp(delta A).
            du[s] += g[s] * steps.delta[s] * ch.B(n, t);
            ddelta[s] += g[s] * (ch.B(n, t) * steps.u[s] + ch.A(n) * decay * previous);
            grads.dA[d * N + n] += g[s] * steps.delta[s] * decay * previous;
            y[s] += ch.C(n, t) * h[s];
          }
          if (grads.dinitial_state)
            grads.dinitial_state[ch.state_row() + n] = std::exp(steps.delta[0] * ch.A(n)) * g[0];
        }
        for (int64_t s = 0; s < length; ++s) {
          int64_t t = ch.position(s);
          if (sizes.delta_softplus) ddelta[s] *= softplus_derivative(ch.delta_raw(t));
          grads.du[ch.row() + t] = du[s];
          grads.ddelta[ch.row() + t] = ddelta[s];
          if (grads.ddelta_bias) grads.ddelta_bias[d] += ddelta[s];
          if (grads.dD) grads.dD[d] += steps.dy[s] * steps.u[s];
          if (inputs.z) {
            // d silu(z)/dz = sigmoid(z) (1 + z (1 - sigmoid(z)))
            T sig = sigmoid(ch.z(t));
            grads.dz[ch.row() + t] = grad_out[ch.row() + t] * y[s] * sig * (T(1) + ch.z(t) * (T(1) - sig));
          }
        }
      }
    }
  }

  // Pass 2, per (batch, group, state): dB and dC sum over the channels of the group.
  const int64_t channels = sizes.channels_per_group();
#pragma omp parallel if (worth_threads(sizes))
  {
    StepValues<T> steps(length);
    std::vector<T> h(length), g(length);
#pragma omp for schedule(static)
    for (int64_t bgn = 0; bgn < sizes.batch * sizes.groups * N; ++bgn) {
      int64_t b = bgn / (sizes.groups * N), group = bgn / N % sizes.groups, n = bgn % N;
      T* dB = grads.dB + bgn * length;
      T* dC = grads.dC + bgn * length;
      for (int64_t d = group * channels; d < (group + 1) * channels; ++d) {
        Channel<T> ch{sizes, inputs, b, d};
        steps.fill(ch, grad_out);
        state_and_adjoint(ch, n, steps, grad_final(ch, n), output_grads.states, h.data(), g.data());
        for (int64_t s = 0; s < length; ++s) {
          int64_t t = ch.position(s);
          dB[t] += g[s] * steps.delta[s] * steps.u[s];
          dC[t] += steps.dy[s] * h[s];
        }
      }
    }
  }
}

template void selective_scan_forward_cpu<float>(const SelectiveScanSizes&, const SelectiveScanInputs<float, float>&,
                                                const SelectiveScanOutputs<float, float>&);
template void selective_scan_forward_cpu<double>(const SelectiveScanSizes&, const SelectiveScanInputs<double, double>&,
                                                 const SelectiveScanOutputs<double, double>&);
template void selective_scan_backward_cpu<float>(const SelectiveScanSizes&, const SelectiveScanInputs<float, float>&,
                                                 const SelectiveScanOutputs<const float, const float>&,
                                                 const SelectiveScanGrads<float, float>&);
template void selective_scan_backward_cpu<double>(const SelectiveScanSizes&, const SelectiveScanInputs<double, double>&,
                                                  const SelectiveScanOutputs<const double, const double>&,
                                                  const SelectiveScanGrads<double, double>&);

}  // namespace strata::kernels
