// ops::attention on the CPU: values against the unfused composition
// softmax(Q K^T scale + bias) V built from ops (with the sink as an extra column of
// the softmax), finite-difference gradients in double for q, k, v, bias, sinks, both
// temperatures and the lse output, odd shapes (GQA, Lq != Lk, batch 1, one head,
// non-contiguous inputs, queries that see no key), the diagnostic probabilities,
// float32 against float64, and the messages of bad arguments.
#include "strata/ops/attention.h"

#include <cmath>

#include "support/check.h"

using namespace strata;

namespace {

struct Case {
  int64_t batch = 2, heads = 2, kv_heads = 2, length_q = 5, length_k = 5, head_dim = 4;
  bool causal = false;
};

using testing::leaf;

// q, k, v for a case: float64 leaves; scores of order 1 so the softmax is not flat.
std::vector<Tensor> make_qkv(const Case& c, uint64_t seed) {
  return {leaf({c.batch, c.heads, c.length_q, c.head_dim}, seed, -1.5, 1.5),
          leaf({c.batch, c.kv_heads, c.length_k, c.head_dim}, seed + 1, -1.5, 1.5),
          leaf({c.batch, c.kv_heads, c.length_k, c.head_dim}, seed + 2)};
}

// (batch, kv_heads, L, D) -> (batch, heads, L, D): each kv head repeated for its group.
Tensor repeat_kv(const Tensor& x, int64_t heads) {
  const int64_t batch = x.size(0), kv_heads = x.size(1), length = x.size(2), dim = x.size(3);
  return ops::reshape(ops::expand(ops::unsqueeze(x, 2), {batch, kv_heads, heads / kv_heads, length, dim}),
                      {batch, heads, length, dim});
}

// uint8 (Lq, Lk): 1 where key j is after query i under end-aligned causality.
Tensor causal_hidden(int64_t length_q, int64_t length_k) {
  std::vector<uint8_t> hidden(length_q * length_k);
  for (int64_t i = 0; i < length_q; ++i)
    for (int64_t j = 0; j < length_k; ++j) hidden[i * length_k + j] = j > i + (length_k - length_q);
  return Tensor::from_vector(hidden, {length_q, length_k});
}

struct Reference {
  Tensor out, lse, probabilities;
};

// The unfused composition, every step an op.
Reference reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, const ops::AttentionOptions& o) {
  const int64_t batch = q.size(0), heads = q.size(1), length_q = q.size(2), length_k = k.size(2);
  const double scale = o.scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  Tensor qs = o.query_temperature.defined() ? ops::mul(q, ops::unsqueeze(o.query_temperature, -1)) : q;
  Tensor ks = o.key_temperature.defined() ? ops::mul(k, ops::unsqueeze(o.key_temperature, -1)) : k;
  Tensor scores = ops::mul(ops::matmul(qs, ops::transpose(repeat_kv(ks, heads), 2, 3)), scale);
  if (o.bias.defined()) scores = ops::add(scores, o.bias);
  if (o.causal) scores = ops::masked_fill(scores, causal_hidden(length_q, length_k), -INFINITY);
  if (o.sinks.defined()) {
    Tensor sink_column = ops::expand(ops::reshape(o.sinks, {1, heads, 1, 1}), {batch, heads, length_q, 1});
    scores = ops::concat({scores, sink_column}, 3);
  }
  Reference r;
  r.lse = ops::logsumexp(scores, -1);
  r.probabilities = ops::slice(ops::softmax(scores, -1), 3, 0, length_k);
  r.out = ops::matmul(r.probabilities, repeat_kv(v, heads));
  return r;
}

// The options a test varies, built from leaves.
struct Extras {
  bool causal = false;
  Shape bias_shape;  // empty: no bias
  bool sinks = false, query_temperature = false, key_temperature = false;
  std::optional<double> scale;
};

ops::AttentionOptions make_options(const Case& c, const Extras& e, std::vector<Tensor>& leaves, uint64_t seed) {
  ops::AttentionOptions o;
  o.causal = e.causal;
  o.scale = e.scale;
  if (!e.bias_shape.empty()) leaves.push_back(o.bias = leaf(e.bias_shape, seed));
  if (e.sinks) leaves.push_back(o.sinks = leaf({c.heads}, seed + 1));
  if (e.query_temperature)
    leaves.push_back(o.query_temperature = leaf({c.batch, c.heads, c.length_q}, seed + 2, 0.5, 2.0));
  if (e.key_temperature)
    leaves.push_back(o.key_temperature = leaf({c.batch, c.kv_heads, c.length_k}, seed + 3, 0.5, 2.0));
  return o;
}

