// Raw CUDA launcher of the DMA keep mask (nvcc-safe: no Tensor, no fmt); the
// definition of keep_end and block_keep_end is in dynamic_mask_cpu.h.
#pragma once

#include <cstdint>

namespace strata::kernels {

// bias (rows, length) float32 on the device; keep_end (rows, length) and
// block_keep_end (rows, ceil(length / kKeepEndBlock)) int32. window >= 1.
void keep_window_ends_cuda(const float* bias, int64_t rows, int64_t length, int64_t window, int32_t* keep_end,
                           int32_t* block_keep_end);

}  // namespace strata::kernels
