// CUDA reductions over the middle axis of a dense (outer, reduce, inner) block, with
// float32 accumulation whatever the storage type.
//
// Row path (inner == 1, the reduced elements are adjacent): one block per output
// row; threads stride through the row, then combine by warp shuffles and one
// shared-memory step. Column path (inner > 1): a block of 32 x 16 threads owns 32
// adjacent outputs, so each warp reads 32 neighbouring elements of one reduced row
// (coalesced); the 16 thread rows split the reduced axis and are combined in
// shared memory.
//
// A sum with too few outputs to fill the device (a full sum, a bias gradient) is
// cut into chunks along the reduced axis: the first pass writes one float partial
// per (output, chunk) to a workspace laid out (outer, chunks, inner), the second
// reduces it over the chunks. No atomics, so results are deterministic.
//
// Each kernel takes a Reducer: its State, initial(), add(state, x, index),
// combine(a, b) (order-free: max breaks ties by index) and write(output, state).
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>

#include "kernels/reduction/reduction_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kColumnWidth = 32;  // outputs per column block (one warp)
constexpr int kColumnRows = 16;   // thread rows splitting the reduced axis
constexpr int kMaxRowThreads = 512;

template <class Tout>
struct SumReducer {
  using State = float;
  Tout* out;
  float scale;
  __device__ State initial() const { return 0.0f; }
  __device__ void add(State& state, float x, int64_t) const { state += x; }
  __device__ State combine(State a, State b) const { return a + b; }
  __device__ void write(int64_t o, State state) const { out[o] = from_float<Tout>(state * scale); }
};

struct MaxState {
  float value;
  int64_t index;
};
__device__ __forceinline__ bool precedes(const MaxState& a, const MaxState& b) {
  bool a_nan = a.value != a.value, b_nan = b.value != b.value;
  if (a_nan != b_nan) return a_nan;  // NaN propagates
  if (!a_nan && a.value != b.value) return a.value > b.value;
  return a.index < b.index;  // the first maximum
}
template <class T>
struct MaxReducer {
  using State = MaxState;
  T* values;
  int64_t* indices;
  __device__ State initial() const { return {-INFINITY, LLONG_MAX}; }
  __device__ void add(State& state, float x, int64_t index) const {
    State candidate{x, index};
    if (precedes(candidate, state)) state = candidate;
  }
  __device__ State combine(State a, State b) const { return precedes(a, b) ? a : b; }
  __device__ void write(int64_t o, State state) const {
    values[o] = from_float<T>(state.value);
    indices[o] = state.index;
  }
};

// Running log-sum-exp: total = sum(exp(x - largest)) over the elements seen.
struct LogSumExpState {
  float largest;
  float total;
};
template <class T>
struct LogSumExpReducer {
  using State = LogSumExpState;
  T* out;
  __device__ State initial() const { return {-INFINITY, 0.0f}; }
  __device__ void add(State& state, float x, int64_t) const {
    if (x == -INFINITY) return;  // adds exp(-inf) = 0; skipping avoids -inf - -inf
    if (x > state.largest) {
      state.total = state.total * expf(state.largest - x) + 1.0f;
      state.largest = x;
    } else {
      state.total += expf(x - state.largest);
    }
  }
  __device__ State combine(State a, State b) const {
    float largest = fmaxf(a.largest, b.largest);
    if (largest == -INFINITY) return {largest, a.total + b.total};
    return {largest, a.total * expf(a.largest - largest) + b.total * expf(b.largest - largest)};
  }
  __device__ void write(int64_t o, State state) const {
    // +inf anywhere gives +inf; all -inf gives -inf (the CPU reference agrees).
    out[o] = from_float<T>(isinf(state.largest) ? state.largest : state.largest + logf(state.total));
  }
};

__device__ __forceinline__ float shuffle_down(float v, int offset) { return __shfl_down_sync(0xffffffffu, v, offset); }
__device__ __forceinline__ MaxState shuffle_down(MaxState v, int offset) {
  return {__shfl_down_sync(0xffffffffu, v.value, offset),
          static_cast<int64_t>(__shfl_down_sync(0xffffffffu, static_cast<long long>(v.index), offset))};
}
__device__ __forceinline__ LogSumExpState shuffle_down(LogSumExpState v, int offset) {
  return {__shfl_down_sync(0xffffffffu, v.largest, offset), __shfl_down_sync(0xffffffffu, v.total, offset)};
}

