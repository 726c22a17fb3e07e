// Raw CUDA launchers of the grouped expert GEMM (nvcc-safe: no Tensor, no fmt). The
// same products as grouped_gemm_cpu.h, each in ONE launch over all experts, whatever
// the group sizes. `dtype`: float32 or bfloat16 for every operand (false for any
// other), float32 accumulation. offsets: (experts + 1) int64 in device memory, never
// read by the host; each group is clamped to [0, rows], so bad offsets cannot reach
// outside the operands (rows outside every group are not written).
//
// Two paths, chosen per call:
//  - tensor cores, for bfloat16 operands whose matrix dims are multiples of 8 with
//    16-byte-aligned base pointers: mma.sync m16n8k16 (float32 accumulation) on
//    128 x 128 output tiles, 4 warps of 64 x 64, K in slices of 32 through a 4-stage
//    cp.async ring in shared memory (80 KiB per block, two blocks per SM). Operands
//    are staged as they lie in memory and transposed, where a product needs it, by
//    ldmatrix.trans: x W^T (forward), dY W (input gradient) and dY^T X (weight
//    gradient) all read their operands in place.
//  - CUDA cores, for float32 and any other bfloat16 case: a block of 256 threads
//    computes one 64 x 64 tile with a 16-deep slice of each operand staged in shared
//    memory per step (converted to float32, padded by one column against bank
//    conflicts); each thread accumulates a 4 x 4 sub-tile strided by 16.
//
// Rows kernels: row tiles of all groups are numbered together; the bound
// ceil(rows / tile) + experts covers any split of the rows into groups, and surplus
// blocks exit. Each block finds its expert and row range from the offsets with one
// warp (prefix sums of the groups' tile counts), so variable, empty and one-row
// groups need no host work. Weight-gradient kernels: grid.z is the expert, (grid.y,
// grid.x) the tile of grad_weight[e]; the reduction runs over the group's rows (an
// empty group writes zeros).
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

bool grouped_gemm_rows_cuda(DType dtype, const void* x, const void* weight, const int64_t* offsets, int64_t rows,
                            int64_t experts, int64_t k, int64_t n, bool transpose_weight, void* out);
bool grouped_gemm_weight_grad_cuda(DType dtype, const void* grad_out, const void* x, const int64_t* offsets,
                                   int64_t rows, int64_t experts, int64_t n_out, int64_t n_in, void* grad_weight);

}  // namespace strata::kernels
