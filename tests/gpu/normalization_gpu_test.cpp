// CUDA layer_norm and rms_norm against the float64 CPU reference, forward and
// backward (dx, dweight, dbias), in float32 and bfloat16: the register-cached
// kernels (16-byte packs, and single elements for odd lengths and unaligned
// views), rows too long to cache (streaming kernels), enough rows that the
// persistent backward grid strides over them, and the raw kernel API.
//
// Tolerances, relative to the largest reference value:
//  - float32: 1e-5. Inputs are rounded to float32; row statistics and the two
//    backward row sums are float32 sums of at most ~2e4 terms of size one;
//    dweight and dbias add up to ~2e4 rows in float32 (per-thread runs, then
//    per-block partials, then a fixed-order column sum).
//  - bfloat16: 2e-2. x, weight, bias, the output and the loss weights that form
//    dy are each rounded to bfloat16 (relative 2^-9 = 2e-3); x has row variance
//    ~1/3, so rounding x moves xhat by a few 2^-9 at most; sums are float32.
#include "strata/kernels/normalization.h"
#include "support/check.h"

using namespace strata;
using testing::check_cuda_matches_cpu;

namespace {

constexpr double kFloat32Tolerance = 1e-5;
constexpr double kBFloat16Tolerance = 2e-2;

Tensor input(const Shape& shape, uint64_t seed, double low = -1.0, double high = 1.0) {
  Tensor t = testing::random(shape, seed, DType::Float64, low, high);
  t.set_requires_grad(true);
  return t;
}

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

Tensor layer_norm_affine(const std::vector<Tensor>& xs) { return ops::layer_norm(xs[0], xs[1], xs[2], 1e-5); }
Tensor layer_norm_plain(const std::vector<Tensor>& xs) { return ops::layer_norm(xs[0], Tensor(), Tensor(), 1e-5); }
Tensor rms_norm_weighted(const std::vector<Tensor>& xs) { return ops::rms_norm(xs[0], xs[1], 1e-6); }
Tensor rms_norm_plain(const std::vector<Tensor>& xs) { return ops::rms_norm(xs[0], Tensor(), 1e-6); }

// Every flavour of both norms on x (rows, dim). rms_norm takes x away from 0:
// for dim 1 its gradient is eps / |x|^3, which a bfloat16 rounding of a tiny x
// would change by far more than the tolerance.
void check_norms(int64_t rows, int64_t dim, uint64_t seed) {
  check_both_dtypes(layer_norm_affine, {input({rows, dim}, seed), input({dim}, seed + 1), input({dim}, seed + 2)});
  check_both_dtypes(layer_norm_plain, {input({rows, dim}, seed + 3)});
  check_both_dtypes(rms_norm_weighted, {input({rows, dim}, seed + 4, 0.5, 1.5), input({dim}, seed + 5)});
  check_both_dtypes(rms_norm_plain, {input({rows, dim}, seed + 6, 0.5, 1.5)});
}

}  // namespace

TEST_CASE("layer_norm and rms_norm on CUDA match the CPU") {
  testing::require_cuda();
  uint64_t seed = 1;
  for (int64_t rows : {1, 7, 257}) {
    for (int64_t dim : {1, 31, 128, 1000, 4096}) {
      CAPTURE(rows);
      CAPTURE(dim);
      check_norms(rows, dim, seed);
      seed += 10;
    }
  }
}

TEST_CASE("norms on CUDA: long rows, many rows, unaligned views") {
  testing::require_cuda();
  // 10000: the forward is cached (up to 16384), the backward streams (over 8192).
  // 20000: both stream.
  check_norms(5, 10000, 100);
  check_norms(3, 20000, 200);
  // More row groups than the persistent backward grid holds: blocks loop over
  // rows and, for short rows, combine several row groups per block.
  check_norms(3000, 1024, 300);
  check_norms(20000, 128, 400);
  // A misaligned start forces single elements even where 16-byte packs would fit.
  for (int64_t dim : {128, 4096}) {
    CAPTURE(dim);
    check_both_dtypes(
        [](const std::vector<Tensor>& xs) { return ops::layer_norm(unaligned(xs[0]), xs[1], xs[2], 1e-5); },
        {input({7, dim}, 500 + dim), input({dim}, 501), input({dim}, 502)});
    check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::rms_norm(unaligned(xs[0]), xs[1], 1e-6); },
                      {input({7, dim}, 503 + dim, 0.5, 1.5), input({dim}, 504)});
  }
}

TEST_CASE("the raw norm kernels on CUDA return the CPU statistics and gradients") {
  testing::require_cuda();
  const int64_t rows = 300, dim = 4096;
  Tensor x = testing::random({rows, dim}, 1), weight = testing::random({dim}, 2), bias = testing::random({dim}, 3);
  Tensor dy = testing::random({rows, dim}, 4);
  kernels::NormForward cpu = kernels::layer_norm_forward(x, weight, bias, 1e-5);
  kernels::NormGradients cpu_grads = kernels::layer_norm_backward(dy, x, weight, cpu.mean, cpu.rstd, true);
  const Device gpu = Device::cuda();
  auto on_gpu = [&](const Tensor& t) { return t.to(DType::Float32).to(gpu); };
  kernels::NormForward cuda = kernels::layer_norm_forward(on_gpu(x), on_gpu(weight), on_gpu(bias), 1e-5);
  CHECK(cuda.mean.dtype() == DType::Float32);
  CHECK(cuda.rstd.shape() == Shape{rows});
  CHECK(testing::max_abs_difference(cuda.mean, cpu.mean) <= kFloat32Tolerance * testing::max_abs(cpu.mean));
  CHECK(testing::max_abs_difference(cuda.rstd, cpu.rstd) <= kFloat32Tolerance * testing::max_abs(cpu.rstd));
  kernels::NormGradients cuda_grads =
      kernels::layer_norm_backward(on_gpu(dy), on_gpu(x), on_gpu(weight), cuda.mean, cuda.rstd, true);
  for (auto [cuda_grad, cpu_grad] : {std::pair{cuda_grads.dx, cpu_grads.dx}, std::pair{cuda_grads.dweight, cpu_grads.dweight},
                                     std::pair{cuda_grads.dbias, cpu_grads.dbias}}) {
    const double error = testing::max_abs_difference(cuda_grad, cpu_grad);
    MESSAGE("max |cuda - cpu| = " << error);
    CHECK(error <= kFloat32Tolerance * testing::max_abs(cpu_grad));
  }
  // Without a weight, rms_norm gives no dweight on either device.
  kernels::NormForward rms = kernels::rms_norm_forward(on_gpu(x), Tensor(), 1e-6);
  CHECK_FALSE(kernels::rms_norm_backward(on_gpu(dy), on_gpu(x), Tensor(), rms.rstd).dweight.defined());
}
