// For .cu files: the stream Strata kernels launch on.
#pragma once

#include <cuda_runtime.h>

namespace strata::cuda {
cudaStream_t stream();  // the current device's Strata stream
}  // namespace strata::cuda
