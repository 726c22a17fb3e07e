// Device helpers shared by the row-wise CUDA kernels (softmax, normalization,
// cross_entropy): a row of `dim` elements is handled by a group of
// `threads_per_row` threads (a power of two: a part of a warp, a warp, or several
// warps), and a block holds `rows_per_block` such groups. Loads and stores move
// packs of W elements: 16 bytes (4 float32, 8 bfloat16) when the row length and
// the pointers allow it, single elements otherwise. Arithmetic is float32.
//
// Pack i of the thread with lane l in its group covers the columns
// [(i * threads_per_row + l) * W, ... + W): consecutive lanes touch consecutive
// 16-byte chunks, so a group's loads are coalesced.
//
// No fmt and no Tensor here: nvcc includes this file.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "kernels/common/cuda_convert.cuh"

namespace strata::kernels::row {

// A row group never spans more threads than this; the cached kernels declare it
// in __launch_bounds__ so the compiler budgets registers for it.
constexpr int kMaxThreadsPerRow = 512;
// Blocks hold several row groups when rows are short, up to this many threads.
constexpr int kBlockThreads = 256;

// The kernels call row::to_float and row::from_float: the shared conversions.
using strata::kernels::from_float;
using strata::kernels::to_float;

// W consecutive elements, moved with one 16-byte access when W * sizeof(T) == 16.
template <class T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

template <class T, int W>
__device__ __forceinline__ Pack<T, W> load_pack(const T* address) {
  Pack<T, W> pack;
  if constexpr (sizeof(T) * W == 16) {
    *reinterpret_cast<int4*>(&pack) = *reinterpret_cast<const int4*>(address);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) pack.v[k] = address[k];
  }
  return pack;
}

template <class T, int W>
__device__ __forceinline__ void store_pack(T* address, const Pack<T, W>& pack) {
  if constexpr (sizeof(T) * W == 16) {
    *reinterpret_cast<int4*>(address) = *reinterpret_cast<const int4*>(&pack);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) address[k] = pack.v[k];
  }
}

// Elements per 16-byte pack.
template <class T>
constexpr int vector_width() {
  return static_cast<int>(16 / sizeof(T));
}

// True when every pointer is 16-byte aligned (null pointers, for absent
// operands, count as aligned).
inline bool aligned_16(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Combines values[0..kCount) over the threads_per_row threads of each row group;
// every thread of the group gets the results. Groups of up to a warp use
// shuffles only. Wider groups (whole warps) go through `scratch`, one slot per
// warp of the block, and synchronise the block: every thread of the block must
// make the call, including threads whose row is past the end. Warps are combined
// in a fixed order, so results do not depend on timing.
template <int kCount, class Op>
__device__ __forceinline__ void reduce_over_row(float (&values)[kCount], int threads_per_row, float (*scratch)[32],
                                                Op op) {
  const int width = threads_per_row < 32 ? threads_per_row : 32;
  for (int offset = width / 2; offset > 0; offset /= 2)
#pragma unroll
    for (int k = 0; k < kCount; ++k) values[k] = op(values[k], __shfl_xor_sync(0xffffffffu, values[k], offset));
  if (threads_per_row <= 32) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps_per_row = threads_per_row / 32;
  const int first_warp = warp - warp % warps_per_row;
  __syncthreads();  // the previous call has finished reading scratch
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < kCount; ++k) scratch[k][warp] = values[k];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kCount; ++k) {
    float combined = scratch[k][first_warp];
    for (int w = 1; w < warps_per_row; ++w) combined = op(combined, scratch[k][first_warp + w]);
    values[k] = combined;
  }
}

// Running (maximum, sum of exp(x - maximum)) over a stream of values: softmax and
// logsumexp in one read. Values come in groups (a pack), so each group costs one
// rescale plus one exp per value. A -inf value adds exp(-inf) = 0 and is skipped,
// so a partly masked row stays finite (an all -inf row ends with sum 0); a NaN
// makes the sum NaN. While the maximum is -inf the sum is 0 or NaN and needs no
// rescaling.
struct OnlineSoftmax {
  float maximum = -INFINITY;
  float sum = 0.0f;

  template <int N>
  __device__ __forceinline__ void add(const float (&values)[N]) {
    float new_maximum = maximum;
#pragma unroll
    for (int k = 0; k < N; ++k) new_maximum = fmaxf(new_maximum, values[k]);
    float total = maximum == -INFINITY ? sum : sum * expf(maximum - new_maximum);
#pragma unroll
    for (int k = 0; k < N; ++k) total += values[k] == -INFINITY ? 0.0f : expf(values[k] - new_maximum);
    sum = total;
    maximum = new_maximum;
  }
  __device__ __forceinline__ void add(float value) {
    const float values[1] = {value};
    add(values);
  }
  // Combines with the other threads of the row group (see reduce_over_row).
  __device__ __forceinline__ void reduce(int threads_per_row, float (*scratch)[32]) {
    float row_maximum[1] = {maximum};
    reduce_over_row(row_maximum, threads_per_row, scratch, MaxOp{});
    float rescaled[1] = {maximum == -INFINITY ? sum : sum * expf(maximum - row_maximum[0])};
    reduce_over_row(rescaled, threads_per_row, scratch, SumOp{});
    maximum = row_maximum[0];
    sum = rescaled[0];
  }
  __device__ __forceinline__ float logsumexp() const { return maximum + logf(sum); }
};

// How a kernel lays row groups over blocks.
struct RowGeometry {
  int threads_per_row = 0;  // 0: the row does not fit the cached kernel
  int rows_per_block = 0;
  int block_threads() const { return threads_per_row * rows_per_block; }
  bool fits() const { return threads_per_row > 0; }
};

// For kernels that keep the row in registers: the fewest threads per row (a
// power of two, at least a warp once the row has 32 packs) such that each holds
// at most `max_packs` packs of `width` elements. threads_per_row == 0 when even
// kMaxThreadsPerRow threads cannot hold the row.
inline RowGeometry cached_row_geometry(int64_t dim, int width, int max_packs) {
  const int64_t packs = (dim + width - 1) / width;
  int64_t threads = 1;
  while (threads < packs && threads < 32) threads *= 2;
  while ((packs + threads - 1) / threads > max_packs) threads *= 2;
  if (threads > kMaxThreadsPerRow) return {};
  const int threads_per_row = static_cast<int>(threads);
  return {threads_per_row, threads_per_row >= kBlockThreads ? 1 : kBlockThreads / threads_per_row};
}

// For kernels that stream the row (no register cache): one block of
// kMaxThreadsPerRow threads per row.
inline RowGeometry streaming_row_geometry() { return {kMaxThreadsPerRow, 1}; }

}  // namespace strata::kernels::row
