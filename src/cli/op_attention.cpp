// strata op attention IN.h5 OUT.h5: ops::attention (or ops::block_sparse_attention
// when IN.h5 has a layout, ops::dynamic_mask_attention when it has a key_bias) on
// tensors read from IN.h5, with its outputs and, given an upstream gradient, the
// gradient of every input written to OUT.h5. The datasets are listed in kHelp; the
// equations are those of strata/ops/attention.h.
//
// The layout is read as CSR arrays rather than a builder name and parameters, so
// any framework can hand over any block mask (FlexAttention's kv_indices, a
// hand-written pattern) and the builders are checked by comparing their arrays.
#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "cli/op.h"
#include "strata/autograd/autograd.h"
#include "strata/checkpoint/h5file.h"
#include "strata/kernels/block_layout.h"
#include "strata/ops/attention.h"

namespace strata::cli {

namespace {

using checkpoint::H5Reader;
using checkpoint::H5Writer;

constexpr const char* kHelp = R"(IN.h5 (datasets at the root; shapes as in strata/ops/attention.h):
  q                   (batch, heads, Lq, head_dim)     required
  k, v                (batch, kv_heads, Lk, head_dim)  required; heads a multiple of kv_heads
  bias                broadcastable to (batch, heads, Lq, Lk)
  sinks               (heads)
  query_temperature   broadcastable to (batch, heads, Lq)
  key_temperature     broadcastable to (batch, kv_heads, Lk)
  causal              integer 0 or 1 (default 0)
  scale               number (default 1 / sqrt(head_dim))
  return_probabilities
                      integer 0 or 1 (default 0): also write the attention probabilities
                      (at most 2^28 elements; not with key_bias)
  grad_out            (batch, heads, Lq, head_dim): the upstream gradient of out; without
                      it only the forward pass runs
  layout/block_size, layout/row_offsets, layout/column_indices
                      a block-sparse layout in CSR form: query blocks of block_size
                      positions, rows r = head * query_blocks + query_block, the key blocks
                      of row r are column_indices[row_offsets[r] .. row_offsets[r + 1]);
                      one head (shared) or one per attention head. With a layout,
                      ops::block_sparse_attention runs instead of ops::attention.
Dynamic mask attention (ops::dynamic_mask_attention, always causal) runs instead when
IN.h5 has a key_bias:
  key_bias            (batch, kv_heads, Lk): one logit bias per key, shared by the
                      queries (a model forms it from the values: A softplus(dt))
  keep_window         integer >= 1, required with key_bias: each query keeps the
                      keep_window causally visible keys of largest key_bias (ties: the
                      lower index)
  with q, k, v, scale, grad_out as above; causal may be given only as 1; bias, sinks,
  the temperatures, return_probabilities and a layout are errors with key_bias.
Dtypes: q, k, v float32 or float64 on cpu; float32, bfloat16 or float16 on cuda; the
others any float dtype.

OUT.h5 (written atomically):
  out                 (batch, heads, Lq, head_dim)
  lse                 (batch, heads, Lq); not with key_bias (the op does not return it)
  probabilities       (batch, heads, Lq, Lk), with return_probabilities: lse's dtype, zero
                      where a key is not visible; not differentiated
  grad_q, grad_k, grad_v, grad_<name>
                      with grad_out: the gradient of every input, grad_<name> for each of
                      bias, sinks, query_temperature, key_temperature, key_bias given)";

// Optional tensors read as leaves (each gets a gradient); key_bias selects dynamic
// mask attention.
const char* const kOptionalInputs[] = {"bias", "sinks", "query_temperature", "key_temperature", "key_bias"};

// The datasets only ops::attention and ops::block_sparse_attention take.
const char* const kDenseOnlyInputs[] = {"bias", "sinks", "query_temperature", "key_temperature",
                                        "return_probabilities", "layout"};

// The forward outputs to write, out first (the one grad_out is the gradient of).
using Outputs = std::vector<std::pair<std::string, Tensor>>;

// An integer dataset 0 or 1, false when absent.
bool read_flag(const H5Reader& in, const char* name) {
  if (!in.has(name)) return false;
  const int64_t value = in.read_int(name);
  STRATA_CHECK(value == 0 || value == 1, "{}: {}: must be 0 or 1, got {}", in.path(), name, value);
  return value == 1;
}

std::optional<double> read_scale(const H5Reader& in) {
  return in.has("scale") ? std::optional<double>(in.read_double("scale")) : std::nullopt;
}

// The CSR arrays of IN.h5 as a layout, with errors naming the dataset.
kernels::BlockLayout read_layout(const H5Reader& in, int64_t query_length, int64_t key_length) {
  const std::string& file = in.path();
  kernels::LayoutGeometry geometry{query_length, key_length, in.read_int("layout/block_size")};
  STRATA_CHECK(geometry.block_size > 0, "{}: layout/block_size: must be positive, got {}", file, geometry.block_size);
  Tensor row_offsets = in.read_tensor("layout/row_offsets").to(DType::Int64).contiguous();
  Tensor column_indices = in.read_tensor("layout/column_indices").to(DType::Int64).contiguous();
  const int64_t query_blocks = geometry.query_blocks(), rows = row_offsets.numel() - 1;
  STRATA_CHECK(row_offsets.dim() == 1 && rows >= query_blocks && rows % query_blocks == 0,
               "{}: layout/row_offsets: {} must have heads * {} + 1 entries ({} query blocks of {} for Lq = {})", file,
               row_offsets.str(), query_blocks, query_blocks, geometry.block_size, query_length);
  STRATA_CHECK(column_indices.dim() == 1, "{}: layout/column_indices: {} must be one-dimensional", file,
               column_indices.str());
  const int64_t* offsets = row_offsets.data<int64_t>();
  const int64_t* columns = column_indices.data<int64_t>();
  STRATA_CHECK(offsets[0] == 0 && offsets[rows] == column_indices.numel(),
               "{}: layout/row_offsets: must start at 0 and end at {} (the entries of layout/column_indices), "
               "got {} and {}", file, column_indices.numel(), offsets[0], offsets[rows]);
  std::vector<std::vector<std::vector<int32_t>>> key_blocks(rows / query_blocks);
  for (int64_t row = 0; row < rows; ++row) {
    STRATA_CHECK(offsets[row] <= offsets[row + 1], "{}: layout/row_offsets: decreases at row {}", file, row);
    key_blocks[row / query_blocks].emplace_back(columns + offsets[row], columns + offsets[row + 1]);
  }
  return with_context("reading the layout of " + file, [&] { return kernels::BlockLayout::from_lists(geometry, key_blocks); });
}

// ops::dynamic_mask_attention on q, k, v and key_bias. It is causal and takes none
// of ops::attention's options, so any of them in IN.h5 is an error rather than
// silently ignored (the numbers would not be those the user asked for).
Outputs run_dynamic_mask_attention(const H5Reader& in, const std::map<std::string, Tensor>& inputs) {
  const std::string& file = in.path();
  for (const char* name : kDenseOnlyInputs)
    STRATA_CHECK(!in.has(name), "{}: {}: not taken by dynamic mask attention (IN.h5 has a key_bias)", file, name);
  STRATA_CHECK(!in.has("causal") || read_flag(in, "causal"),
               "{}: causal: dynamic mask attention is causal, so causal can only be 1", file);
  STRATA_CHECK(in.has("keep_window"), "{}: keep_window: required with key_bias (dynamic mask attention)", file);
  const int64_t keep_window = in.read_int("keep_window");
  STRATA_CHECK(keep_window > 0, "{}: keep_window: must be positive, got {}", file, keep_window);
  Tensor out = with_context("running dynamic mask attention on " + file, [&] {
    return ops::dynamic_mask_attention(inputs.at("q"), inputs.at("k"), inputs.at("v"), inputs.at("key_bias"),
                                       keep_window, read_scale(in));
  });
  return {{"out", out}};
}

// ops::attention, or ops::block_sparse_attention when IN.h5 has a layout.
Outputs run_dense_or_sparse_attention(const H5Reader& in, const std::map<std::string, Tensor>& inputs,
                                      Device device) {
  const std::string& file = in.path();
  STRATA_CHECK(!in.has("keep_window"), "{}: keep_window: needs a key_bias (dynamic mask attention)", file);
  auto optional_input = [&](const char* name) { return inputs.count(name) ? inputs.at(name) : Tensor(); };
  ops::AttentionOptions options;
  options.return_lse = true;
  options.return_probabilities = read_flag(in, "return_probabilities");
  options.causal = read_flag(in, "causal");
  options.scale = read_scale(in);
  options.bias = optional_input("bias");
  options.sinks = optional_input("sinks");
  options.query_temperature = optional_input("query_temperature");
  options.key_temperature = optional_input("key_temperature");

  const Tensor &q = inputs.at("q"), &k = inputs.at("k"), &v = inputs.at("v");
  kernels::BlockLayout layout;
  if (in.has("layout")) {
    STRATA_CHECK(q.dim() == 4 && k.dim() == 4, "{}: q {} and k {} must be 4-dimensional to take a layout", file,
                 q.str(), k.str());
    layout = read_layout(in, q.shape()[2], k.shape()[2]).to(device);
  }
  ops::AttentionResult result = with_context("running attention on " + file, [&] {
    return layout.defined() ? ops::block_sparse_attention(q, k, v, layout, options) : ops::attention(q, k, v, options);
  });
  Outputs outputs{{"out", result.out}, {"lse", result.lse}};
  if (result.probabilities.defined()) outputs.emplace_back("probabilities", result.probabilities);
  return outputs;
}

// Every dataset IN.h5 may hold (kHelp).
const std::vector<std::string> kKnownDatasets = {
    "q", "k", "v", "bias", "sinks", "query_temperature", "key_temperature", "key_bias", "keep_window", "causal",
    "scale", "return_probabilities", "grad_out", "layout/block_size", "layout/row_offsets", "layout/column_indices"};

void run_attention(const std::string& in_path, const std::string& out_path, const std::string& device_name) {
  Device device = op_device(device_name);
  H5Reader in(in_path);
  check_known_datasets("attention", in, kKnownDatasets);
  autograd::EnableGradGuard grad_mode;

  // Every float input is a leaf that requires grad, so each gets a gradient.
  std::map<std::string, Tensor> inputs;
  auto read_input = [&](const std::string& name) {
    Tensor t = in.read_tensor(name).to(device);
    if (is_floating(t.dtype())) t.set_requires_grad(true);
    inputs[name] = t;
  };
  for (const char* name : {"q", "k", "v"}) read_input(name);
  for (const char* name : kOptionalInputs)
    if (in.has(name)) read_input(name);

  const Outputs outputs =
      in.has("key_bias") ? run_dynamic_mask_attention(in, inputs) : run_dense_or_sparse_attention(in, inputs, device);

  H5Writer out(out_path);
  for (const auto& [name, tensor] : outputs) out.write_tensor(name, tensor);
  if (in.has("grad_out")) {
    const Tensor& result_out = outputs.front().second;
    Tensor grad_out = in.read_tensor("grad_out").to(device);
    STRATA_CHECK(grad_out.shape() == result_out.shape(), "{}: grad_out: {} must have the shape of out {}", in_path,
                 grad_out.str(), result_out.str());
    autograd::backward(result_out, grad_out.to(result_out.dtype()));
    for (const auto& [name, tensor] : inputs)
      if (tensor.grad().defined()) out.write_tensor("grad_" + name, tensor.grad());
  }
  out.commit();
}

}  // namespace

void add_op_attention_command(CLI::App& op) {
  add_op_subcommand(op, "attention", "Fused attention (dense, block-sparse or dynamic mask) on the tensors of IN.h5",
                    kHelp, run_attention);
}

}  // namespace strata::cli
