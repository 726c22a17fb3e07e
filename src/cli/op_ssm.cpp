// strata op selective_scan | causal_conv1d | ssd | gated_rms_norm IN.h5 OUT.h5: the
// state-space ops of strata/ops/ssm.h and strata/ops/ssd.h on tensors read from
// IN.h5, with every output and, given the upstream gradient of any output, the
// gradient of every input written to OUT.h5. Each subcommand's kHelp text lists its
// datasets; the equations are those of the op's header.
//
// Dataset names are the op's argument names, so the op's own shape errors name the
// dataset; a dataset the subcommand does not know is an error rather than silently
// ignored (a misspelt optional input would otherwise change the numbers unnoticed).
#include <map>
#include <memory>
#include <utility>

#include "cli/commands.h"
#include "cli/op.h"
#include "strata/autograd/autograd.h"
#include "strata/checkpoint/h5file.h"
#include "strata/ops/ops.h"
#include "strata/ops/ssd.h"
#include "strata/ops/ssm.h"

namespace strata::cli {

namespace {

using checkpoint::H5Reader;
using checkpoint::H5Writer;

constexpr const char* kSelectiveScanHelp =
    R"(IN.h5 (datasets at the root; shapes and equations as in strata/ops/ssm.h):
  u, delta            (batch, d_inner, length)      required
  A                   (d_inner, N)                  required
  B, C                (batch, groups, N, length)    required; d_inner a multiple of groups
  D, delta_bias       (d_inner)
  z                   (batch, d_inner, length): the gate, y *= silu(z)
  initial_state       (batch, d_inner, N): the state before the first step (default zero)
  delta_softplus      integer 0 or 1 (default 0): delta_t = softplus(delta + delta_bias)
  reverse             integer 0 or 1 (default 0): scan from the last position to the first
  return_states       integer 0 or 1 (default 0): also write the state after every step
  grad_y, grad_final_state, grad_states
                      upstream gradients of the outputs, in their shapes; with any of them
                      the backward pass runs (a missing one counts as zero)
K routes in one launch (ops::selective_scan_routes) when u has 4 dims:
  u, delta, z (batch, K, d_inner, length); A (K, d_inner, N); B, C (batch, K, groups,
  N, length); D, delta_bias (K, d_inner); initial_state (batch, K, d_inner, N);
  reversed: K integers 0 or 1 (route k runs backwards; default all 0); no reverse.
Dtypes: u, delta, B, C, z float32 or float64 on cpu, float32 or bfloat16 on cuda;
A, D, delta_bias and initial_state u's dtype or float32.

OUT.h5 (written atomically):
  y (u's shape and dtype); final_state (batch, [K,] d_inner, N), float32 (float64 for
  float64 u); with return_states: states (batch, [K,] d_inner, length, N); with an
  upstream gradient: grad_<name> for each of u, delta, A, B, C, D, z, delta_bias,
  initial_state given.)";

constexpr const char* kCausalConv1dHelp =
    R"(IN.h5 (datasets at the root; equations as in strata/ops/ssm.h):
  x                   (batch, channels, length)     required
  weight              (channels, kernel_size)       required; kernel_size in 2..8
  bias                (channels)
  silu                integer 0 or 1 (default 0): y = silu(conv + bias) rather than conv + bias
  grad_y              (batch, channels, length): the upstream gradient of y; without it
                      only the forward pass runs
Dtypes: x float32 or float64 on cpu, float32 or bfloat16 on cuda; weight and bias x's
dtype or float32.

OUT.h5 (written atomically):
  y (x's shape and dtype); with grad_y: grad_x, grad_weight and grad_bias (when given).)";

constexpr const char* kSsdHelp =
    R"(IN.h5 (datasets at the root; shapes and equations as in strata/ops/ssd.h):
  x                   (batch, length, heads, head_dim)      required
  dt                  (batch, length, heads)                required
  A                   (heads)                               required (negative)
  B, C                (batch, length, groups, d_state)      required; heads a multiple of groups
  D, dt_bias          (heads)
  initial_state       (batch, heads, head_dim, d_state): the state before position 0
  dt_softplus         integer 0 or 1 (default 0): dt_t = softplus(dt + dt_bias)
  chunk_size          integer (default 256): positions per chunk
  grad_y, grad_final_state
                      upstream gradients of the outputs, in their shapes; with either the
                      backward pass runs (a missing one counts as zero)
Dtypes: x, dt, B, C float32 or float64 on cpu, float32 or bfloat16 on cuda; A, D,
dt_bias and initial_state x's dtype or float32.

OUT.h5 (written atomically):
  y (x's shape and dtype); final_state (batch, heads, head_dim, d_state), float32
  (float64 for float64 x); with an upstream gradient: grad_<name> for each of x, dt,
  A, B, C, D, dt_bias, initial_state given.)";

constexpr const char* kGatedRmsNormHelp =
    R"(IN.h5 (datasets at the root; equations as in strata/ops/ssd.h, Mamba-2's norm):
  x                   (..., dim)                    required
  z                   x's shape: the gate, g = x * silu(z) (default g = x)
  weight              (dim): the scale (default none)
  eps                 number (default 1e-5)
  group_size          integer (default 0 = dim): normalise over groups of this many
                      consecutive elements of the last dim
  grad_y              x's shape: the upstream gradient of y; without it only the forward
                      pass runs
Dtypes: float32 or float64 on cpu, float32 or bfloat16 on cuda; one dtype for all.

OUT.h5 (written atomically):
  y (x's shape and dtype); with grad_y: grad_x, grad_z and grad_weight (when given).)";

// IN.h5 as one subcommand reads it: floating tensors become leaves that require grad
// (so each gets a gradient), scalars become options, and every error names the file
// and the dataset.
class OpInput {
 public:
  // `known`: every dataset the subcommand reads (inputs, options, grad_<output>).
  OpInput(std::string op, const std::string& path, Device device, const std::vector<std::string>& known)
      : op_(std::move(op)), file_(path), device_(device) {
    check_known_datasets(op_, file_, known);
  }

  const std::string& path() const { return file_.path(); }
  bool has(const std::string& name) const { return file_.has(name); }

  // A required tensor, as a leaf on the device.
  Tensor required(const std::string& name, const char* layout) {
    STRATA_CHECK(has(name), "op {}: {} has no dataset '{}' {}", op_, path(), name, layout);
    return leaf(name);
  }
  // An optional tensor as a leaf, or undefined when absent.
  Tensor optional(const std::string& name) { return has(name) ? leaf(name) : Tensor(); }

  // An integer 0 or 1, false when absent.
  bool flag(const std::string& name) const {
    if (!has(name)) return false;
    const int64_t value = file_.read_int(name);
    STRATA_CHECK(value == 0 || value == 1, "op {}: {}: {}: must be 0 or 1, got {}", op_, path(), name, value);
    return value == 1;
  }
  int64_t integer(const std::string& name, int64_t absent) const { return has(name) ? file_.read_int(name) : absent; }
  double number(const std::string& name, double absent) const { return has(name) ? file_.read_double(name) : absent; }
  // K integers 0 or 1.
  std::vector<bool> flags(const std::string& name) const {
    Tensor values = file_.read_tensor(name).to(DType::Int64).contiguous();
    STRATA_CHECK(values.dim() == 1, "op {}: {}: {}: {} must be one-dimensional", op_, path(), name, values.str());
    std::vector<bool> result;
    for (int64_t i = 0; i < values.numel(); ++i) {
      const int64_t value = values.data<int64_t>()[i];
      STRATA_CHECK(value == 0 || value == 1, "op {}: {}: {}[{}]: must be 0 or 1, got {}", op_, path(), name, i, value);
      result.push_back(value == 1);
    }
    return result;
  }

  // Runs the op, naming the file in its errors.
  template <class Body>
  decltype(auto) run(Body&& body) const {
    return with_context(fmt::format("running op {} on {}", op_, path()), std::forward<Body>(body));
  }

  // Writes `outputs` (name, tensor) to out_path and, when IN.h5 holds grad_<name> for
  // any of them, the gradient of every leaf read for
  //   loss = sum over those outputs of sum(output * grad_<output>)
  // whose gradient reaching each output is exactly grad_<output>.
  void write_results(const std::string& out_path, const std::vector<std::pair<std::string, Tensor>>& outputs) const {
    H5Writer out(out_path);
    Tensor loss;
    for (const auto& [name, output] : outputs) {
      out.write_tensor(name, output.detach());
      const std::string grad_name = "grad_" + name;
      if (!has(grad_name)) continue;
      Tensor grad = file_.read_tensor(grad_name);
      STRATA_CHECK(grad.shape() == output.shape(), "op {}: {}: {}: {} must have the shape of {} {}", op_, path(),
                   grad_name, grad.str(), name, output.str());
      // The terms are added in float32 (float64 for float64 outputs), which every
      // device has; only the gradients of the sum matter, and they are exact.
      const DType sum_dtype = output.dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
      Tensor term = ops::cast(ops::sum(ops::mul(output, grad.to(device_).to(output.dtype()))), sum_dtype);
      loss = loss.defined() ? ops::add(loss, ops::cast(term, loss.dtype())) : term;
    }
    if (loss.defined()) {
      run([&] { autograd::backward(loss); });
      for (const auto& [name, tensor] : leaves_)
        if (tensor.grad().defined()) out.write_tensor("grad_" + name, tensor.grad());
    }
    out.commit();
  }

 private:
  Tensor leaf(const std::string& name) {
    Tensor t = file_.read_tensor(name).to(device_);
    if (is_floating(t.dtype())) t.set_requires_grad(true);
    leaves_[name] = t;
    return t;
  }

  std::string op_;
  H5Reader file_;
  Device device_;
  std::map<std::string, Tensor> leaves_;
};

void run_selective_scan(const std::string& in_path, const std::string& out_path, const std::string& device_name) {
  const Device device = op_device(device_name);
  OpInput in("selective_scan", in_path, device,
             {"u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state", "delta_softplus", "reverse",
              "return_states", "reversed", "grad_y", "grad_final_state", "grad_states"});
  autograd::EnableGradGuard grad_mode;
  Tensor u = in.required("u", "(batch, d_inner, length)");
  const bool routes = u.dim() == 4;
  const char* activation_layout = routes ? "(batch, K, d_inner, length)" : "(batch, d_inner, length)";
  Tensor delta = in.required("delta", activation_layout);
  Tensor A = in.required("A", routes ? "(K, d_inner, N)" : "(d_inner, N)");
  const char* bc_layout = routes ? "(batch, K, groups, N, length)" : "(batch, groups, N, length)";
  Tensor B = in.required("B", bc_layout);
  Tensor C = in.required("C", bc_layout);
  ops::SelectiveScanOptions options;
  options.D = in.optional("D");
  options.z = in.optional("z");
  options.delta_bias = in.optional("delta_bias");
  options.initial_state = in.optional("initial_state");
  options.delta_softplus = in.flag("delta_softplus");
  options.reverse = in.flag("reverse");
  options.return_final_state = true;
  options.return_states = in.flag("return_states");
  STRATA_CHECK(options.return_states || !in.has("grad_states"),
               "op selective_scan: {}: grad_states is given but return_states is not 1", in_path);
  STRATA_CHECK(routes || !in.has("reversed"),
               "op selective_scan: {}: reversed (one flag per route) needs u of (batch, K, d_inner, length), got u {}",
               in_path, u.str());
  const std::vector<bool> reversed = in.has("reversed") ? in.flags("reversed") : std::vector<bool>();

  ops::SelectiveScanResult result = in.run([&] {
    return routes ? ops::selective_scan_routes(u, delta, A, B, C, reversed, options)
                  : ops::selective_scan(u, delta, A, B, C, options);
  });
  std::vector<std::pair<std::string, Tensor>> outputs{{"y", result.y}, {"final_state", result.final_state}};
  if (options.return_states) outputs.emplace_back("states", result.states);
  in.write_results(out_path, outputs);
}

void run_causal_conv1d(const std::string& in_path, const std::string& out_path, const std::string& device_name) {
  const Device device = op_device(device_name);
  OpInput in("causal_conv1d", in_path, device, {"x", "weight", "bias", "silu", "grad_y"});
  autograd::EnableGradGuard grad_mode;
  Tensor x = in.required("x", "(batch, channels, length)");
  Tensor weight = in.required("weight", "(channels, kernel_size)");
  Tensor bias = in.optional("bias");
  const bool silu = in.flag("silu");
  Tensor y = in.run([&] { return ops::causal_conv1d(x, weight, bias, silu); });
  in.write_results(out_path, {{"y", y}});
}

void run_ssd(const std::string& in_path, const std::string& out_path, const std::string& device_name) {
  const Device device = op_device(device_name);
  OpInput in("ssd", in_path, device,
             {"x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state", "dt_softplus", "chunk_size", "grad_y",
              "grad_final_state"});
  autograd::EnableGradGuard grad_mode;
  Tensor x = in.required("x", "(batch, length, heads, head_dim)");
  Tensor dt = in.required("dt", "(batch, length, heads)");
  Tensor A = in.required("A", "(heads)");
  Tensor B = in.required("B", "(batch, length, groups, d_state)");
  Tensor C = in.required("C", "(batch, length, groups, d_state)");
  ops::SsdOptions options;
  options.D = in.optional("D");
  options.dt_bias = in.optional("dt_bias");
  options.initial_state = in.optional("initial_state");
  options.dt_softplus = in.flag("dt_softplus");
  options.chunk_size = in.integer("chunk_size", options.chunk_size);
  options.return_final_state = true;
  ops::SsdResult result = in.run([&] { return ops::ssd_chunked(x, dt, A, B, C, options); });
  in.write_results(out_path, {{"y", result.y}, {"final_state", result.final_state}});
}

void run_gated_rms_norm(const std::string& in_path, const std::string& out_path, const std::string& device_name) {
  const Device device = op_device(device_name);
  OpInput in("gated_rms_norm", in_path, device, {"x", "z", "weight", "eps", "group_size", "grad_y"});
  autograd::EnableGradGuard grad_mode;
  Tensor x = in.required("x", "(..., dim)");
  Tensor z = in.optional("z");
  Tensor weight = in.optional("weight");
  const double eps = in.number("eps", 1e-5);
  const int64_t group_size = in.integer("group_size", 0);
  Tensor y = in.run([&] { return ops::gated_rms_norm(x, z, weight, eps, group_size); });
  in.write_results(out_path, {{"y", y}});
}

}  // namespace

void add_op_ssm_commands(CLI::App& op) {
  add_op_subcommand(op, "selective_scan", "Mamba's selective scan (one route or K) on the tensors of IN.h5",
                 kSelectiveScanHelp, run_selective_scan);
  add_op_subcommand(op, "causal_conv1d", "The causal depthwise conv1d (optional SiLU) on the tensors of IN.h5",
                 kCausalConv1dHelp, run_causal_conv1d);
  add_op_subcommand(op, "ssd", "Mamba-2's chunked SSD scan on the tensors of IN.h5", kSsdHelp, run_ssd);
  add_op_subcommand(op, "gated_rms_norm", "Mamba-2's gated RMSNorm on the tensors of IN.h5", kGatedRmsNormHelp,
                 run_gated_rms_norm);
}

}  // namespace strata::cli
