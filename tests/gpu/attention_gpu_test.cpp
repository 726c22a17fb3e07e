// CUDA attention against the float64 CPU reference on fresh random inputs, in
// float32 (the CUDA-core path), bfloat16 and float16 (the tensor-core path for head
// dims 64 and 128, the CUDA-core path for 40 and 256): the output and the gradient
// of q, k, v, bias, sinks and both temperatures; lse and its gradient; the
// diagnostic probabilities; lengths that end inside a tile (1, 7, 65, 130, 300),
// Lq != Lk both ways, GQA, MQA, batch 1, one head, and unaligned bfloat16 inputs
// (which take the CUDA-core path) against aligned ones (the tensor-core path).
//
// Tolerances, relative to the largest reference value of each tensor:
//  - float32 1e-4: float32 products and sums over at most 1024 keys and 256 dims
//    (relative error near 1e-6), expf, and dQ summed by float32 atomics in a varying
//    order; a wrong index or a missed tile is O(1e-2) or more.
//  - float16 1e-2: q, k, v are rounded to 11 bits (2^-11 = 5e-4 relative), so a
//    score moves by about 1e-3; the tensor-core path also rounds P before P V and
//    dS before dK and dQ (as FlashAttention-2 does). Expected errors are near 3e-3.
//  - bfloat16 5e-2: the same with 8 bits (2^-8 = 4e-3 relative, 8x float16); the
//    float16 run is the one that pins the tensor-core algorithm.
#include "strata/ops/attention.h"
#include "support/check.h"

using namespace strata;

namespace {

struct GpuCase {
  int64_t batch = 2, heads = 4, kv_heads = 2, length_q = 130, length_k = 130, head_dim = 64;
  bool causal = false, bias = false, sinks = false, temperatures = false;
};

// q, k, v, then bias (batch, 1, Lq, Lk), sinks (heads), query and key temperatures
// as the case asks; float64 CPU leaves.
std::vector<Tensor> make_inputs(const GpuCase& c, uint64_t seed) {
  std::vector<Tensor> inputs;
  auto add = [&](const Shape& shape, double low, double high) {
    inputs.push_back(testing::leaf(shape, seed++, low, high));
  };
  add({c.batch, c.heads, c.length_q, c.head_dim}, -1.5, 1.5);
  add({c.batch, c.kv_heads, c.length_k, c.head_dim}, -1.5, 1.5);
  add({c.batch, c.kv_heads, c.length_k, c.head_dim}, -1.0, 1.0);
  if (c.bias) add({c.batch, 1, c.length_q, c.length_k}, -1.0, 1.0);
  if (c.sinks) add({c.heads}, -1.0, 2.0);
  if (c.temperatures) {
    add({c.batch, c.heads, c.length_q}, 0.5, 1.5);
    add({c.batch, c.kv_heads, c.length_k}, 0.5, 1.5);
  }
  return inputs;
}

ops::AttentionOptions options_for(const GpuCase& c, const std::vector<Tensor>& in) {
  ops::AttentionOptions o;
  o.causal = c.causal;
  size_t next = 3;
  if (c.bias) o.bias = in[next++];
  if (c.sinks) o.sinks = in[next++];
  if (c.temperatures) {
    o.query_temperature = in[next++];
    o.key_temperature = in[next++];
  }
  return o;
}

// float16 cannot be multiplied on CUDA: compare in the lse dtype (float32 on CUDA,
// float64 on the CPU), which every dtype converts to exactly.
Tensor widened(const Tensor& out, DType lse_dtype) { return ops::cast(out, lse_dtype); }

void check_case(const GpuCase& c, uint64_t seed, bool with_float32 = true) {
  MESSAGE("attention batch " << c.batch << ", heads " << c.heads << "/" << c.kv_heads << ", Lq " << c.length_q
                             << ", Lk " << c.length_k << ", head_dim " << c.head_dim << (c.causal ? ", causal" : "")
                             << (c.bias ? ", bias" : "") << (c.sinks ? ", sinks" : "")
                             << (c.temperatures ? ", temperatures" : ""));
  std::vector<Tensor> inputs = make_inputs(c, seed);
  auto f = [c](const std::vector<Tensor>& in) {
    ops::AttentionOptions o = options_for(c, in);
    o.return_lse = true;
    ops::AttentionResult r = ops::attention(in[0], in[1], in[2], o);
    return widened(r.out, r.lse.dtype());
  };
  if (with_float32) testing::check_cuda_matches_cpu(f, inputs, DType::Float32, 1e-4);
  // The absolute floor covers gradients that cancel exactly (one visible key: the
  // softmax is constant and dq = dk = 0), where the kernel leaves rounding of order
  // eps(dtype) * |dO . v| instead of an exact zero (measured 6e-8 in float16).
  testing::check_cuda_matches_cpu(f, inputs, DType::Float16, 1e-2, 1e-4);
  testing::check_cuda_matches_cpu(f, inputs, DType::BFloat16, 5e-2, 1e-3);
}

}  // namespace

