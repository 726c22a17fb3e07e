// Raw CUDA launchers of the indexing family (nvcc-safe: no Tensor, no fmt). The
// operands, their (outer, n, inner) layout and the four ops are those of
// indexing_cpu.h; values are float32 or bfloat16, indices int64, all contiguous.
//
// Index check: an index outside [0, n) is skipped (index_select and gather write 0
// for it) and reported in `error`, a device int64[2] the caller zeroes beforehand
// and reads back afterwards: {1, the offending index} (any one of them, when several).
//
// The accumulating kernels add with float32 atomicAdd into `accumulator`: the result
// itself for float32, a float32 buffer the caller rounds to bfloat16 afterwards. The
// order of the additions, and so the last bit of a sum, depends on scheduling.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

// Each returns false when `dtype` is not float32 or bfloat16.
bool index_select_cuda(DType dtype, const void* a, const int64_t* index, void* out, int64_t outer, int64_t n,
                       int64_t k, int64_t inner, int64_t* error);
bool index_add_cuda(DType source_dtype, const void* src, const int64_t* index, float* accumulator, int64_t outer,
                    int64_t n, int64_t k, int64_t inner, int64_t* error);
bool gather_cuda(DType dtype, const void* a, const int64_t* index, void* out, int64_t outer, int64_t n, int64_t k,
                 int64_t inner, int64_t* error);
bool scatter_add_cuda(DType source_dtype, const void* src, const int64_t* index, float* accumulator, int64_t outer,
                      int64_t n, int64_t k, int64_t inner, int64_t* error);

}  // namespace strata::kernels
