// strata bench ssm: the state-space kernels against the copy bandwidth measured in
// the same run. Each kernel is memory-bound (the scan does O(N) arithmetic per byte
// it moves, and the states never leave the chip), so its floor is the time to move
// the bytes it must: every input read once and every output written once.
//
//  - selective_scan (Mamba-1 / S6) as a Mamba block calls it: u, delta, z
//    (batch, d_inner, L), B and C shared by the channels (batch, 1, N, L), A
//    (d_inner, N), D and delta_bias (d_inner), softplus on. Forward bytes: u, delta,
//    z, B, C and the parameters read, y written. Backward bytes: the same inputs and
//    dy read; du, ddelta, dz written in the activations' dtype, dB, dC (float32, as
//    the kernel accumulates them), dA, dD, ddelta_bias written. The float32 chunk
//    checkpoints the forward pass leaves for the backward pass (N floats every 16
//    steps per channel, every 32 for N = 1) are not counted: they are the kernel's
//    choice, not the op's inputs. The scan lines also give the rate of exp(delta A)
//    evaluations, batch d_inner L N per forward pass and twice that per backward pass
//    (the states are recomputed, then the reverse sweep needs the decays again).
//  - causal_conv1d (kernel 4, bias, SiLU) over x (batch, d_inner, L). Forward: x
//    read, y written; backward: x and dy read, dx written (weights negligible but
//    counted).
//  - ssd_chunked (Mamba-2): x (batch, L, heads, P), dt (batch, L, heads), B, C
//    (batch, L, 1, N), heads = d_inner / P, dt bias and softplus, D; P 64, N 128,
//    chunk 256 on CUDA (the paper's defaults). Forward: x, dt, B, C read, y written;
//    backward: those and dy read, dx, ddt, dB, dC written (all in the activations'
//    dtype).
//
// The forward pass is timed with the tape off; the backward pass by replaying the
// node recorded once (retain_graph), with the input grads cleared each time, so it
// includes the op's allocations and dtype conversions. tokens/s = batch L / time.
// bfloat16 activations on CUDA (float32 states and parameters), float32 on the CPU,
// where the default sizes are a smoke test of a few seconds.
#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>

#include "cli/bench.h"
#include "cli/commands.h"
#include "strata/autograd/autograd.h"
#include "strata/core/memory.h"
#include "strata/core/rng.h"
#include "strata/core/timer.h"
#include "strata/ops/ops.h"
#include "strata/ops/ssd.h"
#include "strata/ops/ssm.h"

namespace strata::cli {

namespace {

// Empty lists and zeros mean the device's defaults, chosen in resolve().
struct SsmBenchOptions {
  std::string device = "auto";
  std::vector<std::string> only;
  std::vector<int64_t> d_inner, lengths, states;
  int64_t batch = 0, ssd_state = 0, ssd_head_dim = 0, ssd_chunk = 0, conv_kernel = 4;
  int iterations = 0;
};

// GPU: the sizes (a 130M..1.4B-parameter Mamba's widths, N 16, and N 1 for
// vision models); CPU: a few seconds in all.
void resolve(SsmBenchOptions& o, bool gpu) {
  if (o.d_inner.empty()) o.d_inner = gpu ? std::vector<int64_t>{2048, 4096} : std::vector<int64_t>{128};
  if (o.lengths.empty()) o.lengths = gpu ? std::vector<int64_t>{2048, 8192} : std::vector<int64_t>{256};
  if (o.states.empty()) o.states = {16, 1};
  if (o.batch == 0) o.batch = gpu ? 8 : 2;
  if (o.ssd_state == 0) o.ssd_state = gpu ? 128 : 16;
  if (o.ssd_head_dim == 0) o.ssd_head_dim = gpu ? 64 : 16;
  if (o.ssd_chunk == 0) o.ssd_chunk = gpu ? 256 : 64;
  if (o.iterations == 0) o.iterations = gpu ? 20 : 1;
}

class SsmBench {
 public:
  SsmBench(const SsmBenchOptions& options, Device device)
      : o_(options), device_(device), gpu_(device.is_cuda()), dtype_(gpu_ ? DType::BFloat16 : DType::Float32) {}

  void run() {
    fmt::print("strata bench ssm on {} ({} activations, float32 states); batch {}, {} timed iterations\n",
               device_.str(), dtype_name(dtype_), o_.batch, o_.iterations);
    measure_copy();
    for (int64_t d_inner : o_.d_inner) {
      for (int64_t length : o_.lengths) {
        if (selected(o_.only, "scan"))
          for (int64_t d_state : o_.states) bench_scan(d_inner, length, d_state);
        if (selected(o_.only, "conv")) bench_conv(d_inner, length);
        if (selected(o_.only, "ssd")) bench_ssd(d_inner, length);
      }
    }
  }

