// strata bench: measured speed of the basic kernels beside the device's own limits,
// which are measured in the same run (a large device-to-device copy for bandwidth,
// cuBLAS's default GEMM for matrix throughput). On a machine without CUDA the CPU
// kernels are measured instead.
//
// Bytes counted for bandwidth: every tensor read once plus every tensor written
// once (a copy of N bytes moves 2N).
#include <cmath>
#include <memory>

#include "cli/bench.h"
#include "cli/commands.h"
#include "strata/autograd/autograd.h"
#include "strata/core/rng.h"
#include "strata/core/timer.h"
#include "strata/kernels/adamw.h"
#include "strata/kernels/gemm.h"
#include "strata/kernels/normalization.h"
#include "strata/ops/ops.h"

namespace strata::cli {

void report(const std::string& name, double ms, double amount, const char* unit, double limit) {
  double rate = amount / (ms * 1e-3);
  fmt::print("{:<46} {:9.3f} ms  {:9.1f} {}  {:5.1f}% of {:.1f}\n", name, ms, rate, unit, 100.0 * rate / limit, limit);
}

bool selected(const std::vector<std::string>& only, const std::string& group) {
  return only.empty() || std::find(only.begin(), only.end(), group) != only.end();
}

PassTiming time_passes(Device device, const std::function<Tensor()>& forward, std::vector<Tensor> leaves,
                       const Tensor& grad_out, int iterations, int warmup) {
  PassTiming t;
  {
    autograd::NoGradGuard no_grad;
    t.forward_ms = time_ms(device, [&] { forward(); }, iterations, warmup);
  }
  autograd::EnableGradGuard grad;
  for (Tensor& leaf : leaves) leaf.set_requires_grad(true);
  Tensor out = forward();
  t.backward_ms = time_ms(
      device,
      [&] {
        for (Tensor& leaf : leaves) leaf.zero_grad();
        autograd::backward(out, grad_out, /*retain_graph=*/true);
      },
      iterations, warmup);
  for (Tensor& leaf : leaves) {
    leaf.zero_grad();
    leaf.set_requires_grad(false);
  }
  return t;
}

namespace {

struct BenchOptions {
  std::string device = "auto";
  std::vector<std::string> only;
  int64_t gemm_size = 8192;
  int64_t rows = 16384, dim = 4096;
  int64_t adamw_parameters = 256 << 20;
  int iterations = 20;
};

void bench(const BenchOptions& o) {
  Device device = parse_device(o.device);
  if (device.is_cuda()) cuda::set_device(device.index);
  autograd::NoGradGuard no_grad;
  Generator generator{1, 0};
  auto random = [&](const Shape& shape, DType dtype) { return rand_normal(shape, 0.0, 1.0, dtype, device, generator); };
  bool gpu = device.is_cuda();
  DType low = gpu ? DType::BFloat16 : DType::Float32;  // the fast float type of the device
  fmt::print("strata bench on {}\n", device.str());

  // Bandwidth limit: a large copy.
  int64_t copy_elements = gpu ? (int64_t{1} << 30) : (int64_t{1} << 26);
  Tensor copy_source = random({copy_elements}, DType::Float32);
  Tensor copy_target = Tensor::empty({copy_elements}, DType::Float32, device);
  double copy_bytes = 2.0 * 4 * static_cast<double>(copy_elements);
  double copy_ms = time_ms(device, [&] { copy_target.copy_(copy_source); }, o.iterations);
  double bandwidth = copy_bytes / (copy_ms * 1e-3) / 1e9;
  fmt::print("{:<46} {:9.3f} ms  {:9.1f} GB/s  (the bandwidth limit below)\n", "copy float32[2^" +
             std::to_string(static_cast<int>(std::log2(copy_elements))) + "]", copy_ms, bandwidth);
  copy_source = Tensor();
  copy_target = Tensor();

  if (selected(o.only, "gemm")) {
    int64_t n = gpu ? o.gemm_size : std::min<int64_t>(o.gemm_size, 1024);
    double flops = 2.0 * static_cast<double>(n) * n * n;
    for (DType dtype : {low, DType::Float32}) {
      Tensor a = random({n, n}, dtype), b = random({n, n}, dtype);
      Tensor c = Tensor::empty({n, n}, dtype, device);
      std::string shape = fmt::format("{}x{}x{} {}", n, n, n, dtype_name(dtype));
      double limit_ms = 0;
      if (gpu) {
        limit_ms = time_ms(device, [&] { kernels::gemm_cublas_reference(a, b, c, false, false, 1.0f, 0.0f); }, o.iterations);
        fmt::print("{:<46} {:9.3f} ms  {:9.1f} TFLOP/s  (cuBLAS default, the limit below)\n", "cublasGemmEx " + shape,
                   limit_ms, flops / (limit_ms * 1e-3) / 1e12);
      }
      double ms = time_ms(device, [&] { kernels::gemm(a, b, c, false, false, 1.0f, 0.0f); }, gpu ? o.iterations : 3);
      double limit = gpu ? flops / (limit_ms * 1e-3) / 1e12 : INFINITY;
      if (gpu) {
        report("gemm " + shape, ms, flops / 1e12, "TFLOP/s", limit);
      } else {
        fmt::print("{:<46} {:9.3f} ms  {:9.1f} GFLOP/s\n", "gemm " + shape, ms, flops / (ms * 1e-3) / 1e9);
      }
      if (!gpu) break;
    }
  }

  int64_t rows = gpu ? o.rows : std::min<int64_t>(o.rows, 2048), dim = gpu ? o.dim : std::min<int64_t>(o.dim, 1024);
  if (selected(o.only, "elementwise")) {
    for (DType dtype : {low, DType::Float32}) {
      Tensor a = random({rows, dim}, dtype), b = random({rows, dim}, dtype);
      double bytes = 3.0 * static_cast<double>(rows * dim) * static_cast<double>(dtype_size(dtype));
      double ms = time_ms(device, [&] { ops::add(a, b); }, o.iterations);
      report(fmt::format("add {}[{}, {}]", dtype_name(dtype), rows, dim), ms, bytes / 1e9, "GB/s", bandwidth);
      bytes = 2.0 * static_cast<double>(rows * dim) * static_cast<double>(dtype_size(dtype));
      ms = time_ms(device, [&] { ops::silu(a); }, o.iterations);
      report(fmt::format("silu {}[{}, {}]", dtype_name(dtype), rows, dim), ms, bytes / 1e9, "GB/s", bandwidth);
      if (!gpu) break;
    }
  }

  if (selected(o.only, "norm")) {
    for (DType dtype : {low, DType::Float32}) {
      Tensor x = random({rows, dim}, dtype), dy = random({rows, dim}, dtype);
      Tensor weight = random({dim}, dtype), bias = random({dim}, dtype);
      double element = static_cast<double>(dtype_size(dtype));
      double forward_bytes = 2.0 * static_cast<double>(rows * dim) * element;   // read x, write y
      double backward_bytes = 3.0 * static_cast<double>(rows * dim) * element;  // read x and dy, write dx
      std::string shape = fmt::format("{}[{}, {}]", dtype_name(dtype), rows, dim);
      kernels::NormForward forward;
      double ms = time_ms(device, [&] { forward = kernels::layer_norm_forward(x, weight, bias, 1e-5); }, o.iterations);
      report("layer_norm forward " + shape, ms, forward_bytes / 1e9, "GB/s", bandwidth);
      kernels::NormGradients grads;
      ms = time_ms(device, [&] {
        grads = kernels::layer_norm_backward(dy, x, weight, forward.mean, forward.rstd, true);
      }, o.iterations);
      report("layer_norm backward " + shape, ms, backward_bytes / 1e9, "GB/s", bandwidth);
      ms = time_ms(device, [&] { forward = kernels::rms_norm_forward(x, weight, 1e-6); }, o.iterations);
      report("rms_norm forward " + shape, ms, forward_bytes / 1e9, "GB/s", bandwidth);
      ms = time_ms(device, [&] { grads = kernels::rms_norm_backward(dy, x, weight, forward.rstd); }, o.iterations);
      report("rms_norm backward " + shape, ms, backward_bytes / 1e9, "GB/s", bandwidth);
      if (!gpu) break;
    }
  }

  if (selected(o.only, "adamw")) {
    int64_t n = gpu ? o.adamw_parameters : std::min<int64_t>(o.adamw_parameters, int64_t{1} << 22);
    kernels::AdamWTensors t{random({n}, DType::Float32), random({n}, DType::Float32),
                            Tensor::zeros({n}, DType::Float32, device), Tensor::zeros({n}, DType::Float32, device), true};
    kernels::AdamWHyperparameters h;
    double bytes = 7.0 * 4 * static_cast<double>(n);  // read param, grad, m, v; write param, m, v
    double ms = time_ms(device, [&] { kernels::adamw_step({t}, h); }, o.iterations);
    report(fmt::format("adamw step float32[{}]", n), ms, bytes / 1e9, "GB/s", bandwidth);
  }
  if (gpu) {
    MemoryStats stats = memory_stats(device);
    fmt::print("peak device memory held by Strata: {:.2f} GiB\n", static_cast<double>(stats.peak_bytes) / (1 << 30));
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench", "Measure GEMM, element-wise, normalisation and AdamW against the device limits; "
               "its subcommands measure one kernel family");
  cmd->require_subcommand(0, 1);
  auto options = std::make_shared<BenchOptions>();
  cmd->add_option("--device", options->device, "cpu, cuda, cuda:N or auto");
  cmd->add_option("--only", options->only, "Groups to run: gemm, elementwise, norm, adamw")
      ->check(CLI::IsMember({"gemm", "elementwise", "norm", "adamw"}));
  cmd->add_option("--gemm-size", options->gemm_size, "Square GEMM size (GPU)")->check(CLI::PositiveNumber);
  cmd->add_option("--rows", options->rows, "Rows for element-wise and norm benchmarks")->check(CLI::PositiveNumber);
  cmd->add_option("--dim", options->dim, "Row length for element-wise and norm benchmarks")->check(CLI::PositiveNumber);
  cmd->add_option("--iterations", options->iterations, "Timed iterations per measurement")->check(CLI::PositiveNumber);
  cmd->callback([cmd, options] {
    if (cmd->get_subcommands().empty()) bench(*options);
  });
  add_bench_moe_command(*cmd);
  add_bench_attention_command(*cmd);
  add_bench_ssm_command(*cmd);
}

}  // namespace strata::cli
