// The Mamba-2 ops: ssd_chunked and gated_rms_norm. Arguments are checked here (each
// message names the tensor, the shape it has and the one it needs), parameters and
// states are converted to the kernels' parameter dtype (float64 for float64
// activations, else float32), and the tape node calls the paired backward kernel.
//
// ssd_chunked saves its (contiguous) inputs only; the backward kernels recompute
// the chunk states (kernels/ssd/). gated_rms_norm saves x, z, weight and the
// per-group rstd.
#include "strata/ops/ssd.h"

#include "kernels/ssd/gated_rms_norm_cpu.h"
#include "kernels/ssd/ssd_cpu.h"
#include "ops/op_utils.h"
#include "ops/state_space_utils.h"
#include "strata/autograd/autograd.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/ssd/gated_rms_norm_cuda.h"
#include "kernels/ssd/ssd_cuda.h"
#endif

namespace strata::ops {

namespace {

using kernels::SsdGrads;
using kernels::SsdInputs;
using kernels::SsdSizes;

// The argument checks and kernel-argument helpers of op_utils.h and state_space_utils.h.
using namespace detail;

// ---- chunked SSD ------------------------------------------------------------------

// The inputs as the kernels take them: contiguous, activations in x's dtype,
// parameters and the initial state in the parameter dtype.
struct SsdTensors {
  Tensor x, dt, A, B, C, D, dt_bias, initial_state;
};

SsdSizes check_ssd_arguments(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                             const SsdOptions& options) {
  const char* op = "ssd_chunked";
  detail::check_defined(op, x, "x");
  detail::check_defined(op, dt, "dt");
  detail::check_defined(op, A, "A");
  detail::check_defined(op, B, "B");
  detail::check_defined(op, C, "C");
  check_rank(op, "x", x, 4, "(batch, length, heads, head_dim)");
  check_rank(op, "B", B, 4, "(batch, length, groups, d_state)");
  STRATA_CHECK(x.numel() > 0 && B.numel() > 0, "{}: x {} and B {} must not be empty", op, x.str(), B.str());
  SsdSizes sizes;
  sizes.batch = x.shape()[0];
  sizes.length = x.shape()[1];
  sizes.heads = x.shape()[2];
  sizes.head_dim = x.shape()[3];
  sizes.groups = B.shape()[2];
  sizes.d_state = B.shape()[3];
  sizes.chunk_size = options.chunk_size;
  sizes.dt_softplus = options.dt_softplus;
  STRATA_CHECK(options.chunk_size >= 1, "{}: chunk_size must be positive, got {}", op, options.chunk_size);
  check_shape(op, "dt", dt, {sizes.batch, sizes.length, sizes.heads}, "(batch, length, heads)");
  check_shape(op, "A", A, {sizes.heads}, "(heads)");
  check_shape(op, "B", B, {sizes.batch, sizes.length, sizes.groups, sizes.d_state}, "(batch, length, groups, d_state)");
  check_shape(op, "C", C, B.shape(), "(batch, length, groups, d_state)");
  STRATA_CHECK(sizes.heads % sizes.groups == 0, "{}: the {} heads of x {} are not divisible by the {} groups of B {}",
               op, sizes.heads, x.str(), sizes.groups, B.str());
  const Shape state_shape{sizes.batch, sizes.heads, sizes.head_dim, sizes.d_state};
  if (options.D.defined()) check_shape(op, "D", options.D, {sizes.heads}, "(heads)");
  if (options.dt_bias.defined()) check_shape(op, "dt_bias", options.dt_bias, {sizes.heads}, "(heads)");
  if (options.initial_state.defined())
    check_shape(op, "initial_state", options.initial_state, state_shape, "(batch, heads, head_dim, d_state)");

  detail::check_compute_dtype(op, x);
  check_activation(op, "dt", dt, x, "x");
  check_activation(op, "B", B, x, "x");
  check_activation(op, "C", C, x, "x");
  check_parameter(op, "A", A, x);
  if (options.D.defined()) check_parameter(op, "D", options.D, x);
  if (options.dt_bias.defined()) check_parameter(op, "dt_bias", options.dt_bias, x);
  if (options.initial_state.defined()) check_parameter(op, "initial_state", options.initial_state, x);
  return sizes;
}

template <class T>
SsdInputs<T, T> cpu_inputs(const SsdTensors& t) {
  return {pointer<T>(t.x), pointer<T>(t.dt), pointer<T>(t.A),       pointer<T>(t.B),
          pointer<T>(t.C), pointer<T>(t.D),  pointer<T>(t.dt_bias), pointer<T>(t.initial_state)};
}

#ifdef STRATA_WITH_CUDA
SsdInputs<void, float> cuda_inputs(const SsdTensors& t) {
  return {raw_pointer(t.x), raw_pointer(t.dt),   pointer<float>(t.A),       raw_pointer(t.B),
          raw_pointer(t.C), pointer<float>(t.D), pointer<float>(t.dt_bias), pointer<float>(t.initial_state)};
}
#endif

void ssd_forward(const SsdSizes& sizes, const SsdTensors& t, const Tensor& y, const Tensor& final_state) {
  if (t.x.device().is_cpu()) {
    for_cpu_dtype(t.x.dtype(), [&]<class T>(T) {
      kernels::ssd_forward_cpu(sizes, cpu_inputs<T>(t), y.data<T>(), pointer<T>(final_state));
    });
    return;
  }
#ifdef STRATA_WITH_CUDA
  Tensor workspace = Tensor::empty({kernels::ssd_forward_cuda_workspace(sizes)}, DType::Float32, t.x.device());
  bool supported = kernels::ssd_forward_cuda(t.x.dtype(), sizes, cuda_inputs(t), y.data_ptr(),
                                             pointer<float>(final_state), workspace.data<float>());
  STRATA_CHECK(supported, "ssd_chunked: {} is not supported on CUDA", t.x.str());
#endif
}

// Gradients in the order of the node's inputs (x, dt, A, B, C, D, dt_bias,
// initial_state); undefined for absent inputs. original_dtypes: the dtype of each
// input as given, which its gradient takes.
std::vector<Tensor> ssd_backward(const SsdSizes& sizes, const SsdTensors& t, const Tensor& grad_y,
                                 const Tensor& grad_final_state, const std::vector<DType>& original_dtypes) {
  const Device device = t.x.device();
  const DType value_dtype = t.x.dtype(), param_dtype = state_dtype_for(value_dtype);
  Tensor grad_out = grad_y.to(value_dtype).contiguous();
  Tensor grad_final = prepared(grad_final_state, param_dtype);
  auto like = [&](const Tensor& input, DType dtype) {
    return input.defined() ? Tensor::empty(input.shape(), dtype, device) : Tensor();
  };
  Tensor dx = like(t.x, value_dtype), ddt = like(t.dt, value_dtype), dA = like(t.A, param_dtype);
  Tensor dB = like(t.B, value_dtype), dC = like(t.C, value_dtype), dD = like(t.D, param_dtype);
  Tensor ddt_bias = like(t.dt_bias, param_dtype), dinitial = like(t.initial_state, param_dtype);

  if (device.is_cpu()) {
    for_cpu_dtype(value_dtype, [&]<class T>(T) {
      SsdGrads<T, T> grads{pointer<T>(dx), pointer<T>(ddt), pointer<T>(dA),       pointer<T>(dB),
                           pointer<T>(dC), pointer<T>(dD),  pointer<T>(ddt_bias), pointer<T>(dinitial)};
      kernels::ssd_backward_cpu(sizes, cpu_inputs<T>(t), grad_out.data<T>(), pointer<T>(grad_final), grads);
    });
  } else {
#ifdef STRATA_WITH_CUDA
    SsdGrads<void, float> grads{raw_pointer(dx),          raw_pointer(ddt),        pointer<float>(dA),
                                raw_pointer(dB),          raw_pointer(dC),         pointer<float>(dD),
                                pointer<float>(ddt_bias), pointer<float>(dinitial)};
    Tensor workspace = Tensor::empty({kernels::ssd_backward_cuda_workspace(sizes)}, DType::Float32, device);
    bool supported = kernels::ssd_backward_cuda(value_dtype, sizes, cuda_inputs(t), grad_out.data_ptr(),
                                                pointer<float>(grad_final), grads, workspace.data<float>());
    STRATA_CHECK(supported, "ssd_chunked backward: {} is not supported on CUDA", t.x.str());
#endif
  }
  std::vector<Tensor> grads{dx, ddt, dA, dB, dC, dD, ddt_bias, dinitial};
  for (size_t i = 0; i < grads.size(); ++i)
    if (grads[i].defined()) grads[i] = grads[i].to(original_dtypes[i]);
  return grads;
}

// ---- gated RMSNorm ------------------------------------------------------------------

struct NormSizes {
  int64_t rows = 0, dim = 0, group_size = 0;
};

NormSizes check_norm_arguments(const Tensor& x, const Tensor& z, const Tensor& weight, int64_t group_size) {
  const char* op = "gated_rms_norm";
  detail::check_defined(op, x, "x");
  STRATA_CHECK(x.dim() >= 1 && x.size(-1) > 0, "{}: x {} has no last dim to normalise over", op, x.str());
  detail::check_compute_dtype(op, x);
  NormSizes sizes;
  sizes.dim = x.size(-1);
  sizes.rows = x.numel() / sizes.dim;
  sizes.group_size = group_size == 0 ? sizes.dim : group_size;
  STRATA_CHECK(group_size >= 0 && sizes.dim % sizes.group_size == 0,
               "{}: group_size {} does not divide the last dim of x {} (0 means the whole dim)", op, group_size,
               x.str());
  if (z.defined()) {
    STRATA_CHECK(z.shape() == x.shape(), "{}: z {} must have the shape of x {}", op, z.str(), x.str());
    check_activation(op, "z", z, x, "x");
  }
  if (weight.defined()) {
    check_shape(op, "weight", weight, {sizes.dim}, "(dim)");
    check_activation(op, "weight", weight, x, "x");
  }
  return sizes;
}

// Gradients of x, z and weight (undefined where the forward had no z or weight).
std::vector<Tensor> norm_backward(const NormSizes& sizes, const Tensor& grad, const Tensor& x, const Tensor& z,
                                  const Tensor& weight, const Tensor& rstd) {
  const Device device = x.device();
  Tensor dy = grad.to(x.dtype()).contiguous();
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), device);
  Tensor dz = z.defined() ? Tensor::empty(z.shape(), z.dtype(), device) : Tensor();
  Tensor dweight = weight.defined() ? Tensor::empty(weight.shape(), weight.dtype(), device) : Tensor();
  if (device.is_cpu()) {
    for_cpu_dtype(x.dtype(), [&]<class T>(T) {
      kernels::gated_rms_norm_backward_cpu<T>(dy.data<T>(), x.data<T>(), pointer<T>(z), pointer<T>(weight),
                                              rstd.data<T>(), dx.data<T>(), pointer<T>(dz), pointer<T>(dweight),
                                              sizes.rows, sizes.dim, sizes.group_size);
    });
  } else {
#ifdef STRATA_WITH_CUDA
    Tensor workspace =
        Tensor::empty({kernels::gated_rms_norm_cuda_workspace(sizes.rows, sizes.dim)}, DType::Float32, device);
    bool supported = kernels::gated_rms_norm_backward_cuda(
        x.dtype(), dy.data_ptr(), x.data_ptr(), raw_pointer(z), raw_pointer(weight), rstd.data<float>(), dx.data_ptr(),
        raw_pointer(dz), raw_pointer(dweight), workspace.data<float>(), sizes.rows, sizes.dim, sizes.group_size);
    STRATA_CHECK(supported, "gated_rms_norm backward: {} is not supported on CUDA", x.str());
#endif
  }
  return {dx, dz, dweight};
}

}  // namespace

