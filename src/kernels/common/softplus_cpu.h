// The gate and step-size functions of the state-space CPU references
// (kernels/selective_scan, kernels/ssd): delta = softplus(raw + bias), and its
// derivative for the backward pass, in the kernel's element type.
#pragma once

#include <cmath>

namespace strata::kernels {

template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}
// log(1 + exp(x)); x itself above 20, where the two differ by less than exp(-20).
template <class T>
T softplus(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));
}
template <class T>
T softplus_derivative(T x) {
  return x > T(20) ? T(1) : sigmoid(x);
}

}  // namespace strata::kernels
