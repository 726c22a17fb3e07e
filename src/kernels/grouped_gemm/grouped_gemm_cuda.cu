#include <cuda_bf16.h>

#include <cstdint>
#include <initializer_list>

#include "kernels/grouped_gemm/grouped_gemm_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "kernels/common/tensor_core.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;

// Group e's rows, clamped to [0, rows] and to start <= end.
__device__ __forceinline__ void group_range(const int64_t* offsets, int64_t e, int64_t rows, int64_t& start,
                                            int64_t& end) {
  start = min(max(offsets[e], int64_t{0}), rows);
  end = min(max(offsets[e + 1], start), rows);
}

// The tile scheduler of the rows kernels: row tiles of kTileRows rows are numbered
// group after group (a group of r rows has ceil(r / kTileRows) of them, an empty group
// none), and the block that holds tile number `slot` learns its expert and rows. One
// warp scans the groups 32 at a time (prefix sums of their tile counts). Leaves
// expert = -1 for a slot past the last tile (the grid is sized by a bound). Every
// thread of the block must call it (it ends with __syncthreads).
struct RowTile {
  int64_t expert, row_start, row_end;
};
template <int kTileRows>
__device__ void find_row_tile(const int64_t* offsets, int64_t rows, int64_t experts, int64_t slot, RowTile& tile) {
  if (threadIdx.x < kWarp) {
    const int lane = threadIdx.x;
    if (lane == 0) tile.expert = -1;
    __syncwarp();
    int64_t tiles_before = 0;
    for (int64_t base = 0; base < experts; base += kWarp) {
      const int64_t e = base + lane;
      int64_t start = 0, end = 0;
      if (e < experts) group_range(offsets, e, rows, start, end);
      const int64_t tiles = (end - start + kTileRows - 1) / kTileRows;
      int64_t inclusive = tiles;
      for (int offset = 1; offset < kWarp; offset *= 2) {
        const int64_t below = __shfl_up_sync(kFullMask, inclusive, offset);
        if (lane >= offset) inclusive += below;
      }
      const int64_t first = tiles_before + inclusive - tiles;
      const bool mine = e < experts && slot >= first && slot < first + tiles;
      if (mine) tile = RowTile{e, start + (slot - first) * kTileRows, end};
      tiles_before += __shfl_sync(kFullMask, inclusive, kWarp - 1);
      if (__ballot_sync(kFullMask, mine) != 0) break;
    }
  }
  __syncthreads();
}

// ==== CUDA-core path (float32, and bfloat16 operands the tensor-core path cannot take) ====

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

