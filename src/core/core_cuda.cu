// CUDA side of the core: one non-blocking stream per device, the stream-ordered
// allocator (cudaMallocAsync from the device's default pool, which keeps freed
// memory for reuse), host<->device copies, and the copy/fill/random kernels.
#include <cuda_runtime.h>

#include <cstdio>
#include <mutex>

#include "core/element_io.h"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"
#include "strata/core/memory.h"

namespace strata {
namespace {

constexpr int kMaxDevices = 16;

cudaStream_t stream_for(int device) {
  static std::once_flag once[kMaxDevices];
  static cudaStream_t streams[kMaxDevices];
  std::call_once(once[device], [device] {
    STRATA_CUDA_CHECK(cudaSetDevice(device));
    STRATA_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking));
    // Keep freed blocks in the pool instead of returning them to the driver at each sync.
    cudaMemPool_t pool;
    STRATA_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t threshold = UINT64_MAX;
    STRATA_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  });
  return streams[device];
}

int blocks_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(blocks < 65535 * 16 ? blocks : 65535 * 16);
}

__global__ void copy_kernel(core_kernels::StridedView dst, core_kernels::StridedView src, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    core_kernels::store_element(dst.data, dst.dtype, core_kernels::strided_offset(dst, i),
                                core_kernels::load_element(src.data, src.dtype, core_kernels::strided_offset(src, i)));
}

// Same-dtype copies (the permutes, slices and broadcasts behind contiguous()): the
// dims along which both views step through memory alike are merged, the innermost
// contiguous dim is moved in words of up to 16 bytes, and the index arithmetic is
// 32-bit. The generic copy_kernel above converts through double with 64-bit index
// arithmetic per element, about a tenth of the bandwidth.
struct WordCopy {
  int ndim = 0;
  uint32_t shape[core_kernels::kMaxDims] = {};
  uint32_t dst_strides[core_kernels::kMaxDims] = {};  // in words
  uint32_t src_strides[core_kernels::kMaxDims] = {};
  uint32_t words = 0;
};

template <class Word>
__global__ void word_copy_kernel(Word* __restrict__ dst, const Word* __restrict__ src, WordCopy c) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < c.words; i += gridDim.x * blockDim.x) {
    uint32_t linear = i, dst_offset = 0, src_offset = 0;
    for (int d = c.ndim - 1; d > 0; --d) {
      uint32_t coordinate = linear % c.shape[d];
      linear /= c.shape[d];
      dst_offset += coordinate * c.dst_strides[d];
      src_offset += coordinate * c.src_strides[d];
    }
    dst[dst_offset + linear * c.dst_strides[0]] = src[src_offset + linear * c.src_strides[0]];
  }
}

