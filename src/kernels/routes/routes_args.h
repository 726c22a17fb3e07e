// The arguments of the route gather kernel, shared by the CPU reference and the CUDA
// launcher (nvcc-safe). One kernel serves route_gather, route_scatter and
// route_merge: each reads rows of `channels` contiguous values through an int32
// table index (routes, length) (the routes' orders, or their inverses):
//
//   sum_routes false: out (batch, routes, length, channels),
//                     out[b, k, t, :] = src[b, k or 0, index[k, t], :]
//   sum_routes true:  out (batch, length, channels),
//                     out[b, t, :] = sum_k src[b, k, index[k, t], :]   (in route order)
//
// src is (batch, routes, length, channels) when source_per_route, else (batch,
// length, channels). All contiguous; every index is in [0, length).
#pragma once

#include <cstdint>

namespace strata::kernels {

struct RouteGatherSizes {
  int64_t batch = 0;
  int64_t routes = 0;
  int64_t length = 0;
  int64_t channels = 0;
  bool source_per_route = false;
  bool sum_routes = false;  // requires source_per_route
};

}  // namespace strata::kernels
