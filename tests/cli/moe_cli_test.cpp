// End-to-end tests of `strata bench moe`, `strata op moe` and `strata op
// product_key_memory`, run through the built binary (STRATA_BINARY) on the CPU.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "strata/autograd/autograd.h"
#include "strata/checkpoint/h5file.h"
#include "strata/nn/moe.h"
#include "strata/ops/moe.h"
#include "strata/ops/ops.h"
#include "support/check.h"
#include "support/cli.h"
#include "support/temporary_folder.h"

namespace fs = std::filesystem;
using namespace strata;

namespace {

using Result = testing::CommandResult;
using testing::run_strata;

using testing::TemporaryFolder;

struct MoEInputs {
  Tensor x, router_weight, w_gate, w_up, w_down, grad_output;
};

MoEInputs random_inputs(int64_t tokens, int64_t d_model, int64_t experts, int64_t hidden) {
  return {testing::random({tokens, d_model}, 1),
          testing::random({experts, d_model}, 2, DType::Float64, -0.5, 0.5),
          testing::random({experts, hidden, d_model}, 3, DType::Float64, -0.3, 0.3),
          testing::random({experts, hidden, d_model}, 4, DType::Float64, -0.3, 0.3),
          testing::random({experts, d_model, hidden}, 5, DType::Float64, -0.3, 0.3),
          testing::random({tokens, d_model}, 6)};
}

void write_inputs(const fs::path& path, const MoEInputs& in, bool with_w_up) {
  checkpoint::H5Writer writer(path.string());
  writer.write_tensor("x", in.x);
  writer.write_tensor("router_weight", in.router_weight);
  writer.write_tensor("w_gate", in.w_gate);
  if (with_w_up) writer.write_tensor("w_up", in.w_up);
  writer.write_tensor("w_down", in.w_down);
  writer.write_tensor("grad_output", in.grad_output);
  writer.write_int("top_k", 2);
  writer.write_string("router", "softmax");
  writer.write_double("capacity_factor", 0.75);  // drops some choices
  writer.write_double("aux_loss_weight", 0.5);
  writer.write_double("z_loss_weight", 0.25);
  writer.commit();
}

using Datasets = std::map<std::string, Tensor>;

// Writes `tensors` and, when top_k > 0, the integer top_k.
void write_file(const fs::path& path, const Datasets& tensors, int64_t top_k) {
  checkpoint::H5Writer writer(path.string());
  for (const auto& [name, tensor] : tensors) writer.write_tensor(name, tensor);
  if (top_k > 0) writer.write_int("top_k", top_k);
  writer.commit();
}

// The strata run on `file` failed with one line naming the file and `dataset`, and
// wrote no out.h5 next to it.
void check_rejected(const std::string& subcommand, const fs::path& file, const std::string& dataset) {
  CAPTURE(file);
  const fs::path out = file.parent_path() / "out.h5";
  Result r = run_strata(fmt::format("op {} {} {}", subcommand, file.string(), out.string()));
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(r.err.find(file.filename().string()) != std::string::npos, r.err);
  CHECK_MESSAGE(r.err.find(dataset) != std::string::npos, dataset << " missing from " << r.err);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK_FALSE(fs::exists(out));
}

// (tokens, d_key = 6) queries on a 5 x 5 grid of (25, d_value = 3) values, top 2.
Datasets product_key_inputs(int64_t tokens) {
  return {{"query", testing::random({tokens, 6}, 21)},
          {"sub_keys_1", testing::random({5, 3}, 22)},
          {"sub_keys_2", testing::random({5, 3}, 23)},
          {"values", testing::random({25, 3}, 24)},
          {"grad_output", testing::random({tokens, 3}, 25)},
          {"grad_weights", testing::random({tokens, 2}, 26)}};
}

// Every tensor of `expected` equals the dataset of its name in `path` (dtype, shape,
// values to 1e-12: float64 on both sides, the same ops up to their grouping).
void check_written(const fs::path& path, const std::vector<std::pair<std::string, Tensor>>& expected) {
  checkpoint::H5Reader out(path.string());
  for (const auto& [name, tensor] : expected) {
    CAPTURE(name);
    REQUIRE(tensor.defined());
    Tensor written = out.read_tensor(name);
    CHECK(written.dtype() == tensor.dtype());
    REQUIRE(written.shape() == tensor.shape());
    CHECK(testing::max_abs_difference(written.to(DType::Float64), tensor.detach().to(DType::Float64)) <= 1e-12);
  }
}

}  // namespace

