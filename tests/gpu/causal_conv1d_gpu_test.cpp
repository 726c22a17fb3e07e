// CUDA causal conv1d against the float64 CPU reference on fresh random inputs, in
// float32 and bfloat16: y and the gradients of x, weight and bias, over lengths 1, 7,
// 300 and 2048 (threads take 4 positions, so 7 and 300 end mid-group), kernel sizes
// 2, 4 and 8, with and without SiLU and bias; then the step kernel against the CPU.
//
// Tolerances, relative to the largest reference value of each tensor:
//  - float32 1e-5: y and dx sum at most 8 products; dweight and dbias sum up to
//    2 * 2048 terms per channel in float32 (partials per thread, then per block, then
//    atomics), about sqrt(4096) * 2^-24 of the sum's scale.
//  - bfloat16 2e-2: x, weight and bias are rounded to 8 bits of mantissa (2^-9
//    relative) before the kernel sees them and y and dx are rounded again; the
//    reference sees the float64 values.
#include "strata/ops/ssm.h"
#include "support/check.h"

using namespace strata;

namespace {

void check_case(int64_t batch, int64_t channels, int64_t length, int64_t kernel_size, bool with_bias, bool silu,
                uint64_t seed) {
  MESSAGE("causal_conv1d batch " << batch << ", channels " << channels << ", length " << length << ", kernel "
                                 << kernel_size << (with_bias ? ", bias" : "") << (silu ? ", silu" : ""));
  std::vector<Tensor> inputs{testing::random({batch, channels, length}, seed).set_requires_grad(true),
                             testing::random({channels, kernel_size}, seed + 1).set_requires_grad(true)};
  if (with_bias) inputs.push_back(testing::random({channels}, seed + 2).set_requires_grad(true));
  auto f = [with_bias, silu](const std::vector<Tensor>& in) {
    return ops::causal_conv1d(in[0], in[1], with_bias ? in[2] : Tensor(), silu);
  };
  testing::check_cuda_matches_cpu(f, inputs, DType::Float32, 1e-5);
  testing::check_cuda_matches_cpu(f, inputs, DType::BFloat16, 2e-2);
}

}  // namespace

TEST_CASE("causal_conv1d on CUDA matches the CPU") {
  testing::require_cuda();
  check_case(2, 64, 2048, 4, true, true, 1);
  check_case(2, 5, 300, 8, true, false, 2);
  check_case(1, 128, 7, 2, false, true, 3);
  check_case(2, 3, 1, 4, true, true, 4);
  check_case(3, 1, 300, 8, false, false, 5);
  check_case(1, 1536, 33, 4, true, true, 6);  // many channels, one segment each
}

TEST_CASE("causal_conv1d_step on CUDA matches the CPU step and the CUDA convolution") {
  testing::require_cuda();
  for (int64_t kernel_size : {2, 4, 8}) {
    for (DType dtype : {DType::Float32, DType::BFloat16}) {
      CAPTURE(kernel_size);
      CAPTURE(dtype_name(dtype));
      const int64_t batch = 2, channels = 40, length = 12;
      Tensor x = testing::random({batch, channels, length}, 10 + kernel_size).to(dtype);
      Tensor weight = testing::random({channels, kernel_size}, 20 + kernel_size).to(DType::Float32);
      Tensor bias = testing::random({channels}, 30).to(DType::Float32);
      autograd::NoGradGuard no_grad;
      Tensor cuda_x = x.to(Device::cuda()), cuda_weight = weight.to(Device::cuda()),
             cuda_bias = bias.to(Device::cuda());
      Tensor y = ops::causal_conv1d(cuda_x, cuda_weight, cuda_bias, true).to(Device::cpu()).to(DType::Float64);

      Tensor cpu_state = Tensor::zeros({batch, channels, kernel_size - 1}, DType::Float64);
      Tensor cuda_state = Tensor::zeros({batch, channels, kernel_size - 1}, dtype, Device::cuda());
      Tensor cpu_x = x.to(DType::Float64), cpu_weight = weight.to(DType::Float64), cpu_bias = bias.to(DType::Float64);
      double worst_vs_cpu = 0.0, worst_vs_conv = 0.0;
      for (int64_t t = 0; t < length; ++t) {
        auto at = [t](const Tensor& v) { return ops::squeeze(ops::slice(v, 2, t, t + 1), 2); };
        Tensor y_cpu = ops::causal_conv1d_step(cpu_state, at(cpu_x), cpu_weight, cpu_bias, true);
        Tensor y_cuda = ops::causal_conv1d_step(cuda_state, at(cuda_x), cuda_weight, cuda_bias, true)
                            .to(Device::cpu())
                            .to(DType::Float64);
        worst_vs_cpu = std::max(worst_vs_cpu, testing::max_abs_difference(y_cuda, y_cpu));
        worst_vs_conv = std::max(worst_vs_conv, testing::max_abs_difference(y_cuda, at(y)));
      }
      MESSAGE("kernel " << kernel_size << " " << dtype_name(dtype) << ": step max |cuda - cpu| = " << worst_vs_cpu
                        << ", |step - conv| = " << worst_vs_conv);
      // All see the same (rounded) x and weights. The CUDA step and convolution compute
      // in float32 and, for bfloat16, round y to at most 2^-8 relative each, so two of
      // them can be one bfloat16 ulp (2^-7 relative) apart. The states hold x exactly.
      const double bound = (dtype == DType::BFloat16 ? 1e-2 : 1e-5) * testing::max_abs(y);
      CHECK(worst_vs_cpu <= bound);
      CHECK(worst_vs_conv <= bound);
      CHECK(cuda_state.to(Device::cpu()).to(DType::Float64).to_vector<double>() == cpu_state.to_vector<double>());
    }
  }
}
