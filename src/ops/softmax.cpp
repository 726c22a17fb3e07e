// softmax and log_softmax over any dim: the fused kernels of kernels/softmax on a
// contiguous (outer, dim, inner) view, so the last dim (inner == 1) takes the
// row kernels and any other dim the strided column kernels, with no transpose.
// The backward works from the saved output.
#include "kernels/softmax/softmax_cpu.h"
#include "kernels/softmax/softmax_cuda.h"
#include "ops/op_utils.h"
#include "strata/ops/ops.h"

namespace strata::ops {

namespace {

// CUDA kernels index within a row with 32-bit integers (with room for a stride).
constexpr int64_t kMaxCudaRowLength = int64_t{1} << 30;

// A contiguous tensor seen as (outer, dim, inner) around one of its dims.
struct SoftmaxLayout {
  int64_t outer = 1;
  int64_t dim = 1;
  int64_t inner = 1;
};

SoftmaxLayout layout_around(const Shape& shape, int dim) {
  SoftmaxLayout layout;
  for (int d = 0; d < dim; ++d) layout.outer *= shape[d];
  layout.dim = shape[dim];
  for (size_t d = static_cast<size_t>(dim) + 1; d < shape.size(); ++d) layout.inner *= shape[d];
  return layout;
}

Tensor softmax_forward(const char* op, const Tensor& x_given, const SoftmaxLayout& layout, bool log) {
  const Tensor x = x_given.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    if (x.dtype() == DType::Float32) {
      kernels::softmax_forward_cpu(x.data<float>(), y.data<float>(), layout.outer, layout.dim, layout.inner, log);
    } else {
      kernels::softmax_forward_cpu(x.data<double>(), y.data<double>(), layout.outer, layout.dim, layout.inner, log);
    }
    return y;
  }
#ifdef STRATA_WITH_CUDA
  STRATA_CHECK(kernels::softmax_forward_cuda(x.dtype(), x.data_ptr(), y.data_ptr(), layout.outer, layout.dim,
                                             layout.inner, log),
               "{}: {} is not supported on cuda", op, x.str());
#endif
  return y;
}

Tensor softmax_backward(const char* op, const Tensor& y, const Tensor& dy_given, const SoftmaxLayout& layout,
                        bool log) {
  STRATA_CHECK(dy_given.shape() == y.shape() && dy_given.dtype() == y.dtype() && dy_given.device() == y.device(),
               "{}: gradient {} does not match the output {}", op, dy_given.str(), y.str());
  const Tensor dy = dy_given.contiguous();
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  if (y.device().is_cpu()) {
    if (y.dtype() == DType::Float32) {
      kernels::softmax_backward_cpu(y.data<float>(), dy.data<float>(), dx.data<float>(), layout.outer, layout.dim,
                                    layout.inner, log);
    } else {
      kernels::softmax_backward_cpu(y.data<double>(), dy.data<double>(), dx.data<double>(), layout.outer, layout.dim,
                                    layout.inner, log);
    }
    return dx;
  }
#ifdef STRATA_WITH_CUDA
  STRATA_CHECK(kernels::softmax_backward_cuda(y.dtype(), y.data_ptr(), dy.data_ptr(), dx.data_ptr(), layout.outer,
                                              layout.dim, layout.inner, log),
               "{}: {} is not supported on cuda", op, y.str());
#endif
  return dx;
}

Tensor softmax_op(const char* op, const Tensor& x, int dim, bool log) {
  detail::check_defined(op, x, "x");
  detail::check_compute_dtype(op, x);
  const int d = detail::normalize_dim(op, dim, x.dim());
  STRATA_CHECK(x.device().is_cpu() || x.shape()[d] <= kMaxCudaRowLength, "{}: dim {} of {} is longer than {}", op, dim,
               x.str(), kMaxCudaRowLength);
  const SoftmaxLayout layout = layout_around(x.shape(), d);
  Tensor y = softmax_forward(op, x, layout, log);
  // `output` is this handle, without autograd history (record gives y a fresh
  // one), so the closure does not keep its own node alive.
  const Tensor output = y;
  autograd::record(op, {x}, y, [op, output, layout, log](const Tensor& grad) {
    return std::vector<Tensor>{softmax_backward(op, output, grad, layout, log)};
  });
  return y;
}

}  // namespace

Tensor softmax(const Tensor& x, int dim) { return softmax_op("softmax", x, dim, false); }

Tensor log_softmax(const Tensor& x, int dim) { return softmax_op("log_softmax", x, dim, true); }

}  // namespace strata::ops
