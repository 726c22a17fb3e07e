// `strata bench-comm`: the all-reduce bus bandwidth of a Communicator against a
// plain ncclAllReduce on the same NCCL communicator, in the same run.
#pragma once

#include <cstdint>
#include <vector>

#include "strata/dist/communicator.h"

namespace strata::dist {

struct AllReduceTiming {
  int64_t bytes = 0;
  double communicator_ms = 0;  // per blocking all-reduce, the slowest rank's mean
  double async_ms = 0;         // per all_reduce_async + wait (the gradient reducer's path), likewise
  double plain_ms = -1;        // the same for plain ncclAllReduce; < 0 on Gloo (no baseline)
};

// Collective. Float32 sum all-reduces of each size (bytes, a multiple of 4), timed
// over `iterations` (below 32 MiB, 32 MiB / bytes times as many, at most 32x) after
// `warmup` on the compute stream (CUDA events) or the host clock (CPU).
std::vector<AllReduceTiming> benchmark_all_reduce(Communicator& communicator, const std::vector<int64_t>& sizes,
                                                  int iterations, int warmup);

// NCCL's bus bandwidth of an all-reduce: bytes * 2 (n - 1) / n per second, in GB/s,
// comparable across world sizes (it is the per-link traffic of a ring).
double all_reduce_bus_bandwidth(int64_t bytes, double milliseconds, int world_size);

}  // namespace strata::dist
