// strata op attention IN.h5 OUT.h5: ops::attention (or ops::block_sparse_attention
// when IN.h5 has a layout) on tensors read from IN.h5, with its outputs and, given
// an upstream gradient, the gradient of every input written to OUT.h5. The
// datasets are listed in kHelp; the equations are those of strata/ops/attention.h.
//
// The layout is read as CSR arrays rather than a builder name and parameters, so
// any framework can hand over any block mask (FlexAttention's kv_indices, a
// hand-written pattern) and the builders are checked by comparing their arrays.
#include <map>
#include <memory>

#include "cli/commands.h"
#include "strata/autograd/autograd.h"
#include "strata/checkpoint/h5file.h"
#include "strata/core/memory.h"
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
  grad_out            (batch, heads, Lq, head_dim): the upstream gradient of out; without
                      it only the forward pass runs
  layout/block_size, layout/row_offsets, layout/column_indices
                      a block-sparse layout in CSR form: query blocks of block_size
                      positions, rows r = head * query_blocks + query_block, the key blocks
                      of row r are column_indices[row_offsets[r] .. row_offsets[r + 1]);
                      one head (shared) or one per attention head. With a layout,
                      ops::block_sparse_attention runs instead of ops::attention.
Dtypes: q, k, v float32 or float64 on cpu; float32, bfloat16 or float16 on cuda.

OUT.h5 (written atomically):
  out (batch, heads, Lq, head_dim), lse (batch, heads, Lq), and with grad_out: grad_q,
  grad_k, grad_v and grad_<name> for each of bias, sinks, query_temperature,
  key_temperature given.)";

const char* const kOptionalInputs[] = {"bias", "sinks", "query_temperature", "key_temperature"};

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

void run_attention(const std::string& in_path, const std::string& out_path, const std::string& device_name) {
  Device device = parse_device(device_name);
  if (device.is_cuda()) cuda::set_device(device.index);
  H5Reader in(in_path);
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

  ops::AttentionOptions options;
  options.return_lse = true;
  if (in.has("causal")) {
    int64_t causal = in.read_int("causal");
    STRATA_CHECK(causal == 0 || causal == 1, "{}: causal: must be 0 or 1, got {}", in_path, causal);
    options.causal = causal == 1;
  }
  if (in.has("scale")) options.scale = in.read_double("scale");
  options.bias = inputs.count("bias") ? inputs["bias"] : Tensor();
  options.sinks = inputs.count("sinks") ? inputs["sinks"] : Tensor();
  options.query_temperature = inputs.count("query_temperature") ? inputs["query_temperature"] : Tensor();
  options.key_temperature = inputs.count("key_temperature") ? inputs["key_temperature"] : Tensor();

  const Tensor &q = inputs["q"], &k = inputs["k"], &v = inputs["v"];
  kernels::BlockLayout layout;
  if (in.has("layout")) {
    STRATA_CHECK(q.dim() == 4 && k.dim() == 4, "{}: q {} and k {} must be 4-dimensional to take a layout", in_path,
                 q.str(), k.str());
    layout = read_layout(in, q.shape()[2], k.shape()[2]).to(device);
  }
  ops::AttentionResult result = with_context("running attention on " + in_path, [&] {
    return layout.defined() ? ops::block_sparse_attention(q, k, v, layout, options) : ops::attention(q, k, v, options);
  });

  H5Writer out(out_path);
  out.write_tensor("out", result.out);
  out.write_tensor("lse", result.lse);
  if (in.has("grad_out")) {
    Tensor grad_out = in.read_tensor("grad_out").to(device);
    STRATA_CHECK(grad_out.shape() == result.out.shape(), "{}: grad_out: {} must have the shape of out {}", in_path,
                 grad_out.str(), result.out.str());
    autograd::backward(result.out, grad_out.to(result.out.dtype()));
    for (const auto& [name, tensor] : inputs)
      if (tensor.grad().defined()) out.write_tensor("grad_" + name, tensor.grad());
  }
  out.commit();
}

}  // namespace

void add_op_attention_command(CLI::App& op) {
  auto* cmd = op.add_subcommand("attention", "Fused attention (dense or block-sparse) on the tensors of IN.h5; "
                                             "outputs and gradients to OUT.h5 (datasets: see --help)");
  cmd->footer(kHelp);
  auto in = std::make_shared<std::string>(), out = std::make_shared<std::string>();
  auto device = std::make_shared<std::string>("cpu");
  cmd->add_option("in", *in, "Input HDF5 file")->required()->check(CLI::ExistingFile);
  cmd->add_option("out", *out, "Output HDF5 file")->required();
  cmd->add_option("--device", *device, "cpu, cuda or cuda:N");
  cmd->callback([in, out, device] { run_attention(*in, *out, *device); });
}

}  // namespace strata::cli
