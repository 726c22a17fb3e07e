// model.attention.dense_layers of the `llama` family (S2-Attention's hybrid: the
// listed layers attend densely, the others by the pattern), on the CPU in double:
// each built layer's attention equals a dense or a pattern AttentionBlock holding its
// weights, a model with every layer listed has the dense model's loss and
// gradients, the SSA alignment is averaged over the sparse layers only, KV-cache
// decoding still equals the forward pass, and bad values are one-line errors naming
// the key.
#include <algorithm>
#include <string>
#include <vector>

#include "strata/config/config.h"
#include "strata/models/model.h"
#include "strata/nn/attention.h"
#include "support/check.h"
#include "support/models.h"
#include "support/decoding.h"

using namespace strata;

namespace {

const char* kTiny = "  vocab_size: 11\n  d_model: 16\n  n_heads: 4\n  n_kv_heads: 2\n  mlp_ratio: 2\n";
// 1 dense head and 3 strided shards (stride 2, local window 1 block): at 4 blocks of
// 64 each sparse head drops some distant blocks, so its output differs from dense.
const char* kS2 = "  attention:\n    pattern: s2\n    vertical_stride: 2\n    dense_heads: 1\n";

std::shared_ptr<models::Model> build(const std::string& model_keys, uint64_t seed = 0) {
  return testing::build_model("llama", model_keys, seed);
}

std::string layers(int n_layers) { return "  n_layers: " + std::to_string(n_layers) + "\n"; }

nn::AttentionBlock& attention_of(models::Model& model, int layer) {
  const std::string name = "layers." + std::to_string(layer) + ".attention";
  for (auto& [path, module] : model.named_modules())
    if (path == name) {
      auto* attention = dynamic_cast<nn::AttentionBlock*>(module);
      REQUIRE(attention != nullptr);
      return *attention;
    }
  FAIL("no module " << name);
  throw;  // unreachable: FAIL throws
}

// A fresh block of `options` holding the weights of `source` (same parameter names).
std::shared_ptr<nn::AttentionBlock> copy_of(const nn::AttentionBlock& source,
                                            const nn::AttentionBlockOptions& options) {
  Generator generator{99, 0};
  auto copy = std::make_shared<nn::AttentionBlock>(options, generator);
  copy->to(DType::Float64);
  std::vector<nn::NamedParameter> from = source.named_parameters(), to = copy->named_parameters();
  REQUIRE(from.size() == to.size());
  autograd::NoGradGuard no_grad;
  for (size_t i = 0; i < from.size(); ++i) {
    REQUIRE(from[i].name == to[i].name);
    to[i].tensor.copy_(from[i].tensor);
  }
  return copy;
}

Tensor random_tokens(int64_t batch, int64_t length, uint64_t seed) {
  Generator generator{seed, 0};
  return ops::cast(rand_uniform({batch, length}, 0, 11, DType::Float64, Device::cpu(), generator), DType::Int64);
}

Tensor loss_of(models::Model& model, const Tensor& tokens) {
  Tensor logits = model.forward(ops::slice(tokens, 1, 0, tokens.size(1) - 1));
  return ops::cross_entropy(ops::reshape(logits, {-1, 11}),
                            ops::reshape(ops::contiguous(ops::slice(tokens, 1, 1, tokens.size(1))), {-1}));
}

}  // namespace

TEST_CASE("llama dense_layers: the listed layers attend densely, the others by the pattern") {
  auto model = build(std::string(kTiny) + layers(3) + kS2 + "    dense_layers: [2, 0]\n", 1);
  model->to(DType::Float64);
  const std::vector<bool> expected_dense{true, false, true};
  const Tensor x = testing::random({2, 4 * 64, 16}, 7);  // (batch, length, d_model), 4 blocks
  autograd::NoGradGuard no_grad;
  for (int layer = 0; layer < 3; ++layer) {
    CAPTURE(layer);
    nn::AttentionBlock& attention = attention_of(*model, layer);
    const nn::AttentionPattern pattern = expected_dense[layer] ? nn::AttentionPattern::Dense : nn::AttentionPattern::S2;
    CHECK(attention.options().pattern == pattern);
    nn::AttentionBlockOptions dense_options;
    dense_options.d_model = 16;
    dense_options.n_heads = 4;
    dense_options.n_kv_heads = 2;
    nn::AttentionBlockOptions s2_options = dense_options;
    s2_options.pattern = nn::AttentionPattern::S2;
    s2_options.vertical_stride = 2;
    s2_options.dense_heads = 1;
    Tensor dense = copy_of(attention, dense_options)->forward(x);
    Tensor s2 = copy_of(attention, s2_options)->forward(x);
    REQUIRE(testing::max_abs_difference(dense, s2) > 1e-3);  // the input tells the two apart
    Tensor out = attention.forward(x);
    CHECK(testing::max_abs_difference(out, expected_dense[layer] ? dense : s2) < 1e-13);
  }

  // A dense layer has none of the pattern's own parameters.
  auto sinks = build(std::string(kTiny) + layers(2) + "  attention:\n    pattern: sinks\n    dense_layers: [0]\n");
  std::vector<std::string> names;
  for (const nn::NamedParameter& p : sinks->named_parameters()) names.push_back(p.name);
  CHECK(std::find(names.begin(), names.end(), "layers.0.attention.sinks") == names.end());
  CHECK(std::find(names.begin(), names.end(), "layers.1.attention.sinks") != names.end());
}

