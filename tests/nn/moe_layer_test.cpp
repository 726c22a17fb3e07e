#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "strata/config/config.h"
#include "strata/models/model.h"
#include "strata/nn/moe.h"
#include "support/check.h"

using namespace strata;

namespace {

std::map<std::string, Tensor> parameters_by_name(const nn::Module& module) {
  std::map<std::string, Tensor> out;
  for (const nn::NamedParameter& p : module.named_parameters()) out[p.name] = p.tensor;
  return out;
}

std::vector<Tensor> with_parameters(const Tensor& x, const nn::Module& module) {
  std::vector<Tensor> inputs{x};
  for (const Tensor& p : module.parameters()) inputs.push_back(p);
  return inputs;
}

// A (rows, cols) row-major matrix times a vector.
std::vector<double> times(const std::vector<double>& matrix, int64_t offset, int64_t rows, int64_t cols,
                          const std::vector<double>& v) {
  std::vector<double> out(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r] += matrix[offset + r * cols + c] * v[c];
  return out;
}

double silu(double v) { return v / (1.0 + std::exp(-v)); }

// SwiGLU of one token: down (silu(gate x) * up x).
std::vector<double> swiglu(const std::vector<double>& gate, int64_t gate_offset, const std::vector<double>& up,
                           int64_t up_offset, const std::vector<double>& down, int64_t down_offset, int64_t d,
                           int64_t hidden, const std::vector<double>& x) {
  std::vector<double> g = times(gate, gate_offset, hidden, d, x), u = times(up, up_offset, hidden, d, x);
  for (int64_t h = 0; h < hidden; ++h) g[h] = silu(g[h]) * u[h];
  return times(down, down_offset, d, hidden, g);
}

nn::MoEFeedForwardOptions small_moe(bool shared_expert) {
  nn::MoEFeedForwardOptions o;
  o.d_model = 4;
  o.experts = 3;
  o.top_k = 2;
  o.expert_hidden = 5;
  o.shared_expert = shared_expert;
  return o;
}

config::Config model_config() {
  return config::Config::from_yaml_string(
      "model:\n"
      "  family: moe_transformer\n"
      "  vocab_size: 32\n"
      "  d_model: 16\n"
      "  n_layers: 3\n"
      "  n_heads: 2\n"
      "  max_length: 8\n"
      "  moe_every: 2\n"
      "  moe:\n"
      "    experts: 4\n"
      "    top_k: 2\n"
      "    expert_hidden: 8\n"
      "  pkm:\n"
      "    layers: [2]\n"
      "    n_keys: 4\n"
      "    top_k: 2\n"
      "    d_key: 8\n",
      "recipe.yaml");
}

Tensor example_tokens() {
  std::vector<int64_t> ids(16);
  for (int64_t i = 0; i < 16; ++i) ids[i] = (i * 7 + 3) % 32;
  return Tensor::from_vector<int64_t>(ids, {2, 8});
}

}  // namespace

TEST_CASE("MoEFeedForward is the weighted sum of each token's top-k SwiGLU experts") {
  for (bool shared_expert : {false, true}) {
    CAPTURE(shared_expert);
    Generator generator{3, 0};
    nn::MoEFeedForward moe(small_moe(shared_expert), generator);
    moe.to(DType::Float64);
    std::map<std::string, Tensor> p = parameters_by_name(moe);
    REQUIRE(p.count("router.weight"));
    REQUIRE(p.count("experts.gate_up_weight"));
    REQUIRE(p.count("experts.down_weight"));
    CHECK(p.count("shared_expert.gate.weight") == (shared_expert ? 1u : 0u));
    CHECK(p["experts.gate_up_weight"].shape() == Shape{3, 10, 4});
    CHECK(p["experts.down_weight"].shape() == Shape{3, 4, 5});

    Tensor x = testing::random({2, 3, 4}, 8);
    Tensor y = moe.forward(x);
    REQUIRE(y.shape() == Shape{2, 3, 4});

    std::vector<double> xs = x.to_vector<double>(), ys = y.to_vector<double>();
    std::vector<double> router = p["router.weight"].to_vector<double>(),
                        gate_up = p["experts.gate_up_weight"].to_vector<double>(),
                        down = p["experts.down_weight"].to_vector<double>();
    double worst = 0;
    for (int64_t t = 0; t < 6; ++t) {
      std::vector<double> token(xs.begin() + t * 4, xs.begin() + t * 4 + 4);
      std::vector<double> logits = times(router, 0, 3, 4, token);
      std::vector<int64_t> order{0, 1, 2};
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
      double first = std::exp(logits[order[0]]), second = std::exp(logits[order[1]]);
      std::vector<double> expected(4, 0.0);
      for (int j = 0; j < 2; ++j) {
        int64_t e = order[j];
        double weight = (j == 0 ? first : second) / (first + second);
        std::vector<double> out = swiglu(gate_up, e * 40, gate_up, e * 40 + 20, down, e * 20, 4, 5, token);
        for (int c = 0; c < 4; ++c) expected[c] += weight * out[c];
      }
      if (shared_expert) {
        std::vector<double> out =
            swiglu(p["shared_expert.gate.weight"].to_vector<double>(), 0, p["shared_expert.up.weight"].to_vector<double>(),
                   0, p["shared_expert.down.weight"].to_vector<double>(), 0, 4, 5, token);
        for (int c = 0; c < 4; ++c) expected[c] += out[c];
      }
      for (int c = 0; c < 4; ++c) worst = std::max(worst, std::fabs(expected[c] - ys[t * 4 + c]));
    }
    CHECK(worst < 1e-12);

    nn::ExpertUsage usage = moe.usage();
    CHECK(usage.assignments == 12);
    CHECK(usage.dropped == 0);
    CHECK(std::accumulate(usage.tokens_per_expert.begin(), usage.tokens_per_expert.end(), int64_t{0}) == 12);
    CHECK(usage.load_balancing_loss > 0.0);
    CHECK(moe.auxiliary_loss().numel() == 1);
  }
}

