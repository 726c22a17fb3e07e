// Internal: the plain description of a strided tensor that the copy, fill and random
// kernels of the core take on both back ends (no Tensor, no fmt: nvcc includes it).
#pragma once

#include <cstdint>
#include <functional>

#include "strata/core/dtype.h"

namespace strata::core_kernels {

constexpr int kMaxDims = 8;

struct StridedView {
  void* data = nullptr;  // first element
  DType dtype = DType::Float32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }
  // Row-major contiguous (size-1 dims may have any stride).
  bool is_dense() const {
    int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (shape[d] != 1 && strides[d] != expected) return false;
      expected *= shape[d];
    }
    return true;
  }
};

enum class RandomKind { Uniform, Normal, Bernoulli };

// Element-wise copy with dtype conversion between two views of the same shape on one device.
void copy_cpu(const StridedView& dst, const StridedView& src);
void fill_cpu(const StridedView& dst, double value);
// Contiguous dst. Uniform: a + (b - a) u; Normal: a + b z; Bernoulli: u <= a.
void random_cpu(const StridedView& dst, RandomKind kind, double a, double b, uint64_t seed, uint64_t offset);

#ifdef STRATA_WITH_CUDA
void copy_cuda(const StridedView& dst, const StridedView& src);
void fill_cuda(const StridedView& dst, double value);
void random_cuda(const StridedView& dst, RandomKind kind, double a, double b, uint64_t seed, uint64_t offset);
// Raw memory on the device's stream.
void* cuda_allocate(size_t nbytes, int device);
void cuda_free(void* pointer, int device);
void cuda_memcpy_to_host(void* dst, const void* src, size_t nbytes, int device);  // synchronous
void cuda_memcpy_to_device(void* dst, const void* src, size_t nbytes, int device);
int cuda_count_devices();
// Mean milliseconds of `work` over `iterations`, measured with events on the Strata stream.
double cuda_time_ms(const std::function<void()>& work, int iterations);
#endif

}  // namespace strata::core_kernels
