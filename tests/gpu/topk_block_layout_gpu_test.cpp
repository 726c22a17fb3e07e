// Layouts built from the inputs on CUDA: topk_block_layout's CUDA kernels against the
// CPU builder (all four index arrays, float32, bfloat16 and float16 inputs, GQA
// shared and per head, causal and not, keep_first, blocks of 64 and 128, lengths
// that end inside a block, Lq != Lk), then block_sparse_attention with a per-sequence
// top-k layout and with the 2-D neighborhood layout and mask against the float64 CPU
// reference, and AttentionBlock's topk pattern with the SSA alignment loss.
//
// The selection compares scores, so it is exact only away from ties: the CPU builder
// pools and scores in float64, CUDA in float32, and a pair of blocks whose scores
// differ by less than float32 rounding (~1e-7 relative) could swap. With uniform
// random inputs and at most a few dozen blocks per row such near-ties are far rarer
// than one per test, so the arrays must be equal. For bfloat16 and float16 the CPU
// reference reads the same rounded values (the inputs are rounded first).
#include "strata/kernels/block_layout.h"
#include "strata/nn/attention.h"
#include "strata/ops/attention.h"
#include "support/check.h"

using namespace strata;
using kernels::BlockLayout;
using kernels::TopKBlockOptions;

namespace {

void check_same_layout(const BlockLayout& cuda, const BlockLayout& cpu) {
  CHECK(cuda.device().is_cuda());
  CHECK(cuda.batches() == cpu.batches());
  CHECK(cuda.heads() == cpu.heads());
  CHECK(cuda.row_offsets().to(Device::cpu()).to_vector<int32_t>() == cpu.row_offsets().to_vector<int32_t>());
  CHECK(cuda.column_indices().to(Device::cpu()).to_vector<int32_t>() == cpu.column_indices().to_vector<int32_t>());
  CHECK(cuda.column_offsets().to(Device::cpu()).to_vector<int32_t>() == cpu.column_offsets().to_vector<int32_t>());
  CHECK(cuda.row_indices().to(Device::cpu()).to_vector<int32_t>() == cpu.row_indices().to_vector<int32_t>());
}

struct TopKCase {
  int64_t batch, heads, kv_heads, length_q, length_k, head_dim;
  TopKBlockOptions options;
};

void check_topk_case(const TopKCase& c, uint64_t seed) {
  for (DType dtype : {DType::Float32, DType::BFloat16, DType::Float16}) {
    CAPTURE(dtype_name(dtype));
    CAPTURE(c.length_q);
    CAPTURE(c.options.block_size);
    const Tensor q = testing::random({c.batch, c.heads, c.length_q, c.head_dim}, seed, DType::Float32).to(dtype);
    const Tensor k = testing::random({c.batch, c.kv_heads, c.length_k, c.head_dim}, seed + 1, DType::Float32).to(dtype);
    const BlockLayout cuda = kernels::topk_block_layout(q.to(Device::cuda()), k.to(Device::cuda()), c.options);
    const BlockLayout cpu = kernels::topk_block_layout(q.to(DType::Float64), k.to(DType::Float64), c.options);
    check_same_layout(cuda, cpu);
  }
}

TopKBlockOptions topk(int64_t top_k, bool causal = true, bool keep_first = false, bool share_by_group = true,
                      int64_t block_size = 64) {
  TopKBlockOptions o;
  o.top_k = top_k;
  o.causal = causal;
  o.keep_first = keep_first;
  o.share_by_group = share_by_group;
  o.block_size = block_size;
  return o;
}

}  // namespace

TEST_CASE("topk_block_layout on CUDA equals the CPU builder") {
  testing::require_cuda();
  check_topk_case({2, 8, 4, 1000, 1000, 64, topk(4)}, 1);                          // 16 blocks, the last of 40
  check_topk_case({1, 4, 1, 2048, 2048, 128, topk(5, true, true)}, 3);             // keep_first, MQA
  check_topk_case({2, 4, 2, 777, 777, 64, topk(3, true, false, false)}, 5);        // each head selects
  check_topk_case({3, 2, 2, 500, 500, 40, topk(2, false)}, 7);                     // not causal, head_dim 40
  check_topk_case({1, 4, 2, 1300, 1300, 64, topk(3, true, true, true, 128)}, 9);   // blocks of 128
  check_topk_case({2, 4, 2, 130, 1200, 64, topk(4)}, 11);                          // Lq < Lk (end-aligned)
  check_topk_case({1, 2, 1, 64 * 600, 64 * 600, 64, topk(8)}, 13);                 // 600 blocks a row
}

