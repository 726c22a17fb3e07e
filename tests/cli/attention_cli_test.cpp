// `strata bench attention` and `strata op attention`, run as the built binary
// (STRATA_BINARY) on the CPU: the bench prints a line per measurement and exports
// its layouts; the op reads HDF5 inputs and writes the outputs and gradients that
// ops::attention (block_sparse_attention, dynamic_mask_attention) gives here for
// the same inputs.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "strata/checkpoint/h5file.h"
#include "strata/kernels/block_layout.h"
#include "strata/ops/attention.h"
#include "support/check.h"
#include "support/cli.h"
#include "support/temporary_folder.h"

namespace fs = std::filesystem;
using namespace strata;

namespace {

using Result = testing::CommandResult;
using testing::run_strata;
using testing::slurp;


bool has_line_starting(const std::string& text, const std::string& start) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind(start, 0) == 0) return true;
  return false;
}

const char* const kLayouts[] = {"causal",
                                "sliding(window=4)",
                                "sliding(window=16)",
                                "dilated(window=8,dilation=2)",
                                "dilated(window=8,dilation=4)",
                                "power(local=2,sinks=1)",
                                "s2(local=4,stride=8)",
                                "s2(local=4,stride=16)",
                                "neighborhood(window=5)",
                                "neighborhood(window=9,dilation=2)",
                                "neighborhood2d(window=7x7)",
                                "topk(k=4)",
                                "topk(k=16)"};

// Inputs of one op run, in float64 so that the binary and the test compute the same
// numbers up to rounding.
struct AttentionInputs {
  Tensor q, k, v, bias, sinks, query_temperature, key_temperature, grad_out;
};

// Grouped-query (4 heads on 2 kv heads), lengths not a multiple of anything, a
// broadcast bias, sinks and both temperatures: every input the file format has.
AttentionInputs make_inputs(int64_t batch, int64_t query_length, int64_t key_length) {
  AttentionInputs t;
  t.q = testing::random({batch, 4, query_length, 8}, 1);
  t.k = testing::random({batch, 2, key_length, 8}, 2);
  t.v = testing::random({batch, 2, key_length, 8}, 3);
  t.bias = testing::random({1, 4, 1, key_length}, 4);
  t.sinks = testing::random({4}, 5);
  t.query_temperature = testing::random({batch, 4, query_length}, 6, DType::Float64, 0.5, 1.5);
  t.key_temperature = testing::random({batch, 2, key_length}, 7, DType::Float64, 0.5, 1.5);
  t.grad_out = testing::random({batch, 4, query_length, 8}, 8);
  return t;
}

// With `layout`, its CSR arrays too; with `probabilities`, return_probabilities = 1.
void write_inputs(const fs::path& path, const AttentionInputs& t, bool causal, double scale, bool probabilities,
                  const kernels::BlockLayout* layout) {
  checkpoint::H5Writer writer(path.string());
  writer.write_tensor("q", t.q);
  writer.write_tensor("k", t.k);
  writer.write_tensor("v", t.v);
  writer.write_tensor("bias", t.bias);
  writer.write_tensor("sinks", t.sinks);
  writer.write_tensor("query_temperature", t.query_temperature);
  writer.write_tensor("key_temperature", t.key_temperature);
  writer.write_tensor("grad_out", t.grad_out);
  writer.write_int("causal", causal ? 1 : 0);
  writer.write_double("scale", scale);
  if (probabilities) writer.write_int("return_probabilities", 1);
  if (layout) {
    writer.write_int("layout/block_size", layout->geometry().block_size);
    writer.write_tensor("layout/row_offsets", layout->row_offsets());
    writer.write_tensor("layout/column_indices", layout->column_indices());
  }
  writer.commit();
}

