#include "support/check.h"

using namespace strata;
using testing::check_gradients;
using testing::random;

namespace {
using testing::values;
using testing::leaf;
Tensor vec(const std::vector<double>& v, const Shape& shape) { return Tensor::from_vector<double>(v, shape); }
}  // namespace

TEST_CASE("binary ops broadcast like NumPy") {
  Tensor column = vec({1, 2, 3}, {3, 1});
  Tensor row = vec({10, 20, 30, 40}, {1, 4});
  Tensor sum = ops::add(column, row);
  CHECK(sum.shape() == Shape{3, 4});
  CHECK(values(sum) == std::vector<double>{11, 21, 31, 41, 12, 22, 32, 42, 13, 23, 33, 43});
  CHECK(values(ops::sub(row, column)) == std::vector<double>{9, 19, 29, 39, 8, 18, 28, 38, 7, 17, 27, 37});
  CHECK(values(ops::mul(column, row))[5] == 40.0);
  CHECK(values(ops::div(row, column))[11] == doctest::Approx(40.0 / 3));
  // A rank-0 operand broadcasts against anything, on either side.
  Tensor two = Tensor::scalar(2.0, DType::Float64);
  CHECK(values(ops::div(two, column)) == std::vector<double>{2.0, 1.0, 2.0 / 3});
  CHECK(ops::mul(two, two).shape() == Shape{});
  // float32 computes in float32.
  Tensor f = Tensor::from_vector<float>({1.5f, -2.0f}, {2});
  CHECK(ops::add(f, f).to_vector<float>() == std::vector<float>{3.0f, -4.0f});
  CHECK(ops::add(f, f).dtype() == DType::Float32);
}

TEST_CASE("scalar and unary ops compute the textbook values") {
  Tensor x = vec({-2.0, -0.5, 0.0, 1.0, 3.0}, {5});
  CHECK(values(ops::add(x, 1.5)) == std::vector<double>{-0.5, 1.0, 1.5, 2.5, 4.5});
  CHECK(values(ops::mul(x, -2.0)) == std::vector<double>{4.0, 1.0, -0.0, -2.0, -6.0});
  CHECK(values(ops::neg(x)) == std::vector<double>{2.0, 0.5, -0.0, -1.0, -3.0});
  CHECK(values(ops::relu(x)) == std::vector<double>{0.0, 0.0, 0.0, 1.0, 3.0});
  std::vector<double> sigmoid = values(ops::sigmoid(x)), silu = values(ops::silu(x)), gelu = values(ops::gelu(x));
  std::vector<double> tanh = values(ops::tanh(x)), exp = values(ops::exp(x));
  for (size_t i = 0; i < 5; ++i) {
    double v = values(x)[i];
    CHECK(sigmoid[i] == doctest::Approx(1.0 / (1.0 + std::exp(-v))).epsilon(1e-14));
    CHECK(silu[i] == doctest::Approx(v / (1.0 + std::exp(-v))).epsilon(1e-14));
    CHECK(gelu[i] == doctest::Approx(0.5 * v * std::erfc(-v / std::sqrt(2.0))).epsilon(1e-14));
    CHECK(tanh[i] == doctest::Approx(std::tanh(v)).epsilon(1e-14));
    CHECK(exp[i] == doctest::Approx(std::exp(v)).epsilon(1e-14));
  }
  CHECK(gelu[3] == doctest::Approx(0.8413447460685429).epsilon(1e-14));  // Phi(1)

  Tensor positive = vec({0.25, 1.0, 4.0}, {3});
  CHECK(values(ops::sqrt(positive)) == std::vector<double>{0.5, 1.0, 2.0});
  CHECK(values(ops::rsqrt(positive)) == std::vector<double>{2.0, 1.0, 0.5});
  CHECK(values(ops::log(positive))[2] == doctest::Approx(std::log(4.0)).epsilon(1e-15));
  CHECK(values(ops::pow(positive, 3.0)) == std::vector<double>{0.015625, 1.0, 64.0});
  CHECK(values(ops::pow(positive, -0.5)) == std::vector<double>{2.0, 1.0, 0.5});
}

