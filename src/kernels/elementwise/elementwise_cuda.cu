// CUDA kernels of the element-wise family: one kernel per arity and layout, with the
// operation picked by a switch on a launch argument (uniform across the grid, so it
// costs a few instructions per element on a memory-bound op and keeps the number of
// instantiations at {float, bfloat16} x {dense, strided}).
//
// Dense path: every input is dense and 16-byte aligned; each thread of a grid-stride
// loop moves one 16-byte pack (4 floats or 8 bfloat16) per operand, then finishes the
// tail element by element. Strided path: one element per thread, each input's
// offset computed from the dense output index through the (coalesced) layout.
// Math is float32 for both storage types.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "kernels/elementwise/elementwise_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kThreads = 256;

// 16 bytes of elements, loaded and stored with one vector instruction.
template <class T>
struct alignas(16) Pack {
  static constexpr int kWidth = 16 / sizeof(T);
  T values[kWidth];
};

// Offsets of inputs 0 and 1 for dense output index i, in Index arithmetic. The
// unrolled loop keeps the layout in parameter space (a dynamic index would copy it
// to local memory).
template <class Index>
__device__ __forceinline__ void input_offsets_in(const ElementwiseLayout& layout, Index i, int64_t& offset_0,
                                                 int64_t& offset_1) {
  offset_0 = 0;
  offset_1 = 0;
#pragma unroll
  for (int d = core_kernels::kMaxDims - 1; d > 0; --d) {
    if (d < layout.ndim) {
      const Index size = static_cast<Index>(layout.shape[d]);
      const Index quotient = i / size;
      const int64_t coordinate = static_cast<int64_t>(i - quotient * size);
      offset_0 += coordinate * layout.strides[0][d];
      offset_1 += coordinate * layout.strides[1][d];
      i = quotient;
    }
  }
  offset_0 += static_cast<int64_t>(i) * layout.strides[0][0];
  offset_1 += static_cast<int64_t>(i) * layout.strides[1][0];
}

// 32-bit division costs a fraction of 64-bit division (which the hardware emulates),
// and on a broadcast operand it is most of the work per element.
__device__ __forceinline__ void input_offsets(const ElementwiseLayout& layout, int64_t i, int64_t& offset_0,
                                              int64_t& offset_1) {
  if (layout.numel <= UINT32_MAX)
    input_offsets_in<uint32_t>(layout, static_cast<uint32_t>(i), offset_0, offset_1);
  else
    input_offsets_in<uint64_t>(layout, static_cast<uint64_t>(i), offset_0, offset_1);
}

__device__ __forceinline__ int64_t first_index() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ __forceinline__ int64_t grid_step() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Calls body.template operator()<op>() with `op` as a compile-time constant, so
// the switch over operations runs once per thread instead of once per element
// and each dense loop is compiled for its one operation.
template <class Op, int kCount, int kFirst = 0, class Body>
__device__ __forceinline__ void with_constant_op(Op op, const Body& body) {
  if constexpr (kFirst < kCount) {
    if (static_cast<int>(op) == kFirst) {
      body.template operator()<static_cast<Op>(kFirst)>();
    } else {
      with_constant_op<Op, kCount, kFirst + 1>(op, body);
    }
  }
}

template <class T>
__global__ void unary_dense_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t n, UnaryOp op,
                                   float scalar) {
  with_constant_op<UnaryOp, kUnaryOpCount>(op, [&]<UnaryOp kOp>() {
    using P = Pack<T>;
    const int64_t packs = n / P::kWidth;
    for (int64_t p = first_index(); p < packs; p += grid_step()) {
      P x = reinterpret_cast<const P*>(in)[p], y;
#pragma unroll
      for (int k = 0; k < P::kWidth; ++k) y.values[k] = from_float<T>(unary_apply(kOp, to_float(x.values[k]), scalar));
      reinterpret_cast<P*>(out)[p] = y;
    }
    for (int64_t i = packs * P::kWidth + first_index(); i < n; i += grid_step())
      out[i] = from_float<T>(unary_apply(kOp, to_float(in[i]), scalar));
  });
}

template <class T>
__global__ void unary_strided_kernel(T* __restrict__ out, const T* __restrict__ in, ElementwiseLayout layout,
                                     UnaryOp op, float scalar) {
  for (int64_t i = first_index(); i < layout.numel; i += grid_step()) {
    int64_t offset, unused;
    input_offsets(layout, i, offset, unused);
    out[i] = from_float<T>(unary_apply(op, to_float(in[offset]), scalar));
  }
}

template <class T>
__global__ void binary_dense_kernel(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, int64_t n,
                                    BinaryOp op, float scalar) {
  with_constant_op<BinaryOp, kBinaryOpCount>(op, [&]<BinaryOp kOp>() {
    using P = Pack<T>;
    const int64_t packs = n / P::kWidth;
    for (int64_t p = first_index(); p < packs; p += grid_step()) {
      P x = reinterpret_cast<const P*>(a)[p], y = reinterpret_cast<const P*>(b)[p], z;
#pragma unroll
      for (int k = 0; k < P::kWidth; ++k)
        z.values[k] = from_float<T>(binary_apply(kOp, to_float(x.values[k]), to_float(y.values[k]), scalar));
      reinterpret_cast<P*>(out)[p] = z;
    }
    for (int64_t i = packs * P::kWidth + first_index(); i < n; i += grid_step())
      out[i] = from_float<T>(binary_apply(kOp, to_float(a[i]), to_float(b[i]), scalar));
  });
}