// out, lse, the probabilities when asked for and the gradient of every input, by
// ops::attention (or the block-sparse op) in this process.
std::map<std::string, Tensor> expected_outputs(const AttentionInputs& given, bool causal, double scale,
                                               bool probabilities, const kernels::BlockLayout* layout) {
  std::map<std::string, Tensor> leaves{{"q", given.q.clone()},
                                       {"k", given.k.clone()},
                                       {"v", given.v.clone()},
                                       {"bias", given.bias.clone()},
                                       {"sinks", given.sinks.clone()},
                                       {"query_temperature", given.query_temperature.clone()},
                                       {"key_temperature", given.key_temperature.clone()}};
  for (auto& [name, leaf] : leaves) leaf.set_requires_grad(true);
  ops::AttentionOptions options;
  options.causal = causal;
  options.scale = scale;
  options.bias = leaves["bias"];
  options.sinks = leaves["sinks"];
  options.query_temperature = leaves["query_temperature"];
  options.key_temperature = leaves["key_temperature"];
  options.return_lse = true;
  options.return_probabilities = probabilities;
  ops::AttentionResult r =
      layout ? ops::block_sparse_attention(leaves["q"], leaves["k"], leaves["v"], *layout, options)
             : ops::attention(leaves["q"], leaves["k"], leaves["v"], options);
  autograd::backward(r.out, given.grad_out);
  std::map<std::string, Tensor> expected{{"out", r.out.detach()}, {"lse", r.lse.detach()}};
  if (probabilities) expected["probabilities"] = r.probabilities;
  for (auto& [name, leaf] : leaves) expected["grad_" + name] = leaf.grad();
  return expected;
}

// Inputs of a dynamic mask attention run: grouped-query (4 heads on 2 kv heads) and
// Lq < Lk, so the causal alignment at the ends matters.
struct DynamicMaskInputs {
  Tensor q, k, v, key_bias, grad_out;
};

DynamicMaskInputs make_dynamic_mask_inputs(int64_t batch, int64_t query_length, int64_t key_length) {
  DynamicMaskInputs t;
  t.q = testing::random({batch, 4, query_length, 8}, 11);
  t.k = testing::random({batch, 2, key_length, 8}, 12);
  t.v = testing::random({batch, 2, key_length, 8}, 13);
  // Random doubles: no ties, so which keys are kept does not hang on rounding.
  t.key_bias = testing::random({batch, 2, key_length}, 14, DType::Float64, -2.0, 2.0);
  t.grad_out = testing::random({batch, 4, query_length, 8}, 15);
  return t;
}

// Without grad_out when `gradient` is false; causal = 1 written when `write_causal`.
void write_dynamic_mask_inputs(const fs::path& path, const DynamicMaskInputs& t, int64_t keep_window, double scale,
                               bool gradient, bool write_causal) {
  checkpoint::H5Writer writer(path.string());
  writer.write_tensor("q", t.q);
  writer.write_tensor("k", t.k);
  writer.write_tensor("v", t.v);
  writer.write_tensor("key_bias", t.key_bias);
  writer.write_int("keep_window", keep_window);
  writer.write_double("scale", scale);
  if (write_causal) writer.write_int("causal", 1);
  if (gradient) writer.write_tensor("grad_out", t.grad_out);
  writer.commit();
}

// out and (with `gradient`) the gradients of q, k, v and key_bias, by
// ops::dynamic_mask_attention in this process.
std::map<std::string, Tensor> expected_dynamic_mask_outputs(const DynamicMaskInputs& given, int64_t keep_window,
                                                            double scale, bool gradient) {
  std::map<std::string, Tensor> leaves{
      {"q", given.q.clone()}, {"k", given.k.clone()}, {"v", given.v.clone()}, {"key_bias", given.key_bias.clone()}};
  for (auto& [name, leaf] : leaves) leaf.set_requires_grad(true);
  Tensor out =
      ops::dynamic_mask_attention(leaves["q"], leaves["k"], leaves["v"], leaves["key_bias"], keep_window, scale);
  std::map<std::string, Tensor> expected{{"out", out.detach()}};
  if (!gradient) return expected;
  autograd::backward(out, given.grad_out);
  for (auto& [name, leaf] : leaves) expected["grad_" + name] = leaf.grad();
  return expected;
}

void check_outputs(const fs::path& path, const std::map<std::string, Tensor>& expected) {
  checkpoint::H5Reader reader(path.string());
  for (const auto& [name, tensor] : expected) {
    CAPTURE(name);
    REQUIRE(reader.has(name));
    Tensor written = reader.read_tensor(name);
    CHECK(written.dtype() == tensor.dtype());
    // The same float64 kernels on the same inputs: only summation order (OpenMP
    // threads) can differ.
    double difference = testing::max_abs_difference(written, tensor);
    CHECK(difference < 1e-12);
  }
  // Nothing else: every dataset written is one of the expected.
  CHECK(reader.list("/").size() == expected.size());
}

}  // namespace

