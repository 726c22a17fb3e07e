#include "support/check.h"

using namespace strata;

TEST_CASE("dropout zeroes the elements of the Bernoulli mask and rescales the rest") {
  const double p = 0.3;
  Tensor x = testing::random({4, 5, 6}, 41);
  Generator generator{99, 7};
  Tensor out = ops::dropout(x, p, true, generator);
  Generator replay{99, 7};
  std::vector<double> mask = rand_bernoulli(x.shape(), 1.0 - p, Device::cpu(), replay).to_vector<double>();
  CHECK(generator.offset == replay.offset);  // dropout consumed exactly one mask's worth of counters
  std::vector<double> expected = x.to_vector<double>(), got = out.to_vector<double>();
  int64_t dropped = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    CHECK(got[i] == doctest::Approx(expected[i] * mask[i] / (1.0 - p)));
    dropped += mask[i] == 0.0;
  }
  CHECK(dropped > 0);
  CHECK(dropped < static_cast<int64_t>(expected.size()));
}

TEST_CASE("dropout is the identity when not training or p is 0") {
  Tensor x = testing::random({3}, 42);
  Generator generator{1, 0};
  CHECK(ops::dropout(x, 0.5, false, generator).impl() == x.impl());
  CHECK(ops::dropout(x, 0.0, true, generator).impl() == x.impl());
  CHECK(generator.offset == 0);
}

TEST_CASE("dropout gradient applies the same mask") {
  Tensor x = testing::random({3, 7}, 43).set_requires_grad(true);
  // A fresh generator with one seed per call, so every evaluation draws the same mask.
  testing::check_gradients(
      [](const std::vector<Tensor>& in) {
        Generator generator{5, 0};
        return ops::dropout(in[0], 0.4, true, generator);
      },
      {x});
}

TEST_CASE("dropout rejects p outside [0, 1)") {
  Tensor x = Tensor::zeros({2});
  CHECK_THROWS_WITH_AS(ops::dropout(x, 1.0, true), doctest::Contains("dropout: p = 1 is outside [0, 1)"), Error);
  CHECK_THROWS_WITH_AS(ops::dropout(x, -0.1, false), doctest::Contains("dropout: p = -0.1"), Error);
}