TEST_CASE("MoEFeedForward gradients: input, router, experts and the auxiliary loss") {
  for (bool shared_expert : {false, true}) {
    CAPTURE(shared_expert);
    Generator generator{5, 0};
    nn::MoEFeedForwardOptions options = small_moe(shared_expert);
    options.capacity_factor = 0.7;  // some choices dropped
    nn::MoEFeedForward moe(options, generator);
    moe.to(DType::Float64);
    Tensor x = testing::random({7, 4}, 9).set_requires_grad(true);
    testing::check_gradients([&](const std::vector<Tensor>& in) { return moe.forward(in[0]); },
                             with_parameters(x, moe));
    CHECK(moe.usage().dropped > 0);
    const Tensor& router = parameters_by_name(moe)["router.weight"];
    testing::check_gradients(
        [&](const std::vector<Tensor>& in) {
          moe.forward(in[0]);
          return moe.auxiliary_loss();
        },
        {x, router});
  }
  // Chunk-level routing: (batch, length, d) in, gradients as usual.
  Generator generator{6, 0};
  nn::MoEFeedForwardOptions options = small_moe(false);
  options.chunk_size = 2;
  options.router = ops::RouterScoring::Sigmoid;
  nn::MoEFeedForward moe(options, generator);
  moe.to(DType::Float64);
  Tensor x = testing::random({2, 5, 4}, 10).set_requires_grad(true);
  testing::check_gradients([&](const std::vector<Tensor>& in) { return moe.forward(in[0]); }, with_parameters(x, moe));
  CHECK_THROWS_WITH_AS(moe.forward(testing::random({10, 4}, 1)),
                       doctest::Contains("chunk-level routing needs x as (batch, length, d_model)"), Error);
}

TEST_CASE("MoEFeedForward options are validated") {
  Generator generator{1, 0};
  nn::MoEFeedForwardOptions options = small_moe(false);
  options.top_k = 4;
  CHECK_THROWS_WITH_AS(nn::MoEFeedForward(options, generator),
                       doctest::Contains("MoEFeedForward: top_k (4) must be in 1..experts (3)"), Error);
  options = small_moe(false);
  options.expert_hidden = 0;
  CHECK_THROWS_WITH_AS(nn::MoEFeedForward(options, generator), doctest::Contains("expert_hidden (0) must be positive"),
                       Error);
  nn::MoEFeedForward moe(small_moe(false), generator);
  CHECK(moe.usage().assignments == 0);  // nothing routed yet
  CHECK_THROWS_WITH_AS(moe.forward(Tensor::zeros({2, 5})), doctest::Contains("MoEFeedForward: expected input (..., 4)"),
                       Error);
}

TEST_CASE("ProductKeyMemory projects a query and reads its memory") {
  Generator generator{7, 0};
  nn::ProductKeyMemory memory(6, 4, 5, 3, generator);
  memory.to(DType::Float64);
  std::map<std::string, Tensor> p = parameters_by_name(memory);
  CHECK(p["values"].shape() == Shape{25, 6});
  CHECK(p["sub_keys_1"].shape() == Shape{5, 2});
  for (const nn::NamedParameter& parameter : memory.named_parameters())
    CHECK(parameter.weight_decay == (parameter.name == "query.weight"));

  Tensor x = testing::random({2, 3, 6}, 4).set_requires_grad(true);
  Tensor y = memory.forward(x);
  CHECK(y.shape() == Shape{2, 3, 6});
  Tensor query = ops::matmul(ops::reshape(x, {6, 6}), ops::transpose(p["query.weight"], 0, 1));
  Tensor expected = ops::product_key_memory(query, p["sub_keys_1"], p["sub_keys_2"], p["values"], 3).output;
  CHECK(testing::max_abs_difference(ops::reshape(y, {6, 6}), expected) < 1e-12);
  CHECK(memory.value_usage() > 0.0);
  CHECK(memory.value_usage() <= 18.0 / 25.0);
  testing::check_gradients([&](const std::vector<Tensor>& in) { return memory.forward(in[0]); },
                           with_parameters(x, memory));
  CHECK_THROWS_WITH_AS(nn::ProductKeyMemory(6, 3, 5, 3, generator), doctest::Contains("d_key (3) must be even"), Error);
}

