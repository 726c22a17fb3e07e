// causal_conv1d on the CPU: values against a hand-computed case and a naive loop
// written here, finite-difference gradients in double (with and without bias and
// SiLU, every kernel size 2..8, length shorter than the kernel), the rolling-state
// step against the full convolution, and the messages of bad arguments.
#include <omp.h>

#include <cmath>

#include "strata/ops/ssm.h"
#include "support/check.h"

using namespace strata;

namespace {

using testing::leaf;

// y[b,c,t] = act(bias[c] + sum_k weight[c,k] x[b,c,t-(K-1)+k]), in plain loops.
std::vector<double> naive_conv(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu) {
  const int64_t batch = x.shape()[0], channels = x.shape()[1], length = x.shape()[2], K = weight.shape()[1];
  std::vector<double> xs = x.to_vector<double>(), ws = weight.to_vector<double>(), y(xs.size());
  std::vector<double> bs = bias.defined() ? bias.to_vector<double>() : std::vector<double>(channels, 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t t = 0; t < length; ++t) {
        double pre = bs[c];
        for (int64_t k = 0; k < K; ++k) {
          int64_t source = t - (K - 1) + k;
          if (source >= 0) pre += ws[c * K + k] * xs[(b * channels + c) * length + source];
        }
        y[(b * channels + c) * length + t] = silu ? pre / (1.0 + std::exp(-pre)) : pre;
      }
  return y;
}

double max_difference(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  return worst;
}

}  // namespace

TEST_CASE("causal_conv1d computes a short case by hand") {
  // K = 3, one channel: y_t = 0.5 + 1 x_{t-2} + 2 x_{t-1} + 3 x_t with zeros before t = 0.
  Tensor x = Tensor::from_vector<double>({1.0, -1.0, 2.0, 0.5}, {1, 1, 4});
  Tensor weight = Tensor::from_vector<double>({1.0, 2.0, 3.0}, {1, 3});
  Tensor bias = Tensor::from_vector<double>({0.5}, {1});
  CHECK(ops::causal_conv1d(x, weight, bias).to_vector<double>() == std::vector<double>{3.5, -0.5, 5.5, 5.0});
  std::vector<double> gated = ops::causal_conv1d(x, weight, bias, true).to_vector<double>();
  CHECK(gated[1] == doctest::Approx(-0.5 / (1.0 + std::exp(0.5))).epsilon(1e-15));
}

TEST_CASE("causal_conv1d matches a naive loop for every kernel size") {
  for (int64_t K = 2; K <= 8; ++K) {
    for (bool silu : {false, true}) {
      CAPTURE(K);
      CAPTURE(silu);
      Tensor x = testing::random({2, 3, 11}, 10 + K), weight = testing::random({3, K}, 20 + K);
      Tensor bias = testing::random({3}, 30 + K);
      CHECK(max_difference(ops::causal_conv1d(x, weight, bias, silu).to_vector<double>(),
                           naive_conv(x, weight, bias, silu)) <= 1e-15);
      CHECK(max_difference(ops::causal_conv1d(x, weight, Tensor(), silu).to_vector<double>(),
                           naive_conv(x, weight, Tensor(), silu)) <= 1e-15);
      // float32 computes in float32.
      Tensor y32 = ops::causal_conv1d(x.to(DType::Float32), weight.to(DType::Float32), bias.to(DType::Float32), silu);
      CHECK(y32.dtype() == DType::Float32);
      CHECK(max_difference(y32.to_vector<double>(), naive_conv(x, weight, bias, silu)) <= 1e-5);
    }
  }
}

TEST_CASE("causal_conv1d gradients match finite differences") {
  auto check = [](const Shape& x_shape, int64_t K, bool with_bias, bool silu, uint64_t seed) {
    std::vector<Tensor> in{leaf(x_shape, seed), leaf({x_shape[1], K}, seed + 1)};
    if (with_bias) in.push_back(leaf({x_shape[1]}, seed + 2));
    testing::check_gradients(
        [&](const std::vector<Tensor>& xs) {
          return ops::causal_conv1d(xs[0], xs[1], with_bias ? xs[2] : Tensor(), silu);
        },
        in);
  };
  SUBCASE("bias and SiLU, K = 4") { check({2, 3, 9}, 4, true, true, 1); }
  SUBCASE("no bias, no SiLU, K = 2") { check({2, 3, 9}, 2, false, false, 2); }
  SUBCASE("SiLU without bias, K = 8") { check({1, 2, 12}, 8, false, true, 3); }
  SUBCASE("length shorter than the kernel") { check({2, 2, 3}, 6, true, true, 4); }
  SUBCASE("length 1, batch 1") { check({1, 4, 1}, 3, true, true, 5); }
  SUBCASE("every kernel size") {
    for (int64_t K = 2; K <= 8; ++K) {
      CAPTURE(K);
      check({2, 2, 10}, K, true, K % 2 == 0, 10 + K);
    }
  }
}

TEST_CASE("causal_conv1d on many channels runs threaded and gives the same bits on one thread") {
  Tensor x = leaf({2, 64, 200}, 80), weight = leaf({64, 4}, 81), bias = leaf({64}, 82);  // 2^16 + multiply-adds
  Tensor probe = testing::random({2, 64, 200}, 83);
  CHECK(max_difference(ops::causal_conv1d(x, weight, bias, true).to_vector<double>(),
                       naive_conv(x, weight, bias, true)) <= 1e-14);
  auto gradients = [&]() {
    for (Tensor t : {x, weight, bias}) t.zero_grad();
    autograd::backward(ops::sum(ops::mul(ops::causal_conv1d(x, weight, bias, true), probe)));
    return std::vector<std::vector<double>>{x.grad().to_vector<double>(), weight.grad().to_vector<double>(),
                                            bias.grad().to_vector<double>()};
  };
  std::vector<std::vector<double>> threaded = gradients();
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  std::vector<std::vector<double>> single = gradients();
  omp_set_num_threads(threads);
  CHECK(threaded == single);
}

