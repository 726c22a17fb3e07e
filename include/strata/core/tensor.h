// Tensor: a view (shape, strides in elements, offset) onto shared Storage, plus the
// autograd metadata of that value. Copies of a Tensor share everything (it is a
// handle); views share the storage only.
//
// The member functions here are raw and never recorded on the tape; the
// differentiable versions (reshape, permute, slice, cast, to_device, ...) live in
// strata::ops.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "strata/core/device.h"
#include "strata/core/dtype.h"
#include "strata/core/error.h"
#include "strata/core/memory.h"

namespace strata {

using Shape = std::vector<int64_t>;

namespace autograd {
class Node;
}

class Tensor;
using GradHook = std::function<void(const Tensor& grad)>;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;
  int64_t offset = 0;
  DType dtype = DType::Float32;

  // Autograd. A leaf that requires grad accumulates into `grad`; a non-leaf names
  // the node that produced it and which of that node's outputs it is.
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<autograd::Node> grad_fn;
  int output_index = 0;
  std::vector<GradHook> grad_hooks;  // leaves only: run once the grad of a backward pass is complete
  std::string name;                  // parameter name, for messages
};

std::string shape_str(const Shape& shape);  // "[2, 3]"
Shape contiguous_strides(const Shape& shape);
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Factories. Values are converted from double to the dtype.
  static Tensor empty(const Shape& shape, DType dtype = DType::Float32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::Float32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::Float32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::Float32, Device device = Device::cpu());
  static Tensor arange(int64_t n, DType dtype = DType::Int64, Device device = Device::cpu());
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu());
  static Tensor scalar(double value, DType dtype = DType::Float32, Device device = Device::cpu());

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t offset() const { return impl_->offset; }
  int dim() const { return static_cast<int>(impl_->shape.size()); }
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const { return shape_numel(impl_->shape); }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device(); }
  size_t element_size() const { return dtype_size(impl_->dtype); }
  bool is_contiguous() const;
  Storage& storage() const { return *impl_->storage; }
  std::string str() const;  // "float32[2, 3] on cpu"

  // Pointer to the first element (storage + offset).
  void* data_ptr() const;
  template <class T>
  T* data() const {
    STRATA_CHECK(dtype_of<T>() == dtype(), "tensor of {} accessed as {}", str(), dtype_name(dtype_of<T>()));
    return static_cast<T*>(data_ptr());
  }

  // Raw views and copies (not recorded by autograd).
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset) const;
  Tensor view(const Shape& shape) const;  // contiguous tensors only; one -1 is inferred
  Tensor contiguous() const;              // itself when already contiguous
  Tensor clone() const;                   // always a fresh contiguous copy
  Tensor to(Device device) const;         // itself when already there
  Tensor to(DType dtype) const;           // itself when already that dtype
  void copy_(const Tensor& source);       // same shape; any dtype and device
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // Host copies of the values, converted to T (float, double, int64_t, ...).
  template <class T>
  std::vector<T> to_vector() const;
  double item() const;  // one-element tensors

  // Autograd.
  bool requires_grad() const { return impl_->requires_grad; }
  Tensor& set_requires_grad(bool requires_grad);
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  Tensor grad() const { return Tensor(impl_->grad); }
  void set_grad(const Tensor& grad) { impl_->grad = grad.impl_; }
  void zero_grad() { impl_->grad.reset(); }
  const std::shared_ptr<autograd::Node>& grad_fn() const { return impl_->grad_fn; }
  Tensor detach() const;  // shares storage, no autograd history
  void register_grad_hook(GradHook hook) { impl_->grad_hooks.push_back(std::move(hook)); }
  const std::string& name() const { return impl_->name; }
  void set_name(std::string name) { impl_->name = std::move(name); }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

}  // namespace strata
