// matmul and linear on CUDA (cuBLASLt) against the float64 CPU reference, forward and
// backward: plain, batched and broadcast products (the backward of a broadcast operand
// sums over the batch, by one deeper product or by accumulating products), transposed,
// strided and misaligned operands, autocast, and the raw cuBLASLt path against plain
// cublasGemmEx.
//
// Tolerances, relative to the largest reference value (inputs uniform in [-1, 1], so an
// output of depth k is a random walk of k terms and its largest value is ~ sqrt(k)):
//  - float32: 1e-5. Inputs are rounded to float32 (2^-24) and summed in float32 in
//    cuBLAS's order instead of the CPU's: each rounding is ~2^-24 of a partial sum, and
//    they add up like a random walk, ~1e-7 of the largest output. TF32 (inputs rounded
//    to 2^-11) would miss this bound by ~100x, so it also shows float32 means float32.
//  - bfloat16: 2e-2. Inputs, loss weights and outputs are each rounded to an 8-bit
//    mantissa (2^-9 = 2e-3 relative); accumulation is float32, so only those remain.
//  - autocast: 1e-2. As bfloat16, but outputs and gradients stay float32.
#include <cmath>

#include "strata/kernels/gemm.h"
#include "support/check.h"

using namespace strata;
using testing::check_cuda_matches_cpu;

namespace {

constexpr double kFloat32Tolerance = 1e-5;
constexpr double kBFloat16Tolerance = 2e-2;
constexpr double kAutocastTolerance = 1e-2;

using testing::leaf;

void check_both_dtypes(const testing::Function& f, const std::vector<Tensor>& inputs) {
  check_cuda_matches_cpu(f, inputs, DType::Float32, kFloat32Tolerance);
  check_cuda_matches_cpu(f, inputs, DType::BFloat16, kBFloat16Tolerance);
}

Tensor product(const std::vector<Tensor>& x) { return ops::matmul(x[0], x[1]); }

}  // namespace

TEST_CASE("matmul on CUDA matches the CPU") {
  testing::require_cuda();
  struct Case {
    const char* what;
    Shape a, b;
  };
  const Case cases[] = {
      {"2-D", {64, 96}, {96, 80}},
      {"odd sizes", {33, 65}, {65, 17}},
      {"batched", {3, 33, 65}, {3, 65, 17}},
      {"b shared: one tall product, dB one deep product", {4, 50, 64}, {64, 40}},
      {"a shared: dA accumulated over the batch", {50, 64}, {4, 64, 40}},
      {"both broadcast", {2, 1, 16, 24}, {1, 3, 24, 8}},
      {"size-1 dims", {1, 7, 1}, {5, 1, 9}},
      {"deep", {8, 2048}, {2048, 8}},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    check_both_dtypes(product, {leaf(c.a, 1), leaf(c.b, 2)});
  }
}

TEST_CASE("matmul on CUDA reads transposed, strided and misaligned operands") {
  testing::require_cuda();
  // a^T of a contiguous batch: a transpose flag, no copy.
  check_both_dtypes([](const std::vector<Tensor>& x) { return ops::matmul(ops::transpose(x[0], -1, -2), x[1]); },
                    {leaf({2, 40, 30}, 3), leaf({2, 40, 20}, 4)});
  // Every other column: no unit stride in either dim, so copied first.
  check_both_dtypes([](const std::vector<Tensor>& x) { return ops::matmul(ops::slice(x[0], 1, 0, 64, 2), x[1]); },
                    {leaf({24, 64}, 5), leaf({32, 16}, 6)});
  // Starting one element in: pointers aligned to 4 (float32) or 2 (bfloat16) bytes only.
  check_both_dtypes(
      [](const std::vector<Tensor>& x) { return ops::matmul(ops::slice(x[0], 1, 1, 33), ops::slice(x[1], 1, 1, 17)); },
      {leaf({24, 33}, 7), leaf({32, 17}, 8)});
}

TEST_CASE("linear on CUDA matches the CPU") {
  testing::require_cuda();
  check_both_dtypes([](const std::vector<Tensor>& x) { return ops::linear(x[0], x[1], x[2]); },
                    {leaf({3, 17, 48}, 9), leaf({40, 48}, 10), leaf({40}, 11)});
  check_both_dtypes([](const std::vector<Tensor>& x) { return ops::linear(x[0], x[1]); },
                    {leaf({65, 33}, 12), leaf({31, 33}, 13)});
}

