// Raw CUDA launchers of the grouped expert GEMM (nvcc-safe: no Tensor, no fmt). The
// same products as grouped_gemm_cpu.h, each in ONE launch over all experts, whatever
// the group sizes. `dtype`: float32 or bfloat16 for every operand (false for any
// other), float32 accumulation. offsets: (experts + 1) int64 in device memory, never
// read by the host; each group is clamped to [0, rows], so bad offsets cannot reach
// outside the operands (rows outside every group are not written).
//
// Tiling (both kernels): a block of 256 threads computes one 64 x 64 tile of the
// output with a 16-deep slice of each operand staged in shared memory per step
// (converted to float32 as it is loaded, padded by one column against bank
// conflicts); each thread accumulates a 4 x 4 sub-tile in registers, strided by 16 so
// that a warp reads shared memory without conflicts. Operand tiles are loaded along
// whichever of their dims is contiguous in memory.
//
// Rows kernel: grid.x enumerates row tiles of all groups together; the bound
// ceil(rows / 64) + experts covers any split of the rows into groups, and surplus
// blocks exit. Each block finds its expert and row range from the offsets with one
// warp (prefix sums of the groups' tile counts). grid.y covers the output columns.
// Weight-gradient kernel: grid.z is the expert, (grid.y, grid.x) the tile of
// grad_weight[e]; the reduction runs over the group's rows (an empty group writes
// zeros).
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

bool grouped_gemm_rows_cuda(DType dtype, const void* x, const void* weight, const int64_t* offsets, int64_t rows,
                            int64_t experts, int64_t k, int64_t n, bool transpose_weight, void* out);
bool grouped_gemm_weight_grad_cuda(DType dtype, const void* grad_out, const void* x, const int64_t* offsets,
                                   int64_t rows, int64_t experts, int64_t n_out, int64_t n_in, void* grad_weight);

}  // namespace strata::kernels
