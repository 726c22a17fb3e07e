// CUDA dynamic_mask_attention against the float64 CPU reference on fresh random
// inputs, in float32 (CUDA-core path), float16 and bfloat16 (the tensor-core path at
// head dims 64 and 128, the CUDA-core path at 40): the output and the gradients of
// q, k, v and the key bias; windows from 1 key to more than the sequence, GQA and
// MQA, Lq < Lk (a cache), lengths that end inside a tile, batch 1, a 1024-token
// sequence whose small window lets whole tiles be skipped, and biases full of ties.
// The measured errors are printed for each case and result (MESSAGE).
//
// The key bias takes values k / 64 for small integers k (|k| <= 256), exact in
// bfloat16 and float16, so every dtype selects the same keys as the
// float64 reference; a different selection would show as an O(1) error.
//
// Tolerances, relative to the largest reference value of each result, as in
// attention_gpu_test.cpp:
//  - float32 1e-4: float32 products and sums, expf, dQ and the bias gradient summed
//    in float32 in a varying order (atomics);
//  - float16 1e-2: inputs rounded to 11 bits, P and dS rounded before the tensor-core
//    products (FlashAttention-2 does the same); expected near 3e-3;
//  - bfloat16 5e-2: the same with 8 bits.
// The absolute floors cover gradients that cancel to zero (a query that keeps one
// key has a constant softmax: dq = 0 and d bias = 0 in exact arithmetic). In
// float32 the floor is 3e-5: the cancelling terms are O(1) and are summed by
// atomics whose order varies; under compute-sanitizer, which serialises the blocks
// differently, dK and d bias were measured 3e-6 and 1.1e-5 away from zero (1e-6
// failed there, plain runs stayed below it).
#include <algorithm>
#include <numeric>
#include <random>

#include "strata/ops/attention.h"
#include "support/check.h"

using namespace strata;

namespace {

struct GpuCase {
  int64_t batch = 2, heads = 4, kv_heads = 2, length_q = 300, length_k = 300, head_dim = 64, window = 16;
  bool ties = false;    // biases from {-1, 0, 1} / 64 instead of distinct values
  bool recent = false;  // biases rising with the position (floor(j / 8) / 64): the kept keys are the latest
};

// (batch, kv_heads, Lk): each row a shuffled run of distinct k / 64 (Lk <= 512 keeps
// |k| <= 256), or ties, or rising.
Tensor exact_key_bias(const GpuCase& c, uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::vector<double> values;
  for (int64_t row = 0; row < c.batch * c.kv_heads; ++row) {
    std::vector<int64_t> ranks(c.length_k);
    std::iota(ranks.begin(), ranks.end(), -c.length_k / 2);
    std::shuffle(ranks.begin(), ranks.end(), generator);
    for (int64_t j = 0; j < c.length_k; ++j) {
      const int64_t r = c.recent ? j / 8 : c.ties ? ranks[j] % 2 : ranks[j];
      values.push_back(static_cast<double>(r) / 64.0);
    }
  }
  return Tensor::from_vector(values, {c.batch, c.kv_heads, c.length_k});
}

std::vector<Tensor> make_inputs(const GpuCase& c, uint64_t seed) {
  return {testing::random({c.batch, c.heads, c.length_q, c.head_dim}, seed, DType::Float64, -1.5, 1.5)
              .set_requires_grad(true),
          testing::random({c.batch, c.kv_heads, c.length_k, c.head_dim}, seed + 1, DType::Float64, -1.5, 1.5)
              .set_requires_grad(true),
          testing::random({c.batch, c.kv_heads, c.length_k, c.head_dim}, seed + 2).set_requires_grad(true),
          exact_key_bias(c, seed + 3).set_requires_grad(true)};
}

void check_case(const GpuCase& c, uint64_t seed) {
  MESSAGE("dynamic_mask_attention batch " << c.batch << ", heads " << c.heads << "/" << c.kv_heads << ", Lq "
                                          << c.length_q << ", Lk " << c.length_k << ", head_dim " << c.head_dim
                                          << ", window " << c.window << (c.ties ? ", tied biases" : "")
                                          << (c.recent ? ", biases rising" : ""));
  std::vector<Tensor> inputs = make_inputs(c, seed);
  // float16 cannot be multiplied on CUDA: compare in float32 (float64 on the CPU).
  auto f = [c](const std::vector<Tensor>& in) {
    Tensor out = ops::dynamic_mask_attention(in[0], in[1], in[2], in[3], c.window);
    return ops::cast(out, out.dtype() == DType::Float64 ? DType::Float64 : DType::Float32);
  };
  testing::check_cuda_matches_cpu(f, inputs, DType::Float32, 1e-4, 3e-5);
  testing::check_cuda_matches_cpu(f, inputs, DType::Float16, 1e-2, 1e-4);
  testing::check_cuda_matches_cpu(f, inputs, DType::BFloat16, 5e-2, 1e-3);
}

}  // namespace

