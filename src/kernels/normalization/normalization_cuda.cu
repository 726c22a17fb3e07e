// Layer normalisation and RMS normalisation on CUDA: float32 and bfloat16 data,
// float32 statistics and arithmetic. One kernel serves both norms: layer_norm
// subtracts the row mean (subtract_mean), rms_norm does not.
//
// Tiling and what lives where:
//  * Forward, cached kernel (rows of up to 512 x 8 packs: 16384 float32 or 32768
//    bfloat16 elements with 16-byte packs; 512 x 16 = 8192 single elements). A
//    group of threads_per_row threads takes one row (part of a warp, a warp, or
//    up to 16 warps; row_cuda.cuh), each thread holding up to 8 packs (16 single
//    elements) of it in registers; a 256-thread block holds 256 /
//    threads_per_row rows, and the grid covers the rows once. x is read once: the
//    row sum (layer_norm) gives the mean, then the sum of squared deviations, from
//    the registers, gives rstd (an exact two-pass variance, not E[x^2] - mean^2);
//    y is written from the registers. Reductions: warp shuffles, plus a 32-float
//    shared scratch when a row spans warps. mean and rstd (float32) are saved per
//    row. weight and bias are re-read per row (the same dim elements for every
//    row: they stay in L1/L2).
//    (16384, 4096): float32 128 threads per row, bfloat16 64 threads per row,
//    each with 8 packs (32 and 64 elements). bfloat16 rows of 1024 take 16
//    threads (part of a warp, packed_row_geometry) so that each keeps 8 packs.
//    bfloat16 with 4 packs per thread (as float32's row bytes per thread would
//    give) reached ~66% of copy bandwidth on the H200 even with a persistent
//    grid prefetching into the L2. In a standalone benchmark of this kernel
//    (H200), 8 packs with all loads first reached 82% (layer_norm) and 88%
//    (rms_norm) at (16384, 4096) and (8192, 8192), 63% and 67% at (16384,
//    1024); 16 packs (a warp per row, 128 registers) 75% and 80%.
//  * Backward, cached kernel (rows of up to 512 x 16 = 8192 elements with
//    packs, 512 x 8 = 4096 with single elements). The same row groups with half
//    the elements per thread: each thread holds its x and dy packs, float32
//    running sums of dy * xhat and dy for its columns, and the weight of its
//    columns, loaded once; it requests all its x and dy packs of a row before
//    using any (with the weight re-read for every row and each pack used as it
//    was loaded, float32 stayed near 60% of copy bandwidth on the H200; ~90%
//    this way). The grid is persistent (as many blocks as are resident at
//    once, no more than there are rows) and strides over rows, so those running
//    sums cover many rows; with packs each block asks the L2 for the x and dy
//    rows of its next step before it works on the current ones (+6 to +10
//    points of copy bandwidth for bfloat16). Per row: xhat is
//    recomputed from x, mean and rstd; one two-value reduction gives sum(g) and
//    sum(g * xhat), g = dy * weight rounded once, so that the same value enters
//    the sum and the difference g - mean(g) (a row's dx sums to ~0, and is
//    exactly 0 for dim 1); dx is written. x and dy are read once.
//    Finally each block writes one row of partial sums of dweight and dbias
//    (float32, in the workspace (2, blocks, dim)); the row groups of a block are
//    first combined in shared memory (2 x dim floats), one after another.
//    sum_partials_kernel then adds the partial rows of each column (32 columns x
//    16 slices per block, fixed order) and writes dweight and dbias in the data
//    dtype. No atomics: the result is deterministic.
//    (16384, 4096): 256 threads per row, 16 elements each.
//  * Longer rows: streaming kernels, one 512-thread block per row, nothing
//    cached: the forward reads x two (rms_norm) or three (layer_norm) times, the
//    backward reads x and dy twice and keeps the partial sums of the parameter
//    gradients in its block's workspace row.
// The backward recomputes xhat; nothing but mean and rstd is saved.
#include "kernels/normalization/normalization_cuda.h"

#include <algorithm>

#include "kernels/softmax/row_cuda.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

using row::Pack;
using row::to_float;

