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
