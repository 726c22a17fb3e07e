// Shape ops: views onto the input's storage (reshape when the strides allow it,
// permute, transpose, slice, expand, unsqueeze, squeeze), the copies contiguous,
// cast and to_device, and concat/split. Every view's backward is the reverse view
// (or, for slice and expand, a scatter or a sum) of the incoming gradient.
#include <algorithm>
#include <numeric>
#include <optional>

#include "ops/op_utils.h"
#include "strata/ops/ops.h"

namespace strata::ops {

namespace {

// Resolves the one -1 of `shape` from the element count, and checks the count.
Shape resolve_shape(const char* op, const Tensor& a, const Shape& shape) {
  Shape resolved = shape;
  int inferred = -1;
  int64_t known = 1;
  for (size_t d = 0; d < resolved.size(); ++d) {
    if (resolved[d] == -1) {
      STRATA_CHECK(inferred < 0, "{}: more than one -1 in {}", op, shape_str(shape));
      inferred = static_cast<int>(d);
    } else {
      STRATA_CHECK(resolved[d] >= 0, "{}: negative size in {}", op, shape_str(shape));
      known *= resolved[d];
    }
  }
  if (inferred >= 0) {
    STRATA_CHECK(known > 0 && a.numel() % known == 0, "{}: cannot reshape {} to {}", op, a.str(), shape_str(shape));
    resolved[inferred] = a.numel() / known;
  }
  STRATA_CHECK(shape_numel(resolved) == a.numel(), "{}: cannot reshape {} to {} ({} vs {} elements)", op, a.str(),
               shape_str(shape), a.numel(), shape_numel(resolved));
  return resolved;
}

// Strides that read `a` as `shape` without a copy, when they exist. The old dims
// split into chunks inside which memory is contiguous (stride[d] = stride[d+1] *
// size[d+1]); a view exists when the new dims, taken from the back, fill each chunk
// exactly, and then they inherit the chunk's innermost stride.
std::optional<Shape> view_strides(const Tensor& a, const Shape& shape) {
  if (a.numel() == 0 || a.dim() == 0) return contiguous_strides(shape);
  const Shape& old_shape = a.shape();
  const Shape& old_strides = a.strides();
  Shape strides(shape.size());
  int view_dim = static_cast<int>(shape.size()) - 1;
  int64_t chunk_stride = old_strides.back();
  int64_t chunk_numel = 1, view_numel = 1;
  for (int d = a.dim() - 1; d >= 0; --d) {
    chunk_numel *= old_shape[d];
    bool chunk_ends = d == 0 || (old_shape[d - 1] != 1 && old_strides[d - 1] != chunk_numel * chunk_stride);
    if (!chunk_ends) continue;
    while (view_dim >= 0 && (view_numel < chunk_numel || shape[view_dim] == 1)) {
      strides[view_dim] = view_numel * chunk_stride;
      view_numel *= shape[view_dim];
      --view_dim;
    }
    if (view_numel != chunk_numel) return std::nullopt;
    if (d > 0) {
      chunk_stride = old_strides[d - 1];
      chunk_numel = 1;
      view_numel = 1;
    }
  }
  if (view_dim != -1) return std::nullopt;
  return strides;
}

// The raw (unrecorded) view of `a` along `dim` from `start` with `length` elements
// every `step`; start and length already clamped.
Tensor raw_slice(const Tensor& a, int dim, int64_t start, int64_t length, int64_t step) {
  Shape shape = a.shape(), strides = a.strides();
  shape[dim] = length;
  strides[dim] *= step;
  return a.as_strided(shape, strides, a.offset() + start * a.strides()[dim]);
}

void check_input(const char* op, const Tensor& a) { detail::check_defined(op, a, "input"); }

}  // namespace

Tensor reshape(const Tensor& a, const Shape& shape) {
  check_input("reshape", a);
  Shape resolved = resolve_shape("reshape", a, shape);
  Tensor out;
  if (std::optional<Shape> strides = view_strides(a, resolved)) {
    out = a.as_strided(resolved, *strides, a.offset());
  } else {
    out = a.clone().view(resolved);
  }
  autograd::record("reshape", {a}, out,
                   [input_shape = a.shape()](const Tensor& grad) -> std::vector<Tensor> {
                     return {reshape(grad, input_shape)};
                   });
  return out;
}

Tensor permute(const Tensor& a, const std::vector<int>& dims) {
  check_input("permute", a);
  STRATA_CHECK(static_cast<int>(dims.size()) == a.dim(), "permute: {} dims given for {}", dims.size(), a.str());
  std::vector<int> order(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    order[i] = detail::normalize_dim("permute", dims[i], a.dim());
    STRATA_CHECK(!seen[order[i]], "permute: dim {} repeats in [{}]", dims[i], fmt::join(dims, ", "));
    seen[order[i]] = true;
  }
  Shape shape(dims.size()), strides(dims.size());
  std::vector<int> inverse(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    shape[i] = a.shape()[order[i]];
    strides[i] = a.strides()[order[i]];
    inverse[order[i]] = static_cast<int>(i);
  }
  Tensor out = a.as_strided(shape, strides, a.offset());
  autograd::record("permute", {a}, out, [inverse](const Tensor& grad) -> std::vector<Tensor> {
    return {permute(grad, inverse)};
  });
  return out;
}

Tensor transpose(const Tensor& a, int dim0, int dim1) {
  check_input("transpose", a);
  int d0 = detail::normalize_dim("transpose", dim0, a.dim());
  int d1 = detail::normalize_dim("transpose", dim1, a.dim());
  Shape shape = a.shape(), strides = a.strides();
  std::swap(shape[d0], shape[d1]);
  std::swap(strides[d0], strides[d1]);
  Tensor out = a.as_strided(shape, strides, a.offset());
  autograd::record("transpose", {a}, out, [d0, d1](const Tensor& grad) -> std::vector<Tensor> {
    return {transpose(grad, d0, d1)};
  });
  return out;
}

Tensor slice(const Tensor& a, int dim, int64_t start, int64_t end, int64_t step) {
  check_input("slice", a);
  int d = detail::normalize_dim("slice", dim, a.dim());
  STRATA_CHECK(step > 0, "slice: step must be positive, got {}", step);
  // Python's rules: negative bounds count from the end, then both clamp to [0, size].
  int64_t size = a.shape()[d];
  auto clamp = [size](int64_t bound) { return std::clamp(bound < 0 ? bound + size : bound, int64_t{0}, size); };
  int64_t first = clamp(start), last = clamp(end);
  int64_t length = last > first ? (last - first + step - 1) / step : 0;
  Tensor out = raw_slice(a, d, first, length, step);
  autograd::record("slice", {a}, out, [input_shape = a.shape(), d, first, length, step](const Tensor& grad) {
    Tensor grad_input = Tensor::zeros(input_shape, grad.dtype(), grad.device());
    raw_slice(grad_input, d, first, length, step).copy_(grad);
    return std::vector<Tensor>{grad_input};
  });
  return out;
}

Tensor expand(const Tensor& a, const Shape& shape) {
  check_input("expand", a);
  STRATA_CHECK(shape.size() >= static_cast<size_t>(a.dim()), "expand: cannot expand {} to fewer dims {}", a.str(),
               shape_str(shape));
  size_t lead = shape.size() - a.dim();
  Shape resolved(shape.size()), strides(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      STRATA_CHECK(shape[i] >= 0, "expand: size {} of new leading dim {} in {} is invalid", shape[i], i,
                   shape_str(shape));
      resolved[i] = shape[i];
      continue;
    }
    int64_t size = a.shape()[i - lead];
    resolved[i] = shape[i] == -1 ? size : shape[i];
    if (resolved[i] == size) {
      strides[i] = a.strides()[i - lead];
    } else {
      STRATA_CHECK(size == 1, "expand: cannot expand {} to {}: dim {} has size {}, not 1", a.str(), shape_str(shape),
                   i - lead, size);
    }
  }
  Tensor out = a.as_strided(resolved, strides, a.offset());
  autograd::record("expand", {a}, out, [input_shape = a.shape()](const Tensor& grad) -> std::vector<Tensor> {
    return {detail::reduce_to_shape(grad, input_shape)};
  });
  return out;
}

