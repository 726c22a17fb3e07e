// strata bench attention: throughput of the fused attention kernels.
//
//  - dense: forward and backward TFLOP/s of ops::attention, causal and not, per head
//    dim and length. Shapes follow FlashAttention's benchmarks: a model width of
//    2048 (heads = 2048 / head_dim) and 16K tokens per batch (batch = max(1, 16384 /
//    L)), so every run holds 32M elements of q (64M at L = 32K, batch 1).
//    FLOPs: 4 B H Lq Lk D forward (two matrix products of 2 B H Lq Lk D), 2.5 times
//    that backward (five products: S and dP recomputed, dV, dK, dQ), halved when
//    causal, the way FlashAttention counts them.
//  - sparse: ops::block_sparse_attention over the layouts of block_layout.h, each
//    timed against dense non-causal attention of the same shape (the kernel that
//    visits every block), printed as time / (density x dense time): 1 means the time
//    falls exactly with the density; the target is 1.3 or less.
//    The top-k layout (topk_block_layout) is selected from the benched q and k, and
//    its selection time is printed apart. The 2-D neighborhood layout is timed at
//    block level, without the element mask (a bias) that makes it exact.
//  - dma: ops::dynamic_mask_attention (causal) against its keep window, beside dense
//    causal attention of the same shape; its TFLOP/s count only the kept pairs.
//
// The backward pass is timed alone: the forward runs once with the tape on, then
// the recorded node's backward is replayed (retain_graph) with the input grads
// cleared each time, so no gradient accumulation is counted.
//
// --export-layouts DIR writes every sparse layout benched as JSON, with the shapes
// and the times measured here, and an index strata.json with the dense results, for
// scripts/bench/attention_torch.py (PyTorch's SDPA and FlexAttention on the same
// shapes and block masks).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "cli/bench.h"
#include "cli/commands.h"
#include "strata/autograd/autograd.h"
#include "strata/core/memory.h"
#include "strata/core/rng.h"
#include "strata/core/timer.h"
#include "strata/kernels/block_layout.h"
#include "strata/kernels/gemm.h"
#include "strata/ops/attention.h"

namespace strata::cli {

namespace {

namespace fs = std::filesystem;
using kernels::BlockLayout;
using kernels::LayoutGeometry;

// Zero (or empty) means the device's default, chosen in resolve().
struct AttentionBenchOptions {
  std::string device = "auto";
  std::vector<int64_t> lengths;
  std::vector<int64_t> sparse_lengths;
  std::vector<int64_t> head_dims;
  std::vector<std::string> only;
  int iterations = 0;
  int64_t tokens = 0;
  int64_t model_dim = 0;
  int64_t block_size = 0;
  std::string export_layouts;
};

// The GPU defaults are the sizes the targets are stated at; the CPU ones are
// a smoke test that runs in about a second.
void resolve(AttentionBenchOptions& o, bool gpu) {
  if (o.lengths.empty()) o.lengths = gpu ? std::vector<int64_t>{1024, 2048, 4096, 8192, 16384, 32768} : std::vector<int64_t>{128};
  if (o.sparse_lengths.empty()) o.sparse_lengths = gpu ? std::vector<int64_t>{8192, 16384} : std::vector<int64_t>{256};
  if (o.head_dims.empty()) o.head_dims = gpu ? std::vector<int64_t>{64, 128} : std::vector<int64_t>{32};
  if (o.iterations == 0) o.iterations = gpu ? 10 : 1;
  if (o.tokens == 0) o.tokens = gpu ? 16384 : 128;
  if (o.model_dim == 0) o.model_dim = gpu ? 2048 : 64;
  if (o.block_size == 0) o.block_size = gpu ? 128 : 64;
}

// (batch, heads) of one run at length L and head dim D.
struct RunShape {
  int64_t batch, heads, length, head_dim;
};

RunShape shape_for(const AttentionBenchOptions& o, int64_t length, int64_t head_dim) {
  STRATA_CHECK(o.model_dim % head_dim == 0, "bench attention: --model-dim {} is not a multiple of head dim {}",
               o.model_dim, head_dim);
  return {std::max<int64_t>(1, o.tokens / length), o.model_dim / head_dim, length, head_dim};
}

double forward_flops(const RunShape& s, bool causal) {
  double flops = 4.0 * static_cast<double>(s.batch * s.heads) * static_cast<double>(s.length) *
                 static_cast<double>(s.length) * static_cast<double>(s.head_dim);
  return causal ? flops / 2 : flops;
}
constexpr double kBackwardFlopsPerForward = 2.5;

class AttentionBench {
 public:
  explicit AttentionBench(const AttentionBenchOptions& options)
      : o_(options), device_(parse_device(options.device)), gpu_(device_.is_cuda()),
        dtype_(gpu_ ? DType::BFloat16 : DType::Float32) {
    if (gpu_) cuda::set_device(device_.index);
    resolve(o_, gpu_);
    if (!o_.export_layouts.empty()) fs::create_directories(o_.export_layouts);
  }

