#include "support/check.h"

using namespace strata;
using testing::check_gradients;
using testing::max_abs_difference;
using testing::random;

namespace {
using testing::values;
Tensor leaf(const Shape& shape, uint64_t seed, double low = -2.0, double high = 2.0) {
  return testing::leaf(shape, seed, low, high);
}
// The textbook formulas, through the reduction ops (another code path).
Tensor softmax_by_formula(const Tensor& x, int dim) { return ops::exp(ops::sub(x, ops::logsumexp(x, dim, true))); }
Tensor log_softmax_by_formula(const Tensor& x, int dim) { return ops::sub(x, ops::logsumexp(x, dim, true)); }
}  // namespace

TEST_CASE("softmax and log_softmax of known rows") {
  // Row 0: exp(0, 1, 2) / (1 + e + e^2). Row 1: equal logits give equal shares.
  Tensor x = Tensor::from_vector<double>({0, 1, 2, 5, 5, 5}, {2, 3});
  const double total = 1 + std::exp(1.0) + std::exp(2.0);
  std::vector<double> y = values(ops::softmax(x));
  CHECK(y[0] == doctest::Approx(1 / total).epsilon(1e-14));
  CHECK(y[1] == doctest::Approx(std::exp(1.0) / total).epsilon(1e-14));
  CHECK(y[2] == doctest::Approx(std::exp(2.0) / total).epsilon(1e-14));
  for (int k = 3; k < 6; ++k) CHECK(y[k] == doctest::Approx(1.0 / 3).epsilon(1e-14));
  std::vector<double> log_y = values(ops::log_softmax(x));
  CHECK(log_y[2] == doctest::Approx(2 - std::log(total)).epsilon(1e-14));
  CHECK(log_y[4] == doctest::Approx(-std::log(3.0)).epsilon(1e-14));
}

TEST_CASE("softmax matches the formula over every dim, in float64 and float32") {
  Tensor x = random({3, 4, 5}, 11, DType::Float64, -3.0, 3.0);
  for (int dim : {0, 1, 2, -1, -2}) {
    CAPTURE(dim);
    CHECK(max_abs_difference(ops::softmax(x, dim), softmax_by_formula(x, dim)) < 1e-14);
    CHECK(max_abs_difference(ops::log_softmax(x, dim), log_softmax_by_formula(x, dim)) < 1e-13);
    Tensor y32 = ops::softmax(x.to(DType::Float32), dim);
    CHECK(y32.dtype() == DType::Float32);
    CHECK(max_abs_difference(y32, softmax_by_formula(x, dim)) < 1e-6);
    CHECK(max_abs_difference(ops::log_softmax(x.to(DType::Float32), dim), log_softmax_by_formula(x, dim)) < 2e-6);
  }
  // The probabilities along the dim add up to one.
  std::vector<double> column_sums = values(ops::sum(ops::softmax(x, 1), {1}));
  for (double s : column_sums) CHECK(s == doctest::Approx(1.0).epsilon(1e-14));
}

TEST_CASE("softmax is stable for large logits and partly masked rows") {
  // exp(1000) overflows; subtracting the row maximum keeps it finite.
  Tensor big = Tensor::from_vector<double>({1000, 1001, 1002}, {1, 3});
  const double total = std::exp(-2.0) + std::exp(-1.0) + 1.0;
  std::vector<double> y = values(ops::softmax(big));
  CHECK(y[0] == doctest::Approx(std::exp(-2.0) / total).epsilon(1e-14));
  CHECK(y[2] == doctest::Approx(1.0 / total).epsilon(1e-14));
  CHECK(values(ops::log_softmax(big.to(DType::Float32)))[2] == doctest::Approx(-std::log(total)).epsilon(1e-6));
  // -inf entries (masked positions) get probability 0; the rest stay finite.
  Tensor masked = Tensor::from_vector<double>({-INFINITY, 0.0, -INFINITY, 0.0}, {1, 4});
  CHECK(values(ops::softmax(masked)) == std::vector<double>{0.0, 0.5, 0.0, 0.5});
  CHECK(values(ops::log_softmax(masked))[0] == -INFINITY);
}

