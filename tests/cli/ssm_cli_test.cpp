// End-to-end tests of `strata bench ssm` (at its CPU smoke size) and of `strata op
// selective_scan | causal_conv1d | ssd | gated_rms_norm`, run through the built
// binary (STRATA_BINARY): the op subcommands read HDF5 inputs and must write the
// outputs and gradients that the ops give in this process for the same inputs.
#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>

#include "strata/autograd/autograd.h"
#include "strata/checkpoint/h5file.h"
#include "strata/ops/ops.h"
#include "strata/ops/ssd.h"
#include "strata/ops/ssm.h"
#include "support/check.h"
#include "support/cli.h"
#include "support/temporary_folder.h"

namespace fs = std::filesystem;
using namespace strata;

using Result = testing::CommandResult;
using testing::run_strata;

TEST_CASE("strata bench ssm runs at its CPU smoke size and prints every kernel against the copy") {
  Result r = run_strata("bench ssm --device cpu");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  for (const char* line :
       {"copy float32[2^24]", "selective_scan forward float32[2, 128, 256] N 16",
        "selective_scan backward float32[2, 128, 256] N 16", "selective_scan forward float32[2, 128, 256] N 1",
        "selective_scan backward float32[2, 128, 256] N 1", "causal_conv1d forward float32[2, 128, 256] kernel 4",
        "causal_conv1d backward float32[2, 128, 256] kernel 4", "ssd_chunked forward float32[2, 256, 8 x 16] N 16",
        "ssd_chunked backward float32[2, 256, 8 x 16] N 16 chunk 64", "% of copy", "Mtok/s", "Gexp/s"})
    CHECK_MESSAGE(r.out.find(line) != std::string::npos, line << " missing from\n" << r.out);
}

TEST_CASE("strata bench ssm (or scan) runs one kernel at the sizes it is given") {
  Result r = run_strata("bench scan --device cpu --only scan --batch 1 --d-inner 8 --lengths 33 --states 4");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("selective_scan backward float32[1, 8, 33] N 4") != std::string::npos);
  CHECK(r.out.find("causal_conv1d") == std::string::npos);
  CHECK(r.out.find("ssd_chunked") == std::string::npos);
}

TEST_CASE("strata bench ssm refuses an unknown kernel and a state size over 256") {
  Result r = run_strata("bench ssm --device cpu --only scna");
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("scna") != std::string::npos);
  r = run_strata("bench ssm --device cpu --states 257");
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("257") != std::string::npos);
}

namespace {

// The datasets of one IN.h5: tensors (inputs and grad_<output>), integer flags and
// numbers.
struct OpFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, int64_t> integers;
  std::map<std::string, double> numbers;
};

void write_op_file(const fs::path& path, const OpFile& file) {
  checkpoint::H5Writer writer(path.string());
  for (const auto& [name, tensor] : file.tensors) writer.write_tensor(name, tensor);
  for (const auto& [name, value] : file.integers) writer.write_int(name, value);
  for (const auto& [name, value] : file.numbers) writer.write_double(name, value);
  writer.commit();
}

using Leaves = std::map<std::string, Tensor>;
using Outputs = std::vector<std::pair<std::string, Tensor>>;

// The leaf `name`, or undefined when the file has no such input.
Tensor optional(const Leaves& leaves, const std::string& name) {
  auto found = leaves.find(name);
  return found == leaves.end() ? Tensor() : found->second;
}

// What OUT.h5 must hold: the outputs of `op` on the file's inputs and, for the
// upstream gradients the file gives, the gradient of every input, by the op run
// here (one backward pass of sum(output * grad_output) over the outputs given one).
std::map<std::string, Tensor> expected_results(const OpFile& file, const std::function<Outputs(const Leaves&)>& op) {
  Leaves leaves;
  for (const auto& [name, tensor] : file.tensors)
    if (name.rfind("grad_", 0) != 0) leaves[name] = tensor.clone().set_requires_grad(true);
  Outputs outputs = op(leaves);
  std::map<std::string, Tensor> expected;
  Tensor loss;
  for (const auto& [name, output] : outputs) {
    expected[name] = output.detach();
    auto grad = file.tensors.find("grad_" + name);
    if (grad == file.tensors.end()) continue;
    Tensor term = ops::sum(ops::mul(output, grad->second));
    loss = loss.defined() ? ops::add(loss, term) : term;
  }
  if (loss.defined()) {
    autograd::backward(loss);
    for (const auto& [name, leaf] : leaves) expected["grad_" + name] = leaf.grad();
  }
  return expected;
}