TEST_CASE("attention on CUDA matches the CPU at head_dim 64 (tensor cores for 16-bit inputs)") {
  testing::require_cuda();
  check_case({}, 1);
  check_case({.causal = true}, 2);
  check_case({.batch = 1, .heads = 1, .kv_heads = 1, .length_q = 1, .length_k = 1}, 3);
  check_case({.batch = 1, .heads = 2, .kv_heads = 1, .length_q = 7, .length_k = 300, .causal = true}, 4);
  check_case({.batch = 2, .heads = 3, .kv_heads = 3, .length_q = 300, .length_k = 65, .causal = true, .sinks = true},
             5);
  check_case({.batch = 1,
              .heads = 4,
              .kv_heads = 1,
              .length_q = 200,
              .length_k = 200,
              .causal = true,
              .bias = true,
              .sinks = true,
              .temperatures = true},
             6);
}

TEST_CASE("attention on CUDA matches the CPU at head_dim 128") {
  testing::require_cuda();
  check_case({.head_dim = 128}, 11);
  check_case(
      {.batch = 1, .heads = 2, .kv_heads = 2, .length_q = 1024, .length_k = 1024, .head_dim = 128, .causal = true}, 12);
  check_case({.batch = 2,
              .heads = 2,
              .kv_heads = 1,
              .length_q = 65,
              .length_k = 130,
              .head_dim = 128,
              .bias = true,
              .sinks = true},
             13);
  check_case({.batch = 1,
              .heads = 2,
              .kv_heads = 1,
              .length_q = 130,
              .length_k = 130,
              .head_dim = 128,
              .causal = true,
              .temperatures = true},
             14);
}

TEST_CASE("attention on CUDA matches the CPU at other head dims (CUDA cores)") {
  testing::require_cuda();
  check_case({.head_dim = 40, .causal = true, .bias = true}, 21);
  check_case({.batch = 1,
              .heads = 2,
              .kv_heads = 1,
              .length_q = 33,
              .length_k = 70,
              .head_dim = 40,
              .sinks = true,
              .temperatures = true},
             22);
  check_case({.batch = 1, .heads = 1, .kv_heads = 1, .length_q = 65, .length_k = 65, .head_dim = 256, .causal = true},
             23);
  check_case({.batch = 2, .heads = 2, .kv_heads = 2, .length_q = 9, .length_k = 9, .head_dim = 3}, 24);
}

TEST_CASE("attention on CUDA: lse and its gradient match the CPU") {
  testing::require_cuda();
  for (int64_t head_dim : {64, 40}) {
    GpuCase c{.batch = 2,
              .heads = 2,
              .kv_heads = 1,
              .length_q = 100,
              .length_k = 130,
              .head_dim = head_dim,
              .causal = true,
              .sinks = true};
    std::vector<Tensor> inputs = make_inputs(c, 30 + head_dim);
    auto f = [c](const std::vector<Tensor>& in) {
      ops::AttentionOptions o = options_for(c, in);
      o.return_lse = true;
      return ops::attention(in[0], in[1], in[2], o).lse;
    };
    // lse is float32 for every CUDA dtype; its errors are those of the scores (see the top).
    testing::check_cuda_matches_cpu(f, inputs, DType::Float32, 1e-5);
    testing::check_cuda_matches_cpu(f, inputs, DType::Float16, 2e-3);
    testing::check_cuda_matches_cpu(f, inputs, DType::BFloat16, 2e-2);
  }
}

