#include "kernels/ssd/ssd_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/common/softplus_cpu.h"

namespace strata::kernels {

namespace {

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

// Threads pay off from about 2^16 multiply-adds; below that their start-up costs more.
bool worth_threads(const SsdSizes& s) {
  return s.batch * s.length * s.heads * std::min(s.chunk_size, s.length) * (s.head_dim + s.d_state) >
         (int64_t{1} << 16);
}

// One (batch b, head h): index helpers that read like the equations.
template <class T>
struct Head {
  const SsdSizes& s;
  const SsdInputs<T, T>& in;
  int64_t b, h;

  int64_t group() const { return h / s.heads_per_group(); }
  int64_t token(int64_t t) const { return (b * s.length + t) * s.heads + h; }  // (b, t, h)
  const T* x(int64_t t) const { return in.x + token(t) * s.head_dim; }
  const T* B(int64_t t) const { return in.B + ((b * s.length + t) * s.groups + group()) * s.d_state; }
  const T* C(int64_t t) const { return in.C + ((b * s.length + t) * s.groups + group()) * s.d_state; }
  // dt[b,t,h] + dt_bias[h], before the softplus.
  T dt_raw(int64_t t) const { return in.dt[token(t)] + (in.dt_bias ? in.dt_bias[h] : T(0)); }
  T dt(int64_t t) const { return s.dt_softplus ? softplus(dt_raw(t)) : dt_raw(t); }
  T A() const { return in.A[h]; }
  T D() const { return in.D ? in.D[h] : T(0); }
  int64_t state_offset() const { return (b * s.heads + h) * s.head_dim * s.d_state; }
};

// The values of one chunk that the forward and backward passes share.
template <class T>
struct Chunk {
  int64_t start = 0, len = 0;
  std::vector<T> dt;  // dt_i after bias and softplus
  std::vector<T> u;   // u_i = sum_{k <= i} dt_k A
  std::vector<T> cb;  // (len, len): C_i . B_j, row i

  void fill(const Head<T>& head, int64_t c) {
    start = c * head.s.chunk_size;
    len = std::min(head.s.chunk_size, head.s.length - start);
    dt.resize(len);
    u.resize(len);
    cb.assign(len * len, T(0));
    T cumulative = 0;
    for (int64_t i = 0; i < len; ++i) {
      dt[i] = head.dt(start + i);
      cumulative += dt[i] * head.A();
      u[i] = cumulative;
      for (int64_t j = 0; j <= i; ++j) cb[i * len + j] = dot(head.C(start + i), head.B(start + j), head.s.d_state);
    }
  }
  // L[i, j] = exp(segsum) = exp(u_i - u_j), the decay from position j to i (j <= i).
  T decay(int64_t i, int64_t j) const { return std::exp(u[i] - u[j]); }
  T last() const { return u[len - 1]; }
};

// y of one chunk without the D x term, from the state entering it (P x N).
template <class T>
void chunk_output(const Head<T>& head, const Chunk<T>& chunk, const T* state_in, T* y_chunk) {
  const int64_t P = head.s.head_dim, N = head.s.d_state;
  for (int64_t i = 0; i < chunk.len; ++i) {
    const T* C = head.C(chunk.start + i);
    for (int64_t p = 0; p < P; ++p) {
      T y = std::exp(chunk.u[i]) * dot(state_in + p * N, C, N);
      for (int64_t j = 0; j <= i; ++j)
        y += chunk.decay(i, j) * chunk.cb[i * chunk.len + j] * chunk.dt[j] * head.x(chunk.start + j)[p];
      y_chunk[i * P + p] = y;
    }
  }
}

// S_out = exp(u_last) S_in + sum_j exp(u_last - u_j) dt_j x_j B_j^T; in and out may not alias.
template <class T>
void chunk_state_update(const Head<T>& head, const Chunk<T>& chunk, const T* state_in, T* state_out) {
  const int64_t P = head.s.head_dim, N = head.s.d_state;
  const T total_decay = std::exp(chunk.last());
  for (int64_t k = 0; k < P * N; ++k) state_out[k] = total_decay * state_in[k];
  for (int64_t j = 0; j < chunk.len; ++j) {
    const T weight = std::exp(chunk.last() - chunk.u[j]) * chunk.dt[j];
    const T *x = head.x(chunk.start + j), *B = head.B(chunk.start + j);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t n = 0; n < N; ++n) state_out[p * N + n] += weight * x[p] * B[n];
  }
}

template <class T>
std::vector<T> initial_state_of(const Head<T>& head) {
  const int64_t size = head.s.head_dim * head.s.d_state;
  std::vector<T> state(size, T(0));
  if (head.in.initial_state) std::copy_n(head.in.initial_state + head.state_offset(), size, state.begin());
  return state;
}

// Sums the per-head gradients of B or C (batch, length, heads, N) over the heads of
// each group into (batch, length, groups, N), in head order.
template <class T>
void sum_heads_of_groups(const SsdSizes& s, const std::vector<T>& per_head, T* out) {
  const int64_t N = s.d_state, per_group = s.heads_per_group();
#pragma omp parallel for schedule(static) if (worth_threads(s))
  for (int64_t bt = 0; bt < s.batch * s.length; ++bt)
    for (int64_t g = 0; g < s.groups; ++g)
      for (int64_t n = 0; n < N; ++n) {
        T sum = 0;
        for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) sum += per_head[(bt * s.heads + h) * N + n];
        out[(bt * s.groups + g) * N + n] = sum;
      }
}

}  // namespace