  void run() {
    fmt::print("strata bench attention on {}: {}, model width {} (heads = width / head dim), batch = max(1, {} / L)\n",
               device_.str(), dtype_name(dtype_), o_.model_dim, o_.tokens);
    if (gpu_) measure_gemm_limit();
    if (selected(o_.only, "dense")) dense();
    if (selected(o_.only, "sparse")) sparse();
    if (selected(o_.only, "dma")) dma();
    if (!o_.export_layouts.empty()) {
      index_["device"] = device_.str();
      index_["dtype"] = dtype_name(dtype_);
      write_json(fs::path(o_.export_layouts) / "strata.json", index_);
      fmt::print("layouts and times written to {}\n", o_.export_layouts);
    }
  }

 private:
  // cuBLAS's bfloat16 GEMM, the tensor-core rate the attention lines are compared with.
  void measure_gemm_limit() {
    autograd::NoGradGuard no_grad;
    const int64_t n = 8192;
    Tensor a = random({n, n}), b = random({n, n}), c = Tensor::empty({n, n}, dtype_, device_);
    double ms = time_ms(device_, [&] { kernels::gemm_cublas_reference(a, b, c, false, false, 1.0f, 0.0f); },
                        o_.iterations);
    gemm_tflops_ = 2.0 * n * n * n / (ms * 1e-3) / 1e12;
    fmt::print("{:<52} {:9.3f} ms  {:8.1f} TFLOP/s  (cuBLAS default, the limit below)\n",
               fmt::format("cublasGemmEx {}x{}x{} {}", n, n, n, dtype_name(dtype_)), ms, gemm_tflops_);
  }

  Tensor random(const Shape& shape) { return rand_normal(shape, 0.0, 1.0, dtype_, device_, generator_); }

  // q, k, v and the upstream gradient of one shape: (batch, heads, L, head_dim).
  struct Inputs {
    Tensor q, k, v, grad_out;
  };
  Inputs make_inputs(const RunShape& s) {
    Shape shape{s.batch, s.heads, s.length, s.head_dim};
    return {random(shape), random(shape), random(shape), random(shape)};
  }

  PassTiming time_passes(const std::function<Tensor()>& forward, std::vector<Tensor> leaves, const Tensor& grad_out) {
    return cli::time_passes(device_, forward, std::move(leaves), grad_out, o_.iterations, gpu_ ? 3 : 1);
  }

  PassTiming time_attention(const Inputs& in, bool causal, const BlockLayout* layout) {
    ops::AttentionOptions options;
    options.causal = causal;
    return time_passes([&] {
      return layout ? ops::block_sparse_attention(in.q, in.k, in.v, *layout, options).out
                    : ops::attention(in.q, in.k, in.v, options).out;
    }, {in.q, in.k, in.v}, in.grad_out);
  }

  void print_rate(const std::string& name, double ms, double flops) {
    double rate = flops / (ms * 1e-3);
    if (gpu_)
      fmt::print("{:<52} {:9.3f} ms  {:8.1f} TFLOP/s  {:5.1f}% of cuBLAS\n", name, ms, rate / 1e12,
                 100.0 * rate / 1e12 / gemm_tflops_);
    else
      fmt::print("{:<52} {:9.3f} ms  {:8.2f} GFLOP/s\n", name, ms, rate / 1e9);
  }

