// Raw CUDA launcher of the route gather (nvcc-safe: no Tensor, no fmt); the layouts
// are in routes_args.h. `dtype`: float32 or bfloat16 (false for any other); a merge
// adds in float32 and rounds once. index points to device memory.
#pragma once

#include <cstdint>

#include "kernels/routes/routes_args.h"
#include "strata/core/dtype.h"

namespace strata::kernels {

bool route_gather_cuda(DType dtype, const RouteGatherSizes& sizes, const void* src, const int32_t* index, void* out);

}  // namespace strata::kernels