template <class T>
void ssd_forward_cpu(const SsdSizes& sizes, const SsdInputs<T, T>& inputs, T* y, T* final_state) {
  const int64_t P = sizes.head_dim, N = sizes.d_state;
#pragma omp parallel for schedule(static) if (worth_threads(sizes))
  for (int64_t bh = 0; bh < sizes.batch * sizes.heads; ++bh) {
    Head<T> head{sizes, inputs, bh / sizes.heads, bh % sizes.heads};
    const int64_t Q = std::min(sizes.chunk_size, sizes.length);
    std::vector<T> state = initial_state_of(head), next(P * N), y_chunk(Q * P);
    Chunk<T> chunk;
    for (int64_t c = 0; c < sizes.chunks(); ++c) {
      chunk.fill(head, c);
      chunk_output(head, chunk, state.data(), y_chunk.data());
      for (int64_t i = 0; i < chunk.len; ++i) {
        const T* x = head.x(chunk.start + i);
        T* out = y + head.token(chunk.start + i) * P;
        for (int64_t p = 0; p < P; ++p) out[p] = y_chunk[i * P + p] + head.D() * x[p];
      }
      chunk_state_update(head, chunk, state.data(), next.data());
      state.swap(next);
    }
    if (final_state) std::copy(state.begin(), state.end(), final_state + head.state_offset());
  }
}

