// Raw CUDA launchers of the embedding lookup (nvcc-safe: no Tensor, no fmt).
// weight (vocab, dim), ids (tokens) int64, all contiguous.
//
// Forward: one block per token row (a grid-stride loop over rows), whose threads
// copy the row in 16-byte vectors when the row size and both pointers allow it
// (else 4- or 2-byte words). The row is moved as raw bytes, so the forward works for
// any element type of 2 bytes or more; an id outside [0, vocab) writes a zero row and is reported in
// `error`, a device int64[2] zeroed by the caller: {1, the id}.
//
// Backward: one block per token row adds grad_out's row into the dense float32
// `grad_weight` (vocab, dim) with atomicAdd; for bfloat16 weights that is a float32
// buffer the caller rounds once. Atomics make the order in which repeated ids are
// summed, and so the last bit of their float32 gradient, depend on scheduling.
// The ids were range-checked by the forward pass and are not checked again.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

void embedding_forward_cuda(const void* weight, const int64_t* ids, void* out, int64_t tokens, int64_t vocab,
                            int64_t row_bytes, int64_t* error);
// Returns false when grad_dtype is not float32 or bfloat16.
bool embedding_backward_cuda(DType grad_dtype, const void* grad_out, const int64_t* ids, float* grad_weight,
                             int64_t tokens, int64_t dim);

}  // namespace strata::kernels
