// Element conversions shared by the CUDA kernels: kernels load float32, bfloat16
// or float16 elements, compute in float32 and store back in the element type.
//
// from_float rounds to nearest even, the rounding of strata::float_to_bf16 on the
// host (__float2bfloat16 and __float2bfloat16_rn are the same conversion). There is
// deliberately no to_float(double): a double argument keeps converting to
// float through to_float(float).
//
// No fmt and no Tensor here: nvcc includes this file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace strata::kernels {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

}  // namespace strata::kernels
