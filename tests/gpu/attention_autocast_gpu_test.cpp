// Autocast of the fused attention: under ops::AutocastGuard, float32 CUDA q, k, v
// run on the bfloat16 tensor-core kernels. The float32 output and the float32
// gradients of q, k, v must equal those of the same attention called on the
// bfloat16-rounded inputs up to one bfloat16 unit (dQ is summed by float32 atomics
// in a varying order before its rounding to bfloat16: 2^-8 = 4e-3 relative, so the
// bound is 1e-2), and stay near the float32 attention (bfloat16 rounding of q, k,
// v: 5e-2 relative, as in attention_gpu_test).
#include "strata/ops/attention.h"
#include "strata/ops/ops.h"
#include "support/check.h"

using namespace strata;

namespace {

struct Outputs {
  Tensor out, dq, dk, dv;
};

// out and the gradients of sum(out * weight) with respect to q, k, v.
Outputs run(const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& weight, DType dtype, bool autocast) {
  Tensor q = q0.to(dtype).detach().set_requires_grad(true);
  Tensor k = k0.to(dtype).detach().set_requires_grad(true);
  Tensor v = v0.to(dtype).detach().set_requires_grad(true);
  ops::AttentionOptions options;
  options.causal = true;
  Tensor out;
  {
    std::optional<ops::AutocastGuard> guard;
    if (autocast) guard.emplace(DType::BFloat16);
    out = ops::attention(q, k, v, options).out;
  }
  autograd::backward(ops::sum(ops::mul(ops::cast(out, DType::Float32), weight)));
  return {out, q.grad(), k.grad(), v.grad()};
}

double relative(const Tensor& a, const Tensor& b) {
  Tensor x = a.to(DType::Float64).to(Device::cpu()), y = b.to(DType::Float64).to(Device::cpu());
  return testing::max_abs_difference(x, y) / std::max(testing::max_abs(y), 1e-30);
}

}  // namespace

TEST_CASE("attention under autocast runs in bfloat16 and returns float32") {
  testing::require_cuda();
  Device gpu = Device::cuda(0);
  for (int64_t head_dim : {64, 128}) {
    Shape q_shape{2, 4, 200, head_dim}, kv_shape{2, 2, 200, head_dim};
    Tensor q = testing::random(q_shape, 1, DType::Float32).to(gpu);
    Tensor k = testing::random(kv_shape, 2, DType::Float32).to(gpu);
    Tensor v = testing::random(kv_shape, 3, DType::Float32).to(gpu);
    Tensor weight = testing::random(q_shape, 4, DType::Float32).to(gpu);

    Outputs autocast = run(q, k, v, weight, DType::Float32, true);
    Outputs bf16 = run(q, k, v, weight, DType::BFloat16, false);
    Outputs fp32 = run(q, k, v, weight, DType::Float32, false);
    CHECK(autocast.out.dtype() == DType::Float32);
    CHECK(autocast.dq.dtype() == DType::Float32);
    const char* names[] = {"out", "dq", "dk", "dv"};
    const Tensor autocast_results[] = {autocast.out, autocast.dq, autocast.dk, autocast.dv};
    const Tensor bf16_results[] = {bf16.out, bf16.dq, bf16.dk, bf16.dv};
    const Tensor fp32_results[] = {fp32.out, fp32.dq, fp32.dk, fp32.dv};
    for (int i = 0; i < 4; ++i) {
      double error = relative(autocast_results[i], bf16_results[i]);
      MESSAGE("head_dim " << head_dim << " " << names[i] << ": autocast vs bfloat16 inputs " << error
                          << ", vs float32 " << relative(autocast_results[i], fp32_results[i]));
      CHECK(error < 1e-2);
      CHECK(relative(autocast_results[i], fp32_results[i]) < 5e-2);
    }
  }
}