// The copy as words of `word_bytes` over merged dims, or false when it does not fit
// 32-bit offsets (the generic kernel takes it then).
bool plan_word_copy(const core_kernels::StridedView& dst, const core_kernels::StridedView& src, WordCopy& plan,
                    int& word_bytes) {
  int64_t shape[core_kernels::kMaxDims], dst_strides[core_kernels::kMaxDims], src_strides[core_kernels::kMaxDims];
  int ndim = 0;
  for (int d = 0; d < dst.ndim; ++d) {
    if (dst.shape[d] == 1) continue;
    if (ndim > 0 && dst_strides[ndim - 1] == dst.strides[d] * dst.shape[d] &&
        src_strides[ndim - 1] == src.strides[d] * src.shape[d]) {
      shape[ndim - 1] *= dst.shape[d];  // merge into the outer dim
      dst_strides[ndim - 1] = dst.strides[d];
      src_strides[ndim - 1] = src.strides[d];
      continue;
    }
    shape[ndim] = dst.shape[d];
    dst_strides[ndim] = dst.strides[d];
    src_strides[ndim] = src.strides[d];
    ++ndim;
  }
  if (ndim == 0) {  // one element
    shape[0] = 1;
    dst_strides[0] = src_strides[0] = 1;
    ndim = 1;
  }
  // Widen the word while the innermost dim is contiguous in both views, splits
  // evenly, and every other stride and both addresses stay aligned to the wider word.
  word_bytes = static_cast<int>(dtype_size(dst.dtype));
  auto aligned = [&](int64_t elements_per_word) {
    int64_t bytes = elements_per_word * static_cast<int64_t>(dtype_size(dst.dtype));
    if (dst_strides[ndim - 1] != 1 || src_strides[ndim - 1] != 1 || shape[ndim - 1] % elements_per_word != 0)
      return false;
    if (reinterpret_cast<uintptr_t>(dst.data) % bytes != 0 || reinterpret_cast<uintptr_t>(src.data) % bytes != 0)
      return false;
    for (int d = 0; d < ndim - 1; ++d)
      if (dst_strides[d] % elements_per_word != 0 || src_strides[d] % elements_per_word != 0) return false;
    return true;
  };
  int64_t elements_per_word = 1;
  while (word_bytes < 16 && aligned(elements_per_word * 2)) {
    elements_per_word *= 2;
    word_bytes *= 2;
  }
  int64_t words = 1, dst_span = 0, src_span = 0;
  plan.ndim = ndim;
  for (int d = 0; d < ndim; ++d) {
    const bool inner_widened = d == ndim - 1 && elements_per_word > 1;  // contiguous in both views
    int64_t size = d == ndim - 1 ? shape[d] / elements_per_word : shape[d];
    int64_t dst_stride = inner_widened ? 1 : dst_strides[d] / elements_per_word;
    int64_t src_stride = inner_widened ? 1 : src_strides[d] / elements_per_word;
    words *= size;
    dst_span += (size - 1) * dst_stride;
    src_span += (size - 1) * src_stride;
    plan.shape[d] = static_cast<uint32_t>(size);
    plan.dst_strides[d] = static_cast<uint32_t>(dst_stride);
    plan.src_strides[d] = static_cast<uint32_t>(src_stride);
  }
  plan.words = static_cast<uint32_t>(words);
  constexpr int64_t kLimit = int64_t{1} << 31;
  bool negative = false;
  for (int d = 0; d < ndim; ++d) negative |= dst_strides[d] < 0 || src_strides[d] < 0;
  return !negative && words < kLimit && dst_span < kLimit && src_span < kLimit;
}

template <class Word>
void launch_word_copy(const core_kernels::StridedView& dst, const core_kernels::StridedView& src,
                      const WordCopy& plan) {
  word_copy_kernel<<<blocks_for(plan.words, 256), 256, 0, cuda::stream()>>>(
      static_cast<Word*>(dst.data), static_cast<const Word*>(src.data), plan);
}

__global__ void fill_kernel(core_kernels::StridedView dst, double value, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    core_kernels::store_element(dst.data, dst.dtype, core_kernels::strided_offset(dst, i), value);
}

__global__ void random_kernel(core_kernels::StridedView dst, core_kernels::RandomKind kind, double a, double b,
                              uint64_t seed, uint64_t offset, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    core_kernels::store_element(dst.data, dst.dtype, i, core_kernels::random_element(kind, a, b, seed, offset, i));
}

}  // namespace

namespace cuda {
namespace {
int active_device = 0;
}
void set_device(int device) {
  STRATA_CUDA_CHECK(cudaSetDevice(device));
  active_device = device;
}
int current_device() { return active_device; }
cudaStream_t stream() { return stream_for(active_device); }
void synchronize() { STRATA_CUDA_CHECK(cudaStreamSynchronize(stream_for(active_device))); }
}  // namespace cuda

namespace core_kernels {

int cuda_count_devices() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: report none
    return 0;
  }
  return count;
}

