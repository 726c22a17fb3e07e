#include "strata/core/memory.h"

#include <atomic>
#include <cstdlib>

#include "core/strided.h"
#include "strata/core/error.h"

namespace strata {
namespace {

struct Counters {
  std::atomic<int64_t> current{0}, peak{0}, allocations{0};
};

constexpr int kMaxCudaDevices = 16;

Counters& counters(Device device) {
  static Counters cpu;
  static Counters cuda[kMaxCudaDevices];
  return device.is_cpu() ? cpu : cuda[device.index];
}

void record_allocation(Device device, int64_t nbytes) {
  Counters& c = counters(device);
  int64_t now = c.current.fetch_add(nbytes) + nbytes;
  c.allocations.fetch_add(1);
  int64_t peak = c.peak.load();
  while (now > peak && !c.peak.compare_exchange_weak(peak, now)) {
  }
}

}  // namespace

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  size_t rounded = (nbytes + 63) / 64 * 64;
  if (device.is_cpu()) {
    data_ = rounded ? std::aligned_alloc(64, rounded) : nullptr;
    STRATA_CHECK(data_ || rounded == 0, "out of host memory allocating {} bytes", nbytes);
  } else {
#ifdef STRATA_WITH_CUDA
    STRATA_CHECK(device.index >= 0 && device.index < kMaxCudaDevices, "bad CUDA device index {}", device.index);
    data_ = rounded ? core_kernels::cuda_allocate(rounded, device.index) : nullptr;
#else
    STRATA_FAIL("cannot allocate on {}: this Strata was built without CUDA", device.str());
#endif
  }
  record_allocation(device, static_cast<int64_t>(nbytes_));
}

Storage::~Storage() {
  counters(device_).current.fetch_sub(static_cast<int64_t>(nbytes_));
  if (!data_) return;
  if (device_.is_cpu()) {
    std::free(data_);
  } else {
#ifdef STRATA_WITH_CUDA
    core_kernels::cuda_free(data_, device_.index);
#endif
  }
}

MemoryStats memory_stats(Device device) {
  Counters& c = counters(device);
  return MemoryStats{c.current.load(), c.peak.load(), c.allocations.load()};
}

void reset_peak_memory(Device device) {
  Counters& c = counters(device);
  c.peak.store(c.current.load());
}

#ifndef STRATA_WITH_CUDA
namespace cuda {
void set_device(int device) { STRATA_FAIL("cuda::set_device({}): this Strata was built without CUDA", device); }
int current_device() { return 0; }
void synchronize() {}
}  // namespace cuda
#endif

}  // namespace strata
