// The fused CUDA AdamW step and the multi-tensor norm/scale kernels against the CPU
// reference, on many tensors of awkward sizes (more than one launch's worth).
#include <cmath>

#include "support/check.h"
#include "strata/kernels/adamw.h"
#include "strata/nn/layers.h"
#include "strata/optim/grad_clip.h"
#include "strata/optim/optimizer.h"

using namespace strata;

namespace {

// Sizes around the 4096-element chunk and the 4-element vector width, with more
// tensors than one launch takes (80), so the table is split.
std::vector<int64_t> awkward_sizes() {
  std::vector<int64_t> sizes{1, 3, 4, 5, 4095, 4096, 4097, 3 * 4096 + 7, 100000};
  for (int i = 0; sizes.size() < 97; ++i) sizes.push_back(1 + (i * 37) % 300);
  return sizes;
}

// A CUDA copy whose data pointer is one element past an aligned address, so the
// kernels must take their scalar path.
Tensor misaligned_copy(const Tensor& host) {
  Tensor storage = Tensor::zeros({host.numel() + 1}, host.dtype(), Device::cuda());
  Tensor view = storage.as_strided(host.shape(), contiguous_strides(host.shape()), 1);
  view.copy_(host);
  return view;
}

}  // namespace

TEST_CASE("fused AdamW matches the CPU reference over several steps (float32 and bfloat16 grads)") {
  testing::require_cuda();
  std::vector<int64_t> sizes = awkward_sizes();
  for (DType grad_dtype : {DType::Float32, DType::BFloat16}) {
    CAPTURE(dtype_name(grad_dtype));
    std::vector<kernels::AdamWTensors> cpu, cuda;
    for (size_t i = 0; i < sizes.size(); ++i) {
      Tensor param = testing::random({sizes[i]}, 100 + i, DType::Float32);
      bool decay = i % 3 != 0;
      cpu.push_back({param.clone(), Tensor(), Tensor::zeros({sizes[i]}), Tensor::zeros({sizes[i]}), decay});
      // Tensor 5 and 7 sit at misaligned addresses (scalar path); the rest vectorise.
      Tensor device_param = i == 5 || i == 7 ? misaligned_copy(param) : param.to(Device::cuda());
      cuda.push_back({device_param, Tensor(), Tensor::zeros({sizes[i]}, DType::Float32, Device::cuda()),
                      Tensor::zeros({sizes[i]}, DType::Float32, Device::cuda()), decay});
    }
    kernels::AdamWHyperparameters h{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1};
    for (int step = 1; step <= 5; ++step) {
      h.step = step;
      for (size_t i = 0; i < sizes.size(); ++i) {
        // Grads of mixed scale; the CPU gets the exact float32 values of the bf16 grads.
        Tensor grad = testing::random({sizes[i]}, 1000 * step + i, DType::Float32, -2.0, 2.0).to(grad_dtype);
        cpu[i].grad = grad.to(DType::Float32);
        cuda[i].grad = grad.to(Device::cuda());
      }
      kernels::adamw_step(cpu, h);
      kernels::adamw_step(cuda, h);
    }
    // Same float32 arithmetic on both sides; the GPU contracts a * b + c into fused
    // multiply-adds, which moves each result by about one rounding (6e-8 for values
    // near 1) per step; five steps of lr 1e-2 updates stay far below 2e-6.
    double worst_param = 0.0, worst_exp_avg = 0.0, worst_exp_avg_sq = 0.0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      worst_param = std::max(worst_param, testing::max_abs_difference(cuda[i].param.to(Device::cpu()), cpu[i].param));
      worst_exp_avg =
          std::max(worst_exp_avg, testing::max_abs_difference(cuda[i].exp_avg.to(Device::cpu()), cpu[i].exp_avg));
      worst_exp_avg_sq = std::max(
          worst_exp_avg_sq, testing::max_abs_difference(cuda[i].exp_avg_sq.to(Device::cpu()), cpu[i].exp_avg_sq));
    }
    MESSAGE("max |cuda - cpu|: param " << worst_param << ", exp_avg " << worst_exp_avg << ", exp_avg_sq "
                                       << worst_exp_avg_sq);
    CHECK(worst_param <= 2e-6);
    CHECK(worst_exp_avg <= 1e-6);
    CHECK(worst_exp_avg_sq <= 1e-6);
  }
}