TEST_CASE("strata bench moe runs at its CPU smoke size and prints every line") {
  Result r = run_strata("bench moe --device cpu");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  for (const char* line : {"experts 4 tokens 64 d_model 32 hidden 64", "grouped gate_up x W^T", "grouped gate_up dY W",
                           "grouped gate_up dY^T X", "grouped down x W^T", "moe layer fwd+bwd, grouped GEMM",
                           "moe layer fwd+bwd, per-expert loop", "moe layer speedup (loop / grouped)"})
    CHECK_MESSAGE(r.out.find(line) != std::string::npos, line << " missing from\n" << r.out);
}

TEST_CASE("strata op moe writes the layer's output, routing and gradients as the ops compute them") {
  TemporaryFolder scratch("moe-cli-test");
  const fs::path dir = scratch.path;
  const int64_t tokens = 13, d_model = 6, experts = 4, hidden = 5;
  MoEInputs in = random_inputs(tokens, d_model, experts, hidden);
  write_inputs(dir / "in.h5", in, true);
  Result r = run_strata(fmt::format("op moe {0}/in.h5 {0}/out.h5", dir.string()));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);

  // The same layer composed here from the ops (gate and up as two grouped products).
  Tensor x = in.x.clone().set_requires_grad(true), router = in.router_weight.clone().set_requires_grad(true);
  Tensor w_gate = in.w_gate.clone().set_requires_grad(true), w_up = in.w_up.clone().set_requires_grad(true);
  Tensor w_down = in.w_down.clone().set_requires_grad(true);
  ops::MoERouteOptions route;
  route.top_k = 2;
  route.capacity_factor = 0.75;
  ops::MoERouting routing = ops::moe_route(ops::linear(x, router), route);
  Tensor dispatched = ops::moe_dispatch(x, routing);
  Tensor hidden_units = ops::mul(ops::silu(ops::grouped_linear(dispatched, w_gate, routing.expert_offsets)),
                                 ops::grouped_linear(dispatched, w_up, routing.expert_offsets));
  Tensor y = ops::moe_combine(ops::grouped_linear(hidden_units, w_down, routing.expert_offsets), routing);
  Tensor aux = ops::add(ops::mul(routing.load_balancing_loss, 0.5), ops::mul(routing.z_loss, 0.25));
  autograd::backward(ops::add(ops::sum(ops::mul(y, in.grad_output)), aux));
  REQUIRE(testing::max_abs(routing.dropped.to(DType::Float64)) == 1.0);  // capacity 0.75 drops something

  check_written(dir / "out.h5", {
      {"output", y},
      {"load_balancing_loss", routing.load_balancing_loss},
      {"z_loss", routing.z_loss},
      {"aux_loss", aux},
      {"expert_indices", routing.expert_indices},
      {"routing_weights", routing.weights},
      {"dropped", routing.dropped},
      {"expert_counts", routing.expert_counts},
      {"grad_x", x.grad()},
      {"grad_router_weight", router.grad()},
      {"grad_w_gate", w_gate.grad()},
      {"grad_w_up", w_up.grad()},
      {"grad_w_down", w_down.grad()}});
}

