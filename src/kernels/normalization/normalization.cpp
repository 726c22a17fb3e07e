// Tensor-level entry points of the normalisation kernels (declared in
// strata/kernels/normalization.h): argument checks with messages that name the
// op and the shapes, then the CPU reference or the CUDA launchers. Both norms
// share the code; layer_norm subtracts the row mean, rms_norm does not.
#include <cmath>

#include "kernels/normalization/normalization_cpu.h"
#include "kernels/normalization/normalization_cuda.h"
#include "strata/kernels/normalization.h"

namespace strata::kernels {

namespace {

// CUDA kernels index columns with 32-bit integers (with room for a stride).
constexpr int64_t kMaxCudaRowLength = int64_t{1} << 30;

DType statistics_dtype(DType dtype) { return dtype == DType::Float64 ? DType::Float64 : DType::Float32; }

Shape row_shape(const Tensor& x) { return Shape(x.shape().begin(), x.shape().end() - 1); }

void check_input(const char* op, const Tensor& x) {
  STRATA_CHECK(x.defined(), "{}: x is an undefined tensor", op);
  STRATA_CHECK(x.dim() >= 1 && x.size(-1) > 0, "{}: x {} has no last dim to normalise over", op, x.str());
  const bool supported = x.device().is_cpu() ? (x.dtype() == DType::Float32 || x.dtype() == DType::Float64)
                                             : (x.dtype() == DType::Float32 || x.dtype() == DType::BFloat16);
  STRATA_CHECK(supported, "{}: {} is not supported (supported: {})", op, x.str(),
               x.device().is_cpu() ? "float32, float64 on cpu" : "float32, bfloat16 on cuda");
  STRATA_CHECK(x.device().is_cpu() || x.size(-1) <= kMaxCudaRowLength, "{}: the rows of {} are longer than {} elements",
               op, x.str(), kMaxCudaRowLength);
}

void check_parameter(const char* op, const Tensor& x, const Tensor& parameter, const char* name) {
  if (!parameter.defined()) return;
  STRATA_CHECK(parameter.shape() == Shape{x.size(-1)}, "{}: {} {} does not match x {}: expected shape [{}]", op, name,
               parameter.str(), x.str(), x.size(-1));
  STRATA_CHECK(parameter.dtype() == x.dtype() && parameter.device() == x.device(),
               "{}: {} {} must have the dtype and device of x {}", op, name, parameter.str(), x.str());
}

void check_statistic(const char* op, const Tensor& x, const Tensor& statistic, const char* name) {
  STRATA_CHECK(statistic.defined() && statistic.shape() == row_shape(x) &&
                   statistic.dtype() == statistics_dtype(x.dtype()) && statistic.device() == x.device(),
               "{}: saved {} {} does not match x {}: expected {}{} on {}", op, name, statistic.str(), x.str(),
               dtype_name(statistics_dtype(x.dtype())), shape_str(row_shape(x)), x.device().str());
}

template <class T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
template <class T>
T* mutable_data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
Tensor contiguous_or_undefined(const Tensor& t) { return t.defined() ? t.contiguous() : Tensor(); }

template <class T>
void forward_cpu(bool subtract_mean, const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                 const NormForward& out) {
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  if (subtract_mean) {
    layer_norm_forward_cpu<T>(x.data<T>(), data_or_null<T>(weight), data_or_null<T>(bias), out.y.data<T>(),
                              out.mean.data<T>(), out.rstd.data<T>(), rows, dim, eps);
  } else {
    rms_norm_forward_cpu<T>(x.data<T>(), data_or_null<T>(weight), out.y.data<T>(), out.rstd.data<T>(), rows, dim, eps);
  }
}

template <class T>
void backward_cpu(bool subtract_mean, const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                  const Tensor& rstd, const NormGradients& out) {
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  if (subtract_mean) {
    layer_norm_backward_cpu<T>(dy.data<T>(), x.data<T>(), data_or_null<T>(weight), mean.data<T>(), rstd.data<T>(),
                               out.dx.data<T>(), mutable_data_or_null<T>(out.dweight),
                               mutable_data_or_null<T>(out.dbias), rows, dim);
  } else {
    rms_norm_backward_cpu<T>(dy.data<T>(), x.data<T>(), data_or_null<T>(weight), rstd.data<T>(), out.dx.data<T>(),
                             mutable_data_or_null<T>(out.dweight), rows, dim);
  }
}

NormForward norm_forward(const char* op, bool subtract_mean, const Tensor& x_given, const Tensor& weight_given,
                         const Tensor& bias_given, double eps) {
  check_input(op, x_given);
  check_parameter(op, x_given, weight_given, "weight");
  check_parameter(op, x_given, bias_given, "bias");
  STRATA_CHECK(std::isfinite(eps) && eps >= 0.0, "{}: eps must be finite and >= 0, got {}", op, eps);
  const Tensor x = x_given.contiguous();
  const Tensor weight = contiguous_or_undefined(weight_given), bias = contiguous_or_undefined(bias_given);
  NormForward out;
  out.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (subtract_mean) out.mean = Tensor::empty(row_shape(x), statistics_dtype(x.dtype()), x.device());
  out.rstd = Tensor::empty(row_shape(x), statistics_dtype(x.dtype()), x.device());
  if (x.device().is_cpu()) {
    if (x.dtype() == DType::Float32) {
      forward_cpu<float>(subtract_mean, x, weight, bias, eps, out);
    } else {
      forward_cpu<double>(subtract_mean, x, weight, bias, eps, out);
    }
    return out;
  }
#ifdef STRATA_WITH_CUDA
  NormForwardCudaArguments args;
  args.dtype = x.dtype();
  args.dim = x.size(-1);
  args.rows = x.numel() / args.dim;
  args.subtract_mean = subtract_mean;
  args.eps = static_cast<float>(eps);
  args.x = x.data_ptr();
  args.weight = weight.defined() ? weight.data_ptr() : nullptr;
  args.bias = bias.defined() ? bias.data_ptr() : nullptr;
  args.y = out.y.data_ptr();
  args.mean = mutable_data_or_null<float>(out.mean);
  args.rstd = out.rstd.data<float>();
  STRATA_CHECK(norm_forward_cuda(args), "{}: {} is not supported on cuda", op, x.str());
#endif
  return out;
}

NormGradients norm_backward(const char* op, bool subtract_mean, const Tensor& dy_given, const Tensor& x_given,
                            const Tensor& weight_given, const Tensor& mean_given, const Tensor& rstd_given,
                            bool with_bias_grad) {
  check_input(op, x_given);
  check_parameter(op, x_given, weight_given, "weight");
  STRATA_CHECK(dy_given.defined() && dy_given.shape() == x_given.shape() && dy_given.dtype() == x_given.dtype() &&
                   dy_given.device() == x_given.device(),
               "{}: gradient {} does not match x {}", op, dy_given.str(), x_given.str());
  if (subtract_mean) check_statistic(op, x_given, mean_given, "mean");
  check_statistic(op, x_given, rstd_given, "rstd");
  const Tensor dy = dy_given.contiguous(), x = x_given.contiguous(), weight = contiguous_or_undefined(weight_given);
  const Tensor mean = subtract_mean ? mean_given.contiguous() : Tensor(), rstd = rstd_given.contiguous();
  const int64_t dim = x.size(-1);
  NormGradients out;
  out.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (weight.defined()) out.dweight = Tensor::empty({dim}, x.dtype(), x.device());
  if (with_bias_grad) out.dbias = Tensor::empty({dim}, x.dtype(), x.device());
  if (x.device().is_cpu()) {
    if (x.dtype() == DType::Float32) {
      backward_cpu<float>(subtract_mean, dy, x, weight, mean, rstd, out);
    } else {
      backward_cpu<double>(subtract_mean, dy, x, weight, mean, rstd, out);
    }
    return out;
  }
#ifdef STRATA_WITH_CUDA
  NormBackwardCudaArguments args;
  args.dtype = x.dtype();
  args.dim = dim;
  args.rows = x.numel() / dim;
  args.subtract_mean = subtract_mean;
  args.dy = dy.data_ptr();
  args.x = x.data_ptr();
  args.weight = weight.defined() ? weight.data_ptr() : nullptr;
  args.mean = data_or_null<float>(mean);
  args.rstd = rstd.data<float>();
  args.dx = out.dx.data_ptr();
  args.dweight = out.dweight.defined() ? out.dweight.data_ptr() : nullptr;
  args.dbias = out.dbias.defined() ? out.dbias.data_ptr() : nullptr;
  // Per-block partial sums of dweight and dbias; freed (stream-ordered) after the launches.
  Tensor workspace;
  const int64_t workspace_floats = norm_backward_cuda_workspace(args);
  if (workspace_floats > 0) {
    workspace = Tensor::empty({workspace_floats}, DType::Float32, x.device());
    args.workspace = workspace.data<float>();
  }
  STRATA_CHECK(norm_backward_cuda(args), "{}: {} is not supported on cuda", op, x.str());
#endif
  return out;
}

}  // namespace

NormForward layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  return norm_forward("layer_norm", true, x, weight, bias, eps);
}

NormGradients layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                  const Tensor& rstd, bool with_bias_grad) {
  return norm_backward("layer_norm", true, dy, x, weight, mean, rstd, with_bias_grad);
}

NormForward rms_norm_forward(const Tensor& x, const Tensor& weight, double eps) {
  return norm_forward("rms_norm", false, x, weight, Tensor(), eps);
}

NormGradients rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd) {
  return norm_backward("rms_norm", false, dy, x, weight, Tensor(), rstd, false);
}

}  // namespace strata::kernels