TEST_CASE("llama with every layer in dense_layers has the dense model's loss and gradients") {
  auto all_dense = build(std::string(kTiny) + layers(2) + kS2 + "    dense_layers: [0, 1]\n", 3);
  auto dense = build(std::string(kTiny) + layers(2) + "  attention:\n    pattern: dense\n", 3);
  auto no_dense = build(std::string(kTiny) + layers(2) + kS2 + "    dense_layers: []\n", 3);
  auto s2 = build(std::string(kTiny) + layers(2) + kS2, 3);
  auto hybrid = build(std::string(kTiny) + layers(2) + kS2 + "    dense_layers: [1]\n", 3);
  const Tensor tokens = random_tokens(2, 4 * 64 + 1, 5);
  std::vector<double> losses;
  for (auto* model : {all_dense.get(), dense.get(), no_dense.get(), s2.get(), hybrid.get()}) {
    model->to(DType::Float64);
    model->zero_grad();
    Tensor loss = loss_of(*model, tokens);
    autograd::backward(loss);
    losses.push_back(loss.item());
  }
  CHECK(std::abs(losses[0] - losses[1]) < 1e-13);
  // The same seed draws the same weights (q, k, v, o in each), so the gradients match too.
  std::vector<nn::NamedParameter> a = all_dense->named_parameters(), b = dense->named_parameters();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].name);
    CHECK(testing::max_abs_difference(a[i].tensor.grad(), b[i].tensor.grad()) < 1e-13);
  }
  // An empty list is the pattern everywhere; one dense layer of two is neither model.
  CHECK(std::abs(losses[2] - losses[3]) < 1e-13);
  CHECK(std::abs(losses[1] - losses[3]) > 1e-6);
  CHECK(std::abs(losses[4] - losses[1]) > 1e-6);
  CHECK(std::abs(losses[4] - losses[3]) > 1e-6);
}

TEST_CASE("llama dense_layers with SSA: the dense layers stay dense and the alignment is the sparse layers' mean") {
  auto model = build(std::string(kTiny) + layers(2) + kS2 +
                         "    dense_layers: [0]\n  ssa:\n    train: ssa\n    alpha: 3\n    full_probability: 0\n",
                     2);
  model->to(DType::Float64);
  model->train();
  loss_of(*model, random_tokens(1, 2 * 64 + 1, 4));
  using SsaMode = nn::AttentionBlock::SsaMode;
  CHECK(attention_of(*model, 0).ssa_mode() == SsaMode::Pattern);
  CHECK(attention_of(*model, 1).ssa_mode() == SsaMode::AlignSparse);
  const double alignment = attention_of(*model, 1).alignment_loss().item();
  REQUIRE(alignment > 0);
  // alpha * mean over the one sparse layer.
  CHECK(model->auxiliary_loss().item() == doctest::Approx(3 * alignment).epsilon(1e-12));
}

TEST_CASE("llama dense_layers: KV-cache decoding gives the logits of the full forward (double)") {
  auto model = build(std::string(kTiny) + layers(3) + kS2 + "    dense_layers: [1]\n", 4);
  model->to(DType::Float64);
  model->eval();
  const Tensor tokens = random_tokens(2, 64 + 6, 6);  // crosses a block boundary
  autograd::NoGradGuard no_grad;
  Tensor full = model->forward(tokens);
  std::unique_ptr<models::DecodingState> state = model->start_decoding(2);
  REQUIRE(state != nullptr);
  double worst = testing::max_decode_difference(*model, *state, tokens, full, 11);
  CHECK_MESSAGE(worst < 1e-11, "max |decode - forward| = " << worst);
}

TEST_CASE("llama validates dense_layers") {
  const std::string two = std::string(kTiny) + layers(2) + kS2;
  // The whole message, one line.
  CHECK_THROWS_WITH_AS(build(two + "    dense_layers: [2]\n"),
                       "while building model 'llama': model.attention.dense_layers: layer 2 is out of range: "
                       "model.n_layers is 2 (layers 0..1)",
                       Error);
  CHECK_THROWS_WITH_AS(build(two + "    dense_layers: [0, -1]\n"),
                       "while building model 'llama': model.attention.dense_layers: layer -1 is out of range: "
                       "model.n_layers is 2 (layers 0..1)",
                       Error);
  CHECK_THROWS_WITH_AS(build(two + "    dense_layers: [1, 0, 1]\n"),
                       "while building model 'llama': model.attention.dense_layers: layer 1 is listed twice", Error);
  CHECK_THROWS_WITH_AS(build(two + "    dense_layers: 1\n"),
                       doctest::Contains("model.attention.dense_layers: expected a list of integers"), Error);
  CHECK_THROWS_WITH_AS(build(two + "    dense_layers: [first]\n"),
                       doctest::Contains("model.attention.dense_layers[0]: expected an integer"), Error);
  // The dense pattern has no sparse layers to replace: the key is not read, so unknown.
  CHECK_THROWS_WITH_AS(
      build(std::string(kTiny) + layers(2) + "  attention:\n    pattern: dense\n    dense_layers: [0]\n"),
      doctest::Contains("unknown key model.attention.dense_layers"), Error);
}