SsdResult ssd_chunked(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                      const SsdOptions& options) {
  const SsdSizes sizes = check_ssd_arguments(x, dt, A, B, C, options);
  const Device device = x.device();
  const DType param_dtype = state_dtype_for(x.dtype());
  SsdTensors saved{kept(x),
                   kept(dt),
                   prepared(A, param_dtype),
                   kept(B),
                   kept(C),
                   prepared(options.D, param_dtype),
                   prepared(options.dt_bias, param_dtype),
                   prepared(options.initial_state, param_dtype)};
  SsdResult result;
  result.y = Tensor::empty(x.shape(), x.dtype(), device);
  if (options.return_final_state)
    result.final_state = Tensor::empty({sizes.batch, sizes.heads, sizes.head_dim, sizes.d_state}, param_dtype, device);
  ssd_forward(sizes, saved, result.y, result.final_state);

  std::vector<Tensor> inputs{x, dt, A, B, C, options.D, options.dt_bias, options.initial_state};
  if (!autograd::needs_grad(inputs)) return result;
  std::vector<DType> original_dtypes;
  for (const Tensor& t : inputs) original_dtypes.push_back(t.defined() ? t.dtype() : x.dtype());
  std::vector<Tensor> outputs{result.y};
  if (options.return_final_state) outputs.push_back(result.final_state);
  autograd::record("ssd_chunked", inputs, outputs, [sizes, saved, original_dtypes](const std::vector<Tensor>& grads) {
    return ssd_backward(sizes, saved, grads[0], grads.size() > 1 ? grads[1] : Tensor(), original_dtypes);
  });
  result.y = outputs[0];
  if (options.return_final_state) result.final_state = outputs[1];
  return result;
}

