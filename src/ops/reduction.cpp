// Reductions: sum and mean (over all elements or a set of dims), max and logsumexp
// over one dim. The input is made dense and folded into (outer, reduce, inner)
// blocks, the form every reduction kernel takes; a sum over dims that are not
// neighbours reduces one run of dims at a time, innermost first, keeping float32
// intermediates for bfloat16. Backward: sum and mean spread the gradient back over
// the reduced dims; max routes it to the first maximum (its index is saved);
// logsumexp multiplies it by softmax(x) = exp(x - out) (x and out are saved, out
// in float32 for bfloat16 inputs).
#include <algorithm>

#include "kernels/reduction/reduction_cpu.h"
#ifdef STRATA_WITH_CUDA
#include "kernels/reduction/reduction_cuda.h"
#endif
#include "ops/op_utils.h"
#include "strata/ops/ops.h"

namespace strata::ops {

namespace {

void check_input(const char* op, const Tensor& a) {
  detail::check_defined(op, a, "input");
  detail::check_compute_dtype(op, a);
}

// Which dims of `a` the reduction removes.
std::vector<bool> reduced_dims(const char* op, const Tensor& a, const std::vector<int>& dims) {
  std::vector<bool> reduced(a.dim(), false);
  for (int dim : dims) {
    int d = detail::normalize_dim(op, dim, a.dim());
    STRATA_CHECK(!reduced[d], "{}: dim {} is given twice for {}", op, dim, a.str());
    reduced[d] = true;
  }
  return reduced;
}

// The result's shape: reduced dims become 1 (keepdim) or disappear.
Shape reduced_shape(const Shape& shape, const std::vector<bool>& reduced, bool keepdim) {
  Shape out;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (!reduced[d])
      out.push_back(shape[d]);
    else if (keepdim)
      out.push_back(1);
  }
  return out;
}

struct Folded {
  int64_t outer = 1, reduce = 1, inner = 1;
};

// `dim` of a dense tensor of `shape` as (outer, reduce, inner).
Folded fold(const Shape& shape, int dim) {
  Folded f;
  for (int d = 0; d < static_cast<int>(shape.size()); ++d)
    (d < dim ? f.outer : d == dim ? f.reduce : f.inner) *= shape[d];
  return f;
}

// out (outer, inner) = scale * sum of in (outer, reduce, inner), both dense.
void sum_kernel(const Tensor& in, Tensor& out, const Folded& f, double scale) {
  bool supported = false;
  if (in.device().is_cpu()) {
    supported = in.dtype() == out.dtype() &&
                kernels::sum_cpu(in.dtype(), in.data_ptr(), out.data_ptr(), f.outer, f.reduce, f.inner, scale);
  } else {
#ifdef STRATA_WITH_CUDA
    int64_t workspace_floats = kernels::sum_cuda_workspace(f.outer, f.reduce, f.inner);
    Tensor workspace = workspace_floats > 0 ? Tensor::empty({workspace_floats}, DType::Float32, in.device()) : Tensor();
    supported = kernels::sum_cuda(in.dtype(), in.data_ptr(), out.dtype(), out.data_ptr(), f.outer, f.reduce, f.inner,
                                  scale, workspace_floats > 0 ? workspace.data<float>() : nullptr);
#endif
  }
  STRATA_CHECK(supported, "sum: no kernel for {}", in.str());
}

// scale * the sum of `a` over the flagged dims, with keepdim shape, unrecorded.
Tensor run_sum(const Tensor& a, const std::vector<bool>& reduced, double scale) {
  // Runs of neighbouring dims that are all reduced or all kept (size-1 dims join any run).
  struct Run {
    int64_t size;
    bool reduced;
  };
  std::vector<Run> runs;
  for (int d = 0; d < a.dim(); ++d) {
    if (a.shape()[d] == 1) continue;
    if (!runs.empty() && runs.back().reduced == reduced[d])
      runs.back().size *= a.shape()[d];
    else
      runs.push_back({a.shape()[d], reduced[d]});
  }
  Shape result_shape = reduced_shape(a.shape(), reduced, true);
  Tensor current = a.contiguous();
  // bfloat16 sums over several runs keep their partial sums in float32.
  DType intermediate = a.dtype() == DType::BFloat16 ? DType::Float32 : a.dtype();
  auto last_reduced = [&runs] {
    for (int i = static_cast<int>(runs.size()) - 1; i >= 0; --i)
      if (runs[i].reduced) return i;
    return -1;
  };
  if (last_reduced() < 0) {
    // Nothing to add up: a scaled dense copy, run as a sum over a length-1 axis.
    Tensor out = Tensor::empty(result_shape, a.dtype(), a.device());
    sum_kernel(current, out, Folded{1, 1, a.numel()}, scale);
    return out;
  }
  while (true) {
    const int run = last_reduced();
    Folded f;
    for (int i = 0; i < static_cast<int>(runs.size()); ++i)
      (i < run ? f.outer : i == run ? f.reduce : f.inner) *= runs[i].size;
    runs.erase(runs.begin() + run);
    const bool final_step = last_reduced() < 0;
    Tensor out = final_step ? Tensor::empty(result_shape, a.dtype(), a.device())
                            : Tensor::empty({f.outer * f.inner}, intermediate, a.device());
    sum_kernel(current, out, f, final_step ? scale : 1.0);
    if (final_step) return out;
    current = out;
  }
}

// The gradient of a sum: grad (of the result's shape) spread over the input's shape,
// times scale, as a dense tensor.
Tensor spread(const Tensor& grad, const Shape& keepdim_shape, const Shape& input_shape, double scale) {
  Tensor grad_kept = grad.contiguous().view(keepdim_shape);
  Tensor broadcast = grad_kept.as_strided(input_shape, detail::broadcast_strides(grad_kept, input_shape),
                                          grad_kept.offset());
  return mul(broadcast, scale);
}

Tensor sum_or_mean(const char* op, const Tensor& a, const std::vector<bool>& reduced, bool keepdim, bool average) {
  int64_t count = 1;
  for (int d = 0; d < a.dim(); ++d)
    if (reduced[d]) count *= a.shape()[d];
  // The mean of nothing is 0 / 0 = NaN, as in NumPy.
  double scale = average ? 1.0 / static_cast<double>(count) : 1.0;
  Shape keepdim_shape = reduced_shape(a.shape(), reduced, true);
  Tensor out = run_sum(a, reduced, scale).view(reduced_shape(a.shape(), reduced, keepdim));
  autograd::record(op, {a}, out, [keepdim_shape, input_shape = a.shape(), scale](const Tensor& grad) {
    return std::vector<Tensor>{spread(grad, keepdim_shape, input_shape, scale)};
  });
  return out;
}

// A one-dim reduction over several dims: the reduced dims are moved last and merged
// into one (row-major), which `reduce_last` then reduces; differentiable through
// permute and reshape.
template <class ReduceLast>
Tensor reduce_over_dims(const char* op, const Tensor& a, const std::vector<int>& dims, bool keepdim,
                        ReduceLast&& reduce_last) {
  std::vector<bool> reduced = reduced_dims(op, a, dims);
  std::vector<int> order;
  Shape merged_shape;
  int64_t merged = 1;
  for (int d = 0; d < a.dim(); ++d)
    if (!reduced[d]) {
      order.push_back(d);
      merged_shape.push_back(a.shape()[d]);
    }
  for (int d = 0; d < a.dim(); ++d)
    if (reduced[d]) {
      order.push_back(d);
      merged *= a.shape()[d];
    }
  merged_shape.push_back(merged);
  Tensor out = reduce_last(reshape(permute(a, order), merged_shape));
  return keepdim ? reshape(out, reduced_shape(a.shape(), reduced, true)) : out;
}

}  // namespace