TEST_CASE("softplus is linear above 20 and does not overflow") {
  Tensor x = vec({-800.0, -30.0, 0.0, 19.0, 25.0, 800.0}, {6});
  std::vector<double> y = values(ops::softplus(x));
  CHECK(y[0] == 0.0);
  CHECK(y[1] == doctest::Approx(std::exp(-30.0)).epsilon(1e-12));
  CHECK(y[2] == doctest::Approx(std::log(2.0)).epsilon(1e-15));
  CHECK(y[3] == doctest::Approx(19.0 + std::log1p(std::exp(-19.0))).epsilon(1e-15));
  CHECK(y[4] == 25.0);
  CHECK(y[5] == 800.0);
  Tensor xf = x.to(DType::Float32);
  CHECK(xf.dtype() == DType::Float32);
  CHECK(ops::softplus(xf).to_vector<float>()[5] == 800.0f);
  // The gradient is sigmoid(x) below the threshold and exactly 1 above it.
  Tensor leaf_x = x.clone();
  leaf_x.set_requires_grad(true);
  autograd::backward(ops::sum(ops::softplus(leaf_x)));
  std::vector<double> grad = values(leaf_x.grad());
  CHECK(grad[0] == 0.0);
  CHECK(grad[2] == 0.5);
  CHECK(grad[3] == doctest::Approx(1.0 / (1.0 + std::exp(-19.0))).epsilon(1e-15));
  CHECK(grad[4] == 1.0);
  CHECK(grad[5] == 1.0);
}

TEST_CASE("binary op gradients, broadcasting both ways") {
  using Binary = Tensor (*)(const Tensor&, const Tensor&);
  struct Case {
    const char* name;
    Binary op;
  };
  const Case cases[] = {{"add", ops::add}, {"sub", ops::sub}, {"mul", ops::mul}, {"div", ops::div}};
  const std::pair<Shape, Shape> shapes[] = {
      {{2, 3}, {2, 3}},       {{3, 1}, {1, 4}},       {{2, 3, 4}, {4}},    {{4}, {2, 3, 4}},
      {{1, 3, 1}, {2, 1, 5}}, {{}, {2, 3}},           {{2, 1}, {}},        {{2, 3, 4}, {2, 1, 4}},
  };
  uint64_t seed = 1;
  for (const Case& c : cases) {
    for (const auto& [shape_a, shape_b] : shapes) {
      std::string op_name = c.name, shapes_given = shape_str(shape_a) + " and " + shape_str(shape_b);
      CAPTURE(op_name);
      CAPTURE(shapes_given);
      // Divisors kept away from zero so the finite differences are well conditioned.
      Tensor a = leaf(shape_a, seed++);
      Tensor b = leaf(shape_b, seed++, 0.5, 2.0);
      check_gradients([&](const std::vector<Tensor>& xs) { return c.op(xs[0], xs[1]); }, {a, b});
    }
  }
  // The same tensor on both sides gets both contributions.
  Tensor x = leaf({3, 2}, 99, 0.5, 2.0);
  check_gradients([](const std::vector<Tensor>& xs) { return ops::mul(xs[0], xs[0]); }, {x});
  check_gradients([](const std::vector<Tensor>& xs) { return ops::div(xs[0], ops::add(xs[0], 1.0)); }, {x});
  // Only the operand that requires grad gets one.
  Tensor constant = random({3, 2}, 100);
  check_gradients([&](const std::vector<Tensor>& xs) { return ops::mul(constant, xs[0]); }, {x});
  CHECK_FALSE(constant.grad().defined());
}

