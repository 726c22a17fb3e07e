// The optimizer's multi-tensor kernels: argument checks and dispatch (Tensor side),
// and the CPU reference loops. The CUDA versions are in adamw_cuda.cu.
#include <cmath>

#include "kernels/adamw/adamw_cuda.h"
#include "strata/kernels/adamw.h"

namespace strata::kernels {

namespace {

// The per-step constants of AdamW, computed in double and rounded once to T (the
// CUDA kernel gets the float32 rounding of the same values).
template <class T>
struct Coefficients {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, inv_sqrt_bias_correction2, decay_factor;
};

template <class T>
Coefficients<T> coefficients_for(const AdamWHyperparameters& h) {
  double bias_correction1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  double bias_correction2 = 1.0 - std::pow(h.beta2, static_cast<double>(h.step));
  return Coefficients<T>{static_cast<T>(h.beta1),
                         static_cast<T>(1.0 - h.beta1),
                         static_cast<T>(h.beta2),
                         static_cast<T>(1.0 - h.beta2),
                         static_cast<T>(h.eps),
                         static_cast<T>(h.lr / bias_correction1),
                         static_cast<T>(1.0 / std::sqrt(bias_correction2)),
                         static_cast<T>(1.0 - h.lr * h.weight_decay)};
}

// The same arithmetic, in the same order, as adamw_update in adamw_cuda.cu.
template <class T>
void adamw_step_cpu(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, const Coefficients<T>& c,
                    bool weight_decay) {
  T decay_factor = weight_decay ? c.decay_factor : T(1);
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i];
    param[i] *= decay_factor;
    exp_avg[i] = c.beta1 * exp_avg[i] + c.one_minus_beta1 * g;
    exp_avg_sq[i] = c.beta2 * exp_avg_sq[i] + c.one_minus_beta2 * g * g;
    param[i] -= c.step_size * exp_avg[i] / (std::sqrt(exp_avg_sq[i]) * c.inv_sqrt_bias_correction2 + c.eps);
  }
}

template <class T>
double squared_norm_cpu(const T* data, int64_t n) {
  double sum = 0.0;
#pragma omp parallel for reduction(+ : sum) schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    double x = static_cast<double>(data[i]);
    sum += x * x;
  }
  return sum;
}

template <class T>
void scale_cpu(T* data, int64_t n, T factor) {
#pragma omp parallel for simd if (n > 65536)
  for (int64_t i = 0; i < n; ++i) data[i] *= factor;
}

void check_same_device(const char* op, const Tensor& first, const Tensor& t) {
  STRATA_CHECK(t.device() == first.device(), "{}: tensors on {} and {} in one call", op, first.device().str(),
               t.device().str());
}

void check_contiguous(const char* op, const Tensor& t, const char* what) {
  STRATA_CHECK(t.defined(), "{}: {} is undefined", op, what);
  STRATA_CHECK(t.is_contiguous(), "{}: {} {} is not contiguous", op, what, t.str());
}

// The checks squared_norm and scale_in_place share: contiguous tensors on one
// device, of a dtype that device computes in.
void check_multi_tensor(const char* op, const std::vector<Tensor>& tensors) {
  for (const Tensor& t : tensors) {
    check_contiguous(op, t, "tensor");
    check_same_device(op, tensors.front(), t);
    bool supported = t.device().is_cpu() ? t.dtype() == DType::Float32 || t.dtype() == DType::Float64
                                         : t.dtype() == DType::Float32 || t.dtype() == DType::BFloat16;
    STRATA_CHECK(supported, "{}: {} is not supported (CPU: float32 or float64; CUDA: float32 or bfloat16)", op,
                 t.str());
  }
}

// The raw pointers and sizes of the tensors of one dtype.
struct Group {
  std::vector<void*> pointers;
  std::vector<int64_t> numels;
  int64_t count() const { return static_cast<int64_t>(pointers.size()); }
};
Group group_of(const std::vector<Tensor>& tensors, DType dtype) {
  Group group;
  for (const Tensor& t : tensors)
    if (t.dtype() == dtype) group.pointers.push_back(t.data_ptr()), group.numels.push_back(t.numel());
  return group;
}

}  // namespace

