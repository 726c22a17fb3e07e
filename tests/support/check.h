// Test helpers: random inputs, finite-difference gradient checks in double, and
// CUDA-against-CPU comparisons. Every check prints the error it measured.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "strata/autograd/autograd.h"
#include "strata/core/rng.h"
#include "strata/ops/ops.h"

namespace strata::testing {

using Function = std::function<Tensor(const std::vector<Tensor>&)>;

// For GPU test files: call at the top of each test case; exits 77 (ctest skips)
// when no CUDA device is visible.
inline void require_cuda() {
  if (!cuda_available()) {
    MESSAGE("no CUDA device visible: skipping");
    std::exit(77);
  }
}

inline Tensor random(const Shape& shape, uint64_t seed, DType dtype = DType::Float64, double low = -1.0,
                     double high = 1.0) {
  Generator generator{seed, 0};
  return rand_uniform(shape, low, high, dtype, Device::cpu(), generator);
}

// The message of the strata::Error that body() throws, or "(no error)".
inline std::string message_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A float64 CPU leaf that requires grad, uniform in [low, high): an input of a
// gradient check.
inline Tensor leaf(const Shape& shape, uint64_t seed, double low = -1.0, double high = 1.0) {
  return random(shape, seed, DType::Float64, low, high).set_requires_grad(true);
}

// The elements of t as doubles, in row-major order.
inline std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }

// Copies of `inputs` in `dtype`, without autograd history.
inline std::vector<Tensor> detached(const std::vector<Tensor>& inputs, DType dtype) {
  std::vector<Tensor> out;
  for (const Tensor& t : inputs) out.push_back(t.detach().to(dtype));
  return out;
}

// Checks max |actual - expected| <= tolerance, element by element, and prints it when not.
inline void check_close(const std::vector<double>& actual, const std::vector<double>& expected, double tolerance) {
  REQUIRE(actual.size() == expected.size());
  double worst = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) worst = std::max(worst, std::fabs(actual[i] - expected[i]));
  CHECK_MESSAGE(worst <= tolerance, "max |difference| " << worst << " > " << tolerance);
}

inline double max_abs_difference(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    double d = std::fabs(x[i] - y[i]);
    if (std::isnan(d)) return INFINITY;
    worst = std::max(worst, d);
  }
  return worst;
}

inline double max_abs(const Tensor& a) {
  double worst = 0.0;
  for (double v : a.to_vector<double>()) worst = std::max(worst, std::fabs(v));
  return worst;
}

// Checks the gradients of f at `inputs` (float64 CPU leaves; those with
// requires_grad are checked) against central differences of sum(f(x) * w) for a
// fixed random w. Tolerance is on |analytic - numeric| / max(1, |numeric|).
inline void check_gradients(const Function& f, const std::vector<Tensor>& inputs, double eps = 1e-6,
                            double tolerance = 1e-6) {
  Tensor probe = f(inputs);
  Tensor weights = random(probe.shape(), 12345);
  auto objective = [&](const std::vector<Tensor>& xs) {
    autograd::NoGradGuard no_grad;
    return ops::sum(ops::mul(f(xs), weights)).item();
  };
  for (const Tensor& x : inputs) x.impl()->grad.reset();
  Tensor loss = ops::sum(ops::mul(f(inputs), weights));
  autograd::backward(loss);
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.requires_grad()) continue;
    REQUIRE(x.dtype() == DType::Float64);
    REQUIRE(x.is_contiguous());
    REQUIRE_MESSAGE(x.grad().defined(), "input " << k << " got no gradient");
    std::vector<double> analytic = x.grad().to_vector<double>();
    double* values = x.data<double>();
    double worst = 0.0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      double saved = values[i];
      values[i] = saved + eps;
      double plus = objective(inputs);
      values[i] = saved - eps;
      double minus = objective(inputs);
      values[i] = saved;
      double numeric = (plus - minus) / (2 * eps);
      worst = std::max(worst, std::fabs(analytic[i] - numeric) / std::max(1.0, std::fabs(numeric)));
    }
    CHECK_MESSAGE(worst <= tolerance, "input " << k << ": gradient error " << worst << " > " << tolerance);
  }
}

// Runs f and its backward on the CPU (float64 copies of `inputs`) and on CUDA
// (copies in `dtype`), and compares outputs and the gradients of every input that
// requires grad: |cuda - cpu| <= atol[i] + rtol * max|cpu| for result i (0: the
// output, then the gradients in input order). A per-result atol is for results
// that cancel to ~0 while their terms do not: their rounding error scales with
// the terms, which only the caller knows. Prints the errors.
inline void check_cuda_matches_cpu(const Function& f, const std::vector<Tensor>& inputs, DType dtype, double rtol,
                                   const std::vector<double>& atol) {
  auto run = [&](Device device, DType float_dtype) {
    std::vector<Tensor> xs;
    for (const Tensor& x : inputs) {
      Tensor y = is_floating(x.dtype()) ? x.to(float_dtype).to(device).clone() : x.to(device).clone();
      if (x.requires_grad()) y.set_requires_grad(true);
      xs.push_back(y);
    }
    Tensor out = f(xs);
    Tensor weights = random(out.shape(), 777).to(out.dtype()).to(device);
    autograd::backward(ops::sum(ops::mul(out, weights)));
    std::vector<Tensor> results{out.to(Device::cpu()).to(DType::Float64)};
    for (const Tensor& y : xs)
      if (y.requires_grad()) results.push_back(y.grad().to(Device::cpu()).to(DType::Float64));
    return results;
  };
  std::vector<Tensor> reference = run(Device::cpu(), DType::Float64);
  std::vector<Tensor> device_results = run(Device::cuda(0), dtype);
  REQUIRE_MESSAGE(atol.size() == reference.size(), atol.size() << " absolute tolerances for " << reference.size()
                                                                   << " results (the output and each gradient)");
  for (size_t i = 0; i < reference.size(); ++i) {
    double error = max_abs_difference(device_results[i], reference[i]);
    double bound = atol[i] + rtol * max_abs(reference[i]);
    MESSAGE(std::string(i == 0 ? "output" : "gradient") << " " << i << " (" << std::string(dtype_name(dtype))
                                                        << "): max |cuda - cpu| = " << error << ", bound " << bound);
    CHECK(error <= bound);
  }
}

// The same with one atol for every result.
inline void check_cuda_matches_cpu(const Function& f, const std::vector<Tensor>& inputs, DType dtype, double rtol,
                                   double atol = 0.0) {
  size_t results = 1;
  for (const Tensor& x : inputs) results += x.requires_grad() ? 1 : 0;
  check_cuda_matches_cpu(f, inputs, dtype, rtol, std::vector<double>(results, atol));
}

}  // namespace strata::testing
