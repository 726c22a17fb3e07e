// Times a piece of work on a device: CUDA events on the Strata stream for CUDA
// (so only device time between the events counts), a steady clock for the CPU.
#pragma once

#include <functional>

#include "strata/core/device.h"

namespace strata {

// Runs `work` `warmup` times, then `iterations` times, and returns the mean
// milliseconds per iteration.
double time_ms(Device device, const std::function<void()>& work, int iterations = 10, int warmup = 3);

}  // namespace strata