  void dense() {
    for (int64_t head_dim : o_.head_dims)
      for (bool causal : {false, true})
        for (int64_t length : o_.lengths) {
          RunShape s = shape_for(o_, length, head_dim);
          PassTiming t = time_attention(make_inputs(s), causal, nullptr);
          std::string shape = fmt::format("{} L={} D={} B={} H={}", causal ? "causal" : "full", length, head_dim,
                                          s.batch, s.heads);
          double flops = forward_flops(s, causal);
          print_rate("attention forward " + shape, t.forward_ms, flops);
          print_rate("attention backward " + shape, t.backward_ms, kBackwardFlopsPerForward * flops);
          index_["dense"].push_back({{"causal", causal}, {"length", length}, {"head_dim", head_dim},
                                     {"batch", s.batch}, {"heads", s.heads}, {"forward_ms", t.forward_ms},
                                     {"backward_ms", t.backward_ms}});
        }
  }

  // A layout to bench: its printed name, whether the attention is causal inside it,
  // and how to build it for a geometry and the inputs (on the CPU, or on q's device
  // for the layouts selected from q and k).
  struct LayoutCase {
    std::string name;
    bool causal;
    std::function<BlockLayout(const LayoutGeometry&, const Inputs&)> build;
    bool from_inputs = false;
  };

  // A few settings of each builder, spanning densities from a few percent to a half
  // at 8K with blocks of 128.
  static std::vector<LayoutCase> layout_cases(const LayoutGeometry& geometry) {
    using namespace kernels;
    std::vector<LayoutCase> cases;
    cases.push_back({"causal", true, [](const LayoutGeometry& g, const Inputs&) { return causal_layout(g); }});
    for (int64_t window : {4, 16})
      cases.push_back({fmt::format("sliding(window={})", window), true,
                       [window](const LayoutGeometry& g, const Inputs&) { return sliding_window_layout(g, window); }});
    for (int64_t dilation : {2, 4})
      cases.push_back({fmt::format("dilated(window=8,dilation={})", dilation), true,
                       [dilation](const LayoutGeometry& g, const Inputs&) { return dilated_layout(g, 8, dilation); }});
    cases.push_back({"power(local=2,sinks=1)", true,
                     [](const LayoutGeometry& g, const Inputs&) { return power_layout(g, 2, 1); }});
    for (int64_t stride : {8, 16})
      cases.push_back({fmt::format("s2(local=4,stride={})", stride), true,
                       [stride](const LayoutGeometry& g, const Inputs& in) { return s2_layout(g, in.q.shape()[1], 4, stride); }});
    cases.push_back({"neighborhood(window=5)", false,
                     [](const LayoutGeometry& g, const Inputs&) { return neighborhood_layout(g, 5); }});
    cases.push_back({"neighborhood(window=9,dilation=2)", false,
                     [](const LayoutGeometry& g, const Inputs&) { return neighborhood_layout(g, 9, 2); }});
    // Tokens on a grid of rows of half a block (64 x 128 at 8K with blocks of 128).
    const int64_t width = geometry.block_size / 2, height = geometry.query_length / width;
    if (height * width == geometry.query_length && height >= 7)
      cases.push_back({"neighborhood2d(window=7x7)", false, [height, width](const LayoutGeometry& g, const Inputs&) {
                         return neighborhood_2d_layout(g, height, width, 7, 7);
                       }});
    for (int64_t top_k : {4, 16})
      cases.push_back({fmt::format("topk(k={})", top_k), true,
                       [top_k](const LayoutGeometry& g, const Inputs& in) {
                         return topk_block_layout(in.q, in.k, {.block_size = g.block_size, .top_k = top_k});
                       },
                       true});
    return cases;
  }