void* cuda_allocate(size_t nbytes, int device) {
  STRATA_CUDA_CHECK(cudaSetDevice(device));
  void* pointer = nullptr;
  cudaError_t status = cudaMallocAsync(&pointer, nbytes, stream_for(device));
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    char message[200];
    snprintf(message, sizeof message, "CUDA out of memory on cuda:%d allocating %zu bytes (%lld in use by Strata)",
             device, nbytes, static_cast<long long>(memory_stats(Device::cuda(device)).current_bytes));
    detail::throw_message(__FILE__, __LINE__, message);
  }
  STRATA_CUDA_CHECK(status);
  return pointer;
}

void cuda_free(void* pointer, int device) {
  // Called from destructors: an error here is reported by the next checked call.
  cudaSetDevice(device);
  cudaFreeAsync(pointer, stream_for(device));
}

void cuda_memcpy_to_host(void* dst, const void* src, size_t nbytes, int device) {
  STRATA_CUDA_CHECK(cudaSetDevice(device));
  STRATA_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream_for(device)));
  STRATA_CUDA_CHECK(cudaStreamSynchronize(stream_for(device)));
}

void cuda_memcpy_to_device(void* dst, const void* src, size_t nbytes, int device) {
  STRATA_CUDA_CHECK(cudaSetDevice(device));
  STRATA_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream_for(device)));
  // The host buffer may be freed as soon as we return.
  STRATA_CUDA_CHECK(cudaStreamSynchronize(stream_for(device)));
}

void copy_cuda(const StridedView& dst, const StridedView& src) {
  int64_t n = dst.numel();
  if (dst.dtype == src.dtype && dst.is_dense() && src.is_dense()) {
    STRATA_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, static_cast<size_t>(n) * dtype_size(dst.dtype),
                                      cudaMemcpyDeviceToDevice, cuda::stream()));
    return;
  }
  WordCopy plan;
  int word_bytes = 0;
  if (n > 0 && dst.dtype == src.dtype && plan_word_copy(dst, src, plan, word_bytes)) {
    switch (word_bytes) {
      case 1: launch_word_copy<uint8_t>(dst, src, plan); break;
      case 2: launch_word_copy<uint16_t>(dst, src, plan); break;
      case 4: launch_word_copy<uint32_t>(dst, src, plan); break;
      case 8: launch_word_copy<uint2>(dst, src, plan); break;
      default: launch_word_copy<uint4>(dst, src, plan); break;
    }
    STRATA_CUDA_CHECK_LAUNCH("word_copy_kernel");
    return;
  }
  copy_kernel<<<blocks_for(n, 256), 256, 0, cuda::stream()>>>(dst, src, n);
  STRATA_CUDA_CHECK_LAUNCH("copy_kernel");
}

void fill_cuda(const StridedView& dst, double value) {
  int64_t n = dst.numel();
  fill_kernel<<<blocks_for(n, 256), 256, 0, cuda::stream()>>>(dst, value, n);
  STRATA_CUDA_CHECK_LAUNCH("fill_kernel");
}

void random_cuda(const StridedView& dst, RandomKind kind, double a, double b, uint64_t seed, uint64_t offset) {
  int64_t n = dst.numel();
  random_kernel<<<blocks_for(n, 256), 256, 0, cuda::stream()>>>(dst, kind, a, b, seed, offset, n);
  STRATA_CUDA_CHECK_LAUNCH("random_kernel");
}

double cuda_time_ms(const std::function<void()>& work, int iterations) {
  cudaEvent_t start, stop;
  STRATA_CUDA_CHECK(cudaEventCreate(&start));
  STRATA_CUDA_CHECK(cudaEventCreate(&stop));
  STRATA_CUDA_CHECK(cudaEventRecord(start, cuda::stream()));
  for (int i = 0; i < iterations; ++i) work();
  STRATA_CUDA_CHECK(cudaEventRecord(stop, cuda::stream()));
  STRATA_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  STRATA_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / iterations;
}

}  // namespace core_kernels
}  // namespace strata
