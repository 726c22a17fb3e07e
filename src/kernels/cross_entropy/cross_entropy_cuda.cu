// Fused cross-entropy on CUDA: float32 or bfloat16 logits (rows, classes),
// float32 arithmetic, a float32 loss.
//
// Tiling and what lives where:
//  * cross_entropy_forward_kernel: a group of threads_per_row threads per row
//    (row_cuda.cuh; up to 512 threads for a vocabulary-sized row), each keeping a
//    running (maximum, sum of exp) over its part of the row in registers,
//    4 packs (16-byte loads where the row length allows) per step. One group
//    reduction gives the row's logsumexp; the group's first thread reads the
//    target logit and writes the row loss (logsumexp - logit) and the logsumexp.
//    The logits are read once; log-softmax is never written.
//  * cross_entropy_finalize_kernel: one block adds the row losses of the counted
//    rows in a fixed order (a shared-memory tree), counts them, and finds the
//    first row whose target is out of range (the host reads that back and
//    raises the error). loss = sum / count, 0 when no row counts.
//  * cross_entropy_backward_kernel: the same row groups write
//    (exp(logit - logsumexp) - onehot) * dloss / count, zero for ignored rows.
//    It recomputes the softmax from the saved per-row logsumexp: one read of the
//    logits, one write of the gradient.
// Shared memory: the 32-float reduction scratch, and the finalize tree.
#include "kernels/cross_entropy/cross_entropy_cuda.h"

#include "kernels/softmax/row_cuda.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

using row::Pack;
using row::to_float;

// Packs each thread reads per step (loads in flight, and one rescale of the
// running sum per step).
constexpr int kPacksPerStep = 4;
// Threads per row are chosen so that a thread reads about this many packs.
constexpr int kPacksPerThread = 8;
constexpr int kFinalizeThreads = 512;

__device__ __forceinline__ int64_t load_target(const void* targets, bool targets_int64, int64_t row) {
  return targets_int64 ? static_cast<const int64_t*>(targets)[row]
                       : static_cast<int64_t>(static_cast<const int32_t*>(targets)[row]);
}

template <class T, int W>
__global__ void __launch_bounds__(row::kMaxThreadsPerRow)
    cross_entropy_forward_kernel(const T* __restrict__ logits, const void* __restrict__ targets, bool targets_int64,
                                 int64_t rows, int classes, int64_t ignore_index, float* __restrict__ row_loss,
                                 float* __restrict__ row_logsumexp, int threads_per_row) {
  __shared__ float scratch[1][32];
  const int lane = threadIdx.x % threads_per_row;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / threads_per_row) + threadIdx.x / threads_per_row;
  const bool in_rows = row < rows;
  const int64_t target = in_rows ? load_target(targets, targets_int64, row) : ignore_index;
  // Ignored rows and rows with an invalid target read nothing (the finalize
  // kernel reports invalid targets); they still join the group reduction.
  const bool counted = target != ignore_index && target >= 0 && target < classes;
  const T* in = logits + row * classes;

  row::OnlineSoftmax running;
  if (counted) {
    const int step = kPacksPerStep * threads_per_row * W;
    for (int first = lane * W; first < classes; first += step) {
      float values[kPacksPerStep * W];
#pragma unroll
      for (int j = 0; j < kPacksPerStep; ++j) {
        const int column = first + j * threads_per_row * W;
        if (column < classes) {
          const Pack<T, W> pack = row::load_pack<T, W>(in + column);
#pragma unroll
          for (int k = 0; k < W; ++k) values[j * W + k] = to_float(pack.v[k]);
        } else {
#pragma unroll
          for (int k = 0; k < W; ++k) values[j * W + k] = -INFINITY;
        }
      }
      running.add(values);
    }
  }
  running.reduce(threads_per_row, scratch);
  if (in_rows && lane == 0) {
    const float logsumexp = counted ? running.logsumexp() : 0.0f;
    row_logsumexp[row] = logsumexp;
    row_loss[row] = counted ? logsumexp - to_float(in[target]) : 0.0f;
  }
}

