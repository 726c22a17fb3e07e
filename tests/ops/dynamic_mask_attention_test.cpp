// ops::dynamic_mask_attention on the CPU: values against an unfused composition
// (scores + key bias from ops, the keep mask from a brute-force top-w per query
// written here, independent of the kernels' heap), finite-difference gradients in
// double for q, k, v and the key bias (causal, GQA, Lq != Lk, lengths that end
// inside a 32-key block, batch 1), a window that covers the sequence against
// ops::attention with the bias added, ties going to the lower index, queries that
// see no key, float32 against float64, and the messages of bad arguments.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "strata/ops/attention.h"
#include "support/check.h"

using namespace strata;

namespace {

struct Case {
  int64_t batch = 2, heads = 4, kv_heads = 2, length_q = 37, length_k = 37, head_dim = 8, window = 5;
};

using testing::leaf;

// q, k, v, key_bias: float64 leaves. The bias spans [-2, 2] so the top-w choice
// differs from query to query, and its values are far apart compared with the
// finite-difference step, so the selection does not change under it.
std::vector<Tensor> make_inputs(const Case& c, uint64_t seed) {
  return {leaf({c.batch, c.heads, c.length_q, c.head_dim}, seed, -1.5, 1.5),
          leaf({c.batch, c.kv_heads, c.length_k, c.head_dim}, seed + 1, -1.5, 1.5),
          leaf({c.batch, c.kv_heads, c.length_k, c.head_dim}, seed + 2),
          leaf({c.batch, c.kv_heads, c.length_k}, seed + 3, -2.0, 2.0)};
}

// (batch, kv_heads, L, D) -> (batch, heads, L, D): each kv head repeated for its group.
Tensor repeat_kv(const Tensor& x, int64_t heads) {
  const int64_t batch = x.size(0), kv_heads = x.size(1), length = x.size(2), dim = x.size(3);
  return ops::reshape(ops::expand(ops::unsqueeze(x, 2), {batch, kv_heads, heads / kv_heads, length, dim}),
                      {batch, heads, length, dim});
}

// uint8 (batch, heads, Lq, Lk): 1 where query i drops key j. Query i sees keys
// [0, i + Lk - Lq] and keeps the `window` of them with the largest bias, the lower
// index first among equals.
Tensor dropped_keys(const Tensor& key_bias, int64_t heads, int64_t length_q, int64_t window) {
  const int64_t batch = key_bias.size(0), kv_heads = key_bias.size(1), length_k = key_bias.size(2);
  const std::vector<double> bias = key_bias.to_vector<double>();
  std::vector<uint8_t> dropped(batch * heads * length_q * length_k, 1);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < length_q; ++i) {
        const double* row = bias.data() + (b * kv_heads + h / (heads / kv_heads)) * length_k;
        const int64_t visible = std::clamp<int64_t>(i + length_k - length_q + 1, 0, length_k);
        std::vector<int64_t> order(visible);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return row[x] > row[y]; });
        for (int64_t n = 0; n < std::min(window, visible); ++n)
          dropped[((b * heads + h) * length_q + i) * length_k + order[n]] = 0;
      }
  return Tensor::from_vector(dropped, {batch, heads, length_q, length_k});
}

// The unfused composition: softmax(Q K^T scale + bias_j, dropped keys at -inf) V.
Tensor reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_bias, int64_t window) {
  const int64_t heads = q.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  Tensor scores = ops::mul(ops::matmul(q, ops::transpose(repeat_kv(k, heads), 2, 3)), scale);
  scores = ops::add(scores, repeat_kv(ops::unsqueeze(key_bias, 2), heads));
  scores = ops::masked_fill(scores, dropped_keys(key_bias, heads, q.size(2), window), -INFINITY);
  return ops::matmul(ops::softmax(scores, -1), repeat_kv(v, heads));
}

Tensor run(const std::vector<Tensor>& in, int64_t window) {
  return ops::dynamic_mask_attention(in[0], in[1], in[2], in[3], window);
}

