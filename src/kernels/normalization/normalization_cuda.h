// Raw CUDA launchers of layer normalisation and RMS normalisation over rows of
// `dim` contiguous elements (nvcc-safe: no Tensor, no fmt). float32 and bfloat16
// data, float32 statistics and arithmetic. Pointers are device pointers; the
// optional ones are null when absent. dim < 2^31.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

struct NormForwardCudaArguments {
  DType dtype = DType::Float32;
  int64_t rows = 0;
  int64_t dim = 0;
  bool subtract_mean = true;  // layer_norm; false: rms_norm
  float eps = 0.0f;
  const void* x = nullptr;       // (rows, dim)
  const void* weight = nullptr;  // (dim) or null
  const void* bias = nullptr;    // (dim) or null
  void* y = nullptr;             // (rows, dim)
  float* mean = nullptr;         // (rows); layer_norm only
  float* rstd = nullptr;         // (rows)
};

struct NormBackwardCudaArguments {
  DType dtype = DType::Float32;
  int64_t rows = 0;
  int64_t dim = 0;
  bool subtract_mean = true;
  const void* dy = nullptr;      // (rows, dim)
  const void* x = nullptr;       // (rows, dim)
  const void* weight = nullptr;  // (dim) or null
  const float* mean = nullptr;   // (rows); layer_norm only
  const float* rstd = nullptr;   // (rows)
  void* dx = nullptr;            // (rows, dim)
  void* dweight = nullptr;       // (dim) or null: not wanted
  void* dbias = nullptr;         // (dim) or null: not wanted
  float* workspace = nullptr;    // norm_backward_cuda_workspace(...) floats
};

// Return false when the dtype is not supported.
bool norm_forward_cuda(const NormForwardCudaArguments& args);
bool norm_backward_cuda(const NormBackwardCudaArguments& args);

// Floats of device workspace norm_backward_cuda needs for these arguments (the
// per-block partial sums of dweight and dbias); 0 when neither is wanted.
int64_t norm_backward_cuda_workspace(const NormBackwardCudaArguments& args);

}  // namespace strata::kernels
