// The grouped expert GEMM's tensor-core path (bfloat16, dims multiples of 8) and its
// CUDA-core path (float32) against the CPU in float64, on fresh random inputs: group
// sizes that are not multiples of the 128-row tile, empty experts, one-token groups,
// matrix dims that are not multiples of 128 and depths that leave a partial slice of
// 32. Every case runs the forward (x W^T) and both gradients (dY W and dY^T X), so
// all three operand layouts of the kernel are exercised; the autocast path too.
#include <vector>

#include "strata/autograd/autograd.h"
#include "strata/ops/moe.h"
#include "strata/ops/ops.h"
#include "support/check.h"

using namespace strata;

namespace {

struct GroupedCase {
  int64_t d_in, d_out;
  std::vector<int64_t> offsets;
};

void check_grouped_case(const GroupedCase& c, uint64_t seed) {
  const int64_t experts = static_cast<int64_t>(c.offsets.size()) - 1, rows = c.offsets.back();
  Tensor x = testing::random({rows, c.d_in}, seed).set_requires_grad(true);
  Tensor weight = testing::random({experts, c.d_out, c.d_in}, seed + 1, DType::Float64, -0.2, 0.2)
                      .set_requires_grad(true);
  Tensor offsets = Tensor::from_vector<int64_t>(c.offsets, {experts + 1});
  auto grouped = [](const std::vector<Tensor>& in) { return ops::grouped_linear(in[0], in[1], in[2]); };
  // float32 (CUDA cores): sums of at most ~1500 float32 products, relative error
  // ~1e-6 of the largest result.
  testing::check_cuda_matches_cpu(grouped, {x, weight, offsets}, DType::Float32, 1e-5, 1e-6);
  // bfloat16 (tensor cores): the inputs rounded to 8 significant bits (relative
  // 2^-9 each), float32 accumulation, the result rounded to bfloat16 once: ~2e-3 of
  // the largest result; an indexing or layout error shows as O(1).
  testing::check_cuda_matches_cpu(grouped, {x, weight, offsets}, DType::BFloat16, 1e-2, 1e-3);
}

}  // namespace

TEST_CASE("grouped_linear tensor-core path matches the CPU: ragged groups, empty experts, one-token groups") {
  testing::require_cuda();
  const std::vector<GroupedCase> cases = {
      // Empty first and last experts, a one-token group, groups of 129 and 300 rows.
      {136, 200, {0, 0, 1, 130, 430, 430}},
      // One group smaller than a tile, dims smaller than a tile.
      {8, 16, {0, 5}},
      // A deep reduction with a partial last slice (520 = 16 * 32 + 8), wide output.
      {520, 264, {0, 257, 263, 263, 700}},
      // Many experts, most of them empty or tiny; d_out 8 (one mma column tile).
      {64, 8, {0, 0, 0, 1, 2, 2, 40, 40, 41, 41, 41, 170}},
      // Exact multiples of the tile everywhere.
      {256, 128, {0, 128, 384, 512}},
  };
  uint64_t seed = 100;
  for (const GroupedCase& c : cases) {
    CAPTURE(c.d_in);
    CAPTURE(c.d_out);
    CAPTURE(c.offsets.back());
    check_grouped_case(c, seed);
    seed += 2;
  }
}

TEST_CASE("grouped_linear in bfloat16 with one expert equals the dense product at a training size") {
  testing::require_cuda();
  // A 2048-token group through 1024 -> 1536: many row and column tiles and 32 depth
  // slices; the dense cuBLAS product of the same bfloat16 operands is the reference.
  const int64_t rows = 2048, d_in = 1024, d_out = 1536;
  Tensor x = testing::random({rows, d_in}, 31, DType::Float32).to(DType::BFloat16).to(Device::cuda());
  Tensor weight =
      testing::random({1, d_out, d_in}, 32, DType::Float32, -0.1, 0.1).to(DType::BFloat16).to(Device::cuda());
  Tensor offsets = Tensor::from_vector<int64_t>({0, rows}, {2}).to(Device::cuda());
  Tensor grouped = ops::grouped_linear(x, weight, offsets).to(DType::Float32);
  Tensor dense = ops::matmul(x, ops::transpose(ops::reshape(weight, {d_out, d_in}), 0, 1)).to(DType::Float32);
  // Both accumulate the same bfloat16 products in float32 (in different orders) and
  // round once to bfloat16: they differ by about one bfloat16 step of the result.
  const double error = testing::max_abs_difference(grouped, dense), scale = testing::max_abs(dense);
  MESSAGE("max |grouped - dense| = " << error << " (max |dense| = " << scale << ")");
  CHECK(error <= 1e-2 * scale);
}

TEST_CASE("grouped_linear under bfloat16 autocast returns float32 results and float32 gradients") {
  testing::require_cuda();
  const std::vector<int64_t> group_offsets = {0, 100, 100, 301};
  Tensor x = testing::random({301, 136}, 41);
  Tensor weight = testing::random({3, 72, 136}, 42, DType::Float64, -0.2, 0.2);
  Tensor upstream = testing::random({301, 72}, 43);
  Tensor offsets = Tensor::from_vector<int64_t>(group_offsets, {4});
  // The float64 CPU reference, without autocast.
  Tensor x_cpu = x.clone().set_requires_grad(true), weight_cpu = weight.clone().set_requires_grad(true);
  Tensor y_cpu = ops::grouped_linear(x_cpu, weight_cpu, offsets);
  autograd::backward(ops::sum(ops::mul(y_cpu, upstream)));

  Tensor x_cuda = x.to(DType::Float32).to(Device::cuda()).set_requires_grad(true);
  Tensor weight_cuda = weight.to(DType::Float32).to(Device::cuda()).set_requires_grad(true);
  Tensor y_cuda;
  {
    ops::AutocastGuard autocast(DType::BFloat16);
    y_cuda = ops::grouped_linear(x_cuda, weight_cuda, offsets.to(Device::cuda()));
  }
  autograd::backward(ops::sum(ops::mul(y_cuda, upstream.to(DType::Float32).to(Device::cuda()))));
  CHECK(y_cuda.dtype() == DType::Float32);
  CHECK(x_cuda.grad().dtype() == DType::Float32);
  CHECK(weight_cuda.grad().dtype() == DType::Float32);
  // bfloat16 operands (and upstream gradient) with float32 accumulation and a bfloat16
  // result: within ~1% of the largest value, as in the bfloat16 cases above.
  const std::vector<std::pair<Tensor, Tensor>> results = {
      {y_cuda, y_cpu}, {x_cuda.grad(), x_cpu.grad()}, {weight_cuda.grad(), weight_cpu.grad()}};
  for (const auto& [cuda_result, reference] : results) {
    const double error = testing::max_abs_difference(cuda_result.to(Device::cpu()).to(DType::Float64), reference);
    MESSAGE("autocast: max |cuda - cpu| = " << error << ", max |cpu| = " << testing::max_abs(reference));
    CHECK(error <= 1e-2 * testing::max_abs(reference));
  }
}
