// Element types. float32 and float64 compute on the CPU; bfloat16 and float16
// are stored on the CPU (converted for the reference kernels) and computed on CUDA
// with float32 accumulation.
#pragma once

#include <cstdint>
#include <cstring>
#include <math.h>
#include <string>

#include "strata/core/host_device.h"

namespace strata {

enum class DType : uint8_t { Float32, Float64, BFloat16, Float16, Int32, Int64, UInt8, Bool };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
DType parse_dtype(const std::string& name);  // "float32", "bf16", ...; throws on unknown names
inline bool is_floating(DType d) {
  return d == DType::Float32 || d == DType::Float64 || d == DType::BFloat16 || d == DType::Float16;
}

// Bit-exact storage types with the same layout as CUDA's __nv_bfloat16 and __half.
struct bfloat16 {
  uint16_t bits;
};
struct float16 {
  uint16_t bits;
};

STRATA_HOST_DEVICE inline float bf16_to_float(bfloat16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
// Round to nearest even; NaN stays NaN.
STRATA_HOST_DEVICE inline bfloat16 float_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bfloat16{static_cast<uint16_t>(u >> 16)};
}
// IEEE binary16 with subnormals, round to nearest even.
STRATA_HOST_DEVICE inline float f16_to_float(float16 v) {
  uint32_t sign = (v.bits & 0x8000u) << 16, exponent = (v.bits >> 10) & 0x1fu, mantissa = v.bits & 0x3ffu;
  if (exponent == 0) {
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // 2^-24
    return sign ? -magnitude : magnitude;
  }
  uint32_t u = exponent == 0x1f ? (sign | 0x7f800000u | (mantissa << 13)) : (sign | ((exponent + 112) << 23) | (mantissa << 13));
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
STRATA_HOST_DEVICE inline float16 float_to_f16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return float16{static_cast<uint16_t>(sign | 0x7e00u)};  // NaN
  if (magnitude >= 0x477ff000u) return float16{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
  if (magnitude < 0x38800000u) {                                                      // subnormal or zero
    float scaled = fabsf(f) * 16777216.0f;                                            // 2^24, exact
    return float16{static_cast<uint16_t>(sign | static_cast<uint16_t>(rintf(scaled)))};
  }
  uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
  return float16{static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13))};
}

template <class T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::Float32; }
template <> constexpr DType dtype_of<double>() { return DType::Float64; }
template <> constexpr DType dtype_of<bfloat16>() { return DType::BFloat16; }
template <> constexpr DType dtype_of<float16>() { return DType::Float16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::Int32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::Int64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::UInt8; }
template <> constexpr DType dtype_of<bool>() { return DType::Bool; }

}  // namespace strata
