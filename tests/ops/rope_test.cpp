// ops::rotary_embedding: values against the rotation formula written out per
// element, the relative-position property (q_m . k_n depends on m - n only),
// explicit positions against the offset form, finite-difference gradients in
// double (contiguous and transposed inputs), float32 against float64, and errors.
#include "strata/ops/rope.h"

#include <cmath>

#include "support/check.h"

using namespace strata;

namespace {

// The formula of rope.h, element by element on the host.
std::vector<double> reference_rotation(const Tensor& x, const std::vector<int64_t>& positions, double base) {
  std::vector<double> in = x.contiguous().to_vector<double>(), out(in.size());
  int64_t rows = x.size(0) * x.size(1), length = x.size(2), d = x.size(3), half = d / 2;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t m = 0; m < length; ++m)
      for (int64_t i = 0; i < half; ++i) {
        double angle = static_cast<double>(positions[static_cast<size_t>(m)]) * std::pow(base, -2.0 * double(i) / double(d));
        size_t at = static_cast<size_t>((r * length + m) * d);
        double x1 = in[at + i], x2 = in[at + half + i];
        out[at + i] = x1 * std::cos(angle) - x2 * std::sin(angle);
        out[at + half + i] = x2 * std::cos(angle) + x1 * std::sin(angle);
      }
  return out;
}

}  // namespace

TEST_CASE("rotary_embedding matches the rotation formula") {
  Tensor x = testing::random({2, 3, 5, 8}, 1);
  std::vector<int64_t> positions = {0, 1, 7, 100, 4096};
  for (double base : {10000.0, 500.0}) {
    Tensor out = ops::rotary_embedding(x, Tensor::from_vector(positions, {5}), base);
    std::vector<double> expected = reference_rotation(x, positions, base), got = out.to_vector<double>();
    REQUIRE(got.size() == expected.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(expected[i]).epsilon(1e-12));
  }
}

TEST_CASE("rotary_embedding with an offset equals explicit positions; position 0 is the identity") {
  Tensor x = testing::random({1, 2, 4, 6}, 2);
  Tensor explicit_positions = ops::rotary_embedding(x, Tensor::from_vector<int32_t>({3, 4, 5, 6}, {4}));
  CHECK(testing::max_abs_difference(ops::rotary_embedding(x, 3), explicit_positions) == 0.0);
  Tensor at_zero = ops::rotary_embedding(x, Tensor::from_vector<int64_t>({0, 0, 0, 0}, {4}));
  CHECK(testing::max_abs_difference(at_zero, x) < 1e-15);
}

TEST_CASE("rotary_embedding: q_m . k_n depends only on m - n") {
  int64_t d = 16;
  Tensor q = testing::random({1, 1, 1, d}, 3), k = testing::random({1, 1, 1, d}, 4);
  auto product = [&](int64_t m, int64_t n) {
    Tensor qm = ops::rotary_embedding(q, m), kn = ops::rotary_embedding(k, n);
    return ops::sum(ops::mul(qm, kn)).item();
  };
  for (int64_t shift : {1, 5, 37, 1000}) {
    CHECK(product(9, 4) == doctest::Approx(product(9 + shift, 4 + shift)).epsilon(1e-10));
    CHECK(product(2, 11) == doctest::Approx(product(2 + shift, 11 + shift)).epsilon(1e-10));
  }
  // Not a trivial constant: a different distance gives a different product.
  CHECK(std::fabs(product(9, 4) - product(9, 5)) > 1e-3);
}

TEST_CASE("rotary_embedding gradients (double)") {
  Tensor x = testing::random({2, 2, 3, 4}, 5).set_requires_grad(true);
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::rotary_embedding(in[0], 2); }, {x});
  // Non-contiguous input: (batch, length, heads, dim) transposed to (batch, heads, length, dim).
  Tensor y = testing::random({1, 3, 2, 6}, 6).set_requires_grad(true);
  testing::check_gradients(
      [](const std::vector<Tensor>& in) {
        return ops::rotary_embedding(ops::transpose(in[0], 1, 2), Tensor::from_vector<int64_t>({4, 0, 9}, {3}), 100.0);
      },
      {y});
}

TEST_CASE("rotary_embedding in float32 follows float64") {
  Tensor x = testing::random({2, 2, 7, 8}, 7);
  Tensor wide = ops::rotary_embedding(x, 1000);
  Tensor narrow = ops::rotary_embedding(x.to(DType::Float32), 1000);
  CHECK(testing::max_abs_difference(narrow.to(DType::Float64), wide) < 1e-6);
}

TEST_CASE("rotary_embedding errors") {
  Tensor x = testing::random({1, 1, 3, 4}, 8);
  CHECK_THROWS_WITH_AS(ops::rotary_embedding(testing::random({1, 3, 4}, 9), 0), doctest::Contains("must be (batch, heads, length, head_dim)"), Error);
  CHECK_THROWS_WITH_AS(ops::rotary_embedding(testing::random({1, 1, 3, 5}, 9), 0), doctest::Contains("head_dim must be even"), Error);
  CHECK_THROWS_WITH_AS(ops::rotary_embedding(x, Tensor::from_vector<int64_t>({0, 1}, {2})), doctest::Contains("2 positions for a length of 3"), Error);
  CHECK_THROWS_WITH_AS(ops::rotary_embedding(x, Tensor::from_vector<double>({0, 1, 2}, {3})), doctest::Contains("rotary_embedding"), Error);
  CHECK_THROWS_WITH_AS(ops::rotary_embedding(x, -1), doctest::Contains("offset must be >= 0"), Error);
  CHECK_THROWS_WITH_AS(ops::rotary_embedding(x, 0, 1.0), doctest::Contains("base must be > 1"), Error);
}