  void sparse() {
    fmt::print("block-sparse, blocks of {}: (x) = time / (density x dense non-causal time), target <= 1.3\n",
               o_.block_size);
    for (int64_t length : o_.sparse_lengths)
      for (int64_t head_dim : o_.head_dims) {
        RunShape s = shape_for(o_, length, head_dim);
        Inputs inputs = make_inputs(s);
        PassTiming dense = time_attention(inputs, false, nullptr);
        fmt::print("attention sparse {:<34} L={} D={} B={} H={}  fwd {:8.3f} ms  bwd {:8.3f} ms\n", "dense(reference)",
                   length, head_dim, s.batch, s.heads, dense.forward_ms, dense.backward_ms);
        LayoutGeometry geometry{length, length, o_.block_size};
        for (const LayoutCase& c : layout_cases(geometry)) {
          BlockLayout layout;
          if (c.from_inputs) {
            autograd::NoGradGuard no_grad;
            double select_ms = time_ms(device_, [&] { layout = c.build(geometry, inputs); }, o_.iterations);
            fmt::print("attention sparse {:<34} L={} D={} selection {:8.3f} ms\n", c.name, length, head_dim, select_ms);
          } else {
            layout = c.build(geometry, inputs);
          }
          double density = layout.density();
          BlockLayout on_device = layout.to(device_);
          PassTiming t = time_attention(inputs, c.causal, &on_device);
          double forward_ratio = t.forward_ms / (density * dense.forward_ms);
          double backward_ratio = t.backward_ms / (density * dense.backward_ms);
          fmt::print("attention sparse {:<34} L={} D={} density {:.4f}  fwd {:8.3f} ms ({:.2f}x)  bwd {:8.3f} ms ({:.2f}x)\n",
                     c.name, length, head_dim, density, t.forward_ms, forward_ratio, t.backward_ms, backward_ratio);
          if (!o_.export_layouts.empty()) export_layout(c, layout, s, t, dense);
        }
      }
  }

  // Causal DMA keeps, for query i, min(i + 1, window) keys: the pairs its FLOPs count.
  static double kept_pairs(int64_t length, int64_t window) {
    double w = static_cast<double>(std::min(window, length)), l = static_cast<double>(length);
    return w * (w + 1) / 2 + (l - w) * w;
  }

  void dma() {
    fmt::print("dynamic mask attention (causal): TFLOP/s over the kept pairs; (x) = time / dense causal time\n");
    for (int64_t length : o_.sparse_lengths)
      for (int64_t head_dim : o_.head_dims) {
        RunShape s = shape_for(o_, length, head_dim);
        Inputs in = make_inputs(s);
        PassTiming dense = time_attention(in, true, nullptr);
        Tensor key_bias = rand_normal({s.batch, s.heads, s.length}, 0.0, 1.0, DType::Float32, device_, generator_);
        std::vector<int64_t> windows;
        for (int64_t window = length / 32; window < length; window *= 2) windows.push_back(window);
        for (int64_t window : windows) {
          PassTiming t = time_passes([&] { return ops::dynamic_mask_attention(in.q, in.k, in.v, key_bias, window); },
                                 {in.q, in.k, in.v, key_bias}, in.grad_out);
          double flops = 4.0 * static_cast<double>(s.batch * s.heads) * kept_pairs(length, window) *
                         static_cast<double>(head_dim);
          std::string shape = fmt::format("window={} L={} D={} B={} H={}", window, length, head_dim, s.batch, s.heads);
          print_rate("attention dma forward " + shape, t.forward_ms, flops);
          print_rate("attention dma backward " + shape, t.backward_ms, kBackwardFlopsPerForward * flops);
          fmt::print("attention dma {:<38} fwd {:.2f}x  bwd {:.2f}x of dense causal\n",
                     fmt::format("window={} L={} D={}", window, length, head_dim), t.forward_ms / dense.forward_ms,
                     t.backward_ms / dense.backward_ms);
          index_["dma"].push_back({{"window", window}, {"length", length}, {"head_dim", head_dim},
                                   {"batch", s.batch}, {"heads", s.heads}, {"forward_ms", t.forward_ms},
                                   {"backward_ms", t.backward_ms}});
        }
      }
  }

