// strata op moe IN.h5 OUT.h5: one mixture-of-experts feed-forward layer (the
// computation of nn::MoEFeedForward, with the weights given) on inputs read from
// HDF5, writing the output, the auxiliary losses, the routing and every gradient.
//
// Reads (E experts, T tokens, d = d_model, H = expert hidden):
//   x (T, d); router_weight (E, d); w_gate, w_up (E, H, d); w_down (E, d, H);
//   grad_output (T, d): the upstream gradient of the output;
//   top_k (integer);
//   optional: router ("softmax" | "sigmoid", default softmax), renormalize (integer,
//   default 1), capacity_factor (default 0: dropless), chunk_size (default 1),
//   sequence_length (default 0), aux_loss_weight and z_loss_weight (default 0).
// Computes
//   logits = x router_weight^T; routing = moe_route(logits)
//   y = sum over the kept choices of weight * W_down,e (silu(W_gate,e x) * W_up,e x)
//   loss = sum(y * grad_output) + aux_loss_weight * load_balancing_loss + z_loss_weight * z_loss
// and writes output (T, d), load_balancing_loss, z_loss, aux_loss (scalars as 0-d
// tensors), expert_indices (T, k) int32, routing_weights (T, k), dropped (T, k)
// bool, expert_counts (E) int64, and grad_x, grad_router_weight, grad_w_gate,
// grad_w_up, grad_w_down: the gradients of loss. Floating tensors keep the input
// dtype of x (float32 or float64 on the CPU, float32 or bfloat16 on CUDA).
#include <memory>

#include "cli/commands.h"
#include "strata/autograd/autograd.h"
#include "strata/checkpoint/h5file.h"
#include "strata/core/memory.h"
#include "strata/ops/moe.h"
#include "strata/ops/ops.h"

