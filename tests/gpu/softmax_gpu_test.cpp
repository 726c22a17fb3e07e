// CUDA softmax and log_softmax against the float64 CPU reference, forward and
// backward, in float32 and bfloat16: rows over the last dim (the register-cached
// kernels, with 16-byte packs or, for odd lengths and unaligned views, single
// elements), rows too long to cache (the streaming kernels), and softmax over
// the first and a middle dim (the column kernels).
//
// Tolerances, relative to the largest reference value:
//  - float32: 1e-5. Inputs are rounded to float32 (6e-8); each output sums at
//    most ~2e4 exponentials in float32 (error ~1e-6 of the sum) before one
//    division or one log.
//  - bfloat16: 2e-2. Inputs, output and the loss weights that form dy are each
//    rounded to bfloat16 (relative 2^-9 = 2e-3); an input error of that size in
//    a logit of magnitude <= 2 moves exp() by up to ~4e-3 relative.
#include "support/check.h"

using namespace strata;
using testing::check_cuda_matches_cpu;

namespace {

constexpr double kFloat32Tolerance = 1e-5;
constexpr double kBFloat16Tolerance = 2e-2;

Tensor input(const Shape& shape, uint64_t seed) { return testing::leaf(shape, seed, -2.0, 2.0); }

// x as a view starting one element into its storage: contiguous but not 16-byte
// aligned, so the kernels must take their single-element path.
Tensor unaligned(const Tensor& x) {
  Tensor padded = ops::concat({Tensor::zeros({1}, x.dtype(), x.device()), ops::reshape(x, {x.numel()})}, 0);
  return ops::reshape(ops::slice(padded, 0, 1, x.numel() + 1), x.shape());
}

void check_both_dtypes(const testing::Function& f, const std::vector<Tensor>& inputs) {
  check_cuda_matches_cpu(f, inputs, DType::Float32, kFloat32Tolerance);
  check_cuda_matches_cpu(f, inputs, DType::BFloat16, kBFloat16Tolerance);
}

testing::Function softmax_over(int dim, bool log) {
  return [dim, log](const std::vector<Tensor>& xs) {
    return log ? ops::log_softmax(xs[0], dim) : ops::softmax(xs[0], dim);
  };
}

}  // namespace

TEST_CASE("softmax over the last dim on CUDA matches the CPU") {
  testing::require_cuda();
  uint64_t seed = 1;
  for (int64_t rows : {1, 7, 257}) {
    for (int64_t dim : {1, 31, 128, 1000, 4096}) {
      for (bool log : {false, true}) {
        CAPTURE(rows);
        CAPTURE(dim);
        CAPTURE(log);
        check_both_dtypes(softmax_over(-1, log), {input({rows, dim}, seed++)});
      }
    }
  }
}

TEST_CASE("softmax on CUDA: long rows, unaligned views, other dims") {
  testing::require_cuda();
  uint64_t seed = 100;
  for (bool log : {false, true}) {
    CAPTURE(log);
    // Longer than the cached kernels hold (512 threads x 32 elements): streaming.
    check_both_dtypes(softmax_over(-1, log), {input({3, 20000}, seed++)});
    check_both_dtypes(softmax_over(-1, log), {input({2, 50257}, seed++)});
    // Lengths that allow 16-byte packs, from a misaligned start.
    for (int64_t dim : {128, 4096}) {
      CAPTURE(dim);
      check_both_dtypes(
          [log](const std::vector<Tensor>& xs) {
            return log ? ops::log_softmax(unaligned(xs[0]), -1) : ops::softmax(unaligned(xs[0]), -1);
          },
          {input({5, dim}, seed++)});
    }
    // The first and a middle dim of a 3-D tensor: the column kernels.
    check_both_dtypes(softmax_over(0, log), {input({31, 6, 40}, seed++)});
    check_both_dtypes(softmax_over(1, log), {input({7, 1000, 3}, seed++)});
    check_both_dtypes(softmax_over(1, log), {input({4, 1, 9}, seed++)});
  }
}

TEST_CASE("softmax on CUDA of large and masked logits") {
  testing::require_cuda();
  // Logits near 1000 overflow exp() unless the maximum is subtracted first.
  // x + 1000 is rounded to float32 on the device, where the spacing at 1000 is
  // 2^-14: logit i moves by some e_i, |e_i| <= 2^-15. softmax is shift-invariant,
  // so p_i moves by the factor 1 + e_i - sum_j p_j e_j: up to 2 * 2^-15
  // relative. The gradient p_i * (dy_i - sum_j p_j dy_j) (|dy| <= 1) moves by
  // up to p_i * (2 * 2^-15 * 2 + 2 * 2^-15) = 6 * 2^-15 * p_i. Absolute bounds
  // from the largest p, on top of the float32 arithmetic's relative one.
  const Tensor x = input({9, 300}, 7);
  const double p_max = testing::max_abs(ops::softmax(ops::add(x.detach(), 1000.0)));
  check_cuda_matches_cpu([](const std::vector<Tensor>& xs) { return ops::softmax(ops::add(xs[0], 1000.0)); }, {x},
                         DType::Float32, kFloat32Tolerance, {2 * 0x1p-15 * p_max, 6 * 0x1p-15 * p_max});
  // -inf (masked) entries get probability 0 on both devices.
  Tensor masked = Tensor::from_vector<double>({-INFINITY, 1.0, 2.0, -INFINITY, 0.5, 0.0}, {2, 3});
  for (DType dtype : {DType::Float32, DType::BFloat16}) {
    std::vector<double> cuda = ops::softmax(masked.to(dtype).to(Device::cuda())).to_vector<double>();
    std::vector<double> cpu = ops::softmax(masked).to_vector<double>();
    for (size_t k = 0; k < cpu.size(); ++k) CHECK(cuda[k] == doctest::Approx(cpu[k]).epsilon(1e-2));
    CHECK(cuda[0] == 0.0);
  }
}