TEST_CASE("causal_conv1d reads non-contiguous x and float32 weights under float64 x") {
  Tensor x = testing::random({2, 3, 7}, 40), weight = testing::random({3, 4}, 41), bias = testing::random({3}, 42);
  std::vector<double> expected = ops::causal_conv1d(x, weight, bias, true).to_vector<double>();
  Tensor strided = ops::transpose(ops::contiguous(ops::transpose(x, 1, 2)), 1, 2);  // (batch, length, channels) made
  CHECK_FALSE(strided.is_contiguous());
  CHECK(ops::causal_conv1d(strided, weight, bias, true).to_vector<double>() == expected);

  Tensor weight32 = weight.to(DType::Float32).set_requires_grad(true);
  Tensor bias32 = bias.to(DType::Float32).set_requires_grad(true);
  Tensor y = ops::causal_conv1d(x, weight32, bias32, true);
  CHECK(y.dtype() == DType::Float64);
  CHECK(max_difference(y.to_vector<double>(), expected) <= 1e-6);  // the weights were rounded to float32
  autograd::backward(ops::sum(y));
  CHECK(weight32.grad().dtype() == DType::Float32);
  CHECK(bias32.grad().dtype() == DType::Float32);
}

TEST_CASE("causal_conv1d_step reproduces the convolution position by position") {
  for (DType dtype : {DType::Float64, DType::Float32}) {
    for (int64_t K : {2, 4, 8}) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(K);
      const int64_t batch = 2, channels = 3, length = 10;
      Tensor x = testing::random({batch, channels, length}, 50 + K).to(dtype);
      Tensor weight = testing::random({channels, K}, 60 + K).to(dtype),
             bias = testing::random({channels}, 70).to(dtype);
      Tensor y = ops::causal_conv1d(x, weight, bias, true);

      autograd::NoGradGuard no_grad;
      Tensor conv_state = Tensor::zeros({batch, channels, K - 1}, dtype);
      const double tolerance = dtype == DType::Float64 ? 1e-15 : 1e-6;
      for (int64_t t = 0; t < length; ++t) {
        CAPTURE(t);
        Tensor x_t = ops::squeeze(ops::slice(x, 2, t, t + 1), 2);
        Tensor y_t = ops::causal_conv1d_step(conv_state, x_t, weight, bias, true);
        CHECK(y_t.shape() == Shape{batch, channels});
        CHECK(max_difference(y_t.to_vector<double>(),
                             ops::squeeze(ops::slice(y, 2, t, t + 1), 2).to_vector<double>()) <= tolerance);
      }
      // The state holds the last K - 1 inputs, oldest first.
      CHECK(conv_state.to_vector<double>() == ops::slice(x, 2, length - (K - 1), length).to_vector<double>());
    }
  }
}

TEST_CASE("causal_conv1d errors name the tensor and both shapes") {
  Tensor x = testing::random({2, 3, 5}, 1), weight = testing::random({3, 4}, 2);
  CHECK_THROWS_WITH_AS(ops::causal_conv1d(x, testing::random({4, 4}, 3)),
                       doctest::Contains("causal_conv1d: weight float64[4, 4] on cpu must have shape [3, 4] "
                                         "(channels, kernel_size)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::causal_conv1d(x, testing::random({3, 9}, 3)),
                       doctest::Contains("kernel_size 9 of weight float64[3, 9] on cpu is outside 2..8"), Error);
  CHECK_THROWS_WITH_AS(ops::causal_conv1d(x, testing::random({3, 1}, 3)), doctest::Contains("is outside 2..8"), Error);
  CHECK_THROWS_WITH_AS(ops::causal_conv1d(x, weight, testing::random({2}, 3)),
                       doctest::Contains("bias float64[2] on cpu must have shape [3] (channels)"), Error);
  CHECK_THROWS_WITH_AS(ops::causal_conv1d(ops::reshape(x, {6, 5}), weight),
                       doctest::Contains("x float64[6, 5] on cpu must be (batch, channels, length)"), Error);
  CHECK_THROWS_WITH_AS(ops::causal_conv1d(x.to(DType::Float32), weight),
                       doctest::Contains("weight float64[3, 4] on cpu must be float32"), Error);

  Tensor x_t = testing::random({2, 3}, 4);
  autograd::NoGradGuard no_grad;
  CHECK_THROWS_WITH_AS(ops::causal_conv1d_step(Tensor::zeros({2, 3, 4}, DType::Float64), x_t, weight),
                       doctest::Contains("causal_conv1d_step: conv_state float64[2, 3, 4] on cpu must have shape "
                                         "[2, 3, 3] (batch, channels, kernel_size - 1)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::causal_conv1d_step(Tensor::zeros({2, 3, 3}, DType::Float32), x_t, weight),
                       doctest::Contains("conv_state float32[2, 3, 3] on cpu must be a contiguous float64 tensor"),
                       Error);
}

TEST_CASE("causal_conv1d_step refuses to record a gradient") {
  Tensor weight = leaf({3, 4}, 1);
  CHECK_THROWS_WITH_AS(
      ops::causal_conv1d_step(Tensor::zeros({2, 3, 3}, DType::Float64), testing::random({2, 3}, 2), weight),
      doctest::Contains("causal_conv1d_step: is not differentiable"), Error);
}