// Row elements one thread keeps in registers. Forward: eight 16-byte packs (32
// float32 or 64 bfloat16 elements), 16 single elements. Backward: 16 elements
// with packs (it also holds dy and two running sums per element), 8 single
// elements; single elements have separate addresses, which cost registers too
// (the full count would spill).
template <int W>
constexpr int forward_packs() {
  return W == 1 ? 16 : 8;
}
template <int W>
constexpr int backward_packs() {
  return W == 1 ? 8 : 16 / W;
}
// sum_partials_kernel blocks: 32 columns x 16 slices of the partial rows.
constexpr int kPartialColumns = 32;
constexpr int kPartialSlices = 16;

template <class T>
struct ForwardParams {
  const T* x;
  const T* weight;  // or null
  const T* bias;    // or null
  T* y;
  float* mean;  // or null (rms_norm)
  float* rstd;
  int64_t rows;
  int dim;
  float eps;
  bool subtract_mean;
};

template <class T>
struct BackwardParams {
  const T* dy;
  const T* x;
  const T* weight;     // or null
  const float* mean;   // or null (rms_norm)
  const float* rstd;
  T* dx;
  float* partial_weight;  // (gridDim.x, dim), or null: dweight not wanted
  float* partial_bias;    // (gridDim.x, dim), or null: dbias not wanted
  int64_t rows;
  int dim;
  bool subtract_mean;
};

// Makes the compiler forget what it knows about a 16-byte pack of 2-byte
// elements: an empty asm that "changes" its registers. The float32 values
// converted from it before this point are then not kept alive after it (8
// registers per pack) but converted again from the packed registers (a shift per
// element). The bfloat16 forward holds 64 elements per thread: without this its
// two-pass statistics kept every element in float32 too (104 registers, not 77).
template <class T, int W>
__device__ __forceinline__ void forget_converted(Pack<T, W>& pack) {
  if constexpr (sizeof(T) == 2 && sizeof(T) * W == 16) {
    uint32_t* words = reinterpret_cast<uint32_t*>(&pack);
    asm volatile("" : "+r"(words[0]), "+r"(words[1]), "+r"(words[2]), "+r"(words[3]));
  }
}

// Asks the L2 cache for rows [first, first + count) of `data` (clamped to
// `rows`), to be read by the next step of the calling block: one bulk prefetch
// from thread 0, which no thread waits for and no register holds. The rows must
// start 16-byte aligned and be 16-byte multiples.
template <class T>
__device__ __forceinline__ void prefetch_rows(const T* data, int64_t first, int64_t count, int64_t rows, int dim) {
  if (threadIdx.x != 0 || first >= rows) return;
  const int64_t bytes = min(count, rows - first) * dim * static_cast<int64_t>(sizeof(T));
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(data + first * dim),
               "r"(static_cast<uint32_t>(bytes))
               : "memory");
}

// ---- forward ---------------------------------------------------------------------

// The rows [first, first + rows per block) of the forward, one per row group.
template <class T, int W>
__device__ __forceinline__ void forward_rows(const ForwardParams<T>& p, int threads_per_row, int64_t first,
                                             float (*scratch)[32]) {
  constexpr int kPacks = forward_packs<W>();
  const int lane = threadIdx.x % threads_per_row;
  const int64_t row = first + threadIdx.x / threads_per_row;
  const bool active = row < p.rows;
  const T* in = p.x + row * p.dim;

  // bfloat16 issues every load of the row before it sums any: with each pack
  // summed as it was loaded, the loads went out one after another (8 packs:
  // 57% of copy bandwidth in strata bench, against 82% for a standalone kernel
  // that differed only in this). float32 keeps summing each pack as it arrives:
  // it is at ~93% so, and loading first takes it from 64 to 76 registers (one
  // resident block fewer).
  constexpr bool kLoadsFirst = sizeof(T) == 2;
  Pack<T, W> cached[kPacks];
  float sum[1] = {0.0f};
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int column = (i * threads_per_row + lane) * W;
    if (active && column < p.dim) {
      cached[i] = row::load_pack<T, W>(in + column);
      if constexpr (!kLoadsFirst)
#pragma unroll
        for (int k = 0; k < W; ++k) sum[0] += to_float(cached[i].v[k]);
    }
  }
  if constexpr (kLoadsFirst)
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int column = (i * threads_per_row + lane) * W;
      if (active && column < p.dim)