Tensor gated_rms_norm(const Tensor& x, const Tensor& z, const Tensor& weight, double eps, int64_t group_size) {
  const NormSizes sizes = check_norm_arguments(x, z, weight, group_size);
  const Device device = x.device();
  const DType stats_dtype = state_dtype_for(x.dtype());
  Tensor x_saved = kept(x), z_saved = kept(z), weight_saved = kept(weight);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), device);
  Tensor rstd = Tensor::empty({sizes.rows, sizes.dim / sizes.group_size}, stats_dtype, device);
  if (device.is_cpu()) {
    for_cpu_dtype(x.dtype(), [&]<class T>(T) {
      kernels::gated_rms_norm_forward_cpu<T>(x_saved.data<T>(), pointer<T>(z_saved), pointer<T>(weight_saved),
                                             y.data<T>(), rstd.data<T>(), sizes.rows, sizes.dim, sizes.group_size, eps);
    });
  } else {
#ifdef STRATA_WITH_CUDA
    bool supported = kernels::gated_rms_norm_forward_cuda(x.dtype(), x_saved.data_ptr(), raw_pointer(z_saved),
                                                          raw_pointer(weight_saved), y.data_ptr(), rstd.data<float>(),
                                                          sizes.rows, sizes.dim, sizes.group_size, eps);
    STRATA_CHECK(supported, "gated_rms_norm: {} is not supported on CUDA", x.str());
#endif
  }
  autograd::record("gated_rms_norm", {x, z, weight}, y,
                   [sizes, x_saved, z_saved, weight_saved, rstd](const Tensor& grad) {
                     return norm_backward(sizes, grad, x_saved, z_saved, weight_saved, rstd);
                   });
  return y;
}

}  // namespace strata::ops
