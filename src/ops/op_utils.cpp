#include "ops/op_utils.h"

#include "strata/ops/ops.h"

namespace strata::ops::detail {

int normalize_dim(const char* op, int dim, int ndim) {
  int d = dim < 0 ? dim + ndim : dim;
  STRATA_CHECK(d >= 0 && d < ndim, "{}: dim {} is out of range for a tensor of rank {}", op, dim, ndim);
  return d;
}

void check_defined(const char* op, const Tensor& t, const char* what) {
  STRATA_CHECK(t.defined(), "{}: {} is an undefined tensor", op, what);
}

void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  STRATA_CHECK(a.device() == b.device(), "{}: tensors are on different devices: {} and {}", op, a.str(), b.str());
}

void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  STRATA_CHECK(a.dtype() == b.dtype(), "{}: dtypes differ: {} and {}", op, a.str(), b.str());
}

void check_compute_dtype(const char* op, const Tensor& t) {
  bool ok = t.device().is_cpu() ? (t.dtype() == DType::Float32 || t.dtype() == DType::Float64)
                                : (t.dtype() == DType::Float32 || t.dtype() == DType::BFloat16);
  STRATA_CHECK(ok, "{}: {} is not supported (supported: {})", op, t.str(),
               t.device().is_cpu() ? "float32, float64 on cpu" : "float32, bfloat16 on cuda");
}

void check_index_dtype(const char* op, const Tensor& index) {
  STRATA_CHECK(index.dtype() == DType::Int32 || index.dtype() == DType::Int64,
               "{}: index {} must be int32 or int64", op, index.str());
}

void check_rank(const char* op, const char* name, const Tensor& t, int rank, const char* layout) {
  STRATA_CHECK(t.dim() == rank, "{}: {} {} must be {}", op, name, t.str(), layout);
}

void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected, const char* layout) {
  STRATA_CHECK(t.shape() == expected, "{}: {} {} must have shape {} {}", op, name, t.str(), shape_str(expected),
               layout);
}

Shape broadcast_shape(const char* op, const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    STRATA_CHECK(da == db || da == 1 || db == 1, "{}: shapes {} and {} are not broadcastable", op, shape_str(a),
                 shape_str(b));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Shape broadcast_strides(const Tensor& t, const Shape& shape) {
  Shape strides(shape.size(), 0);
  size_t lead = shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i)
    strides[lead + i] = t.shape()[i] == 1 && shape[lead + i] != 1 ? 0 : t.strides()[i];
  return strides;
}

Tensor reduce_to_shape(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  size_t lead = grad.shape().size() - shape.size();
  std::vector<int> dims;
  for (size_t i = 0; i < grad.shape().size(); ++i)
    if (i < lead || (shape[i - lead] == 1 && grad.shape()[i] != 1)) dims.push_back(static_cast<int>(i));
  Tensor reduced = dims.empty() ? grad : sum(grad, dims, true);
  return reshape(reduced, shape);
}

}  // namespace strata::ops::detail