#pragma unroll
        for (int k = 0; k < W; ++k) sum[0] += to_float(cached[i].v[k]);
    }
  float mean = 0.0f;
  if (p.subtract_mean) {
    row::reduce_over_row(sum, threads_per_row, scratch, row::SumOp{});
    mean = sum[0] / p.dim;
#pragma unroll
    for (int i = 0; i < kPacks; ++i) forget_converted(cached[i]);
  }
  float squares[1] = {0.0f};
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int column = (i * threads_per_row + lane) * W;
    if (active && column < p.dim)
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const float centered = to_float(cached[i].v[k]) - mean;
        squares[0] += centered * centered;
      }
  }
  row::reduce_over_row(squares, threads_per_row, scratch, row::SumOp{});
  const float rstd = rsqrtf(squares[0] / p.dim + p.eps);
#pragma unroll
  for (int i = 0; i < kPacks; ++i) forget_converted(cached[i]);
  if (active && lane == 0) {
    if (p.mean) p.mean[row] = mean;
    p.rstd[row] = rstd;
  }

#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int column = (i * threads_per_row + lane) * W;
    if (active && column < p.dim) {
      Pack<T, W> weight, bias, result;
      if (p.weight) weight = row::load_pack<T, W>(p.weight + column);
      if (p.bias) bias = row::load_pack<T, W>(p.bias + column);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        float value = (to_float(cached[i].v[k]) - mean) * rstd;
        if (p.weight) value *= to_float(weight.v[k]);
        if (p.bias) value += to_float(bias.v[k]);
        result.v[k] = row::from_float<T>(value);
      }
      row::store_pack<T, W>(p.y + row * p.dim + column, result);
    }
  }
}

// Each row group of the block takes one row; the grid covers the rows once.
template <class T, int W>
__global__ void __launch_bounds__(row::kMaxThreadsPerRow) norm_forward_cached_kernel(ForwardParams<T> p,
                                                                                   int threads_per_row) {
  __shared__ float scratch[1][32];
  const int rows_per_block = blockDim.x / threads_per_row;
  forward_rows<T, W>(p, threads_per_row, static_cast<int64_t>(blockIdx.x) * rows_per_block, scratch);
}

template <class T>
__global__ void __launch_bounds__(row::kMaxThreadsPerRow) norm_forward_streaming_kernel(ForwardParams<T> p) {
  __shared__ float scratch[1][32];
  const int64_t row = blockIdx.x;
  const T* in = p.x + row * p.dim;
  float mean = 0.0f;
  if (p.subtract_mean) {
    float sum[1] = {0.0f};
    for (int c = threadIdx.x; c < p.dim; c += blockDim.x) sum[0] += to_float(in[c]);
    row::reduce_over_row(sum, blockDim.x, scratch, row::SumOp{});
    mean = sum[0] / p.dim;
  }
  float squares[1] = {0.0f};
  for (int c = threadIdx.x; c < p.dim; c += blockDim.x) {
    const float centered = to_float(in[c]) - mean;
    squares[0] += centered * centered;
  }
  row::reduce_over_row(squares, blockDim.x, scratch, row::SumOp{});
  const float rstd = rsqrtf(squares[0] / p.dim + p.eps);
  if (threadIdx.x == 0) {
    if (p.mean) p.mean[row] = mean;
    p.rstd[row] = rstd;
  }
  for (int c = threadIdx.x; c < p.dim; c += blockDim.x) {
    float value = (to_float(in[c]) - mean) * rstd;
    if (p.weight) value *= to_float(p.weight[c]);
    if (p.bias) value += to_float(p.bias[c]);
    p.y[row * p.dim + c] = row::from_float<T>(value);
  }
}

// ---- backward --------------------------------------------------------------------

template <class T, int W>
__global__ void __launch_bounds__(row::kMaxThreadsPerRow)
    norm_backward_cached_kernel(BackwardParams<T> p, int threads_per_row) {
  constexpr int kPacks = backward_packs<W>();
  __shared__ float scratch[2][32];
  extern __shared__ float block_sums[];  // (2, dim) when the block holds several row groups
  const int rows_per_block = blockDim.x / threads_per_row;
  const int slot = threadIdx.x / threads_per_row, lane = threadIdx.x % threads_per_row;
  const int64_t step = static_cast<int64_t>(gridDim.x) * rows_per_block;

  // The weight of this thread's columns, the same in every row.
  Pack<T, W> weight[kPacks];
  if (p.weight)
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int column = (i * threads_per_row + lane) * W;
      if (column < p.dim) weight[i] = row::load_pack<T, W>(p.weight + column);
    }
  // This thread's columns, summed over the rows it handles.
  float weight_sum[kPacks][W], bias_sum[kPacks][W];