template <class T>
__global__ void binary_strided_kernel(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b,
                                      ElementwiseLayout layout, BinaryOp op, float scalar) {
  for (int64_t i = first_index(); i < layout.numel; i += grid_step()) {
    int64_t offset_a, offset_b;
    input_offsets(layout, i, offset_a, offset_b);
    out[i] = from_float<T>(binary_apply(op, to_float(a[offset_a]), to_float(b[offset_b]), scalar));
  }
}

template <class T>
__global__ void masked_fill_kernel(T* __restrict__ out, const T* __restrict__ a, const uint8_t* __restrict__ mask,
                                   ElementwiseLayout layout, T value) {
  for (int64_t i = first_index(); i < layout.numel; i += grid_step()) {
    int64_t offset_a, offset_mask;
    input_offsets(layout, i, offset_a, offset_mask);
    out[i] = mask[offset_mask] ? value : a[offset_a];
  }
}

int multiprocessor_count() {
  constexpr int kMaxDevices = 16;
  static std::atomic<int> counts[kMaxDevices];
  int device = 0;
  STRATA_CUDA_CHECK(cudaGetDevice(&device));
  int count = counts[device].load(std::memory_order_relaxed);
  if (count == 0) {
    STRATA_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    counts[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

// Enough blocks to fill the device several times over; grid-stride loops do the rest.
int blocks_for(int64_t work_items) {
  int64_t wanted = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t{multiprocessor_count()} * 16)));
}

bool aligned(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

template <class T>
void launch_unary(UnaryOp op, void* out, const void* in, const ElementwiseLayout& layout, float scalar) {
  T* out_typed = static_cast<T*>(out);
  const T* in_typed = static_cast<const T*>(in);
  if (layout.input_dense(0) && aligned(out) && aligned(in)) {
    unary_dense_kernel<T><<<blocks_for(layout.numel / Pack<T>::kWidth + 1), kThreads, 0, cuda::stream()>>>(
        out_typed, in_typed, layout.numel, op, scalar);
    STRATA_CUDA_CHECK_LAUNCH("unary_dense_kernel");
  } else {
    unary_strided_kernel<T><<<blocks_for(layout.numel), kThreads, 0, cuda::stream()>>>(out_typed, in_typed, layout,
                                                                                       op, scalar);
    STRATA_CUDA_CHECK_LAUNCH("unary_strided_kernel");
  }
}

template <class T>
void launch_binary(BinaryOp op, void* out, const void* a, const void* b, const ElementwiseLayout& layout,
                   float scalar) {
  T* out_typed = static_cast<T*>(out);
  const T* a_typed = static_cast<const T*>(a);
  const T* b_typed = static_cast<const T*>(b);
  if (layout.input_dense(0) && layout.input_dense(1) && aligned(out) && aligned(a) && aligned(b)) {
    binary_dense_kernel<T><<<blocks_for(layout.numel / Pack<T>::kWidth + 1), kThreads, 0, cuda::stream()>>>(
        out_typed, a_typed, b_typed, layout.numel, op, scalar);
    STRATA_CUDA_CHECK_LAUNCH("binary_dense_kernel");
  } else {
    binary_strided_kernel<T><<<blocks_for(layout.numel), kThreads, 0, cuda::stream()>>>(out_typed, a_typed, b_typed,
                                                                                        layout, op, scalar);
    STRATA_CUDA_CHECK_LAUNCH("binary_strided_kernel");
  }
}

}  // namespace

bool unary_cuda(UnaryOp op, DType dtype, void* out, const void* in, const ElementwiseLayout& layout, double scalar) {
  if (dtype != DType::Float32 && dtype != DType::BFloat16) return false;
  if (layout.numel == 0) return true;
  if (dtype == DType::Float32)
    launch_unary<float>(op, out, in, layout, static_cast<float>(scalar));
  else
    launch_unary<__nv_bfloat16>(op, out, in, layout, static_cast<float>(scalar));
  return true;
}

bool binary_cuda(BinaryOp op, DType dtype, void* out, const void* a, const void* b, const ElementwiseLayout& layout,
                 double scalar) {
  if (dtype != DType::Float32 && dtype != DType::BFloat16) return false;
  if (layout.numel == 0) return true;
  if (dtype == DType::Float32)
    launch_binary<float>(op, out, a, b, layout, static_cast<float>(scalar));
  else
    launch_binary<__nv_bfloat16>(op, out, a, b, layout, static_cast<float>(scalar));
  return true;
}

bool masked_fill_cuda(DType dtype, void* out, const void* a, const uint8_t* mask, const ElementwiseLayout& layout,
                      double value) {
  if (dtype != DType::Float32 && dtype != DType::BFloat16) return false;
  if (layout.numel == 0) return true;
  if (dtype == DType::Float32) {
    masked_fill_kernel<float><<<blocks_for(layout.numel), kThreads, 0, cuda::stream()>>>(
        static_cast<float*>(out), static_cast<const float*>(a), mask, layout, static_cast<float>(value));
  } else {
    masked_fill_kernel<__nv_bfloat16><<<blocks_for(layout.numel), kThreads, 0, cuda::stream()>>>(
        static_cast<__nv_bfloat16*>(out), static_cast<const __nv_bfloat16*>(a), mask, layout,
        __float2bfloat16(static_cast<float>(value)));
  }
  STRATA_CUDA_CHECK_LAUNCH("masked_fill_kernel");
  return true;
}

}  // namespace strata::kernels