Tensor sum(const Tensor& a) {
  check_input("sum", a);
  return sum_or_mean("sum", a, std::vector<bool>(a.dim(), true), false, false);
}

Tensor sum(const Tensor& a, const std::vector<int>& dims, bool keepdim) {
  check_input("sum", a);
  return sum_or_mean("sum", a, reduced_dims("sum", a, dims), keepdim, false);
}

Tensor mean(const Tensor& a) {
  check_input("mean", a);
  return sum_or_mean("mean", a, std::vector<bool>(a.dim(), true), false, true);
}

Tensor mean(const Tensor& a, const std::vector<int>& dims, bool keepdim) {
  check_input("mean", a);
  return sum_or_mean("mean", a, reduced_dims("mean", a, dims), keepdim, true);
}

Tensor max(const Tensor& a, int dim, bool keepdim) {
  check_input("max", a);
  int d = detail::normalize_dim("max", dim, a.dim());
  STRATA_CHECK(a.shape()[d] > 0, "max: dim {} of {} is empty", dim, a.str());
  std::vector<bool> reduced(a.dim(), false);
  reduced[d] = true;
  Folded f = fold(a.shape(), d);
  Tensor x = a.contiguous();
  Tensor values = Tensor::empty(reduced_shape(a.shape(), reduced, keepdim), a.dtype(), a.device());
  Tensor indices = Tensor::empty(reduced_shape(a.shape(), reduced, keepdim), DType::Int64, a.device());
  bool supported = false;
  if (a.device().is_cpu()) {
    supported = kernels::max_cpu(a.dtype(), x.data_ptr(), values.data_ptr(), indices.data<int64_t>(), f.outer,
                                 f.reduce, f.inner);
  } else {
#ifdef STRATA_WITH_CUDA
    supported = kernels::max_cuda(a.dtype(), x.data_ptr(), values.data_ptr(), indices.data<int64_t>(), f.outer,
                                  f.reduce, f.inner);
#endif
  }
  STRATA_CHECK(supported, "max: no kernel for {}", a.str());
  autograd::record("max", {a}, values, [indices, f, input_shape = a.shape()](const Tensor& grad) {
    Tensor grad_out = grad.contiguous();
    Tensor grad_in = Tensor::empty(input_shape, grad.dtype(), grad.device());
    bool ok = false;
    if (grad.device().is_cpu()) {
      ok = kernels::max_backward_cpu(grad.dtype(), grad_out.data_ptr(), indices.data<int64_t>(), grad_in.data_ptr(),
                                     f.outer, f.reduce, f.inner);
    } else {
#ifdef STRATA_WITH_CUDA
      ok = kernels::max_backward_cuda(grad.dtype(), grad_out.data_ptr(), indices.data<int64_t>(), grad_in.data_ptr(),
                                      f.outer, f.reduce, f.inner);
#endif
    }
    STRATA_CHECK(ok, "max: no backward kernel for {}", grad.str());
    return std::vector<Tensor>{grad_in};
  });
  return values;
}