TEST_CASE("strata op moe names the file and the dataset it cannot use, and writes nothing") {
  TemporaryFolder scratch("moe-cli-test");
  const fs::path dir = scratch.path;
  MoEInputs in = random_inputs(5, 4, 3, 2);
  write_inputs(dir / "in.h5", in, false);
  Result r = run_strata(fmt::format("op moe {0}/in.h5 {0}/out.h5", dir.string()));
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("in.h5") != std::string::npos);
  CHECK(r.err.find("'w_up'") != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK_FALSE(fs::exists(dir / "out.h5"));

  // A routing option the op rejects: the message names the input file and the op.
  {
    checkpoint::H5Writer writer((dir / "bad_top_k.h5").string());
    writer.write_tensor("x", in.x);
    writer.write_tensor("router_weight", in.router_weight);
    writer.write_tensor("w_gate", in.w_gate);
    writer.write_tensor("w_up", in.w_up);
    writer.write_tensor("w_down", in.w_down);
    writer.write_tensor("grad_output", in.grad_output);
    writer.write_int("top_k", 7);
    writer.commit();
  }
  r = run_strata(fmt::format("op moe {0}/bad_top_k.h5 {0}/out.h5", dir.string()));
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("bad_top_k.h5") != std::string::npos);
  CHECK(r.err.find("top_k = 7") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "out.h5"));

  const Datasets complete = {{"x", in.x},         {"router_weight", in.router_weight},
                             {"w_gate", in.w_gate}, {"w_up", in.w_up},
                             {"w_down", in.w_down}, {"grad_output", in.grad_output}};
  // A shared expert without its down projection.
  Datasets partial_shared = complete;
  partial_shared["shared_w_gate"] = testing::random({3, 4}, 7);
  partial_shared["shared_w_up"] = testing::random({3, 4}, 8);
  write_file(dir / "partial_shared.h5", partial_shared, 2);
  check_rejected("moe", dir / "partial_shared.h5", "'shared_w_down'");
  // A misspelt option is an error, not silently the default.
  Datasets misspelt = complete;
  misspelt["capacity_factr"] = Tensor::full({}, 1.0, DType::Float64);
  write_file(dir / "misspelt.h5", misspelt, 2);
  check_rejected("moe", dir / "misspelt.h5", "'capacity_factr'");
}

TEST_CASE("strata op moe adds the shared expert as nn::MoEFeedForward does") {
  TemporaryFolder scratch("moe-cli-test");
  const fs::path dir = scratch.path;
  nn::MoEFeedForwardOptions options;
  options.d_model = 6;
  options.experts = 4;
  options.top_k = 2;
  options.expert_hidden = 5;
  options.capacity_factor = 0.75;
  options.shared_expert = true;
  Generator generator{7, 0};
  nn::MoEFeedForward layer(options, generator);
  layer.to(DType::Float64);
  std::map<std::string, Tensor> p;
  for (const nn::NamedParameter& parameter : layer.named_parameters()) p[parameter.name] = parameter.tensor;
  REQUIRE(p.count("shared_expert.gate.weight") == 1);
  const int64_t tokens = 11, hidden = options.expert_hidden;
  Tensor x = testing::random({tokens, options.d_model}, 31).set_requires_grad(true);
  Tensor grad_output = testing::random({tokens, options.d_model}, 32);
  std::vector<Tensor> gate_and_up = ops::split(p["experts.gate_up_weight"].detach(), {hidden, hidden}, 1);
  {
    checkpoint::H5Writer writer((dir / "in.h5").string());
    const Datasets inputs = {{"x", x.detach()},
                             {"router_weight", p["router.weight"]},
                             {"w_gate", gate_and_up[0].contiguous()},
                             {"w_up", gate_and_up[1].contiguous()},
                             {"w_down", p["experts.down_weight"]},
                             {"shared_w_gate", p["shared_expert.gate.weight"]},
                             {"shared_w_up", p["shared_expert.up.weight"]},
                             {"shared_w_down", p["shared_expert.down.weight"]},
                             {"grad_output", grad_output}};
    for (const auto& [name, tensor] : inputs) writer.write_tensor(name, tensor);
    writer.write_int("top_k", options.top_k);
    writer.write_double("capacity_factor", options.capacity_factor);
    writer.write_double("aux_loss_weight", options.aux_loss_weight);
    writer.write_double("z_loss_weight", options.z_loss_weight);
    writer.commit();
  }
  Result r = run_strata(fmt::format("op moe {0}/in.h5 {0}/out.h5", dir.string()));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("shared expert") != std::string::npos);

  Tensor y = layer.forward(x);
  autograd::backward(ops::add(ops::sum(ops::mul(y, grad_output)), layer.auxiliary_loss()));
  std::vector<Tensor> grad_gate_and_up = ops::split(p["experts.gate_up_weight"].grad(), {hidden, hidden}, 1);
  check_written(dir / "out.h5", {{"output", y},
                                 {"aux_loss", layer.auxiliary_loss()},
                                 {"grad_x", x.grad()},
                                 {"grad_router_weight", p["router.weight"].grad()},
                                 {"grad_w_gate", grad_gate_and_up[0]},
                                 {"grad_w_up", grad_gate_and_up[1]},
                                 {"grad_w_down", p["experts.down_weight"].grad()},
                                 {"grad_shared_w_gate", p["shared_expert.gate.weight"].grad()},
                                 {"grad_shared_w_up", p["shared_expert.up.weight"].grad()},
                                 {"grad_shared_w_down", p["shared_expert.down.weight"].grad()}});
}

