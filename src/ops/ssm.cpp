// The state-space ops: selective_scan (Mamba-1 / S6) and causal_conv1d, each with a
// one-token step. Arguments are checked here (each message names the tensor and
// the shape it has against the one it needs), parameters and states are converted
// to the kernels' state dtype (float64 for float64 activations, else float32), and
// the tape node calls the paired backward kernel.
//
// selective_scan saves its (contiguous) inputs and, on CUDA, the state at each
// chunk boundary (batch, d_inner, n_chunks, N) float32; the backward kernels
// recompute every other state from them (kernels/selective_scan/).
// selective_scan_routes folds its K routes into the channels (views of contiguous
// inputs) and runs the same kernels with a per-route direction.
#include "strata/ops/ssm.h"

#include "kernels/causal_conv1d/causal_conv1d_cpu.h"
#include "kernels/selective_scan/selective_scan_cpu.h"
#include "ops/op_utils.h"
#include "ops/state_space_utils.h"
#include "strata/autograd/autograd.h"
#include "strata/ops/ops.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/causal_conv1d/causal_conv1d_cuda.h"
#include "kernels/selective_scan/selective_scan_cuda.h"
#endif

namespace strata::ops {

namespace {

using kernels::CausalConv1dSizes;
using kernels::SelectiveScanGrads;
using kernels::SelectiveScanInputs;
using kernels::SelectiveScanOutputs;
using kernels::SelectiveScanSizes;

// The argument checks and kernel-argument helpers of op_utils.h and state_space_utils.h.
using namespace detail;

// ---- selective scan -------------------------------------------------------------

// The inputs of a scan as the kernels take them: contiguous, activations in their
// dtype, parameters and the initial state in the state dtype.
struct ScanTensors {
  Tensor u, delta, A, B, C, D, z, delta_bias, initial_state;
};

// The ScanTensors of the given inputs; optional ones may be undefined.
ScanTensors kernel_tensors(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                           const Tensor& D, const Tensor& z, const Tensor& delta_bias, const Tensor& initial_state) {
  const DType state_dtype = state_dtype_for(u.dtype());
  return {kept(u),
          kept(delta),
          prepared(A, state_dtype),
          kept(B),
          kept(C),
          prepared(D, state_dtype),
          kept(z),
          prepared(delta_bias, state_dtype),
          prepared(initial_state, state_dtype)};
}

// Checks the arguments of selective_scan (with_length) or of one step (the same
// shapes without the trailing length dim) and returns the sizes.
SelectiveScanSizes check_scan_arguments(const char* op, bool with_length, const Tensor& u, const Tensor& delta,
                                        const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
                                        const Tensor& z, const Tensor& delta_bias) {
  detail::check_defined(op, u, "u");
  detail::check_defined(op, delta, "delta");
  detail::check_defined(op, A, "A");
  detail::check_defined(op, B, "B");
  detail::check_defined(op, C, "C");
  const char* activation_layout = with_length ? "(batch, d_inner, length)" : "(batch, d_inner)";
  const char* bc_layout = with_length ? "(batch, groups, N, length)" : "(batch, groups, N)";
  check_rank(op, "u", u, with_length ? 3 : 2, activation_layout);
  check_rank(op, "A", A, 2, "(d_inner, N)");
  check_rank(op, "B", B, with_length ? 4 : 3, bc_layout);
  STRATA_CHECK(u.numel() > 0 && A.numel() > 0 && B.numel() > 0, "{}: u {}, A {} and B {} must not be empty", op,
               u.str(), A.str(), B.str());

  SelectiveScanSizes sizes;
  sizes.batch = u.shape()[0];
  sizes.d_inner = u.shape()[1];
  sizes.length = with_length ? u.shape()[2] : 1;
  sizes.d_state = A.shape()[1];
  sizes.groups = B.shape()[1];
  auto activation_shape = [&](Shape shape) {
    if (with_length) shape.push_back(sizes.length);
    return shape;
  };
  check_shape(op, "delta", delta, u.shape(), activation_layout);
  check_shape(op, "A", A, {sizes.d_inner, sizes.d_state}, "(d_inner, N)");
  check_shape(op, "B", B, activation_shape({sizes.batch, sizes.groups, sizes.d_state}), bc_layout);
  check_shape(op, "C", C, B.shape(), bc_layout);
  STRATA_CHECK(sizes.d_inner % sizes.groups == 0, "{}: d_inner {} of u {} is not divisible by the {} groups of B {}",
               op, sizes.d_inner, u.str(), sizes.groups, B.str());
  if (D.defined()) check_shape(op, "D", D, {sizes.d_inner}, "(d_inner)");
  if (z.defined()) check_shape(op, "z", z, u.shape(), activation_layout);
  if (delta_bias.defined()) check_shape(op, "delta_bias", delta_bias, {sizes.d_inner}, "(d_inner)");

  detail::check_compute_dtype(op, u);
  check_activation(op, "delta", delta, u, "u");
  check_activation(op, "B", B, u, "u");
  check_activation(op, "C", C, u, "u");
  if (z.defined()) check_activation(op, "z", z, u, "u");
  check_parameter(op, "A", A, u);
  if (D.defined()) check_parameter(op, "D", D, u);
  if (delta_bias.defined()) check_parameter(op, "delta_bias", delta_bias, u);
#ifdef STRATA_WITH_CUDA
  if (u.device().is_cuda())
    STRATA_CHECK(sizes.d_state <= kernels::kSelectiveScanCudaMaxState, "{}: N = {} (A {}) exceeds {} on CUDA", op,
                 sizes.d_state, A.str(), kernels::kSelectiveScanCudaMaxState);
#endif
  return sizes;
}

template <class T>
SelectiveScanInputs<T, T> cpu_inputs(const ScanTensors& t) {
  return {pointer<T>(t.u), pointer<T>(t.delta),      pointer<T>(t.A),
          pointer<T>(t.B), pointer<T>(t.C),          pointer<T>(t.D),
          pointer<T>(t.z), pointer<T>(t.delta_bias), pointer<T>(t.initial_state)};
}

#ifdef STRATA_WITH_CUDA
SelectiveScanInputs<void, float> cuda_inputs(const ScanTensors& t) {
  return {raw_pointer(t.u),
          raw_pointer(t.delta),
          pointer<float>(t.A),
          raw_pointer(t.B),
          raw_pointer(t.C),
          pointer<float>(t.D),
          raw_pointer(t.z),
          pointer<float>(t.delta_bias),
          pointer<float>(t.initial_state)};
}
#endif

// y and (when defined) the final state and the per-step states; checkpoints (CUDA
// only) when a backward pass will follow.
void scan_forward(const SelectiveScanSizes& sizes, const ScanTensors& t, const SelectiveScanResult& result,
                  const Tensor& checkpoints) {
  if (t.u.device().is_cpu()) {
    for_cpu_dtype(t.u.dtype(), [&]<class T>(T) {
      kernels::selective_scan_forward_cpu(
          sizes, cpu_inputs<T>(t),
          SelectiveScanOutputs<T, T>{result.y.data<T>(), pointer<T>(result.final_state), pointer<T>(result.states)});
    });
    return;
  }
#ifdef STRATA_WITH_CUDA
  SelectiveScanOutputs<void, float> outputs{result.y.data_ptr(), pointer<float>(result.final_state),
                                            pointer<float>(result.states)};
  bool supported =
      kernels::selective_scan_forward_cuda(t.u.dtype(), sizes, cuda_inputs(t), outputs, pointer<float>(checkpoints));
  STRATA_CHECK(supported, "selective_scan: {} is not supported on CUDA", t.u.str());
#endif
}

// Gradients in the order of the node's inputs (u, delta, A, B, C, D, z, delta_bias,
// initial_state); undefined for absent inputs. grad_final_state and grad_states are
// undefined when those were not outputs. original_dtypes: the dtype of each input
// as given, which its gradient takes.
std::vector<Tensor> scan_backward(const SelectiveScanSizes& sizes, const ScanTensors& t, const Tensor& checkpoints,
                                  const Tensor& grad_y, const Tensor& grad_final_state, const Tensor& grad_states,
                                  const std::vector<DType>& original_dtypes) {
  const Device device = t.u.device();
  const DType value_dtype = t.u.dtype(), state_dtype = state_dtype_for(value_dtype);
  const Shape activation_shape = t.u.shape(), state_shape{sizes.batch, sizes.d_inner, sizes.d_state};
  Tensor grad_out = grad_y.to(value_dtype).contiguous();
  Tensor grad_final = prepared(grad_final_state, state_dtype);
  Tensor grad_per_step = prepared(grad_states, state_dtype);

  Tensor du = Tensor::empty(activation_shape, value_dtype, device);
  Tensor ddelta = Tensor::empty(activation_shape, value_dtype, device);
  Tensor dz = t.z.defined() ? Tensor::empty(activation_shape, value_dtype, device) : Tensor();
  Tensor dA = Tensor::zeros(t.A.shape(), state_dtype, device);
  Tensor dB = Tensor::zeros(t.B.shape(), state_dtype, device);
  Tensor dC = Tensor::zeros(t.C.shape(), state_dtype, device);
  Tensor dD = t.D.defined() ? Tensor::zeros(t.D.shape(), state_dtype, device) : Tensor();
  Tensor ddelta_bias = t.delta_bias.defined() ? Tensor::zeros(t.delta_bias.shape(), state_dtype, device) : Tensor();
  Tensor dinitial = t.initial_state.defined() ? Tensor::empty(state_shape, state_dtype, device) : Tensor();

  if (device.is_cpu()) {
    for_cpu_dtype(value_dtype, [&]<class T>(T) {
      SelectiveScanGrads<T, T> grads{pointer<T>(du), pointer<T>(ddelta),      pointer<T>(dz),
                                     pointer<T>(dA), pointer<T>(dB),          pointer<T>(dC),
                                     pointer<T>(dD), pointer<T>(ddelta_bias), pointer<T>(dinitial)};
      SelectiveScanOutputs<const T, const T> output_grads{grad_out.data<T>(), pointer<T>(grad_final),
                                                          pointer<T>(grad_per_step)};
      kernels::selective_scan_backward_cpu(sizes, cpu_inputs<T>(t), output_grads, grads);
    });
  } else {
#ifdef STRATA_WITH_CUDA
    SelectiveScanGrads<void, float> grads{raw_pointer(du),    raw_pointer(ddelta),         raw_pointer(dz),
                                          pointer<float>(dA), pointer<float>(dB),          pointer<float>(dC),
                                          pointer<float>(dD), pointer<float>(ddelta_bias), pointer<float>(dinitial)};
    SelectiveScanOutputs<const void, const float> output_grads{grad_out.data_ptr(), pointer<float>(grad_final),
                                                               pointer<float>(grad_per_step)};
    bool supported = kernels::selective_scan_backward_cuda(value_dtype, sizes, cuda_inputs(t),
                                                           checkpoints.data<float>(), output_grads, grads);
    STRATA_CHECK(supported, "selective_scan backward: {} is not supported on CUDA", t.u.str());
#endif
  }
  std::vector<Tensor> grads{du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial};
  for (size_t i = 0; i < grads.size(); ++i)
    if (grads[i].defined()) grads[i] = grads[i].to(original_dtypes[i]);
  return grads;
}

// ---- causal conv1d --------------------------------------------------------------

// Checks x (batch, channels[, length]) against weight and bias; returns the sizes.
CausalConv1dSizes check_conv_arguments(const char* op, bool with_length, const Tensor& x, const Tensor& weight,
                                       const Tensor& bias, bool silu) {
  detail::check_defined(op, x, "x");
  detail::check_defined(op, weight, "weight");
  check_rank(op, "x", x, with_length ? 3 : 2, with_length ? "(batch, channels, length)" : "(batch, channels)");
  check_rank(op, "weight", weight, 2, "(channels, kernel_size)");
  CausalConv1dSizes sizes;
  sizes.batch = x.shape()[0];
  sizes.channels = x.shape()[1];
  sizes.length = with_length ? x.shape()[2] : 1;
  sizes.kernel_size = weight.shape()[1];
  sizes.silu = silu;
  check_shape(op, "weight", weight, {sizes.channels, sizes.kernel_size}, "(channels, kernel_size)");
  STRATA_CHECK(sizes.kernel_size >= 2 && sizes.kernel_size <= kernels::kCausalConv1dMaxKernel,
               "{}: kernel_size {} of weight {} is outside 2..{}", op, sizes.kernel_size, weight.str(),
               kernels::kCausalConv1dMaxKernel);
  if (bias.defined()) check_shape(op, "bias", bias, {sizes.channels}, "(channels)");
  detail::check_compute_dtype(op, x);
  check_parameter(op, "weight", weight, x);
  if (bias.defined()) check_parameter(op, "bias", bias, x);
  return sizes;
}

std::vector<Tensor> conv_backward(const CausalConv1dSizes& sizes, const Tensor& x, const Tensor& weight,
                                  const Tensor& bias, const Tensor& grad_y, DType weight_dtype, DType bias_dtype) {
  const Device device = x.device();
  const DType state_dtype = state_dtype_for(x.dtype());
  Tensor grad_out = grad_y.to(x.dtype()).contiguous();
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), device);
  Tensor dweight = Tensor::zeros(weight.shape(), state_dtype, device);
  Tensor dbias = bias.defined() ? Tensor::zeros(bias.shape(), state_dtype, device) : Tensor();
  if (device.is_cpu()) {
    for_cpu_dtype(x.dtype(), [&]<class T>(T) {
      kernels::causal_conv1d_backward_cpu(sizes, x.data<T>(), weight.data<T>(), pointer<T>(bias), grad_out.data<T>(),
                                          dx.data<T>(), dweight.data<T>(), pointer<T>(dbias));
    });
  } else {
#ifdef STRATA_WITH_CUDA
    bool supported = kernels::causal_conv1d_backward_cuda(x.dtype(), sizes, x.data_ptr(), weight.data<float>(),
                                                          pointer<float>(bias), grad_out.data_ptr(), dx.data_ptr(),
                                                          dweight.data<float>(), pointer<float>(dbias));
    STRATA_CHECK(supported, "causal_conv1d backward: {} is not supported on CUDA", x.str());
#endif
  }
  return {dx, dweight.to(weight_dtype), bias.defined() ? dbias.to(bias_dtype) : Tensor()};
}

}  // namespace

