// Optimizers against hand-written scalar references, optimizer state round trips,
// and global gradient clipping.
#include <cmath>

#include "support/check.h"
#include "strata/kernels/adamw.h"
#include "strata/optim/grad_clip.h"
#include "strata/optim/optimizer.h"

using namespace strata;

namespace {

// Two parameters, one that decays ("w") and one that does not ("b"), with values
// and per-step gradients chosen by hand.
struct Problem {
  std::vector<double> w0{0.5, -1.5, 2.0}, b0{0.25, -0.75};
  // grads[step][element]
  std::vector<std::vector<double>> w_grads{{0.1, -0.2, 0.3}, {-0.5, 0.05, 0.0}, {1.0, 2.0, -3.0}};
  std::vector<std::vector<double>> b_grads{{0.4, -0.1}, {0.2, 0.3}, {-0.6, 0.01}};
  std::vector<double> lrs{0.1, 0.1, 0.05};  // the third step after set_lr

  std::vector<nn::NamedParameter> parameters(DType dtype) const {
    Tensor w = Tensor::from_vector(w0, {3}).to(dtype), b = Tensor::from_vector(b0, {2}).to(dtype);
    w.set_requires_grad(true);
    b.set_requires_grad(true);
    return {{"layer.w", w, true}, {"layer.b", b, false}};
  }
};

void set_grads(const std::vector<nn::NamedParameter>& params, const Problem& problem, int step) {
  Tensor w = params[0].tensor, b = params[1].tensor;
  w.set_grad(Tensor::from_vector(problem.w_grads[step], {3}).to(w.dtype()));
  b.set_grad(Tensor::from_vector(problem.b_grads[step], {2}).to(b.dtype()));
}

// Textbook AdamW on one scalar: decoupled decay, then Adam with bias-corrected moments.
std::vector<double> adamw_reference(std::vector<double> p, const std::vector<std::vector<double>>& grads,
                                    const std::vector<double>& lrs, double beta1, double beta2, double eps,
                                    double weight_decay) {
  std::vector<double> m(p.size(), 0.0), v(p.size(), 0.0);
  for (int t = 1; t <= static_cast<int>(grads.size()); ++t) {
    double lr = lrs[t - 1];
    for (size_t i = 0; i < p.size(); ++i) {
      double g = grads[t - 1][i];
      p[i] -= lr * weight_decay * p[i];
      m[i] = beta1 * m[i] + (1 - beta1) * g;
      v[i] = beta2 * v[i] + (1 - beta2) * g * g;
      double m_hat = m[i] / (1 - std::pow(beta1, t)), v_hat = v[i] / (1 - std::pow(beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
  return p;
}

// Textbook SGD with momentum (buffer starts at zero), L2 decay and optional Nesterov.
std::vector<double> sgd_reference(std::vector<double> p, const std::vector<std::vector<double>>& grads,
                                  const std::vector<double>& lrs, double momentum, double weight_decay,
                                  bool nesterov) {
  std::vector<double> buffer(p.size(), 0.0);
  for (size_t t = 0; t < grads.size(); ++t) {
    for (size_t i = 0; i < p.size(); ++i) {
      double g = grads[t][i] + weight_decay * p[i];
      buffer[i] = momentum * buffer[i] + g;
      double direction = nesterov ? g + momentum * buffer[i] : buffer[i];
      p[i] -= lrs[t] * direction;
    }
  }
  return p;
}

void check_close(const Tensor& actual, const std::vector<double>& expected, double tolerance) {
  std::vector<double> values = actual.to_vector<double>();
  REQUIRE(values.size() == expected.size());
  for (size_t i = 0; i < values.size(); ++i)
    CHECK_MESSAGE(std::fabs(values[i] - expected[i]) <= tolerance * std::max(1.0, std::fabs(expected[i])),
                  "element " << i << ": " << values[i] << " vs " << expected[i]);
}

template <class Optimizer>
void run_three_steps(Optimizer& optimizer, const std::vector<nn::NamedParameter>& params, const Problem& problem) {
  for (int step = 0; step < 3; ++step) {
    set_grads(params, problem, step);
    optimizer.set_lr(problem.lrs[step]);
    optimizer.step();
  }
}

}  // namespace

TEST_CASE("AdamW matches the scalar reference, decaying only the decay group") {
  Problem problem;
  // float64: the same formula up to rounding; float32: rounding of ~10 operations on
  // values of order 1 (float32 epsilon 1.2e-7).
  for (auto [dtype, tolerance] : {std::pair{DType::Float64, 1e-13}, std::pair{DType::Float32, 2e-6}}) {
    CAPTURE(dtype_name(dtype));
    auto params = problem.parameters(dtype);
    optim::AdamW adamw(params, {.lr = 0.1, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-3, .weight_decay = 0.2});
    run_three_steps(adamw, params, problem);
    CHECK(adamw.steps_taken() == 3);
    check_close(params[0].tensor, adamw_reference(problem.w0, problem.w_grads, problem.lrs, 0.8, 0.95, 1e-3, 0.2),
                tolerance);
    check_close(params[1].tensor, adamw_reference(problem.b0, problem.b_grads, problem.lrs, 0.8, 0.95, 1e-3, 0.0),
                tolerance);
  }
}

TEST_CASE("AdamW leaves a parameter without a gradient, and its state, untouched") {
  Problem problem;
  auto params = problem.parameters(DType::Float64);
  optim::AdamW adamw(params, {.lr = 0.1});
  params[0].tensor.set_grad(Tensor::ones({3}, DType::Float64));
  adamw.step();
  CHECK(params[1].tensor.to_vector<double>() == problem.b0);
  optim::NamedState state = adamw.state();
  CHECK(state[2].first == "layer.b.exp_avg");
  CHECK(testing::max_abs(state[2].second) == 0.0);
  CHECK(testing::max_abs(state[0].second) > 0.0);
}

TEST_CASE("SGD matches the scalar reference with and without Nesterov momentum") {
  Problem problem;
  for (bool nesterov : {false, true}) {
    CAPTURE(nesterov);
    auto params = problem.parameters(DType::Float64);
    optim::SGD sgd(params, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.05, .nesterov = nesterov});
    run_three_steps(sgd, params, problem);
    check_close(params[0].tensor, sgd_reference(problem.w0, problem.w_grads, problem.lrs, 0.9, 0.05, nesterov), 1e-13);
    check_close(params[1].tensor, sgd_reference(problem.b0, problem.b_grads, problem.lrs, 0.9, 0.0, nesterov), 1e-13);
  }
  auto params = problem.parameters(DType::Float64);
  optim::SGD plain(params, {.lr = 0.5});
  CHECK(plain.state().size() == 1);  // only "step": no momentum buffer without momentum
  run_three_steps(plain, params, problem);
  check_close(params[0].tensor, sgd_reference(problem.w0, problem.w_grads, problem.lrs, 0.0, 0.0, false), 1e-13);
}

TEST_CASE("optimizer state round trips: a restored optimizer continues exactly") {
  Problem problem;
  auto original = problem.parameters(DType::Float32);
  optim::AdamW first(original, {.lr = 0.1, .weight_decay = 0.1});
  for (int step = 0; step < 2; ++step) {
    set_grads(original, problem, step);
    first.step();
  }
  optim::NamedState saved;
  for (const auto& [name, tensor] : first.state()) saved.emplace_back(name, tensor.clone());
  std::vector<std::string> names;
  for (const auto& [name, tensor] : saved) names.push_back(name);
  CHECK(names == std::vector<std::string>{"layer.w.exp_avg", "layer.w.exp_avg_sq", "layer.b.exp_avg",
                                          "layer.b.exp_avg_sq", "step"});
  CHECK(saved.back().second.item() == 2.0);

  // A second optimizer over copies of the current weights, restored from the state.
  std::vector<nn::NamedParameter> copies;
  for (const auto& p : original) {
    Tensor copy = p.tensor.clone();
    copy.set_requires_grad(true);
    copies.push_back({p.name, copy, p.weight_decay});
  }
  optim::AdamW second(copies, {.lr = 0.1, .weight_decay = 0.1});
  second.load_state(saved);
  CHECK(second.steps_taken() == 2);
  set_grads(original, problem, 2);
  set_grads(copies, problem, 2);
  first.step();
  second.step();
  for (size_t i = 0; i < original.size(); ++i)
    CHECK(original[i].tensor.to_vector<float>() == copies[i].tensor.to_vector<float>());
}

TEST_CASE("load_state lists every difference and changes nothing") {
  Problem problem;
  auto params = problem.parameters(DType::Float32);
  optim::AdamW adamw(params);
  optim::NamedState state = adamw.state();
  state[0].second = Tensor::zeros({4});                                // layer.w.exp_avg: wrong shape
  state.erase(state.begin() + 3);                                      // layer.b.exp_avg_sq: missing
  state.emplace_back("layer.c.exp_avg", Tensor::zeros({1}));           // unexpected
  CHECK_THROWS_WITH_AS(adamw.load_state(state),
                       doctest::Contains("missing layer.b.exp_avg_sq; unexpected layer.c.exp_avg; wrong shape "
                                         "layer.w.exp_avg (expected [3], got [4])"),
                       Error);
  CHECK(adamw.steps_taken() == 0);
}

TEST_CASE("optimizers reject bad settings and bad parameters") {
  Problem problem;
  auto params = problem.parameters(DType::Float32);
  CHECK_THROWS_WITH_AS(optim::AdamW(params, {.beta1 = 1.0}), doctest::Contains("betas (1, 0.999) must lie in [0, 1)"),
                       Error);
  CHECK_THROWS_WITH_AS(optim::SGD(params, {.nesterov = true}), doctest::Contains("Nesterov momentum needs"), Error);
  auto twice = params;
  twice.push_back(params[0]);
  CHECK_THROWS_WITH_AS(optim::AdamW(twice, {}), doctest::Contains("parameter 'layer.w' is given twice"), Error);
  optim::AdamW adamw(params);
  CHECK_THROWS_WITH_AS(adamw.set_lr(-1.0), doctest::Contains("learning rate -1"), Error);
  params[0].tensor.set_grad(Tensor::zeros({2}));
  CHECK_THROWS_WITH_AS(adamw.step(), doctest::Contains("gradient float32[2] on cpu of parameter 'layer.w'"), Error);

  Tensor p = Tensor::zeros({2});
  kernels::AdamWTensors bf16_grad{p, Tensor::zeros({2}, DType::BFloat16), Tensor::zeros({2}), Tensor::zeros({2})};
  CHECK_THROWS_WITH_AS(kernels::adamw_step({bf16_grad}, {}), doctest::Contains("is not supported (CPU: float32"),
                       Error);
}

TEST_CASE("clip_grad_norm returns the global norm and scales only above max_norm") {
  auto leaf = [](std::vector<double> grad) {
    Tensor p = Tensor::zeros({static_cast<int64_t>(grad.size())}, DType::Float64);
    p.set_requires_grad(true);
    p.set_grad(Tensor::from_vector(grad, {static_cast<int64_t>(grad.size())}));
    return p;
  };
  Tensor a = leaf({3.0, 4.0}), b = leaf({12.0});
  Tensor no_grad = Tensor::zeros({5}, DType::Float64);
  no_grad.set_requires_grad(true);
  // sqrt(9 + 16 + 144) = 13: below 26, nothing changes.
  CHECK(optim::clip_grad_norm({a, b, no_grad}, 26.0) == doctest::Approx(13.0).epsilon(1e-15));
  CHECK(a.grad().to_vector<double>() == std::vector<double>{3.0, 4.0});
  // Above 6.5, every gradient is scaled by 6.5 / 13 (up to the 1e-6 guard).
  CHECK(optim::clip_grad_norm({a, b}, 6.5) == doctest::Approx(13.0).epsilon(1e-15));
  double factor = 6.5 / (13.0 + 1e-6);
  check_close(a.grad(), {3.0 * factor, 4.0 * factor}, 1e-15);
  check_close(b.grad(), {12.0 * factor}, 1e-15);
  CHECK(optim::clip_grad_norm({a, b}, INFINITY) == doctest::Approx(6.5).epsilon(1e-6));

  Tensor f = Tensor::zeros({2});
  f.set_requires_grad(true);
  f.set_grad(Tensor::from_vector<float>({3.0f, 4.0f}, {2}));
  CHECK(optim::clip_grad_norm({f}, 1.0) == doctest::Approx(5.0));
  check_close(f.grad(), {0.6, 0.8}, 1e-6);

  // A non-finite norm is reported and the gradients stay as they were.
  Tensor bad = leaf({1.0, NAN});
  CHECK(std::isnan(optim::clip_grad_norm({a, bad}, 1.0)));
  check_close(a.grad(), {3.0 * factor, 4.0 * factor}, 1e-15);
  Tensor huge = leaf({INFINITY});
  CHECK(std::isinf(optim::clip_grad_norm({huge, b}, 1.0)));
  CHECK(optim::clip_grad_norm({no_grad}, 1.0) == 0.0);
  CHECK_THROWS_WITH_AS(optim::clip_grad_norm({a}, 0.0), doctest::Contains("max_norm 0 must be positive"), Error);
}