void check_values_and_gradients(const Case& c, uint64_t seed) {
  std::vector<Tensor> in = make_inputs(c, seed);
  Tensor expected = reference(in[0], in[1], in[2], in[3], c.window);
  CHECK(testing::max_abs_difference(run(in, c.window), expected) < 1e-12);
  testing::check_gradients([&](const std::vector<Tensor>& x) { return run(x, c.window); }, in, 1e-6, 1e-6);
}

}  // namespace

TEST_CASE("dynamic_mask_attention: values and gradients, multi-head, window much smaller than the length") {
  check_values_and_gradients(Case{.batch = 2, .heads = 2, .kv_heads = 2, .length_q = 37, .length_k = 37,
                                  .head_dim = 8, .window = 5},
                             10);
}

TEST_CASE("dynamic_mask_attention: grouped-query heads and lengths past one 32-key block") {
  check_values_and_gradients(Case{.batch = 1, .heads = 4, .kv_heads = 2, .length_q = 70, .length_k = 70,
                                  .head_dim = 4, .window = 9},
                             20);
}

TEST_CASE("dynamic_mask_attention: fewer queries than keys (a cache) and multi-query heads") {
  check_values_and_gradients(Case{.batch = 2, .heads = 3, .kv_heads = 1, .length_q = 6, .length_k = 41,
                                  .head_dim = 6, .window = 7},
                             30);
}

TEST_CASE("dynamic_mask_attention: a window that covers the sequence is causal attention with the bias") {
  Case c{.batch = 2, .heads = 4, .kv_heads = 2, .length_q = 33, .length_k = 33, .head_dim = 8, .window = 33};
  for (int64_t window : {c.length_k, int64_t{1000}}) {
    std::vector<Tensor> in = make_inputs(c, 40);
    ops::AttentionOptions dense;
    dense.causal = true;
    dense.bias = repeat_kv(ops::unsqueeze(in[3], 2), c.heads);  // (batch, heads, 1, Lk)
    CHECK(testing::max_abs_difference(run(in, window), ops::attention(in[0], in[1], in[2], dense).out) < 1e-12);
  }
}

TEST_CASE("dynamic_mask_attention: equal biases keep the earliest keys") {
  Case c{.batch = 1, .heads = 2, .kv_heads = 1, .length_q = 20, .length_k = 20, .head_dim = 4, .window = 3};
  std::vector<Tensor> in = make_inputs(c, 50);
  Tensor flat = Tensor::zeros({1, 1, 20}, DType::Float64);
  // Every query keeps keys 0, 1, 2 (or fewer): query i >= 2 attends exactly the first three.
  Tensor out = ops::dynamic_mask_attention(in[0], in[1], in[2], flat, 3);
  Tensor first_three = ops::attention(ops::slice(in[0], 2, 2, 20), ops::slice(in[1], 2, 0, 3),
                                      ops::slice(in[2], 2, 0, 3))
                           .out;
  CHECK(testing::max_abs_difference(ops::slice(out, 2, 2, 20), first_three) < 1e-12);
  CHECK(testing::max_abs_difference(out, reference(in[0], in[1], in[2], flat, 3)) < 1e-12);
}

TEST_CASE("dynamic_mask_attention: queries that see no key give zeros and zero gradients") {
  // Lq > Lk: the first Lq - Lk queries end before key 0.
  Case c{.batch = 1, .heads = 2, .kv_heads = 2, .length_q = 9, .length_k = 5, .head_dim = 4, .window = 2};
  std::vector<Tensor> in = make_inputs(c, 60);
  Tensor out = run(in, c.window);
  CHECK(testing::max_abs(ops::slice(out, 2, 0, 4)) == 0.0);
  CHECK(testing::max_abs_difference(ops::slice(out, 2, 4, 9),
                                    reference(ops::slice(in[0], 2, 4, 9), in[1], in[2], in[3], c.window)) < 1e-12);
  testing::check_gradients([&](const std::vector<Tensor>& x) { return run(x, c.window); }, in, 1e-6, 1e-6);
}