namespace {

// selective_scan over `routes` routes folded into the channels (1 for a plain scan);
// bit r of reversed_routes reverses route r.
SelectiveScanResult scan_routes_folded(const char* op, const Tensor& u, const Tensor& delta, const Tensor& A,
                                       const Tensor& B, const Tensor& C, const SelectiveScanOptions& options,
                                       int64_t routes, uint64_t reversed_routes) {
  SelectiveScanSizes sizes =
      check_scan_arguments(op, true, u, delta, A, B, C, options.D, options.z, options.delta_bias);
  sizes.delta_softplus = options.delta_softplus;
  sizes.reverse = options.reverse;
  sizes.routes = routes;
  sizes.reversed_routes = reversed_routes;
  const Shape state_shape{sizes.batch, sizes.d_inner, sizes.d_state};
  if (options.initial_state.defined()) {
    check_shape(op, "initial_state", options.initial_state, state_shape, "(batch, d_inner, N)");
    check_parameter(op, "initial_state", options.initial_state, u);
  }

  const Device device = u.device();
  const DType state_dtype = state_dtype_for(u.dtype());
  ScanTensors saved = kernel_tensors(u, delta, A, B, C, options.D, options.z, options.delta_bias,
                                     options.initial_state);
  std::vector<Tensor> inputs{u, delta, A, B, C, options.D, options.z, options.delta_bias, options.initial_state};
  const bool recording = autograd::needs_grad(inputs);

  SelectiveScanResult result;
  result.y = Tensor::empty(u.shape(), u.dtype(), device);
  if (options.return_final_state) result.final_state = Tensor::empty(state_shape, state_dtype, device);
  if (options.return_states)
    result.states = Tensor::empty({sizes.batch, sizes.d_inner, sizes.length, sizes.d_state}, state_dtype, device);
  Tensor checkpoints;
#ifdef STRATA_WITH_CUDA
  if (device.is_cuda() && recording) {
    int64_t chunk = kernels::selective_scan_cuda_chunk_length(sizes.d_state);
    checkpoints = Tensor::empty({sizes.batch, sizes.d_inner, (sizes.length + chunk - 1) / chunk, sizes.d_state},
                                DType::Float32, device);
  }
#endif
  scan_forward(sizes, saved, result, checkpoints);
  if (!recording) return result;

  std::vector<DType> original_dtypes;
  for (const Tensor& t : inputs) original_dtypes.push_back(t.defined() ? t.dtype() : u.dtype());
  // The node's outputs: y, then the final state and the per-step states when asked for.
  std::vector<Tensor> outputs{result.y};
  if (options.return_final_state) outputs.push_back(result.final_state);
  if (options.return_states) outputs.push_back(result.states);
  const bool with_final = options.return_final_state, with_states = options.return_states;
  auto backward = [sizes, saved, checkpoints, original_dtypes, with_final,
                   with_states](const std::vector<Tensor>& grads) {
    const Tensor grad_final = with_final ? grads[1] : Tensor();
    const Tensor grad_states = with_states ? grads[with_final ? 2 : 1] : Tensor();
    return scan_backward(sizes, saved, checkpoints, grads[0], grad_final, grad_states, original_dtypes);
  };
  autograd::record(op, inputs, outputs, backward);
  result.y = outputs[0];
  if (with_final) result.final_state = outputs[1];
  if (with_states) result.states = outputs[with_final ? 2 : 1];
  return result;
}

}  // namespace