TEST_CASE("unary op gradients") {
  using Unary = Tensor (*)(const Tensor&);
  struct Case {
    const char* name;
    Unary op;
    double low, high;
  };
  const Case cases[] = {
      {"neg", ops::neg, -2, 2},         {"exp", ops::exp, -2, 2},           {"log", ops::log, 0.2, 3},
      {"tanh", ops::tanh, -2, 2},       {"sigmoid", ops::sigmoid, -4, 4},   {"silu", ops::silu, -4, 4},
      {"gelu", ops::gelu, -4, 4},       {"softplus", ops::softplus, -4, 4}, {"relu", ops::relu, -2, 2},
      {"sqrt", ops::sqrt, 0.2, 3},      {"rsqrt", ops::rsqrt, 0.2, 3},
  };
  uint64_t seed = 10;
  for (const Case& c : cases) {
    std::string op_name = c.name;
    CAPTURE(op_name);
    Tensor x = leaf({2, 1, 5}, seed++, c.low, c.high);
    check_gradients([&](const std::vector<Tensor>& xs) { return c.op(xs[0]); }, {x});
  }
  // Softplus on both sides of its threshold.
  Tensor around_threshold = vec({18.0, 19.9, 20.1, 30.0}, {4});
  around_threshold.set_requires_grad(true);
  check_gradients([](const std::vector<Tensor>& xs) { return ops::softplus(xs[0]); }, {around_threshold});

  for (double exponent : {0.0, 1.0, 2.0, 3.0, 0.5, -1.5}) {
    CAPTURE(exponent);
    Tensor x = leaf({3, 4}, seed++, 0.3, 2.0);
    check_gradients([&](const std::vector<Tensor>& xs) { return ops::pow(xs[0], exponent); }, {x});
  }
  // A zero exponent has a zero gradient even at x = 0, where x^-1 is infinite.
  Tensor zero = vec({0.0, 1.0}, {2});
  zero.set_requires_grad(true);
  autograd::backward(ops::sum(ops::pow(zero, 0.0)));
  CHECK(values(zero.grad()) == std::vector<double>{0.0, 0.0});

  Tensor y = leaf({4, 3}, seed++);
  check_gradients([](const std::vector<Tensor>& xs) { return ops::add(xs[0], 2.5); }, {y});
  check_gradients([](const std::vector<Tensor>& xs) { return ops::mul(xs[0], -1.75); }, {y});
  // Ops chained on one input.
  check_gradients([](const std::vector<Tensor>& xs) { return ops::mul(ops::tanh(xs[0]), ops::sigmoid(xs[0])); }, {y});
}

TEST_CASE("non-contiguous inputs are read through their strides") {
  // Gradients through a transposed view of a leaf.
  Tensor a = leaf({4, 3}, 41);
  Tensor b = leaf({3, 4}, 42);
  check_gradients([](const std::vector<Tensor>& xs) { return ops::mul(ops::transpose(xs[0], 0, 1), xs[1]); }, {a, b});
  check_gradients([](const std::vector<Tensor>& xs) { return ops::gelu(ops::transpose(xs[0], 0, 1)); }, {a});

  // Values: a strided view (every other column of a transpose) against its dense copy.
  Tensor base = random({6, 5}, 43);
  Tensor view = base.as_strided({3, 5}, {1, 6}, 2);  // base^T rows 0..4, columns 2..4
  CHECK_FALSE(view.is_contiguous());
  Tensor dense = view.contiguous();
  Tensor other = random({5}, 44);
  CHECK(values(ops::add(view, other)) == values(ops::add(dense, other)));
  CHECK(values(ops::div(other, view)) == values(ops::div(other, dense)));
  CHECK(values(ops::exp(view)) == values(ops::exp(dense)));
  CHECK(values(ops::softplus(view)) == values(ops::softplus(dense)));
  // A stride-0 broadcast view as an input.
  Tensor row = random({5}, 45);
  Tensor expanded = row.as_strided({3, 5}, {0, 1}, 0);
  CHECK(values(ops::mul(expanded, dense)) == values(ops::mul(row, dense)));
  // Large enough to be split across OpenMP chunks, with a transposed operand.
  Tensor big = random({300, 200}, 46);
  Tensor big_t = big.as_strided({200, 300}, {1, 200}, 0);
  Tensor big_other = random({200, 1}, 47);
  CHECK(values(ops::sub(big_t, big_other)) == values(ops::sub(big_t.contiguous(), big_other)));
}