TEST_CASE("bench attention on the CPU prints a dense line per pass and a sparse line per layout") {
  testing::TemporaryFolder scratch("attention-cli-bench");
  fs::path layouts = scratch.path / "layouts";
  Result r = run_strata("bench attention --device cpu --export-layouts " + layouts.string());
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  for (const char* pass : {"forward", "backward"})
    for (const char* mask : {"full", "causal"})
      CHECK_MESSAGE(has_line_starting(r.out, fmt::format("attention {} {} L=128 D=32 B=1 H=2", pass, mask)), r.out);
  CHECK(has_line_starting(r.out, "attention sparse dense(reference)"));
  for (const char* layout : kLayouts) {
    CAPTURE(layout);
    CHECK(has_line_starting(r.out, fmt::format("attention sparse {:<34} L=256 D=32 density", layout)));
  }
  CHECK(has_line_starting(r.out, fmt::format("attention sparse {:<34} L=256 D=32 selection", "topk(k=4)")));
  for (int window : {8, 16, 32, 64, 128}) {
    CAPTURE(window);
    CHECK(has_line_starting(r.out, fmt::format("attention dma forward window={} L=256 D=32 B=1 H=2", window)));
    CHECK(has_line_starting(r.out, fmt::format("attention dma backward window={} L=256 D=32 B=1 H=2", window)));
  }

  // The index names every layout file, and each file's key-block lists are those of
  // the builder the bench used.
  nlohmann::json index = nlohmann::json::parse(slurp(layouts / "strata.json"));
  CHECK(index["dense"].size() == 2);
  CHECK(index["dma"].size() == 5);
  REQUIRE(index["sparse"].size() == std::size(kLayouts));
  for (const auto& entry : index["sparse"]) {
    nlohmann::json layout = nlohmann::json::parse(slurp(layouts / entry["file"].get<std::string>()));
    CHECK(layout["block_size"] == 64);
    CHECK(layout["query_length"] == 256);
    CHECK(entry["forward_ms"].get<double>() > 0);
    if (layout["layout"] == "sliding(window=4)") {
      kernels::BlockLayout built = kernels::sliding_window_layout({256, 256, 64}, 4);
      for (int64_t query_block = 0; query_block < 4; ++query_block)
        CHECK(layout["key_blocks"][0][0][query_block].get<std::vector<int32_t>>() ==
              built.key_blocks_of(0, query_block));
    }
    // key_blocks[batch][head][query_block]: s2 has a pattern per head, top-k one per
    // sequence and head (batch 1 here, 2 heads), the others one shared by all.
    if (layout["layout"] == "s2(local=4,stride=8)") CHECK(layout["key_blocks"][0].size() == 2);
    if (layout["layout"] == "topk(k=4)") CHECK(layout["key_blocks"][0].size() == 2);
    if (layout["layout"] == "causal") CHECK(layout["key_blocks"][0].size() == 1);
    CHECK(layout["key_blocks"][0][0].size() == 4);  // query blocks
  }

  Result dense_only = run_strata("bench attention --device cpu --only dense --lengths 64 --head-dims 16");
  REQUIRE_MESSAGE(dense_only.exit_code == 0, dense_only.err);
  CHECK(has_line_starting(dense_only.out, "attention forward full L=64 D=16 B=2 H=4"));
  CHECK(dense_only.out.find("attention sparse") == std::string::npos);
}

TEST_CASE("op attention writes the outputs and gradients of ops::attention") {
  testing::TemporaryFolder scratch("attention-cli-op");
  AttentionInputs inputs = make_inputs(2, 37, 41);
  for (bool causal : {false, true}) {
    CAPTURE(causal);
    write_inputs(scratch.path / "in.h5", inputs, causal, 0.4, false, nullptr);
    Result r = run_strata(fmt::format("op attention {0}/in.h5 {0}/out.h5", scratch.path.string()));
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    check_outputs(scratch.path / "out.h5", expected_outputs(inputs, causal, 0.4, false, nullptr));
  }
}

TEST_CASE("op attention with return_probabilities writes the probabilities of ops::attention") {
  testing::TemporaryFolder scratch("attention-cli-probabilities");
  AttentionInputs inputs = make_inputs(1, 13, 17);
  write_inputs(scratch.path / "in.h5", inputs, true, 0.4, true, nullptr);
  Result r = run_strata(fmt::format("op attention {0}/in.h5 {0}/out.h5", scratch.path.string()));
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  check_outputs(scratch.path / "out.h5", expected_outputs(inputs, true, 0.4, true, nullptr));
  // Independently of the op: each row of probabilities and the sink's share
  // exp(sink_h - lse_i) add up to 1.
  checkpoint::H5Reader written((scratch.path / "out.h5").string());
  Tensor probabilities = written.read_tensor("probabilities").contiguous();
  Tensor lse = written.read_tensor("lse").contiguous();
  REQUIRE(probabilities.shape() == Shape({1, 4, 13, 17}));
  for (int64_t head = 0; head < 4; ++head)
    for (int64_t query = 0; query < 13; ++query) {
      double total = std::exp(inputs.sinks.data<double>()[head] - lse.data<double>()[head * 13 + query]);
      for (int64_t key = 0; key < 17; ++key) total += probabilities.data<double>()[(head * 13 + query) * 17 + key];
      CHECK(std::abs(total - 1.0) < 1e-12);
    }
}