SelectiveScanResult selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                   const Tensor& C, const SelectiveScanOptions& options) {
  return scan_routes_folded("selective_scan", u, delta, A, B, C, options, 1, 0);
}

SelectiveScanResult selective_scan_routes(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                          const Tensor& C, const std::vector<bool>& reversed,
                                          const SelectiveScanOptions& options) {
  const char* op = "selective_scan_routes";
  detail::check_defined(op, u, "u");
  detail::check_defined(op, A, "A");
  detail::check_defined(op, B, "B");
  check_rank(op, "u", u, 4, "(batch, K, d_inner, length)");
  check_rank(op, "A", A, 3, "(K, d_inner, N)");
  check_rank(op, "B", B, 5, "(batch, K, groups, N, length)");
  const int64_t batch = u.shape()[0], routes = u.shape()[1], d_inner = u.shape()[2], length = u.shape()[3];
  const int64_t d_state = A.shape()[2], groups = B.shape()[2];
  STRATA_CHECK(routes >= 1 && routes <= 64, "{}: K = {} routes (u {}) must be in 1..64", op, routes, u.str());
  STRATA_CHECK(reversed.empty() || static_cast<int64_t>(reversed.size()) == routes,
               "{}: {} reversed flags for the K = {} routes of u {}", op, reversed.size(), routes, u.str());
  STRATA_CHECK(!options.reverse, "{}: options.reverse must be false (the reversed flags give each route's direction)",
               op);
  // The routes' own shapes, checked here so that messages name them rather than the folded ones.
  const Shape activation{batch, routes, d_inner, length}, per_route{routes, d_inner};
  check_shape(op, "A", A, {routes, d_inner, d_state}, "(K, d_inner, N)");
  check_shape(op, "B", B, {batch, routes, groups, d_state, length}, "(batch, K, groups, N, length)");
  if (delta.defined()) check_shape(op, "delta", delta, activation, "(batch, K, d_inner, length)");
  if (C.defined()) check_shape(op, "C", C, B.shape(), "(batch, K, groups, N, length)");
  if (options.z.defined()) check_shape(op, "z", options.z, activation, "(batch, K, d_inner, length)");
  if (options.D.defined()) check_shape(op, "D", options.D, per_route, "(K, d_inner)");
  if (options.delta_bias.defined()) check_shape(op, "delta_bias", options.delta_bias, per_route, "(K, d_inner)");
  if (options.initial_state.defined())
    check_shape(op, "initial_state", options.initial_state, {batch, routes, d_inner, d_state},
                "(batch, K, d_inner, N)");
  STRATA_CHECK(groups > 0 && d_inner % groups == 0,
               "{}: d_inner {} of u {} is not divisible by the {} groups of B {}", op, d_inner, u.str(), groups,
               B.str());

  uint64_t reversed_routes = 0;
  for (size_t k = 0; k < reversed.size(); ++k)
    if (reversed[k]) reversed_routes |= uint64_t{1} << k;
  auto fold = [](const Tensor& t, const Shape& shape) { return t.defined() ? reshape(t, shape) : Tensor(); };
  const Shape folded_activation{batch, routes * d_inner, length}, folded_bc{batch, routes * groups, d_state, length};
  SelectiveScanOptions folded = options;
  folded.z = fold(options.z, folded_activation);
  folded.D = fold(options.D, {routes * d_inner});
  folded.delta_bias = fold(options.delta_bias, {routes * d_inner});
  folded.initial_state = fold(options.initial_state, {batch, routes * d_inner, d_state});
  SelectiveScanResult result = scan_routes_folded(
      op, fold(u, folded_activation), fold(delta, folded_activation), fold(A, {routes * d_inner, d_state}),
      fold(B, folded_bc), fold(C, folded_bc), folded, routes, reversed_routes);
  result.y = reshape(result.y, activation);
  if (result.final_state.defined()) result.final_state = reshape(result.final_state, {batch, routes, d_inner, d_state});
  if (result.states.defined()) result.states = reshape(result.states, {batch, routes, d_inner, length, d_state});
  return result;
}

