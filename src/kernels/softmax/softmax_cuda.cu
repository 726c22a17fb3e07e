// Fused softmax and log-softmax on CUDA, float32 and bfloat16 with float32
// arithmetic. The tensor is viewed as (outer, dim, inner), contiguous.
//
// Tiling and what lives where:
//  * inner == 1 (softmax over the last dim), rows of up to 512 x 32 = 16384
//    elements with 16-byte packs (512 x 16 = 8192 with single elements): the
//    cached kernels. A group of threads_per_row threads takes one row (a part of
//    a warp for short rows, one warp, up to 16 warps; see row_cuda.cuh) and each
//    thread holds up to 32 (16) elements of it in registers: as float32 in the
//    forward, as packs of y and dy in the backward. The forward reads x once:
//    row maximum and sum of exp by group reductions (warp shuffles, plus a
//    32-float shared scratch across warps), one exp per element, then writes y
//    from the registers. The backward reads y and dy once: sum(dy * y) (softmax)
//    or sum(dy) (log_softmax), then writes dx.
//  * inner == 1, longer rows (a vocabulary): the streaming kernels, one block of
//    512 threads per row, nothing cached. The forward keeps a running
//    (maximum, sum of exp) per thread in one pass and writes y in a second pass;
//    the backward sums in one pass and writes in a second: the row is read twice
//    (the second read mostly from L2).
//  * inner > 1 (softmax over a dim that is not the last): the column kernels, one
//    thread per (outer, inner) column, stepping through dim with stride inner, so
//    threads with consecutive inner indices read consecutive addresses. Two
//    passes, like the streaming kernels.
// The backward recomputes nothing: it works from the saved output y.
#include "kernels/softmax/softmax_cuda.h"

#include "kernels/softmax/row_cuda.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

using row::Pack;
using row::to_float;

// Row elements one thread keeps in registers in the cached kernels: 32 with
// 16-byte packs; 16 with single elements, whose separate addresses cost
// registers too (32 would spill).
template <int W>
constexpr int cached_packs() {
  return W == 1 ? 16 : 32 / W;
}
constexpr int kColumnBlockThreads = 256;
// Elements the streaming and column kernels fold into their running softmax at once.
constexpr int kStreamingGroup = 4;

// ---- forward ---------------------------------------------------------------------

template <class T, int W>
__global__ void __launch_bounds__(row::kMaxThreadsPerRow)
    softmax_forward_cached_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int dim,
                                  int threads_per_row, bool log) {
  constexpr int kPacks = cached_packs<W>();
  __shared__ float scratch[1][32];
  const int lane = threadIdx.x % threads_per_row;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / threads_per_row) + threadIdx.x / threads_per_row;
  const bool active = row < rows;
  const T* in = x + row * dim;
  T* out = y + row * dim;

  // The row as float32: x, then x - maximum, then (softmax) exp(x - maximum),
  // so each element costs one exp.
  float values[kPacks][W];
  float maximum[1] = {-INFINITY};
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int column = (i * threads_per_row + lane) * W;
    if (active && column < dim) {
      const Pack<T, W> pack = row::load_pack<T, W>(in + column);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        values[i][k] = to_float(pack.v[k]);
        maximum[0] = fmaxf(maximum[0], values[i][k]);
      }
    }
  }
  row::reduce_over_row(maximum, threads_per_row, scratch, row::MaxOp{});

  float total[1] = {0.0f};
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int column = (i * threads_per_row + lane) * W;
    if (active && column < dim)
#pragma unroll
      for (int k = 0; k < W; ++k) {
        values[i][k] -= maximum[0];
        const float exponential = expf(values[i][k]);
        total[0] += exponential;
        if (!log) values[i][k] = exponential;
      }
  }
  row::reduce_over_row(total, threads_per_row, scratch, row::SumOp{});

  const float log_total = logf(total[0]), inverse_total = 1.0f / total[0];
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int column = (i * threads_per_row + lane) * W;
    if (active && column < dim) {
      Pack<T, W> result;
#pragma unroll
      for (int k = 0; k < W; ++k)
        result.v[k] = row::from_float<T>(log ? values[i][k] - log_total : values[i][k] * inverse_total);
      row::store_pack<T, W>(out + column, result);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(row::kMaxThreadsPerRow)
    softmax_forward_streaming_kernel(const T* __restrict__ x, T* __restrict__ y, int dim, bool log) {
  __shared__ float scratch[1][32];
  const T* in = x + static_cast<int64_t>(blockIdx.x) * dim;
  T* out = y + static_cast<int64_t>(blockIdx.x) * dim;
  // Groups of kStreamingGroup elements per step: one rescale per group, and
  // several loads in flight per thread.
  row::OnlineSoftmax running;
  for (int c = threadIdx.x; c < dim; c += kStreamingGroup * blockDim.x) {
    float values[kStreamingGroup];
#pragma unroll
    for (int j = 0; j < kStreamingGroup; ++j) {
      const int column = c + j * blockDim.x;
      values[j] = column < dim ? to_float(in[column]) : -INFINITY;
    }
    running.add(values);
  }
  running.reduce(blockDim.x, scratch);
  const float log_total = logf(running.sum), inverse_total = 1.0f / running.sum;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    const float shifted = to_float(in[c]) - running.maximum;
    out[c] = row::from_float<T>(log ? shifted - log_total : expf(shifted) * inverse_total);
  }
}

