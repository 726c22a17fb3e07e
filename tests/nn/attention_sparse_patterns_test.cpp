// AttentionBlock's topk and neighborhood2d patterns and its SSA modes, on the CPU in
// double: topk equals dense causal attention when it keeps every block and differs
// when it keeps fewer; neighborhood2d equals attention with an explicit NATTEN mask
// over the block's own projections; the Full mode equals the dense pattern; and the
// SSA alignment loss has the gradient its stop-gradients define, checked against
// finite differences (the outputs' own gradients are those of the topk and dense
// paths, checked above and in attention_block_test.cpp).
#include <cmath>

#include "strata/kernels/block_layout.h"
#include "strata/nn/attention.h"
#include "strata/ops/attention.h"
#include "strata/ops/rope.h"
#include "support/check.h"

using namespace strata;
using nn::AttentionBlock;
using nn::AttentionBlockOptions;
using nn::AttentionPattern;

namespace {

AttentionBlockOptions small_options(AttentionPattern pattern) {
  AttentionBlockOptions o;
  o.d_model = 16;
  o.n_heads = 4;
  o.n_kv_heads = 2;
  o.pattern = pattern;
  return o;
}

// The same weights for every pattern: the projections are drawn first, in one order.
std::shared_ptr<AttentionBlock> make_block(const AttentionBlockOptions& o) {
  Generator generator{7, 0};
  auto block = std::make_shared<AttentionBlock>(o, generator);
  block->to(DType::Float64);
  return block;
}

Tensor input(int64_t batch, int64_t length, uint64_t seed) {
  return testing::random({batch, length, 16}, seed).set_requires_grad(true);
}

}  // namespace

TEST_CASE("AttentionBlock topk: dense causal when every block is kept, different with fewer") {
  AttentionBlockOptions all = small_options(AttentionPattern::TopK);
  all.top_k = 5;  // 300 tokens: 5 blocks of 64
  AttentionBlockOptions few = all;
  few.top_k = 2;
  const Tensor x = input(2, 300, 1);
  const Tensor dense = make_block(small_options(AttentionPattern::Dense))->forward(x);
  CHECK(testing::max_abs_difference(make_block(all)->forward(x), dense) < 1e-12);
  const Tensor sparse = make_block(few)->forward(x);
  // The first two query blocks see all their blocks either way; later ones do not.
  CHECK(testing::max_abs_difference(ops::slice(sparse, 1, 0, 128), ops::slice(dense, 1, 0, 128)) < 1e-12);
  CHECK(testing::max_abs_difference(ops::slice(sparse, 1, 128, 300), ops::slice(dense, 1, 128, 300)) > 1e-4);
  auto block = make_block(few);
  testing::check_gradients([&](const std::vector<Tensor>& in) { return block->forward(in[0]); }, {input(1, 140, 2)});
}

TEST_CASE("AttentionBlock neighborhood2d equals attention with an explicit NATTEN mask") {
  AttentionBlockOptions o = small_options(AttentionPattern::Neighborhood2D);
  o.grid_height = 9;
  o.grid_width = 12;
  o.window_height = 3;
  o.window_width = 5;
  o.dilation = 2;
  auto block = make_block(o);
  const Tensor x = input(2, 108, 3);
  // The block's own projections, rotary positions 0..107 and the mask as a dense bias.
  auto heads = [](const Tensor& t, int64_t n) { return ops::permute(ops::reshape(t, {2, 108, n, 4}), {0, 2, 1, 3}); };
  Tensor q = ops::rotary_embedding(heads(block->q_proj->forward(x), 4), 0, o.rope_base);
  Tensor k = ops::rotary_embedding(heads(block->k_proj->forward(x), 2), 0, o.rope_base);
  Tensor v = heads(block->v_proj->forward(x), 2);
  ops::AttentionOptions masked;
  masked.bias = kernels::neighborhood_2d_mask(9, 12, 3, 5, 2, 2).to(DType::Float64);
  Tensor attended = ops::attention(q, k, v, masked).out;
  Tensor expected = block->o_proj->forward(ops::reshape(ops::permute(attended, {0, 2, 1, 3}), {2, 108, 16}));
  CHECK(testing::max_abs_difference(block->forward(x), expected) < 1e-12);
  testing::check_gradients([&](const std::vector<Tensor>& in) { return block->forward(in[0]); }, {input(1, 108, 4)});
  CHECK_THROWS_WITH_AS(block->forward(input(1, 100, 5)), doctest::Contains("needs Lq == Lk == height * width = 108"),
                       Error);
}

