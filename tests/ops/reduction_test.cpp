#include "support/check.h"

using namespace strata;
using testing::check_gradients;
using testing::random;

namespace {
using testing::values;
using testing::leaf;
// 0, 1, 2, ... in float64.
Tensor iota(const Shape& shape) { return Tensor::arange(shape_numel(shape), DType::Float64).view(shape); }
}  // namespace

TEST_CASE("sum and mean over all elements and over dims") {
  Tensor a = iota({2, 3, 4});  // a[i][j][k] = 12 i + 4 j + k
  Tensor total = ops::sum(a);
  CHECK(total.shape() == Shape{});
  CHECK(total.item() == 276.0);
  CHECK(ops::mean(a).item() == 11.5);

  Tensor over_last = ops::sum(a, {-1});
  CHECK(over_last.shape() == Shape{2, 3});
  CHECK(values(over_last) == std::vector<double>{6, 22, 38, 54, 70, 86});
  Tensor over_first = ops::sum(a, {0}, true);
  CHECK(over_first.shape() == Shape{1, 3, 4});
  CHECK(values(over_first)[5] == 5.0 + 17.0);  // [.][1][1]
  // Dims that are not neighbours: [j] = sum over i, k of 12 i + 4 j + k = 8 * 4 j + 12 * 4 + 2 * 6.
  Tensor outer_dims = ops::sum(a, {2, 0});
  CHECK(outer_dims.shape() == Shape{3});
  CHECK(values(outer_dims) == std::vector<double>{60, 92, 124});
  CHECK(ops::sum(a, {0, 2}, true).shape() == Shape{1, 3, 1});
  CHECK(values(ops::mean(a, {0, 2})) == std::vector<double>{7.5, 11.5, 15.5});
  CHECK(values(ops::mean(a, {1}, true)) == values(ops::mul(ops::sum(a, {1}, true), 1.0 / 3)));
  // Every dim, or none (NumPy: a copy).
  CHECK(ops::sum(a, {0, 1, 2}).item() == 276.0);
  CHECK(values(ops::sum(a, {})) == values(a));
  // Size-1 dims, rank 0 and empty tensors.
  CHECK(values(ops::sum(iota({1, 3, 1}), {0, 2})) == std::vector<double>{0, 1, 2});
  CHECK(ops::sum(Tensor::scalar(2.5, DType::Float64)).item() == 2.5);
  CHECK(ops::sum(Tensor::zeros({0, 3}, DType::Float64)).item() == 0.0);
  CHECK(values(ops::sum(Tensor::zeros({0, 3}, DType::Float64), {0})) == std::vector<double>{0, 0, 0});
  CHECK(std::isnan(ops::mean(Tensor::zeros({0}, DType::Float64)).item()));
  // float32 accumulates in double on the CPU: 2^24 + 1 + 1 + ... loses no 1 (a float
  // accumulator would stay at 2^24, where the spacing of floats is 2).
  std::vector<float> ones(1001, 1.0f);
  ones[0] = 16777216.0f;
  CHECK(ops::sum(Tensor::from_vector<float>(ones, {1001})).item() == 16777216.0 + 1000.0);
}

TEST_CASE("reductions of non-contiguous inputs") {
  Tensor base = random({5, 7}, 3);
  Tensor transposed = base.as_strided({7, 5}, {1, 7}, 0);
  Tensor dense = transposed.contiguous();
  CHECK(values(ops::sum(transposed, {1})) == values(ops::sum(dense, {1})));
  CHECK(values(ops::max(transposed, 0)) == values(ops::max(dense, 0)));
  CHECK(values(ops::logsumexp(transposed, 1)) == values(ops::logsumexp(dense, 1)));
  // Large enough for the OpenMP paths, long single rows included.
  Tensor big = random({3000, 40}, 4);
  double expected = 0.0;
  for (double v : values(big)) expected += v;
  CHECK(ops::sum(big).item() == doctest::Approx(expected).epsilon(1e-12));
  CHECK(values(ops::sum(big, {0}))[7] == doctest::Approx(values(ops::sum(ops::transpose(big, 0, 1), {1}))[7]));
}