Tensor unsqueeze(const Tensor& a, int dim) {
  check_input("unsqueeze", a);
  int d = detail::normalize_dim("unsqueeze", dim, a.dim() + 1);
  Shape shape = a.shape(), strides = a.strides();
  // The stride of a size-1 dim is never used to step; this one keeps the result contiguous when a is.
  int64_t stride = d < a.dim() ? a.shape()[d] * a.strides()[d] : 1;
  shape.insert(shape.begin() + d, 1);
  strides.insert(strides.begin() + d, stride);
  Tensor out = a.as_strided(shape, strides, a.offset());
  autograd::record("unsqueeze", {a}, out, [d](const Tensor& grad) -> std::vector<Tensor> {
    return {squeeze(grad, d)};
  });
  return out;
}

Tensor squeeze(const Tensor& a, int dim) {
  check_input("squeeze", a);
  int d = detail::normalize_dim("squeeze", dim, a.dim());
  STRATA_CHECK(a.shape()[d] == 1, "squeeze: dim {} of {} has size {}, not 1", dim, a.str(), a.shape()[d]);
  Shape shape = a.shape(), strides = a.strides();
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  Tensor out = a.as_strided(shape, strides, a.offset());
  autograd::record("squeeze", {a}, out, [d](const Tensor& grad) -> std::vector<Tensor> {
    return {unsqueeze(grad, d)};
  });
  return out;
}

