#include "strata/kernels/normalization.h"
#include "support/check.h"

using namespace strata;
using testing::check_gradients;
using testing::max_abs_difference;
using testing::random;

namespace {
using testing::values;
using testing::leaf;

// The formulas, row by row, over the last dim of a float64 tensor.
Tensor layer_norm_by_formula(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  std::vector<double> in = values(x), out(in.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, variance = 0;
    for (int64_t c = 0; c < dim; ++c) mean += in[r * dim + c] / dim;
    for (int64_t c = 0; c < dim; ++c) variance += (in[r * dim + c] - mean) * (in[r * dim + c] - mean) / dim;
    for (int64_t c = 0; c < dim; ++c) {
      out[r * dim + c] = (in[r * dim + c] - mean) / std::sqrt(variance + eps);
      if (weight.defined()) out[r * dim + c] *= values(weight)[c];
      if (bias.defined()) out[r * dim + c] += values(bias)[c];
    }
  }
  return Tensor::from_vector(out, x.shape());
}

Tensor rms_norm_by_formula(const Tensor& x, const Tensor& weight, double eps) {
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  std::vector<double> in = values(x), out(in.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean_square = 0;
    for (int64_t c = 0; c < dim; ++c) mean_square += in[r * dim + c] * in[r * dim + c] / dim;
    for (int64_t c = 0; c < dim; ++c)
      out[r * dim + c] = in[r * dim + c] / std::sqrt(mean_square + eps) * (weight.defined() ? values(weight)[c] : 1.0);
  }
  return Tensor::from_vector(out, x.shape());
}
}  // namespace

TEST_CASE("layer_norm of a known row") {
  // Row (1, 2, 3, 4): mean 2.5, biased variance 1.25.
  Tensor x = Tensor::from_vector<double>({1, 2, 3, 4}, {1, 4});
  Tensor weight = Tensor::from_vector<double>({1, 2, 1, 1}, {4});
  Tensor bias = Tensor::from_vector<double>({0, 0, 0, 10}, {4});
  const double rstd = 1 / std::sqrt(1.25 + 1e-5);
  std::vector<double> y = values(ops::layer_norm(x, weight, bias, 1e-5));
  CHECK(y[0] == doctest::Approx(-1.5 * rstd).epsilon(1e-14));
  CHECK(y[1] == doctest::Approx(2 * -0.5 * rstd).epsilon(1e-14));
  CHECK(y[3] == doctest::Approx(1.5 * rstd + 10).epsilon(1e-14));
  // rms_norm: mean square (1 + 4 + 9 + 16) / 4 = 7.5.
  std::vector<double> z = values(ops::rms_norm(x, weight, 1e-6));
  CHECK(z[1] == doctest::Approx(2 * 2 / std::sqrt(7.5 + 1e-6)).epsilon(1e-14));
}

TEST_CASE("layer_norm and rms_norm match the formulas, with and without affine parameters") {
  Tensor x = random({2, 3, 6}, 1, DType::Float64, -2.0, 3.0);
  Tensor weight = random({6}, 2), bias = random({6}, 3);
  CHECK(max_abs_difference(ops::layer_norm(x, weight, bias, 1e-5), layer_norm_by_formula(x, weight, bias, 1e-5)) <
        1e-13);
  CHECK(max_abs_difference(ops::layer_norm(x, weight, Tensor(), 1e-5),
                           layer_norm_by_formula(x, weight, Tensor(), 1e-5)) < 1e-13);
  CHECK(max_abs_difference(ops::layer_norm(x, Tensor(), bias, 1e-5), layer_norm_by_formula(x, Tensor(), bias, 1e-5)) <
        1e-13);
  Tensor plain = ops::layer_norm(x, Tensor(), Tensor(), 0.0);
  CHECK(max_abs_difference(plain, layer_norm_by_formula(x, Tensor(), Tensor(), 0.0)) < 1e-13);
  // Without affine parameters and eps, each row has mean 0 and variance 1.
  CHECK(testing::max_abs(ops::mean(plain, {-1})) < 1e-15);
  for (double v : values(ops::mean(ops::mul(plain, plain), {-1}))) CHECK(v == doctest::Approx(1.0).epsilon(1e-13));

  CHECK(max_abs_difference(ops::rms_norm(x, weight, 1e-6), rms_norm_by_formula(x, weight, 1e-6)) < 1e-13);
  CHECK(max_abs_difference(ops::rms_norm(x, Tensor(), 1e-6), rms_norm_by_formula(x, Tensor(), 1e-6)) < 1e-13);

  // float32 computes in float32 storage with double accumulation on the CPU.
  Tensor y32 = ops::layer_norm(x.to(DType::Float32), weight.to(DType::Float32), bias.to(DType::Float32), 1e-5);
  CHECK(y32.dtype() == DType::Float32);
  CHECK(max_abs_difference(y32, layer_norm_by_formula(x, weight, bias, 1e-5)) < 2e-6);
  CHECK(max_abs_difference(ops::rms_norm(x.to(DType::Float32), weight.to(DType::Float32), 1e-6),
                           rms_norm_by_formula(x, weight, 1e-6)) < 2e-6);
}