// Runs `strata op <op> IN.h5 OUT.h5` on `file` and compares OUT.h5 with `expected`.
void check_op(const std::string& op, const OpFile& file, const std::map<std::string, Tensor>& expected) {
  testing::TemporaryFolder scratch("ssm-cli-op");
  write_op_file(scratch.path / "in.h5", file);
  Result r = run_strata(fmt::format("op {} {} {}", op, scratch.file("in.h5"), scratch.file("out.h5")));
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  checkpoint::H5Reader reader(scratch.file("out.h5"));
  for (const auto& [name, tensor] : expected) {
    CAPTURE(name);
    REQUIRE(reader.has(name));
    Tensor written = reader.read_tensor(name);
    CHECK(written.dtype() == tensor.dtype());
    // The same float64 kernels on the same inputs: only summation order (OpenMP
    // threads) could differ.
    CHECK(testing::max_abs_difference(written, tensor) < 1e-12);
  }
  // Nothing else: every dataset written is one of the expected.
  CHECK(reader.list("/").size() == expected.size());
}

// Runs `strata op <op>` on `file` (or on a file that does not exist when `file` is
// null) and checks that it fails with one line naming the file and each of `parts`,
// writing no OUT.h5.
void check_op_error(const std::string& op, const OpFile* file, const std::vector<std::string>& parts) {
  testing::TemporaryFolder scratch("ssm-cli-op-error");
  const std::string in = scratch.file("in.h5"), out = scratch.file("out.h5");
  if (file) write_op_file(in, *file);
  Result r = run_strata(fmt::format("op {} {} {}", op, in, out));
  CHECK(r.exit_code != 0);
  CHECK_MESSAGE(std::count(r.err.begin(), r.err.end(), '\n') == 1, r.err);
  CHECK_MESSAGE(r.err.find(in) != std::string::npos, r.err);
  for (const std::string& part : parts) CHECK_MESSAGE(r.err.find(part) != std::string::npos, part << " in " << r.err);
  CHECK_FALSE(fs::exists(out));
}

// A selective scan of 2 sequences, 4 channels in 2 groups, 13 positions, N = 3, with
// every optional input and upstream gradient; routes = K folds K routes in.
OpFile scan_file(int64_t routes) {
  const int64_t batch = 2, d_inner = 4, groups = 2, length = 13, d_state = 3;
  Shape route{};
  if (routes > 0) route = {routes};
  auto shape = [&](std::initializer_list<int64_t> leading, std::initializer_list<int64_t> trailing) {
    Shape s(leading);
    s.insert(s.end(), route.begin(), route.end());
    s.insert(s.end(), trailing);
    return s;
  };
  OpFile f;
  f.tensors["u"] = testing::random(shape({batch}, {d_inner, length}), 1);
  f.tensors["delta"] = testing::random(shape({batch}, {d_inner, length}), 2);
  f.tensors["A"] = testing::random(shape({}, {d_inner, d_state}), 3, DType::Float64, -2.0, -0.1);
  f.tensors["B"] = testing::random(shape({batch}, {groups, d_state, length}), 4);
  f.tensors["C"] = testing::random(shape({batch}, {groups, d_state, length}), 5);
  f.tensors["D"] = testing::random(shape({}, {d_inner}), 6);
  f.tensors["z"] = testing::random(shape({batch}, {d_inner, length}), 7);
  f.tensors["delta_bias"] = testing::random(shape({}, {d_inner}), 8);
  f.tensors["initial_state"] = testing::random(shape({batch}, {d_inner, d_state}), 9);
  f.tensors["grad_y"] = testing::random(shape({batch}, {d_inner, length}), 10);
  f.tensors["grad_final_state"] = testing::random(shape({batch}, {d_inner, d_state}), 11);
  f.tensors["grad_states"] = testing::random(shape({batch}, {d_inner, length, d_state}), 12);
  f.integers["delta_softplus"] = 1;
  f.integers["return_states"] = 1;
  return f;
}

// The flags of one selective_scan run.
struct ScanFlags {
  bool delta_softplus = false, reverse = false, return_states = false;
  std::vector<bool> reversed;  // per route
};

Outputs run_scan(const Leaves& leaves, const ScanFlags& flags) {
  ops::SelectiveScanOptions options;
  options.D = optional(leaves, "D");
  options.z = optional(leaves, "z");
  options.delta_bias = optional(leaves, "delta_bias");
  options.initial_state = optional(leaves, "initial_state");
  options.delta_softplus = flags.delta_softplus;
  options.reverse = flags.reverse;
  options.return_final_state = true;
  options.return_states = flags.return_states;
  const Tensor &u = leaves.at("u"), &delta = leaves.at("delta"), &A = leaves.at("A");
  const Tensor &B = leaves.at("B"), &C = leaves.at("C");
  ops::SelectiveScanResult r = u.dim() == 4 ? ops::selective_scan_routes(u, delta, A, B, C, flags.reversed, options)
                                            : ops::selective_scan(u, delta, A, B, C, options);
  Outputs outputs{{"y", r.y}, {"final_state", r.final_state}};
  if (flags.return_states) outputs.emplace_back("states", r.states);
  return outputs;
}

