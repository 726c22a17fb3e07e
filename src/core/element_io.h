// Internal: reading and writing one element of any dtype as double, on the host and
// on CUDA devices. Used by the core's copy, fill and random kernels only; compute
// kernels are templated on their element type instead.
#pragma once

#include <cstdint>

#include "core/strided.h"
#include "strata/core/philox.h"

namespace strata::core_kernels {

STRATA_HOST_DEVICE inline double load_element(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::Float32: return static_cast<const float*>(base)[i];
    case DType::Float64: return static_cast<const double*>(base)[i];
    case DType::BFloat16: return bf16_to_float(static_cast<const bfloat16*>(base)[i]);
    case DType::Float16: return f16_to_float(static_cast<const float16*>(base)[i]);
    case DType::Int32: return static_cast<const int32_t*>(base)[i];
    case DType::Int64: return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DType::UInt8: return static_cast<const uint8_t*>(base)[i];
    case DType::Bool: return static_cast<const bool*>(base)[i] ? 1.0 : 0.0;
  }
  return 0.0;
}

STRATA_HOST_DEVICE inline void store_element(void* base, DType dtype, int64_t i, double v) {
  switch (dtype) {
    case DType::Float32: static_cast<float*>(base)[i] = static_cast<float>(v); break;
    case DType::Float64: static_cast<double*>(base)[i] = v; break;
    case DType::BFloat16: static_cast<bfloat16*>(base)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::Float16: static_cast<float16*>(base)[i] = float_to_f16(static_cast<float>(v)); break;
    case DType::Int32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v); break;
    case DType::Int64: static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v); break;
    case DType::UInt8: static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(v); break;
    case DType::Bool: static_cast<bool*>(base)[i] = v != 0.0; break;
  }
}

// Element offset of the linear (row-major) index in a strided view.
STRATA_HOST_DEVICE inline int64_t strided_offset(const StridedView& v, int64_t linear) {
  int64_t offset = 0;
  for (int d = v.ndim - 1; d >= 0; --d) {
    int64_t coordinate = linear % v.shape[d];
    linear /= v.shape[d];
    offset += coordinate * v.strides[d];
  }
  return offset;
}

// Element i of a random draw. Normal uses Box-Muller on words 2i and 2i+1, in double
// so the CPU and CUDA results round to the same float.
STRATA_HOST_DEVICE inline double random_element(RandomKind kind, double a, double b, uint64_t seed, uint64_t offset,
                                                int64_t i) {
  if (kind == RandomKind::Normal) {
    double u1 = philox::to_unit_float(philox::word(seed, offset, 2 * static_cast<uint64_t>(i)));
    double u2 = philox::to_unit_float(philox::word(seed, offset, 2 * static_cast<uint64_t>(i) + 1));
    return a + b * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
  }
  double u = philox::to_unit_float(philox::word(seed, offset, static_cast<uint64_t>(i)));
  if (kind == RandomKind::Uniform) return a + (b - a) * u;
  return u <= a ? 1.0 : 0.0;
}

}  // namespace strata::core_kernels