#pragma unroll
  for (int i = 0; i < kPacks; ++i)
#pragma unroll
    for (int k = 0; k < W; ++k) weight_sum[i][k] = bias_sum[i][k] = 0.0f;

  // `first` is the same for the whole block, so every thread runs the same
  // iterations and reaches the block-wide synchronisations of reduce_over_row.
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * rows_per_block; first < p.rows; first += step) {
    if constexpr (W > 1) {  // packs: the rows are 16-byte aligned multiples of 16 bytes
      prefetch_rows(p.x, first + step, rows_per_block, p.rows, p.dim);
      prefetch_rows(p.dy, first + step, rows_per_block, p.rows, p.dim);
    }
    const int64_t row = first + slot;
    const bool active = row < p.rows;
    const int64_t start = row * p.dim;
    const float mean = active && p.subtract_mean ? p.mean[row] : 0.0f;
    const float rstd = active ? p.rstd[row] : 0.0f;

    // Every load of the row is issued before any of them is used (see the
    // header): in one loop with the arithmetic they went out one after another.
    Pack<T, W> x[kPacks], dy[kPacks];
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int column = (i * threads_per_row + lane) * W;
      if (active && column < p.dim) {
        x[i] = row::load_pack<T, W>(p.x + start + column);
        dy[i] = row::load_pack<T, W>(p.dy + start + column);
      }
    }
    float sums[2] = {0.0f, 0.0f};  // sum(g), sum(g * xhat), g = dy * weight
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int column = (i * threads_per_row + lane) * W;
      if (active && column < p.dim) {
#pragma unroll
        for (int k = 0; k < W; ++k) {
          const float xhat = (to_float(x[i].v[k]) - mean) * rstd;
          const float grad = to_float(dy[i].v[k]);
          const float g = p.weight ? __fmul_rn(grad, to_float(weight[i].v[k])) : grad;
          sums[0] += g;
          sums[1] += g * xhat;
          weight_sum[i][k] += grad * xhat;
          bias_sum[i][k] += grad;
        }
      }
    }
    row::reduce_over_row(sums, threads_per_row, scratch, row::SumOp{});
    const float mean_g = p.subtract_mean ? sums[0] / p.dim : 0.0f;
    const float mean_g_xhat = sums[1] / p.dim;

#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int column = (i * threads_per_row + lane) * W;
      if (active && column < p.dim) {
        Pack<T, W> result;
#pragma unroll
        for (int k = 0; k < W; ++k) {
          const float xhat = (to_float(x[i].v[k]) - mean) * rstd;
          const float grad = to_float(dy[i].v[k]);
          const float g = p.weight ? __fmul_rn(grad, to_float(weight[i].v[k])) : grad;
          result.v[k] = row::from_float<T>(rstd * (g - mean_g - xhat * mean_g_xhat));
        }
        row::store_pack<T, W>(p.dx + start + column, result);
      }
    }
  }

  if (p.partial_weight == nullptr && p.partial_bias == nullptr) return;
  const int64_t partial_start = static_cast<int64_t>(blockIdx.x) * p.dim;
  if (rows_per_block == 1) {
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int column = (i * threads_per_row + lane) * W;
      if (column < p.dim)
#pragma unroll
        for (int k = 0; k < W; ++k) {
          if (p.partial_weight) p.partial_weight[partial_start + column + k] = weight_sum[i][k];
          if (p.partial_bias) p.partial_bias[partial_start + column + k] = bias_sum[i][k];
        }
    }
    return;
  }
  // Several row groups: add them into shared memory one group after another (a
  // fixed order), then write the block's row.
  float* block_weight = block_sums;
  float* block_bias = block_sums + p.dim;
  for (int s = 0; s < rows_per_block; ++s) {
    if (slot == s) {
#pragma unroll
      for (int i = 0; i < kPacks; ++i) {
        const int column = (i * threads_per_row + lane) * W;
        if (column < p.dim)
#pragma unroll
          for (int k = 0; k < W; ++k) {
            block_weight[column + k] = (s == 0 ? 0.0f : block_weight[column + k]) + weight_sum[i][k];
            block_bias[column + k] = (s == 0 ? 0.0f : block_bias[column + k]) + bias_sum[i][k];
          }
      }
    }
    __syncthreads();
  }
  for (int c = threadIdx.x; c < p.dim; c += blockDim.x) {
    if (p.partial_weight) p.partial_weight[partial_start + c] = block_weight[c];
    if (p.partial_bias) p.partial_bias[partial_start + c] = block_bias[c];
  }
}