TEST_CASE("norms of odd shapes and non-contiguous inputs") {
  for (int64_t dim : {1, 3, 130}) {
    CAPTURE(dim);
    Tensor x = random({1, dim}, 40 + dim, DType::Float64, -2.0, 2.0);
    Tensor weight = random({dim}, 50 + dim), bias = random({dim}, 60 + dim);
    CHECK(max_abs_difference(ops::layer_norm(x, weight, bias, 1e-5), layer_norm_by_formula(x, weight, bias, 1e-5)) <
          1e-12);
    CHECK(max_abs_difference(ops::rms_norm(x, weight, 1e-6), rms_norm_by_formula(x, weight, 1e-6)) < 1e-12);
  }
  // A single element per row normalises to zero: the output is the bias.
  CHECK(values(ops::layer_norm(Tensor::from_vector<double>({5, -3}, {2, 1}), Tensor(),
                               Tensor::from_vector<double>({0.5}, {1}), 1e-5)) == std::vector<double>{0.5, 0.5});
  // A 1-D input is one row; an empty batch gives an empty output.
  Tensor line = random({7}, 8);
  CHECK(max_abs_difference(ops::layer_norm(line, Tensor(), Tensor(), 1e-5),
                           layer_norm_by_formula(line, Tensor(), Tensor(), 1e-5)) < 1e-13);
  CHECK(ops::rms_norm(Tensor::zeros({0, 4}, DType::Float64), Tensor(), 1e-6).shape() == Shape{0, 4});
  // A transposed view is normalised along its own last dim.
  Tensor base = random({5, 4}, 9);
  Tensor transposed = base.as_strided({4, 5}, {1, 4}, 0);
  CHECK(values(ops::layer_norm(transposed, Tensor(), Tensor(), 1e-5)) ==
        values(ops::layer_norm(transposed.contiguous(), Tensor(), Tensor(), 1e-5)));
}

TEST_CASE("the raw kernels return the statistics and the backward the formulas give") {
  Tensor x = random({3, 5}, 11, DType::Float64, -2.0, 2.0);
  Tensor weight = random({5}, 12), bias = random({5}, 13);
  kernels::NormForward forward = kernels::layer_norm_forward(x, weight, bias, 1e-5);
  CHECK(forward.mean.shape() == Shape{3});
  CHECK(forward.rstd.dtype() == DType::Float64);
  std::vector<double> rows = values(x);
  for (int r = 0; r < 3; ++r) {
    double mean = 0, variance = 0;
    for (int c = 0; c < 5; ++c) mean += rows[r * 5 + c] / 5;
    for (int c = 0; c < 5; ++c) variance += (rows[r * 5 + c] - mean) * (rows[r * 5 + c] - mean) / 5;
    CHECK(values(forward.mean)[r] == doctest::Approx(mean).epsilon(1e-14));
    CHECK(values(forward.rstd)[r] == doctest::Approx(1 / std::sqrt(variance + 1e-5)).epsilon(1e-14));
  }
  // float32 inputs keep float32 statistics; rms_norm has no mean.
  kernels::NormForward forward32 = kernels::rms_norm_forward(x.to(DType::Float32), Tensor(), 1e-6);
  CHECK(forward32.rstd.dtype() == DType::Float32);
  CHECK_FALSE(forward32.mean.defined());

  // dweight = sum over rows of dy * xhat, dbias = sum over rows of dy, dx as the
  // autograd engine gets it.
  Tensor dy = random({3, 5}, 14);
  kernels::NormGradients grads = kernels::layer_norm_backward(dy, x, weight, forward.mean, forward.rstd, true);
  Tensor xhat = layer_norm_by_formula(x, Tensor(), Tensor(), 1e-5);
  CHECK(max_abs_difference(grads.dweight, ops::sum(ops::mul(dy, xhat), {0})) < 1e-14);
  CHECK(max_abs_difference(grads.dbias, ops::sum(dy, {0})) < 1e-14);
  Tensor x_leaf = x.clone().set_requires_grad(true);
  autograd::backward(ops::layer_norm(x_leaf, weight, bias, 1e-5), dy);
  CHECK(max_abs_difference(grads.dx, x_leaf.grad()) < 1e-14);
  // No bias gradient unless asked for; no weight gradient without a weight.
  CHECK_FALSE(kernels::layer_norm_backward(dy, x, weight, forward.mean, forward.rstd, false).dbias.defined());
  kernels::NormForward rms = kernels::rms_norm_forward(x, Tensor(), 1e-6);
  CHECK_FALSE(kernels::rms_norm_backward(dy, x, Tensor(), rms.rstd).dweight.defined());
}