namespace strata::cli {

namespace {

struct OpMoEOptions {
  std::string input, output;
  std::string device = "cpu";
};

// A tensor dataset of the input file with the expected shape (dims < 0: any size),
// converted to `dtype` (when floating) on `device`.
Tensor read_input(const checkpoint::H5Reader& in, const std::string& name, const std::vector<int64_t>& expected,
                  const char* layout, Device device) {
  STRATA_CHECK(in.has(name), "op moe: {} has no dataset '{}' {}", in.path(), name, layout);
  Tensor t = in.read_tensor(name);
  bool fits = t.dim() == static_cast<int64_t>(expected.size());
  for (size_t i = 0; fits && i < expected.size(); ++i)
    fits = expected[i] < 0 || t.size(static_cast<int>(i)) == expected[i];
  STRATA_CHECK(fits, "op moe: {}: dataset '{}' is {}, expected {}", in.path(), name, t.str(), layout);
  return t.to(device);
}

void op_moe(const OpMoEOptions& o) {
  Device device = parse_device(o.device);
  if (device.is_cuda()) cuda::set_device(device.index);
  checkpoint::H5Reader in(o.input);

  Tensor x = read_input(in, "x", {-1, -1}, "(tokens, d_model)", device);
  const int64_t tokens = x.size(0), d_model = x.size(1);
  Tensor router_weight = read_input(in, "router_weight", {-1, d_model}, "(experts, d_model)", device);
  const int64_t experts = router_weight.size(0);
  Tensor w_gate = read_input(in, "w_gate", {experts, -1, d_model}, "(experts, hidden, d_model)", device);
  const int64_t hidden = w_gate.size(1);
  Tensor w_up = read_input(in, "w_up", {experts, hidden, d_model}, "(experts, hidden, d_model) like w_gate", device);
  Tensor w_down = read_input(in, "w_down", {experts, d_model, hidden}, "(experts, d_model, hidden)", device);
  Tensor grad_output = read_input(in, "grad_output", {tokens, d_model}, "(tokens, d_model) like x", device);
  const std::vector<std::pair<const char*, const Tensor*>> same_dtype = {
      {"router_weight", &router_weight}, {"w_gate", &w_gate}, {"w_up", &w_up}, {"w_down", &w_down},
      {"grad_output", &grad_output}};
  for (const auto& [name, t] : same_dtype)
    STRATA_CHECK(t->dtype() == x.dtype(), "op moe: {}: dataset '{}' is {} but x is {} (one dtype for all)",
                 in.path(), name, t->str(), x.str());

  STRATA_CHECK(in.has("top_k"), "op moe: {} has no dataset 'top_k' (an integer)", in.path());
  ops::MoERouteOptions route;
  route.top_k = in.read_int("top_k");
  if (in.has("router")) route.scoring = ops::parse_router_scoring(in.read_string("router"));
  if (in.has("renormalize")) route.renormalize = in.read_int("renormalize") != 0;
  if (in.has("capacity_factor")) route.capacity_factor = in.read_double("capacity_factor");
  if (in.has("chunk_size")) route.chunk_size = in.read_int("chunk_size");
  if (in.has("sequence_length")) route.sequence_length = in.read_int("sequence_length");
  const double aux_loss_weight = in.has("aux_loss_weight") ? in.read_double("aux_loss_weight") : 0.0;
  const double z_loss_weight = in.has("z_loss_weight") ? in.read_double("z_loss_weight") : 0.0;

  checkpoint::H5Writer out(o.output);
  int64_t kept_rows = 0;
  try {
    for (Tensor* t : {&x, &router_weight, &w_gate, &w_up, &w_down}) t->set_requires_grad(true);
    ops::MoERouting routing = ops::moe_route(ops::linear(x, router_weight), route);
    kept_rows = routing.rows;
    Tensor dispatched = ops::moe_dispatch(x, routing);
    // Gate and up as one grouped product, as nn::MoEFeedForward stores them.
    Tensor gate_up = ops::grouped_linear(dispatched, ops::concat({w_gate, w_up}, 1), routing.expert_offsets);
    std::vector<Tensor> halves = ops::split(gate_up, {hidden, hidden}, 1);
    Tensor expert_out =
        ops::grouped_linear(ops::mul(ops::silu(halves[0]), halves[1]), w_down, routing.expert_offsets);
    Tensor y = ops::moe_combine(expert_out, routing);
    Tensor aux_loss =
        ops::add(ops::mul(routing.load_balancing_loss, aux_loss_weight), ops::mul(routing.z_loss, z_loss_weight));
    Tensor loss = ops::add(ops::sum(ops::mul(y, grad_output)), ops::cast(aux_loss, y.dtype()));
    autograd::backward(loss);

    out.write_tensor("output", y.detach());
    out.write_tensor("load_balancing_loss", routing.load_balancing_loss.detach());
    out.write_tensor("z_loss", routing.z_loss.detach());
    out.write_tensor("aux_loss", aux_loss.detach());
    out.write_tensor("expert_indices", routing.expert_indices);
    out.write_tensor("routing_weights", routing.weights.detach());
    out.write_tensor("dropped", routing.dropped);
    out.write_tensor("expert_counts", routing.expert_counts);
    out.write_tensor("grad_x", x.grad());
    out.write_tensor("grad_router_weight", router_weight.grad());
    out.write_tensor("grad_w_gate", w_gate.grad());
    out.write_tensor("grad_w_up", w_up.grad());
    out.write_tensor("grad_w_down", w_down.grad());
  } catch (Error& e) {
    throw e.add_context(fmt::format("running op moe on {}", o.input));
  }
  out.commit();
  fmt::print("op moe: {} tokens, {} experts, top_k {}, {} rows kept -> {}\n", tokens, experts, route.top_k,
             kept_rows, o.output);
}

}  // namespace

void add_op_moe_command(CLI::App& op) {
  auto* cmd = op.add_subcommand("moe", "A mixture-of-experts layer (router, dispatch, SwiGLU experts, combine) "
                                       "and its gradients; see src/cli/op_moe.cpp for the datasets");
  auto options = std::make_shared<OpMoEOptions>();
  cmd->add_option("input", options->input, "HDF5 file with the inputs")->required();
  cmd->add_option("output", options->output, "HDF5 file to write")->required();
  cmd->add_option("--device", options->device, "cpu, cuda or cuda:N");
  cmd->footer(
      "Reads x (T, d), router_weight (E, d), w_gate and w_up (E, H, d), w_down (E, d, H), grad_output (T, d), "
      "top_k; optional router, renormalize, capacity_factor, chunk_size, sequence_length, aux_loss_weight, "
      "z_loss_weight. Writes output, load_balancing_loss, z_loss, aux_loss, expert_indices, routing_weights, "
      "dropped, expert_counts and grad_x, grad_router_weight, grad_w_gate, grad_w_up, grad_w_down of "
      "sum(output * grad_output) + the weighted auxiliary losses.");
  cmd->callback([options] { op_moe(*options); });
}

}  // namespace strata::cli
