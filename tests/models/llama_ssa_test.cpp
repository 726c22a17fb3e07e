// The llama family's topk pattern and SSA training modes (model.ssa) on the CPU:
// keys validated, the auxiliary loss present only when training with train: ssa,
// inference: full equal to the dense model with the same weights, the per-pass draw
// of full or sparse, and the alignment loss's gradient reaching the parameters with
// and without activation checkpointing.
#include <cmath>

#include "strata/config/config.h"
#include "strata/models/model.h"
#include "support/check.h"

using namespace strata;

namespace {

std::shared_ptr<models::Model> build(const std::string& extra_keys, const std::string& pattern = "topk") {
  Generator generator{3, 0};
  std::string yaml = "model:\n  family: llama\n  vocab_size: 11\n  d_model: 16\n  n_layers: 2\n  n_heads: 4\n"
                     "  n_kv_heads: 2\n  mlp_ratio: 2\n  attention:\n    pattern: " +
                     pattern + "\n" + (pattern == "topk" ? "    top_k: 2\n" : "") + extra_keys;
  config::Config c = config::Config::from_yaml_string(yaml, "test recipe");
  auto model = models::build_model(c, generator);
  c.check_all_read();
  model->to(DType::Float64);
  return model;
}

Tensor tokens(int64_t batch, int64_t length, uint64_t seed) {
  Generator generator{seed, 0};
  return ops::cast(rand_uniform({batch, length}, 0, 11, DType::Float64, Device::cpu(), generator), DType::Int64);
}

}  // namespace

TEST_CASE("llama model.ssa: keys only with a block-sparse pattern, choices named") {
  CHECK_THROWS_WITH_AS(build("  ssa:\n    train: ssa\n", "dense"), doctest::Contains("model.ssa"), Error);
  CHECK_THROWS_WITH_AS(build("  ssa:\n    train: both\n"), doctest::Contains("sparse, full, ssa"), Error);
  CHECK_THROWS_WITH_AS(build("    keep_first: true\n    top_k: 1\n"), doctest::Contains("top_k"), Error);
  CHECK_NOTHROW(build("  ssa:\n    train: ssa\n    inference: full\n    alpha: 1\n    full_probability: 0.25\n"));
}

TEST_CASE("llama SSA: the auxiliary loss comes with train: ssa only, and inference: full is the dense model") {
  const Tensor x = tokens(2, 256, 1);
  auto sparse_model = build("");
  CHECK_FALSE(sparse_model->auxiliary_loss().defined());
  sparse_model->forward(x);
  CHECK_FALSE(sparse_model->auxiliary_loss().defined());

  auto ssa = build("  ssa:\n    train: ssa\n    alpha: 10\n");
  ssa->forward(x);
  REQUIRE(ssa->auxiliary_loss().defined());
  CHECK(ssa->auxiliary_loss().item() > 0.0);
  ssa->eval();
  const Tensor sparse_logits = ssa->forward(x);
  CHECK_FALSE(ssa->auxiliary_loss().defined());

  auto dense = build("", "dense");
  dense->eval();
  const Tensor dense_logits = dense->forward(x);
  auto full = build("  ssa:\n    train: ssa\n    inference: full\n");
  full->eval();
  CHECK(testing::max_abs_difference(full->forward(x), dense_logits) < 1e-12);
  CHECK(testing::max_abs_difference(sparse_logits, dense_logits) > 1e-6);
  // train: full trains the dense model.
  auto trained_full = build("  ssa:\n    train: full\n");
  CHECK(testing::max_abs_difference(trained_full->forward(x), dense_logits) < 1e-12);
}

TEST_CASE("llama SSA: each training pass draws full or sparse for the whole network") {
  const Tensor x = tokens(1, 200, 2);
  auto ssa = build("  ssa:\n    train: ssa\n");
  auto dense = build("", "dense");
  auto sparse = build("");
  const Tensor dense_logits = dense->forward(x), sparse_logits = sparse->forward(x);
  int full_passes = 0, sparse_passes = 0;
  for (int pass = 0; pass < 24; ++pass) {
    const Tensor logits = ssa->forward(x);
    const bool is_full = testing::max_abs_difference(logits, dense_logits) < 1e-12;
    const bool is_sparse = testing::max_abs_difference(logits, sparse_logits) < 1e-12;
    CHECK(is_full != is_sparse);
    full_passes += is_full;
    sparse_passes += is_sparse;
  }
  CHECK(full_passes > 0);
  CHECK(sparse_passes > 0);
}

TEST_CASE("llama SSA: the alignment loss's gradient is the same with activation checkpointing") {
  const Tensor x = tokens(1, 200, 3);
  std::vector<std::vector<double>> grads;
  for (const char* checkpointing : {"false", "true"}) {
    auto model = build(std::string("  activation_checkpointing: ") + checkpointing + "\n  ssa:\n    train: ssa\n");
    manual_seed(5);  // the same draw of full or sparse
    model->forward(x);
    autograd::backward(model->auxiliary_loss());
    std::vector<double> all;
    for (const Tensor& p : model->parameters()) {  // a parameter the loss does not reach may get no gradient
      const std::vector<double> g = p.grad().defined() ? p.grad().to_vector<double>() : std::vector<double>(p.numel());
      all.insert(all.end(), g.begin(), g.end());
    }
    grads.push_back(all);
  }
  REQUIRE(grads[0].size() == grads[1].size());
  REQUIRE(!grads[0].empty());
  double worst = 0, largest = 0;
  for (size_t i = 0; i < grads[0].size(); ++i) {
    worst = std::max(worst, std::fabs(grads[0][i] - grads[1][i]));
    largest = std::max(largest, std::fabs(grads[0][i]));
  }
  CHECK(largest > 0);
  CHECK(worst < 1e-12);
}