TEST_CASE("autocast multiplies float32 CUDA tensors in bfloat16 and returns float32") {
  testing::require_cuda();
  auto autocast_matmul = [](const std::vector<Tensor>& x) {
    ops::AutocastGuard autocast;
    return ops::matmul(x[0], x[1]);
  };
  auto autocast_linear = [](const std::vector<Tensor>& x) {
    ops::AutocastGuard autocast;
    return ops::linear(x[0], x[1], x[2]);
  };
  check_cuda_matches_cpu(autocast_matmul, {leaf({4, 50, 64}, 14), leaf({64, 40}, 15)}, DType::Float32,
                         kAutocastTolerance);
  check_cuda_matches_cpu(autocast_linear, {leaf({2, 30, 48}, 16), leaf({40, 48}, 17), leaf({40}, 18)},
                         DType::Float32, kAutocastTolerance);

  Tensor a = testing::random({64, 256}, 19, DType::Float32).to(Device::cuda());
  Tensor b = testing::random({256, 32}, 20, DType::Float32).to(Device::cuda());
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  Tensor exact = ops::matmul(a, b);
  Tensor rounded;
  {
    ops::AutocastGuard autocast;
    rounded = ops::matmul(a, b);
  }
  CHECK(rounded.dtype() == DType::Float32);
  // bfloat16 inputs move the result by ~2^-9 of its terms: far more than float32 would.
  double moved = testing::max_abs_difference(rounded, exact);
  MESSAGE("autocast moved the product by " << moved);
  CHECK(moved > 1e-4);
  CHECK(moved < 1e-2 * testing::max_abs(exact));
  autograd::backward(ops::sum(rounded));
  CHECK(a.grad().dtype() == DType::Float32);
  CHECK(b.grad().dtype() == DType::Float32);
}

TEST_CASE("cuBLASLt agrees with plain cublasGemmEx, in every dtype pair and transpose") {
  testing::require_cuda();
  for (DType input_dtype : {DType::Float32, DType::BFloat16}) {
    for (DType output_dtype : {DType::Float32, DType::BFloat16}) {
      if (input_dtype == DType::Float32 && output_dtype == DType::BFloat16) continue;
      for (int transposes = 0; transposes < 4; ++transposes) {
        bool transpose_a = transposes & 1, transpose_b = transposes & 2;
        INFO(dtype_name(input_dtype) << " -> " << dtype_name(output_dtype) << ", transposes " << transposes);
        const int64_t m = 70, k = 96, n = 50;
        Tensor a = testing::random(transpose_a ? Shape{k, m} : Shape{m, k}, 21, input_dtype).to(Device::cuda());
        Tensor b = testing::random(transpose_b ? Shape{n, k} : Shape{k, n}, 22, input_dtype).to(Device::cuda());
        Tensor c0 = testing::random({m, n}, 23, output_dtype).to(Device::cuda());
        Tensor lt = c0.clone(), reference = c0.clone();
        kernels::gemm(a, b, lt, transpose_a, transpose_b, 0.5f, 2.0f);
        kernels::gemm_cublas_reference(a, b, reference, transpose_a, transpose_b, 0.5f, 2.0f);
        // Same inputs, both accumulate in float32: only the summation order differs,
        // plus one output rounding for bfloat16.
        double bound = (output_dtype == DType::BFloat16 ? 1e-2 : 1e-5) * testing::max_abs(reference);
        CHECK(testing::max_abs_difference(lt, reference) <= bound);
      }
    }
  }
  CHECK_FALSE(kernels::allow_tf32());
}

TEST_CASE("CUDA matmul argument errors") {
  testing::require_cuda();
  Tensor host = Tensor::zeros({2, 3}), device = Tensor::zeros({3, 4}, DType::Float32, Device::cuda());
  CHECK_THROWS_WITH_AS(ops::matmul(host, device), doctest::Contains("matmul: tensors are on different devices"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(device.to(DType::Float64), device.to(DType::Float64)),
                       doctest::Contains("not supported (supported: float32, bfloat16 on cuda)"), Error);
  Tensor c = Tensor::zeros({3, 4}, DType::Float32, Device::cuda());
  CHECK_THROWS_WITH_AS(kernels::gemm_cublas_reference(host, host, c, true, false, 1.0f, 0.0f),
                       doctest::Contains("must be on one CUDA device"), Error);
}
