// CUDA cross_entropy against the float64 CPU reference, loss and logits
// gradient, in float32 and bfloat16 logits, int32 and int64 targets, with some
// rows ignored; vocabulary-sized rows; the out-of-range target error.
//
// Tolerances, relative to the largest reference value:
//  - float32: 1e-5. Logits are rounded to float32; each row's logsumexp is a
//    float32 running sum of up to ~5e4 exponentials (error ~1e-6 of the sum);
//    the row losses are added in double.
//  - bfloat16: 2e-2. Logits (|x| <= 2), the gradient and the loss weight are
//    each rounded to bfloat16 (relative 2^-9 = 2e-3); an input error of 4e-3 in
//    a logit moves its probability by ~4e-3 relative.
#include <random>

#include "support/check.h"

using namespace strata;
using testing::check_cuda_matches_cpu;

namespace {

constexpr double kFloat32Tolerance = 1e-5;
constexpr double kBFloat16Tolerance = 2e-2;
constexpr int64_t kIgnore = -100;

Tensor logits_input(int64_t rows, int64_t classes, uint64_t seed) {
  Tensor t = testing::random({rows, classes}, seed, DType::Float64, -2.0, 2.0);
  t.set_requires_grad(true);
  return t;
}

// Random classes in [0, classes), about one row in five ignored (never all of
// them when there is more than one row).
Tensor random_targets(int64_t rows, int64_t classes, DType dtype, uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::vector<int64_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r)
    targets[r] = r > 0 && engine() % 5 == 0 ? kIgnore : static_cast<int64_t>(engine() % classes);
  return Tensor::from_vector(targets, {rows}).to(dtype);
}

testing::Function loss() {
  return [](const std::vector<Tensor>& xs) { return ops::cross_entropy(xs[0], xs[1], kIgnore); };
}

}  // namespace

TEST_CASE("cross_entropy on CUDA matches the CPU") {
  testing::require_cuda();
  uint64_t seed = 1;
  for (int64_t rows : {1, 7, 257}) {
    for (int64_t classes : {1, 31, 128, 1000, 4096}) {
      for (DType index_dtype : {DType::Int64, DType::Int32}) {
        CAPTURE(rows);
        CAPTURE(classes);
        std::string index_name = dtype_name(index_dtype);
        CAPTURE(index_name);
        Tensor logits = logits_input(rows, classes, seed++);
        Tensor targets = random_targets(rows, classes, index_dtype, seed++);
        check_cuda_matches_cpu(loss(), {logits, targets}, DType::Float32, kFloat32Tolerance);
        check_cuda_matches_cpu(loss(), {logits, targets}, DType::BFloat16, kBFloat16Tolerance);
      }
    }
  }
}

TEST_CASE("cross_entropy on CUDA: vocabulary rows, all rows ignored, bad targets") {
  testing::require_cuda();
  // An odd vocabulary (single-element loads) and an even one (16-byte packs).
  for (int64_t classes : {50257, 32000}) {
    CAPTURE(classes);
    Tensor logits = logits_input(6, classes, 40 + classes);
    Tensor targets = random_targets(6, classes, DType::Int64, 41);
    check_cuda_matches_cpu(loss(), {logits, targets}, DType::Float32, kFloat32Tolerance);
    check_cuda_matches_cpu(loss(), {logits, targets}, DType::BFloat16, kBFloat16Tolerance);
  }
  // Every row ignored: a zero loss and a zero gradient, no NaN.
  Tensor logits = testing::random({4, 10}, 5, DType::Float32).to(Device::cuda());
  logits.set_requires_grad(true);
  Tensor ignored = Tensor::full({4}, static_cast<double>(kIgnore), DType::Int64, Device::cuda());
  Tensor zero = ops::cross_entropy(logits, ignored, kIgnore);
  CHECK(zero.dtype() == DType::Float32);
  CHECK(zero.item() == 0.0);
  autograd::backward(zero);
  CHECK(testing::max_abs(logits.grad()) == 0.0);
  // bfloat16 logits give a float32 loss.
  CHECK(ops::cross_entropy(logits.detach().to(DType::BFloat16), ignored, kIgnore).dtype() == DType::Float32);
  // A target outside [0, C) is reported with its row, as on the CPU.
  Tensor bad = Tensor::from_vector<int32_t>({0, 3, 12, -1}, {4}).to(Device::cuda());
  CHECK_THROWS_WITH_AS(ops::cross_entropy(logits.detach(), bad, kIgnore),
                       doctest::Contains("cross_entropy: target 12 at row 2 is outside [0, 10)"), Error);
}