__global__ void __launch_bounds__(kFinalizeThreads)
    cross_entropy_finalize_kernel(const float* __restrict__ row_loss, const void* __restrict__ targets,
                                  bool targets_int64, int64_t rows, int64_t classes, int64_t ignore_index,
                                  float* __restrict__ loss, float* __restrict__ count,
                                  int64_t* __restrict__ invalid_target) {
  __shared__ double loss_sums[kFinalizeThreads];
  __shared__ int64_t counts[kFinalizeThreads];
  __shared__ int64_t first_invalid[kFinalizeThreads];  // `rows` stands for none
  double sum = 0.0;
  int64_t counted = 0, invalid = rows;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const int64_t target = load_target(targets, targets_int64, r);
    if (target == ignore_index) continue;
    if (target < 0 || target >= classes) {
      invalid = invalid < r ? invalid : r;
      continue;
    }
    sum += row_loss[r];
    ++counted;
  }
  loss_sums[threadIdx.x] = sum;
  counts[threadIdx.x] = counted;
  first_invalid[threadIdx.x] = invalid;
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    __syncthreads();
    if (threadIdx.x < stride) {
      loss_sums[threadIdx.x] += loss_sums[threadIdx.x + stride];
      counts[threadIdx.x] += counts[threadIdx.x + stride];
      const int64_t other = first_invalid[threadIdx.x + stride];
      if (other < first_invalid[threadIdx.x]) first_invalid[threadIdx.x] = other;
    }
  }
  if (threadIdx.x == 0) {
    *loss = counts[0] > 0 ? static_cast<float>(loss_sums[0] / static_cast<double>(counts[0])) : 0.0f;
    *count = static_cast<float>(counts[0]);
    const bool any_invalid = first_invalid[0] < rows;
    invalid_target[0] = any_invalid ? first_invalid[0] : -1;
    invalid_target[1] = any_invalid ? load_target(targets, targets_int64, first_invalid[0]) : 0;
  }
}

template <class T, int W>
__global__ void __launch_bounds__(row::kMaxThreadsPerRow)
    cross_entropy_backward_kernel(const T* __restrict__ logits, const void* __restrict__ targets, bool targets_int64,
                                  int64_t rows, int classes, int64_t ignore_index,
                                  const float* __restrict__ row_logsumexp, const float* __restrict__ count,
                                  const float* __restrict__ grad_loss, T* __restrict__ dlogits, int threads_per_row) {
  const int lane = threadIdx.x % threads_per_row;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / threads_per_row) + threadIdx.x / threads_per_row;
  if (row >= rows) return;  // no block-wide synchronisation below
  const int64_t target = load_target(targets, targets_int64, row);
  const bool counted = target != ignore_index;  // the forward has checked the others
  const float scale = counted && *count > 0.0f ? *grad_loss / *count : 0.0f;
  const float logsumexp = counted ? row_logsumexp[row] : 0.0f;
  const T* in = logits + row * classes;
  T* out = dlogits + row * classes;
#pragma unroll 4
  for (int column = lane * W; column < classes; column += threads_per_row * W) {
    Pack<T, W> result;
    if (counted) {
      const Pack<T, W> pack = row::load_pack<T, W>(in + column);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const float probability = expf(to_float(pack.v[k]) - logsumexp);
        const float onehot = column + k == target ? 1.0f : 0.0f;
        result.v[k] = row::from_float<T>((probability - onehot) * scale);
      }
    } else {
#pragma unroll
      for (int k = 0; k < W; ++k) result.v[k] = row::from_float<T>(0.0f);
    }
    row::store_pack<T, W>(out + column, result);
  }
}

// ---- launchers -------------------------------------------------------------------

unsigned int blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned int>((items + per_block - 1) / per_block);
}