template <class T>
__global__ void softmax_forward_columns_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t columns,
                                               int64_t dim, int64_t inner, bool log) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (column >= columns) return;
  const int64_t base = (column / inner) * dim * inner + column % inner;
  row::OnlineSoftmax running;
  for (int64_t k = 0; k < dim; k += kStreamingGroup) {
    float values[kStreamingGroup];
#pragma unroll
    for (int j = 0; j < kStreamingGroup; ++j) values[j] = k + j < dim ? to_float(x[base + (k + j) * inner]) : -INFINITY;
    running.add(values);
  }
  const float log_total = logf(running.sum), inverse_total = 1.0f / running.sum;
  for (int64_t k = 0; k < dim; ++k) {
    const float shifted = to_float(x[base + k * inner]) - running.maximum;
    y[base + k * inner] = row::from_float<T>(log ? shifted - log_total : expf(shifted) * inverse_total);
  }
}

// ---- backward --------------------------------------------------------------------

// softmax: dx = y (dy - sum(dy y)); log_softmax: dx = dy - exp(y) sum(dy).
__device__ __forceinline__ float softmax_input_gradient(float y, float dy, float total, bool log) {
  return log ? dy - expf(y) * total : y * (dy - total);
}

template <class T, int W>
__global__ void __launch_bounds__(row::kMaxThreadsPerRow)
    softmax_backward_cached_kernel(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx,
                                   int64_t rows, int dim, int threads_per_row, bool log) {
  constexpr int kPacks = cached_packs<W>();
  __shared__ float scratch[1][32];
  const int lane = threadIdx.x % threads_per_row;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / threads_per_row) + threadIdx.x / threads_per_row;
  const bool active = row < rows;
  const int64_t start = row * dim;

  Pack<T, W> output[kPacks], output_grad[kPacks];
  float total[1] = {0.0f};
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int column = (i * threads_per_row + lane) * W;
    if (active && column < dim) {
      output[i] = row::load_pack<T, W>(y + start + column);
      output_grad[i] = row::load_pack<T, W>(dy + start + column);
#pragma unroll
      for (int k = 0; k < W; ++k)
        total[0] += log ? to_float(output_grad[i].v[k]) : to_float(output_grad[i].v[k]) * to_float(output[i].v[k]);
    }
  }
  row::reduce_over_row(total, threads_per_row, scratch, row::SumOp{});

#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int column = (i * threads_per_row + lane) * W;
    if (active && column < dim) {
      Pack<T, W> result;
#pragma unroll
      for (int k = 0; k < W; ++k)
        result.v[k] = row::from_float<T>(
            softmax_input_gradient(to_float(output[i].v[k]), to_float(output_grad[i].v[k]), total[0], log));
      row::store_pack<T, W>(dx + start + column, result);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(row::kMaxThreadsPerRow)
    softmax_backward_streaming_kernel(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, int dim,
                                      bool log) {
  __shared__ float scratch[1][32];
  const int64_t start = static_cast<int64_t>(blockIdx.x) * dim;
  float total[1] = {0.0f};
  for (int c = threadIdx.x; c < dim; c += blockDim.x)
    total[0] += log ? to_float(dy[start + c]) : to_float(dy[start + c]) * to_float(y[start + c]);
  row::reduce_over_row(total, blockDim.x, scratch, row::SumOp{});
  for (int c = threadIdx.x; c < dim; c += blockDim.x)
    dx[start + c] =
        row::from_float<T>(softmax_input_gradient(to_float(y[start + c]), to_float(dy[start + c]), total[0], log));
}

template <class T>
__global__ void softmax_backward_columns_kernel(const T* __restrict__ y, const T* __restrict__ dy,
                                                T* __restrict__ dx, int64_t columns, int64_t dim, int64_t inner,
                                                bool log) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (column >= columns) return;
  const int64_t base = (column / inner) * dim * inner + column % inner;
  float total = 0.0f;
  for (int64_t k = 0; k < dim; ++k) {
    const int64_t at = base + k * inner;
    total += log ? to_float(dy[at]) : to_float(dy[at]) * to_float(y[at]);
  }
  for (int64_t k = 0; k < dim; ++k) {
    const int64_t at = base + k * inner;
    dx[at] = row::from_float<T>(softmax_input_gradient(to_float(y[at]), to_float(dy[at]), total, log));
  }
}

// ---- launchers -------------------------------------------------------------------

unsigned int blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned int>((items + per_block - 1) / per_block);
}