TEST_CASE("attention on CUDA: the diagnostic probabilities match the CPU") {
  testing::require_cuda();
  autograd::NoGradGuard no_grad;
  GpuCase c{.batch = 2,
            .heads = 2,
            .kv_heads = 1,
            .length_q = 70,
            .length_k = 90,
            .head_dim = 64,
            .causal = true,
            .bias = true,
            .sinks = true};
  std::vector<Tensor> inputs = make_inputs(c, 40);
  ops::AttentionOptions o = options_for(c, inputs);
  o.return_probabilities = true;
  Tensor reference = ops::attention(inputs[0], inputs[1], inputs[2], o).probabilities;
  for (DType dtype : {DType::Float32, DType::BFloat16}) {
    std::vector<Tensor> cuda;
    for (const Tensor& t : inputs) cuda.push_back(t.to(dtype).to(Device::cuda()));
    ops::AttentionOptions cuda_options = options_for(c, cuda);
    cuda_options.return_probabilities = true;
    Tensor p = ops::attention(cuda[0], cuda[1], cuda[2], cuda_options).probabilities;
    CHECK(p.dtype() == DType::Float32);
    // Probabilities are at most 1; float32 errors stay near 1e-6, bfloat16 inputs move scores by about 1e-2.
    double error = testing::max_abs_difference(p.to(Device::cpu()), reference);
    MESSAGE(dtype_name(dtype) << " probabilities: max |cuda - cpu| = " << error);
    CHECK(error <= (dtype == DType::Float32 ? 1e-5 : 3e-2));
  }
}

TEST_CASE("attention on CUDA: unaligned bfloat16 inputs (CUDA cores) agree with aligned ones (tensor cores)") {
  testing::require_cuda();
  autograd::NoGradGuard no_grad;
  GpuCase c{.batch = 1, .heads = 2, .kv_heads = 2, .length_q = 130, .length_k = 130, .head_dim = 64, .causal = true};
  std::vector<Tensor> inputs = make_inputs(c, 50);
  std::vector<Tensor> aligned, unaligned;
  for (int n = 0; n < 3; ++n) {
    Tensor x = inputs[n].to(DType::BFloat16).to(Device::cuda());
    aligned.push_back(x);
    // The same values one element into a larger buffer: a contiguous view whose rows are 2-byte aligned.
    Tensor buffer = Tensor::zeros({x.numel() + 1}, DType::BFloat16, Device::cuda());
    Tensor shifted = buffer.as_strided(x.shape(), x.strides(), 1);
    shifted.copy_(x);
    unaligned.push_back(shifted);
  }
  REQUIRE(reinterpret_cast<uintptr_t>(unaligned[0].data_ptr()) % 16 != 0);
  ops::AttentionOptions o;
  o.causal = true;
  Tensor fast = ops::attention(aligned[0], aligned[1], aligned[2], o).out.to(DType::Float64).to(Device::cpu());
  Tensor generic = ops::attention(unaligned[0], unaligned[1], unaligned[2], o).out.to(DType::Float64).to(Device::cpu());
  // Same bfloat16 inputs; the paths differ in rounding P to bfloat16 (fast) and in the order of sums.
  double error = testing::max_abs_difference(fast, generic), bound = 2e-2 * testing::max_abs(generic);
  MESSAGE("tensor-core vs CUDA-core bfloat16: max |difference| = " << error << ", bound " << bound);
  CHECK(error <= bound);
}

TEST_CASE("attention on CUDA rejects what it cannot run") {
  testing::require_cuda();
  Tensor q = Tensor::zeros({1, 1, 4, 300}, DType::Float32, Device::cuda());
  CHECK_THROWS_WITH_AS(ops::attention(q, q, q), doctest::Contains("attention: head_dim 300 of q"), Error);
  Tensor q64 = Tensor::zeros({1, 1, 4, 8}, DType::Float64, Device::cuda());
  CHECK_THROWS_WITH_AS(ops::attention(q64, q64, q64),
                       doctest::Contains("is not supported (supported: float32, bfloat16, float16 on cuda)"), Error);
  Tensor cpu = Tensor::zeros({1, 1, 4, 8}, DType::Float32);
  Tensor gpu = Tensor::zeros({1, 1, 4, 8}, DType::Float32, Device::cuda());
  CHECK_THROWS_WITH_AS(ops::attention(gpu, cpu, cpu), doctest::Contains("tensors are on different devices"), Error);
}