Tensor max(const Tensor& a, const std::vector<int>& dims, bool keepdim) {
  check_input("max", a);
  return reduce_over_dims("max", a, dims, keepdim, [](const Tensor& x) { return max(x, -1); });
}

Tensor logsumexp(const Tensor& a, int dim, bool keepdim) {
  check_input("logsumexp", a);
  int d = detail::normalize_dim("logsumexp", dim, a.dim());
  std::vector<bool> reduced(a.dim(), false);
  reduced[d] = true;
  Folded f = fold(a.shape(), d);
  Tensor x = a.contiguous();
  Shape keepdim_shape = reduced_shape(a.shape(), reduced, true);
  // bfloat16 keeps its result in float32 for the backward: exp(x - out) with out
  // rounded to 8 bits would be off by up to 2^-6 (relative) at |x - out| ~ 8.
  DType exact_dtype = a.dtype() == DType::BFloat16 ? DType::Float32 : a.dtype();
  Tensor exact = Tensor::empty(keepdim_shape, exact_dtype, a.device());
  bool supported = false;
  if (a.device().is_cpu()) {
    supported = kernels::logsumexp_cpu(a.dtype(), x.data_ptr(), exact.data_ptr(), f.outer, f.reduce, f.inner);
  } else {
#ifdef STRATA_WITH_CUDA
    supported = kernels::logsumexp_cuda(a.dtype(), x.data_ptr(), exact_dtype, exact.data_ptr(), f.outer, f.reduce,
                                        f.inner);
#endif
  }
  STRATA_CHECK(supported, "logsumexp: no kernel for {}", a.str());
  Tensor out = exact.to(a.dtype()).view(reduced_shape(a.shape(), reduced, keepdim));
  // d logsumexp / dx = exp(x - logsumexp(x)) = softmax(x) along dim, in exact_dtype.
  autograd::record("logsumexp", {a}, out,
                   [saved_x = x.detach(), saved_exact = exact.detach(), keepdim_shape](const Tensor& grad) {
                     Tensor grad_kept = grad.contiguous().view(keepdim_shape).to(saved_exact.dtype());
                     Tensor softmax = exp(sub(saved_x.to(saved_exact.dtype()), saved_exact));
                     return std::vector<Tensor>{mul(softmax, grad_kept).to(saved_x.dtype())};
                   });
  return out;
}

Tensor logsumexp(const Tensor& a, const std::vector<int>& dims, bool keepdim) {
  check_input("logsumexp", a);
  return reduce_over_dims("logsumexp", a, dims, keepdim, [](const Tensor& x) { return logsumexp(x, -1); });
}

}  // namespace strata::ops
