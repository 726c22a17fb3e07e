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
// Plus, for dx, an absolute part that scales with its terms rather than with dx:
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight, is
// float32 arithmetic on terms of size rstd * |g| that can cancel to ~0 (for
// dim 1 exactly: layer_norm's dx is 0, rms_norm's is rstd * g * eps / (x^2 +
// eps) ~ 1e-6). Their rounding: rsqrtf is within 2 ulp (4 units of 2^-24), so
// xhat^2 is within ~10 units after the roundings of the variance, plus ~4 for
// the products and the difference: 16 * 2^-24 * max(rstd) * max|g|, with
// |dy| <= 1 (check.h's loss weights). (The kernel's layer_norm dx for dim 1 is
// in fact exactly 0, since g is rounded once; the bound does not rely on it.)
#include "strata/kernels/normalization.h"
#include "support/check.h"

using namespace strata;
using testing::check_cuda_matches_cpu;

namespace {

constexpr double kFloat32Tolerance = 1e-5;
constexpr double kBFloat16Tolerance = 2e-2;

using testing::leaf;

// x as a view starting one element into its storage: contiguous but not 16-byte
// aligned, so the kernels must take their single-element path.
Tensor unaligned(const Tensor& x) {
  Tensor padded = ops::concat({Tensor::zeros({1}, x.dtype(), x.device()), ops::reshape(x, {x.numel()})}, 0);
  return ops::reshape(ops::slice(padded, 0, 1, x.numel() + 1), x.shape());
}

// Absolute tolerances of {y, dx, then the parameter gradients}: only dx has one
// (see the header), from the row statistics of the float64 reference.
std::vector<double> norm_atol(const kernels::NormForward& reference, const Tensor& weight, size_t parameters) {
  constexpr double kFloat32Unit = 0x1p-24;
  const double max_g = weight.defined() ? testing::max_abs(weight) : 1.0;
  std::vector<double> atol(2 + parameters, 0.0);
  atol[1] = 16 * kFloat32Unit * testing::max_abs(reference.rstd) * max_g;
  return atol;
}

void check_both_dtypes(const testing::Function& f, const std::vector<Tensor>& inputs,
                       const std::vector<double>& atol) {
  check_cuda_matches_cpu(f, inputs, DType::Float32, kFloat32Tolerance, atol);
  check_cuda_matches_cpu(f, inputs, DType::BFloat16, kBFloat16Tolerance, atol);
}

Tensor layer_norm_affine(const std::vector<Tensor>& xs) { return ops::layer_norm(xs[0], xs[1], xs[2], 1e-5); }
Tensor layer_norm_plain(const std::vector<Tensor>& xs) { return ops::layer_norm(xs[0], Tensor(), Tensor(), 1e-5); }
Tensor rms_norm_weighted(const std::vector<Tensor>& xs) { return ops::rms_norm(xs[0], xs[1], 1e-6); }
Tensor rms_norm_plain(const std::vector<Tensor>& xs) { return ops::rms_norm(xs[0], Tensor(), 1e-6); }

// Every flavour of both norms on x (rows, dim). rms_norm takes x away from 0:
// for dim 1 its gradient is eps / |x|^3, which a bfloat16 rounding of a tiny x
// would change by far more than the tolerance.
void check_norms(int64_t rows, int64_t dim, uint64_t seed) {
  const Tensor x = leaf({rows, dim}, seed), weight = leaf({dim}, seed + 1), bias = leaf({dim}, seed + 2);
  check_both_dtypes(layer_norm_affine, {x, weight, bias},
                    norm_atol(kernels::layer_norm_forward(x, weight, bias, 1e-5), weight, 2));
  const Tensor x_plain = leaf({rows, dim}, seed + 3);
  check_both_dtypes(layer_norm_plain, {x_plain},
                    norm_atol(kernels::layer_norm_forward(x_plain, Tensor(), Tensor(), 1e-5), Tensor(), 0));
  const Tensor x_rms = leaf({rows, dim}, seed + 4, 0.5, 1.5), weight_rms = leaf({dim}, seed + 5);
  check_both_dtypes(rms_norm_weighted, {x_rms, weight_rms},
                    norm_atol(kernels::rms_norm_forward(x_rms, weight_rms, 1e-6), weight_rms, 1));
  const Tensor x_rms_plain = leaf({rows, dim}, seed + 6, 0.5, 1.5);
  check_both_dtypes(rms_norm_plain, {x_rms_plain},
                    norm_atol(kernels::rms_norm_forward(x_rms_plain, Tensor(), 1e-6), Tensor(), 0));
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
  // 10000: the forward is cached (float32 up to 16384, bfloat16 up to 32768),
  // the backward streams (over 8192). 20000: both stream in float32, the
  // bfloat16 forward is cached. 40000: everything streams.
  check_norms(5, 10000, 100);
  check_norms(3, 20000, 200);
  check_norms(2, 40000, 250);
  // More row groups than the persistent backward grid holds: blocks loop over
  // rows and, for short rows, combine several row groups per block.
  check_norms(3000, 1024, 300);
  check_norms(20000, 128, 400);
  // A misaligned start forces single elements even where 16-byte packs would fit.
  for (int64_t dim : {128, 4096}) {
    CAPTURE(dim);
    const Tensor x = leaf({7, dim}, 500 + dim), weight = leaf({dim}, 501), bias = leaf({dim}, 502);
    check_both_dtypes(
        [](const std::vector<Tensor>& xs) { return ops::layer_norm(unaligned(xs[0]), xs[1], xs[2], 1e-5); },
        {x, weight, bias}, norm_atol(kernels::layer_norm_forward(x, weight, bias, 1e-5), weight, 2));
    const Tensor x_rms = leaf({7, dim}, 503 + dim, 0.5, 1.5), weight_rms = leaf({dim}, 504);
    check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::rms_norm(unaligned(xs[0]), xs[1], 1e-6); },
                      {x_rms, weight_rms},
                      norm_atol(kernels::rms_norm_forward(x_rms, weight_rms, 1e-6), weight_rms, 1));
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
