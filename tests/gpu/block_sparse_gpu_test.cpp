// CUDA block-sparse attention against the float64 CPU reference on fresh random
// inputs, for every layout builder, in float32 (CUDA cores), float16 and bfloat16
// (tensor cores at head dims 64 and 128, CUDA cores at 40): output and the
// gradients of q, k, v, bias and sinks, with blocks of 64 and 128, per-head
// layouts with GQA, lengths that end inside a block, and Lq != Lk. Then a full
// layout against the dense CUDA kernel and a causal layout against causal dense.
//
// Tolerances as in attention_gpu_test.cpp (float32 1e-4; float16 1e-2; bfloat16
// 5e-2, relative to the largest reference value), for the same reasons: a
// block-sparse row is a dense row over fewer keys. The dense-vs-sparse checks on
// CUDA compare two runs on the same rounded inputs that sum the same tiles in the
// same order, so they agree to float32 rounding (1e-6).
#include "strata/kernels/block_layout.h"
#include "strata/ops/attention.h"
#include "support/check.h"

using namespace strata;
using kernels::BlockLayout;
using kernels::LayoutGeometry;

namespace {

struct SparseCase {
  const char* name;
  BlockLayout layout;
  int64_t heads = 4, kv_heads = 2, head_dim = 64;
  bool causal = true;
};

std::vector<Tensor> make_inputs(const BlockLayout& layout, const SparseCase& c, uint64_t seed) {
  const int64_t batch = 2, length_q = layout.query_length(), length_k = layout.key_length();
  std::vector<Tensor> inputs;
  auto add = [&](const Shape& shape, double low, double high) {
    inputs.push_back(testing::leaf(shape, seed++, low, high));
  };
  add({batch, c.heads, length_q, c.head_dim}, -1.5, 1.5);
  add({batch, c.kv_heads, length_k, c.head_dim}, -1.5, 1.5);
  add({batch, c.kv_heads, length_k, c.head_dim}, -1.0, 1.0);
  add({batch, 1, 1, length_k}, -1.0, 1.0);  // a per-key bias, as DMA and ALiBi-like biases are
  add({c.heads}, -1.0, 2.0);                // sinks keep every row's lse finite
  return inputs;
}

void check_case(const SparseCase& c, uint64_t seed) {
  MESSAGE(c.name << ": " << c.layout.str() << ", heads " << c.heads << "/" << c.kv_heads << ", head_dim " << c.head_dim
                 << (c.causal ? ", causal" : ""));
  std::vector<Tensor> inputs = make_inputs(c.layout, c, seed);
  // The layout must be on the device of q: one copy per device, chosen by q.
  const BlockLayout on_cpu = c.layout, on_cuda = c.layout.to(Device::cuda());
  const bool causal = c.causal;
  auto f = [on_cpu, on_cuda, causal](const std::vector<Tensor>& in) {
    ops::AttentionOptions o;
    o.causal = causal;
    o.bias = in[3];
    o.sinks = in[4];
    o.return_lse = true;
    ops::AttentionResult r =
        ops::block_sparse_attention(in[0], in[1], in[2], in[0].device().is_cuda() ? on_cuda : on_cpu, o);
    return ops::cast(r.out, r.lse.dtype());
  };
  testing::check_cuda_matches_cpu(f, inputs, DType::Float32, 1e-4);
  testing::check_cuda_matches_cpu(f, inputs, DType::Float16, 1e-2);
  testing::check_cuda_matches_cpu(f, inputs, DType::BFloat16, 5e-2);
}

LayoutGeometry square(int64_t length, int64_t block_size = 64) {
  return {.query_length = length, .key_length = length, .block_size = block_size};
}

}  // namespace