template <class T>
__global__ void __launch_bounds__(kThreads) grouped_rows_kernel(const T* x, const T* weight, const int64_t* offsets,
                                                                int64_t rows, int64_t experts, int64_t k, int64_t n,
                                                                bool transpose_weight, T* out) {
  __shared__ RowTile tile;
  find_row_tile<kTileM>(offsets, rows, experts, blockIdx.x, tile);
  if (tile.expert < 0) return;  // a surplus slot of the grid's bound

  const int64_t row0 = tile.row_start, n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int64_t tile_rows = min(static_cast<int64_t>(kTileM), tile.row_end - row0);
  const int64_t tile_columns = min(static_cast<int64_t>(kTileN), n - n0);
  const T* matrix = weight + tile.expert * n * k;
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

// ==== tensor-core path (bfloat16): mma.sync m16n8k16, ldmatrix, cp.async pipeline ====
//
// C (M, N) = A (M, K) B (K, N) for a 128 x 128 tile of C per block of 4 warps (2 x 2,
// each 64 x 64 = 4 x 8 mma tiles: per 16-deep step a warp reads 2048 operand
// elements from shared memory for 32 mma, half the shared-memory traffic per mma of
// 64 x 32 warp tiles; two blocks per SM). K runs in slices of 32 staged through a
// 4-deep ring of shared-memory buffers filled by cp.async (the loads of slices
// kt+1..kt+3 are in flight while slice kt is multiplied). An operand slice is stored as it lies in
// memory, padded by 8 elements (16 bytes) per row so that the 8 row addresses of
// every ldmatrix fall in distinct bank groups:
//   A contiguous along k: [128 m][32 + 8]   -> ldmatrix        (row-major A fragment)
//   A contiguous along m: [32 k][128 + 8]   -> ldmatrix.trans
//   B contiguous along k: [128 n][32 + 8]   -> ldmatrix        (col-major B fragment)
//   B contiguous along n: [32 k][128 + 8]   -> ldmatrix.trans
// Copies move 16 bytes (8 elements) at a time, so the contiguous extents must be
// multiples of 8 (the launcher checks); rows or k past the operand's end are filled
// with zeros by cp.async's source size 0.

constexpr int kTcTileM = 128, kTcTileN = 128, kTcTileK = 32;
constexpr int kTcThreads = 128;
constexpr int kTcStages = 4;
constexpr int kTcPad = 8;
constexpr int kTcWarpM = 64, kTcWarpN = 64;  // each warp's part of the block tile
constexpr int kTcWarpsN = kTcTileN / kTcWarpN;
constexpr int kTcMmaM = kTcWarpM / 16, kTcMmaN = kTcWarpN / 8;  // 4 x 8 mma tiles per warp
// Elements of one operand buffer: the larger of the two layouts.
constexpr int kTcBuffer = kTcTileM * (kTcTileK + kTcPad) > kTcTileK * (kTcTileM + kTcPad)
                              ? kTcTileM * (kTcTileK + kTcPad)
                              : kTcTileK * (kTcTileM + kTcPad);
constexpr size_t kTcSharedBytes = size_t{2} * kTcStages * kTcBuffer * sizeof(__nv_bfloat16);
static_assert(kTcTileM == kTcTileN, "one buffer size and one copy loop serve both operands");

// One operand of the tile product. "outer" is m for A and n for B: the element
// (outer o, depth k) is at data[o * stride + k] when kAlongK (contiguous along k),
// else at data[k * stride + o]. Valid for o < outer_size, k < depth (zero outside).
struct TcOperand {
  const __nv_bfloat16* data;
  int64_t stride;
  int64_t outer_size;
};

// Starts the copy of depth slice [k0, k0 + 32) of one 128-wide operand into `buffer`.
template <bool kAlongK>
__device__ __forceinline__ void load_slice_async(__nv_bfloat16* buffer, const TcOperand& operand, int64_t k0,
                                                 int64_t depth) {
  constexpr int kChunks = kTcTileM * kTcTileK / 8;  // 16-byte chunks per slice
  static_assert(kChunks % kTcThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int i = 0; i < kChunks / kTcThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kTcThreads;
    int outer, kk;
    if constexpr (kAlongK) {
      outer = c / (kTcTileK / 8);
      kk = (c % (kTcTileK / 8)) * 8;
    } else {
      kk = c / (kTcTileM / 8);
      outer = (c % (kTcTileM / 8)) * 8;
    }
    // Contiguous extents are multiples of 8, so a chunk is wholly inside or outside.
    const bool valid = outer < operand.outer_size && k0 + kk < depth;
    const __nv_bfloat16* source =
        kAlongK ? operand.data + outer * operand.stride + (k0 + kk) : operand.data + (k0 + kk) * operand.stride + outer;
    __nv_bfloat16* target =
        kAlongK ? buffer + outer * (kTcTileK + kTcPad) + kk : buffer + kk * (kTcTileM + kTcPad) + outer;
    copy_async_16(target, valid ? source : operand.data, valid);
  }
}

// A fragment (16 x 16) at rows m0.., depth kk.. of the staged A slice.
template <bool kAlongK>
__device__ __forceinline__ void load_a_fragment(uint32_t (&a)[4], const __nv_bfloat16* buffer, int m0, int kk) {
  const int lane = threadIdx.x % kWarp;
  if constexpr (kAlongK) {
    // buffer[m][k]: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
    load_matrix_x4(a, buffer + (m0 + lane % 16) * (kTcTileK + kTcPad) + kk + (lane / 16) * 8);
  } else {
    // buffer[k][m], transposed by ldmatrix: the same four matrices, addressed by k rows.
    load_matrix_x4_transposed(a, buffer + (kk + lane % 8 + (lane / 16) * 8) * (kTcTileM + kTcPad) + m0 +
                                     ((lane / 8) % 2) * 8);
  }
}

// B fragments of two n-tiles (16 n x 16 k) at columns n0.., depth kk..: b[0], b[1]
// for n0 .. n0 + 7, b[2], b[3] for n0 + 8 .. n0 + 15.
template <bool kAlongK>
__device__ __forceinline__ void load_b_fragments(uint32_t (&b)[4], const __nv_bfloat16* buffer, int n0, int kk) {
  const int lane = threadIdx.x % kWarp;
  if constexpr (kAlongK) {
    // buffer[n][k]: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
    load_matrix_x4(b, buffer + (n0 + lane % 8 + (lane / 16) * 8) * (kTcTileK + kTcPad) + kk + ((lane / 8) % 2) * 8);
  } else {
    // buffer[k][n], transposed by ldmatrix.
    load_matrix_x4_transposed(b, buffer + (kk + lane % 8 + ((lane / 8) % 2) * 8) * (kTcTileN + kTcPad) + n0 +
                                     (lane / 16) * 8);
  }
}

// accumulator (this warp's 64 x 64 part of the block tile) = A B over `depth`.
template <bool kAAlongK, bool kBAlongK>
__device__ void multiply_tile_tensor_cores(const TcOperand& a, const TcOperand& b, int64_t depth,
                                           float (&accumulator)[kTcMmaM][kTcMmaN][4]) {
  extern __shared__ __align__(16) unsigned char tc_shared[];
  __nv_bfloat16* a_buffers = reinterpret_cast<__nv_bfloat16*>(tc_shared);
  __nv_bfloat16* b_buffers = a_buffers + kTcStages * kTcBuffer;
  const int warp = threadIdx.x / kWarp;
  const int warp_m0 = (warp / kTcWarpsN) * kTcWarpM, warp_n0 = (warp % kTcWarpsN) * kTcWarpN;
  const int64_t slices = (depth + kTcTileK - 1) / kTcTileK;

  // Prologue: slices 0 .. stages-2 in flight. A group is committed even when empty so
  // that "group kt is complete" is always "at most stages-2 groups pending".
#pragma unroll
  for (int s = 0; s < kTcStages - 1; ++s) {
    if (s < slices) {
      load_slice_async<kAAlongK>(a_buffers + s * kTcBuffer, a, s * kTcTileK, depth);
      load_slice_async<kBAlongK>(b_buffers + s * kTcBuffer, b, s * kTcTileK, depth);
    }
    copy_async_commit();
  }
  for (int64_t kt = 0; kt < slices; ++kt) {
    copy_async_wait<kTcStages - 2>();
    // Slice kt has landed for every thread, and every warp is done with slice kt - 1,
    // whose buffer the next load reuses.
    __syncthreads();
    const int64_t next = kt + kTcStages - 1;
    if (next < slices) {
      const int buffer = static_cast<int>(next % kTcStages);
      load_slice_async<kAAlongK>(a_buffers + buffer * kTcBuffer, a, next * kTcTileK, depth);
      load_slice_async<kBAlongK>(b_buffers + buffer * kTcBuffer, b, next * kTcTileK, depth);
    }
    copy_async_commit();

    const __nv_bfloat16* a_slice = a_buffers + (kt % kTcStages) * kTcBuffer;
    const __nv_bfloat16* b_slice = b_buffers + (kt % kTcStages) * kTcBuffer;
#pragma unroll
    for (int kk = 0; kk < kTcTileK; kk += 16) {
      uint32_t a_fragments[kTcMmaM][4], b_fragments[kTcMmaN / 2][4];
#pragma unroll
      for (int i = 0; i < kTcMmaM; ++i) load_a_fragment<kAAlongK>(a_fragments[i], a_slice, warp_m0 + i * 16, kk);
#pragma unroll
      for (int j = 0; j < kTcMmaN / 2; ++j) load_b_fragments<kBAlongK>(b_fragments[j], b_slice, warp_n0 + j * 16, kk);
#pragma unroll
      for (int i = 0; i < kTcMmaM; ++i)
#pragma unroll
        for (int j = 0; j < kTcMmaN; ++j)
          mma_16x8x16<__nv_bfloat16>(accumulator[i][j], a_fragments[i], b_fragments[j / 2][(j % 2) * 2],
                           b_fragments[j / 2][(j % 2) * 2 + 1]);
    }
  }
  copy_async_wait<0>();  // no copy may still target shared memory when the block exits
}

// Writes the warp's accumulators into the valid part of the block tile: element
// (i, j) at out[i * stride + j], for i < rows and j < columns (columns is a multiple
// of 8, so both columns of a pair are valid together).
__device__ void store_tile_tensor_cores(const float (&accumulator)[kTcMmaM][kTcMmaN][4], __nv_bfloat16* out,
                                        int64_t stride, int64_t rows, int64_t columns) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int warp_m0 = (warp / kTcWarpsN) * kTcWarpM, warp_n0 = (warp % kTcWarpsN) * kTcWarpN;
#pragma unroll
  for (int i = 0; i < kTcMmaM; ++i)
#pragma unroll
    for (int j = 0; j < kTcMmaN; ++j) {
      const int column = warp_n0 + j * 8 + (lane % 4) * 2;
      if (column >= columns) continue;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = warp_m0 + i * 16 + lane / 4 + half * 8;
        if (row < rows)
          *reinterpret_cast<__nv_bfloat162*>(out + row * stride + column) =
              __floats2bfloat162_rn(accumulator[i][j][half * 2], accumulator[i][j][half * 2 + 1]);
      }
    }
}