TEST_CASE("softmax of odd and size-1 shapes") {
  // A dim of size 1 gives probability 1 (log 0) whatever the logit.
  CHECK(values(ops::softmax(Tensor::from_vector<double>({-7, 3}, {2, 1}))) == std::vector<double>{1, 1});
  CHECK(values(ops::log_softmax(Tensor::from_vector<double>({-7, 3}, {2, 1}))) == std::vector<double>{0, 0});
  for (int64_t dim : {1, 3, 130}) {
    Tensor x = random({1, dim}, 20 + dim, DType::Float64, -4.0, 4.0);
    CHECK(max_abs_difference(ops::softmax(x), softmax_by_formula(x, -1)) < 1e-14);
  }
  // A 1-D tensor and an empty batch.
  Tensor line = random({6}, 5);
  CHECK(max_abs_difference(ops::softmax(line, 0), softmax_by_formula(line, 0)) < 1e-14);
  CHECK(ops::softmax(Tensor::zeros({0, 4}, DType::Float64)).shape() == Shape{0, 4});
}

TEST_CASE("softmax of non-contiguous inputs") {
  Tensor base = random({5, 7}, 3);
  Tensor transposed = base.as_strided({7, 5}, {1, 7}, 0);
  CHECK(values(ops::softmax(transposed, 1)) == values(ops::softmax(transposed.contiguous(), 1)));
  CHECK(values(ops::log_softmax(transposed, 0)) == values(ops::log_softmax(transposed.contiguous(), 0)));
  CHECK(ops::softmax(transposed, 1).is_contiguous());
}

TEST_CASE("softmax gradients (finite differences)") {
  for (bool log : {false, true}) {
    CAPTURE(log);
    auto op = [log](int dim) {
      return [log, dim](const std::vector<Tensor>& xs) {
        return log ? ops::log_softmax(xs[0], dim) : ops::softmax(xs[0], dim);
      };
    };
    check_gradients(op(-1), {leaf({4, 7}, 1)});
    check_gradients(op(0), {leaf({3, 4, 5}, 2)});  // the first dim
    check_gradients(op(1), {leaf({3, 4, 5}, 3)});  // a middle dim
    check_gradients(op(2), {leaf({3, 4, 5}, 4)});
    for (int64_t dim : {1, 3, 130}) check_gradients(op(-1), {leaf({1, dim}, 10 + dim)});  // rows = 1
    check_gradients(op(0), {leaf({6}, 5)});
    // Through a transposed (non-contiguous) view of a leaf.
    check_gradients(
        [log](const std::vector<Tensor>& xs) {
          Tensor transposed = ops::transpose(xs[0], 0, 1);
          return log ? ops::log_softmax(transposed, 1) : ops::softmax(transposed, 1);
        },
        {leaf({5, 3}, 6)});
  }
}

TEST_CASE("softmax gradients match the formulas") {
  // softmax: dx = y (dy - sum(dy y)); log_softmax: dx = dy - softmax(x) sum(dy).
  Tensor x = leaf({2, 5}, 30);
  Tensor dy = random({2, 5}, 31);
  Tensor y = ops::softmax(x);
  autograd::backward(y, dy);
  Tensor expected = ops::mul(y.detach(), ops::sub(dy, ops::sum(ops::mul(dy, y.detach()), {1}, true)));
  CHECK(max_abs_difference(x.grad(), expected) < 1e-15);

  Tensor x2 = leaf({2, 5}, 32);
  autograd::backward(ops::log_softmax(x2), dy);
  Tensor expected_log = ops::sub(dy, ops::mul(ops::softmax(x2.detach()), ops::sum(dy, {1}, true)));
  CHECK(max_abs_difference(x2.grad(), expected_log) < 1e-15);
}

TEST_CASE("softmax argument errors") {
  Tensor x = random({2, 3}, 1);
  CHECK_THROWS_WITH_AS(ops::softmax(x, 2), doctest::Contains("softmax: dim 2 is out of range for a tensor of rank 2"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::log_softmax(x, -3), doctest::Contains("log_softmax: dim -3 is out of range"), Error);
  CHECK_THROWS_WITH_AS(ops::softmax(Tensor::zeros({2, 3}, DType::Int64)), doctest::Contains("softmax: int64[2, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::softmax(Tensor()), doctest::Contains("softmax: x is an undefined tensor"), Error);
}
