// nn::AttentionBlock with the `dma` pattern (Dynamic Mask Attention): the block equals
// ops::dynamic_mask_attention on its own projections with the key bias A softplus(dt)
// written out here, KV-cache steps equal the full forward, finite-difference
// gradients in double for the input and every parameter (A and dt_proj included),
// a tiny model that learns a retrieval task with it (the loss falls and A leaves
// zero), and the keep_window error.
#include <cmath>
#include <random>

#include "strata/autograd/autograd.h"
#include "strata/nn/attention.h"
#include "strata/nn/layers.h"
#include "strata/ops/attention.h"
#include "strata/ops/ops.h"
#include "strata/ops/rope.h"
#include "strata/optim/optimizer.h"
#include "support/attention_block.h"
#include "support/check.h"

using namespace strata;

namespace {

constexpr int64_t kVocab = 16, kDim = 32;  // the retrieval model

nn::AttentionBlockOptions dma_options(int64_t keep_window) {
  nn::AttentionBlockOptions o;
  o.d_model = 16;
  o.n_heads = 4;
  o.n_kv_heads = 2;
  o.pattern = nn::AttentionPattern::Dma;
  o.keep_window = keep_window;
  return o;
}

// A block in double with A drawn away from its initial zero (a zero A makes every
// bias 0, and the selection a plain "first keep_window keys").
std::shared_ptr<nn::AttentionBlock> make_block(const nn::AttentionBlockOptions& o, uint64_t seed) {
  return testing::attention_block_in_double(o, seed, {{"A", 2.0}});
}

// (batch, length, heads * head_dim) -> (batch, heads, length, head_dim)
Tensor split_heads(const Tensor& x, int64_t heads) {
  return ops::permute(ops::reshape(x, {x.size(0), x.size(1), heads, x.size(2) / heads}), {0, 2, 1, 3});
}

}  // namespace

TEST_CASE("dma block: its projections through dynamic_mask_attention with bias A softplus(v W_dt^T)") {
  const nn::AttentionBlockOptions o = dma_options(6);
  auto block = make_block(o, 1);
  Tensor x = testing::random({2, 40, 16}, 2);
  autograd::NoGradGuard no_grad;
  Tensor q = ops::rotary_embedding(split_heads(block->q_proj->forward(x), 4), 0, o.rope_base);
  Tensor k = ops::rotary_embedding(split_heads(block->k_proj->forward(x), 2), 0, o.rope_base);
  Tensor v_flat = block->v_proj->forward(x);  // (batch, length, kv_heads * head_dim)
  Tensor dt = ops::transpose(ops::linear(v_flat, block->dt_proj->parameter("weight")), 1, 2);
  Tensor bias = ops::mul(ops::softplus(dt), ops::reshape(block->parameter("A"), {1, 2, 1}));
  Tensor attended = ops::dynamic_mask_attention(q, k, split_heads(v_flat, 2), bias, 6);
  Tensor merged = ops::reshape(ops::permute(attended, {0, 2, 1, 3}), {2, 40, 16});
  CHECK(testing::max_abs_difference(block->forward(x), block->o_proj->forward(merged)) < 1e-12);
}

TEST_CASE("dma block: KV-cache steps equal the full forward") {
  auto block = make_block(dma_options(5), 3);
  const int64_t length = 41;
  Tensor x = testing::random({2, length, 16}, 4);
  autograd::NoGradGuard no_grad;
  Tensor full = block->forward(x);
  nn::KVCache cache;
  std::vector<Tensor> steps{block->forward_step(ops::slice(x, 1, 0, 3), cache)};  // a prefix of three tokens
  for (int64_t t = 3; t < length; ++t) steps.push_back(block->forward_step(ops::slice(x, 1, t, t + 1), cache));
  CHECK(cache.length() == length);
  CHECK(testing::max_abs_difference(ops::concat(steps, 1), full) < 1e-12);
}