// Rows product on tensor cores. Block b takes row-tile slot b / column_tiles and
// column tile b % column_tiles: consecutive blocks share the row tile of x and sweep
// the expert's matrix, which stays in L2 across the expert's row tiles.
template <bool kTransposeWeight>
__global__ void __launch_bounds__(kTcThreads, 2)
    grouped_rows_tensor_core_kernel(const __nv_bfloat16* x, const __nv_bfloat16* weight, const int64_t* offsets,
                                    int64_t rows, int64_t experts, int64_t k, int64_t n, int64_t column_tiles,
                                    __nv_bfloat16* out) {
  __shared__ RowTile tile;
  const int64_t slot = blockIdx.x / column_tiles, n0 = (blockIdx.x % column_tiles) * kTcTileN;
  find_row_tile<kTcTileM>(offsets, rows, experts, slot, tile);
  if (tile.expert < 0) return;  // a surplus slot of the grid's bound

  const int64_t row0 = tile.row_start;
  const int64_t tile_rows = min(static_cast<int64_t>(kTcTileM), tile.row_end - row0);
  const int64_t tile_columns = min(static_cast<int64_t>(kTcTileN), n - n0);
  const __nv_bfloat16* matrix = weight + tile.expert * n * k;
  // A (rows, k) along k. B (k, n): W^T of a stored (n, k) matrix is along k; a stored
  // (k, n) matrix is along n.
  const TcOperand a{x + row0 * k, k, tile_rows};
  const TcOperand b = kTransposeWeight ? TcOperand{matrix + n0 * k, k, tile_columns}
                                       : TcOperand{matrix + n0, n, tile_columns};
  float accumulator[kTcMmaM][kTcMmaN][4] = {};
  multiply_tile_tensor_cores<true, kTransposeWeight>(a, b, k, accumulator);
  store_tile_tensor_cores(accumulator, out + row0 * n + n0, n, tile_rows, tile_columns);
}

