// Raw CUDA launchers of Mamba-2's gated RMSNorm (nvcc-safe: no Tensor, no fmt).
// The equations and layouts are in gated_rms_norm_cpu.h. `dtype` is that of x, z,
// weight, y and the gradients: float32 or bfloat16 (each launcher returns false for
// any other); rstd and all arithmetic are float32. z, weight, dz and dweight may be
// null (dz exactly when z is; dweight when weight is).
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

// Float32 scratch the backward launcher needs, in elements.
int64_t gated_rms_norm_cuda_workspace(int64_t rows, int64_t dim);

bool gated_rms_norm_forward_cuda(DType dtype, const void* x, const void* z, const void* weight, void* y, float* rstd,
                                 int64_t rows, int64_t dim, int64_t group_size, double eps);

bool gated_rms_norm_backward_cuda(DType dtype, const void* dy, const void* x, const void* z, const void* weight,
                                  const float* rstd, void* dx, void* dz, void* dweight, float* workspace, int64_t rows,
                                  int64_t dim, int64_t group_size);

}  // namespace strata::kernels
