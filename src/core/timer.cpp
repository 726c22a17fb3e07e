#include "strata/core/timer.h"

#include <chrono>

#include "core/strided.h"

namespace strata {

double time_ms(Device device, const std::function<void()>& work, int iterations, int warmup) {
  for (int i = 0; i < warmup; ++i) work();
  if (device.is_cuda()) {
#ifdef STRATA_WITH_CUDA
    return core_kernels::cuda_time_ms(work, iterations);
#endif
  }
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) work();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / iterations;
}

}  // namespace strata