template <class T>
__global__ void __launch_bounds__(row::kMaxThreadsPerRow) norm_backward_streaming_kernel(BackwardParams<T> p) {
  __shared__ float scratch[2][32];
  const int64_t partial_start = static_cast<int64_t>(blockIdx.x) * p.dim;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const bool first_row = row == blockIdx.x;
    const int64_t start = row * p.dim;
    const float mean = p.subtract_mean ? p.mean[row] : 0.0f;
    const float rstd = p.rstd[row];
    float sums[2] = {0.0f, 0.0f};  // sum(g), sum(g * xhat)
    for (int c = threadIdx.x; c < p.dim; c += blockDim.x) {
      const float xhat = (to_float(p.x[start + c]) - mean) * rstd;
      const float grad = to_float(p.dy[start + c]);
      const float g = p.weight ? __fmul_rn(grad, to_float(p.weight[c])) : grad;
      sums[0] += g;
      sums[1] += g * xhat;
    }
    row::reduce_over_row(sums, blockDim.x, scratch, row::SumOp{});
    const float mean_g = p.subtract_mean ? sums[0] / p.dim : 0.0f;
    const float mean_g_xhat = sums[1] / p.dim;
    // Each thread owns the same columns in every row, so the partial sums in
    // the block's workspace row need no synchronisation.
    for (int c = threadIdx.x; c < p.dim; c += blockDim.x) {
      const float xhat = (to_float(p.x[start + c]) - mean) * rstd;
      const float grad = to_float(p.dy[start + c]);
      const float g = p.weight ? __fmul_rn(grad, to_float(p.weight[c])) : grad;
      p.dx[start + c] = row::from_float<T>(rstd * (g - mean_g - xhat * mean_g_xhat));
      if (p.partial_weight)
        p.partial_weight[partial_start + c] = (first_row ? 0.0f : p.partial_weight[partial_start + c]) + grad * xhat;
      if (p.partial_bias)
        p.partial_bias[partial_start + c] = (first_row ? 0.0f : p.partial_bias[partial_start + c]) + grad;
    }
  }
}

// out[c] = sum over r of partials[r, c], for the weight (blockIdx.y == 0) and the
// bias (blockIdx.y == 1); an array whose partials are null is skipped.
template <class T>
__global__ void sum_partials_kernel(const float* __restrict__ partial_weight, const float* __restrict__ partial_bias,
                                    int64_t partial_rows, int dim, T* __restrict__ dweight, T* __restrict__ dbias) {
  const float* partials = blockIdx.y == 0 ? partial_weight : partial_bias;
  T* out = blockIdx.y == 0 ? dweight : dbias;
  if (partials == nullptr) return;
  __shared__ float slices[kPartialSlices][kPartialColumns + 1];
  const int column = blockIdx.x * kPartialColumns + threadIdx.x;
  float sum = 0.0f;
  if (column < dim)
    for (int64_t r = threadIdx.y; r < partial_rows; r += kPartialSlices) sum += partials[r * dim + column];
  slices[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && column < dim) {
    float total = 0.0f;
    for (int s = 0; s < kPartialSlices; ++s) total += slices[s][threadIdx.x];
    out[column] = row::from_float<T>(total);
  }
}

// ---- launchers -------------------------------------------------------------------

unsigned int blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned int>((items + per_block - 1) / per_block);
}

// As row::cached_row_geometry, but a row shorter than a warp's worth of full
// threads takes fewer threads (part of a warp): the bfloat16 forward keeps its 8
// packs per thread at 1024 columns (16 threads per row).
row::RowGeometry packed_row_geometry(int64_t dim, int width, int max_packs) {
  const int64_t packs = (dim + width - 1) / width;
  int64_t threads = 1;
  while (threads * max_packs < packs) threads *= 2;
  if (threads > row::kMaxThreadsPerRow) return {};
  const int threads_per_row = static_cast<int>(threads);
  return {threads_per_row, threads_per_row >= row::kBlockThreads ? 1 : row::kBlockThreads / threads_per_row};
}