Tensor selective_scan_step(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                           const Tensor& C, const SelectiveScanStepOptions& options) {
  const char* op = "selective_scan_step";
  SelectiveScanSizes sizes =
      check_scan_arguments(op, false, u, delta, A, B, C, options.D, options.z, options.delta_bias);
  sizes.delta_softplus = options.delta_softplus;
  detail::check_defined(op, state, "state");
  const DType state_dtype = state_dtype_for(u.dtype());
  check_shape(op, "state", state, {sizes.batch, sizes.d_inner, sizes.d_state}, "(batch, d_inner, N)");
  detail::check_same_device(op, u, state);
  STRATA_CHECK(state.dtype() == state_dtype && state.is_contiguous(), "{}: state {} must be a contiguous {} tensor", op,
               state.str(), dtype_name(state_dtype));
  STRATA_CHECK(!autograd::needs_grad({&state, &u, &delta, &A, &B, &C, &options.D, &options.z, &options.delta_bias}),
               "{}: is not differentiable (it updates its state in place); call it under autograd::NoGradGuard", op);

  ScanTensors t = kernel_tensors(u, delta, A, B, C, options.D, options.z, options.delta_bias, Tensor());
  Tensor y = Tensor::empty(u.shape(), u.dtype(), u.device());
  state.storage().bump_version();
  if (u.device().is_cpu()) {
    // The scan over one position, reading its initial state from `state` and writing
    // its final state there (the CPU kernel allows the two to alias).
    for_cpu_dtype(u.dtype(), [&]<class T>(T) {
      SelectiveScanInputs<T, T> inputs = cpu_inputs<T>(t);
      inputs.initial_state = state.data<T>();
      kernels::selective_scan_forward_cpu(sizes, inputs,
                                          SelectiveScanOutputs<T, T>{y.data<T>(), state.data<T>(), nullptr});
    });
  } else {
#ifdef STRATA_WITH_CUDA
    bool supported =
        kernels::selective_scan_step_cuda(u.dtype(), sizes, cuda_inputs(t), state.data<float>(), y.data_ptr());
    STRATA_CHECK(supported, "{}: {} is not supported on CUDA", op, u.str());
#endif
  }
  return y;
}

Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu) {
  const char* op = "causal_conv1d";
  CausalConv1dSizes sizes = check_conv_arguments(op, true, x, weight, bias, silu);
  const DType state_dtype = state_dtype_for(x.dtype());
  Tensor x_saved = x.contiguous(), weight_saved = prepared(weight, state_dtype),
         bias_saved = prepared(bias, state_dtype);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    for_cpu_dtype(x.dtype(), [&]<class T>(T) {
      kernels::causal_conv1d_forward_cpu(sizes, x_saved.data<T>(), weight_saved.data<T>(), pointer<T>(bias_saved),
                                         y.data<T>());
    });
  } else {
#ifdef STRATA_WITH_CUDA
    bool supported = kernels::causal_conv1d_forward_cuda(
        x.dtype(), sizes, x_saved.data_ptr(), weight_saved.data<float>(), pointer<float>(bias_saved), y.data_ptr());
    STRATA_CHECK(supported, "{}: {} is not supported on CUDA", op, x.str());
#endif
  }
  const DType weight_dtype = weight.dtype(), bias_dtype = bias.defined() ? bias.dtype() : weight.dtype();
  autograd::record(op, {x, weight, bias}, y,
                   [sizes, x_saved, weight_saved, bias_saved, weight_dtype, bias_dtype](const Tensor& grad) {
                     return conv_backward(sizes, x_saved, weight_saved, bias_saved, grad, weight_dtype, bias_dtype);
                   });
  return y;
}