TEST_CASE("max returns the first maximum and routes the gradient to it") {
  Tensor a = Tensor::from_vector<double>({1, 3, 3, 2, 7, 5, 7, 0}, {2, 4});
  CHECK(values(ops::max(a, 1)) == std::vector<double>{3, 7});
  CHECK(values(ops::max(a, 0)) == std::vector<double>{7, 5, 7, 2});
  CHECK(ops::max(a, -1, true).shape() == Shape{2, 1});
  Tensor x = a.clone();
  x.set_requires_grad(true);
  autograd::backward(ops::sum(ops::max(x, 1)));
  CHECK(values(x.grad()) == std::vector<double>{0, 1, 0, 0, 1, 0, 0, 0});
  // NaN is the maximum, as in NumPy.
  Tensor with_nan = Tensor::from_vector<double>({1, NAN, 3}, {3});
  CHECK(std::isnan(ops::max(with_nan, 0).item()));
  CHECK(ops::max(Tensor::from_vector<double>({-INFINITY, -INFINITY}, {2}), 0).item() == -INFINITY);
}

TEST_CASE("logsumexp is stable for large and infinite values") {
  Tensor big = Tensor::from_vector<double>({1000, 1000, -1000, 1000}, {2, 2});
  CHECK(values(ops::logsumexp(big, 1)) == std::vector<double>{1000 + std::log(2.0), 1000.0});
  CHECK(ops::logsumexp(big, 1, true).shape() == Shape{2, 1});
  Tensor small = Tensor::from_vector<float>({-1000.0f, -1000.0f}, {2});
  CHECK(ops::logsumexp(small, 0).item() == doctest::Approx(-1000.0 + std::log(2.0)).epsilon(1e-7));
  Tensor infinite = Tensor::from_vector<double>({-INFINITY, -INFINITY, INFINITY, 1.0, -INFINITY, 2.0}, {3, 2});
  std::vector<double> lse = values(ops::logsumexp(infinite, 1));
  CHECK(lse[0] == -INFINITY);
  CHECK(lse[1] == INFINITY);
  CHECK(lse[2] == 2.0);
  Tensor x = random({3, 5}, 5);
  std::vector<double> by_hand = values(ops::log(ops::sum(ops::exp(x), {0})));
  std::vector<double> computed = values(ops::logsumexp(x, 0));
  for (size_t i = 0; i < by_hand.size(); ++i) CHECK(computed[i] == doctest::Approx(by_hand[i]).epsilon(1e-14));
}

TEST_CASE("max and logsumexp over several dims equal one dim at a time") {
  Tensor x = random({3, 4, 5}, 9);
  for (bool keepdim : {false, true}) {
    CAPTURE(keepdim);
    Tensor max_02 = ops::max(x, {0, 2}, keepdim), max_20 = ops::max(x, {2, 0}, keepdim);
    CHECK(max_02.shape() == (keepdim ? Shape{1, 4, 1} : Shape{4}));
    std::vector<double> one_at_a_time = values(ops::max(ops::max(x, 2), 0));
    CHECK(values(max_02) == one_at_a_time);
    CHECK(values(max_20) == one_at_a_time);
    Tensor lse = ops::logsumexp(x, {0, -1}, keepdim);
    CHECK(lse.shape() == (keepdim ? Shape{1, 4, 1} : Shape{4}));
    std::vector<double> by_hand = values(ops::log(ops::sum(ops::exp(x), {0, 2})));
    std::vector<double> computed = values(lse);
    for (size_t i = 0; i < by_hand.size(); ++i) CHECK(computed[i] == doctest::Approx(by_hand[i]).epsilon(1e-14));
  }
  CHECK(values(ops::logsumexp(x, std::vector<int>{0, 1, 2}))[0] ==
        doctest::Approx(std::log(values(ops::sum(ops::exp(x)))[0])).epsilon(1e-14));
  // No dims: nothing is reduced.
  CHECK(values(ops::max(x, std::vector<int>{})) == values(x));
  // Ties over several dims: the first maximum in row-major order of the reduced dims.
  Tensor tied = Tensor::ones({2, 2, 3}, DType::Float64);
  tied.set_requires_grad(true);
  autograd::backward(ops::sum(ops::max(tied, {0, 2})));
  CHECK(values(tied.grad()) == std::vector<double>{1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0});
}

