#include "support/check.h"

using namespace strata;

namespace {
using testing::values;
}  // namespace

TEST_CASE("embedding looks up rows for indices of any shape") {
  Tensor weight = Tensor::arange(12, DType::Float64).view({4, 3});
  Tensor ids = Tensor::from_vector<int32_t>({3, 0, 3, 1}, {2, 2});
  Tensor out = ops::embedding(weight, ids);
  CHECK(out.shape() == Shape{2, 2, 3});
  CHECK(values(out) == std::vector<double>{9, 10, 11, 0, 1, 2, 9, 10, 11, 3, 4, 5});
  CHECK(ops::embedding(weight, Tensor::from_vector<int64_t>({2}, {})).shape() == Shape{3});  // a scalar id
  Tensor single = ops::embedding(ops::cast(weight, DType::Float32), Tensor::from_vector<int64_t>({1}, {1, 1}));
  CHECK(single.dtype() == DType::Float32);
  CHECK(values(single) == std::vector<double>{3, 4, 5});
}

TEST_CASE("embedding gradient adds the rows of repeated ids") {
  Tensor weight = testing::random({5, 3}, 31).set_requires_grad(true);
  Tensor ids = Tensor::from_vector<int64_t>({4, 1, 4, 4, 0, 1}, {2, 3});
  testing::check_gradients([&](const std::vector<Tensor>& in) { return ops::embedding(in[0], ids); }, {weight});

  // Analytic: with an upstream gradient of ones, row r gets the count of id r.
  weight.zero_grad();
  autograd::backward(ops::embedding(weight, ids), Tensor::ones({2, 3, 3}, DType::Float64));
  CHECK(values(weight.grad()) == std::vector<double>{1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 0, 0, 3, 3, 3});
}

TEST_CASE("embedding errors name the op and the bad id") {
  Tensor weight = Tensor::zeros({4, 2}, DType::Float64);
  CHECK_THROWS_WITH_AS(ops::embedding(weight, Tensor::from_vector<int64_t>({1, 4}, {2})),
                       doctest::Contains("embedding: index 4 is out of range for dim 0 of float64[4, 2] on cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::embedding(weight, Tensor::from_vector<int32_t>({-2}, {1})),
                       doctest::Contains("index -2 is out of range"), Error);
  CHECK_THROWS_WITH_AS(ops::embedding(Tensor::zeros({4}), Tensor::from_vector<int64_t>({0}, {1})),
                       doctest::Contains("embedding: weight float32[4] on cpu must be (vocab, dim)"), Error);
  CHECK_THROWS_WITH_AS(ops::embedding(weight, Tensor::zeros({2})), doctest::Contains("must be int32 or int64"), Error);
}