Tensor contiguous(const Tensor& a) {
  check_input("contiguous", a);
  if (a.is_contiguous()) return a;
  Tensor out = a.clone();
  autograd::record("contiguous", {a}, out, [](const Tensor& grad) -> std::vector<Tensor> { return {grad}; });
  return out;
}

Tensor cast(const Tensor& a, DType dtype) {
  check_input("cast", a);
  if (a.dtype() == dtype) return a;
  Tensor out = a.to(dtype);
  // An integer or bool result carries no gradient.
  if (is_floating(dtype))
    autograd::record("cast", {a}, out, [input_dtype = a.dtype()](const Tensor& grad) -> std::vector<Tensor> {
      return {cast(grad, input_dtype)};
    });
  return out;
}

Tensor to_device(const Tensor& a, Device device) {
  check_input("to_device", a);
  if (a.device() == device) return a;
  Tensor out = a.to(device);
  autograd::record("to_device", {a}, out, [input_device = a.device()](const Tensor& grad) -> std::vector<Tensor> {
    return {to_device(grad, input_device)};
  });
  return out;
}

Tensor concat(const std::vector<Tensor>& tensors, int dim) {
  STRATA_CHECK(!tensors.empty(), "concat: no tensors given");
  for (size_t k = 0; k < tensors.size(); ++k)
    STRATA_CHECK(tensors[k].defined(), "concat: tensor {} is an undefined tensor", k);
  const Tensor& first = tensors[0];
  int d = detail::normalize_dim("concat", dim, first.dim());
  int64_t total = 0;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const Tensor& t = tensors[k];
    STRATA_CHECK(t.dtype() == first.dtype() && t.device() == first.device() && t.dim() == first.dim(),
                 "concat: tensor {} ({}) does not match tensor 0 ({}) in dtype, device or rank", k, t.str(),
                 first.str());
    for (int e = 0; e < t.dim(); ++e)
      STRATA_CHECK(e == d || t.shape()[e] == first.shape()[e],
                   "concat: tensor {} ({}) does not match tensor 0 ({}) outside dim {}", k, t.str(), first.str(), d);
    total += t.shape()[d];
  }
  Shape shape = first.shape();
  shape[d] = total;
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  std::vector<int64_t> sizes;
  int64_t start = 0;
  for (const Tensor& t : tensors) {
    raw_slice(out, d, start, t.shape()[d], 1).copy_(t);
    sizes.push_back(t.shape()[d]);
    start += t.shape()[d];
  }
  autograd::record("concat", tensors, out, [sizes, d](const Tensor& grad) { return split(grad, sizes, d); });
  return out;
}

std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int dim) {
  check_input("split", a);
  int d = detail::normalize_dim("split", dim, a.dim());
  int64_t total = 0;
  for (int64_t size : sizes) {
    STRATA_CHECK(size >= 0, "split: negative size {} in [{}]", size, fmt::join(sizes, ", "));
    total += size;
  }
  STRATA_CHECK(total == a.shape()[d], "split: sizes [{}] add up to {}, but dim {} of {} has size {}",
               fmt::join(sizes, ", "), total, dim, a.str(), a.shape()[d]);
  std::vector<Tensor> outputs;
  int64_t start = 0;
  for (int64_t size : sizes) {
    outputs.push_back(raw_slice(a, d, start, size, 1));
    start += size;
  }
  autograd::record("split", {a}, outputs, [d](const std::vector<Tensor>& grads) -> std::vector<Tensor> {
    return {concat(grads, d)};
  });
  return outputs;
}

}  // namespace strata::ops
