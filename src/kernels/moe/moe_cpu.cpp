#include "kernels/moe/moe_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace strata::kernels {

namespace {
// The ranking key of a value: NaN ranks as -inf.
template <class T>
T rank_key(T value) {
  return std::isnan(value) ? -std::numeric_limits<T>::infinity() : value;
}
}  // namespace

template <class T>
void topk_cpu(const T* values, int64_t rows, int64_t n, int64_t k, int32_t* indices) {
#pragma omp parallel if (rows * n > 65536)
  {
    std::vector<int32_t> order(static_cast<size_t>(n));
#pragma omp for
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = values + r * n;
      std::iota(order.begin(), order.end(), 0);
      // A strict total order: larger key first, then lower index.
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int32_t a, int32_t b) {
        T ka = rank_key(row[a]), kb = rank_key(row[b]);
        return ka > kb || (ka == kb && a < b);
      });
      std::copy(order.begin(), order.begin() + k, indices + r * k);
    }
  }
}

void moe_permutation_cpu(const int32_t* expert_of_assignment, int64_t assignments, int64_t experts, int64_t capacity,
                         int64_t* offsets, int64_t* kept_per_expert, int32_t* sorted_assignment,
                         int32_t* assignment_row, bool* dropped) {
  // Pass 1: each assignment's position within its expert, in assignment order.
  std::vector<int64_t> seen(static_cast<size_t>(experts), 0);
  std::vector<int64_t> position(static_cast<size_t>(assignments));
  for (int64_t a = 0; a < assignments; ++a) position[a] = seen[expert_of_assignment[a]]++;
  offsets[0] = 0;
  for (int64_t e = 0; e < experts; ++e) {
    kept_per_expert[e] = capacity > 0 ? std::min(seen[e], capacity) : seen[e];
    offsets[e + 1] = offsets[e] + kept_per_expert[e];
  }
  // Pass 2: rows for the kept assignments.
  for (int64_t a = 0; a < assignments; ++a) {
    int32_t e = expert_of_assignment[a];
    bool kept = capacity <= 0 || position[a] < capacity;
    dropped[a] = !kept;
    assignment_row[a] = kept ? static_cast<int32_t>(offsets[e] + position[a]) : -1;
    if (kept) sorted_assignment[assignment_row[a]] = static_cast<int32_t>(a);
  }
}

template <class T>
void moe_gather_rows_cpu(const T* source, const int32_t* sorted_assignment, const T* scale, int64_t rows,
                         int64_t top_k, int64_t dim, T* out) {
#pragma omp parallel for if (rows * dim > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t a = sorted_assignment[r];
    const T* from = source + (a / top_k) * dim;
    T factor = scale ? scale[a] : T(1);
    T* to = out + r * dim;
    for (int64_t c = 0; c < dim; ++c) to[c] = factor * from[c];
  }
}

template <class T>
void moe_combine_rows_cpu(const T* source, const int32_t* row_of, const T* weights, int64_t tokens, int64_t top_k,
                          int64_t dim, T* out) {
#pragma omp parallel for if (tokens * top_k * dim > 65536)
  for (int64_t t = 0; t < tokens; ++t) {
    T* to = out + t * dim;
    std::fill(to, to + dim, T(0));
    for (int64_t j = 0; j < top_k; ++j) {
      int64_t a = t * top_k + j;
      if (row_of[a] < 0) continue;
      const T* from = source + static_cast<int64_t>(row_of[a]) * dim;
      T weight = weights ? weights[a] : T(1);
      for (int64_t c = 0; c < dim; ++c) to[c] += weight * from[c];
    }
  }
}

template <class T>
void moe_combine_weight_grad_cpu(const T* grad_out, const T* source, const int32_t* row_of, int64_t tokens,
                                 int64_t top_k, int64_t dim, T* grad_weights) {
#pragma omp parallel for if (tokens * top_k * dim > 65536)
  for (int64_t a = 0; a < tokens * top_k; ++a) {
    if (row_of[a] < 0) {
      grad_weights[a] = T(0);
      continue;
    }
    const T* g = grad_out + (a / top_k) * dim;
    const T* s = source + static_cast<int64_t>(row_of[a]) * dim;
    T dot = 0;
    for (int64_t c = 0; c < dim; ++c) dot += g[c] * s[c];
    grad_weights[a] = dot;
  }
}

#define STRATA_MOE_CPU_INSTANTIATE(T)                                                                             \
  template void topk_cpu<T>(const T*, int64_t, int64_t, int64_t, int32_t*);                                      \
  template void moe_gather_rows_cpu<T>(const T*, const int32_t*, const T*, int64_t, int64_t, int64_t, T*);       \
  template void moe_combine_rows_cpu<T>(const T*, const int32_t*, const T*, int64_t, int64_t, int64_t, T*);      \
  template void moe_combine_weight_grad_cpu<T>(const T*, const T*, const int32_t*, int64_t, int64_t, int64_t, T*);
STRATA_MOE_CPU_INSTANTIATE(float)
STRATA_MOE_CPU_INSTANTIATE(double)
#undef STRATA_MOE_CPU_INSTANTIATE

}  // namespace strata::kernels
