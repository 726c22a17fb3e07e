// Range checks of integer indices, shared by the indexing and embedding ops. On the
// CPU the indices are scanned before the kernel runs; on CUDA the kernel itself
// reports a bad index into a small device buffer (see indexing_cuda.h) that is read
// back after the launch, which waits for the stream.
#pragma once

#include "strata/core/tensor.h"

namespace strata::kernels {

// `index` (int32 or int64, any layout) as a contiguous int64 tensor on its device.
Tensor index_as_int64(const Tensor& index);

// Throws "<op>: index <value> is out of range for dim <dim> of <target> (size <n>)"
// for the first int64 CPU index outside [0, n).
void check_index_range_cpu(const char* op, const Tensor& index, int64_t n, int dim, const Tensor& target);

// A zeroed device int64[2] for the CUDA kernels to report a bad index into, and the
// read-back that throws the same message as the CPU check when one was reported.
Tensor cuda_index_error_buffer(Device device);
void raise_reported_index_error(const char* op, const Tensor& error_buffer, int64_t n, int dim, const Tensor& target);

}  // namespace strata::kernels