 private:
  const SsmBenchOptions& o_;
  Device device_;
  bool gpu_;
  DType dtype_;
  double copy_gbps_ = 0;
  Generator generator_{11, 0};

  Tensor random(const Shape& shape, double low, double high, DType dtype) {
    return rand_uniform(shape, low, high, dtype, device_, generator_);
  }
  Tensor activation(const Shape& shape, double low = -1.0, double high = 1.0) {
    return random(shape, low, high, dtype_);
  }
  Tensor parameter(const Shape& shape, double low, double high) { return random(shape, low, high, DType::Float32); }
  double element() const { return static_cast<double>(dtype_size(dtype_)); }

  // A device-to-device copy of float32[2^30] (2^24 on the CPU) moves 2 x 4 bytes per element.
  void measure_copy() {
    const int64_t elements = gpu_ ? (int64_t{1} << 30) : (int64_t{1} << 24);
    Tensor source = parameter({elements}, -1.0, 1.0);
    Tensor target = Tensor::empty({elements}, DType::Float32, device_);
    const double ms = time_ms(device_, [&] { target.copy_(source); }, o_.iterations, gpu_ ? 3 : 1);
    copy_gbps_ = 2.0 * 4 * static_cast<double>(elements) / (ms * 1e-3) / 1e9;
    fmt::print("{:<58} {:9.3f} ms  {:8.2f} GB/s  (the limit below)\n",
               fmt::format("copy float32[2^{}]", static_cast<int>(std::log2(elements))), ms, copy_gbps_);
  }

  // exps: the exp() evaluations of the pass, or 0 where they are not worth counting.
  void print(const std::string& name, double ms, double bytes, int64_t length, double exps = 0) {
    const double gbps = bytes / (ms * 1e-3) / 1e9;
    const double tokens_per_s = static_cast<double>(o_.batch * length) / (ms * 1e-3);
    std::string line = fmt::format("{:<58} {:9.3f} ms  {:8.2f} GB/s  {:5.1f}% of copy  {:9.2f} Mtok/s", name, ms,
                                   gbps, 100.0 * gbps / copy_gbps_, tokens_per_s / 1e6);
    if (exps > 0) line += fmt::format("  {:8.1f} Gexp/s", exps / (ms * 1e-3) / 1e9);
    fmt::print("{}\n", line);
  }

  PassTiming time_passes(const std::function<Tensor()>& forward, std::vector<Tensor> leaves, const Tensor& grad_out) {
    return cli::time_passes(device_, forward, std::move(leaves), grad_out, o_.iterations, gpu_ ? 3 : 1);
  }

  void bench_scan(int64_t d_inner, int64_t length, int64_t d_state) {
    const int64_t batch = o_.batch;
    const Shape activation_shape{batch, d_inner, length}, bc_shape{batch, 1, d_state, length};
    Tensor u = activation(activation_shape), delta = activation(activation_shape), z = activation(activation_shape);
    Tensor B = activation(bc_shape), C = activation(bc_shape);
    Tensor A = parameter({d_inner, d_state}, -2.0, -0.1);
    Tensor D = parameter({d_inner}, -1.0, 1.0), delta_bias = parameter({d_inner}, -4.0, -2.0);
    auto forward = [&] {
      ops::SelectiveScanOptions options;
      options.D = D;
      options.z = z;
      options.delta_bias = delta_bias;
      options.delta_softplus = true;
      return ops::selective_scan(u, delta, A, B, C, options).y;
    };
    const PassTiming t = time_passes(forward, {u, delta, A, B, C, D, z, delta_bias}, activation(activation_shape));

    const double activations = static_cast<double>(batch * d_inner * length) * element();
    const double bc = static_cast<double>(batch * d_state * length) * element();
    const double parameters = 4.0 * static_cast<double>(d_inner * d_state + 2 * d_inner);
    const double bc_grads = 2.0 * 4 * static_cast<double>(batch * d_state * length);
    const double forward_bytes = 4 * activations + 2 * bc + parameters;                     // u delta z B C A D bias; y
    const double backward_bytes = 7 * activations + 2 * bc + bc_grads + 2 * parameters;  // + dy; du ddelta dz dB dC
    const std::string shape = fmt::format("{}[{}, {}, {}] N {}", dtype_name(dtype_), batch, d_inner, length, d_state);
    const double exps = static_cast<double>(batch * d_inner * length * d_state);
    print("selective_scan forward " + shape, t.forward_ms, forward_bytes, length, exps);
    print("selective_scan backward " + shape, t.backward_ms, backward_bytes, length, 2 * exps);
  }