// Combines the states of a whole block (blockDim.x a multiple of 32); thread 0 gets the result.
template <class Reducer>
__device__ typename Reducer::State block_combine(const Reducer& reducer, typename Reducer::State state,
                                                 typename Reducer::State* partial) {
  for (int offset = 16; offset > 0; offset /= 2) state = reducer.combine(state, shuffle_down(state, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) partial[warp] = state;
  __syncthreads();
  if (warp == 0) {
    state = lane < warps ? partial[lane] : reducer.initial();
    for (int offset = 16; offset > 0; offset /= 2) state = reducer.combine(state, shuffle_down(state, offset));
  }
  __syncthreads();  // partial is reused by the block's next row
  return state;
}

// Output `job` (of rows * chunks) reduces chunk job % chunks of row job / chunks.
template <class Reducer, class Tin>
__global__ void reduce_rows_kernel(const Tin* __restrict__ in, int64_t reduce, int64_t jobs, int64_t chunks,
                                   int64_t chunk_length, Reducer reducer) {
  __shared__ typename Reducer::State partial[32];
  for (int64_t job = blockIdx.x; job < jobs; job += gridDim.x) {
    const int64_t begin = (job % chunks) * chunk_length, end = min(reduce, begin + chunk_length);
    const Tin* row = in + (job / chunks) * reduce;
    typename Reducer::State state = reducer.initial();
#pragma unroll 4
    for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x) reducer.add(state, to_float(row[r]), r);
    state = block_combine(reducer, state, partial);
    if (threadIdx.x == 0) reducer.write(job, state);
  }
}

// Output o of (outer, chunks, inner) reduces one chunk of one column.
template <class Reducer, class Tin>
__global__ void reduce_columns_kernel(const Tin* __restrict__ in, int64_t reduce, int64_t inner, int64_t outputs,
                                      int64_t chunks, int64_t chunk_length, Reducer reducer) {
  __shared__ typename Reducer::State partial[kColumnRows][kColumnWidth + 1];
  for (int64_t base = blockIdx.x * int64_t{kColumnWidth}; base < outputs;
       base += static_cast<int64_t>(gridDim.x) * kColumnWidth) {
    const int64_t o = base + threadIdx.x;
    typename Reducer::State state = reducer.initial();
    if (o < outputs) {
      const int64_t column = o % inner, outer_chunk = o / inner;
      const int64_t begin = (outer_chunk % chunks) * chunk_length, end = min(reduce, begin + chunk_length);
      const Tin* first = in + (outer_chunk / chunks) * reduce * inner + column;
#pragma unroll 4
      for (int64_t r = begin + threadIdx.y; r < end; r += kColumnRows)
        reducer.add(state, to_float(first[r * inner]), r);
    }
    partial[threadIdx.y][threadIdx.x] = state;
    __syncthreads();
    if (threadIdx.y == 0 && o < outputs) {
      for (int k = 1; k < kColumnRows; ++k) state = reducer.combine(state, partial[k][threadIdx.x]);
      reducer.write(o, state);
    }
    __syncthreads();
  }
}

template <class T>
__global__ void max_backward_kernel(const T* __restrict__ grad_out, const int64_t* __restrict__ indices,
                                    T* __restrict__ grad_in, int64_t reduce, int64_t inner, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t column = i % inner, r = (i / inner) % reduce, o = (i / (inner * reduce)) * inner + column;
    grad_in[i] = indices[o] == r ? grad_out[o] : from_float<T>(0.0f);
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

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int grid_limit() { return multiprocessor_count() * 32; }

// How many chunks a sum's reduced axis is cut into: enough for a few blocks per SM
// when the outputs alone give fewer, with each chunk still long enough to be worth a
// pass (4096 elements per row block, 256 per column).
int64_t sum_chunks(int64_t outer, int64_t reduce, int64_t inner) {
  const int64_t sms = multiprocessor_count();
  const int64_t blocks = inner == 1 ? outer : ceil_div(outer * inner, kColumnWidth);
  const int64_t min_chunk = inner == 1 ? 4096 : 256;
  if (blocks >= 2 * sms || reduce < 4 * min_chunk) return 1;
  const int64_t wanted = std::min(ceil_div(reduce, min_chunk), ceil_div(4 * sms, std::max<int64_t>(blocks, 1)));
  if (wanted <= 1) return 1;
  return ceil_div(reduce, ceil_div(reduce, wanted));  // no empty chunk
}

template <class Reducer, class Tin>
void launch_reduce(const void* in, int64_t outer, int64_t reduce, int64_t inner, int64_t chunks, Reducer reducer) {
  const Tin* typed = static_cast<const Tin*>(in);
  const int64_t chunk_length = ceil_div(reduce, chunks);
  if (inner == 1) {
    const int64_t jobs = outer * chunks;
    int threads = 32;
    while (threads < kMaxRowThreads && threads < chunk_length) threads *= 2;
    const int blocks = static_cast<int>(std::min<int64_t>(jobs, grid_limit()));
    reduce_rows_kernel<Reducer, Tin>
        <<<blocks, threads, 0, cuda::stream()>>>(typed, reduce, jobs, chunks, chunk_length, reducer);
    STRATA_CUDA_CHECK_LAUNCH("reduce_rows_kernel");
  } else {
    const int64_t outputs = outer * chunks * inner;
    const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(outputs, kColumnWidth), grid_limit()));
    reduce_columns_kernel<Reducer, Tin><<<blocks, dim3(kColumnWidth, kColumnRows), 0, cuda::stream()>>>(
        typed, reduce, inner, outputs, chunks, chunk_length, reducer);
    STRATA_CUDA_CHECK_LAUNCH("reduce_columns_kernel");
  }
}

