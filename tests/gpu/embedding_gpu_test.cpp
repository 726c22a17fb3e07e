// CUDA against the float64 CPU reference for embedding. The forward copies rows
// unchanged (error: rounding the weight to the device dtype, 2^-24 or 2^-9
// relative). The backward adds repeated ids' gradient rows in float32 (bfloat16:
// rounded once at the end, after the weights were rounded too): a few bfloat16 ulps.
#include "support/check.h"

using namespace strata;

namespace {
Tensor random_ids(const Shape& shape, int64_t vocab, uint64_t seed, DType dtype) {
  Generator generator{seed, 0};
  return rand_uniform(shape, 0.0, static_cast<double>(vocab) - 1e-6, DType::Float64, Device::cpu(), generator)
      .to(dtype);
}
}  // namespace

TEST_CASE("embedding on CUDA matches the CPU, vectorised and odd row sizes") {
  testing::require_cuda();
  // dim 64: 16-byte rows in both dtypes; dim 7: 4-byte words in float32, 2-byte in bfloat16.
  for (int64_t dim : {64, 7}) {
    CAPTURE(dim);
    Tensor weight = testing::random({50, dim}, 11).set_requires_grad(true);
    Tensor ids = random_ids({4, 33}, 50, 12, DType::Int32);
    auto f = [](const std::vector<Tensor>& in) { return ops::embedding(in[0], in[1]); };
    testing::check_cuda_matches_cpu(f, {weight, ids}, DType::Float32, 1e-6);
    testing::check_cuda_matches_cpu(f, {weight, ids}, DType::BFloat16, 2e-2);
  }
}

TEST_CASE("embedding with a bad id on CUDA raises an error naming the id") {
  testing::require_cuda();
  Tensor weight = Tensor::zeros({10, 8}, DType::BFloat16, Device::cuda());
  Tensor ids = Tensor::from_vector<int64_t>({3, 10, 2}, {3}, Device::cuda());
  CHECK_THROWS_WITH_AS(ops::embedding(weight, ids), doctest::Contains("embedding: index 10 is out of range"), Error);
}
