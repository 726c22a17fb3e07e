#include "kernels/attention/attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace strata::kernels {

namespace {

// Threads pay off from about 2^20 multiply-adds; below that their start-up costs more.
bool worth_threads(const AttentionSizes& s) {
  return s.batch * s.heads * s.length_q * s.length_k * s.head_dim > (int64_t{1} << 20);
}

// Calls visit(begin, end) for each run [begin, end) of keys that query i of head h sees.
template <class Visit>
void for_each_key_run(const AttentionSizes& s, const AttentionBlocks& blocks, int64_t h, int64_t i, Visit&& visit) {
  const int64_t end_limit = s.causal ? std::min(s.length_k, i + s.causal_offset() + 1) : s.length_k;
  if (!blocks.sparse()) {
    if (end_limit > 0) visit(int64_t{0}, end_limit);
    return;
  }
  const int64_t row = blocks.row(h, i / blocks.block_size);
  for (int32_t n = blocks.row_offsets[row]; n < blocks.row_offsets[row + 1]; ++n) {
    int64_t begin = int64_t{blocks.column_indices[n]} * blocks.block_size;
    int64_t end = std::min(begin + blocks.block_size, end_limit);
    if (begin < end) visit(begin, end);
  }
}

// Calls visit(begin, end) for each run [begin, end) of queries of head h that see key j.
template <class Visit>
void for_each_query_run(const AttentionSizes& s, const AttentionBlocks& blocks, int64_t h, int64_t j, Visit&& visit) {
  const int64_t begin_limit = s.causal ? std::max<int64_t>(0, j - s.causal_offset()) : 0;
  if (!blocks.sparse()) {
    if (begin_limit < s.length_q) visit(begin_limit, s.length_q);
    return;
  }
  const int64_t column = blocks.column(h, j / blocks.block_size);
  for (int32_t n = blocks.column_offsets[column]; n < blocks.column_offsets[column + 1]; ++n) {
    int64_t begin = std::max(int64_t{blocks.row_indices[n]} * blocks.block_size, begin_limit);
    int64_t end = std::min((int64_t{blocks.row_indices[n]} + 1) * blocks.block_size, s.length_q);
    if (begin < end) visit(begin, end);
  }
}

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T total = 0;
  for (int64_t d = 0; d < n; ++d) total += a[d] * b[d];
  return total;
}

constexpr double kNegativeInfinity = -std::numeric_limits<double>::infinity();

// Index helpers for one (batch b, query head h): rows of q, k, v and the score
// (-inf for a key the dynamic key mask drops).
template <class T>
struct Head {
  const AttentionSizes& s;
  const AttentionInputs<T, T>& in;
  int64_t b, h;

  int64_t kv_head() const { return h / s.group(); }
  int64_t query_row(int64_t i) const { return ((b * s.heads + h) * s.length_q + i) * s.head_dim; }
  int64_t key_row(int64_t j) const { return ((b * s.kv_heads + kv_head()) * s.length_k + j) * s.head_dim; }
  int64_t stat(int64_t i) const { return (b * s.heads + h) * s.length_q + i; }  // lse, delta
  const T* q(int64_t i) const { return in.q + query_row(i); }
  const T* k(int64_t j) const { return in.k + key_row(j); }
  const T* v(int64_t j) const { return in.v + key_row(j); }
  T score(int64_t i, int64_t j) const {
    const AttentionKeyMask<T>& mask = in.key_mask;
    if (mask.active() && !mask.kept(s, b, kv_head(), i, j)) return static_cast<T>(kNegativeInfinity);
    T value = static_cast<T>(s.scale) * dot(q(i), k(j), s.head_dim);
    if (in.bias.data) value += in.bias.at(b, h, i, j);
    if (mask.active()) value += mask.bias[mask.at(s, b, kv_head(), j)];
    return value;
  }
};

}  // namespace

template <class T>
void attention_forward_cpu(const AttentionSizes& s, const AttentionBlocks& blocks, const AttentionInputs<T, T>& in,
                           T* out, T* lse) {
  const int64_t rows = s.batch * s.heads * s.length_q, D = s.head_dim;
#pragma omp parallel if (worth_threads(s))
  {
    std::vector<T> scores(s.length_k), accumulator(D);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = r % s.length_q, h = (r / s.length_q) % s.heads, b = r / (s.length_q * s.heads);
      const Head<T> head{s, in, b, h};
      const T sink = in.sinks ? in.sinks[h] : static_cast<T>(kNegativeInfinity);
      T maximum = sink;
      for_each_key_run(s, blocks, h, i, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          scores[j] = head.score(i, j);
          maximum = std::max(maximum, scores[j]);
        }
      });
      T* out_row = out + head.query_row(i);
      if (maximum == static_cast<T>(kNegativeInfinity)) {  // no visible key with a finite score, and no sink
        std::fill(out_row, out_row + D, T(0));
        lse[r] = maximum;
        continue;
      }
      T total = in.sinks ? std::exp(sink - maximum) : T(0);
      std::fill(accumulator.begin(), accumulator.end(), T(0));
      for_each_key_run(s, blocks, h, i, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          T p = std::exp(scores[j] - maximum);
          total += p;
          const T* v = head.v(j);
          for (int64_t d = 0; d < D; ++d) accumulator[d] += p * v[d];
        }
      });
      for (int64_t d = 0; d < D; ++d) out_row[d] = accumulator[d] / total;
      lse[r] = maximum + std::log(total);
    }
  }
}

