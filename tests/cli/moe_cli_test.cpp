// End-to-end tests of `strata bench moe` and `strata op moe`, run through the built
// binary (STRATA_BINARY) on the CPU.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "strata/autograd/autograd.h"
#include "strata/checkpoint/h5file.h"
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

  checkpoint::H5Reader out((dir / "out.h5").string());
  const std::vector<std::pair<std::string, Tensor>> expected = {
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
      {"grad_w_down", w_down.grad()}};
  for (const auto& [name, tensor] : expected) {
    CAPTURE(name);
    Tensor written = out.read_tensor(name);
    CHECK(written.dtype() == tensor.dtype());
    REQUIRE(written.shape() == tensor.shape());
    // float64 on both sides, the same ops in a different grouping of gate and up.
    CHECK(testing::max_abs_difference(written.to(DType::Float64), tensor.detach().to(DType::Float64)) <= 1e-12);
  }
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