OpFile conv_file() {
  OpFile f;
  f.tensors["x"] = testing::random({2, 5, 11}, 1);
  f.tensors["weight"] = testing::random({5, 4}, 2, DType::Float64, -0.5, 0.5);
  f.tensors["bias"] = testing::random({5}, 3, DType::Float64, -0.5, 0.5);
  f.tensors["grad_y"] = testing::random({2, 5, 11}, 4);
  f.integers["silu"] = 1;
  return f;
}

// An SSD of 2 sequences, 10 positions in chunks of 4, 4 heads of 3 in 2 groups,
// d_state 5, with every optional input and upstream gradient.
OpFile ssd_file() {
  OpFile f;
  f.tensors["x"] = testing::random({2, 10, 4, 3}, 1);
  f.tensors["dt"] = testing::random({2, 10, 4}, 2);
  f.tensors["A"] = testing::random({4}, 3, DType::Float64, -4.0, -1.0);
  f.tensors["B"] = testing::random({2, 10, 2, 5}, 4);
  f.tensors["C"] = testing::random({2, 10, 2, 5}, 5);
  f.tensors["D"] = testing::random({4}, 6);
  f.tensors["dt_bias"] = testing::random({4}, 7);
  f.tensors["initial_state"] = testing::random({2, 4, 3, 5}, 8);
  f.tensors["grad_y"] = testing::random({2, 10, 4, 3}, 9);
  f.tensors["grad_final_state"] = testing::random({2, 4, 3, 5}, 10);
  f.integers["dt_softplus"] = 1;
  f.integers["chunk_size"] = 4;
  return f;
}

Outputs run_ssd(const Leaves& leaves, bool softplus, int64_t chunk_size) {
  ops::SsdOptions options;
  options.D = optional(leaves, "D");
  options.dt_bias = optional(leaves, "dt_bias");
  options.initial_state = optional(leaves, "initial_state");
  options.dt_softplus = softplus;
  options.chunk_size = chunk_size;
  options.return_final_state = true;
  ops::SsdResult r = ops::ssd_chunked(leaves.at("x"), leaves.at("dt"), leaves.at("A"), leaves.at("B"),
                                      leaves.at("C"), options);
  return {{"y", r.y}, {"final_state", r.final_state}};
}

}  // namespace

TEST_CASE("op selective_scan writes y, the final state, the states and every gradient of ops::selective_scan") {
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    OpFile f = scan_file(0);
    f.integers["reverse"] = reverse ? 1 : 0;
    const ScanFlags flags{true, reverse, true, {}};
    check_op("selective_scan", f, expected_results(f, [&](const Leaves& l) { return run_scan(l, flags); }));
  }
}

TEST_CASE("op selective_scan runs K routes in one launch when u has a route dim") {
  OpFile f = scan_file(2);
  f.tensors["reversed"] = Tensor::from_vector(std::vector<int64_t>{0, 1}, {2});
  // Without return_states: only y and the final state have upstream gradients.
  f.integers.erase("return_states");
  f.tensors.erase("grad_states");
  OpFile inputs = f;
  inputs.tensors.erase("reversed");  // a flag, not a leaf
  check_op("selective_scan", f,
           expected_results(inputs, [](const Leaves& l) { return run_scan(l, {true, false, false, {false, true}}); }));
}

TEST_CASE("op selective_scan without upstream gradients runs the forward pass only") {
  OpFile f = scan_file(0);
  for (const char* name : {"D", "z", "delta_bias", "initial_state", "grad_y", "grad_final_state", "grad_states"})
    f.tensors.erase(name);
  f.integers.clear();
  check_op("selective_scan", f, expected_results(f, [](const Leaves& l) { return run_scan(l, ScanFlags{}); }));
}