// Rebinds the option tensors of `o` to `inputs[3..]` in the order make_options pushed them.
ops::AttentionOptions rebind(ops::AttentionOptions o, const std::vector<Tensor>& inputs) {
  size_t next = 3;
  if (o.bias.defined()) o.bias = inputs[next++];
  if (o.sinks.defined()) o.sinks = inputs[next++];
  if (o.query_temperature.defined()) o.query_temperature = inputs[next++];
  if (o.key_temperature.defined()) o.key_temperature = inputs[next++];
  return o;
}

std::vector<Case> shape_cases() {
  return {
      {},                                                                                    // plain
      {.batch = 1, .heads = 1, .kv_heads = 1, .length_q = 1, .length_k = 1, .head_dim = 1},  // everything 1
      {.batch = 2, .heads = 4, .kv_heads = 2, .length_q = 6, .length_k = 6, .head_dim = 3},  // GQA
      {.batch = 1, .heads = 3, .kv_heads = 1, .length_q = 4, .length_k = 9, .head_dim = 5},  // MQA, Lq < Lk
      {.batch = 2, .heads = 2, .kv_heads = 1, .length_q = 7, .length_k = 7, .head_dim = 8},  // Lq, Lk odd
  };
}

}  // namespace

TEST_CASE("attention matches softmax(Q K^T scale + bias) V built from ops") {
  autograd::NoGradGuard no_grad;
  uint64_t seed = 1;
  for (const Case& c : shape_cases()) {
    const std::vector<Extras> variants = {
        {},
        {.causal = true},
        {.bias_shape = {c.batch, c.heads, c.length_q, c.length_k}},
        {.causal = true, .bias_shape = {c.batch, 1, 1, c.length_k}, .sinks = true},
        {.bias_shape = {c.length_k}, .sinks = true, .query_temperature = true, .key_temperature = true},
        {.causal = true, .bias_shape = {1, c.heads, c.length_q, 1}, .query_temperature = true, .scale = 0.3},
    };
    for (const Extras& extras : variants) {
      CAPTURE(c.heads);
      CAPTURE(c.kv_heads);
      CAPTURE(c.length_q);
      CAPTURE(c.length_k);
      CAPTURE(extras.causal);
      CAPTURE(extras.bias_shape.size());
      CAPTURE(extras.sinks);
      std::vector<Tensor> in = make_qkv(c, seed);
      ops::AttentionOptions options = make_options(c, extras, in, seed + 10);
      options.return_lse = true;
      options.return_probabilities = true;
      seed += 20;
      ops::AttentionResult fused = ops::attention(in[0], in[1], in[2], options);
      Reference reference = reference_attention(in[0], in[1], in[2], options);
      CHECK(testing::max_abs_difference(fused.out, reference.out) < 1e-12);
      CHECK(testing::max_abs_difference(fused.lse, reference.lse) < 1e-12);
      CHECK(testing::max_abs_difference(fused.probabilities, reference.probabilities) < 1e-12);
      CHECK(fused.out.dtype() == DType::Float64);
      CHECK(fused.lse.shape() == Shape{c.batch, c.heads, c.length_q});
    }
  }
}

TEST_CASE("attention gradients match finite differences for every input and option") {
  uint64_t seed = 100;
  for (const Case& c : shape_cases()) {
    const std::vector<Extras> variants = {
        {},
        {.causal = true, .sinks = true},
        {.bias_shape = {c.batch, c.heads, c.length_q, c.length_k}, .query_temperature = true},
        {.causal = true, .bias_shape = {c.batch, 1, 1, c.length_k}, .key_temperature = true},
        {.bias_shape = {c.length_q, 1},
         .sinks = true,
         .query_temperature = true,
         .key_temperature = true,
         .scale = 0.7},
    };
    for (const Extras& extras : variants) {
      CAPTURE(c.heads);
      CAPTURE(c.kv_heads);
      CAPTURE(c.length_q);
      CAPTURE(c.length_k);
      CAPTURE(extras.causal);
      CAPTURE(extras.bias_shape.size());
      std::vector<Tensor> in = make_qkv(c, seed);
      const ops::AttentionOptions options = make_options(c, extras, in, seed + 10);
      seed += 20;
      // out and lse together, so the gradient through lse is checked as well.
      auto f = [&options](const std::vector<Tensor>& x) {
        ops::AttentionOptions o = rebind(options, x);
        o.return_lse = true;
        ops::AttentionResult r = ops::attention(x[0], x[1], x[2], o);
        return ops::concat({ops::reshape(r.out, {-1}), ops::reshape(r.lse, {-1})}, 0);
      };
      testing::check_gradients(f, in);
    }
  }
}

