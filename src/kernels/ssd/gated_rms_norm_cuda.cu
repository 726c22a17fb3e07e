// Gated RMSNorm on CUDA: float32 or bfloat16 data, float32 statistics and arithmetic.
//  * Forward and the dx/dz backward: one warp per (row, group); each lane strides
//    over the group's elements twice (the sum of squares, or of (dy weight) ghat,
//    then the outputs), recomputing g = x silu(z) each time instead of keeping it:
//    a group of Mamba-2's norm is a few hundred to a few thousand elements, which
//    the second read finds in L1/L2.
//  * dweight: a (columns / 256, slices) grid in which each thread sums dy ghat of
//    one column over a slice of rows into the workspace (slices, dim), then one
//    thread per column adds its slices in order. No atomics: deterministic.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/ssd/gated_rms_norm_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kColumnThreads = 256;
constexpr int64_t kMaxSlices = 128;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

template <class V>
__device__ __forceinline__ float gated(const V* x, const V* z, int64_t k) {
  const float value = to_float(x[k]);
  if (!z) return value;
  const float gate = to_float(z[k]);
  return value * gate * sigmoid(gate);
}

template <class V>
__device__ __forceinline__ float weight_at(const V* weight, int64_t column) {
  return weight ? to_float(weight[column]) : 1.f;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <class V>
__global__ void forward_kernel(const V* x, const V* z, const V* weight, V* y, float* rstd, int64_t rows, int64_t dim,
                               int64_t group_size, float eps) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (item >= rows * (dim / group_size)) return;
  const int64_t first = item * group_size;
  float sum_of_squares = 0.f;
  for (int64_t k = lane; k < group_size; k += 32) {
    const float g = gated(x, z, first + k);
    sum_of_squares += g * g;
  }
  const float scale = 1.f / sqrtf(warp_sum(sum_of_squares) / static_cast<float>(group_size) + eps);
  if (lane == 0) rstd[item] = scale;
  for (int64_t k = lane; k < group_size; k += 32)
    y[first + k] = from_float<V>(gated(x, z, first + k) * scale * weight_at(weight, (first + k) % dim));
}

template <class V>
__global__ void backward_kernel(const V* dy, const V* x, const V* z, const V* weight, const float* rstd, V* dx, V* dz,
                                int64_t rows, int64_t dim, int64_t group_size) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (item >= rows * (dim / group_size)) return;
  const int64_t first = item * group_size;
  const float scale = rstd[item];
  float sum = 0.f;
  for (int64_t k = first + lane; k < first + group_size; k += 32)
    sum += to_float(dy[k]) * weight_at(weight, k % dim) * gated(x, z, k) * scale;
  const float mean_a_ghat = warp_sum(sum) / static_cast<float>(group_size);
  for (int64_t k = first + lane; k < first + group_size; k += 32) {
    const float a = to_float(dy[k]) * weight_at(weight, k % dim);
    const float dg = scale * (a - gated(x, z, k) * scale * mean_a_ghat);
    if (!z) {
      dx[k] = from_float<V>(dg);
      continue;
    }
    const float gate = to_float(z[k]), s = sigmoid(gate);
    dx[k] = from_float<V>(dg * gate * s);
    dz[k] = from_float<V>(dg * to_float(x[k]) * s * (1.f + gate * (1.f - s)));
  }
}

// partial[slice, column] = sum over the slice's rows of dy ghat.
template <class V>
__global__ void weight_partials_kernel(const V* dy, const V* x, const V* z, const float* rstd, float* partial,
                                       int64_t rows, int64_t dim, int64_t group_size, int64_t rows_per_slice) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * kColumnThreads + threadIdx.x;
  if (column >= dim) return;
  const int64_t groups = dim / group_size, first_row = static_cast<int64_t>(blockIdx.y) * rows_per_slice;
  const int64_t end_row = first_row + rows_per_slice < rows ? first_row + rows_per_slice : rows;
  float sum = 0.f;
  for (int64_t row = first_row; row < end_row; ++row) {
    const int64_t k = row * dim + column;
    sum += to_float(dy[k]) * gated(x, z, k) * rstd[row * groups + column / group_size];
  }
  partial[blockIdx.y * dim + column] = sum;
}

