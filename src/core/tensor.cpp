#include "strata/core/tensor.h"

#include <cmath>
#include <cstring>

#include "core/strided.h"

namespace strata {

std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    strides[d] = stride;
    stride *= shape[d];
  }
  return strides;
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

namespace {

core_kernels::StridedView strided_view(const Tensor& t) {
  STRATA_CHECK(t.dim() <= core_kernels::kMaxDims, "tensor {} has more than {} dimensions", t.str(),
               core_kernels::kMaxDims);
  core_kernels::StridedView v;
  v.data = t.data_ptr();
  v.dtype = t.dtype();
  v.ndim = t.dim();
  for (int d = 0; d < t.dim(); ++d) {
    v.shape[d] = t.shape()[d];
    v.strides[d] = t.strides()[d];
  }
  return v;
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t s : shape) STRATA_CHECK(s >= 0, "negative size in shape {}", shape_str(shape));
  STRATA_CHECK(static_cast<int>(shape.size()) <= core_kernels::kMaxDims, "shape {} has more than {} dimensions",
               shape_str(shape), core_kernels::kMaxDims);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}
Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }
Tensor Tensor::scalar(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
  std::vector<double> values(n);
  for (int64_t i = 0; i < n; ++i) values[i] = static_cast<double>(i);
  return from_vector(values, {n}, Device::cpu()).to(dtype).to(device);
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  STRATA_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "{} values given for shape {}",
               values.size(), shape_str(shape));
  Tensor t = empty(shape, dtype_of<T>(), Device::cpu());
  if (!values.empty()) {
    if constexpr (std::is_same_v<T, bool>) {
      bool* out = t.data<bool>();
      for (size_t i = 0; i < values.size(); ++i) out[i] = values[i];
    } else {
      std::memcpy(t.data_ptr(), values.data(), values.size() * sizeof(T));
    }
  }
  return t.to(device);
}

int64_t Tensor::size(int dim) const {
  int n = this->dim();
  int d = dim < 0 ? dim + n : dim;
  STRATA_CHECK(d >= 0 && d < n, "dimension {} out of range for tensor {}", dim, str());
  return impl_->shape[d];
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int d = dim() - 1; d >= 0; --d) {
    if (impl_->shape[d] != 1 && impl_->strides[d] != expected) return false;
    expected *= impl_->shape[d];
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined tensor";
  return fmt::format("{}{} on {}", dtype_name(dtype()), shape_str(shape()), device().str());
}

void* Tensor::data_ptr() const {
  return static_cast<char*>(impl_->storage->data()) + impl_->offset * static_cast<int64_t>(element_size());
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
  STRATA_CHECK(shape.size() == strides.size(), "as_strided: shape {} and strides {} differ in rank", shape_str(shape),
               shape_str(strides));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = impl_->dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::view(const Shape& shape) const {
  Shape resolved = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t d = 0; d < resolved.size(); ++d) {
    if (resolved[d] == -1) {
      STRATA_CHECK(infer < 0, "view: more than one -1 in {}", shape_str(shape));
      infer = static_cast<int>(d);
    } else {
      known *= resolved[d];
    }
  }
  if (infer >= 0) {
    STRATA_CHECK(known > 0 && numel() % known == 0, "view: cannot view {} as {}", str(), shape_str(shape));
    resolved[infer] = numel() / known;
  }
  STRATA_CHECK(shape_numel(resolved) == numel(), "view: cannot view {} as {} ({} vs {} elements)", str(),
               shape_str(shape), numel(), shape_numel(resolved));
  STRATA_CHECK(is_contiguous(), "view: tensor {} is not contiguous", str());
  return as_strided(resolved, contiguous_strides(resolved), offset());
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor source = contiguous();
  Tensor out = empty(shape(), dtype(), target);
  size_t nbytes = static_cast<size_t>(numel()) * element_size();
  if (nbytes == 0) return out;
#ifdef STRATA_WITH_CUDA
  if (target.is_cpu() && source.device().is_cuda()) {
    core_kernels::cuda_memcpy_to_host(out.data_ptr(), source.data_ptr(), nbytes, source.device().index);
  } else if (target.is_cuda() && source.device().is_cpu()) {
    core_kernels::cuda_memcpy_to_device(out.data_ptr(), source.data_ptr(), nbytes, target.index);
  } else {
    return source.to(Device::cpu()).to(target);
  }
  return out;
#else
  STRATA_FAIL("cannot copy {} to {}: this Strata was built without CUDA", str(), target.str());
#endif
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor out = empty(shape(), target, device());
  out.copy_(*this);
  return out;
}

void Tensor::copy_(const Tensor& source) {
  STRATA_CHECK(source.shape() == shape(), "copy_: shapes {} and {} differ", shape_str(shape()),
               shape_str(source.shape()));
  if (numel() == 0) return;
  Tensor src = source.device() == device() ? source : source.to(device());
  impl_->storage->bump_version();
  if (device().is_cpu()) {
    core_kernels::copy_cpu(strided_view(*this), strided_view(src));
  } else {
#ifdef STRATA_WITH_CUDA
    core_kernels::copy_cuda(strided_view(*this), strided_view(src));
#endif
  }
}

void Tensor::fill_(double value) {
  if (numel() == 0) return;
  impl_->storage->bump_version();
  if (device().is_cpu()) {
    core_kernels::fill_cpu(strided_view(*this), value);
  } else {
#ifdef STRATA_WITH_CUDA
    core_kernels::fill_cuda(strided_view(*this), value);
#endif
  }
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = to(Device::cpu()).to(dtype_of<T>()).contiguous();
  std::vector<T> values(static_cast<size_t>(numel()));
  if constexpr (std::is_same_v<T, bool>) {
    const bool* in = host.data<bool>();
    for (size_t i = 0; i < values.size(); ++i) values[i] = in[i];
  } else if (!values.empty()) {
    std::memcpy(values.data(), host.data_ptr(), values.size() * sizeof(T));
  }
  return values;
}

double Tensor::item() const {
  STRATA_CHECK(numel() == 1, "item: tensor {} has {} elements, not 1", str(), numel());
  return to_vector<double>()[0];
}

Tensor& Tensor::set_requires_grad(bool requires_grad) {
  STRATA_CHECK(!requires_grad || is_floating(dtype()), "tensor {} cannot require grad: not a floating dtype", str());
  STRATA_CHECK(is_leaf(), "set_requires_grad: tensor {} is not a leaf; detach() it first", str());
  impl_->requires_grad = requires_grad;
  return *this;
}

Tensor Tensor::detach() const { return as_strided(shape(), strides(), offset()); }

#define STRATA_INSTANTIATE(T)                                                                  \
  template Tensor Tensor::from_vector<T>(const std::vector<T>&, const Shape&, Device device); \
  template std::vector<T> Tensor::to_vector<T>() const;
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
STRATA_INSTANTIATE(bfloat16)
STRATA_INSTANTIATE(float16)
STRATA_INSTANTIATE(int32_t)
STRATA_INSTANTIATE(int64_t)
STRATA_INSTANTIATE(uint8_t)
STRATA_INSTANTIATE(bool)
#undef STRATA_INSTANTIATE

}  // namespace strata