TEST_CASE("strata op product_key_memory writes the lookup and every input's gradient as the op computes them") {
  TemporaryFolder scratch("moe-cli-test");
  const fs::path dir = scratch.path;
  const Datasets in = product_key_inputs(9);
  write_file(dir / "in.h5", in, 2);
  Result r = run_strata(fmt::format("op product_key_memory {0}/in.h5 {0}/out.h5", dir.string()));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("with gradients") != std::string::npos);

  Datasets leaves;
  for (const char* name : {"query", "sub_keys_1", "sub_keys_2", "values"})
    leaves[name] = in.at(name).clone().set_requires_grad(true);
  ops::ProductKeyResult result =
      ops::product_key_memory(leaves["query"], leaves["sub_keys_1"], leaves["sub_keys_2"], leaves["values"], 2);
  autograd::backward(ops::add(ops::sum(ops::mul(result.output, in.at("grad_output"))),
                              ops::sum(ops::mul(result.weights, in.at("grad_weights")))));
  // 9 tokens read at most 18 of the 25 rows: the values' gradient has zero rows.
  const std::vector<double> grad_values = leaves["values"].grad().to_vector<double>();
  int64_t zero_rows = 0;
  for (size_t row = 0; row < 25; ++row)
    zero_rows += std::all_of(grad_values.begin() + 3 * row, grad_values.begin() + 3 * row + 3,
                             [](double g) { return g == 0.0; });
  REQUIRE(zero_rows >= 7);
  check_written(dir / "out.h5", {{"output", result.output},
                                 {"value_indices", result.value_indices},
                                 {"weights", result.weights},
                                 {"grad_query", leaves["query"].grad()},
                                 {"grad_sub_keys_1", leaves["sub_keys_1"].grad()},
                                 {"grad_sub_keys_2", leaves["sub_keys_2"].grad()},
                                 {"grad_values", leaves["values"].grad()}});
}

TEST_CASE("strata op product_key_memory without upstream gradients runs forward only; grad_weights alone gives zero "
          "grad_values") {
  TemporaryFolder scratch("moe-cli-test");
  const fs::path dir = scratch.path;
  Datasets in = product_key_inputs(4);
  Datasets forward_only = in;
  forward_only.erase("grad_output");
  forward_only.erase("grad_weights");
  write_file(dir / "forward.h5", forward_only, 3);
  Result r = run_strata(fmt::format("op product_key_memory {0}/forward.h5 {0}/forward_out.h5", dir.string()));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  ops::ProductKeyResult result =
      ops::product_key_memory(in.at("query"), in.at("sub_keys_1"), in.at("sub_keys_2"), in.at("values"), 3);
  CHECK(checkpoint::H5Reader((dir / "forward_out.h5").string()).list("/") ==
        std::vector<std::string>{"/output", "/value_indices", "/weights"});
  check_written(dir / "forward_out.h5",
                {{"output", result.output}, {"value_indices", result.value_indices}, {"weights", result.weights}});

  // Only the weights' upstream gradient: the loss does not reach the values.
  Datasets weights_only = in;
  weights_only.erase("grad_output");
  write_file(dir / "weights.h5", weights_only, 2);
  r = run_strata(fmt::format("op product_key_memory {0}/weights.h5 {0}/weights_out.h5", dir.string()));
  REQUIRE(r.exit_code == 0);
  Datasets leaves;
  for (const char* name : {"query", "sub_keys_1", "sub_keys_2"})
    leaves[name] = in.at(name).clone().set_requires_grad(true);
  result = ops::product_key_memory(leaves["query"], leaves["sub_keys_1"], leaves["sub_keys_2"], in.at("values"), 2);
  autograd::backward(ops::sum(ops::mul(result.weights, in.at("grad_weights"))));
  check_written(dir / "weights_out.h5", {{"grad_query", leaves["query"].grad()},
                                         {"grad_sub_keys_1", leaves["sub_keys_1"].grad()},
                                         {"grad_sub_keys_2", leaves["sub_keys_2"].grad()},
                                         {"grad_values", Tensor::zeros({25, 3}, DType::Float64)}});
}

