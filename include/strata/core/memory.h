// Storage and allocators. CPU memory is 64-byte aligned host memory; CUDA memory
// comes from the stream-ordered pool (cudaMallocAsync on Strata's stream), never
// managed memory. Each storage carries a version counter that in-place writes bump,
// so autograd can tell when a saved tensor was overwritten.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "strata/core/device.h"

namespace strata {

class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  uint64_t version() const { return version_; }
  void bump_version() { ++version_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  uint64_t version_ = 0;
};

struct MemoryStats {
  int64_t current_bytes = 0;
  int64_t peak_bytes = 0;
  int64_t allocations = 0;  // number of allocations made so far
};

MemoryStats memory_stats(Device device);
void reset_peak_memory(Device device);

namespace cuda {
// A process drives one CUDA device at a time (data parallelism runs one process per
// GPU): kernels launch on that device's Strata stream (include/strata/core/cuda_stream.h).
void set_device(int device);
int current_device();
void synchronize();  // waits for the current device's Strata stream
}  // namespace cuda

}  // namespace strata