int multiprocessor_count() {
  int device = 0, count = 0;
  STRATA_CUDA_CHECK(cudaGetDevice(&device));
  STRATA_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

template <class T>
void launch_forward(const NormForwardCudaArguments& args) {
  if (args.rows == 0 || args.dim == 0) return;
  const ForwardParams<T> p{static_cast<const T*>(args.x), static_cast<const T*>(args.weight),
                           static_cast<const T*>(args.bias), static_cast<T*>(args.y), args.mean, args.rstd,
                           args.rows, static_cast<int>(args.dim), args.eps, args.subtract_mean};
  cudaStream_t stream = cuda::stream();
  constexpr int kVector = row::vector_width<T>();
  const bool vectorized = args.dim % kVector == 0 && row::aligned_16({args.x, args.weight, args.bias, args.y});
  row::RowGeometry geometry = row::cached_row_geometry(args.dim, 1, forward_packs<1>());
  if (vectorized)
    geometry = sizeof(T) == 2 ? packed_row_geometry(args.dim, kVector, forward_packs<kVector>())
                              : row::cached_row_geometry(args.dim, kVector, forward_packs<kVector>());
  if (!geometry.fits()) {
    norm_forward_streaming_kernel<T>
        <<<static_cast<unsigned int>(args.rows), row::streaming_row_geometry().block_threads(), 0, stream>>>(p);
    STRATA_CUDA_CHECK_LAUNCH("norm_forward_streaming_kernel");
    return;
  }
  const unsigned int blocks = blocks_for(args.rows, geometry.rows_per_block);
  if (vectorized) {
    norm_forward_cached_kernel<T, kVector>
        <<<blocks, geometry.block_threads(), 0, stream>>>(p, geometry.threads_per_row);
  } else {
    norm_forward_cached_kernel<T, 1><<<blocks, geometry.block_threads(), 0, stream>>>(p, geometry.threads_per_row);
  }
  STRATA_CUDA_CHECK_LAUNCH("norm_forward_cached_kernel");
}

enum class BackwardKernel { CachedVector, CachedScalar, Streaming };

// The backward launch: which kernel, its geometry and a persistent grid of as
// many blocks as are resident at once (no more than there is work for). The
// workspace query and the launch both derive it from the same arguments.
struct BackwardPlan {
  BackwardKernel kernel = BackwardKernel::Streaming;
  row::RowGeometry geometry;
  size_t shared_bytes = 0;
  unsigned int blocks = 0;
};

template <class T>
BackwardPlan plan_backward(const NormBackwardCudaArguments& args) {
  constexpr int kVector = row::vector_width<T>();
  const bool vectorized = args.dim % kVector == 0 && row::aligned_16({args.dy, args.x, args.weight, args.dx});
  BackwardPlan plan;
  plan.geometry = vectorized ? row::cached_row_geometry(args.dim, kVector, backward_packs<kVector>())
                             : row::cached_row_geometry(args.dim, 1, backward_packs<1>());
  int resident_per_multiprocessor = 0;
  int64_t blocks_needed = args.rows;
  if (plan.geometry.fits()) {
    plan.kernel = vectorized ? BackwardKernel::CachedVector : BackwardKernel::CachedScalar;
    plan.shared_bytes = plan.geometry.rows_per_block > 1 ? 2 * static_cast<size_t>(args.dim) * sizeof(float) : 0;
    if (vectorized) {
      STRATA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &resident_per_multiprocessor, norm_backward_cached_kernel<T, kVector>, plan.geometry.block_threads(),
          plan.shared_bytes));
    } else {
      STRATA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &resident_per_multiprocessor, norm_backward_cached_kernel<T, 1>, plan.geometry.block_threads(),
          plan.shared_bytes));
    }
    blocks_needed = (args.rows + plan.geometry.rows_per_block - 1) / plan.geometry.rows_per_block;
  } else {
    plan.kernel = BackwardKernel::Streaming;
    plan.geometry = row::streaming_row_geometry();
    STRATA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &resident_per_multiprocessor, norm_backward_streaming_kernel<T>, plan.geometry.block_threads(), 0));
  }
  const int64_t resident = static_cast<int64_t>(multiprocessor_count()) * std::max(1, resident_per_multiprocessor);
  plan.blocks = static_cast<unsigned int>(std::max<int64_t>(1, std::min(blocks_needed, resident)));
  return plan;
}

