// The `llama` model family on the CPU: its modules and parameter names, its keys
// validated (each pattern accepts only its own), any length without max_length,
// KV-cache decoding token by token equal to the full forward in double for every
// pattern that decodes, and a short King James byte-LM run whose validation loss
// must fall below the corpus's unigram entropy.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "strata/config/config.h"
#include "strata/data/dataset.h"
#include "strata/data/loader.h"
#include "strata/models/model.h"
#include "strata/optim/grad_clip.h"
#include "strata/optim/optimizer.h"
#include "support/check.h"
#include "support/models.h"
#include "support/decoding.h"

using namespace strata;

namespace {

std::shared_ptr<models::Model> build(const std::string& model_keys, uint64_t seed = 0) {
  return testing::build_model("llama", model_keys, seed);
}

const char* kTiny = "  vocab_size: 11\n  d_model: 16\n  n_layers: 2\n  n_heads: 4\n  n_kv_heads: 2\n  mlp_ratio: 2\n";

std::string with_attention(const std::string& attention_keys) {
  return std::string(kTiny) + "  attention:\n" + attention_keys;
}

}  // namespace

TEST_CASE("llama builds embedding, pre-norm GQA/SwiGLU blocks, a final norm and a tied head") {
  auto model = build(with_attention("    pattern: dense\n"));
  std::vector<std::string> names;
  for (const nn::NamedParameter& p : model->named_parameters()) names.push_back(p.name);
  const std::vector<std::string> block{"attention_norm.weight", "attention.q_proj.weight", "attention.k_proj.weight",
                                       "attention.v_proj.weight", "attention.o_proj.weight", "mlp_norm.weight",
                                       "mlp.gate.weight", "mlp.up.weight", "mlp.down.weight"};
  std::vector<std::string> expected{"embedding.weight"};
  for (int layer = 0; layer < 2; ++layer)
    for (const std::string& name : block) expected.push_back("layers." + std::to_string(layer) + "." + name);
  expected.push_back("final_norm.weight");
  CHECK(names == expected);
  // Per block: q, o 16x16; k, v 16x8 (2 kv heads of 4); SwiGLU 3 x 16x32; two norms.
  const int64_t per_block = 2 * 256 + 2 * 128 + 3 * 512 + 2 * 16;
  CHECK(model->num_parameters() == 11 * 16 + 2 * per_block + 16);
  CHECK(model->max_length() == 0);

  auto untied = build(with_attention("    pattern: sinks\n") + "  tie_embeddings: false\n");
  names.clear();
  for (const nn::NamedParameter& p : untied->named_parameters()) names.push_back(p.name);
  CHECK(std::find(names.begin(), names.end(), "head.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "layers.1.attention.sinks") != names.end());

  // No learned positions: lengths beyond one block and not multiples of it run.
  autograd::NoGradGuard no_grad;
  CHECK(model->forward(Tensor::zeros({1, 150}, DType::Int64)).shape() == Shape{1, 150, 11});
}

TEST_CASE("llama validates its keys") {
  CHECK_THROWS_WITH_AS(build(with_attention("    pattern: global\n")), doctest::Contains("model.attention.pattern"), Error);
  CHECK_THROWS_WITH_AS(build(kTiny), doctest::Contains("model.attention.pattern"), Error);
  // A key of another pattern is not read, so it is reported as unknown.
  CHECK_THROWS_WITH_AS(build(with_attention("    pattern: dense\n    window_blocks: 2\n")),
                       doctest::Contains("window_blocks"), Error);
  CHECK_THROWS_WITH_AS(build(with_attention("    pattern: sliding\n")), doctest::Contains("window_blocks"), Error);
  CHECK_THROWS_WITH_AS(build(with_attention("    pattern: sliding\n    window_blocks: 2\n    block_size: 32\n")),
                       doctest::Contains("model.attention.block_size: expected 64 or 128, got 32"), Error);
  auto wide_blocks = build(with_attention("    pattern: sliding\n    window_blocks: 2\n    block_size: 128\n"));
  {
    autograd::NoGradGuard no_grad;
    CHECK(wide_blocks->forward(Tensor::zeros({1, 130}, DType::Int64)).shape() == Shape{1, 130, 11});
  }
  CHECK_THROWS_WITH_AS(build(with_attention("    pattern: s2\n    vertical_stride: 4\n    dense_heads: 4\n")),
                       doctest::Contains("dense_heads"), Error);
  CHECK_THROWS_WITH_AS(build(std::string(kTiny) + "  n_kv_heads: 3\n  attention:\n    pattern: dense\n"),
                       doctest::Contains("n_kv_heads"), Error);
  auto limited = build(with_attention("    pattern: dense\n") + "  max_length: 8\n");
  CHECK_THROWS_WITH_AS(limited->forward(Tensor::zeros({1, 9}, DType::Int64)), doctest::Contains("exceeds model.max_length 8"),
                       Error);
}

TEST_CASE("llama decoding with a KV cache gives the logits of the full forward (double)") {
  for (const char* attention : {"    pattern: dense\n", "    pattern: sliding\n    window_blocks: 1\n",
                                "    pattern: power\n    local_blocks: 1\n    sink_blocks: 1\n",
                                "    pattern: s2\n    vertical_stride: 2\n    dense_heads: 1\n", "    pattern: sinks\n",
                                "    pattern: selective\n"}) {
    CAPTURE(attention);
    auto model = build(with_attention(attention), 3);
    model->to(DType::Float64);
    model->eval();
    const int64_t batch = 2, length = 64 + 6;  // crosses a block boundary
    Generator generator{5, 0};
    Tensor tokens = ops::cast(rand_uniform({batch, length}, 0, 11, DType::Float64, Device::cpu(), generator), DType::Int64);
    autograd::NoGradGuard no_grad;
    Tensor full = model->forward(tokens);
    std::unique_ptr<models::DecodingState> state = model->start_decoding(batch);
    REQUIRE(state != nullptr);
    double worst = testing::max_decode_difference(*model, *state, tokens, full, 11);
    CHECK_MESSAGE(worst < 1e-11, "max |decode - forward| = " << worst);
  }
  auto neighborhood = build(with_attention("    pattern: neighborhood\n    window_blocks: 2\n"));
  CHECK(neighborhood->start_decoding(1) == nullptr);
}

TEST_CASE("a small llama learns King James bytes on the CPU") {
  const char* source = std::getenv("STRATA_SOURCE_DIR");
  std::string folder = std::string(source ? source : ".") + "/data/generated/bible_kjv";
  config::Config data_config = config::Config::from_yaml_string(
      "data:\n  name: bible_kjv\n  seq_len: 64\n  path: " + folder + "\n", "test data");
  auto model = build("  d_model: 64\n  n_layers: 2\n  n_heads: 4\n  n_kv_heads: 2\n  attention:\n    pattern: dense\n", 1);
  optim::AdamWOptions adamw;
  adamw.lr = 3e-3;
  optim::AdamW optimizer(model->named_parameters(), adamw);
  data::Loader loader(data::make_dataset(data_config, "data", data::Split::Train), 16, 0);
  const int steps = 150;
  for (int step = 0; step < steps; ++step) {
    data::Batch batch = loader.next();
    optimizer.zero_grad();
    Tensor loss = ops::cross_entropy(ops::reshape(model->forward(batch.inputs), {-1, 256}),
                                     ops::reshape(batch.targets, {-1}));
    autograd::backward(loss);
    optim::clip_grad_norm(model->parameters(), 1.0);
    optimizer.step();
  }
  autograd::NoGradGuard no_grad;
  model->eval();
  data::Loader validation(data::make_dataset(data_config, "data", data::Split::Val), 64, 0, 0, 1, false);
  double total = 0;
  const int batches = 4;
  for (int b = 0; b < batches; ++b) {
    data::Batch batch = validation.next();
    total += ops::cross_entropy(ops::reshape(model->forward(batch.inputs), {-1, 256}), ops::reshape(batch.targets, {-1}))
                 .item();
  }
  double loss = total / batches;
  MESSAGE("validation loss after " << steps << " steps: " << loss << " nats");
  // The unigram entropy of the corpus is 4.34 bits = 3.01 nats per byte; 2.5 nats
  // needs the model to use the context.
  CHECK(loss < 2.5);
}
