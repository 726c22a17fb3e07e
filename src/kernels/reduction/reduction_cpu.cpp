// CPU reference of the reduction family: one loop per output over the reduced axis
// (stride `inner`), outputs spread over OpenMP threads; a single-output sum (the
// loss, a full mean) spreads its one long loop instead.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/reduction/reduction_cpu.h"

namespace strata::kernels {

namespace {

constexpr int64_t kParallelWork = 32768;

// Calls body(first_input_element, output_index) for each of the outer * inner outputs.
template <class Body>
void for_each_output(int64_t outer, int64_t reduce, int64_t inner, Body body) {
  const int64_t outputs = outer * inner;
#pragma omp parallel for schedule(static) if (outputs > 1 && outputs * reduce > kParallelWork)
  for (int64_t o = 0; o < outputs; ++o) body((o / inner) * reduce * inner + o % inner, o);
}

template <class T>
void sum(const T* in, T* out, int64_t outer, int64_t reduce, int64_t inner, double scale) {
  if (outer * inner == 1) {
    double total = 0.0;
#pragma omp parallel for reduction(+ : total) if (reduce > kParallelWork)
    for (int64_t r = 0; r < reduce; ++r) total += in[r];
    out[0] = static_cast<T>(scale * total);
    return;
  }
  for_each_output(outer, reduce, inner, [&](int64_t first, int64_t o) {
    double total = 0.0;
    for (int64_t r = 0; r < reduce; ++r) total += in[first + r * inner];
    out[o] = static_cast<T>(scale * total);
  });
}

template <class T>
void max(const T* in, T* values, int64_t* indices, int64_t outer, int64_t reduce, int64_t inner) {
  for_each_output(outer, reduce, inner, [&](int64_t first, int64_t o) {
    T best = in[first];
    int64_t best_index = 0;
    for (int64_t r = 1; r < reduce && !std::isnan(best); ++r) {
      T x = in[first + r * inner];
      if (x > best || std::isnan(x)) {
        best = x;
        best_index = r;
      }
    }
    values[o] = best;
    indices[o] = best_index;
  });
}

template <class T>
void logsumexp(const T* in, T* out, int64_t outer, int64_t reduce, int64_t inner) {
  for_each_output(outer, reduce, inner, [&](int64_t first, int64_t o) {
    T largest = -std::numeric_limits<T>::infinity();
    for (int64_t r = 0; r < reduce; ++r) largest = std::max(largest, in[first + r * inner]);
    // All -inf (or empty): the sum is 0 and the result -inf; +inf: the result is +inf.
    if (std::isinf(largest)) {
      out[o] = largest;
      return;
    }
    double total = 0.0;
    for (int64_t r = 0; r < reduce; ++r) total += std::exp(static_cast<double>(in[first + r * inner] - largest));
    out[o] = static_cast<T>(largest + std::log(total));
  });
}

template <class T>
void max_backward(const T* grad_out, const int64_t* indices, T* grad_in, int64_t outer, int64_t reduce,
                  int64_t inner) {
  for_each_output(outer, reduce, inner, [&](int64_t first, int64_t o) {
    for (int64_t r = 0; r < reduce; ++r) grad_in[first + r * inner] = T(0);
    grad_in[first + indices[o] * inner] = grad_out[o];
  });
}

}  // namespace

bool sum_cpu(DType dtype, const void* in, void* out, int64_t outer, int64_t reduce, int64_t inner, double scale) {
  switch (dtype) {
    case DType::Float32:
      sum(static_cast<const float*>(in), static_cast<float*>(out), outer, reduce, inner, scale);
      return true;
    case DType::Float64:
      sum(static_cast<const double*>(in), static_cast<double*>(out), outer, reduce, inner, scale);
      return true;
    default: return false;
  }
}

bool max_cpu(DType dtype, const void* in, void* values, int64_t* indices, int64_t outer, int64_t reduce,
             int64_t inner) {
  switch (dtype) {
    case DType::Float32:
      max(static_cast<const float*>(in), static_cast<float*>(values), indices, outer, reduce, inner);
      return true;
    case DType::Float64:
      max(static_cast<const double*>(in), static_cast<double*>(values), indices, outer, reduce, inner);
      return true;
    default: return false;
  }
}

bool logsumexp_cpu(DType dtype, const void* in, void* out, int64_t outer, int64_t reduce, int64_t inner) {
  switch (dtype) {
    case DType::Float32:
      logsumexp(static_cast<const float*>(in), static_cast<float*>(out), outer, reduce, inner);
      return true;
    case DType::Float64:
      logsumexp(static_cast<const double*>(in), static_cast<double*>(out), outer, reduce, inner);
      return true;
    default: return false;
  }
}

bool max_backward_cpu(DType dtype, const void* grad_out, const int64_t* indices, void* grad_in, int64_t outer,
                      int64_t reduce, int64_t inner) {
  switch (dtype) {
    case DType::Float32:
      max_backward(static_cast<const float*>(grad_out), indices, static_cast<float*>(grad_in), outer, reduce, inner);
      return true;
    case DType::Float64:
      max_backward(static_cast<const double*>(grad_out), indices, static_cast<double*>(grad_in), outer, reduce,
                   inner);
      return true;
    default: return false;
  }
}

}  // namespace strata::kernels