TEST_CASE("attention gradients reach only the inputs that need them") {
  Case c{.batch = 1, .heads = 2, .kv_heads = 1, .length_q = 3, .length_k = 4, .head_dim = 2};
  std::vector<Tensor> in = make_qkv(c, 200);
  in[1].set_requires_grad(false);
  ops::AttentionOptions options;
  options.bias = testing::random({c.length_k}, 201);  // no gradient wanted
  options.sinks = leaf({c.heads}, 202);
  in.push_back(options.bias);
  in.push_back(options.sinks);
  auto f = [&options](const std::vector<Tensor>& x) {
    return ops::attention(x[0], x[1], x[2], rebind(options, x)).out;
  };
  testing::check_gradients(f, in);
  CHECK_FALSE(in[1].grad().defined());
  CHECK_FALSE(options.bias.grad().defined());
}

TEST_CASE("attention takes non-contiguous q, k and v") {
  const int64_t batch = 2, heads = 2, length = 5, dim = 3;
  // (batch, length, heads, dim), as a projection produces them, viewed as (batch, heads, length, dim).
  std::vector<Tensor> in{leaf({batch, length, heads, dim}, 300), leaf({batch, length, 1, dim}, 301),
                         leaf({batch, length, 1, dim}, 302)};
  auto f = [](const std::vector<Tensor>& x) {
    ops::AttentionOptions o;
    o.causal = true;
    return ops::attention(ops::transpose(x[0], 1, 2), ops::transpose(x[1], 1, 2), ops::transpose(x[2], 1, 2), o).out;
  };
  testing::check_gradients(f, in);
  autograd::NoGradGuard no_grad;
  Tensor q = ops::transpose(in[0], 1, 2), k = ops::transpose(in[1], 1, 2), v = ops::transpose(in[2], 1, 2);
  REQUIRE_FALSE(q.is_contiguous());
  ops::AttentionOptions o;
  o.causal = true;
  CHECK(testing::max_abs_difference(ops::attention(q, k, v, o).out,
                                    ops::attention(q.contiguous(), k.contiguous(), v.contiguous(), o).out) == 0.0);
}

TEST_CASE("attention: queries that see no key give zeros, and lse is the sink or -inf") {
  // Causal with Lq = 5 > Lk = 3: query i sees keys j <= i - 2, so queries 0 and 1 see none.
  Case c{.batch = 1, .heads = 2, .kv_heads = 2, .length_q = 5, .length_k = 3, .head_dim = 4, .causal = true};
  std::vector<Tensor> in = make_qkv(c, 400);
  ops::AttentionOptions options;
  options.causal = true;
  options.return_lse = true;
  {
    autograd::NoGradGuard no_grad;
    ops::AttentionResult r = ops::attention(in[0], in[1], in[2], options);
    std::vector<double> out = r.out.to_vector<double>(), lse = r.lse.to_vector<double>();
    for (int64_t h = 0; h < c.heads; ++h) {
      for (int64_t i = 0; i < 2; ++i) {
        CHECK(lse[h * c.length_q + i] == -INFINITY);
        for (int64_t d = 0; d < c.head_dim; ++d) CHECK(out[(h * c.length_q + i) * c.head_dim + d] == 0.0);
      }
      CHECK(std::isfinite(lse[h * c.length_q + 2]));
    }
    Tensor sinks = testing::random({c.heads}, 401);
    options.sinks = sinks;
    r = ops::attention(in[0], in[1], in[2], options);
    lse = r.lse.to_vector<double>();
    for (int64_t h = 0; h < c.heads; ++h) CHECK(lse[h * c.length_q] == sinks.to_vector<double>()[h]);
    options.sinks = Tensor();
  }
  // The gradients of q for the blind queries are zero, and finite differences agree.
  auto f = [&options](const std::vector<Tensor>& x) { return ops::attention(x[0], x[1], x[2], options).out; };
  testing::check_gradients(f, in);
  std::vector<double> dq = in[0].grad().to_vector<double>();
  for (int64_t d = 0; d < 2 * c.head_dim; ++d) CHECK(dq[d] == 0.0);
  // A bias of -inf hides keys the same way: every key hidden from query 0.
  autograd::NoGradGuard no_grad;
  ops::AttentionOptions masked;
  std::vector<double> bias_values(c.length_q * c.length_k, 0.0);
  for (int64_t j = 0; j < c.length_k; ++j) bias_values[j] = -INFINITY;
  masked.bias = Tensor::from_vector(bias_values, {c.length_q, c.length_k});
  masked.return_lse = true;
  ops::AttentionResult r = ops::attention(in[0], in[1], in[2], masked);
  CHECK(r.lse.to_vector<double>()[0] == -INFINITY);
  CHECK(testing::max_abs(ops::slice(r.out, 2, 0, 1)) == 0.0);
  CHECK(std::isfinite(r.lse.to_vector<double>()[1]));
}