TEST_CASE("masked_fill fills where the mask is set and blocks the gradient there") {
  Tensor a = vec({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor mask = Tensor::from_vector<bool>({true, false, true}, {3});
  CHECK(values(ops::masked_fill(a, mask, -1.0)) == std::vector<double>{-1, 2, -1, -1, 5, -1});
  Tensor byte_mask = Tensor::from_vector<uint8_t>({0, 1}, {2, 1});
  CHECK(values(ops::masked_fill(a, byte_mask, 9.0)) == std::vector<double>{1, 2, 3, 9, 9, 9});
  std::vector<double> masked_inf = values(ops::masked_fill(a, ops::causal_mask(3).as_strided({2, 3}, {3, 1}, 0),
                                                          -INFINITY));
  CHECK(masked_inf[1] == -INFINITY);
  CHECK(masked_inf[3] == 4.0);

  Tensor x = leaf({2, 3}, 51);
  check_gradients([&](const std::vector<Tensor>& xs) { return ops::masked_fill(xs[0], mask, 0.5); }, {x});
  x.zero_grad();
  autograd::backward(ops::sum(ops::masked_fill(x, mask, 0.5)));
  CHECK(values(x.grad()) == std::vector<double>{0, 1, 0, 0, 1, 0});

  CHECK_THROWS_WITH_AS(ops::masked_fill(a, a, 0.0),
                       doctest::Contains("masked_fill: mask float64[2, 3] on cpu must be bool or uint8"), Error);
  Tensor wide_mask = Tensor::from_vector<bool>({true, false, true, false, true, false}, {2, 1, 3});
  CHECK_THROWS_WITH_AS(ops::masked_fill(a, wide_mask, 0.0),
                       doctest::Contains("mask bool[2, 1, 3] on cpu does not broadcast to the input float64[2, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::masked_fill(a, Tensor::from_vector<bool>({true, false}, {2}), 0.0),
                       doctest::Contains("shapes [2, 3] and [2] are not broadcastable"), Error);
}

TEST_CASE("bad inputs give errors that name the op and both shapes") {
  Tensor a = Tensor::zeros({2, 3}, DType::Float64);
  CHECK_THROWS_WITH_AS(ops::add(a, Tensor::zeros({4}, DType::Float64)),
                       doctest::Contains("add: shapes [2, 3] and [4] are not broadcastable"), Error);
  CHECK_THROWS_WITH_AS(ops::mul(Tensor::zeros({3, 2}, DType::Float64), a),
                       doctest::Contains("mul: shapes [3, 2] and [2, 3] are not broadcastable"), Error);
  CHECK_THROWS_WITH_AS(ops::sub(a, Tensor::zeros({2, 3}, DType::Float32)),
                       doctest::Contains("sub: dtypes differ: float64[2, 3] on cpu and float32[2, 3] on cpu"), Error);
  CHECK_THROWS_WITH_AS(ops::div(Tensor::zeros({2}, DType::Int64), Tensor::zeros({2}, DType::Int64)),
                       doctest::Contains("div: int64[2] on cpu is not supported"), Error);
  CHECK_THROWS_WITH_AS(ops::exp(Tensor::zeros({2}, DType::Int32)),
                       doctest::Contains("exp: int32[2] on cpu is not supported"), Error);
  CHECK_THROWS_WITH_AS(ops::add(Tensor::zeros({2}, DType::BFloat16), 1.0),
                       doctest::Contains("add: bfloat16[2] on cpu is not supported"), Error);
  CHECK_THROWS_WITH_AS(ops::add(a, Tensor()), doctest::Contains("add: second input is an undefined tensor"), Error);
}