TEST_CASE("dynamic_mask_attention: float32 matches float64, the bias keeps its dtype and shape in the gradient") {
  Case c{.batch = 2, .heads = 4, .kv_heads = 2, .length_q = 50, .length_k = 50, .head_dim = 16, .window = 12};
  std::vector<Tensor> in = make_inputs(c, 70);
  std::vector<Tensor> single;
  for (const Tensor& x : in) single.push_back(x.to(DType::Float32).set_requires_grad(true));
  Tensor out32 = run(single, c.window);
  CHECK(out32.dtype() == DType::Float32);
  CHECK(testing::max_abs_difference(out32, run(in, c.window)) < 1e-5);
  autograd::backward(ops::sum(out32));
  REQUIRE(single[3].grad().defined());
  CHECK(single[3].grad().dtype() == DType::Float32);
  CHECK(single[3].grad().shape() == single[3].shape());
  CHECK(testing::max_abs(single[3].grad()) > 0.0);
}

TEST_CASE("dynamic_mask_attention: non-contiguous inputs") {
  Case c{.batch = 2, .heads = 2, .kv_heads = 2, .length_q = 12, .length_k = 12, .head_dim = 4, .window = 4};
  std::vector<Tensor> in = make_inputs(c, 80);
  // q and key_bias laid out transposed, read back as the same logical tensors.
  Tensor q_t = ops::transpose(ops::transpose(in[0], 1, 2).contiguous(), 1, 2);
  Tensor bias_t = ops::transpose(ops::transpose(in[3], 0, 1).contiguous(), 0, 1);
  REQUIRE_FALSE(q_t.is_contiguous());
  CHECK(testing::max_abs_difference(ops::dynamic_mask_attention(q_t, in[1], in[2], bias_t, 4), run(in, 4)) < 1e-14);
}

TEST_CASE("dynamic_mask_attention: bad arguments") {
  Case c;
  std::vector<Tensor> in = make_inputs(c, 90);
  const Tensor &q = in[0], &k = in[1], &v = in[2], &bias = in[3];
  CHECK_THROWS_WITH_AS(ops::dynamic_mask_attention(q, k, v, Tensor::zeros({2, 2, 36}, DType::Float64), 5),
                       doctest::Contains("key_bias float64[2, 2, 36] on cpu must be (batch, kv_heads, Lk) = [2, 2, 37]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::dynamic_mask_attention(q, k, v, Tensor::zeros({2, 4, 37}, DType::Float64), 5),
                       doctest::Contains("must be (batch, kv_heads, Lk)"), Error);
  CHECK_THROWS_WITH_AS(ops::dynamic_mask_attention(q, k, v, bias, 0), doctest::Contains("keep_window must be positive, got 0"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::dynamic_mask_attention(q, k, v, Tensor(), 5), doctest::Contains("key_bias"), Error);
  CHECK_THROWS_WITH_AS(ops::dynamic_mask_attention(q, Tensor::zeros({2, 3, 37, 8}, DType::Float64),
                                                   Tensor::zeros({2, 3, 37, 8}, DType::Float64), bias, 5),
                       doctest::Contains("not a multiple of the 3 kv heads"), Error);
  CHECK_THROWS_WITH_AS(ops::dynamic_mask_attention(q, k, ops::slice(v, 2, 0, 36), bias, 5),
                       doctest::Contains("must have the shape of k"), Error);
  CHECK_THROWS_WITH_AS(ops::dynamic_mask_attention(q, k, v, Tensor::zeros({2, 2, 37}, DType::Int64), 5),
                       doctest::Contains("must have a floating dtype"), Error);
  CHECK_THROWS_WITH_AS(ops::dynamic_mask_attention(q.to(DType::Float32), k, v, bias, 5),
                       doctest::Contains("must share one dtype"), Error);
}
