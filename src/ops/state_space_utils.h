// Helpers of the state-space ops (ops/ssm.cpp: selective_scan, causal_conv1d;
// ops/ssd.cpp: ssd_chunked, gated_rms_norm), whose kernels take activations in
// their own dtype and parameters, states and summed gradients in a wider one.
#pragma once

#include "ops/op_utils.h"
#include "strata/core/error.h"
#include "strata/core/tensor.h"

namespace strata::ops::detail {

// An activation: the device and dtype of the reference activation (named in the message).
inline void check_activation(const char* op, const char* name, const Tensor& t, const Tensor& reference,
                             const char* reference_name) {
  check_same_device(op, reference, t);
  STRATA_CHECK(t.dtype() == reference.dtype(), "{}: {} {} must have the dtype of {} ({})", op, name, t.str(),
               reference_name, dtype_name(reference.dtype()));
}

// A parameter or state: the device of the activations, their dtype or float32.
inline void check_parameter(const char* op, const char* name, const Tensor& t, const Tensor& reference) {
  check_same_device(op, reference, t);
  STRATA_CHECK(t.dtype() == reference.dtype() || t.dtype() == DType::Float32, "{}: {} {} must be {}{}", op, name,
               t.str(), reference.dtype() == DType::Float32 ? "" : dtype_name(reference.dtype()),
               reference.dtype() == DType::Float32 ? "float32" : " or float32");
}

// The dtype the kernels keep parameters, states and summed gradients in.
inline DType state_dtype_for(DType activation) {
  return activation == DType::Float64 ? DType::Float64 : DType::Float32;
}

// The copies a kernel reads and a tape node keeps: contiguous, without autograd
// history; `prepared` also converts to the state dtype. Undefined stays undefined.
inline Tensor prepared(const Tensor& t, DType dtype) {
  return t.defined() ? t.to(dtype).contiguous().detach() : Tensor();
}
inline Tensor kept(const Tensor& t) { return t.defined() ? t.contiguous().detach() : Tensor(); }

// The data of an optional tensor, nullptr when it is undefined.
template <class T>
T* pointer(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
inline void* raw_pointer(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

}  // namespace strata::ops::detail