bool is_cuda_float(DType dtype) { return dtype == DType::Float32 || dtype == DType::BFloat16; }

template <class Tin, class Tout>
void sum_typed(const void* in, void* out, int64_t outer, int64_t reduce, int64_t inner, float scale,
               float* workspace) {
  const int64_t chunks = sum_chunks(outer, reduce, inner);
  if (chunks == 1) {
    launch_reduce<SumReducer<Tout>, Tin>(in, outer, reduce, inner, 1, SumReducer<Tout>{static_cast<Tout*>(out), scale});
    return;
  }
  launch_reduce<SumReducer<float>, Tin>(in, outer, reduce, inner, chunks, SumReducer<float>{workspace, 1.0f});
  launch_reduce<SumReducer<Tout>, float>(workspace, outer, chunks, inner, 1,
                                         SumReducer<Tout>{static_cast<Tout*>(out), scale});
}

template <class Tin>
void sum_from(DType out_dtype, const void* in, void* out, int64_t outer, int64_t reduce, int64_t inner, float scale,
              float* workspace) {
  if (out_dtype == DType::Float32)
    sum_typed<Tin, float>(in, out, outer, reduce, inner, scale, workspace);
  else
    sum_typed<Tin, __nv_bfloat16>(in, out, outer, reduce, inner, scale, workspace);
}

}  // namespace

int64_t sum_cuda_workspace(int64_t outer, int64_t reduce, int64_t inner) {
  if (outer * inner == 0) return 0;
  const int64_t chunks = sum_chunks(outer, reduce, inner);
  return chunks == 1 ? 0 : outer * chunks * inner;
}

bool sum_cuda(DType in_dtype, const void* in, DType out_dtype, void* out, int64_t outer, int64_t reduce,
              int64_t inner, double scale, float* workspace) {
  if (!is_cuda_float(in_dtype) || !is_cuda_float(out_dtype)) return false;
  if (outer * inner == 0) return true;
  if (in_dtype == DType::Float32)
    sum_from<float>(out_dtype, in, out, outer, reduce, inner, static_cast<float>(scale), workspace);
  else
    sum_from<__nv_bfloat16>(out_dtype, in, out, outer, reduce, inner, static_cast<float>(scale), workspace);
  return true;
}

bool max_cuda(DType dtype, const void* in, void* values, int64_t* indices, int64_t outer, int64_t reduce,
              int64_t inner) {
  if (!is_cuda_float(dtype)) return false;
  if (outer * inner == 0) return true;
  if (dtype == DType::Float32)
    launch_reduce<MaxReducer<float>, float>(in, outer, reduce, inner, 1,
                                            MaxReducer<float>{static_cast<float*>(values), indices});
  else
    launch_reduce<MaxReducer<__nv_bfloat16>, __nv_bfloat16>(
        in, outer, reduce, inner, 1, MaxReducer<__nv_bfloat16>{static_cast<__nv_bfloat16*>(values), indices});
  return true;
}

bool logsumexp_cuda(DType in_dtype, const void* in, DType out_dtype, void* out, int64_t outer, int64_t reduce,
                    int64_t inner) {
  if (outer * inner == 0) return is_cuda_float(in_dtype) && is_cuda_float(out_dtype);
  if (in_dtype == DType::Float32 && out_dtype == DType::Float32) {
    launch_reduce<LogSumExpReducer<float>, float>(in, outer, reduce, inner, 1,
                                                  LogSumExpReducer<float>{static_cast<float*>(out)});
  } else if (in_dtype == DType::BFloat16 && out_dtype == DType::Float32) {
    launch_reduce<LogSumExpReducer<float>, __nv_bfloat16>(in, outer, reduce, inner, 1,
                                                          LogSumExpReducer<float>{static_cast<float*>(out)});
  } else if (in_dtype == DType::BFloat16 && out_dtype == DType::BFloat16) {
    launch_reduce<LogSumExpReducer<__nv_bfloat16>, __nv_bfloat16>(
        in, outer, reduce, inner, 1, LogSumExpReducer<__nv_bfloat16>{static_cast<__nv_bfloat16*>(out)});
  } else {
    return false;
  }
  return true;
}

bool max_backward_cuda(DType dtype, const void* grad_out, const int64_t* indices, void* grad_in, int64_t outer,
                       int64_t reduce, int64_t inner) {
  if (!is_cuda_float(dtype)) return false;
  const int64_t n = outer * reduce * inner;
  if (n == 0) return true;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(n, 256), grid_limit()));
  if (dtype == DType::Float32)
    max_backward_kernel<float><<<blocks, 256, 0, cuda::stream()>>>(
        static_cast<const float*>(grad_out), indices, static_cast<float*>(grad_in), reduce, inner, n);
  else
    max_backward_kernel<__nv_bfloat16><<<blocks, 256, 0, cuda::stream()>>>(
        static_cast<const __nv_bfloat16*>(grad_out), indices, static_cast<__nv_bfloat16*>(grad_in), reduce, inner, n);
  STRATA_CUDA_CHECK_LAUNCH("max_backward_kernel");
  return true;
}

}  // namespace strata::kernels