TEST_CASE("reduction gradients") {
  Tensor a = leaf({2, 3, 4}, 11);
  auto check = [&](const testing::Function& f) { check_gradients(f, {a}); };
  check([](const std::vector<Tensor>& xs) { return ops::sum(xs[0]); });
  check([](const std::vector<Tensor>& xs) { return ops::mean(xs[0]); });
  for (bool keepdim : {false, true}) {
    CAPTURE(keepdim);
    check([&](const std::vector<Tensor>& xs) { return ops::sum(xs[0], {1}, keepdim); });
    check([&](const std::vector<Tensor>& xs) { return ops::sum(xs[0], {0, 2}, keepdim); });
    check([&](const std::vector<Tensor>& xs) { return ops::sum(xs[0], {-1, 0, 1}, keepdim); });
    check([&](const std::vector<Tensor>& xs) { return ops::mean(xs[0], {-1}, keepdim); });
    check([&](const std::vector<Tensor>& xs) { return ops::mean(xs[0], {0, 2}, keepdim); });
    for (int dim : {0, 1, -1}) {
      CAPTURE(dim);
      check([&](const std::vector<Tensor>& xs) { return ops::max(xs[0], dim, keepdim); });
      check([&](const std::vector<Tensor>& xs) { return ops::logsumexp(xs[0], dim, keepdim); });
    }
    check([&](const std::vector<Tensor>& xs) { return ops::max(xs[0], {0, 2}, keepdim); });
    check([&](const std::vector<Tensor>& xs) { return ops::logsumexp(xs[0], {2, 0}, keepdim); });
    check([&](const std::vector<Tensor>& xs) { return ops::logsumexp(ops::transpose(xs[0], 0, 1), {0, 1}, keepdim); });
  }
  // Size-1 dims, and a transposed view of a leaf.
  Tensor b = leaf({1, 5, 1}, 12);
  check_gradients([](const std::vector<Tensor>& xs) { return ops::sum(xs[0], {0, 1}); }, {b});
  check_gradients([](const std::vector<Tensor>& xs) { return ops::logsumexp(xs[0], 2); }, {b});
  check_gradients([](const std::vector<Tensor>& xs) { return ops::max(xs[0], 0); }, {b});
  Tensor c = leaf({4, 3}, 13);
  check_gradients([](const std::vector<Tensor>& xs) { return ops::mean(ops::transpose(xs[0], 0, 1), {1}); }, {c});
  check_gradients([](const std::vector<Tensor>& xs) { return ops::logsumexp(ops::transpose(xs[0], 0, 1), 0); }, {c});
  // Through broadcasting: the gradients of [3, 1] and [4] are sums over the broadcast dims.
  Tensor column = leaf({3, 1}, 14), row = leaf({4}, 15);
  check_gradients([](const std::vector<Tensor>& xs) { return ops::logsumexp(ops::mul(xs[0], xs[1]), 0); },
                  {column, row});
}

TEST_CASE("bad reduction arguments give clear errors") {
  Tensor a = Tensor::zeros({2, 3}, DType::Float64);
  CHECK_THROWS_WITH_AS(ops::sum(a, {2}), doctest::Contains("sum: dim 2 is out of range for a tensor of rank 2"), Error);
  CHECK_THROWS_WITH_AS(ops::mean(a, {1, -1}), doctest::Contains("mean: dim -1 is given twice for float64[2, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::max(a, -3), doctest::Contains("max: dim -3 is out of range"), Error);
  CHECK_THROWS_WITH_AS(ops::max(a, {0, 0}), doctest::Contains("max: dim 0 is given twice for float64[2, 3]"), Error);
  CHECK_THROWS_WITH_AS(ops::logsumexp(a, {0, 2}), doctest::Contains("logsumexp: dim 2 is out of range"), Error);
  CHECK_THROWS_WITH_AS(ops::max(Tensor::zeros({2, 0}, DType::Float64), 1),
                       doctest::Contains("max: dim 1 of float64[2, 0] on cpu is empty"), Error);
  CHECK_THROWS_WITH_AS(ops::sum(Tensor::zeros({2}, DType::Int64)),
                       doctest::Contains("sum: int64[2] on cpu is not supported"), Error);
  CHECK_THROWS_WITH_AS(ops::logsumexp(Tensor::zeros({2}, DType::UInt8), 0),
                       doctest::Contains("logsumexp: uint8[2] on cpu is not supported"), Error);
}
