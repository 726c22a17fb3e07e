// nn::AttentionBlock: every pattern against a dense reference built from ops with
// the pattern's mask written out here from its definition (block_layout.h), GQA,
// sinks and Selective Attention's temperatures in the reference formula, the KV
// cache (token-by-token steps equal the full forward), finite-difference gradients
// of a tiny block in double for the input and every parameter, and option errors.
#include "strata/nn/attention.h"

#include <cmath>

#include "strata/autograd/autograd.h"
#include "strata/ops/ops.h"
#include "strata/ops/rope.h"
#include "support/attention_block.h"
#include "support/check.h"

using namespace strata;

namespace {

constexpr int64_t kBlock = 64;

nn::AttentionBlockOptions small_options(nn::AttentionPattern pattern) {
  nn::AttentionBlockOptions o;
  o.d_model = 16;
  o.n_heads = 4;
  o.n_kv_heads = 2;
  o.pattern = pattern;
  o.block_size = kBlock;
  o.window_blocks = 2;
  o.local_blocks = 1;
  o.sink_blocks = 1;
  o.vertical_stride = 3;
  o.dense_heads = 1;
  o.dilation = 2;
  return o;
}

// A block in double with the pattern's extra parameters set away from their
// initial values (zero sinks and temperature weights would hide their terms).
std::shared_ptr<nn::AttentionBlock> make_block(const nn::AttentionBlockOptions& o, uint64_t seed) {
  return testing::attention_block_in_double(
      o, seed, {{"sinks", 1.0}, {"query_temperature_weight", 0.5}, {"value_temperature_weight", 0.5}});
}

bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// Whether query i sees key j in head h (Lq == Lk), from the definitions in
// block_layout.h at block granularity plus the causal mask inside blocks.
bool visible(const nn::AttentionBlockOptions& o, int64_t h, int64_t i, int64_t j) {
  if (j > i) return false;
  int64_t qb = i / o.block_size, kb = j / o.block_size, distance = qb - kb;
  switch (o.pattern) {
    case nn::AttentionPattern::Sliding:
      return distance < o.window_blocks;
    case nn::AttentionPattern::Power:
      return distance < o.local_blocks || kb < o.sink_blocks || is_power_of_two(distance);
    case nn::AttentionPattern::S2: {
      if (h < o.dense_heads) return true;
      int64_t shard = h - o.dense_heads, sparse_heads = o.n_heads - o.dense_heads;
      int64_t step = std::max<int64_t>(1, o.vertical_stride / sparse_heads);
      return distance < o.local_blocks || (kb + shard * step + 1) % o.vertical_stride == 0;
    }
    case nn::AttentionPattern::Neighborhood:
      return distance % o.dilation == 0 && distance / o.dilation < o.window_blocks;
    default:
      return true;
  }
}

// The block's output recomputed from its weights with unfused ops: scores
// (batch, heads, L, L), -inf where the mask hides a key, softmax (with the sink as
// an extra column), times v.
Tensor reference_forward(nn::AttentionBlock& block, const Tensor& x) {
  const nn::AttentionBlockOptions& o = block.options();
  int64_t batch = x.size(0), length = x.size(1), hd = block.head_dim(), group = o.n_heads / o.n_kv_heads;
  auto heads_of = [&](const Tensor& t, int64_t heads) {
    return ops::permute(ops::reshape(t, {batch, length, heads, hd}), {0, 2, 1, 3});
  };
  Tensor q = ops::rotary_embedding(heads_of(block.q_proj->forward(x), o.n_heads), 0, o.rope_base);
  Tensor k = ops::rotary_embedding(heads_of(block.k_proj->forward(x), o.n_kv_heads), 0, o.rope_base);
  Tensor v = heads_of(block.v_proj->forward(x), o.n_kv_heads);
  if (o.pattern == nn::AttentionPattern::Selective) {
    // tau_q = (1 + exp(-exp(beta)) log n) * 2 sigmoid(x . w_h), tau_v = 2 sigmoid(x . u_g).
    double strength = std::exp(-std::exp(block.parameter("selective_beta").item()));
    std::vector<double> position_term(static_cast<size_t>(length));
    for (int64_t n = 1; n <= length; ++n) position_term[static_cast<size_t>(n - 1)] = 1.0 + strength * std::log(double(n));
    Tensor tau_q = ops::mul(ops::sigmoid(ops::linear(x, block.parameter("query_temperature_weight"))), 2.0);
    tau_q = ops::mul(ops::transpose(tau_q, 1, 2), Tensor::from_vector(position_term, {length}));
    q = ops::mul(q, ops::unsqueeze(tau_q, 3));
    Tensor tau_v = ops::mul(ops::sigmoid(ops::linear(x, block.parameter("value_temperature_weight"))), 2.0);
    v = ops::mul(v, ops::unsqueeze(ops::transpose(tau_v, 1, 2), 3));
  }
  // GQA: query head h reads kv head h / group.
  std::vector<int64_t> kv_of_head;
  for (int64_t h = 0; h < o.n_heads; ++h) kv_of_head.push_back(h / group);
  Tensor head_index = Tensor::from_vector(kv_of_head, {o.n_heads});
  k = ops::index_select(k, 1, head_index);
  v = ops::index_select(v, 1, head_index);
  Tensor scores = ops::mul(ops::matmul(q, ops::transpose(k, 2, 3)), 1.0 / std::sqrt(double(hd)));
  std::vector<uint8_t> hidden(static_cast<size_t>(o.n_heads * length * length));
  for (int64_t h = 0; h < o.n_heads; ++h)
    for (int64_t i = 0; i < length; ++i)
      for (int64_t j = 0; j < length; ++j)
        hidden[static_cast<size_t>((h * length + i) * length + j)] = visible(o, h, i, j) ? 0 : 1;
  scores = ops::masked_fill(scores, Tensor::from_vector(hidden, {o.n_heads, length, length}), -INFINITY);
  Tensor probabilities;
  if (o.pattern == nn::AttentionPattern::Sinks) {
    Tensor sink_column = ops::expand(ops::reshape(block.parameter("sinks"), {1, o.n_heads, 1, 1}), {batch, -1, length, 1});
    probabilities = ops::slice(ops::softmax(ops::concat({scores, sink_column}, 3), 3), 3, 0, length);
  } else {
    probabilities = ops::softmax(scores, 3);
  }
  Tensor context = ops::reshape(ops::permute(ops::matmul(probabilities, v), {0, 2, 1, 3}), {batch, length, o.d_model});
  return block.o_proj->forward(context);
}

const nn::AttentionPattern kAllPatterns[] = {
    nn::AttentionPattern::Dense,        nn::AttentionPattern::Sliding, nn::AttentionPattern::Power,
    nn::AttentionPattern::S2,           nn::AttentionPattern::Neighborhood, nn::AttentionPattern::Sinks,
    nn::AttentionPattern::Selective};

}  // namespace