// Row groups of about kPacksPerThread packs per thread, up to 512 threads per row.
row::RowGeometry geometry_for(int64_t classes, int width) {
  const row::RowGeometry geometry = row::cached_row_geometry(classes, width, kPacksPerThread);
  return geometry.fits() ? geometry : row::streaming_row_geometry();
}

template <class T>
void launch_forward(const CrossEntropyForwardCudaArguments& args) {
  cudaStream_t stream = cuda::stream();
  const T* logits = static_cast<const T*>(args.logits);
  if (args.rows > 0) {
    constexpr int kVector = row::vector_width<T>();
    const bool vectorized = args.classes % kVector == 0 && row::aligned_16({args.logits});
    const row::RowGeometry geometry = geometry_for(args.classes, vectorized ? kVector : 1);
    const unsigned int blocks = blocks_for(args.rows, geometry.rows_per_block);
    if (vectorized) {
      cross_entropy_forward_kernel<T, kVector><<<blocks, geometry.block_threads(), 0, stream>>>(
          logits, args.targets, args.targets_int64, args.rows, static_cast<int>(args.classes), args.ignore_index,
          args.row_loss, args.row_logsumexp, geometry.threads_per_row);
    } else {
      cross_entropy_forward_kernel<T, 1><<<blocks, geometry.block_threads(), 0, stream>>>(
          logits, args.targets, args.targets_int64, args.rows, static_cast<int>(args.classes), args.ignore_index,
          args.row_loss, args.row_logsumexp, geometry.threads_per_row);
    }
    STRATA_CUDA_CHECK_LAUNCH("cross_entropy_forward_kernel");
  }
  cross_entropy_finalize_kernel<<<1, kFinalizeThreads, 0, stream>>>(args.row_loss, args.targets, args.targets_int64,
                                                                   args.rows, args.classes, args.ignore_index,
                                                                   args.loss, args.count, args.invalid_target);
  STRATA_CUDA_CHECK_LAUNCH("cross_entropy_finalize_kernel");
}

template <class T>
void launch_backward(const CrossEntropyBackwardCudaArguments& args) {
  if (args.rows == 0 || args.classes == 0) return;
  cudaStream_t stream = cuda::stream();
  constexpr int kVector = row::vector_width<T>();
  const bool vectorized = args.classes % kVector == 0 && row::aligned_16({args.logits, args.dlogits});
  const row::RowGeometry geometry = geometry_for(args.classes, vectorized ? kVector : 1);
  const unsigned int blocks = blocks_for(args.rows, geometry.rows_per_block);
  const T* logits = static_cast<const T*>(args.logits);
  T* dlogits = static_cast<T*>(args.dlogits);
  if (vectorized) {
    cross_entropy_backward_kernel<T, kVector><<<blocks, geometry.block_threads(), 0, stream>>>(
        logits, args.targets, args.targets_int64, args.rows, static_cast<int>(args.classes), args.ignore_index,
        args.row_logsumexp, args.count, args.grad_loss, dlogits, geometry.threads_per_row);
  } else {
    cross_entropy_backward_kernel<T, 1><<<blocks, geometry.block_threads(), 0, stream>>>(
        logits, args.targets, args.targets_int64, args.rows, static_cast<int>(args.classes), args.ignore_index,
        args.row_logsumexp, args.count, args.grad_loss, dlogits, geometry.threads_per_row);
  }
  STRATA_CUDA_CHECK_LAUNCH("cross_entropy_backward_kernel");
}

}  // namespace

bool cross_entropy_forward_cuda(const CrossEntropyForwardCudaArguments& args) {
  switch (args.dtype) {
    case DType::Float32: launch_forward<float>(args); return true;
    case DType::BFloat16: launch_forward<__nv_bfloat16>(args); return true;
    default: return false;
  }
}

bool cross_entropy_backward_cuda(const CrossEntropyBackwardCudaArguments& args) {
  switch (args.dtype) {
    case DType::Float32: launch_backward<float>(args); return true;
    case DType::BFloat16: launch_backward<__nv_bfloat16>(args); return true;
    default: return false;
  }
}

}  // namespace strata::kernels