TEST_CASE("dynamic_mask_attention on CUDA matches the CPU at head_dim 64 (tensor cores for 16-bit inputs)") {
  testing::require_cuda();
  for (int64_t window : {1, 16, 100, 1000}) check_case({.window = window}, 1 + static_cast<uint64_t>(window));
  check_case({.batch = 1, .heads = 2, .kv_heads = 1, .length_q = 65, .length_k = 200, .window = 30}, 2);
  check_case({.batch = 1, .heads = 1, .kv_heads = 1, .length_q = 1, .length_k = 1, .window = 1}, 3);
  check_case({.batch = 2, .heads = 2, .kv_heads = 2, .length_q = 130, .length_k = 130, .window = 7, .ties = true}, 4);
  // Window 32 of 1024 keys, kept keys the latest: both passes skip all but the
  // diagonal tiles; and the same window over scattered keys.
  check_case({.batch = 1, .heads = 2, .kv_heads = 1, .length_q = 1024, .length_k = 1024, .window = 32, .recent = true},
             5);
  check_case({.batch = 1, .heads = 2, .kv_heads = 1, .length_q = 512, .length_k = 512, .window = 32}, 6);
}

TEST_CASE("dynamic_mask_attention on CUDA matches the CPU at head_dim 128") {
  testing::require_cuda();
  check_case({.batch = 2, .heads = 4, .kv_heads = 1, .length_q = 130, .length_k = 130, .head_dim = 128, .window = 40},
             11);
  check_case({.batch = 1, .heads = 2, .kv_heads = 2, .length_q = 7, .length_k = 257, .head_dim = 128, .window = 64},
             12);
}

TEST_CASE("dynamic_mask_attention on CUDA matches the CPU at other head dims (CUDA cores)") {
  testing::require_cuda();
  check_case({.batch = 2, .heads = 3, .kv_heads = 1, .length_q = 77, .length_k = 77, .head_dim = 40, .window = 9}, 21);
  check_case({.batch = 1, .heads = 2, .kv_heads = 2, .length_q = 33, .length_k = 95, .head_dim = 40, .window = 50,
              .ties = true},
             22);
}

TEST_CASE("dynamic_mask_attention under bfloat16 autocast runs the bfloat16 kernels and returns float32") {
  testing::require_cuda();
  const GpuCase c{.batch = 2, .heads = 2, .kv_heads = 1, .length_q = 200, .length_k = 200, .window = 24};
  std::vector<Tensor> cuda_inputs;
  for (const Tensor& x : make_inputs(c, 31)) cuda_inputs.push_back(x.to(DType::Float32).to(Device::cuda(0)));
  const Tensor &q = cuda_inputs[0], &k = cuda_inputs[1], &v = cuda_inputs[2], &bias = cuda_inputs[3];
  Tensor autocast_out;
  {
    ops::AutocastGuard autocast(DType::BFloat16);
    autocast_out = ops::dynamic_mask_attention(q, k, v, bias, c.window);
  }
  CHECK(autocast_out.dtype() == DType::Float32);
  // The same computation as casting q, k and v by hand: equal to the last bit.
  Tensor by_hand = ops::dynamic_mask_attention(ops::cast(q, DType::BFloat16), ops::cast(k, DType::BFloat16),
                                               ops::cast(v, DType::BFloat16), bias, c.window);
  CHECK(testing::max_abs_difference(autocast_out.to(Device::cpu()),
                                    ops::cast(by_hand, DType::Float32).to(Device::cpu())) == 0.0);
}