TEST_CASE("dma block: gradients in double for the input and every parameter") {
  nn::AttentionBlockOptions o = dma_options(4);
  o.d_model = 8;
  o.n_heads = 2;
  o.n_kv_heads = 1;
  auto block = make_block(o, 5);
  Tensor x = testing::random({1, 19, 8}, 6, DType::Float64, -2.0, 2.0).set_requires_grad(true);
  std::vector<Tensor> inputs{x};
  for (const Tensor& p : block->parameters()) inputs.push_back(p);
  testing::check_gradients([&](const std::vector<Tensor>& in) { return block->forward(in[0]); }, inputs, 1e-6, 1e-6);
}

TEST_CASE("dma block: a one-layer model learns to retrieve a marked token, and A leaves zero") {
  // Each sequence holds noise tokens 4..15 and one marker token 0..3 at a random
  // position in the first half; from the marker on, every target is the marker
  // (nothing is scored before it). The window of 4 keys out of up to 32 must learn
  // to keep the marker: the value-derived bias is the only way there.
  constexpr int64_t kBatch = 16, kLength = 32;
  Generator generator{11, 0};
  nn::AttentionBlockOptions o = dma_options(4);
  o.d_model = kDim;
  o.n_heads = 2;
  o.n_kv_heads = 1;
  // embedding -> x + attention(x) -> head, vocabulary 16, width 32.
  struct Tiny : nn::Module {
    Tiny(const nn::AttentionBlockOptions& o, Generator& generator) {
      embedding = register_module("embedding", std::make_shared<nn::Embedding>(kVocab, kDim, generator, 0.5));
      attention = register_module("attention", std::make_shared<nn::AttentionBlock>(o, generator));
      head = register_module("head", std::make_shared<nn::Linear>(kDim, kVocab, false, generator));
    }
    std::shared_ptr<nn::Embedding> embedding;
    std::shared_ptr<nn::AttentionBlock> attention;
    std::shared_ptr<nn::Linear> head;
  } model(o, generator);
  optim::AdamW optimizer(model.named_parameters(), {.lr = 1e-2, .weight_decay = 0.0});

  std::mt19937_64 data(12);
  auto batch = [&]() {
    std::vector<int64_t> tokens(kBatch * kLength), targets(kBatch * kLength);
    for (int64_t b = 0; b < kBatch; ++b) {
      const int64_t marker_position = static_cast<int64_t>(data() % (kLength / 2));
      const int64_t marker = static_cast<int64_t>(data() % 4);
      for (int64_t t = 0; t < kLength; ++t)
        tokens[b * kLength + t] = t == marker_position ? marker : 4 + static_cast<int64_t>(data() % 12);
      for (int64_t t = 0; t < kLength; ++t)
        targets[b * kLength + t] = t >= marker_position ? marker : -100;  // scored from the marker on
    }
    return std::make_pair(Tensor::from_vector(tokens, {kBatch, kLength}), Tensor::from_vector(targets, {kBatch * kLength}));
  };
  double first = 0.0, last = 0.0;
  const int steps = 150;
  for (int step = 0; step < steps; ++step) {
    auto [tokens, targets] = batch();
    optimizer.zero_grad();
    Tensor h = model.embedding->forward(tokens);
    Tensor logits = model.head->forward(ops::add(h, model.attention->forward(h)));
    Tensor loss = ops::cross_entropy(ops::reshape(logits, {kBatch * kLength, kVocab}), targets);
    autograd::backward(loss);
    optimizer.step();
    if (step < 10) first += loss.item() / 10;
    if (step >= steps - 10) last += loss.item() / 10;
  }
  MESSAGE("dma retrieval: loss " << first << " -> " << last << " (chance ln 4 = " << std::log(4.0) << ")");
  CHECK(last < 0.5 * std::log(4.0));  // well below guessing among the 4 markers
  CHECK(testing::max_abs(model.attention->parameter("A")) > 0.01);
}

TEST_CASE("dma block: keep_window must be positive") {
  Generator generator{1, 0};
  CHECK_THROWS_WITH_AS(nn::AttentionBlock(dma_options(0), generator),
                       doctest::Contains("attention (dma): keep_window must be positive, got 0"), Error);
  CHECK(nn::parse_attention_pattern("dma") == nn::AttentionPattern::Dma);
}
