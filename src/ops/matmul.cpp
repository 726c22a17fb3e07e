// Matrix products: matmul (batched, with broadcast leading dims) and linear, plus
// autocast. Both run on kernels::gemm_batched, which takes strided and expanded views,
// so no operand is copied to match a layout:
//   - a broadcast operand is an expanded view (stride 0), and a 2-D b shared by a
//     contiguous batch becomes one tall product;
//   - a transposed operand is a view with swapped strides (cuBLAS gets a flag);
//   - a gradient that must be summed over broadcast dims is written through a view with
//     stride 0 on those dims, which the kernels turn into accumulation (or one deeper
//     product) instead of materialising the per-batch gradients and reducing them.
// Backward: dA = dC @ B^T and dB = A^T @ dC (linear: dx = dy @ W, dW = dy^T @ x with
// the rows folded into k, db = the sum of dy over rows). A saves only what the other
// input's gradient needs.
//
// Autocast (thread-local): float32 CUDA operands are cast to bfloat16 and multiplied
// with float32 accumulation into a float32 result. The bfloat16 copies are what the
// node saves, and the backward products run in bfloat16 too, with float32 results, so
// gradients come back in float32.
#include <algorithm>
#include <optional>

#include "ops/op_utils.h"
#include "strata/kernels/gemm.h"
#include "strata/ops/ops.h"