TEST_CASE("every pattern equals the dense block with the pattern's mask") {
  // 6 blocks of 64 and a partial one, so power's distance 3 is skipped and
  // neighborhood's dilation and s2's shards all show.
  int64_t length = 6 * kBlock + 13;
  Tensor x = testing::random({2, length, 16}, 11);
  for (nn::AttentionPattern pattern : kAllPatterns) {
    CAPTURE(nn::attention_pattern_name(pattern));
    auto block = make_block(small_options(pattern), 3);
    autograd::NoGradGuard no_grad;
    Tensor out = block->forward(x);
    CHECK(testing::max_abs_difference(out, reference_forward(*block, x)) < 1e-12);
    if (pattern != nn::AttentionPattern::Dense) {
      // The pattern matters: the dense block with the same weights differs.
      nn::AttentionBlockOptions dense = small_options(nn::AttentionPattern::Dense);
      auto dense_block = make_block(dense, 3);
      CHECK(testing::max_abs_difference(out, dense_block->forward(x)) > 1e-6);
    }
  }
}

TEST_CASE("multi-head, grouped and multi-query heads") {
  Tensor x = testing::random({1, 70, 16}, 12);
  for (int64_t kv_heads : {4, 2, 1}) {
    nn::AttentionBlockOptions o = small_options(nn::AttentionPattern::Sliding);
    o.n_kv_heads = kv_heads;
    o.window_blocks = 1;
    auto block = make_block(o, 4);
    CHECK(block->k_proj->out_features() == kv_heads * 4);
    autograd::NoGradGuard no_grad;
    CHECK(testing::max_abs_difference(block->forward(x), reference_forward(*block, x)) < 1e-12);
  }
}