TEST_CASE("layer_norm gradients (finite differences)") {
  auto layer_norm = [](const std::vector<Tensor>& xs) { return ops::layer_norm(xs[0], xs[1], xs[2], 1e-5); };
  check_gradients(layer_norm, {leaf({4, 7}, 1), leaf({7}, 2), leaf({7}, 3)});
  check_gradients(layer_norm, {leaf({2, 3, 5}, 4), leaf({5}, 5), leaf({5}, 6)});
  for (int64_t dim : {1, 3, 130}) check_gradients(layer_norm, {leaf({1, dim}, 7), leaf({dim}, 8), leaf({dim}, 9)});
  // No affine parameters, weight only, bias only.
  check_gradients([](const std::vector<Tensor>& xs) { return ops::layer_norm(xs[0], Tensor(), Tensor(), 1e-5); },
                  {leaf({3, 6}, 10)});
  check_gradients([](const std::vector<Tensor>& xs) { return ops::layer_norm(xs[0], xs[1], Tensor(), 1e-5); },
                  {leaf({3, 6}, 11), leaf({6}, 12)});
  check_gradients([](const std::vector<Tensor>& xs) { return ops::layer_norm(xs[0], Tensor(), xs[1], 1e-5); },
                  {leaf({3, 6}, 13), leaf({6}, 14)});
  // Only the parameters require grad; and a transposed (non-contiguous) input.
  check_gradients(layer_norm, {random({3, 4}, 15), leaf({4}, 16), leaf({4}, 17)});
  check_gradients(
      [](const std::vector<Tensor>& xs) { return ops::layer_norm(ops::transpose(xs[0], 0, 1), xs[1], xs[2], 1e-5); },
      {leaf({5, 3}, 18), leaf({5}, 19), leaf({5}, 20)});
}

TEST_CASE("rms_norm gradients (finite differences)") {
  auto rms_norm = [](const std::vector<Tensor>& xs) { return ops::rms_norm(xs[0], xs[1], 1e-6); };
  check_gradients(rms_norm, {leaf({4, 7}, 1), leaf({7}, 2)});
  check_gradients(rms_norm, {leaf({2, 3, 5}, 3), leaf({5}, 4)});
  for (int64_t dim : {1, 3, 130}) check_gradients(rms_norm, {leaf({1, dim}, 5), leaf({dim}, 6)});
  check_gradients([](const std::vector<Tensor>& xs) { return ops::rms_norm(xs[0], Tensor(), 1e-6); },
                  {leaf({3, 6}, 7)});
  check_gradients(
      [](const std::vector<Tensor>& xs) { return ops::rms_norm(ops::transpose(xs[0], 0, 1), xs[1], 1e-6); },
      {leaf({5, 3}, 8), leaf({5}, 9)});
}

TEST_CASE("norm argument errors") {
  Tensor x = random({2, 5}, 1);
  CHECK_THROWS_WITH_AS(ops::layer_norm(x, random({4}, 2), Tensor()),
                       doctest::Contains("layer_norm: weight float64[4] on cpu does not match x float64[2, 5] on cpu: "
                                         "expected shape [5]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(x, Tensor(), random({5, 1}, 3)),
                       doctest::Contains("layer_norm: bias float64[5, 1] on cpu does not match x float64[2, 5] on cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::rms_norm(x, random({6}, 4)),
                       doctest::Contains("rms_norm: weight float64[6] on cpu does not match x float64[2, 5] on cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::rms_norm(x, random({5}, 4, DType::Float32)),
                       doctest::Contains("rms_norm: weight float32[5] on cpu must have the dtype and device of x"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(Tensor::zeros({2, 5}, DType::Int32), Tensor(), Tensor()),
                       doctest::Contains("layer_norm: int32[2, 5] on cpu is not supported"), Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(Tensor::scalar(1.0, DType::Float64), Tensor(), Tensor()),
                       doctest::Contains("has no last dim to normalise over"), Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(x, Tensor(), Tensor(), -1.0),
                       doctest::Contains("layer_norm: eps must be finite and >= 0, got -1"), Error);
  // The raw backward checks the saved statistics.
  kernels::NormForward forward = kernels::layer_norm_forward(x, Tensor(), Tensor(), 1e-5);
  CHECK_THROWS_WITH_AS(kernels::layer_norm_backward(x, x, Tensor(), forward.rstd.to(DType::Float32), forward.rstd,
                                                    false),
                       doctest::Contains("layer_norm: saved mean float32[2] on cpu does not match x float64[2, 5] on "
                                         "cpu: expected float64[2] on cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(kernels::rms_norm_backward(random({2, 4}, 5), x, Tensor(), forward.rstd),
                       doctest::Contains("rms_norm: gradient float64[2, 4] on cpu does not match x float64[2, 5]"),
                       Error);
}