TEST_CASE("moe_transformer: MoE every moe_every blocks, a memory block, auxiliary loss and metrics") {
  config::Config config = model_config();
  Generator generator{11, 0};
  std::shared_ptr<models::Model> model = models::build_model(config, generator);
  config.check_all_read();
  std::vector<std::string> names;
  for (const nn::NamedParameter& p : model->named_parameters()) names.push_back(p.name);
  auto has = [&](const std::string& name) { return std::find(names.begin(), names.end(), name) != names.end(); };
  CHECK(has("layers.0.mlp.gate.weight"));  // block 0: dense SwiGLU
  CHECK(has("layers.1.moe.router.weight"));  // block 1: (1 + 1) % 2 == 0
  CHECK(has("layers.1.moe.experts.gate_up_weight"));
  CHECK(has("layers.2.memory.values"));  // block 2: listed in pkm.layers
  CHECK(!has("layers.2.moe.router.weight"));

  Tensor tokens = example_tokens();
  Tensor logits = model->forward(tokens);
  CHECK(logits.shape() == Shape{2, 8, 32});
  Tensor auxiliary = model->auxiliary_loss();
  REQUIRE(auxiliary.defined());
  CHECK(auxiliary.numel() == 1);
  Tensor loss = ops::add(ops::cross_entropy(ops::reshape(logits, {-1, 32}), ops::reshape(tokens, {-1})), auxiliary);
  autograd::backward(loss);
  for (const nn::NamedParameter& p : model->named_parameters())
    if (p.name == "layers.1.moe.router.weight") CHECK(testing::max_abs(p.tensor.grad()) > 0.0);

  std::map<std::string, double> metrics;
  for (const auto& [name, value] : model->metrics()) metrics[name] = value;
  double routed = 0;
  for (int e = 0; e < 4; ++e) routed += metrics.at("moe.1.expert_" + std::to_string(e));
  CHECK(routed == doctest::Approx(1.0));
  CHECK(metrics.at("moe.1.dropped") == 0.0);
  CHECK(metrics.count("moe.1.load_balance") == 1);
  CHECK(metrics.at("pkm.2.usage") > 0.0);

  // No MoE block: no auxiliary loss.
  config::Config dense = model_config();
  dense.set("model.moe_every", "0");
  Generator dense_generator{11, 0};
  std::shared_ptr<models::Model> dense_model = models::build_model(dense, dense_generator);
  dense_model->forward(tokens);
  CHECK(!dense_model->auxiliary_loss().defined());
}

TEST_CASE("moe_transformer with activation checkpointing gives the same loss and gradients") {
  std::vector<std::vector<double>> grads[2];
  double losses[2];
  for (int checkpointing = 0; checkpointing < 2; ++checkpointing) {
    config::Config config = model_config();
    if (checkpointing) config.set("model.activation_checkpointing", "true");
    Generator generator{12, 0};
    std::shared_ptr<models::Model> model = models::build_model(config, generator);
    Tensor tokens = example_tokens();
    Tensor logits = model->forward(tokens);
    Tensor loss = ops::add(ops::cross_entropy(ops::reshape(logits, {-1, 32}), ops::reshape(tokens, {-1})),
                           model->auxiliary_loss());
    autograd::backward(loss);
    losses[checkpointing] = loss.item();
    for (const Tensor& p : model->parameters()) grads[checkpointing].push_back(p.grad().to_vector<double>());
  }
  CHECK(losses[0] == losses[1]);
  REQUIRE(grads[0].size() == grads[1].size());
  double worst = 0;
  for (size_t i = 0; i < grads[0].size(); ++i)
    for (size_t j = 0; j < grads[0][i].size(); ++j) worst = std::max(worst, std::fabs(grads[0][i][j] - grads[1][i][j]));
  CHECK(worst < 1e-6);
}

TEST_CASE("moe_transformer recipe errors name the key") {
  Generator generator{1, 0};
  config::Config bad_every = model_config();
  bad_every.set("model.moe_every", "4");  // more than n_layers
  CHECK_THROWS_WITH_AS(models::build_model(bad_every, generator), doctest::Contains("model.moe_every"), Error);
  config::Config bad_router = model_config();
  bad_router.set("model.moe.router", "softmx");
  CHECK_THROWS_WITH_AS(models::build_model(bad_router, generator), doctest::Contains("model.moe.router"), Error);
  config::Config bad_layer = model_config();
  bad_layer.set("model.pkm.layers", "[3]");
  CHECK_THROWS_WITH_AS(models::build_model(bad_layer, generator),
                       doctest::Contains("model.pkm.layers: block 3 is outside 0..2"), Error);
}