template <class T>
void launch_forward(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log) {
  if (outer * dim * inner == 0) return;
  cudaStream_t stream = cuda::stream();
  if (inner > 1) {
    softmax_forward_columns_kernel<T><<<blocks_for(outer * inner, kColumnBlockThreads), kColumnBlockThreads, 0, stream>>>(
        x, y, outer * inner, dim, inner, log);
    STRATA_CUDA_CHECK_LAUNCH("softmax_forward_columns_kernel");
    return;
  }
  constexpr int kVector = row::vector_width<T>();
  const bool vectorized = dim % kVector == 0 && row::aligned_16({x, y});
  const row::RowGeometry geometry = vectorized ? row::cached_row_geometry(dim, kVector, cached_packs<kVector>())
                                               : row::cached_row_geometry(dim, 1, cached_packs<1>());
  if (!geometry.fits()) {
    const row::RowGeometry streaming = row::streaming_row_geometry();
    softmax_forward_streaming_kernel<T><<<static_cast<unsigned int>(outer), streaming.block_threads(), 0, stream>>>(
        x, y, static_cast<int>(dim), log);
    STRATA_CUDA_CHECK_LAUNCH("softmax_forward_streaming_kernel");
    return;
  }
  const unsigned int blocks = blocks_for(outer, geometry.rows_per_block);
  if (vectorized) {
    softmax_forward_cached_kernel<T, kVector><<<blocks, geometry.block_threads(), 0, stream>>>(
        x, y, outer, static_cast<int>(dim), geometry.threads_per_row, log);
  } else {
    softmax_forward_cached_kernel<T, 1><<<blocks, geometry.block_threads(), 0, stream>>>(
        x, y, outer, static_cast<int>(dim), geometry.threads_per_row, log);
  }
  STRATA_CUDA_CHECK_LAUNCH("softmax_forward_cached_kernel");
}

template <class T>
void launch_backward(const T* y, const T* dy, T* dx, int64_t outer, int64_t dim, int64_t inner, bool log) {
  if (outer * dim * inner == 0) return;
  cudaStream_t stream = cuda::stream();
  if (inner > 1) {
    softmax_backward_columns_kernel<T>
        <<<blocks_for(outer * inner, kColumnBlockThreads), kColumnBlockThreads, 0, stream>>>(y, dy, dx, outer * inner,
                                                                                            dim, inner, log);
    STRATA_CUDA_CHECK_LAUNCH("softmax_backward_columns_kernel");
    return;
  }
  constexpr int kVector = row::vector_width<T>();
  const bool vectorized = dim % kVector == 0 && row::aligned_16({y, dy, dx});
  const row::RowGeometry geometry = vectorized ? row::cached_row_geometry(dim, kVector, cached_packs<kVector>())
                                               : row::cached_row_geometry(dim, 1, cached_packs<1>());
  if (!geometry.fits()) {
    const row::RowGeometry streaming = row::streaming_row_geometry();
    softmax_backward_streaming_kernel<T><<<static_cast<unsigned int>(outer), streaming.block_threads(), 0, stream>>>(
        y, dy, dx, static_cast<int>(dim), log);
    STRATA_CUDA_CHECK_LAUNCH("softmax_backward_streaming_kernel");
    return;
  }
  const unsigned int blocks = blocks_for(outer, geometry.rows_per_block);
  if (vectorized) {
    softmax_backward_cached_kernel<T, kVector><<<blocks, geometry.block_threads(), 0, stream>>>(
        y, dy, dx, outer, static_cast<int>(dim), geometry.threads_per_row, log);
  } else {
    softmax_backward_cached_kernel<T, 1><<<blocks, geometry.block_threads(), 0, stream>>>(
        y, dy, dx, outer, static_cast<int>(dim), geometry.threads_per_row, log);
  }
  STRATA_CUDA_CHECK_LAUNCH("softmax_backward_cached_kernel");
}

}  // namespace

bool softmax_forward_cuda(DType dtype, const void* x, void* y, int64_t outer, int64_t dim, int64_t inner, bool log) {
  switch (dtype) {
    case DType::Float32:
      launch_forward(static_cast<const float*>(x), static_cast<float*>(y), outer, dim, inner, log);
      return true;
    case DType::BFloat16:
      launch_forward(static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), outer, dim, inner, log);
      return true;
    default: return false;
  }
}

bool softmax_backward_cuda(DType dtype, const void* y, const void* dy, void* dx, int64_t outer, int64_t dim,
                           int64_t inner, bool log) {
  switch (dtype) {
    case DType::Float32:
      launch_backward(static_cast<const float*>(y), static_cast<const float*>(dy), static_cast<float*>(dx), outer, dim,
                      inner, log);
      return true;
    case DType::BFloat16:
      launch_backward(static_cast<const __nv_bfloat16*>(y), static_cast<const __nv_bfloat16*>(dy),
                      static_cast<__nv_bfloat16*>(dx), outer, dim, inner, log);
      return true;
    default: return false;
  }
}

}  // namespace strata::kernels