TEST_CASE("a KV-cache step equals the full forward token by token") {
  int64_t length = 2 * kBlock + 9;
  Tensor x = testing::random({2, length, 16}, 13);
  for (nn::AttentionPattern pattern : kAllPatterns) {
    if (pattern == nn::AttentionPattern::Neighborhood) continue;
    CAPTURE(nn::attention_pattern_name(pattern));
    nn::AttentionBlockOptions o = small_options(pattern);
    o.window_blocks = 1;  // sliding: a window that drops the first block before the end
    o.vertical_stride = 2;
    auto block = make_block(o, 5);
    autograd::NoGradGuard no_grad;
    Tensor full = block->forward(x);
    nn::KVCache cache;
    std::vector<Tensor> steps;
    // A dense prefix of three tokens at once for the dense patterns, then one at a time.
    int64_t first = (pattern == nn::AttentionPattern::Dense || pattern == nn::AttentionPattern::Sinks ||
                     pattern == nn::AttentionPattern::Selective) ? 3 : 1;
    steps.push_back(block->forward_step(ops::slice(x, 1, 0, first), cache));
    for (int64_t t = first; t < length; ++t) steps.push_back(block->forward_step(ops::slice(x, 1, t, t + 1), cache));
    CHECK(cache.length() == length);
    CHECK(testing::max_abs_difference(ops::concat(steps, 1), full) < 1e-12);
  }
}

TEST_CASE("gradients of a tiny block in double, for the input and every parameter") {
  for (nn::AttentionPattern pattern : kAllPatterns) {
    CAPTURE(nn::attention_pattern_name(pattern));
    nn::AttentionBlockOptions o = small_options(pattern);
    o.d_model = 8;
    o.n_heads = 2;
    o.n_kv_heads = 1;
    o.window_blocks = 1;
    o.vertical_stride = 2;
    auto block = make_block(o, 6);
    Tensor x = testing::random({1, kBlock + 5, 8}, 14, DType::Float64, -2.0, 2.0).set_requires_grad(true);
    std::vector<Tensor> inputs{x};
    for (const Tensor& p : block->parameters()) inputs.push_back(p);
    testing::check_gradients([&](const std::vector<Tensor>& in) { return block->forward(in[0]); }, inputs, 1e-6, 1e-6);
  }
}

TEST_CASE("the layout is built once per length and device") {
  auto block = make_block(small_options(nn::AttentionPattern::Power), 7);
  const kernels::BlockLayout& first = block->layout(200, 200, Device::cpu());
  CHECK(&first == &block->layout(200, 200, Device::cpu()));
  CHECK(first.query_length() == 200);
  CHECK(&first != &block->layout(300, 300, Device::cpu()));
}

TEST_CASE("attention block option errors") {
  Generator generator{1, 0};
  auto build = [&](const nn::AttentionBlockOptions& o) { return nn::AttentionBlock(o, generator).head_dim(); };
  nn::AttentionBlockOptions o = small_options(nn::AttentionPattern::Dense);
  o.n_kv_heads = 3;
  CHECK_THROWS_WITH_AS(build(o), doctest::Contains("n_heads (4) must be a multiple of n_kv_heads (3)"), Error);
  o = small_options(nn::AttentionPattern::S2);
  o.dense_heads = 4;
  CHECK_THROWS_WITH_AS(build(o), doctest::Contains("dense_heads (4)"), Error);
  o = small_options(nn::AttentionPattern::Sliding);
  o.block_size = 32;
  CHECK_THROWS_WITH_AS(build(o), doctest::Contains("block_size must be 64 or 128"), Error);
  o = small_options(nn::AttentionPattern::Dense);
  o.d_model = 12;  // head_dim 3
  CHECK_THROWS_WITH_AS(build(o), doctest::Contains("must be even for RoPE"), Error);
  CHECK_THROWS_WITH_AS(nn::parse_attention_pattern("global"), doctest::Contains("unknown pattern 'global'"), Error);

  auto block = make_block(small_options(nn::AttentionPattern::Sliding), 8);
  autograd::NoGradGuard no_grad;
  nn::KVCache cache;
  block->forward_step(testing::random({1, 4, 16}, 15), cache);
  CHECK_THROWS_WITH_AS(block->forward_step(testing::random({1, 2, 16}, 16), cache),
                       doctest::Contains("one token at a time"), Error);
  CHECK_THROWS_WITH_AS(block->forward(testing::random({1, 4, 8}, 17)), doctest::Contains("x must be (batch, length, 16)"),
                       Error);
}