  void bench_conv(int64_t channels, int64_t length) {
    const int64_t batch = o_.batch, kernel_size = o_.conv_kernel;
    const Shape shape{batch, channels, length};
    Tensor x = activation(shape);
    Tensor weight = parameter({channels, kernel_size}, -0.5, 0.5), bias = parameter({channels}, -0.5, 0.5);
    auto forward = [&] { return ops::causal_conv1d(x, weight, bias, /*silu=*/true); };
    const PassTiming t = time_passes(forward, {x, weight, bias}, activation(shape));

    const double tensor = static_cast<double>(batch * channels * length) * element();
    const double parameters = 4.0 * static_cast<double>(channels * (kernel_size + 1));
    const std::string name =
        fmt::format("{}[{}, {}, {}] kernel {}, SiLU", dtype_name(dtype_), batch, channels, length, kernel_size);
    print("causal_conv1d forward " + name, t.forward_ms, 2 * tensor + parameters, length);
    print("causal_conv1d backward " + name, t.backward_ms, 3 * tensor + 2 * parameters, length);
  }

  void bench_ssd(int64_t d_inner, int64_t length) {
    const int64_t batch = o_.batch, head_dim = o_.ssd_head_dim, heads = std::max<int64_t>(1, d_inner / head_dim);
    const int64_t d_state = o_.ssd_state;
    const Shape x_shape{batch, length, heads, head_dim}, dt_shape{batch, length, heads};
    const Shape bc_shape{batch, length, 1, d_state};
    Tensor x = activation(x_shape), dt = activation(dt_shape), B = activation(bc_shape), C = activation(bc_shape);
    Tensor A = parameter({heads}, -8.0, -1.0), D = parameter({heads}, -1.0, 1.0);
    Tensor dt_bias = parameter({heads}, -4.0, -2.0);
    auto forward = [&] {
      ops::SsdOptions options;
      options.D = D;
      options.dt_bias = dt_bias;
      options.dt_softplus = true;
      options.chunk_size = o_.ssd_chunk;
      return ops::ssd_chunked(x, dt, A, B, C, options).y;
    };
    const PassTiming t = time_passes(forward, {x, dt, A, B, C, D, dt_bias}, activation(x_shape));

    const double xs = static_cast<double>(batch * length * heads * head_dim) * element();
    const double dts = static_cast<double>(batch * length * heads) * element();
    const double bc = static_cast<double>(batch * length * d_state) * element();
    const double forward_bytes = 2 * xs + dts + 2 * bc;       // x dt B C; y
    const double backward_bytes = 3 * xs + 2 * dts + 4 * bc;  // x dt B C dy; dx ddt dB dC
    const std::string name = fmt::format("{}[{}, {}, {} x {}] N {} chunk {}", dtype_name(dtype_), batch, length, heads,
                                         head_dim, d_state, o_.ssd_chunk);
    print("ssd_chunked forward " + name, t.forward_ms, forward_bytes, length);
    print("ssd_chunked backward " + name, t.backward_ms, backward_bytes, length);
  }
};

}  // namespace

void add_bench_ssm_command(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "ssm", "Selective scan, causal conv1d and chunked SSD forward/backward: time, GB/s against copy, tokens/s");
  cmd->alias("scan");
  auto options = std::make_shared<SsmBenchOptions>();
  cmd->add_option("--device", options->device, "cpu, cuda, cuda:N or auto");
  cmd->add_option("--only", options->only, "Kernels to run: scan, conv, ssd")
      ->check(CLI::IsMember({"scan", "conv", "ssd"}));
  cmd->add_option("--batch", options->batch, "Batch size (default 8 on CUDA, 2 on the CPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--d-inner", options->d_inner,
                  "Channels of the scan and conv; SSD heads = this / head dim (default 2048 4096 on CUDA, 128 on "
                  "the CPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--lengths", options->lengths, "Sequence lengths (default 2048 8192 on CUDA, 256 on the CPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--states", options->states, "Selective-scan state sizes N (default 16 1)")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--ssd-state", options->ssd_state, "SSD state size N (default 128 on CUDA, 16 on the CPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ssd-head-dim", options->ssd_head_dim, "SSD head dim (default 64 on CUDA, 16 on the CPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ssd-chunk", options->ssd_chunk, "SSD chunk size (default 256 on CUDA, 64 on the CPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--conv-kernel", options->conv_kernel, "causal_conv1d kernel size")->check(CLI::Range(2, 8));
  cmd->add_option("--iterations", options->iterations, "Timed iterations per measurement (default 20 on CUDA, 1 "
                                                       "on the CPU)")
      ->check(CLI::PositiveNumber);
  cmd->callback([options] {
    SsmBenchOptions resolved = *options;
    Device device = parse_device(resolved.device);
    if (device.is_cuda()) cuda::set_device(device.index);
    resolve(resolved, device.is_cuda());
    SsmBench(resolved, device).run();
  });
}

}  // namespace strata::cli
