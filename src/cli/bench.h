// Shared by the `strata bench` subcommands (src/cli/bench*.cpp).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "strata/core/tensor.h"

namespace strata::cli {

// One result line: the name, the mean time, the rate (amount per second, in `unit`)
// and that rate as a percentage of `limit`, a reference measured in the same run.
void report(const std::string& name, double ms, double amount, const char* unit, double limit);

struct PassTiming {
  double forward_ms = 0, backward_ms = 0;
};

// Mean milliseconds of forward() with the tape off, and of the backward pass of
// its output, replayed from one recorded node with the grads of `leaves` cleared
// before each pass (so no gradient accumulation is timed). grad_out matches
// forward()'s output; the leaves come back without requires_grad.
PassTiming time_passes(Device device, const std::function<Tensor()>& forward, std::vector<Tensor> leaves,
                       const Tensor& grad_out, int iterations, int warmup);

// Whether a `--only` list asks for `group` (an empty list asks for everything).
bool selected(const std::vector<std::string>& only, const std::string& group);

}  // namespace strata::cli