TEST_CASE("op attention with a CSR layout runs the block-sparse op") {
  testing::TemporaryFolder scratch("attention-cli-layout");
  AttentionInputs inputs = make_inputs(1, 150, 140);
  // Per head, blocks of 64: 3 query blocks, 3 key blocks; head 1 skips a whole row.
  kernels::BlockLayout layout = kernels::BlockLayout::from_lists(
      {150, 140, 64}, {{{0}, {0, 1}, {1, 2}}, {{0, 2}, {}, {2}}, {{0, 1, 2}, {1}, {0}}, {{2}, {0}, {1}}});
  for (bool probabilities : {false, true}) {
    CAPTURE(probabilities);
    write_inputs(scratch.path / "in.h5", inputs, false, 0.4, probabilities, &layout);
    Result r = run_strata(fmt::format("op attention {0}/in.h5 {0}/out.h5", scratch.path.string()));
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    check_outputs(scratch.path / "out.h5", expected_outputs(inputs, false, 0.4, probabilities, &layout));
  }
}

TEST_CASE("op attention with a key_bias writes the outputs and gradients of ops::dynamic_mask_attention") {
  testing::TemporaryFolder scratch("attention-cli-dma");
  DynamicMaskInputs inputs = make_dynamic_mask_inputs(2, 29, 41);
  // Query i sees keys j <= i + 12, 13 to 41 of them: a window of 5 drops keys for
  // every query, one of 64 none (dense causal attention plus the bias).
  for (int64_t keep_window : {5, 64}) {
    for (bool gradient : {true, false}) {
      CAPTURE(keep_window);
      CAPTURE(gradient);
      write_dynamic_mask_inputs(scratch.path / "in.h5", inputs, keep_window, 0.4, gradient, keep_window == 5);
      Result r = run_strata(fmt::format("op attention {0}/in.h5 {0}/out.h5", scratch.path.string()));
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      check_outputs(scratch.path / "out.h5", expected_dynamic_mask_outputs(inputs, keep_window, 0.4, gradient));
    }
  }
}