template <class T>
void ssd_backward_cpu(const SsdSizes& sizes, const SsdInputs<T, T>& inputs, const T* grad_y, const T* grad_final_state,
                      const SsdGrads<T, T>& grads) {
  const int64_t P = sizes.head_dim, N = sizes.d_state, chunks = sizes.chunks();
  // Per-head sums, added up in a fixed order once every head is done.
  std::vector<T> dB_heads(sizes.batch * sizes.length * sizes.heads * N);
  std::vector<T> dC_heads(dB_heads.size());
  std::vector<T> dA_heads(sizes.batch * sizes.heads), dD_heads(dA_heads.size()), ddt_bias_heads(dA_heads.size());

#pragma omp parallel for schedule(static) if (worth_threads(sizes))
  for (int64_t bh = 0; bh < sizes.batch * sizes.heads; ++bh) {
    Head<T> head{sizes, inputs, bh / sizes.heads, bh % sizes.heads};
    const int64_t Q = std::min(sizes.chunk_size, sizes.length);
    // states[c] enters chunk c; states[chunks] is the final state.
    std::vector<T> states((chunks + 1) * P * N);
    std::vector<T> first = initial_state_of(head);
    std::copy(first.begin(), first.end(), states.begin());
    Chunk<T> chunk;
    for (int64_t c = 0; c < chunks; ++c) {
      chunk.fill(head, c);
      chunk_state_update(head, chunk, &states[c * P * N], &states[(c + 1) * P * N]);
    }

    std::vector<T> dS(P * N, T(0)), dS_out(P * N);
    if (grad_final_state) std::copy_n(grad_final_state + head.state_offset(), P * N, dS.begin());
    std::vector<T> y_chunk(Q * P), dx_tilde(Q * P), dy_x(Q * Q), du(Q);
    T dA = 0, dD = 0, ddt_bias = 0;
    for (int64_t c = chunks - 1; c >= 0; --c) {
      chunk.fill(head, c);
      const int64_t len = chunk.len, last = len - 1;
      const T* S_in = &states[c * P * N];
      const T* S_out = &states[(c + 1) * P * N];
      dS_out = dS;
      auto dy = [&](int64_t i) { return grad_y + head.token(chunk.start + i) * P; };
      auto x = [&](int64_t j) { return head.x(chunk.start + j); };
      for (int64_t i = 0; i < len; ++i)
        for (int64_t j = 0; j < len; ++j) dy_x[i * len + j] = dot(dy(i), x(j), P);

      // dx~_j and the row terms of du.
      chunk_output(head, chunk, S_in, y_chunk.data());
      for (int64_t j = 0; j < len; ++j) {
        const T inter = std::exp(chunk.last() - chunk.u[j]);
        const T* B = head.B(chunk.start + j);
        for (int64_t p = 0; p < P; ++p) {
          T sum = inter * dot(&dS_out[p * N], B, N);
          for (int64_t i = j; i < len; ++i) sum += chunk.decay(i, j) * chunk.cb[i * len + j] * dy(i)[p];
          dx_tilde[j * P + p] = sum;
        }
      }
      T state_term = 0;  // <dS_out, S_out>: how the decay of the whole chunk moves the state it passes on
      for (int64_t k = 0; k < P * N; ++k) state_term += dS_out[k] * S_out[k];
      for (int64_t i = 0; i < len; ++i) {
        const T q = dot(x(i), &dx_tilde[i * P], P);
        du[i] = dot(dy(i), &y_chunk[i * P], P) - chunk.dt[i] * q + (i == last ? state_term : T(0));
      }

      // da_k = sum_{i >= k} du_i, then dt through A, the softplus and the bias.
      T da = 0;
      for (int64_t k = last; k >= 0; --k) {
        da += du[k];
        const int64_t t = chunk.start + k;
        const T q = dot(x(k), &dx_tilde[k * P], P);
        T ddt = q + head.A() * da;
        dA += chunk.dt[k] * da;
        if (sizes.dt_softplus) ddt *= softplus_derivative(head.dt_raw(t));
        grads.ddt[head.token(t)] = ddt;
        ddt_bias += ddt;
        T* dx = grads.dx + head.token(t) * P;
        for (int64_t p = 0; p < P; ++p) dx[p] = chunk.dt[k] * dx_tilde[k * P + p] + head.D() * dy(k)[p];
        dD += dy_x[k * len + k];
      }

      // This head's share of dB and dC.
      for (int64_t j = 0; j < len; ++j) {
        T* dB = &dB_heads[head.token(chunk.start + j) * N];
        const T inter = std::exp(chunk.last() - chunk.u[j]) * chunk.dt[j];
        for (int64_t n = 0; n < N; ++n) {
          T sum = 0;
          for (int64_t p = 0; p < P; ++p) sum += dS_out[p * N + n] * x(j)[p];
          dB[n] = inter * sum;
        }
        for (int64_t i = j; i < len; ++i) {
          const T weight = chunk.decay(i, j) * dy_x[i * len + j] * chunk.dt[j];
          const T* C = head.C(chunk.start + i);
          for (int64_t n = 0; n < N; ++n) dB[n] += weight * C[n];
        }
      }
      for (int64_t i = 0; i < len; ++i) {
        T* dC = &dC_heads[head.token(chunk.start + i) * N];
        const T inter = std::exp(chunk.u[i]);
        for (int64_t n = 0; n < N; ++n) {
          T sum = 0;
          for (int64_t p = 0; p < P; ++p) sum += S_in[p * N + n] * dy(i)[p];
          dC[n] = inter * sum;
        }
        for (int64_t j = 0; j <= i; ++j) {
          const T weight = chunk.decay(i, j) * dy_x[i * len + j] * chunk.dt[j];
          const T* B = head.B(chunk.start + j);
          for (int64_t n = 0; n < N; ++n) dC[n] += weight * B[n];
        }
      }

      // dS_in = exp(u_last) dS_out + sum_i exp(u_i) dy_i C_i^T.
      const T total_decay = std::exp(chunk.last());
      for (int64_t k = 0; k < P * N; ++k) dS[k] = total_decay * dS_out[k];
      for (int64_t i = 0; i < len; ++i) {
        const T weight = std::exp(chunk.u[i]);
        const T* C = head.C(chunk.start + i);
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) dS[p * N + n] += weight * dy(i)[p] * C[n];
      }
    }
    if (grads.dinitial_state) std::copy(dS.begin(), dS.end(), grads.dinitial_state + head.state_offset());
    dA_heads[bh] = dA;
    dD_heads[bh] = dD;
    ddt_bias_heads[bh] = ddt_bias;
  }

  sum_heads_of_groups(sizes, dB_heads, grads.dB);
  sum_heads_of_groups(sizes, dC_heads, grads.dC);
  for (int64_t h = 0; h < sizes.heads; ++h) {
    T dA = 0, dD = 0, ddt_bias = 0;
    for (int64_t b = 0; b < sizes.batch; ++b) {
      dA += dA_heads[b * sizes.heads + h];
      dD += dD_heads[b * sizes.heads + h];
      ddt_bias += ddt_bias_heads[b * sizes.heads + h];
    }
    grads.dA[h] = dA;
    if (grads.dD) grads.dD[h] = dD;
    if (grads.ddt_bias) grads.ddt_bias[h] = ddt_bias;
  }
}

template void ssd_forward_cpu<float>(const SsdSizes&, const SsdInputs<float, float>&, float*, float*);
template void ssd_forward_cpu<double>(const SsdSizes&, const SsdInputs<double, double>&, double*, double*);
template void ssd_backward_cpu<float>(const SsdSizes&, const SsdInputs<float, float>&, const float*, const float*,
                                      const SsdGrads<float, float>&);
template void ssd_backward_cpu<double>(const SsdSizes&, const SsdInputs<double, double>&, const double*, const double*,
                                       const SsdGrads<double, double>&);

}  // namespace strata::kernels