namespace strata::ops {

namespace {

thread_local std::optional<DType> autocast_state;

// The dtype the product's inputs are multiplied in.
DType compute_dtype(const Tensor& t) {
  if (autocast_state && t.device().is_cuda() && t.dtype() == DType::Float32) return *autocast_state;
  return t.dtype();
}

bool wants_grad(const Tensor& t) { return t.defined() && (t.requires_grad() || t.grad_fn()); }

Shape concat(Shape leading, std::initializer_list<int64_t> trailing) {
  leading.insert(leading.end(), trailing);
  return leading;
}

// t (..., rows, cols) read as (*batch, rows, cols): missing and size-1 leading dims get stride 0.
Tensor expanded(const Tensor& t, const Shape& batch) {
  Shape shape = concat(batch, {t.size(-2), t.size(-1)});
  return t.as_strided(shape, detail::broadcast_strides(t, shape), t.offset());
}

// The same matrices, transposed (a view).
Tensor transposed(const Tensor& t) {
  Shape shape = t.shape(), strides = t.strides();
  std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
  std::swap(strides[strides.size() - 1], strides[strides.size() - 2]);
  return t.as_strided(shape, strides, t.offset());
}

// t (..., cols) as (rows, cols): a view when the leading dims step through memory as
// one dim, else a contiguous copy.
Tensor as_rows(const Tensor& t) {
  int64_t cols = t.size(-1), rows = t.numel() / std::max<int64_t>(cols, 1);
  if (cols == 0) rows = shape_numel(Shape(t.shape().begin(), t.shape().end() - 1));
  int64_t row_stride = cols, expected = -1;  // stride the next outer leading dim must have
  bool viewable = true;
  for (int d = t.dim() - 2; d >= 0; --d) {
    if (t.shape()[d] == 1) continue;
    if (expected < 0) {
      row_stride = t.strides()[d];
    } else if (t.strides()[d] != expected) {
      viewable = false;
      break;
    }
    expected = t.strides()[d] * t.shape()[d];
  }
  if (viewable) return t.as_strided({rows, cols}, {row_stride, t.strides().back()}, t.offset());
  Tensor dense = t.contiguous();
  return dense.as_strided({rows, cols}, {cols, 1}, dense.offset());
}

// The broadcast of the leading dims of a and b, or an error naming both shapes.
Shape broadcast_batch(const Tensor& a, const Tensor& b) {
  Shape a_batch(a.shape().begin(), a.shape().end() - 2), b_batch(b.shape().begin(), b.shape().end() - 2);
  size_t rank = std::max(a_batch.size(), b_batch.size());
  Shape batch(rank);
  for (size_t i = 0; i < rank; ++i) {
    int64_t x = i + a_batch.size() < rank ? 1 : a_batch[i + a_batch.size() - rank];
    int64_t y = i + b_batch.size() < rank ? 1 : b_batch[i + b_batch.size() - rank];
    STRATA_CHECK(x == y || x == 1 || y == 1, "matmul: shapes {} and {}: batch dimensions {} and {} do not broadcast",
                 shape_str(a.shape()), shape_str(b.shape()), shape_str(a_batch), shape_str(b_batch));
    batch[i] = x == 1 ? y : x;
  }
  return batch;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  constexpr const char* op = "matmul";
  detail::check_defined(op, a, "a");
  detail::check_defined(op, b, "b");
  STRATA_CHECK(a.dim() >= 2 && b.dim() >= 2,
               "matmul: operands need rank >= 2 (1-D operands are not promoted), got {} and {}", a.str(), b.str());
  detail::check_same_device(op, a, b);
  detail::check_same_dtype(op, a, b);
  detail::check_compute_dtype(op, a);
  const int64_t n = a.size(-2), k = a.size(-1), m = b.size(-1);
  STRATA_CHECK(b.size(-2) == k, "matmul: shapes {} and {}: inner dimensions {} and {} differ", shape_str(a.shape()),
               shape_str(b.shape()), k, b.size(-2));
  const Shape batch = broadcast_batch(a, b);

  const DType input_dtype = compute_dtype(a);
  Tensor a_input = a.to(input_dtype).detach(), b_input = b.to(input_dtype).detach();
  Tensor out = Tensor::empty(concat(batch, {n, m}), a.dtype(), a.device());
  kernels::gemm_batched(expanded(a_input, batch), expanded(b_input, batch), out, 1.0f, 0.0f);

  const bool a_wants = wants_grad(a), b_wants = wants_grad(b);
  autograd::record(
      op, {a, b}, out,
      [a_saved = b_wants ? a_input : Tensor(), b_saved = a_wants ? b_input : Tensor(), a_wants, b_wants,
       a_shape = a.shape(), b_shape = b.shape(), batch, n, k, m, dtype = a.dtype(), input_dtype](const Tensor& grad) {
        Tensor grad_out = grad.to(input_dtype);  // (*batch, n, m)
        std::vector<Tensor> grads(2);
        if (a_wants) {  // dA (*batch, n, k) = dC @ B^T, summed where a was broadcast
          grads[0] = Tensor::empty(a_shape, dtype, grad.device());
          Tensor sum_view = expanded(grads[0], batch);
          kernels::gemm_batched(grad_out, transposed(expanded(b_saved, batch)), sum_view, 1.0f, 0.0f);
        }
        if (b_wants) {  // dB (*batch, k, m) = A^T @ dC, summed where b was broadcast
          grads[1] = Tensor::empty(b_shape, dtype, grad.device());
          Tensor sum_view = expanded(grads[1], batch);
          kernels::gemm_batched(transposed(expanded(a_saved, batch)), grad_out, sum_view, 1.0f, 0.0f);
        }
        return grads;
      });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  constexpr const char* op = "linear";
  detail::check_defined(op, x, "input");
  detail::check_defined(op, weight, "weight");
  STRATA_CHECK(x.dim() >= 1, "linear: input {} needs at least one dim (the features)", x.str());
  STRATA_CHECK(weight.dim() == 2, "linear: weight {} must be (out_features, in_features)", weight.str());
  detail::check_same_device(op, x, weight);
  detail::check_same_dtype(op, x, weight);
  detail::check_compute_dtype(op, x);
  const int64_t in_features = weight.size(1), out_features = weight.size(0);
  STRATA_CHECK(x.size(-1) == in_features, "linear: input {} has {} features but weight {} takes {}", x.str(),
               x.size(-1), weight.str(), in_features);
  if (bias.defined()) {
    detail::check_same_device(op, x, bias);
    detail::check_same_dtype(op, x, bias);
    STRATA_CHECK(bias.dim() == 1 && bias.size(0) == out_features, "linear: bias {} must be ({}) to match weight {}",
                 bias.str(), out_features, weight.str());
  }

  const DType input_dtype = compute_dtype(x);
  Tensor x_rows = as_rows(x).to(input_dtype).detach();  // (rows, in)
  Tensor weight_input = weight.to(input_dtype).detach();
  const int64_t rows = x_rows.size(0);
  Tensor y = Tensor::empty({rows, out_features}, x.dtype(), x.device());
  if (bias.defined()) y.copy_(bias.as_strided({rows, out_features}, {0, bias.strides()[0]}, bias.offset()));
  kernels::gemm(x_rows, weight_input, y, false, true, 1.0f, bias.defined() ? 1.0f : 0.0f);  // y = x W^T (+ b)
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  Tensor out = y.view(out_shape);

  const bool x_wants = wants_grad(x), weight_wants = wants_grad(weight), bias_wants = wants_grad(bias);
  autograd::record(op, {x, weight, bias}, out,
                   [x_saved = weight_wants ? x_rows : Tensor(), weight_saved = x_wants ? weight_input : Tensor(),
                    x_wants, weight_wants, bias_wants, x_shape = x.shape(), dtype = x.dtype(), input_dtype, rows,
                    in_features, out_features](const Tensor& grad) {
                     Tensor grad_rows = as_rows(grad);  // (rows, out)
                     Tensor grad_input = grad_rows.to(input_dtype);
                     std::vector<Tensor> grads(3);
                     if (x_wants) {  // dx (rows, in) = dy @ W
                       Tensor grad_x = Tensor::empty({rows, in_features}, dtype, grad.device());
                       kernels::gemm(grad_input, weight_saved, grad_x, false, false, 1.0f, 0.0f);
                       grads[0] = grad_x.view(x_shape);
                     }
                     if (weight_wants) {  // dW (out, in) = dy^T @ x: one product, the rows are its depth
                       grads[1] = Tensor::empty({out_features, in_features}, dtype, grad.device());
                       kernels::gemm(grad_input, x_saved, grads[1], true, false, 1.0f, 0.0f);
                     }
                     if (bias_wants) {
                       // db (1, out) = ones (1, rows) @ dy: the sum over rows as a product, which
                       // accumulates in float32 for bfloat16 and reads dy in its own dtype (float32
                       // under autocast).
                       Tensor ones = Tensor::ones({1, rows}, grad.dtype(), grad.device());
                       Tensor grad_bias = Tensor::empty({1, out_features}, dtype, grad.device());
                       kernels::gemm(ones, grad_rows, grad_bias, false, false, 1.0f, 0.0f);
                       grads[2] = grad_bias.view({out_features});
                     }
                     return grads;
                   });
  return out;
}

AutocastGuard::AutocastGuard(DType dtype) : previous_(autocast_state) {
  STRATA_CHECK(dtype == DType::BFloat16, "AutocastGuard: only bfloat16 is supported, got {}", dtype_name(dtype));
  autocast_state = dtype;
}

AutocastGuard::~AutocastGuard() { autocast_state = previous_; }

std::optional<DType> autocast_dtype() { return autocast_state; }

}  // namespace strata::ops