TEST_CASE("block_sparse_attention with a per-sequence top-k layout on CUDA matches the CPU") {
  testing::require_cuda();
  // One layout, chosen from fixed inputs and copied to each device, so both sides
  // attend the same blocks. Tolerances as block_sparse_gpu_test.cpp (float32 1e-4;
  // bfloat16 5e-2 relative to the largest reference value: 8-bit mantissas).
  const BlockLayout on_cpu = kernels::topk_block_layout(testing::random({2, 4, 400, 64}, 21),
                                                        testing::random({2, 2, 400, 64}, 22), topk(3, true, true));
  const BlockLayout on_cuda = on_cpu.to(Device::cuda());
  CHECK(on_cuda.batches() == 2);
  std::vector<Tensor> inputs{testing::random({2, 4, 400, 64}, 23, DType::Float64, -1.5, 1.5).set_requires_grad(true),
                             testing::random({2, 2, 400, 64}, 24, DType::Float64, -1.5, 1.5).set_requires_grad(true),
                             testing::random({2, 2, 400, 64}, 25).set_requires_grad(true),
                             testing::random({4}, 26, DType::Float64, -1.0, 2.0).set_requires_grad(true)};
  auto f = [on_cpu, on_cuda](const std::vector<Tensor>& in) {
    ops::AttentionOptions o;
    o.causal = true;
    o.sinks = in[3];
    return ops::block_sparse_attention(in[0], in[1], in[2], in[0].device().is_cuda() ? on_cuda : on_cpu, o).out;
  };
  testing::check_cuda_matches_cpu(f, inputs, DType::Float32, 1e-4);
  testing::check_cuda_matches_cpu(f, inputs, DType::BFloat16, 5e-2);
}

TEST_CASE("2-D neighborhood attention (layout + mask) on CUDA matches the CPU") {
  testing::require_cuda();
  // A 24 x 20 grid (480 tokens: 7 blocks of 64 and one of 32), 7 x 5 windows, dilation
  // 2 x 1. Same tolerances as above; rows whose keys are partly masked inside a tile
  // take the kernels' -inf paths.
  const int64_t height = 24, width = 20, tokens = height * width;
  const BlockLayout on_cpu =
      kernels::neighborhood_2d_layout({tokens, tokens, 64}, height, width, 7, 5, 2, 1);
  const BlockLayout on_cuda = on_cpu.to(Device::cuda());
  const Tensor mask = kernels::neighborhood_2d_mask(height, width, 7, 5, 2, 1);
  std::vector<Tensor> inputs{testing::random({2, 4, tokens, 64}, 31, DType::Float64, -1.5, 1.5).set_requires_grad(true),
                             testing::random({2, 2, tokens, 64}, 32, DType::Float64, -1.5, 1.5).set_requires_grad(true),
                             testing::random({2, 2, tokens, 64}, 33).set_requires_grad(true), mask};
  auto f = [on_cpu, on_cuda](const std::vector<Tensor>& in) {
    ops::AttentionOptions o;
    o.bias = in[3];
    return ops::block_sparse_attention(in[0], in[1], in[2], in[0].device().is_cuda() ? on_cuda : on_cpu, o).out;
  };
  testing::check_cuda_matches_cpu(f, inputs, DType::Float32, 1e-4);
  testing::check_cuda_matches_cpu(f, inputs, DType::BFloat16, 5e-2);
}

TEST_CASE("AttentionBlock topk with the SSA alignment loss on CUDA matches the CPU") {
  testing::require_cuda();
  // Two blocks with the same weights (same seed), one per device; each chooses its
  // top-k blocks from its own q and k (near-ties as in the first test: the rows must
  // agree). The result is the sparse output plus the alignment loss, so the gradient
  // of x runs through both the sparse and the dense branch. Tolerances: float32 1e-4
  // as above; bfloat16 inputs are not used here (the block computes in its
  // parameters' dtype, float32 on CUDA).
  nn::AttentionBlockOptions o;
  o.d_model = 64;
  o.n_heads = 4;
  o.n_kv_heads = 2;
  o.pattern = nn::AttentionPattern::TopK;
  o.top_k = 2;
  auto make = [&](Device device, DType dtype) {
    Generator generator{5, 0};
    auto block = std::make_shared<nn::AttentionBlock>(o, generator);
    block->to(dtype);
    block->to(device);
    block->set_ssa_mode(nn::AttentionBlock::SsaMode::AlignSparse);
    return block;
  };
  auto on_cpu = make(Device::cpu(), DType::Float64), on_cuda = make(Device::cuda(), DType::Float32);
  auto f = [on_cpu, on_cuda](const std::vector<Tensor>& in) {
    auto& block = in[0].device().is_cuda() ? on_cuda : on_cpu;
    Tensor out = block->forward(in[0]);
    return ops::add(out, block->alignment_loss());
  };
  testing::check_cuda_matches_cpu(f, {testing::random({2, 300, 64}, 41).set_requires_grad(true)}, DType::Float32,
                                  1e-4);
}