template <class V>
__global__ void weight_sum_kernel(const float* partial, int64_t slices, int64_t dim, V* dweight) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * kColumnThreads + threadIdx.x;
  if (column >= dim) return;
  float sum = 0.f;
  for (int64_t slice = 0; slice < slices; ++slice) sum += partial[slice * dim + column];
  dweight[column] = from_float<V>(sum);
}

unsigned blocks_for(int64_t n, int64_t per_block) { return static_cast<unsigned>((n + per_block - 1) / per_block); }
int64_t slices_for(int64_t rows) { return std::min(rows, kMaxSlices); }

template <class V>
void forward(const void* x, const void* z, const void* weight, void* y, float* rstd, int64_t rows, int64_t dim,
             int64_t group_size, double eps) {
  const int64_t items = rows * (dim / group_size);
  forward_kernel<V><<<blocks_for(items, kWarpsPerBlock), kWarpsPerBlock * 32, 0, cuda::stream()>>>(
      static_cast<const V*>(x), static_cast<const V*>(z), static_cast<const V*>(weight), static_cast<V*>(y), rstd, rows,
      dim, group_size, static_cast<float>(eps));
  STRATA_CUDA_CHECK_LAUNCH("gated_rms_norm forward_kernel");
}

template <class V>
void backward(const void* dy_raw, const void* x_raw, const void* z_raw, const void* weight, const float* rstd, void* dx,
              void* dz, void* dweight, float* workspace, int64_t rows, int64_t dim, int64_t group_size) {
  const V *dy = static_cast<const V*>(dy_raw), *x = static_cast<const V*>(x_raw), *z = static_cast<const V*>(z_raw);
  const int64_t items = rows * (dim / group_size);
  backward_kernel<V><<<blocks_for(items, kWarpsPerBlock), kWarpsPerBlock * 32, 0, cuda::stream()>>>(
      dy, x, z, static_cast<const V*>(weight), rstd, static_cast<V*>(dx), static_cast<V*>(dz), rows, dim, group_size);
  STRATA_CUDA_CHECK_LAUNCH("gated_rms_norm backward_kernel");
  if (!dweight) return;
  const int64_t slices = slices_for(rows), rows_per_slice = (rows + slices - 1) / slices;
  const dim3 grid(blocks_for(dim, kColumnThreads), static_cast<unsigned>(slices));
  weight_partials_kernel<V>
      <<<grid, kColumnThreads, 0, cuda::stream()>>>(dy, x, z, rstd, workspace, rows, dim, group_size, rows_per_slice);
  STRATA_CUDA_CHECK_LAUNCH("gated_rms_norm weight_partials_kernel");
  weight_sum_kernel<V><<<blocks_for(dim, kColumnThreads), kColumnThreads, 0, cuda::stream()>>>(
      workspace, slices, dim, static_cast<V*>(dweight));
  STRATA_CUDA_CHECK_LAUNCH("gated_rms_norm weight_sum_kernel");
}

}  // namespace

int64_t gated_rms_norm_cuda_workspace(int64_t rows, int64_t dim) { return slices_for(rows) * dim; }

bool gated_rms_norm_forward_cuda(DType dtype, const void* x, const void* z, const void* weight, void* y, float* rstd,
                                 int64_t rows, int64_t dim, int64_t group_size, double eps) {
  switch (dtype) {
    case DType::Float32: forward<float>(x, z, weight, y, rstd, rows, dim, group_size, eps); return true;
    case DType::BFloat16: forward<__nv_bfloat16>(x, z, weight, y, rstd, rows, dim, group_size, eps); return true;
    default: return false;
  }
}

bool gated_rms_norm_backward_cuda(DType dtype, const void* dy, const void* x, const void* z, const void* weight,
                                  const float* rstd, void* dx, void* dz, void* dweight, float* workspace, int64_t rows,
                                  int64_t dim, int64_t group_size) {
  switch (dtype) {
    case DType::Float32:
      backward<float>(dy, x, z, weight, rstd, dx, dz, dweight, workspace, rows, dim, group_size);
      return true;
    case DType::BFloat16:
      backward<__nv_bfloat16>(dy, x, z, weight, rstd, dx, dz, dweight, workspace, rows, dim, group_size);
      return true;
    default: return false;
  }
}

}  // namespace strata::kernels
