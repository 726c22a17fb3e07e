#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/grouped_gemm/grouped_gemm_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;
constexpr int kTileM = 64, kTileN = 64, kTileK = 16;
constexpr int kThreads = 256;
constexpr int kThreadsPerSide = 16;  // the block is a 16 x 16 grid of threads
constexpr int kPerThread = 4;        // each computes 4 x 4 outputs, strided by 16
constexpr int kPaddedM = kTileM + 1, kPaddedN = kTileN + 1;

// One operand tile source: element (i, j) at data[i * stride_i + j * stride_j], valid
// for i < size_i, j < size_j (zero outside).
template <class T>
struct Operand {
  const T* data;
  int64_t stride_i, stride_j;
  int64_t size_i, size_j;
};

// accumulator += A (m_size x k_size, as Operand (m, k)) times B (k_size x n_size, as
// Operand (k, n)) for the 64 x 64 tile at the operands' origins.
template <class T>
__device__ void multiply_tile(const Operand<T>& a, const Operand<T>& b, float (&accumulator)[kPerThread][kPerThread]) {
  __shared__ float a_tile[kTileK][kPaddedM];
  __shared__ float b_tile[kTileK][kPaddedN];
  const int tid = threadIdx.x;
  const int row = tid / kThreadsPerSide, column = tid % kThreadsPerSide;
  const int64_t depth = a.size_j;
  const bool a_along_k = a.stride_j == 1, b_along_n = b.stride_j == 1;
  for (int64_t k0 = 0; k0 < depth; k0 += kTileK) {
    for (int l = tid; l < kTileM * kTileK; l += kThreads) {
      const int m = a_along_k ? l / kTileK : l % kTileM;
      const int kk = a_along_k ? l % kTileK : l / kTileM;
      const bool inside = m < a.size_i && k0 + kk < depth;
      a_tile[kk][m] = inside ? to_float(a.data[m * a.stride_i + (k0 + kk) * a.stride_j]) : 0.0f;
    }
    for (int l = tid; l < kTileK * kTileN; l += kThreads) {
      const int n = b_along_n ? l % kTileN : l / kTileK;
      const int kk = b_along_n ? l / kTileN : l % kTileK;
      const bool inside = n < b.size_j && k0 + kk < depth;
      b_tile[kk][n] = inside ? to_float(b.data[(k0 + kk) * b.stride_i + n * b.stride_j]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float a_values[kPerThread], b_values[kPerThread];
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) a_values[i] = a_tile[kk][row + i * kThreadsPerSide];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) b_values[j] = b_tile[kk][column + j * kThreadsPerSide];
#pragma unroll
      for (int i = 0; i < kPerThread; ++i)
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) accumulator[i][j] += a_values[i] * b_values[j];
    }
    __syncthreads();
  }
}

// Writes the valid part of the tile: out element (i, j) at out[i * stride + j].
template <class T>
__device__ void store_tile(const float (&accumulator)[kPerThread][kPerThread], T* out, int64_t stride, int64_t rows,
                           int64_t columns) {
  const int row = threadIdx.x / kThreadsPerSide, column = threadIdx.x % kThreadsPerSide;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t r = row + i * kThreadsPerSide;
    if (r >= rows) continue;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t c = column + j * kThreadsPerSide;
      if (c < columns) out[r * stride + c] = from_float<T>(accumulator[i][j]);
    }
  }
}

// Group e's rows, clamped to [0, rows] and to start <= end.
__device__ __forceinline__ void group_range(const int64_t* offsets, int64_t e, int64_t rows, int64_t& start,
                                            int64_t& end) {
  start = min(max(offsets[e], int64_t{0}), rows);
  end = min(max(offsets[e + 1], start), rows);
}

