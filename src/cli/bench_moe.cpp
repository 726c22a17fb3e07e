// strata bench moe: the grouped expert GEMM and the whole mixture-of-experts layer.
//
// For each (experts E, tokens T, d_model d), with top_k k and SwiGLU experts of hidden
// size H = hidden_multiplier * d_model / top_k (default 4 d / k = 2 d for k = 2: each
// token's k experts together hold the parameters of a dense SwiGLU of hidden 4 d):
//  (a) the three products of each expert projection as one grouped GEMM over
//      rows = T k rows split into E equal groups (forward x W_e^T, input gradient
//      dY W_e, weight gradient dY_e^T X_e), against one dense GEMM of the same total
//      size measured in the same run (plain cuBLAS on CUDA, gemm on the CPU);
//  (b) the whole layer forward + backward (router, dispatch, gate/up, SwiGLU, down,
//      combine; the upstream gradient flows to x and every weight), with the experts
//      computed by the grouped GEMM, against the same layer whose experts run as a
//      host loop of per-expert products (ops::linear, cuBLAS on CUDA) on the split of
//      the dispatched rows, each expert holding its own weight tensors as a
//      per-expert module list would. The routing comes from a random router, so the
//      groups are nearly but not exactly equal.
// bfloat16 on CUDA, float32 on the CPU (a smoke size by default).
#include <algorithm>
#include <memory>
#include <tuple>

#include "cli/bench.h"
#include "cli/commands.h"
#include "kernels/grouped_gemm/grouped_gemm_cpu.h"
#include "strata/autograd/autograd.h"
#include "strata/core/memory.h"
#include "strata/core/rng.h"
#include "strata/core/timer.h"
#include "strata/kernels/gemm.h"
#include "strata/ops/moe.h"
#include "strata/ops/ops.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/grouped_gemm/grouped_gemm_cuda.h"
#endif

namespace strata::cli {

namespace {

struct MoEBenchOptions {
  std::string device = "auto";
  std::vector<int64_t> experts, tokens, d_model;  // empty: the device's defaults
  int64_t top_k = 2;
  int64_t hidden_multiplier = 4;
  int iterations = 10;
};

// The three products of an expert projection y = x W_e^T, W (E, n, k).
enum class Product { Forward, InputGrad, WeightGrad };

const char* product_name(Product product) {
  switch (product) {
    case Product::Forward: return "x W^T";
    case Product::InputGrad: return "dY W";
    case Product::WeightGrad: return "dY^T X";
  }
  return "";
}

// One grouped product over equal groups: the raw kernels (no autograd, no checks
// beyond the bench's own shapes). activations: x (rows, k) for Forward and
// WeightGrad's X, dY (rows, n) for InputGrad; other: W (E, n, k), or dY (rows, n)
// for WeightGrad.
void grouped_product(Product product, const Tensor& activations, const Tensor& other, const Tensor& offsets,
                     int64_t experts, int64_t n, int64_t k, Tensor& out) {
  const int64_t rows = activations.size(0);
  if (activations.device().is_cpu()) {
    const float* a = activations.data<float>();
    const float* b = other.data<float>();
    const int64_t* o = offsets.data<int64_t>();
    if (product == Product::Forward)
      kernels::grouped_gemm_rows_cpu<float>(a, b, o, experts, k, n, true, out.data<float>());
    if (product == Product::InputGrad)
      kernels::grouped_gemm_rows_cpu<float>(a, b, o, experts, n, k, false, out.data<float>());
    if (product == Product::WeightGrad)
      kernels::grouped_gemm_weight_grad_cpu<float>(b, a, o, experts, n, k, out.data<float>());
    return;
  }
#ifdef STRATA_WITH_CUDA
  const DType dtype = activations.dtype();
  const int64_t* o = offsets.data<int64_t>();
  bool supported = false;
  if (product == Product::Forward)
    supported = kernels::grouped_gemm_rows_cuda(dtype, activations.data_ptr(), other.data_ptr(), o, rows, experts, k,
                                                n, true, out.data_ptr());
  if (product == Product::InputGrad)
    supported = kernels::grouped_gemm_rows_cuda(dtype, activations.data_ptr(), other.data_ptr(), o, rows, experts, n,
                                                k, false, out.data_ptr());
  if (product == Product::WeightGrad)
    supported = kernels::grouped_gemm_weight_grad_cuda(dtype, other.data_ptr(), activations.data_ptr(), o, rows,
                                                       experts, n, k, out.data_ptr());
  STRATA_CHECK(supported, "bench moe: the grouped GEMM does not take {}", activations.str());
#else
  (void)rows;
#endif
}

// The layer's weights twice over: stacked for the grouped GEMM and as one tensor pair
// per expert for the loop (the same values).
struct LayerWeights {
  Tensor router;                 // (E, d)
  Tensor gate_up, down;          // (E, 2H, d), (E, d, H)
  std::vector<Tensor> gate_up_per_expert, down_per_expert;  // (2H, d), (d, H) each