void adamw_step(const std::vector<AdamWTensors>& tensors, const AdamWHyperparameters& h) {
  if (tensors.empty()) return;
  STRATA_CHECK(h.step >= 1, "adamw_step: step {} is not positive (the first step is 1)", h.step);
  const Device device = tensors.front().param.device();
  for (const AdamWTensors& t : tensors) {
    check_contiguous("adamw_step", t.param, "param");
    check_contiguous("adamw_step", t.grad, "grad");
    check_contiguous("adamw_step", t.exp_avg, "exp_avg");
    check_contiguous("adamw_step", t.exp_avg_sq, "exp_avg_sq");
    for (const Tensor* other : {&t.grad, &t.exp_avg, &t.exp_avg_sq}) {
      STRATA_CHECK(other->shape() == t.param.shape(), "adamw_step: param {} and {} differ in shape ({})", t.param.str(),
                   other->str(), t.param.name());
      check_same_device("adamw_step", tensors.front().param, *other);
    }
    check_same_device("adamw_step", tensors.front().param, t.param);
    STRATA_CHECK(t.exp_avg.dtype() == t.param.dtype() && t.exp_avg_sq.dtype() == t.param.dtype(),
                 "adamw_step: optimizer state {} and {} must have the dtype of param {}", t.exp_avg.str(),
                 t.exp_avg_sq.str(), t.param.str());
    bool supported = device.is_cpu()
                         ? (t.param.dtype() == DType::Float32 || t.param.dtype() == DType::Float64) &&
                               t.grad.dtype() == t.param.dtype()
                         : t.param.dtype() == DType::Float32 &&
                               (t.grad.dtype() == DType::Float32 || t.grad.dtype() == DType::BFloat16);
    STRATA_CHECK(supported,
                 "adamw_step: param {} with grad {} is not supported (CPU: float32 or float64 params with grads of "
                 "the same dtype; CUDA: float32 params with float32 or bfloat16 grads)",
                 t.param.str(), t.grad.str());
  }
  for (const AdamWTensors& t : tensors)
    for (const Tensor* written : {&t.param, &t.exp_avg, &t.exp_avg_sq}) written->storage().bump_version();

  if (device.is_cpu()) {
    for (const AdamWTensors& t : tensors) {
      if (t.param.dtype() == DType::Float32)
        adamw_step_cpu(t.param.data<float>(), t.grad.data<float>(), t.exp_avg.data<float>(),
                       t.exp_avg_sq.data<float>(), t.param.numel(), coefficients_for<float>(h), t.weight_decay);
      else
        adamw_step_cpu(t.param.data<double>(), t.grad.data<double>(), t.exp_avg.data<double>(),
                       t.exp_avg_sq.data<double>(), t.param.numel(), coefficients_for<double>(h), t.weight_decay);
    }
    return;
  }
#ifdef STRATA_WITH_CUDA
  Coefficients<float> c = coefficients_for<float>(h);
  AdamWCoefficients coefficients{c.beta1, c.one_minus_beta1, c.beta2, c.one_minus_beta2, c.eps,
                                 c.step_size, c.inv_sqrt_bias_correction2, c.decay_factor};
  for (DType grad_dtype : {DType::Float32, DType::BFloat16}) {
    std::vector<AdamWPointers> group;
    for (const AdamWTensors& t : tensors)
      if (t.grad.dtype() == grad_dtype)
        group.push_back(AdamWPointers{t.param.data<float>(), t.grad.data_ptr(), t.exp_avg.data<float>(),
                                      t.exp_avg_sq.data<float>(), t.param.numel(), t.weight_decay});
    if (!group.empty()) adamw_step_cuda(grad_dtype, group.data(), static_cast<int64_t>(group.size()), coefficients);
  }
#endif
}

double squared_norm(const std::vector<Tensor>& tensors) {
  if (tensors.empty()) return 0.0;
  check_multi_tensor("squared_norm", tensors);
  double sum = 0.0;
  if (tensors.front().device().is_cpu()) {
    for (const Tensor& t : tensors)
      sum += t.dtype() == DType::Float32 ? squared_norm_cpu(t.data<float>(), t.numel())
                                         : squared_norm_cpu(t.data<double>(), t.numel());
    return sum;
  }
#ifdef STRATA_WITH_CUDA
  // One reduction per dtype present (in practice one: all grads share a dtype).
  for (DType dtype : {DType::Float32, DType::BFloat16}) {
    Group group = group_of(tensors, dtype);
    if (group.count() == 0) continue;
    Device device = tensors.front().device();
    Tensor partials = Tensor::empty({squared_norm_cuda_blocks(group.numels.data(), group.count())}, DType::Float64,
                                    device);
    Tensor result = Tensor::empty({}, DType::Float64, device);
    squared_norm_cuda(dtype, group.pointers.data(), group.numels.data(), group.count(), partials.data<double>(),
                      result.data<double>());
    sum += result.item();
  }
#endif
  return sum;
}

void scale_in_place(const std::vector<Tensor>& tensors, double factor) {
  if (tensors.empty()) return;
  check_multi_tensor("scale_in_place", tensors);
  for (const Tensor& t : tensors) t.storage().bump_version();
  if (tensors.front().device().is_cpu()) {
    for (const Tensor& t : tensors) {
      if (t.dtype() == DType::Float32)
        scale_cpu(t.data<float>(), t.numel(), static_cast<float>(factor));
      else
        scale_cpu(t.data<double>(), t.numel(), factor);
    }
    return;
  }
#ifdef STRATA_WITH_CUDA
  for (DType dtype : {DType::Float32, DType::BFloat16}) {
    Group group = group_of(tensors, dtype);
    if (group.count() > 0)
      scale_in_place_cuda(dtype, group.pointers.data(), group.numels.data(), group.count(), static_cast<float>(factor));
  }
#endif
}

}  // namespace strata::kernels