template <class T>
void attention_backward_cpu(const AttentionSizes& s, const AttentionBlocks& blocks, const AttentionInputs<T, T>& in,
                            const T* out, const T* lse, const T* grad_out, const T* grad_lse, T* delta,
                            const AttentionGrads<T, T>& grads) {
  const int64_t rows = s.batch * s.heads * s.length_q, D = s.head_dim;
  const T scale = static_cast<T>(s.scale), no_key = static_cast<T>(kNegativeInfinity);
  const bool threads = worth_threads(s);

#pragma omp parallel for schedule(static) if (threads)
  for (int64_t r = 0; r < rows; ++r) delta[r] = dot(grad_out + r * D, out + r * D, D) - (grad_lse ? grad_lse[r] : T(0));

    // dq and dbias, one query row per iteration.
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r % s.length_q, h = (r / s.length_q) % s.heads, b = r / (s.length_q * s.heads);
    const Head<T> head{s, in, b, h};
    T* dq = grads.dq + head.query_row(i);
    std::fill(dq, dq + D, T(0));
    if (lse[r] == no_key) continue;
    const T* dout = grad_out + head.query_row(i);
    for_each_key_run(s, blocks, h, i, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        T p = std::exp(head.score(i, j) - lse[r]);
        T ds = p * (dot(dout, head.v(j), D) - delta[r]);
        const T* k = head.k(j);
        for (int64_t d = 0; d < D; ++d) dq[d] += ds * k[d];
        if (grads.dbias) grads.dbias[r * s.length_k + j] = ds;
      }
    });
    for (int64_t d = 0; d < D; ++d) dq[d] *= scale;
  }

  // dk and dv, one key of one kv head per iteration, summed over the heads of its group.
  const int64_t key_rows = s.batch * s.kv_heads * s.length_k;
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t r = 0; r < key_rows; ++r) {
    const int64_t j = r % s.length_k, kv_head = (r / s.length_k) % s.kv_heads, b = r / (s.length_k * s.kv_heads);
    T* dk = grads.dk + r * D;
    T* dv = grads.dv + r * D;
    std::fill(dk, dk + D, T(0));
    std::fill(dv, dv + D, T(0));
    T key_bias_grad = 0;  // the key mask's bias is shared by every query of every head of the group
    for (int64_t h = kv_head * s.group(); h < (kv_head + 1) * s.group(); ++h) {
      const Head<T> head{s, in, b, h};
      for_each_query_run(s, blocks, h, j, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const T row_lse = lse[head.stat(i)];
          if (row_lse == no_key) continue;
          const T* dout = grad_out + head.query_row(i);
          T p = std::exp(head.score(i, j) - row_lse);
          T ds = p * (dot(dout, head.v(j), D) - delta[head.stat(i)]);
          key_bias_grad += ds;
          const T* q = head.q(i);
          for (int64_t d = 0; d < D; ++d) {
            dv[d] += p * dout[d];
            dk[d] += ds * q[d];
          }
        }
      });
    }
    for (int64_t d = 0; d < D; ++d) dk[d] *= scale;
    if (grads.dkey_bias) grads.dkey_bias[r] = key_bias_grad;
  }
}

template <class T>
void attention_probabilities_cpu(const AttentionSizes& s, const AttentionBlocks& blocks,
                                 const AttentionInputs<T, T>& in, const T* lse, T* probabilities) {
  const int64_t rows = s.batch * s.heads * s.length_q;
  const T no_key = static_cast<T>(kNegativeInfinity);
#pragma omp parallel for schedule(static) if (worth_threads(s))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r % s.length_q, h = (r / s.length_q) % s.heads, b = r / (s.length_q * s.heads);
    const Head<T> head{s, in, b, h};
    T* row = probabilities + r * s.length_k;
    std::fill(row, row + s.length_k, T(0));
    if (lse[r] == no_key) continue;
    for_each_key_run(s, blocks, h, i, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) row[j] = std::exp(head.score(i, j) - lse[r]);
    });
  }
}

#define STRATA_INSTANTIATE_ATTENTION_CPU(T)                                                                            \
  template void attention_forward_cpu<T>(const AttentionSizes&, const AttentionBlocks&, const AttentionInputs<T, T>&,  \
                                         T*, T*);                                                                      \
  template void attention_backward_cpu<T>(const AttentionSizes&, const AttentionBlocks&, const AttentionInputs<T, T>&, \
                                          const T*, const T*, const T*, const T*, T*, const AttentionGrads<T, T>&);    \
  template void attention_probabilities_cpu<T>(const AttentionSizes&, const AttentionBlocks&,                          \
                                               const AttentionInputs<T, T>&, const T*, T*);
STRATA_INSTANTIATE_ATTENTION_CPU(float)
STRATA_INSTANTIATE_ATTENTION_CPU(double)
#undef STRATA_INSTANTIATE_ATTENTION_CPU

}  // namespace strata::kernels
