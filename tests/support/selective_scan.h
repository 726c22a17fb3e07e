// selective_scan and selective_scan_routes in the tests (the CPU test and the CUDA
// test): their options with every input and output on, and the routes computed as K
// separate selective_scan calls, which selective_scan_routes must equal.
#pragma once

#include <vector>

#include "strata/ops/ops.h"
#include "strata/ops/ssm.h"

namespace strata::testing {

// in: u, delta, A, B, C, D, z, delta_bias, initial_state, in the layouts of
// selective_scan or of selective_scan_routes. Every option is on: D, the gate z,
// delta_bias with softplus, the initial state, and the final and per-step states
// as outputs; the scan runs forward.
inline ops::SelectiveScanOptions all_scan_options(const std::vector<Tensor>& in) {
  ops::SelectiveScanOptions options;
  options.D = in[5];
  options.z = in[6];
  options.delta_bias = in[7];
  options.initial_state = in[8];
  options.delta_softplus = true;
  options.return_final_state = true;
  options.return_states = true;
  return options;
}

// selective_scan_routes(in, reversed, all_scan_options(in)) as K calls of
// selective_scan, route k on the slices [:, k] (or [k] for the per-route
// parameters), its outputs stacked along dim 1 as selective_scan_routes returns them.
inline ops::SelectiveScanResult scan_routes_one_by_one(const std::vector<Tensor>& in,
                                                       const std::vector<bool>& reversed) {
  std::vector<Tensor> y, final_state, states;
  for (int64_t k = 0; k < in[0].size(1); ++k) {
    auto route = [k](const Tensor& t, int dim) { return ops::squeeze(ops::slice(t, dim, k, k + 1), dim); };
    ops::SelectiveScanOptions options = all_scan_options(in);
    options.D = route(in[5], 0);
    options.z = route(in[6], 1);
    options.delta_bias = route(in[7], 0);
    options.initial_state = route(in[8], 1);
    options.reverse = static_cast<size_t>(k) < reversed.size() && reversed[k];
    ops::SelectiveScanResult r = ops::selective_scan(route(in[0], 1), route(in[1], 1), route(in[2], 0),
                                                     route(in[3], 1), route(in[4], 1), options);
    y.push_back(ops::unsqueeze(r.y, 1));
    final_state.push_back(ops::unsqueeze(r.final_state, 1));
    states.push_back(ops::unsqueeze(r.states, 1));
  }
  return {ops::concat(y, 1), ops::concat(final_state, 1), ops::concat(states, 1)};
}

}  // namespace strata::testing