TEST_CASE("block_sparse_attention on CUDA matches the CPU for every layout builder") {
  testing::require_cuda();
  const LayoutGeometry g = square(300);  // four blocks of 64 and one of 44
  check_case({"sliding window", kernels::sliding_window_layout(g, 2)}, 1);
  check_case({"sliding window, both sides", kernels::sliding_window_layout(g, 2, false), 4, 2, 64, false}, 2);
  check_case(
      {"global + window", kernels::union_layouts(kernels::global_layout(g, 1), kernels::sliding_window_layout(g, 1))},
      3);
  check_case({"dilated", kernels::dilated_layout(g, 2, 2)}, 4);
  check_case({"power", kernels::power_layout(g, 1, 1)}, 5);
  check_case({"s2 per head, one dense", kernels::s2_layout(g, 4, 1, 2, 1)}, 6);
  check_case({"neighborhood", kernels::neighborhood_layout(g, 3, 1), 2, 2, 64, false}, 7);
  check_case({"neighborhood, dilated", kernels::neighborhood_layout(g, 2, 2), 2, 1, 64, false}, 8);
}

TEST_CASE("block_sparse_attention on CUDA matches the CPU for blocks of 128, head dims 128 and 40, Lq != Lk") {
  testing::require_cuda();
  check_case({"power, blocks of 128", kernels::power_layout(square(700, 128), 1, 1), 2, 1, 128}, 11);
  check_case({"s2, blocks of 128", kernels::s2_layout(square(520, 128), 2, 1, 2), 2, 2, 64}, 12);
  check_case({"sliding window, head_dim 40", kernels::sliding_window_layout(square(200), 2), 2, 1, 40}, 13);
  LayoutGeometry decode{.query_length = 100, .key_length = 400, .block_size = 64};
  check_case({"power, Lq < Lk", kernels::power_layout(decode, 1, 1), 4, 1, 64}, 14);
  LayoutGeometry tail{.query_length = 260, .key_length = 70, .block_size = 64};
  check_case({"causal, Lq > Lk", kernels::causal_layout(tail), 2, 1, 128}, 15);
}

TEST_CASE("block_sparse_attention on CUDA equals the dense CUDA kernel for full and causal layouts") {
  testing::require_cuda();
  autograd::NoGradGuard no_grad;
  for (DType dtype : {DType::Float32, DType::BFloat16}) {
    for (int64_t head_dim : {64, 40}) {
      for (bool causal : {false, true}) {
        CAPTURE(dtype_name(dtype));
        CAPTURE(head_dim);
        CAPTURE(causal);
        const LayoutGeometry g = square(333);
        const BlockLayout layout = (causal ? kernels::causal_layout(g) : kernels::dense_layout(g)).to(Device::cuda());
        SparseCase c{"", layout, 4, 2, head_dim, causal};
        std::vector<Tensor> inputs = make_inputs(layout, c, 40);
        std::vector<Tensor> x;
        for (const Tensor& t : inputs) x.push_back(t.to(dtype).to(Device::cuda()));
        ops::AttentionOptions o;
        o.causal = causal;
        o.bias = x[3];
        o.sinks = x[4];
        o.return_lse = true;
        ops::AttentionResult dense = ops::attention(x[0], x[1], x[2], o);
        ops::AttentionResult sparse = ops::block_sparse_attention(x[0], x[1], x[2], layout, o);
        auto host = [](const Tensor& t) { return t.to(DType::Float64).to(Device::cpu()); };
        CHECK(testing::max_abs_difference(host(sparse.out), host(dense.out)) <= 1e-6);
        CHECK(testing::max_abs_difference(host(sparse.lse), host(dense.lse)) <= 1e-6);
      }
    }
  }
}

TEST_CASE("block_sparse_attention on CUDA wants the layout on the GPU") {
  testing::require_cuda();
  Tensor q = Tensor::zeros({1, 1, 64, 64}, DType::BFloat16, Device::cuda());
  CHECK_THROWS_WITH_AS(ops::block_sparse_attention(q, q, q, kernels::causal_layout(square(64))),
                       doctest::Contains("must be on cuda:0 like q (move it once with BlockLayout::to)"), Error);
}
