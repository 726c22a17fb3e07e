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
Tensor targets_of(const std::vector<int64_t>& targets, DType dtype = DType::Int64) {
  return Tensor::from_vector(targets, {static_cast<int64_t>(targets.size())}).to(dtype);
}
// mean over rows with target != ignore_index of logsumexp(row) - row[target].
double loss_by_formula(const Tensor& logits, const std::vector<int64_t>& targets, int64_t ignore_index) {
  const int64_t classes = logits.size(1);
  std::vector<double> x = values(logits);
  double total = 0;
  int counted = 0;
  for (size_t r = 0; r < targets.size(); ++r) {
    if (targets[r] == ignore_index) continue;
    double sum_exp = 0;
    for (int64_t c = 0; c < classes; ++c) sum_exp += std::exp(x[r * classes + c]);
    total += std::log(sum_exp) - x[r * classes + targets[r]];
    ++counted;
  }
  return counted ? total / counted : 0.0;
}
}  // namespace

TEST_CASE("cross_entropy matches the formula for int32 and int64 targets") {
  Tensor logits = random({4, 5}, 1, DType::Float64, -3.0, 3.0);
  const std::vector<int64_t> targets = {0, 4, 2, 2};
  for (DType index_dtype : {DType::Int64, DType::Int32}) {
    Tensor loss = ops::cross_entropy(logits, targets_of(targets, index_dtype));
    CHECK(loss.shape() == Shape{});
    CHECK(loss.dtype() == DType::Float64);
    CHECK(loss.item() == doctest::Approx(loss_by_formula(logits, targets, -100)).epsilon(1e-14));
  }
  // float32 logits give a float32 loss.
  Tensor loss32 = ops::cross_entropy(logits.to(DType::Float32), targets_of(targets));
  CHECK(loss32.dtype() == DType::Float32);
  CHECK(loss32.item() == doctest::Approx(loss_by_formula(logits, targets, -100)).epsilon(1e-6));
  // Uniform logits over C classes give log C.
  CHECK(ops::cross_entropy(Tensor::zeros({2, 8}, DType::Float64), targets_of({3, 7})).item() ==
        doctest::Approx(std::log(8.0)).epsilon(1e-15));
}

TEST_CASE("cross_entropy skips ignored rows") {
  Tensor logits = random({5, 3}, 2, DType::Float64, -3.0, 3.0);
  const std::vector<int64_t> targets = {1, -100, 0, -100, 2};
  CHECK(ops::cross_entropy(logits, targets_of(targets)).item() ==
        doctest::Approx(loss_by_formula(logits, targets, -100)).epsilon(1e-14));
  // Any value can be the ignored one, also a valid class.
  const std::vector<int64_t> with_class_ignored = {1, 0, 0, 2, 1};
  CHECK(ops::cross_entropy(logits, targets_of(with_class_ignored, DType::Int32), 1).item() ==
        doctest::Approx(loss_by_formula(logits, with_class_ignored, 1)).epsilon(1e-14));
  // Every row ignored: 0, not NaN, and a zero gradient.
  Tensor x = leaf({2, 3}, 3);
  Tensor loss = ops::cross_entropy(x, targets_of({-100, -100}));
  CHECK(loss.item() == 0.0);
  autograd::backward(loss);
  CHECK(testing::max_abs(x.grad()) == 0.0);
}

TEST_CASE("cross_entropy is stable for large logits") {
  // exp(1000) overflows; the logsumexp of (1000, 1001, 1002) is 1002 + log(1 + e^-1 + e^-2).
  Tensor logits = Tensor::from_vector<double>({1000, 1001, 1002}, {1, 3});
  const double expected = 1002 + std::log(1 + std::exp(-1.0) + std::exp(-2.0)) - 1000;
  CHECK(ops::cross_entropy(logits, targets_of({0})).item() == doctest::Approx(expected).epsilon(1e-14));
  CHECK(ops::cross_entropy(logits.to(DType::Float32), targets_of({0})).item() ==
        doctest::Approx(expected).epsilon(1e-6));
}

TEST_CASE("cross_entropy gradient is (softmax - onehot) * grad / count") {
  Tensor x = leaf({3, 4}, 4);
  Tensor loss = ops::cross_entropy(x, targets_of({2, -100, 0}));
  autograd::backward(ops::mul(loss, 3.0));  // grad of the loss is 3
  std::vector<double> expected = values(ops::softmax(x.detach()));
  expected[2] -= 1;
  expected[8] -= 1;
  for (int c = 4; c < 8; ++c) expected[c] = 0;  // the ignored row
  for (double& e : expected) e *= 3.0 / 2;      // two counted rows
  CHECK(max_abs_difference(x.grad(), Tensor::from_vector(expected, {3, 4})) < 1e-15);
}

TEST_CASE("cross_entropy gradients (finite differences)") {
  auto loss_with = [](const Tensor& targets, int64_t ignore_index = -100) {
    return [targets, ignore_index](const std::vector<Tensor>& xs) {
      return ops::cross_entropy(xs[0], targets, ignore_index);
    };
  };
  check_gradients(loss_with(targets_of({0, 3, 1, 4})), {leaf({4, 5}, 1)});
  check_gradients(loss_with(targets_of({0, 3, 1, 4}, DType::Int32)), {leaf({4, 5}, 2)});
  check_gradients(loss_with(targets_of({2, -100, 0, -100})), {leaf({4, 3}, 3)});
  check_gradients(loss_with(targets_of({1, 2, 1}, DType::Int32), 2), {leaf({3, 3}, 4)});
  // One row; one class (the loss is 0 whatever the logit); 130 classes.
  check_gradients(loss_with(targets_of({2})), {leaf({1, 3}, 5)});
  check_gradients(loss_with(targets_of({0, 0})), {leaf({2, 1}, 6)});
  check_gradients(loss_with(targets_of({129, 0, 64})), {leaf({3, 130}, 7)});
  // Logits through a transposed (non-contiguous) view.
  check_gradients(
      [](const std::vector<Tensor>& xs) { return ops::cross_entropy(ops::transpose(xs[0], 0, 1), targets_of({1, 0})); },
      {leaf({3, 2}, 8)});
}

TEST_CASE("cross_entropy argument errors") {
  Tensor logits = random({3, 5}, 1);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(logits, targets_of({0, 7, 1})),
                       doctest::Contains("cross_entropy: target 7 at row 1 is outside [0, 5) and is not ignore_index "
                                         "(-100)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(logits, targets_of({0, 1, -3}, DType::Int32)),
                       doctest::Contains("target -3 at row 2 is outside [0, 5)"), Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(logits, targets_of({0, 1})),
                       doctest::Contains("cross_entropy: targets int64[2] on cpu must be (N) for logits float64[3, 5]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(random({5}, 2), targets_of({0})),
                       doctest::Contains("cross_entropy: logits float64[5] on cpu must be (N, C)"), Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(logits, random({3}, 3)),
                       doctest::Contains("cross_entropy: targets float64[3] on cpu must be int32 or int64"), Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(Tensor::zeros({3, 5}, DType::Int64), targets_of({0, 1, 2})),
                       doctest::Contains("cross_entropy: int64[3, 5] on cpu is not supported"), Error);
}