TEST_CASE("the AdamW optimizer steps a CUDA model like the CPU one") {
  testing::require_cuda();
  Generator g1{9, 0}, g2{9, 0};
  nn::GatedMLP cpu_model(24, 40, true, g1), cuda_model(24, 40, true, g2);
  cuda_model.to(Device::cuda());
  optim::AdamW cpu_adamw(cpu_model.named_parameters(), {.lr = 1e-2, .weight_decay = 0.1});
  optim::AdamW cuda_adamw(cuda_model.named_parameters(), {.lr = 1e-2, .weight_decay = 0.1});
  for (const auto& [name, tensor] : cuda_adamw.state())
    if (name != "step") CHECK_MESSAGE(tensor.device().is_cuda(), name);
  for (int step = 0; step < 3; ++step) {
    auto cpu_params = cpu_model.named_parameters(), cuda_params = cuda_model.named_parameters();
    for (size_t i = 0; i < cpu_params.size(); ++i) {
      Tensor grad = testing::random(cpu_params[i].tensor.shape(), 50 * step + i, DType::Float32);
      cpu_params[i].tensor.set_grad(grad);
      cuda_params[i].tensor.set_grad(grad.to(Device::cuda()));
    }
    cpu_adamw.step();
    cuda_adamw.step();
  }
  auto cpu_params = cpu_model.named_parameters(), cuda_params = cuda_model.named_parameters();
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    // As above: float32 on both sides, one rounding per step apart.
    double error = testing::max_abs_difference(cuda_params[i].tensor.to(Device::cpu()), cpu_params[i].tensor);
    CHECK_MESSAGE(error <= 2e-6, cpu_params[i].name << ": " << error);
  }
}

TEST_CASE("clip_grad_norm on CUDA matches the CPU in float32 and bfloat16") {
  testing::require_cuda();
  std::vector<int64_t> sizes = awkward_sizes();
  for (DType dtype : {DType::Float32, DType::BFloat16}) {
    CAPTURE(dtype_name(dtype));
    std::vector<Tensor> cpu, cuda;
    for (size_t i = 0; i < sizes.size(); ++i) {
      Tensor grad = testing::random({sizes[i]}, 7 * i + 1, DType::Float32).to(dtype);
      Tensor p_cpu = Tensor::zeros({sizes[i]}), p_cuda = Tensor::zeros({sizes[i]}, DType::Float32, Device::cuda());
      p_cpu.set_requires_grad(true);
      p_cuda.set_requires_grad(true);
      p_cpu.set_grad(grad.to(DType::Float32));
      p_cuda.set_grad(i == 6 ? misaligned_copy(grad) : grad.to(Device::cuda()));
      cpu.push_back(p_cpu);
      cuda.push_back(p_cuda);
    }
    double max_norm = 10.0;
    double cpu_norm = optim::clip_grad_norm(cpu, max_norm);
    double cuda_norm = optim::clip_grad_norm(cuda, max_norm);
    MESSAGE("norm: cpu " << cpu_norm << ", cuda " << cuda_norm);
    REQUIRE(cpu_norm > max_norm);
    // Both sum the same values in double, only in another order.
    CHECK(cuda_norm == doctest::Approx(cpu_norm).epsilon(1e-12));
    double worst = 0.0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      // float32: the same float multiply on both sides. bfloat16: the CUDA result is
      // rounded to bf16 (relative 2^-9 at most, on values below 1).
      Tensor expected = cpu[i].grad().to(dtype).to(DType::Float32);
      worst = std::max(worst, testing::max_abs_difference(cuda[i].grad().to(Device::cpu()).to(DType::Float32),
                                                          expected));
    }
    MESSAGE("scaled grads: max |cuda - cpu| = " << worst);
    CHECK(worst <= (dtype == DType::Float32 ? 1e-7 : 2e-3));
  }

  Tensor bad = Tensor::zeros({5000}, DType::Float32, Device::cuda());
  bad.set_requires_grad(true);
  std::vector<float> values(5000, 1.0f);
  values[4321] = NAN;
  bad.set_grad(Tensor::from_vector(values, {5000}, Device::cuda()));
  CHECK(std::isnan(optim::clip_grad_norm({bad}, 1.0)));
  CHECK(bad.grad().to_vector<float>()[0] == 1.0f);  // left untouched
}
