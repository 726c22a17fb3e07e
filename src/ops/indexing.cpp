// index_select, gather, scatter_add and causal_mask. The kernels see every operand
// as (outer, n, inner) around the indexed dim (kernels/indexing/indexing_cpu.h).
//
// Backward: index_select and gather scatter-add the gradient into zeros of the
// input's shape; scatter_add passes the gradient to `a` and gathers it for `src`.
// On CUDA the scatter-adds use float32 atomics (bfloat16 results are summed in a
// float32 buffer and rounded once), so their last bit depends on scheduling.
#include "kernels/indexing/index_check.h"
#include "kernels/indexing/indexing_cpu.h"
#include "ops/op_utils.h"
#include "strata/ops/ops.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/indexing/indexing_cuda.h"
#endif

namespace strata::ops {

namespace {

// (outer, n, inner) around `dim` of `shape`; k is the size of the index along dim.
struct Layout {
  int64_t outer = 1, n = 1, k = 1, inner = 1;
};
Layout layout_around(const Shape& shape, int dim, int64_t k) {
  Layout layout;
  for (int e = 0; e < dim; ++e) layout.outer *= shape[e];
  for (size_t e = dim + 1; e < shape.size(); ++e) layout.inner *= shape[e];
  layout.n = shape[dim];
  layout.k = k;
  return layout;
}

enum class Lookup { IndexSelect, Gather };
enum class Scatter { IndexAdd, ScatterAdd };

// out[o][j][i] = a[o][index[j or o,j,i]][i]; a contiguous, index contiguous int64.
Tensor lookup(const char* op, Lookup kind, const Tensor& a, int dim, const Tensor& index, const Shape& out_shape) {
  Layout l = layout_around(a.shape(), dim, out_shape[dim]);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  const int64_t* indices = index.data<int64_t>();
  if (a.device().is_cpu()) {
    kernels::check_index_range_cpu(op, index, l.n, dim, a);
    auto run = [&](auto* values) {
      using T = std::remove_const_t<std::remove_pointer_t<decltype(values)>>;
      if (kind == Lookup::IndexSelect)
        kernels::index_select_cpu<T>(values, indices, out.data<T>(), l.outer, l.n, l.k, l.inner);
      else
        kernels::gather_cpu<T>(values, indices, out.data<T>(), l.outer, l.n, l.k, l.inner);
    };
    if (a.dtype() == DType::Float32) run(a.data<float>());
    else run(a.data<double>());
    return out;
  }
#ifdef STRATA_WITH_CUDA
  Tensor error = kernels::cuda_index_error_buffer(a.device());
  bool supported =
      kind == Lookup::IndexSelect
          ? kernels::index_select_cuda(a.dtype(), a.data_ptr(), indices, out.data_ptr(), l.outer, l.n, l.k, l.inner,
                                       error.data<int64_t>())
          : kernels::gather_cuda(a.dtype(), a.data_ptr(), indices, out.data_ptr(), l.outer, l.n, l.k, l.inner,
                                 error.data<int64_t>());
  STRATA_CHECK(supported, "{}: {} is not supported", op, a.str());
  kernels::raise_reported_index_error(op, error, l.n, dim, a);
#endif
  return out;
}

// base (a fresh contiguous tensor of the result's shape) with src added at index
// along dim; returns the result (base itself, except for bfloat16 on CUDA).
Tensor scatter_into(const char* op, Scatter kind, Tensor base, int dim, const Tensor& index, const Tensor& src) {
  Layout l = layout_around(base.shape(), dim, src.shape()[dim]);
  Tensor source = src.contiguous();
  const int64_t* indices = index.data<int64_t>();
  if (base.device().is_cpu()) {
    kernels::check_index_range_cpu(op, index, l.n, dim, base);
    auto run = [&](auto* accumulator) {
      using T = std::remove_pointer_t<decltype(accumulator)>;
      if (kind == Scatter::IndexAdd)
        kernels::index_add_cpu<T>(source.data<T>(), indices, accumulator, l.outer, l.n, l.k, l.inner);
      else
        kernels::scatter_add_cpu<T>(source.data<T>(), indices, accumulator, l.outer, l.n, l.k, l.inner);
    };
    if (base.dtype() == DType::Float32) run(base.data<float>());
    else run(base.data<double>());
    return base;
  }
#ifdef STRATA_WITH_CUDA
  Tensor accumulator = base.to(DType::Float32);
  Tensor error = kernels::cuda_index_error_buffer(base.device());
  bool supported = kind == Scatter::IndexAdd
                       ? kernels::index_add_cuda(source.dtype(), source.data_ptr(), indices,
                                                 accumulator.data<float>(), l.outer, l.n, l.k, l.inner,
                                                 error.data<int64_t>())
                       : kernels::scatter_add_cuda(source.dtype(), source.data_ptr(), indices,
                                                   accumulator.data<float>(), l.outer, l.n, l.k, l.inner,
                                                   error.data<int64_t>());
  STRATA_CHECK(supported, "{}: {} is not supported", op, source.str());
  kernels::raise_reported_index_error(op, error, l.n, dim, base);
  return accumulator.to(base.dtype());
#else
  return base;
#endif
}

void check_value_and_index(const char* op, const Tensor& a, const Tensor& index) {
  detail::check_defined(op, a, "input");
  detail::check_defined(op, index, "index");
  detail::check_compute_dtype(op, a);
  detail::check_index_dtype(op, index);
  detail::check_same_device(op, a, index);
}

// gather and scatter_add: index has a's rank and a's sizes outside dim.
void check_index_matches_outside_dim(const char* op, const Tensor& a, int dim, const Tensor& index) {
  bool matches = index.dim() == a.dim();
  for (int e = 0; matches && e < a.dim(); ++e) matches = e == dim || index.shape()[e] == a.shape()[e];
  STRATA_CHECK(matches, "{}: index {} must have the rank of {} and its sizes outside dim {}", op, index.str(), a.str(),
               dim);
}

}  // namespace

Tensor index_select(const Tensor& a, int dim, const Tensor& index) {
  check_value_and_index("index_select", a, index);
  STRATA_CHECK(index.dim() == 1, "index_select: index {} must be 1-D", index.str());
  int d = detail::normalize_dim("index_select", dim, a.dim());
  Tensor indices = kernels::index_as_int64(index);
  Shape out_shape = a.shape();
  out_shape[d] = indices.numel();
  Tensor out = lookup("index_select", Lookup::IndexSelect, a.contiguous(), d, indices, out_shape);
  autograd::record("index_select", {a}, out, [input_shape = a.shape(), d, indices](const Tensor& grad) {
    Tensor zeros = Tensor::zeros(input_shape, grad.dtype(), grad.device());
    return std::vector<Tensor>{scatter_into("index_select backward", Scatter::IndexAdd, zeros, d, indices, grad)};
  });
  return out;
}

Tensor gather(const Tensor& a, int dim, const Tensor& index) {
  check_value_and_index("gather", a, index);
  int d = detail::normalize_dim("gather", dim, a.dim());
  check_index_matches_outside_dim("gather", a, d, index);
  Tensor indices = kernels::index_as_int64(index);
  Tensor out = lookup("gather", Lookup::Gather, a.contiguous(), d, indices, index.shape());
  autograd::record("gather", {a}, out, [input_shape = a.shape(), d, indices](const Tensor& grad) {
    return std::vector<Tensor>{scatter_add(Tensor::zeros(input_shape, grad.dtype(), grad.device()), d, indices, grad)};
  });
  return out;
}

Tensor scatter_add(const Tensor& a, int dim, const Tensor& index, const Tensor& src) {
  check_value_and_index("scatter_add", a, index);
  detail::check_defined("scatter_add", src, "src");
  detail::check_same_dtype("scatter_add", a, src);
  detail::check_same_device("scatter_add", a, src);
  int d = detail::normalize_dim("scatter_add", dim, a.dim());
  check_index_matches_outside_dim("scatter_add", a, d, index);
  STRATA_CHECK(src.shape() == index.shape(), "scatter_add: src {} and index {} differ in shape", src.str(),
               index.str());
  Tensor indices = kernels::index_as_int64(index);
  Tensor out = scatter_into("scatter_add", Scatter::ScatterAdd, a.clone(), d, indices, src);
  autograd::record("scatter_add", {a, src}, out, [d, indices](const Tensor& grad) {
    return std::vector<Tensor>{grad, gather(grad, d, indices)};
  });
  return out;
}

Tensor causal_mask(int64_t length, Device device) {
  STRATA_CHECK(length >= 0, "causal_mask: negative length {}", length);
  Tensor mask = Tensor::empty({length, length}, DType::Bool, Device::cpu());
  bool* values = mask.data<bool>();
  for (int64_t query = 0; query < length; ++query)
    for (int64_t key = 0; key < length; ++key) values[query * length + key] = key > query;
  return mask.to(device);
}

}  // namespace strata::ops
