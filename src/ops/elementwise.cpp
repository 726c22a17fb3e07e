// Element-wise ops with NumPy broadcasting: add, sub, mul, div, the scalar forms,
// the activations and masked_fill. Inputs are read in place through their strides
// (0 on broadcast dims), so views and broadcasts cost no copy; outputs are dense.
// Backward: the gradient of a broadcast input is summed back to its shape
// (detail::reduce_to_shape); unary ops save the minimum their derivative needs
// (exp, tanh, sigmoid, sqrt and rsqrt their output, the others their input) and
// compute the input gradient with one fused (grad, saved) kernel.
#include "kernels/elementwise/elementwise_cpu.h"
#ifdef STRATA_WITH_CUDA
#include "kernels/elementwise/elementwise_cuda.h"
#endif
#include "ops/op_utils.h"
#include "strata/ops/ops.h"

namespace strata::ops {

namespace {

using kernels::BinaryOp;
using kernels::ElementwiseLayout;
using kernels::UnaryOp;

// The layout of a dense output of `shape` read from inputs with `input_strides`
// (aligned to `shape`). Size-1 dims are dropped and neighbouring dims merged where
// every input steps through them as one, so a dense input becomes one dim of
// stride 1 (the kernels' fast path) and a broadcast row a short loop nest.
ElementwiseLayout make_layout(const Shape& shape, const std::vector<Shape>& input_strides) {
  ElementwiseLayout layout;
  layout.numel = shape_numel(shape);
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    int previous = layout.ndim - 1;
    bool mergeable = previous >= 0;
    for (size_t k = 0; k < input_strides.size() && mergeable; ++k)
      mergeable = layout.strides[k][previous] == input_strides[k][d] * shape[d];
    if (mergeable) {
      layout.shape[previous] *= shape[d];
      for (size_t k = 0; k < input_strides.size(); ++k) layout.strides[k][previous] = input_strides[k][d];
    } else {
      layout.shape[layout.ndim] = shape[d];
      for (size_t k = 0; k < input_strides.size(); ++k) layout.strides[k][layout.ndim] = input_strides[k][d];
      ++layout.ndim;
    }
  }
  if (layout.ndim == 0) {  // a single element
    layout.ndim = 1;
    layout.shape[0] = 1;
    for (size_t k = 0; k < input_strides.size(); ++k) layout.strides[k][0] = 1;
  }
  return layout;
}

// The raw (unrecorded) kernels behind the ops and their backward functions.
Tensor run_unary(const char* op_name, UnaryOp op, const Tensor& a, double scalar = 0.0) {
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  ElementwiseLayout layout = make_layout(a.shape(), {a.strides()});
  bool supported = false;
  if (a.device().is_cpu()) {
    supported = kernels::unary_cpu(op, a.dtype(), out.data_ptr(), a.data_ptr(), layout, scalar);
  } else {
#ifdef STRATA_WITH_CUDA
    supported = kernels::unary_cuda(op, a.dtype(), out.data_ptr(), a.data_ptr(), layout, scalar);
#endif
  }
  STRATA_CHECK(supported, "{}: no kernel for {}", op_name, a.str());
  return out;
}

Tensor run_binary(const char* op_name, BinaryOp op, const Tensor& a, const Tensor& b, double scalar = 0.0) {
  Shape shape = detail::broadcast_shape(op_name, a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  ElementwiseLayout layout =
      make_layout(shape, {detail::broadcast_strides(a, shape), detail::broadcast_strides(b, shape)});
  bool supported = false;
  if (a.device().is_cpu()) {
    supported = kernels::binary_cpu(op, a.dtype(), out.data_ptr(), a.data_ptr(), b.data_ptr(), layout, scalar);
  } else {
#ifdef STRATA_WITH_CUDA
    supported = kernels::binary_cuda(op, a.dtype(), out.data_ptr(), a.data_ptr(), b.data_ptr(), layout, scalar);
#endif
  }
  STRATA_CHECK(supported, "{}: no kernel for {}", op_name, a.str());
  return out;
}

Tensor run_masked_fill(const Tensor& a, const Tensor& mask, double value) {
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  ElementwiseLayout layout = make_layout(a.shape(), {a.strides(), detail::broadcast_strides(mask, a.shape())});
  const auto* mask_bytes = static_cast<const uint8_t*>(mask.data_ptr());
  bool supported = false;
  if (a.device().is_cpu()) {
    supported = kernels::masked_fill_cpu(a.dtype(), out.data_ptr(), a.data_ptr(), mask_bytes, layout, value);
  } else {
#ifdef STRATA_WITH_CUDA
    supported = kernels::masked_fill_cuda(a.dtype(), out.data_ptr(), a.data_ptr(), mask_bytes, layout, value);
#endif
  }
  STRATA_CHECK(supported, "masked_fill: no kernel for {}", a.str());
  return out;
}

void check_unary(const char* op, const Tensor& a) {
  detail::check_defined(op, a, "input");
  detail::check_compute_dtype(op, a);
}

void check_binary(const char* op, const Tensor& a, const Tensor& b) {
  detail::check_defined(op, a, "first input");
  detail::check_defined(op, b, "second input");
  detail::check_same_device(op, a, b);
  detail::check_compute_dtype(op, a);
  detail::check_same_dtype(op, a, b);
}

bool wants_grad(const Tensor& t) { return autograd::needs_grad({&t}); }

// Gradient of a broadcast operand: the output's gradient summed back to its shape,
// or nothing when that operand needs none.
Tensor grad_for(bool wanted, const Tensor& grad, const Shape& shape) {
  return wanted ? detail::reduce_to_shape(grad, shape) : Tensor();
}

enum class Saved { Input, Output };

// A unary op whose input gradient is backward_op(grad, saved).
Tensor unary_with_saved(const char* name, UnaryOp op, const Tensor& a, Saved saved, BinaryOp backward_op,
                        double scalar = 0.0) {
  check_unary(name, a);
  Tensor out = run_unary(name, op, a, scalar);
  Tensor kept = (saved == Saved::Input ? a : out).detach();
  autograd::record(name, {a}, out, [name, kept, backward_op, scalar](const Tensor& grad) {
    return std::vector<Tensor>{run_binary(name, backward_op, grad, kept, scalar)};
  });
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  check_binary("add", a, b);
  Tensor out = run_binary("add", BinaryOp::Add, a, b);
  autograd::record("add", {a, b}, out,
                   [grad_a = wants_grad(a), grad_b = wants_grad(b), shape_a = a.shape(),
                    shape_b = b.shape()](const Tensor& grad) {
                     return std::vector<Tensor>{grad_for(grad_a, grad, shape_a), grad_for(grad_b, grad, shape_b)};
                   });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  check_binary("sub", a, b);
  Tensor out = run_binary("sub", BinaryOp::Sub, a, b);
  autograd::record("sub", {a, b}, out,
                   [grad_a = wants_grad(a), grad_b = wants_grad(b), shape_a = a.shape(),
                    shape_b = b.shape()](const Tensor& grad) {
                     Tensor grad_of_b = grad_b ? run_unary("sub", UnaryOp::Neg, grad) : Tensor();
                     return std::vector<Tensor>{grad_for(grad_a, grad, shape_a), grad_for(grad_b, grad_of_b, shape_b)};
                   });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  check_binary("mul", a, b);
  Tensor out = run_binary("mul", BinaryOp::Mul, a, b);
  bool grad_a = wants_grad(a), grad_b = wants_grad(b);
  // Each operand's gradient needs the other operand only.
  Tensor saved_a = grad_b ? a.detach() : Tensor(), saved_b = grad_a ? b.detach() : Tensor();
  autograd::record("mul", {a, b}, out, [=, shape_a = a.shape(), shape_b = b.shape()](const Tensor& grad) {
    Tensor grad_of_a = grad_a ? run_binary("mul", BinaryOp::Mul, grad, saved_b) : Tensor();
    Tensor grad_of_b = grad_b ? run_binary("mul", BinaryOp::Mul, grad, saved_a) : Tensor();
    return std::vector<Tensor>{grad_for(grad_a, grad_of_a, shape_a), grad_for(grad_b, grad_of_b, shape_b)};
  });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  check_binary("div", a, b);
  Tensor out = run_binary("div", BinaryOp::Div, a, b);
  bool grad_a = wants_grad(a), grad_b = wants_grad(b);
  // d(a/b)/da = 1/b and d(a/b)/db = -(a/b)/b: both start from grad/b.
  Tensor saved_b = b.detach(), saved_out = grad_b ? out.detach() : Tensor();
  autograd::record("div", {a, b}, out, [=, shape_a = a.shape(), shape_b = b.shape()](const Tensor& grad) {
    Tensor grad_over_b = run_binary("div", BinaryOp::Div, grad, saved_b);
    Tensor grad_of_b;
    if (grad_b)
      grad_of_b = run_unary("div", UnaryOp::Neg, run_binary("div", BinaryOp::Mul, grad_over_b, saved_out));
    return std::vector<Tensor>{grad_for(grad_a, grad_over_b, shape_a), grad_for(grad_b, grad_of_b, shape_b)};
  });
  return out;
}

Tensor add(const Tensor& a, double b) {
  check_unary("add", a);
  Tensor out = run_unary("add", UnaryOp::AddScalar, a, b);
  autograd::record("add", {a}, out, [](const Tensor& grad) { return std::vector<Tensor>{grad}; });
  return out;
}

Tensor mul(const Tensor& a, double b) {
  check_unary("mul", a);
  Tensor out = run_unary("mul", UnaryOp::MulScalar, a, b);
  autograd::record("mul", {a}, out, [b](const Tensor& grad) {
    return std::vector<Tensor>{run_unary("mul", UnaryOp::MulScalar, grad, b)};
  });
  return out;
}

Tensor neg(const Tensor& a) {
  check_unary("neg", a);
  Tensor out = run_unary("neg", UnaryOp::Neg, a);
  autograd::record("neg", {a}, out,
                   [](const Tensor& grad) { return std::vector<Tensor>{run_unary("neg", UnaryOp::Neg, grad)}; });
  return out;
}

Tensor exp(const Tensor& a) { return unary_with_saved("exp", UnaryOp::Exp, a, Saved::Output, BinaryOp::Mul); }
Tensor log(const Tensor& a) { return unary_with_saved("log", UnaryOp::Log, a, Saved::Input, BinaryOp::Div); }
Tensor tanh(const Tensor& a) {
  return unary_with_saved("tanh", UnaryOp::Tanh, a, Saved::Output, BinaryOp::TanhBackward);
}
Tensor sigmoid(const Tensor& a) {
  return unary_with_saved("sigmoid", UnaryOp::Sigmoid, a, Saved::Output, BinaryOp::SigmoidBackward);
}
Tensor silu(const Tensor& a) {
  return unary_with_saved("silu", UnaryOp::Silu, a, Saved::Input, BinaryOp::SiluBackward);
}
Tensor gelu(const Tensor& a) {
  return unary_with_saved("gelu", UnaryOp::Gelu, a, Saved::Input, BinaryOp::GeluBackward);
}
Tensor softplus(const Tensor& a) {
  return unary_with_saved("softplus", UnaryOp::Softplus, a, Saved::Input, BinaryOp::SoftplusBackward);
}
Tensor relu(const Tensor& a) {
  return unary_with_saved("relu", UnaryOp::Relu, a, Saved::Input, BinaryOp::ReluBackward);
}
Tensor sqrt(const Tensor& a) {
  return unary_with_saved("sqrt", UnaryOp::Sqrt, a, Saved::Output, BinaryOp::SqrtBackward);
}
Tensor rsqrt(const Tensor& a) {
  return unary_with_saved("rsqrt", UnaryOp::Rsqrt, a, Saved::Output, BinaryOp::RsqrtBackward);
}
Tensor pow(const Tensor& a, double exponent) {
  return unary_with_saved("pow", UnaryOp::Pow, a, Saved::Input, BinaryOp::PowBackward, exponent);
}

Tensor masked_fill(const Tensor& a, const Tensor& mask, double value) {
  check_unary("masked_fill", a);
  detail::check_defined("masked_fill", mask, "mask");
  detail::check_same_device("masked_fill", a, mask);
  STRATA_CHECK(mask.dtype() == DType::Bool || mask.dtype() == DType::UInt8,
               "masked_fill: mask {} must be bool or uint8", mask.str());
  STRATA_CHECK(detail::broadcast_shape("masked_fill", a.shape(), mask.shape()) == a.shape(),
               "masked_fill: mask {} does not broadcast to the input {}", mask.str(), a.str());
  Tensor out = run_masked_fill(a, mask, value);
  // Filled positions do not depend on a: their gradient is zero.
  autograd::record("masked_fill", {a}, out, [kept_mask = mask.detach()](const Tensor& grad) {
    return std::vector<Tensor>{run_masked_fill(grad, kept_mask, 0.0)};
  });
  return out;
}

}  // namespace strata::ops
