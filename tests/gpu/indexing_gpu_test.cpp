// CUDA against the float64 CPU reference for the indexing and shape ops.
//
// Tolerances: lookups and copies (index_select, gather, concat, permute) move values
// unchanged, so the only error is rounding the inputs and the backward's random
// weights to the device dtype: 2^-24 relative in float32, 2^-9 in bfloat16. The
// scatter-adds sum a few rounded terms in float32 and, for bfloat16, round the sum
// once more: a few bfloat16 ulps (2^-8 each) relative to the largest value.
#include "support/check.h"

using namespace strata;

namespace {
constexpr double kFloat32Tolerance = 1e-6;
constexpr double kCopyBFloat16Tolerance = 8e-3;     // two roundings of 2^-9 (input, weight)
constexpr double kScatterBFloat16Tolerance = 2e-2;  // a few ulps of 2^-8 after summing
using testing::leaf;

// Indices in [0, n) with plenty of repeats, int32 or int64.
Tensor random_indices(const Shape& shape, int64_t n, uint64_t seed, DType dtype) {
  Generator generator{seed, 0};
  Tensor u = rand_uniform(shape, 0.0, static_cast<double>(n) - 1e-6, DType::Float64, Device::cpu(), generator);
  return u.to(dtype);  // truncation toward zero: a uniform integer in [0, n)
}
}  // namespace

TEST_CASE("index_select on CUDA matches the CPU") {
  testing::require_cuda();
  Tensor a = leaf({6, 37, 5}, 1);
  Tensor index = random_indices({50}, 37, 2, DType::Int32);
  auto f = [&](const std::vector<Tensor>& in) { return ops::index_select(in[0], 1, in[1]); };
  testing::check_cuda_matches_cpu(f, {a, index}, DType::Float32, kFloat32Tolerance);
  testing::check_cuda_matches_cpu(f, {a, index}, DType::BFloat16, kScatterBFloat16Tolerance);
}

TEST_CASE("gather and scatter_add on CUDA match the CPU") {
  testing::require_cuda();
  Tensor a = leaf({9, 13, 3}, 3);
  Tensor index = random_indices({9, 40, 3}, 13, 4, DType::Int64);
  auto gather = [&](const std::vector<Tensor>& in) { return ops::gather(in[0], 1, in[1]); };
  testing::check_cuda_matches_cpu(gather, {a, index}, DType::Float32, kFloat32Tolerance);
  testing::check_cuda_matches_cpu(gather, {a, index}, DType::BFloat16, kScatterBFloat16Tolerance);

  Tensor src = leaf({9, 40, 3}, 5);
  auto scatter = [&](const std::vector<Tensor>& in) { return ops::scatter_add(in[0], 1, in[1], in[2]); };
  testing::check_cuda_matches_cpu(scatter, {a, index, src}, DType::Float32, kFloat32Tolerance);
  testing::check_cuda_matches_cpu(scatter, {a, index, src}, DType::BFloat16, kScatterBFloat16Tolerance);
}

TEST_CASE("concat and permute + contiguous on CUDA match the CPU") {
  testing::require_cuda();
  Tensor a = leaf({4, 3, 5}, 6), b = leaf({4, 1, 5}, 7), c = leaf({4, 6, 5}, 8);
  auto concat = [](const std::vector<Tensor>& in) { return ops::concat(in, 1); };
  testing::check_cuda_matches_cpu(concat, {a, b, c}, DType::Float32, kFloat32Tolerance);
  testing::check_cuda_matches_cpu(concat, {a, b, c}, DType::BFloat16, kCopyBFloat16Tolerance);

  auto permuted = [](const std::vector<Tensor>& in) { return ops::contiguous(ops::permute(in[0], {2, 0, 1})); };
  testing::check_cuda_matches_cpu(permuted, {c}, DType::Float32, kFloat32Tolerance);
  testing::check_cuda_matches_cpu(permuted, {c}, DType::BFloat16, kCopyBFloat16Tolerance);
}

TEST_CASE("an out-of-range index on CUDA raises an error naming the op") {
  testing::require_cuda();
  Tensor a = Tensor::zeros({3, 4}, DType::Float32, Device::cuda());
  Tensor bad = Tensor::from_vector<int64_t>({0, 7, 1}, {3}, Device::cuda());
  CHECK_THROWS_WITH_AS(ops::index_select(a, 0, bad),
                       doctest::Contains("index_select: index 7 is out of range for dim 0"), Error);
  Tensor bad_rows = Tensor::from_vector<int64_t>({0, 0, -3, 0}, {1, 4}, Device::cuda());
  CHECK_THROWS_WITH_AS(ops::scatter_add(a, 0, bad_rows, Tensor::ones({1, 4}, DType::Float32, Device::cuda())),
                       doctest::Contains("scatter_add: index -3 is out of range"), Error);
}