// Weight gradient on tensor cores: grid.z is the expert, (grid.y, grid.x) the tile
// of grad_weight[e]; the product runs over the group's rows (zeros for an empty group).
__global__ void __launch_bounds__(kTcThreads, 2)
    grouped_weight_grad_tensor_core_kernel(const __nv_bfloat16* grad_out, const __nv_bfloat16* x,
                                           const int64_t* offsets, int64_t rows, int64_t n_out, int64_t n_in,
                                           __nv_bfloat16* grad_weight) {
  const int64_t e = blockIdx.z;
  int64_t start, end;
  group_range(offsets, e, rows, start, end);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTcTileM, n0 = static_cast<int64_t>(blockIdx.x) * kTcTileN;
  const int64_t tile_rows = min(static_cast<int64_t>(kTcTileM), n_out - m0);
  const int64_t tile_columns = min(static_cast<int64_t>(kTcTileN), n_in - n0);
  // A (n_out, rows_e) = grad_out's group transposed: along m. B (rows_e, n_in) = x's group: along n.
  const TcOperand a{grad_out + start * n_out + m0, n_out, tile_rows};
  const TcOperand b{x + start * n_in + n0, n_in, tile_columns};
  float accumulator[kTcMmaM][kTcMmaN][4] = {};
  multiply_tile_tensor_cores<false, false>(a, b, end - start, accumulator);
  store_tile_tensor_cores(accumulator, grad_weight + e * n_out * n_in + m0 * n_in + n0, n_in, tile_rows,
                          tile_columns);
}