template <class T>
__global__ void __launch_bounds__(kThreads) grouped_rows_kernel(const T* x, const T* weight, const int64_t* offsets,
                                                                int64_t rows, int64_t experts, int64_t k, int64_t n,
                                                                bool transpose_weight, T* out) {
  __shared__ int64_t tile_expert, tile_row_start, tile_row_end;
  const int64_t slot = blockIdx.x;
  if (threadIdx.x < kWarp) {
    const int lane = threadIdx.x;
    if (lane == 0) tile_expert = -1;
    __syncwarp();
    int64_t tiles_before = 0;
    for (int64_t base = 0; base < experts; base += kWarp) {
      const int64_t e = base + lane;
      int64_t start = 0, end = 0;
      if (e < experts) group_range(offsets, e, rows, start, end);
      const int64_t tiles = (end - start + kTileM - 1) / kTileM;
      int64_t inclusive = tiles;
      for (int offset = 1; offset < kWarp; offset *= 2) {
        const int64_t below = __shfl_up_sync(kFullMask, inclusive, offset);
        if (lane >= offset) inclusive += below;
      }
      const int64_t first = tiles_before + inclusive - tiles;
      const bool mine = e < experts && slot >= first && slot < first + tiles;
      if (mine) {
        tile_expert = e;
        tile_row_start = start + (slot - first) * kTileM;
        tile_row_end = end;
      }
      tiles_before += __shfl_sync(kFullMask, inclusive, kWarp - 1);
      if (__ballot_sync(kFullMask, mine) != 0) break;
    }
  }
  __syncthreads();
  if (tile_expert < 0) return;  // a surplus slot of the grid's bound

  const int64_t row0 = tile_row_start, n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int64_t tile_rows = min(static_cast<int64_t>(kTileM), tile_row_end - row0);
  const int64_t tile_columns = min(static_cast<int64_t>(kTileN), n - n0);
  const T* matrix = weight + tile_expert * n * k;
  // B (k, n): W^T of a stored (n, k) matrix, or the stored (k, n) matrix itself.
  const Operand<T> a{x + row0 * k, k, 1, tile_rows, k};
  const Operand<T> b = transpose_weight ? Operand<T>{matrix + n0 * k, 1, k, k, tile_columns}
                                        : Operand<T>{matrix + n0, n, 1, k, tile_columns};
  float accumulator[kPerThread][kPerThread] = {};
  multiply_tile(a, b, accumulator);
  store_tile(accumulator, out + row0 * n + n0, n, tile_rows, tile_columns);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    grouped_weight_grad_kernel(const T* grad_out, const T* x, const int64_t* offsets, int64_t rows, int64_t n_out,
                               int64_t n_in, T* grad_weight) {
  const int64_t e = blockIdx.z;
  int64_t start, end;
  group_range(offsets, e, rows, start, end);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM, n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const int64_t tile_rows = min(static_cast<int64_t>(kTileM), n_out - m0);
  const int64_t tile_columns = min(static_cast<int64_t>(kTileN), n_in - n0);
  // A (n_out, rows_e): grad_out's group transposed; B (rows_e, n_in): x's group.
  const Operand<T> a{grad_out + start * n_out + m0, 1, n_out, tile_rows, end - start};
  const Operand<T> b{x + start * n_in + n0, n_in, 1, end - start, tile_columns};
  float accumulator[kPerThread][kPerThread] = {};
  multiply_tile(a, b, accumulator);
  store_tile(accumulator, grad_weight + e * n_out * n_in + m0 * n_in + n0, n_in, tile_rows, tile_columns);
}

template <class Run>
bool with_operand_type(DType dtype, Run&& run) {
  if (dtype == DType::Float32) {
    run(float{});
    return true;
  }
  if (dtype == DType::BFloat16) {
    run(__nv_bfloat16{});
    return true;
  }
  return false;
}

unsigned tiles(int64_t size, int tile) { return static_cast<unsigned>((size + tile - 1) / tile); }

}  // namespace

bool grouped_gemm_rows_cuda(DType dtype, const void* x, const void* weight, const int64_t* offsets, int64_t rows,
                            int64_t experts, int64_t k, int64_t n, bool transpose_weight, void* out) {
  return with_operand_type(dtype, [&]<class T>(T) {
    if (rows == 0 || n == 0) return;
    const dim3 grid(tiles(rows, kTileM) + static_cast<unsigned>(experts), tiles(n, kTileN));
    grouped_rows_kernel<T><<<grid, kThreads, 0, cuda::stream()>>>(static_cast<const T*>(x),
                                                                  static_cast<const T*>(weight), offsets, rows,
                                                                  experts, k, n, transpose_weight, static_cast<T*>(out));
    STRATA_CUDA_CHECK_LAUNCH("grouped_rows_kernel");
  });
}

bool grouped_gemm_weight_grad_cuda(DType dtype, const void* grad_out, const void* x, const int64_t* offsets,
                                   int64_t rows, int64_t experts, int64_t n_out, int64_t n_in, void* grad_weight) {
  return with_operand_type(dtype, [&]<class T>(T) {
    if (experts == 0 || n_out == 0 || n_in == 0) return;
    const dim3 grid(tiles(n_in, kTileN), tiles(n_out, kTileM), static_cast<unsigned>(experts));
    grouped_weight_grad_kernel<T><<<grid, kThreads, 0, cuda::stream()>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(x), offsets, rows, n_out, n_in,
        static_cast<T*>(grad_weight));
    STRATA_CUDA_CHECK_LAUNCH("grouped_weight_grad_kernel");
  });
}

}  // namespace strata::kernels