  // One JSON file per layout: the shapes and key_blocks[batch][head][query_block],
  // the key blocks each query block attends, increasing (batch and head dims of 1
  // are shared by every sequence or head).
  void export_layout(const LayoutCase& c, const BlockLayout& layout, const RunShape& s, const PassTiming& t,
                     const PassTiming& dense) {
    BlockLayout host = layout.to(Device::cpu());
    nlohmann::json key_blocks = nlohmann::json::array();
    for (int64_t batch = 0; batch < host.batches(); ++batch) {
      nlohmann::json heads = nlohmann::json::array();
      for (int64_t head = 0; head < host.heads(); ++head) {
        nlohmann::json rows = nlohmann::json::array();
        for (int64_t query_block = 0; query_block < host.query_blocks(); ++query_block)
          rows.push_back(host.key_blocks_of(head, query_block, batch));
        heads.push_back(std::move(rows));
      }
      key_blocks.push_back(std::move(heads));
    }
    std::string file = fmt::format("L{}-D{}-{}.json", s.length, s.head_dim, file_stem(c.name));
    nlohmann::json entry = {{"layout", c.name},
                            {"causal", c.causal},
                            {"block_size", layout.block_size()},
                            {"query_length", layout.query_length()},
                            {"key_length", layout.key_length()},
                            {"batch", s.batch},
                            {"heads", s.heads},
                            {"head_dim", s.head_dim},
                            {"density", layout.density()},
                            {"key_blocks", std::move(key_blocks)}};
    write_json(fs::path(o_.export_layouts) / file, entry);
    index_["sparse"].push_back({{"file", file},
                                {"layout", c.name},
                                {"length", s.length},
                                {"head_dim", s.head_dim},
                                {"density", layout.density()},
                                {"forward_ms", t.forward_ms},
                                {"backward_ms", t.backward_ms},
                                {"dense_forward_ms", dense.forward_ms},
                                {"dense_backward_ms", dense.backward_ms}});
  }

  // "dilated(window=8,dilation=2)" -> "dilated-window8-dilation2"
  static std::string file_stem(const std::string& name) {
    std::string stem;
    for (char ch : name) {
      if (std::isalnum(static_cast<unsigned char>(ch)))
        stem += ch;
      else if (ch == '(' || ch == ',')
        stem += '-';
    }
    return stem;
  }

  // Written to a temporary file and renamed, so a reader never sees half a file.
  static void write_json(const fs::path& path, const nlohmann::json& value) {
    fs::path temporary = path;
    temporary += fmt::format(".tmp-{}", getpid());
    {
      std::ofstream out(temporary);
      out << value.dump() << "\n";
      STRATA_CHECK(out.good(), "bench attention: cannot write {}", temporary.string());
    }
    fs::rename(temporary, path);
  }

  AttentionBenchOptions o_;
  Device device_;
  bool gpu_;
  DType dtype_;
  Generator generator_{1, 0};
  double gemm_tflops_ = 0;
  nlohmann::json index_ = {
      {"dense", nlohmann::json::array()}, {"sparse", nlohmann::json::array()}, {"dma", nlohmann::json::array()}};
};

}  // namespace

void add_bench_attention_command(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "attention",
      "Fused attention: dense forward/backward TFLOP/s (causal and not), block-sparse time against density, "
      "dynamic-mask time against window size. On the CPU: a tiny smoke size (float32)");
  auto options = std::make_shared<AttentionBenchOptions>();
  cmd->add_option("--device", options->device, "cpu, cuda, cuda:N or auto");
  cmd->add_option("--lengths", options->lengths, "Dense sequence lengths (GPU default 1024 ... 32768)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--sparse-lengths", options->sparse_lengths, "Block-sparse sequence lengths (GPU default 8192 16384)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--head-dims", options->head_dims, "Head dims (GPU default 64 128)")->check(CLI::PositiveNumber);
  cmd->add_option("--only", options->only, "Parts to run: dense, sparse, dma")
      ->check(CLI::IsMember({"dense", "sparse", "dma"}));
  cmd->add_option("--iterations", options->iterations, "Timed iterations per measurement (GPU default 10)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--tokens", options->tokens, "Tokens per run: batch = max(1, tokens / L) (GPU default 16384)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--model-dim", options->model_dim, "heads * head_dim (GPU default 2048)")->check(CLI::PositiveNumber);
  cmd->add_option("--block-size", options->block_size, "Block size of the sparse layouts: 64 or 128 (GPU default 128)")
      ->check(CLI::IsMember({64, 128}));
  cmd->add_option("--export-layouts", options->export_layouts,
                  "Write each sparse layout benched as JSON, and strata.json with every time, into this folder "
                  "(input of scripts/bench/attention_torch.py)");
  cmd->callback([options] { AttentionBench(*options).run(); });
}

}  // namespace strata::cli