TEST_CASE("attention probabilities: rows sum to one minus the sink's share") {
  autograd::NoGradGuard no_grad;
  Case c{.batch = 2, .heads = 3, .kv_heads = 1, .length_q = 6, .length_k = 8, .head_dim = 4};
  std::vector<Tensor> in = make_qkv(c, 500);
  ops::AttentionOptions options;
  options.causal = true;
  options.sinks = testing::random({c.heads}, 501);
  options.return_lse = true;
  options.return_probabilities = true;
  ops::AttentionResult r = ops::attention(in[0], in[1], in[2], options);
  CHECK(r.probabilities.shape() == Shape{c.batch, c.heads, c.length_q, c.length_k});
  Tensor sink_share = ops::exp(ops::sub(ops::reshape(options.sinks, {1, c.heads, 1}), r.lse));
  Tensor total = ops::add(ops::sum(r.probabilities, {3}), sink_share);
  CHECK(testing::max_abs_difference(total, Tensor::ones(total.shape(), DType::Float64)) < 1e-14);
  // Hidden keys have probability exactly zero: query 0 sees keys 0..2 (Lk - Lq = 2).
  std::vector<double> p = r.probabilities.to_vector<double>();
  for (int64_t j = 3; j < c.length_k; ++j) CHECK(p[j] == 0.0);
  // The output is the probabilities times V.
  Tensor out = ops::matmul(r.probabilities, repeat_kv(in[2], c.heads));
  CHECK(testing::max_abs_difference(out, r.out) < 1e-14);
}

TEST_CASE("attention in float32 agrees with float64 on the CPU") {
  autograd::NoGradGuard no_grad;
  Case c{.batch = 2, .heads = 4, .kv_heads = 2, .length_q = 33, .length_k = 70, .head_dim = 16};
  std::vector<Tensor> in = make_qkv(c, 600);
  ops::AttentionOptions options;
  options.causal = true;
  options.bias = testing::random({c.batch, 1, 1, c.length_k}, 601);
  options.sinks = testing::random({c.heads}, 602);
  options.return_lse = true;
  ops::AttentionResult exact = ops::attention(in[0], in[1], in[2], options);
  ops::AttentionOptions single = options;
  single.bias = options.bias.to(DType::Float32);
  ops::AttentionResult rounded =
      ops::attention(in[0].to(DType::Float32), in[1].to(DType::Float32), in[2].to(DType::Float32), single);
  CHECK(rounded.out.dtype() == DType::Float32);
  CHECK(rounded.lse.dtype() == DType::Float32);
  // float32 inputs carry 2^-24 relative error; sums over 70 keys and 16 dims stay near 1e-6.
  CHECK(testing::max_abs_difference(rounded.out, exact.out) < 1e-5);
  CHECK(testing::max_abs_difference(rounded.lse, exact.lse) < 1e-5);
}

TEST_CASE("attention in float32 on the CPU has gradients that agree with float64") {
  Case c{.batch = 1, .heads = 2, .kv_heads = 1, .length_q = 9, .length_k = 9, .head_dim = 8};
  std::vector<Tensor> exact = make_qkv(c, 700);
  std::vector<Tensor> single;
  for (const Tensor& t : exact) single.push_back(t.detach().to(DType::Float32).set_requires_grad(true));
  auto run = [&](const std::vector<Tensor>& x) {
    ops::AttentionOptions o;
    o.causal = true;
    Tensor out = ops::attention(x[0], x[1], x[2], o).out;
    autograd::backward(ops::sum(ops::mul(out, out)));
  };
  run(exact);
  run(single);
  for (size_t n = 0; n < 3; ++n) {
    CAPTURE(n);
    CHECK(single[n].grad().dtype() == DType::Float32);
    CHECK(testing::max_abs_difference(single[n].grad(), exact[n].grad()) < 1e-5);
  }
}

