// Raw CUDA launchers of the chunked SSD (nvcc-safe: no Tensor, no fmt). The
// equations, layouts and gradient conventions are in ssd_args.h and ssd_cpu.h; the
// tiling is described at the top of ssd_cuda.cu.
//
// `dtype` is that of x, dt, B, C, y and their gradients: float32 or bfloat16; each
// launcher returns false for any other. A, D, dt_bias, the states and their
// gradients are float32; all arithmetic is float32.
#pragma once

#include <cstdint>

#include "kernels/ssd/ssd_args.h"
#include "strata/core/dtype.h"

namespace strata::kernels {

// Float32 scratch the launchers need, in elements; the caller allocates it on the
// device (its contents need not be initialised).
int64_t ssd_forward_cuda_workspace(const SsdSizes& sizes);
int64_t ssd_backward_cuda_workspace(const SsdSizes& sizes);

// final_state may be null.
bool ssd_forward_cuda(DType dtype, const SsdSizes& sizes, const SsdInputs<void, float>& inputs, void* y,
                      float* final_state, float* workspace);

// grad_y in `dtype`, like y; grad_final_state may be null. Recomputes the chunk
// states from the inputs.
bool ssd_backward_cuda(DType dtype, const SsdSizes& sizes, const SsdInputs<void, float>& inputs, const void* grad_y,
                       const float* grad_final_state, const SsdGrads<void, float>& grads, float* workspace);

}  // namespace strata::kernels