TEST_CASE("strata op product_key_memory names the file and the dataset it cannot use, and writes nothing") {
  TemporaryFolder scratch("moe-cli-test");
  const fs::path dir = scratch.path;
  const Datasets good = product_key_inputs(4);
  // Each case: the file's name, the change to the good inputs, and what the error names.
  struct BadCase {
    std::string file;
    std::string dataset;
    Tensor replacement;  // undefined: the dataset is left out
    std::string named;
  };
  const std::vector<BadCase> cases = {
      {"no_values.h5", "values", Tensor(), "'values'"},
      {"odd_d_key.h5", "query", testing::random({4, 5}, 41), "'query'"},
      {"sub_keys_2_shape.h5", "sub_keys_2", testing::random({4, 3}, 42), "'sub_keys_2'"},
      {"values_rows.h5", "values", testing::random({24, 3}, 43), "'values'"},
      {"grad_output_shape.h5", "grad_output", testing::random({4, 2}, 44), "'grad_output'"},
      {"float32_values.h5", "values", testing::random({25, 3}, 45, DType::Float32), "'values'"},
      {"misspelt.h5", "grad_weight", testing::random({4, 2}, 46), "'grad_weight'"},
  };
  for (const BadCase& bad : cases) {
    Datasets inputs = good;
    if (bad.replacement.defined())
      inputs[bad.dataset] = bad.replacement;
    else
      inputs.erase(bad.dataset);
    write_file(dir / bad.file, inputs, 2);
    check_rejected("product_key_memory", dir / bad.file, bad.named);
  }
  // No top_k, and one the op rejects (the op's message, with the file named).
  write_file(dir / "no_top_k.h5", good, 0);
  check_rejected("product_key_memory", dir / "no_top_k.h5", "'top_k'");
  Datasets forward_only = good;
  forward_only.erase("grad_weights");  // (tokens, 2): its shape would be the first error
  write_file(dir / "top_k_6.h5", forward_only, 6);
  check_rejected("product_key_memory", dir / "top_k_6.h5", "top_k = 6 must be in 1..5 (n_keys)");
}

TEST_CASE("strata plot draws expert utilisation over training: one curve per metric of a prefix") {
  TemporaryFolder scratch("moe-cli-test");
  const fs::path run = scratch.path / "moe-run";
  fs::create_directories(run);
  {
    // Records as the trainer logs them for MoE block 1 (shares of the routed choices).
    std::ofstream metrics(run / "metrics.jsonl");
    for (int step = 10; step <= 40; step += 10)
      metrics << fmt::format(R"({{"step": {}, "loss": 2.0, "moe.1.expert_0": {}, "moe.1.expert_1": {}, )"
                             R"("moe.1.expert_2": 0.25, "moe.1.dropped": 0.0}})",
                             step, 0.5 - step / 200.0, 0.25 + step / 200.0)
              << "\n";
  }
  const fs::path png = run / "experts.png";
  Result r = run_strata(fmt::format("plot {} --metric 'moe.1.expert_*' -o {}", run.string(), png.string()));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  std::ifstream in(png, std::ios::binary);
  char magic[8] = {};
  in.read(magic, 8);
  CHECK(std::string(magic + 1, 3) == "PNG");
  r = run_strata(fmt::format("plot {} --metric 'moe.7.expert_*' -o {}", run.string(), png.string()));
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("moe.7.expert_*") != std::string::npos);
}