TEST_CASE("attention rejects bad arguments with messages that name them") {
  Tensor q = testing::random({2, 4, 5, 8}, 1), k = testing::random({2, 2, 6, 8}, 2),
         v = testing::random({2, 2, 6, 8}, 3);
  auto attend = [](const Tensor& q, const Tensor& k, const Tensor& v, const ops::AttentionOptions& o = {}) {
    return ops::attention(q, k, v, o);
  };
  CHECK_THROWS_WITH_AS(attend(ops::reshape(q, {8, 5, 8}), k, v),
                       doctest::Contains("attention: q float64[8, 5, 8] on cpu must be (batch, heads, Lq, head_dim)"),
                       Error);
  CHECK_THROWS_WITH_AS(
      attend(q, testing::random({2, 3, 6, 8}, 4), testing::random({2, 3, 6, 8}, 5)),
      doctest::Contains("the 4 heads of q float64[2, 4, 5, 8] on cpu are not a multiple of the 3 kv heads"), Error);
  CHECK_THROWS_WITH_AS(
      attend(q, testing::random({2, 2, 6, 7}, 4), v),
      doctest::Contains("k float64[2, 2, 6, 7] on cpu must be (batch, kv_heads, Lk, head_dim) = (2, kv_heads, Lk, 8)"),
      Error);
  CHECK_THROWS_WITH_AS(attend(q, k, testing::random({2, 2, 5, 8}, 4)),
                       doctest::Contains("v float64[2, 2, 5, 8] on cpu must have the shape of k float64[2, 2, 6, 8]"),
                       Error);
  CHECK_THROWS_WITH_AS(attend(q, k.to(DType::Float32), v), doctest::Contains("must share one dtype"), Error);
  CHECK_THROWS_WITH_AS(
      attend(q.to(DType::Int32), k, v),
      doctest::Contains("q int32[2, 4, 5, 8] on cpu is not supported (supported: float32, float64 on cpu)"), Error);
  CHECK_THROWS_WITH_AS(attend(testing::random({2, 4, 0, 8}, 6), k, v), doctest::Contains("must not be empty"), Error);

  ops::AttentionOptions o;
  o.bias = testing::random({2, 4, 5, 5}, 7);
  CHECK_THROWS_WITH_AS(
      attend(q, k, v, o),
      doctest::Contains("bias float64[2, 4, 5, 5] on cpu does not broadcast to [2, 4, 5, 6] (batch, heads, Lq, Lk)"),
      Error);
  o.bias = testing::random({1, 2, 4, 5, 6}, 7);
  CHECK_THROWS_WITH_AS(attend(q, k, v, o), doctest::Contains("does not broadcast to [2, 4, 5, 6]"), Error);
  o = {};
  o.sinks = testing::random({2}, 8);
  CHECK_THROWS_WITH_AS(attend(q, k, v, o), doctest::Contains("sinks float64[2] on cpu must have shape [4] (heads)"),
                       Error);
  o = {};
  o.query_temperature = testing::random({2, 4, 6}, 9);
  CHECK_THROWS_WITH_AS(
      attend(q, k, v, o),
      doctest::Contains("query_temperature float64[2, 4, 6] on cpu does not broadcast to [2, 4, 5] (batch, heads, Lq)"),
      Error);
  o = {};
  o.key_temperature = testing::random({2, 4, 6}, 10);  // per query head: it must be per kv head
  CHECK_THROWS_WITH_AS(
      attend(q, k, v, o),
      doctest::Contains(
          "key_temperature float64[2, 4, 6] on cpu does not broadcast to [2, 2, 6] (batch, kv_heads, Lk)"),
      Error);
  o = {};
  o.bias = Tensor::zeros({6}, DType::Int64);
  CHECK_THROWS_WITH_AS(attend(q, k, v, o), doctest::Contains("bias int64[6] on cpu must have a floating dtype"), Error);
  o = {};
  o.scale = INFINITY;
  CHECK_THROWS_WITH_AS(attend(q, k, v, o), doctest::Contains("scale must be finite"), Error);
  // The diagnostic probabilities are bounded before anything is computed.
  o = {};
  o.return_probabilities = true;
  const int64_t long_length = (int64_t{1} << 14) + 1;
  Tensor long_q = Tensor::zeros({1, 1, long_length, 1}, DType::Float64);
  CHECK_THROWS_WITH_AS(attend(long_q, long_q, long_q, o),
                       doctest::Contains("return_probabilities needs 268468225 elements"), Error);
}