TEST_CASE("op attention names the file and the dataset of bad input on one line") {
  testing::TemporaryFolder scratch("attention-cli-errors");
  fs::path in = scratch.path / "in.h5", out = scratch.path / "out.h5";
  auto run = [&] { return run_strata(fmt::format("op attention {} {}", in.string(), out.string())); };
  auto check_error = [&](const Result& r, const std::vector<std::string>& parts) {
    CHECK(r.exit_code != 0);
    CHECK_MESSAGE(r.err.find('\n') == r.err.size() - 1, r.err);  // one line
    for (const std::string& part : parts) CHECK_MESSAGE(r.err.find(part) != std::string::npos, r.err);
    CHECK_FALSE(fs::exists(out));
  };
  {
    checkpoint::H5Writer writer(in.string());
    writer.write_tensor("q", testing::random({1, 2, 5, 4}, 1));
    writer.write_tensor("k", testing::random({1, 2, 5, 4}, 2));
    writer.commit();
  }
  check_error(run(), {in.string(), "v"});
  {
    checkpoint::H5Writer writer(in.string());
    writer.write_tensor("q", testing::random({1, 2, 5, 4}, 1));
    writer.write_tensor("k", testing::random({1, 2, 5, 4}, 2));
    writer.write_tensor("v", testing::random({1, 2, 6, 4}, 3));
    writer.commit();
  }
  check_error(run(), {in.string(), "v float64[1, 2, 6, 4] on cpu must have the shape of k"});
  // Lq = Lk = 130: 3 blocks of 64.
  auto write_layout = [&](const std::vector<int32_t>& row_offsets, const std::vector<int32_t>& column_indices) {
    checkpoint::H5Writer writer(in.string());
    for (const char* name : {"q", "k", "v"}) writer.write_tensor(name, testing::random({1, 2, 130, 4}, 1));
    writer.write_int("layout/block_size", 64);
    writer.write_tensor("layout/row_offsets",
                        Tensor::from_vector(row_offsets, {static_cast<int64_t>(row_offsets.size())}));
    writer.write_tensor("layout/column_indices",
                        Tensor::from_vector(column_indices, {static_cast<int64_t>(column_indices.size())}));
    writer.commit();
  };
  write_layout({0, 1, 2, 3}, {0, 1, 7});
  check_error(run(), {in.string(), "layout", "key block 7"});
  write_layout({0, 1, 2}, {0, 1});
  check_error(run(), {in.string(), "layout/row_offsets", "heads * 3 + 1"});
  write_layout({0, 1, 2, 4}, {0, 1, 2});
  check_error(run(), {in.string(), "layout/row_offsets", "end at 3"});

  // Dynamic mask attention: q (1, 2, 5, 4), k and v (1, 1, 5, 4), key_bias (1, 1, 5)
  // unless `key_bias_shape` says otherwise; `extra` adds datasets.
  auto write_dynamic_mask = [&](const Shape& key_bias_shape, const std::function<void(checkpoint::H5Writer&)>& extra) {
    checkpoint::H5Writer writer(in.string());
    writer.write_tensor("q", testing::random({1, 2, 5, 4}, 1));
    writer.write_tensor("k", testing::random({1, 1, 5, 4}, 2));
    writer.write_tensor("v", testing::random({1, 1, 5, 4}, 3));
    writer.write_tensor("key_bias", testing::random(key_bias_shape, 4));
    extra(writer);
    writer.commit();
  };
  auto keep_window = [](checkpoint::H5Writer& writer) { writer.write_int("keep_window", 2); };
  write_dynamic_mask({1, 2, 5}, keep_window);
  check_error(run(), {in.string(), "key_bias float64[1, 2, 5] on cpu must be (batch, kv_heads, Lk) = [1, 1, 5]"});
  write_dynamic_mask({1, 1, 5}, [](checkpoint::H5Writer&) {});
  check_error(run(), {in.string(), "keep_window: required with key_bias"});
  write_dynamic_mask({1, 1, 5}, [](checkpoint::H5Writer& writer) { writer.write_int("keep_window", 0); });
  check_error(run(), {in.string(), "keep_window: must be positive, got 0"});
  write_dynamic_mask({1, 1, 5}, [&](checkpoint::H5Writer& writer) {
    keep_window(writer);
    writer.write_int("causal", 0);
  });
  check_error(run(), {in.string(), "causal: dynamic mask attention is causal"});
  write_dynamic_mask({1, 1, 5}, [&](checkpoint::H5Writer& writer) {
    keep_window(writer);
    writer.write_int("layout/block_size", 64);
    writer.write_tensor("layout/row_offsets", Tensor::from_vector(std::vector<int32_t>{0, 1}, {2}));
    writer.write_tensor("layout/column_indices", Tensor::from_vector(std::vector<int32_t>{0}, {1}));
  });
  check_error(run(), {in.string(), "layout: not taken by dynamic mask attention"});
  write_dynamic_mask({1, 1, 5}, [&](checkpoint::H5Writer& writer) {
    keep_window(writer);
    writer.write_tensor("sinks", testing::random({2}, 5));
  });
  check_error(run(), {in.string(), "sinks: not taken by dynamic mask attention"});
  {
    checkpoint::H5Writer writer(in.string());
    for (const char* name : {"q", "k", "v"}) writer.write_tensor(name, testing::random({1, 2, 5, 4}, 1));
    writer.write_int("keep_window", 2);
    writer.commit();
  }
  check_error(run(), {in.string(), "keep_window: needs a key_bias"});
  {
    checkpoint::H5Writer writer(in.string());
    for (const char* name : {"q", "k", "v"}) writer.write_tensor(name, testing::random({1, 2, 5, 4}, 1));
    writer.write_int("return_probabilities", 2);
    writer.commit();
  }
  check_error(run(), {in.string(), "return_probabilities: must be 0 or 1, got 2"});
  {
    checkpoint::H5Writer writer(in.string());
    for (const char* name : {"q", "k", "v"}) writer.write_tensor(name, testing::random({1, 2, 5, 4}, 1));
    writer.write_int("casual", 1);  // misspelt: would otherwise run non-causal
    writer.commit();
  }
  check_error(run(), {in.string(), "dataset 'casual' is not an input of this op"});
}
