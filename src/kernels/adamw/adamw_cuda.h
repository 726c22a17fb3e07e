// Raw CUDA launchers of the optimizer's multi-tensor kernels (nvcc-safe: no Tensor,
// no fmt). The caller has checked devices, dtypes, shapes and contiguity.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

// Elements one CUDA block handles; a tensor of n elements takes ceil(n / chunk)
// blocks. A multiple of 4, so every chunk of an aligned tensor starts aligned for
// 16-byte vector loads.
constexpr int64_t kMultiTensorChunk = 4096;

struct AdamWPointers {
  float* param;
  const void* grad;  // float32 or bfloat16, as the launch says
  float* exp_avg;
  float* exp_avg_sq;
  int64_t numel;
  bool weight_decay;
};

// Per-launch constants, derived on the host in double and rounded once.
struct AdamWCoefficients {
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float eps;
  float step_size;                   // lr / (1 - beta1^t)
  float inv_sqrt_bias_correction2;   // 1 / sqrt(1 - beta2^t)
  float decay_factor;                // 1 - lr * weight_decay, for tensors that decay
};

// One AdamW step over `count` tensors whose grads all have `grad_dtype`. Returns
// false when grad_dtype is neither float32 nor bfloat16.
bool adamw_step_cuda(DType grad_dtype, const AdamWPointers* tensors, int64_t count,
                     const AdamWCoefficients& coefficients);

// Blocks the squared-norm reduction uses for these tensor sizes: the caller
// provides that many doubles of device scratch.
int64_t squared_norm_cuda_blocks(const int64_t* numels, int64_t count);

// Writes sum of squares over all tensors (of `dtype`: float32 or bfloat16) to the
// device double *result, through `partials` (squared_norm_cuda_blocks doubles).
// Deterministic: one partial per block, summed in a fixed order. Returns false for
// an unsupported dtype.
bool squared_norm_cuda(DType dtype, void* const* tensors, const int64_t* numels, int64_t count, double* partials,
                       double* result);

// tensors[i] *= factor. Returns false for an unsupported dtype.
bool scale_in_place_cuda(DType dtype, void* const* tensors, const int64_t* numels, int64_t count, float factor);

}  // namespace strata::kernels