TEST_CASE("op selective_scan names the file and the dataset of bad input on one line") {
  OpFile f = scan_file(0);
  f.tensors.erase("B");
  check_op_error("selective_scan", &f, {"no dataset 'B'", "(batch, groups, N, length)"});
  f = scan_file(0);
  f.tensors["delta"] = testing::random({2, 4, 12}, 2);
  check_op_error("selective_scan", &f, {"delta float64[2, 4, 12]"});
  f = scan_file(0);
  f.integers["delta_softpuls"] = 1;
  check_op_error("selective_scan", &f, {"'delta_softpuls' is not an input"});
  f = scan_file(0);
  f.integers["reverse"] = 2;
  check_op_error("selective_scan", &f, {"reverse: must be 0 or 1, got 2"});
  f = scan_file(0);
  f.integers.erase("return_states");
  check_op_error("selective_scan", &f, {"grad_states is given but return_states is not 1"});
  f = scan_file(0);
  f.tensors["grad_y"] = testing::random({2, 4, 3}, 10);
  check_op_error("selective_scan", &f, {"grad_y: float64[2, 4, 3] on cpu must have the shape of y"});
  check_op_error("selective_scan", nullptr, {"no such file"});
}

TEST_CASE("op causal_conv1d writes y and every gradient of ops::causal_conv1d") {
  OpFile f = conv_file();
  check_op("causal_conv1d", f, expected_results(f, [](const Leaves& l) {
             return Outputs{{"y", ops::causal_conv1d(l.at("x"), l.at("weight"), l.at("bias"), true)}};
           }));
}

TEST_CASE("op causal_conv1d without grad_y runs the forward pass only") {
  OpFile f = conv_file();
  f.tensors.erase("bias");
  f.tensors.erase("grad_y");
  f.integers.clear();
  check_op("causal_conv1d", f, expected_results(f, [](const Leaves& l) {
             return Outputs{{"y", ops::causal_conv1d(l.at("x"), l.at("weight"))}};
           }));
}

TEST_CASE("op causal_conv1d names the file and the dataset of bad input on one line") {
  OpFile f = conv_file();
  f.tensors.erase("weight");
  check_op_error("causal_conv1d", &f, {"no dataset 'weight'", "(channels, kernel_size)"});
  f = conv_file();
  f.tensors["bias"] = testing::random({4}, 3);
  check_op_error("causal_conv1d", &f, {"bias float64[4]"});
  check_op_error("causal_conv1d", nullptr, {"no such file"});
}

TEST_CASE("op ssd writes y, the final state and every gradient of ops::ssd_chunked") {
  OpFile f = ssd_file();
  check_op("ssd", f, expected_results(f, [](const Leaves& l) { return run_ssd(l, true, 4); }));
}

TEST_CASE("op ssd without upstream gradients runs the forward pass only, in chunks of 256 by default") {
  OpFile f = ssd_file();
  for (const char* name : {"D", "dt_bias", "initial_state", "grad_y", "grad_final_state"}) f.tensors.erase(name);
  f.integers.clear();
  check_op("ssd", f, expected_results(f, [](const Leaves& l) { return run_ssd(l, false, 256); }));
}

TEST_CASE("op ssd names the file and the dataset of bad input on one line") {
  OpFile f = ssd_file();
  f.tensors.erase("C");
  check_op_error("ssd", &f, {"no dataset 'C'", "(batch, length, groups, d_state)"});
  f = ssd_file();
  f.tensors["dt"] = testing::random({2, 10, 3}, 2);
  check_op_error("ssd", &f, {"dt float64[2, 10, 3]"});
  f = ssd_file();
  f.integers["chunk_size"] = 0;
  check_op_error("ssd", &f, {"chunk_size must be positive"});
  check_op_error("ssd", nullptr, {"no such file"});
}

TEST_CASE("op gated_rms_norm writes y and every gradient of ops::gated_rms_norm") {
  OpFile f;
  f.tensors["x"] = testing::random({3, 2, 8}, 1);
  f.tensors["z"] = testing::random({3, 2, 8}, 2);
  f.tensors["weight"] = testing::random({8}, 3);
  f.tensors["grad_y"] = testing::random({3, 2, 8}, 4);
  f.numbers["eps"] = 1e-3;
  f.integers["group_size"] = 4;
  check_op("gated_rms_norm", f, expected_results(f, [](const Leaves& l) {
             return Outputs{{"y", ops::gated_rms_norm(l.at("x"), l.at("z"), l.at("weight"), 1e-3, 4)}};
           }));

  // Forward only, no gate, no weight, the defaults eps = 1e-5 and one group.
  OpFile plain;
  plain.tensors["x"] = f.tensors["x"];
  check_op("gated_rms_norm", plain, expected_results(plain, [](const Leaves& l) {
             return Outputs{{"y", ops::gated_rms_norm(l.at("x"), Tensor(), Tensor())}};
           }));

  f.tensors["z"] = testing::random({3, 2, 7}, 2);
  check_op_error("gated_rms_norm", &f, {"z float64[3, 2, 7]"});
  f.tensors.erase("x");
  check_op_error("gated_rms_norm", &f, {"no dataset 'x'"});
}
