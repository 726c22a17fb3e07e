// CPU reference of the route gather (float and double); the layouts are in
// routes_args.h. OpenMP over output rows; a merge adds its routes in order, so the
// result does not depend on the thread count.
#pragma once

#include "kernels/routes/routes_args.h"

namespace strata::kernels {

template <class T>
void route_gather_cpu(const RouteGatherSizes& sizes, const T* src, const int32_t* index, T* out);

}  // namespace strata::kernels
