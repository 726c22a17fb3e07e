// strata op moe | product_key_memory IN.h5 OUT.h5: the sparse feed-forward layers of
// strata/nn/moe.h, computed with the ops of strata/ops/moe.h on tensors read from
// IN.h5, with their outputs, routing and gradients written to OUT.h5. kMoEHelp and
// kProductKeyMemoryHelp list the datasets; the equations are those of the headers.
//
// A dataset the subcommand does not know is an error rather than silently ignored
// (a misspelt optional input would otherwise change the numbers unnoticed).
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "cli/op.h"
#include "strata/autograd/autograd.h"
#include "strata/checkpoint/h5file.h"
#include "strata/ops/moe.h"
#include "strata/ops/ops.h"

namespace strata::cli {

namespace {

constexpr const char* kMoEHelp =
    R"(IN.h5 (datasets at the root; E experts, T tokens, d = d_model, H = expert hidden):
  x                   (T, d)                        required
  router_weight       (E, d)                        required: logits = x router_weight^T
  w_gate, w_up        (E, H, d)                     required: each expert's SwiGLU gate and up
  w_down              (E, d, H)                     required
  grad_output         (T, d)                        required: the upstream gradient of output
  top_k               integer in 1..E               required: experts per token
  router              "softmax" or "sigmoid" (default softmax): the scoring of the logits
  renormalize         integer 0 or 1 (default 1): divide each token's k weights by their sum
  capacity_factor     number (default 0 = dropless): capacity = ceil(factor * T * k / E)
  chunk_size          integer (default 1): tokens routed together (Hydra's chunk routing)
  sequence_length     integer (default 0 = one sequence): chunks restart every this many tokens
  aux_loss_weight     number (default 0): weight of the load-balancing loss in the loss
  z_loss_weight       number (default 0): weight of the router z-loss in the loss
  shared_w_gate, shared_w_up (S, d) and shared_w_down (d, S)
                      a shared SwiGLU expert every token also passes through (all three or
                      none; S its hidden size), as nn::MoEFeedForward's shared_expert
Dtypes: float32 or float64 on cpu, float32 or bfloat16 on cuda; one dtype for all.
Computes (routing options as in ops::MoERouteOptions):
  routing = moe_route(x router_weight^T)
  output  = sum over the kept choices of weight * w_down,e (silu(w_gate,e x) * w_up,e x)
            [+ shared_w_down (silu(shared_w_gate x) * shared_w_up x)]
  loss    = sum(output * grad_output) + aux_loss_weight * load_balancing_loss
            + z_loss_weight * z_loss

OUT.h5 (written atomically; floating tensors in x's dtype):
  output (T, d); load_balancing_loss, z_loss, aux_loss (the weighted sum of both):
  scalars as 0-d tensors; expert_indices (T, k) int32, best first; routing_weights
  (T, k) (0 where dropped); dropped (T, k) bool; expert_counts (E) int64 (after
  capacity); grad_x, grad_router_weight, grad_w_gate, grad_w_up, grad_w_down and, with
  a shared expert, grad_shared_w_gate, grad_shared_w_up, grad_shared_w_down: the
  gradients of loss.)";

constexpr const char* kProductKeyMemoryHelp =
    R"(IN.h5 (datasets at the root; equations as in strata/ops/moe.h, Lample et al. 2019):
  query               (tokens, d_key)               required; d_key even
  sub_keys_1, sub_keys_2
                      (n_keys, d_key / 2)           required: the codebooks of the first and
                                                    the second half of the query
  values              (n_keys^2, d_value)           required: row i * n_keys + j is addressed
                                                    by sub-key i of half 1 and j of half 2
  top_k               integer in 1..n_keys          required: sub-keys kept per half, and
                                                    value rows read per token
  grad_output         (tokens, d_value): the upstream gradient of output
  grad_weights        (tokens, top_k): the upstream gradient of weights
                      with either the backward pass runs (a missing one counts as zero);
                      without both only the forward pass runs
Dtypes: float32 or float64 on cpu, float32 or bfloat16 on cuda; one dtype for all.

OUT.h5 (written atomically; floating tensors in query's dtype):
  output (tokens, d_value); value_indices (tokens, top_k) int32: the value rows read,
  best first; weights (tokens, top_k): their softmax weights; with an upstream
  gradient: grad_query, grad_sub_keys_1, grad_sub_keys_2 and grad_values
  (n_keys^2, d_value; zero in the rows no token read) of
  loss = sum(output * grad_output) + sum(weights * grad_weights).)";

// A tensor dataset of the input file with the expected shape (dims < 0: any size),
// on `device`.
Tensor read_input(const char* op, const checkpoint::H5Reader& in, const std::string& name,
                  const std::vector<int64_t>& expected, const std::string& layout, Device device) {
  STRATA_CHECK(in.has(name), "op {}: {} has no dataset '{}' {}", op, in.path(), name, layout);
  Tensor t = in.read_tensor(name);
  bool fits = t.dim() == static_cast<int64_t>(expected.size());
  for (size_t i = 0; fits && i < expected.size(); ++i)
    fits = expected[i] < 0 || t.size(static_cast<int>(i)) == expected[i];
  STRATA_CHECK(fits, "op {}: {}: dataset '{}' is {}, expected {}", op, in.path(), name, t.str(), layout);
  return t.to(device);
}

using NamedTensor = std::pair<std::string, Tensor>;

// Every tensor of `tensors` has the dtype of the first.
void check_one_dtype(const char* op, const checkpoint::H5Reader& in, const std::vector<NamedTensor>& tensors) {
  const auto& [first_name, first] = tensors.front();
  for (const auto& [name, t] : tensors)
    STRATA_CHECK(t.dtype() == first.dtype(), "op {}: {}: dataset '{}' is {} but {} is {} (one dtype for all)", op,
                 in.path(), name, t.str(), first_name, first.str());
}

int64_t read_required_int(const char* op, const checkpoint::H5Reader& in, const std::string& name) {
  STRATA_CHECK(in.has(name), "op {}: {} has no dataset '{}' (an integer)", op, in.path(), name);
  return in.read_int(name);
}

void op_moe(const std::string& in_path, const std::string& out_path, const std::string& device_name) {
  const char* op = "moe";
  const Device device = op_device(device_name);
  checkpoint::H5Reader in(in_path);
  check_known_datasets(op, in,
                       {"x", "router_weight", "w_gate", "w_up", "w_down", "grad_output", "top_k", "router",
                        "renormalize", "capacity_factor", "chunk_size", "sequence_length", "aux_loss_weight",
                        "z_loss_weight", "shared_w_gate", "shared_w_up", "shared_w_down"});

  Tensor x = read_input(op, in, "x", {-1, -1}, "(tokens, d_model)", device);
  const int64_t tokens = x.size(0), d_model = x.size(1);
  Tensor router_weight = read_input(op, in, "router_weight", {-1, d_model}, "(experts, d_model)", device);
  const int64_t experts = router_weight.size(0);
  Tensor w_gate = read_input(op, in, "w_gate", {experts, -1, d_model}, "(experts, hidden, d_model)", device);
  const int64_t hidden = w_gate.size(1);
  Tensor w_up =
      read_input(op, in, "w_up", {experts, hidden, d_model}, "(experts, hidden, d_model) like w_gate", device);
  Tensor w_down = read_input(op, in, "w_down", {experts, d_model, hidden}, "(experts, d_model, hidden)", device);
  Tensor grad_output = read_input(op, in, "grad_output", {tokens, d_model}, "(tokens, d_model) like x", device);
  std::vector<NamedTensor> leaves = {
      {"x", x}, {"router_weight", router_weight}, {"w_gate", w_gate}, {"w_up", w_up}, {"w_down", w_down}};

  // The shared expert: all three weights or none.
  const bool shared_expert = in.has("shared_w_gate") || in.has("shared_w_up") || in.has("shared_w_down");
  Tensor shared_w_gate, shared_w_up, shared_w_down;
  if (shared_expert) {
    const char* needs = "(a shared expert needs shared_w_gate, shared_w_up and shared_w_down)";
    shared_w_gate = read_input(op, in, "shared_w_gate", {-1, d_model},
                               fmt::format("(shared_hidden, d_model) {}", needs), device);
    const int64_t shared_hidden = shared_w_gate.size(0);
    shared_w_up = read_input(op, in, "shared_w_up", {shared_hidden, d_model},
                             fmt::format("(shared_hidden, d_model) like shared_w_gate {}", needs), device);
    shared_w_down = read_input(op, in, "shared_w_down", {d_model, shared_hidden},
                               fmt::format("(d_model, shared_hidden) {}", needs), device);
    leaves.insert(leaves.end(),
                  {{"shared_w_gate", shared_w_gate}, {"shared_w_up", shared_w_up}, {"shared_w_down", shared_w_down}});
  }
  std::vector<NamedTensor> same_dtype = leaves;
  same_dtype.emplace_back("grad_output", grad_output);
  check_one_dtype(op, in, same_dtype);

  ops::MoERouteOptions route;
  route.top_k = read_required_int(op, in, "top_k");
  if (in.has("router")) route.scoring = ops::parse_router_scoring(in.read_string("router"));
  if (in.has("renormalize")) route.renormalize = in.read_int("renormalize") != 0;
  if (in.has("capacity_factor")) route.capacity_factor = in.read_double("capacity_factor");
  if (in.has("chunk_size")) route.chunk_size = in.read_int("chunk_size");
  if (in.has("sequence_length")) route.sequence_length = in.read_int("sequence_length");
  const double aux_loss_weight = in.has("aux_loss_weight") ? in.read_double("aux_loss_weight") : 0.0;
  const double z_loss_weight = in.has("z_loss_weight") ? in.read_double("z_loss_weight") : 0.0;

  checkpoint::H5Writer out(out_path);
  int64_t kept_rows = 0;
  with_context(fmt::format("running op moe on {}", in_path), [&] {
    for (auto& [name, t] : leaves) t.set_requires_grad(true);
    ops::MoERouting routing = ops::moe_route(ops::linear(x, router_weight), route);
    kept_rows = routing.rows;
    Tensor dispatched = ops::moe_dispatch(x, routing);
    // Gate and up as one grouped product, as nn::MoEFeedForward stores them.
    Tensor gate_up = ops::grouped_linear(dispatched, ops::concat({w_gate, w_up}, 1), routing.expert_offsets);
    std::vector<Tensor> halves = ops::split(gate_up, {hidden, hidden}, 1);
    Tensor expert_out =
        ops::grouped_linear(ops::mul(ops::silu(halves[0]), halves[1]), w_down, routing.expert_offsets);
    Tensor y = ops::moe_combine(expert_out, routing);
    // nn::GatedMLP without bias, as MoEFeedForward's shared_expert.
    if (shared_expert)
      y = ops::add(y, ops::linear(ops::mul(ops::silu(ops::linear(x, shared_w_gate)), ops::linear(x, shared_w_up)),
                                  shared_w_down));
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
    for (const auto& [name, t] : leaves) out.write_tensor("grad_" + name, t.grad());
  });
  out.commit();
  fmt::print("op moe: {} tokens, {} experts, top_k {}, {} rows kept{} -> {}\n", tokens, experts, route.top_k,
             kept_rows, shared_expert ? ", shared expert" : "", out_path);
}

void op_product_key_memory(const std::string& in_path, const std::string& out_path,
                           const std::string& device_name) {
  const char* op = "product_key_memory";
  const Device device = op_device(device_name);
  checkpoint::H5Reader in(in_path);
  check_known_datasets(op, in,
                       {"query", "sub_keys_1", "sub_keys_2", "values", "top_k", "grad_output", "grad_weights"});

  Tensor query = read_input(op, in, "query", {-1, -1}, "(tokens, d_key)", device);
  const int64_t tokens = query.size(0), d_key = query.size(1), half = d_key / 2;
  STRATA_CHECK(d_key % 2 == 0, "op {}: {}: dataset 'query' is {}, expected (tokens, d_key) with d_key even", op,
               in.path(), query.str());
  const std::string key_layout = fmt::format("(n_keys, d_key / 2 = {})", half);
  Tensor sub_keys_1 = read_input(op, in, "sub_keys_1", {-1, half}, key_layout, device);
  const int64_t n_keys = sub_keys_1.size(0);
  Tensor sub_keys_2 =
      read_input(op, in, "sub_keys_2", {n_keys, half}, fmt::format("(n_keys = {}, d_key / 2 = {})", n_keys, half),
                 device);
  Tensor values =
      read_input(op, in, "values", {n_keys * n_keys, -1}, fmt::format("(n_keys^2 = {}, d_value)", n_keys * n_keys),
                 device);
  const int64_t top_k = read_required_int(op, in, "top_k"), d_value = values.size(1);
  std::vector<NamedTensor> leaves = {
      {"query", query}, {"sub_keys_1", sub_keys_1}, {"sub_keys_2", sub_keys_2}, {"values", values}};
  std::vector<NamedTensor> same_dtype = leaves;
  Tensor grad_output, grad_weights;
  if (in.has("grad_output")) {
    grad_output = read_input(op, in, "grad_output", {tokens, d_value}, "(tokens, d_value) like output", device);
    same_dtype.emplace_back("grad_output", grad_output);
  }
  if (in.has("grad_weights")) {
    grad_weights = read_input(op, in, "grad_weights", {tokens, top_k}, "(tokens, top_k) like weights", device);
    same_dtype.emplace_back("grad_weights", grad_weights);
  }
  check_one_dtype(op, in, same_dtype);
  const bool backward = grad_output.defined() || grad_weights.defined();

  checkpoint::H5Writer out(out_path);
  with_context(fmt::format("running op {} on {}", op, in_path), [&] {
    if (backward)
      for (auto& [name, t] : leaves) t.set_requires_grad(true);
    ops::ProductKeyResult result = ops::product_key_memory(query, sub_keys_1, sub_keys_2, values, top_k);
    out.write_tensor("output", result.output.detach());
    out.write_tensor("value_indices", result.value_indices);
    out.write_tensor("weights", result.weights.detach());
    if (!backward) return;
    Tensor loss;
    for (const auto& [output, grad] :
         {std::pair{result.output, grad_output}, std::pair{result.weights, grad_weights}}) {
      if (!grad.defined()) continue;
      Tensor term = ops::sum(ops::mul(output, grad));
      loss = loss.defined() ? ops::add(loss, term) : term;
    }
    autograd::backward(loss);
    // An input the loss does not reach (the values, when only grad_weights is given)
    // has gradient zero.
    for (const auto& [name, t] : leaves)
      out.write_tensor("grad_" + name,
                       t.grad().defined() ? t.grad() : Tensor::zeros(t.shape(), t.dtype(), t.device()));
  });
  out.commit();
  fmt::print("op product_key_memory: {} tokens, n_keys {} ({} values of {}), top_k {}{} -> {}\n", tokens, n_keys,
             n_keys * n_keys, d_value, top_k, backward ? ", with gradients" : "", out_path);
}

}  // namespace

void add_op_moe_command(CLI::App& op) {
  add_op_subcommand(op, "moe",
                 "A mixture-of-experts layer (router, dispatch, SwiGLU experts, combine, optional shared expert)",
                 kMoEHelp, op_moe);
}

void add_op_product_key_memory_command(CLI::App& op) {
  add_op_subcommand(op, "product_key_memory",
                 "A product-key memory lookup (two sub-key codebooks, top-k, softmax-weighted value rows)",
                 kProductKeyMemoryHelp, op_product_key_memory);
}

}  // namespace strata::cli