template <class T>
int64_t backward_workspace(const NormBackwardCudaArguments& args) {
  if (args.rows == 0 || args.dim == 0 || (args.dweight == nullptr && args.dbias == nullptr)) return 0;
  return 2 * static_cast<int64_t>(plan_backward<T>(args).blocks) * args.dim;
}

template <class T>
void launch_backward(const NormBackwardCudaArguments& args) {
  if (args.dim == 0) return;
  cudaStream_t stream = cuda::stream();
  if (args.rows == 0) {  // sums over no rows
    if (args.dweight) STRATA_CUDA_CHECK(cudaMemsetAsync(args.dweight, 0, args.dim * sizeof(T), stream));
    if (args.dbias) STRATA_CUDA_CHECK(cudaMemsetAsync(args.dbias, 0, args.dim * sizeof(T), stream));
    return;
  }
  const BackwardPlan plan = plan_backward<T>(args);
  const int64_t partial_elements = static_cast<int64_t>(plan.blocks) * args.dim;
  const BackwardParams<T> p{static_cast<const T*>(args.dy),
                            static_cast<const T*>(args.x),
                            static_cast<const T*>(args.weight),
                            args.mean,
                            args.rstd,
                            static_cast<T*>(args.dx),
                            args.dweight ? args.workspace : nullptr,
                            args.dbias ? args.workspace + partial_elements : nullptr,
                            args.rows,
                            static_cast<int>(args.dim),
                            args.subtract_mean};
  constexpr int kVector = row::vector_width<T>();
  switch (plan.kernel) {
    case BackwardKernel::CachedVector:
      norm_backward_cached_kernel<T, kVector><<<plan.blocks, plan.geometry.block_threads(), plan.shared_bytes, stream>>>(
          p, plan.geometry.threads_per_row);
      STRATA_CUDA_CHECK_LAUNCH("norm_backward_cached_kernel");
      break;
    case BackwardKernel::CachedScalar:
      norm_backward_cached_kernel<T, 1><<<plan.blocks, plan.geometry.block_threads(), plan.shared_bytes, stream>>>(
          p, plan.geometry.threads_per_row);
      STRATA_CUDA_CHECK_LAUNCH("norm_backward_cached_kernel");
      break;
    case BackwardKernel::Streaming:
      norm_backward_streaming_kernel<T><<<plan.blocks, plan.geometry.block_threads(), 0, stream>>>(p);
      STRATA_CUDA_CHECK_LAUNCH("norm_backward_streaming_kernel");
      break;
  }
  if (args.dweight == nullptr && args.dbias == nullptr) return;
  const dim3 block(kPartialColumns, kPartialSlices);
  const dim3 grid(blocks_for(args.dim, kPartialColumns), 2);
  sum_partials_kernel<T><<<grid, block, 0, stream>>>(p.partial_weight, p.partial_bias, plan.blocks,
                                                    static_cast<int>(args.dim), static_cast<T*>(args.dweight),
                                                    static_cast<T*>(args.dbias));
  STRATA_CUDA_CHECK_LAUNCH("sum_partials_kernel");
}

}  // namespace

bool norm_forward_cuda(const NormForwardCudaArguments& args) {
  switch (args.dtype) {
    case DType::Float32: launch_forward<float>(args); return true;
    case DType::BFloat16: launch_forward<__nv_bfloat16>(args); return true;
    default: return false;
  }
}

bool norm_backward_cuda(const NormBackwardCudaArguments& args) {
  switch (args.dtype) {
    case DType::Float32: launch_backward<float>(args); return true;
    case DType::BFloat16: launch_backward<__nv_bfloat16>(args); return true;
    default: return false;
  }
}

int64_t norm_backward_cuda_workspace(const NormBackwardCudaArguments& args) {
  switch (args.dtype) {
    case DType::Float32: return backward_workspace<float>(args);
    case DType::BFloat16: return backward_workspace<__nv_bfloat16>(args);
    default: return 0;
  }
}

}  // namespace strata::kernels