Tensor causal_conv1d_step(const Tensor& conv_state, const Tensor& x, const Tensor& weight, const Tensor& bias,
                          bool silu) {
  const char* op = "causal_conv1d_step";
  CausalConv1dSizes sizes = check_conv_arguments(op, false, x, weight, bias, silu);
  detail::check_defined(op, conv_state, "conv_state");
  check_shape(op, "conv_state", conv_state, {sizes.batch, sizes.channels, sizes.kernel_size - 1},
              "(batch, channels, kernel_size - 1)");
  detail::check_same_device(op, x, conv_state);
  STRATA_CHECK(conv_state.dtype() == x.dtype() && conv_state.is_contiguous(),
               "{}: conv_state {} must be a contiguous {} tensor", op, conv_state.str(), dtype_name(x.dtype()));
  STRATA_CHECK(!autograd::needs_grad({&conv_state, &x, &weight, &bias}),
               "{}: is not differentiable (it updates its state in place); call it under autograd::NoGradGuard", op);
  const DType state_dtype = state_dtype_for(x.dtype());
  Tensor x_c = x.contiguous(), weight_c = prepared(weight, state_dtype), bias_c = prepared(bias, state_dtype);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  conv_state.storage().bump_version();
  if (x.device().is_cpu()) {
    for_cpu_dtype(x.dtype(), [&]<class T>(T) {
      kernels::causal_conv1d_step_cpu(sizes, conv_state.data<T>(), x_c.data<T>(), weight_c.data<T>(),
                                      pointer<T>(bias_c), y.data<T>());
    });
  } else {
#ifdef STRATA_WITH_CUDA
    bool supported = kernels::causal_conv1d_step_cuda(x.dtype(), sizes, conv_state.data_ptr(), x_c.data_ptr(),
                                                      weight_c.data<float>(), pointer<float>(bias_c), y.data_ptr());
    STRATA_CHECK(supported, "{}: {} is not supported on CUDA", op, x.str());
#endif
  }
  return y;
}

}  // namespace strata::ops