// The tensor-core path takes bfloat16 operands whose contiguous extents are whole
// 16-byte chunks: both matrix dims multiples of 8 and every base pointer 16-byte aligned.
bool tensor_core_eligible(DType dtype, int64_t dim_1, int64_t dim_2, std::initializer_list<const void*> pointers) {
  if (dtype != DType::BFloat16 || dim_1 % 8 != 0 || dim_2 % 8 != 0) return false;
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

template <class Kernel>
void allow_tensor_core_shared_bytes(Kernel kernel) {
  STRATA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kTcSharedBytes)));
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
  if (tensor_core_eligible(dtype, k, n, {x, weight, out})) {
    if (rows == 0 || n == 0) return true;
    const int64_t column_tiles = tiles(n, kTcTileN);
    // Row-tile slots: ceil(rows / 128) + experts bounds the tiles of any split into groups.
    const int64_t blocks = (static_cast<int64_t>(tiles(rows, kTcTileM)) + experts) * column_tiles;
    auto run = [&](auto kernel) {
      allow_tensor_core_shared_bytes(kernel);
      kernel<<<static_cast<unsigned>(blocks), kTcThreads, kTcSharedBytes, cuda::stream()>>>(
          static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(weight), offsets, rows, experts, k, n,
          column_tiles, static_cast<__nv_bfloat16*>(out));
      STRATA_CUDA_CHECK_LAUNCH("grouped_rows_tensor_core_kernel");
    };
    if (transpose_weight)
      run(grouped_rows_tensor_core_kernel<true>);
    else
      run(grouped_rows_tensor_core_kernel<false>);
    return true;
  }
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
  if (tensor_core_eligible(dtype, n_out, n_in, {grad_out, x, grad_weight})) {
    if (experts == 0 || n_out == 0 || n_in == 0) return true;
    allow_tensor_core_shared_bytes(grouped_weight_grad_tensor_core_kernel);
    const dim3 grid(tiles(n_in, kTcTileN), tiles(n_out, kTcTileM), static_cast<unsigned>(experts));
    grouped_weight_grad_tensor_core_kernel<<<grid, kTcThreads, kTcSharedBytes, cuda::stream()>>>(
        static_cast<const __nv_bfloat16*>(grad_out), static_cast<const __nv_bfloat16*>(x), offsets, rows, n_out, n_in,
        static_cast<__nv_bfloat16*>(grad_weight));
    STRATA_CUDA_CHECK_LAUNCH("grouped_weight_grad_tensor_core_kernel");
    return true;
  }
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
