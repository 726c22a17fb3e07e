#include "strata/dist/bench.h"

#include <algorithm>

#include "dist/backends.h"
#include "strata/core/timer.h"

namespace strata::dist {

std::vector<AllReduceTiming> benchmark_all_reduce(Communicator& communicator, const std::vector<int64_t>& sizes,
                                                  int iterations, int warmup) {
  const bool nccl = communicator.backend() == "nccl";
  std::vector<AllReduceTiming> timings;
  for (int64_t bytes : sizes) {
    STRATA_CHECK(bytes > 0 && bytes % 4 == 0, "benchmark_all_reduce: {} bytes is not a positive multiple of 4", bytes);
    // Zeros stay zeros however often they are summed.
    Tensor values = Tensor::zeros({bytes / 4}, DType::Float32, communicator.device());
    AllReduceTiming t;
    t.bytes = bytes;
    // Small all-reduces take microseconds: repeat them more (up to 32x at 1 MiB)
    // so that each size is timed over a comparable span.
    const int repeats = iterations * static_cast<int>(std::clamp<int64_t>((int64_t{32} << 20) / bytes, 1, 32));
    communicator.barrier();
    t.communicator_ms = time_ms(
        communicator.device(), [&] { communicator.all_reduce(values, ReduceOp::Sum); }, repeats, warmup);
    communicator.barrier();
    t.async_ms = time_ms(
        communicator.device(), [&] { communicator.all_reduce_async(values, ReduceOp::Sum)->wait(); }, repeats,
        warmup);
    if (nccl) {
      communicator.barrier();
      t.plain_ms = time_ms(communicator.device(), [&] { plain_nccl_all_reduce(communicator, values); }, repeats,
                           warmup);
    }
    Tensor slowest =
        Tensor::from_vector<double>({t.communicator_ms, t.async_ms, t.plain_ms}, {3}, communicator.device());
    communicator.all_reduce(slowest, ReduceOp::Max);
    std::vector<double> reduced = slowest.to_vector<double>();
    t.communicator_ms = reduced[0];
    t.async_ms = reduced[1];
    t.plain_ms = reduced[2];
    timings.push_back(t);
  }
  return timings;
}

double all_reduce_bus_bandwidth(int64_t bytes, double milliseconds, int world_size) {
  double algorithm_bandwidth = static_cast<double>(bytes) / (milliseconds * 1e-3) / 1e9;
  return algorithm_bandwidth * 2.0 * (world_size - 1) / world_size;
}

}  // namespace strata::dist
