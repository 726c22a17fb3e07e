#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "strata/ops/moe.h"
#include "support/check.h"

using namespace strata;

namespace {

struct ExhaustiveLookup {
  std::vector<int64_t> indices;  // (tokens, k), best first
  std::vector<double> output;    // (tokens, d_value)
};

// Scores all n_keys^2 values of the grid directly (score(i, j) = q_1 . K_1[i] +
// q_2 . K_2[j]) and takes the top k: what product keys must find without
// scoring the whole grid.
ExhaustiveLookup exhaustive_lookup(const Tensor& query, const Tensor& keys_1, const Tensor& keys_2,
                                   const Tensor& values, int64_t k) {
  const int64_t tokens = query.size(0), half = query.size(1) / 2, n = keys_1.size(0), d_value = values.size(1);
  std::vector<double> q = query.to_vector<double>(), k1 = keys_1.to_vector<double>(), k2 = keys_2.to_vector<double>(),
                      v = values.to_vector<double>();
  ExhaustiveLookup result;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> score(n * n);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t c = 0; c < half; ++c)
          s += q[t * 2 * half + c] * k1[i * half + c] + q[t * 2 * half + half + c] * k2[j * half + c];
        score[i * n + j] = s;
      }
    std::vector<int64_t> order(n * n);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int64_t a, int64_t b) { return score[a] > score[b]; });
    double partition = 0;
    for (int64_t j = 0; j < k; ++j) partition += std::exp(score[order[j]] - score[order[0]]);
    std::vector<double> out(d_value, 0.0);
    for (int64_t j = 0; j < k; ++j) {
      result.indices.push_back(order[j]);
      double weight = std::exp(score[order[j]] - score[order[0]]) / partition;
      for (int64_t c = 0; c < d_value; ++c) out[c] += weight * v[order[j] * d_value + c];
    }
    result.output.insert(result.output.end(), out.begin(), out.end());
  }
  return result;
}

}  // namespace

TEST_CASE("product-key memory finds the exact top-k of the whole key grid") {
  for (int64_t k : {1, 3, 6}) {
    CAPTURE(k);
    Tensor query = testing::random({7, 8}, 1);
    Tensor keys_1 = testing::random({6, 4}, 2), keys_2 = testing::random({6, 4}, 3);
    Tensor values = testing::random({36, 5}, 4);
    ops::ProductKeyResult result = ops::product_key_memory(query, keys_1, keys_2, values, k);
    ExhaustiveLookup expected = exhaustive_lookup(query, keys_1, keys_2, values, k);
    CHECK(result.output.shape() == Shape{7, 5});
    CHECK(result.value_indices.dtype() == DType::Int32);
    CHECK(result.value_indices.to_vector<int64_t>() == expected.indices);
    CHECK(testing::max_abs_difference(result.output, Tensor::from_vector<double>(expected.output, {7, 5})) < 1e-12);
    std::vector<double> weights = result.weights.to_vector<double>();
    CHECK(std::accumulate(weights.begin(), weights.begin() + k, 0.0) == doctest::Approx(1.0));
  }
  // float32, one key per half: every token reads value 0 with weight 1.
  Tensor out = ops::product_key_memory(testing::random({3, 2}, 5, DType::Float32), testing::random({1, 1}, 6, DType::Float32),
                                       testing::random({1, 1}, 7, DType::Float32),
                                       Tensor::full({1, 4}, 2.5, DType::Float32), 1)
                   .output;
  CHECK(out.to_vector<double>() == std::vector<double>(12, 2.5));
}

TEST_CASE("product-key memory gradients reach the query, both codebooks and the values") {
  Tensor query = testing::random({5, 6}, 11).set_requires_grad(true);
  Tensor keys_1 = testing::random({4, 3}, 12).set_requires_grad(true);
  Tensor keys_2 = testing::random({4, 3}, 13).set_requires_grad(true);
  Tensor values = testing::random({16, 3}, 14).set_requires_grad(true);
  testing::check_gradients(
      [](const std::vector<Tensor>& in) { return ops::product_key_memory(in[0], in[1], in[2], in[3], 3).output; },
      {query, keys_1, keys_2, values});

  // The value gradient is sparse: rows no token picked get exactly zero, and a
  // picked row gets the sum of weight * upstream gradient over the tokens that picked it.
  for (const Tensor& t : {query, keys_1, keys_2, values}) t.impl()->grad.reset();
  ops::ProductKeyResult result = ops::product_key_memory(query, keys_1, keys_2, values, 2);
  autograd::backward(ops::sum(result.output));
  std::vector<int64_t> picked = result.value_indices.to_vector<int64_t>();
  std::vector<double> weights = result.weights.to_vector<double>(), grad = values.grad().to_vector<double>();
  std::vector<double> expected(16, 0.0);
  for (size_t p = 0; p < picked.size(); ++p) expected[picked[p]] += weights[p];
  for (int64_t row = 0; row < 16; ++row)
    for (int64_t c = 0; c < 3; ++c) CHECK(grad[row * 3 + c] == doctest::Approx(expected[row]));
  CHECK(std::count(expected.begin(), expected.end(), 0.0) > 0);  // some rows unread: the case above is real
}

TEST_CASE("product-key memory errors name the op and the shapes") {
  Tensor query = Tensor::zeros({2, 4}, DType::Float64);
  Tensor keys = Tensor::zeros({3, 2}, DType::Float64);
  Tensor values = Tensor::zeros({9, 5}, DType::Float64);
  CHECK_THROWS_WITH_AS(ops::product_key_memory(Tensor::zeros({2, 3}, DType::Float64), keys, keys, values, 1),
                       doctest::Contains("product_key_memory: d_key 3 of query float64[2, 3] on cpu must be even"), Error);
  CHECK_THROWS_WITH_AS(ops::product_key_memory(query, Tensor::zeros({3, 3}, DType::Float64), keys, values, 1),
                       doctest::Contains("sub_keys_1 float64[3, 3] on cpu and sub_keys_2 float64[3, 2] on cpu must both "
                                         "be (n_keys, d_key / 2)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::product_key_memory(query, keys, keys, Tensor::zeros({8, 5}, DType::Float64), 1),
                       doctest::Contains("values float64[8, 5] on cpu must have n_keys^2 = 9 rows"), Error);
  CHECK_THROWS_WITH_AS(ops::product_key_memory(query, keys, keys, values, 4),
                       doctest::Contains("product_key_memory: top_k = 4 must be in 1..3 (n_keys)"), Error);
  CHECK_THROWS_WITH_AS(ops::product_key_memory(query, keys, keys, Tensor::zeros({9, 5}), 1),
                       doctest::Contains("product_key_memory: dtypes differ"), Error);
}