  std::vector<Tensor> all() const {
    std::vector<Tensor> tensors{router, gate_up, down};
    tensors.insert(tensors.end(), gate_up_per_expert.begin(), gate_up_per_expert.end());
    tensors.insert(tensors.end(), down_per_expert.begin(), down_per_expert.end());
    return tensors;
  }
};

// x (T, d) -> (T, d): the MoE layer, its experts run as two grouped GEMMs or as a loop.
Tensor moe_layer(const Tensor& x, const LayerWeights& w, int64_t top_k, int64_t hidden, bool grouped) {
  ops::MoERouteOptions route;
  route.top_k = top_k;
  ops::MoERouting routing = ops::moe_route(ops::linear(x, w.router), route);
  Tensor dispatched = ops::moe_dispatch(x, routing);  // (rows, d), grouped by expert
  auto swiglu = [hidden](const Tensor& gate_up) {
    std::vector<Tensor> halves = ops::split(gate_up, {hidden, hidden}, 1);
    return ops::mul(ops::silu(halves[0]), halves[1]);
  };
  Tensor expert_out;
  if (grouped) {
    Tensor h = swiglu(ops::grouped_linear(dispatched, w.gate_up, routing.expert_offsets));
    expert_out = ops::grouped_linear(h, w.down, routing.expert_offsets);
  } else {
    const std::vector<int64_t> counts = routing.expert_counts.to(Device::cpu()).to_vector<int64_t>();
    std::vector<Tensor> groups = ops::split(dispatched, counts, 0), outputs;
    for (size_t e = 0; e < counts.size(); ++e) {
      if (counts[e] == 0) continue;
      Tensor h = swiglu(ops::linear(groups[e], w.gate_up_per_expert[e]));
      outputs.push_back(ops::linear(h, w.down_per_expert[e]));
    }
    expert_out = ops::concat(outputs, 0);
  }
  return ops::moe_combine(expert_out, routing);
}

void bench_moe(const MoEBenchOptions& o) {
  Device device = parse_device(o.device);
  if (device.is_cuda()) cuda::set_device(device.index);
  const bool gpu = device.is_cuda();
  const DType dtype = gpu ? DType::BFloat16 : DType::Float32;
  // The sizes asked for, or the device's defaults (a smoke size on the CPU).
  auto sizes = [gpu](const std::vector<int64_t>& asked, std::vector<int64_t> on_gpu, std::vector<int64_t> on_cpu) {
    return !asked.empty() ? asked : gpu ? on_gpu : on_cpu;
  };
  const std::vector<int64_t> expert_counts = sizes(o.experts, {8, 16, 64}, {4});
  const std::vector<int64_t> token_counts = sizes(o.tokens, {8192, 32768, 65536}, {64});
  const std::vector<int64_t> model_dims = sizes(o.d_model, {1024, 2048}, {32});
  const int iterations = gpu ? o.iterations : std::min(o.iterations, 2);
  // Rates in TFLOP/s on CUDA, GFLOP/s on the CPU.
  const double flop_unit = gpu ? 1e12 : 1e9;
  const char* rate_unit = gpu ? "TFLOP/s" : "GFLOP/s";
  Generator generator{7, 0};
  fmt::print("strata bench moe on {} ({}); top_k {}, expert hidden = {} * d_model / top_k, SwiGLU experts\n",
             device.str(), dtype_name(dtype), o.top_k, o.hidden_multiplier);
  fmt::print("grouped GEMM: rows = tokens * top_k in equal groups, against one dense {} of the same size\n",
             gpu ? "cublasGemmEx" : "gemm");

  for (int64_t d : model_dims)
    for (int64_t experts : expert_counts)
      for (int64_t tokens : token_counts) {
        STRATA_CHECK(o.top_k <= experts, "bench moe: top_k {} exceeds {} experts", o.top_k, experts);
        const int64_t hidden = std::max<int64_t>(1, o.hidden_multiplier * d / o.top_k);
        const int64_t rows = tokens * o.top_k;
        fmt::print("-- experts {} tokens {} d_model {} hidden {} (rows {})\n", experts, tokens, d, hidden, rows);
        auto random = [&](const Shape& shape, double scale) {
          return rand_normal(shape, 0.0, scale, DType::Float32, device, generator).to(dtype);
        };

        // (a) The grouped GEMM against one dense GEMM of the same total size.
        {
          autograd::NoGradGuard no_grad;
          std::vector<int64_t> offsets(static_cast<size_t>(experts) + 1, 0);
          for (int64_t e = 0; e < experts; ++e)
            offsets[e + 1] = offsets[e] + rows / experts + (e < rows % experts ? 1 : 0);
          Tensor group_offsets = Tensor::from_vector<int64_t>(offsets, {experts + 1}).to(device);
          // The gate/up projection (n = 2H, k = d) and the down projection (n = d, k = H).
          for (auto [n, k, name] : {std::tuple{2 * hidden, d, "gate_up"}, std::tuple{d, hidden, "down"}}) {
            Tensor x = random({rows, k}, 1.0), grad_y = random({rows, n}, 1.0);
            Tensor weight = random({experts, n, k}, 0.02);
            Tensor dense_weight = ops::reshape(ops::slice(weight, 0, 0, 1), {n, k});
            const double flops = 2.0 * static_cast<double>(rows) * static_cast<double>(n) * static_cast<double>(k);
            for (Product product : {Product::Forward, Product::InputGrad, Product::WeightGrad}) {
              const bool weight_grad = product == Product::WeightGrad;
              const Tensor& activations = product == Product::InputGrad ? grad_y : x;
              const Tensor& other = weight_grad ? grad_y : weight;
              Tensor out = weight_grad ? Tensor::empty({experts, n, k}, dtype, device)
                                       : Tensor::empty({rows, product == Product::Forward ? n : k}, dtype, device);
              Tensor dense_out = weight_grad ? Tensor::empty({n, k}, dtype, device) : out;
              auto dense = [&] {
                // The same product with one matrix for all rows: x W0^T, dY W0, dY^T X.
                const Tensor& a = product == Product::Forward ? x : grad_y;
                const Tensor& b = product == Product::Forward ? dense_weight : weight_grad ? x : dense_weight;
                const bool transpose_a = weight_grad, transpose_b = product == Product::Forward;
                if (gpu)
                  kernels::gemm_cublas_reference(a, b, dense_out, transpose_a, transpose_b, 1.0f, 0.0f);
                else
                  kernels::gemm(a, b, dense_out, transpose_a, transpose_b, 1.0f, 0.0f);
              };
              const double dense_ms = time_ms(device, dense, iterations);
              const double grouped_ms = time_ms(
                  device, [&] { grouped_product(product, activations, other, group_offsets, experts, n, k, out); },
                  iterations);
              const double dense_rate = flops / (dense_ms * 1e-3) / flop_unit;
              report(fmt::format("grouped {} {} ({}x{}x{})", name, product_name(product), rows, n, k), grouped_ms,
                     flops / flop_unit, rate_unit, dense_rate);
            }
          }
        }

        // (b) The whole layer, forward + backward: grouped GEMM against a per-expert loop.
        LayerWeights w;
        w.router = random({experts, d}, 0.02).set_requires_grad(true);
        w.gate_up = random({experts, 2 * hidden, d}, 0.02).set_requires_grad(true);
        w.down = random({experts, d, hidden}, 0.02).set_requires_grad(true);
        auto expert_matrix = [](const Tensor& stacked, int64_t e) {
          return ops::reshape(ops::slice(stacked.detach(), 0, e, e + 1), {stacked.size(1), stacked.size(2)})
              .clone()
              .set_requires_grad(true);
        };
        for (int64_t e = 0; e < experts; ++e) {
          w.gate_up_per_expert.push_back(expert_matrix(w.gate_up, e));
          w.down_per_expert.push_back(expert_matrix(w.down, e));
        }
        Tensor x = random({tokens, d}, 1.0).set_requires_grad(true);
        Tensor grad_y = random({tokens, d}, 1.0);
        const std::vector<Tensor> trainable = [&] {
          std::vector<Tensor> t = w.all();
          t.push_back(x);
          return t;
        }();
        double layer_ms[2];
        for (bool grouped : {true, false}) {
          layer_ms[grouped ? 0 : 1] = time_ms(device, [&] {
            for (Tensor t : trainable) t.zero_grad();
            autograd::backward(moe_layer(x, w, o.top_k, hidden, grouped), grad_y);
          }, iterations);
        }
        // Flops of the expert products alone (3 products of 2 projections per row).
        const double expert_flops = 3.0 * 2.0 * static_cast<double>(rows) * 3.0 * static_cast<double>(hidden) *
                                    static_cast<double>(d);
        fmt::print("{:<46} {:9.3f} ms  {:9.1f} {} in the experts\n", "moe layer fwd+bwd, grouped GEMM", layer_ms[0],
                   expert_flops / (layer_ms[0] * 1e-3) / flop_unit, rate_unit);
        fmt::print("{:<46} {:9.3f} ms  {:9.1f} {} in the experts\n", "moe layer fwd+bwd, per-expert loop", layer_ms[1],
                   expert_flops / (layer_ms[1] * 1e-3) / flop_unit, rate_unit);
        fmt::print("{:<46} {:9.2f}x\n", "moe layer speedup (loop / grouped)", layer_ms[1] / layer_ms[0]);
      }
  if (gpu) {
    MemoryStats stats = memory_stats(device);
    fmt::print("peak device memory held by Strata: {:.2f} GiB\n", static_cast<double>(stats.peak_bytes) / (1 << 30));
  }
}

}  // namespace

void add_bench_moe_command(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "moe", "Grouped expert GEMM vs one dense GEMM of the same size, and the MoE layer fwd+bwd vs a per-expert loop");
  auto options = std::make_shared<MoEBenchOptions>();
  cmd->add_option("--device", options->device, "cpu, cuda, cuda:N or auto");
  cmd->add_option("--experts", options->experts, "Expert counts (default 8 16 64 on CUDA, 4 on the CPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--tokens", options->tokens, "Token counts (default 8192 32768 65536 on CUDA, 64 on the CPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--d-model", options->d_model, "Model widths (default 1024 2048 on CUDA, 32 on the CPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--top-k", options->top_k, "Experts per token")->check(CLI::PositiveNumber);
  cmd->add_option("--hidden-multiplier", options->hidden_multiplier,
                  "Expert hidden size = this * d_model / top_k")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--iterations", options->iterations, "Timed iterations per measurement")->check(CLI::PositiveNumber);
  cmd->callback([options] { bench_moe(*options); });
}

}  // namespace strata::cli