TEST_CASE("AttentionBlock SSA modes: Full is dense causal, the aligned modes return their branch") {
  AttentionBlockOptions o = small_options(AttentionPattern::TopK);
  o.top_k = 2;
  const Tensor x = input(2, 256, 6);
  const Tensor dense = make_block(small_options(AttentionPattern::Dense))->forward(x);
  auto block = make_block(o);
  const Tensor sparse = block->forward(x);
  block->set_ssa_mode(AttentionBlock::SsaMode::Full);
  CHECK(testing::max_abs_difference(block->forward(x), dense) < 1e-12);
  block->set_ssa_mode(AttentionBlock::SsaMode::AlignFull);
  CHECK(testing::max_abs_difference(block->forward(x), dense) < 1e-12);
  const double loss_full = block->alignment_loss().item();
  block->set_ssa_mode(AttentionBlock::SsaMode::AlignSparse);
  CHECK(testing::max_abs_difference(block->forward(x), sparse) < 1e-12);
  CHECK(block->alignment_loss().item() == doctest::Approx(loss_full).epsilon(1e-12));
  CHECK(loss_full > 0.0);
}

TEST_CASE("SSA alignment loss: its gradient is that of the stop-gradient pair") {
  // L = S(full, sg(sparse)) + S(sg(full), sparse) with S symmetric: its value is
  // 2 S(full, sparse), but each term differentiates one branch only, so dL/dx equals
  // d S(full, sparse) / dx, i.e. the finite differences of L / 2. A loss without the
  // stop-gradients would give twice that; one that dropped a branch would miss its
  // part (checked below through the parameters of both branches: q_proj feeds both).
  AttentionBlockOptions o = small_options(AttentionPattern::TopK);
  o.top_k = 2;
  auto block = make_block(o);
  block->set_ssa_mode(AttentionBlock::SsaMode::AlignSparse);
  const Tensor x = input(1, 140, 8);
  std::vector<Tensor> checked{x, block->q_proj->weight(), block->v_proj->weight()};
  for (const Tensor& t : checked) t.impl()->grad.reset();
  block->forward(x);
  autograd::backward(block->alignment_loss());
  for (const Tensor& t : checked) {
    REQUIRE(t.grad().defined());
    const std::vector<double> analytic = t.grad().to_vector<double>();
    double* values = t.data<double>();
    double worst = 0.0;
    const double eps = 1e-6;
    for (int64_t i = 0; i < t.numel(); i += 5) {  // every 5th entry keeps the test fast
      autograd::NoGradGuard no_grad;
      const double saved = values[i];
      values[i] = saved + eps;
      block->forward(x);
      const double plus = block->alignment_loss().item();
      values[i] = saved - eps;
      block->forward(x);
      const double minus = block->alignment_loss().item();
      values[i] = saved;
      const double numeric = (plus - minus) / (2 * eps) / 2;
      worst = std::max(worst, std::fabs(analytic[i] - numeric) / std::max(1.0, std::fabs(numeric)));
    }
    CHECK(worst < 1e-6);
  }
}

TEST_CASE("AttentionBlock options: topk and neighborhood2d keys are validated") {
  AttentionBlockOptions o = small_options(AttentionPattern::TopK);
  o.top_k = 1;
  o.topk_keep_first = true;
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("top_k must be at least 2, got 1"), Error);
  AttentionBlockOptions grid = small_options(AttentionPattern::Neighborhood2D);
  CHECK_THROWS_WITH_AS(grid.validate(), doctest::Contains("grid (0 x 0) and window (3 x 3) must be positive"), Error);
  CHECK(nn::parse_attention_pattern("topk") == AttentionPattern::TopK);
  CHECK(std::string(nn::attention_pattern_name(AttentionPattern::Neighborhood2D)) == "neighborhood2d");
}
