// CUDA multi-tensor kernels of the optimizer: the fused AdamW step, the squared
// norm of many tensors, and in-place scaling.
//
// Multi-tensor layout: a launch covers up to a few dozen tensors whose pointers,
// sizes and first block travel in the kernel's parameter block (under the classic
// 4 KB limit: no device table to copy, no staging buffer, no host sync). Each tensor
// is cut into chunks of kMultiTensorChunk elements and every chunk is one block of
// kThreads threads; a block finds its tensor by binary search over the tensors'
// first blocks. Inside a chunk each thread moves 4 elements at a time with 16-byte
// loads and stores (8 bytes for bfloat16 grads) when the tensor's pointers allow
// it, and falls back to scalar accesses otherwise and for the last ragged elements.
//
// The AdamW step is one pass: it reads param, grad, exp_avg and exp_avg_sq once and
// writes param, exp_avg and exp_avg_sq once (28 bytes per element with float32
// grads, 26 with bfloat16), all in float32 registers; nothing is kept in shared
// memory. The squared norm accumulates in double per thread, reduces each block to
// one partial and sums the partials in a second one-block kernel, so the result is
// bitwise reproducible.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/adamw/adamw_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxAdamWTensors = 80;   // 49 bytes each: the table stays under 4 KB with the coefficients
constexpr int kMaxSimpleTensors = 160; // 24 bytes each

struct AdamWTable {
  float* param[kMaxAdamWTensors];
  const void* grad[kMaxAdamWTensors];
  float* exp_avg[kMaxAdamWTensors];
  float* exp_avg_sq[kMaxAdamWTensors];
  int64_t numel[kMaxAdamWTensors];
  int64_t first_block[kMaxAdamWTensors];
  bool weight_decay[kMaxAdamWTensors];
  int count;
};

struct SimpleTable {
  void* data[kMaxSimpleTensors];
  int64_t numel[kMaxSimpleTensors];
  int64_t first_block[kMaxSimpleTensors];
  int count;
};

static_assert(sizeof(AdamWTable) + sizeof(AdamWCoefficients) <= 4096, "AdamW kernel parameters exceed 4 KB");
static_assert(sizeof(SimpleTable) + 2 * sizeof(void*) <= 4096, "multi-tensor kernel parameters exceed 4 KB");
static_assert(kMultiTensorChunk % (4 * kThreads) == 0, "a chunk is a whole number of vector sweeps");

// The tensor that owns `block`: the last t with first_block[t] <= block.
__device__ int tensor_of_block(const int64_t* first_block, int count, int64_t block) {
  int low = 0, high = count - 1;
  while (low < high) {
    int middle = (low + high + 1) / 2;
    if (first_block[middle] <= block)
      low = middle;
    else
      high = middle - 1;
  }
  return low;
}

__device__ bool aligned_to(const void* pointer, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

__device__ void from_float(float& out, float x) { out = x; }
__device__ void from_float(__nv_bfloat16& out, float x) { out = __float2bfloat16(x); }

__device__ void load4(const float* source, float out[4]) {
  float4 v = *reinterpret_cast<const float4*>(source);
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}
__device__ void load4(const __nv_bfloat16* source, float out[4]) {
  uint2 raw = *reinterpret_cast<const uint2*>(source);
  float2 low = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  float2 high = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  out[0] = low.x, out[1] = low.y, out[2] = high.x, out[3] = high.y;
}
__device__ void store4(float* destination, const float in[4]) {
  *reinterpret_cast<float4*>(destination) = make_float4(in[0], in[1], in[2], in[3]);
}
__device__ void store4(__nv_bfloat16* destination, const float in[4]) {
  __nv_bfloat162 low = __floats2bfloat162_rn(in[0], in[1]), high = __floats2bfloat162_rn(in[2], in[3]);
  uint2 raw;
  raw.x = *reinterpret_cast<const uint32_t*>(&low);
  raw.y = *reinterpret_cast<const uint32_t*>(&high);
  *reinterpret_cast<uint2*>(destination) = raw;
}

// The chunk [start, end) of tensor `tensor` that this block handles.
struct Chunk {
  int tensor;
  int64_t start, end;
};
__device__ Chunk chunk_of_block(const int64_t* first_block, const int64_t* numel, int count) {
  Chunk chunk;
  chunk.tensor = tensor_of_block(first_block, count, blockIdx.x);
  chunk.start = (static_cast<int64_t>(blockIdx.x) - first_block[chunk.tensor]) * kMultiTensorChunk;
  chunk.end = min(chunk.start + kMultiTensorChunk, numel[chunk.tensor]);
  return chunk;
}

// The same arithmetic as the CPU reference (adamw_cpu.cpp), in float32.
__device__ void adamw_update(float& param, float grad, float& exp_avg, float& exp_avg_sq,
                             const AdamWCoefficients& c, float decay_factor) {
  param *= decay_factor;
  exp_avg = c.beta1 * exp_avg + c.one_minus_beta1 * grad;
  exp_avg_sq = c.beta2 * exp_avg_sq + c.one_minus_beta2 * grad * grad;
  param -= c.step_size * exp_avg / (sqrtf(exp_avg_sq) * c.inv_sqrt_bias_correction2 + c.eps);
}

template <class G>
__global__ void __launch_bounds__(kThreads) adamw_kernel(AdamWTable table, AdamWCoefficients c) {
  Chunk chunk = chunk_of_block(table.first_block, table.numel, table.count);
  float* param = table.param[chunk.tensor];
  const G* grad = static_cast<const G*>(table.grad[chunk.tensor]);
  float* exp_avg = table.exp_avg[chunk.tensor];
  float* exp_avg_sq = table.exp_avg_sq[chunk.tensor];
  float decay_factor = table.weight_decay[chunk.tensor] ? c.decay_factor : 1.0f;

  bool vectorised = aligned_to(param, 16) && aligned_to(exp_avg, 16) && aligned_to(exp_avg_sq, 16) &&
                    aligned_to(grad, 4 * sizeof(G));
  int64_t vector_end = vectorised ? chunk.start + (chunk.end - chunk.start) / 4 * 4 : chunk.start;
  for (int64_t i = chunk.start + 4 * threadIdx.x; i < vector_end; i += 4 * kThreads) {
    float p[4], g[4], m[4], v[4];
    load4(param + i, p);
    load4(grad + i, g);
    load4(exp_avg + i, m);
    load4(exp_avg_sq + i, v);
#pragma unroll
    for (int k = 0; k < 4; ++k) adamw_update(p[k], g[k], m[k], v[k], c, decay_factor);
    store4(param + i, p);
    store4(exp_avg + i, m);
    store4(exp_avg_sq + i, v);
  }
  for (int64_t i = vector_end + threadIdx.x; i < chunk.end; i += kThreads)
    adamw_update(param[i], to_float(grad[i]), exp_avg[i], exp_avg_sq[i], c, decay_factor);
}

// Sum of `value` over the block; the result is valid in thread 0.
__device__ double block_sum(double value) {
  __shared__ double warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0;
  if (warp == 0)
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  return value;
}

// partials[b] = sum of squares of block b's chunk.
template <class T>
__global__ void __launch_bounds__(kThreads) squared_norm_kernel(SimpleTable table, double* partials) {
  Chunk chunk = chunk_of_block(table.first_block, table.numel, table.count);
  const T* data = static_cast<const T*>(table.data[chunk.tensor]);
  int64_t vector_end = aligned_to(data, 4 * sizeof(T)) ? chunk.start + (chunk.end - chunk.start) / 4 * 4 : chunk.start;
  double sum = 0.0;
  for (int64_t i = chunk.start + 4 * threadIdx.x; i < vector_end; i += 4 * kThreads) {
    float x[4];
    load4(data + i, x);
#pragma unroll
    for (int k = 0; k < 4; ++k) sum += static_cast<double>(x[k]) * x[k];
  }
  for (int64_t i = vector_end + threadIdx.x; i < chunk.end; i += kThreads) {
    double x = to_float(data[i]);
    sum += x * x;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// *result = sum of the n partials, in a fixed order (one block).
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const double* partials, int64_t n, double* result) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) sum += partials[i];
  sum = block_sum(sum);
  if (threadIdx.x == 0) *result = sum;
}

template <class T>
__global__ void __launch_bounds__(kThreads) scale_kernel(SimpleTable table, float factor) {
  Chunk chunk = chunk_of_block(table.first_block, table.numel, table.count);
  T* data = static_cast<T*>(table.data[chunk.tensor]);
  int64_t vector_end = aligned_to(data, 4 * sizeof(T)) ? chunk.start + (chunk.end - chunk.start) / 4 * 4 : chunk.start;
  for (int64_t i = chunk.start + 4 * threadIdx.x; i < vector_end; i += 4 * kThreads) {
    float x[4];
    load4(data + i, x);
#pragma unroll
    for (int k = 0; k < 4; ++k) x[k] *= factor;
    store4(data + i, x);
  }
  for (int64_t i = vector_end + threadIdx.x; i < chunk.end; i += kThreads) from_float(data[i], to_float(data[i]) * factor);
}

int64_t chunks_of(int64_t numel) { return (numel + kMultiTensorChunk - 1) / kMultiTensorChunk; }

// Fills tables of up to kMaxSimpleTensors non-empty tensors and calls launch(table,
// blocks, first_block_overall) for each.
template <class Launch>
void for_each_simple_table(void* const* tensors, const int64_t* numels, int64_t count, const Launch& launch) {
  SimpleTable table;
  table.count = 0;
  int64_t blocks = 0, blocks_before = 0;
  auto flush = [&] {
    if (table.count == 0) return;
    launch(table, blocks, blocks_before);
    blocks_before += blocks;
    table.count = 0;
    blocks = 0;
  };
  for (int64_t i = 0; i < count; ++i) {
    if (numels[i] == 0) continue;
    table.data[table.count] = tensors[i];
    table.numel[table.count] = numels[i];
    table.first_block[table.count] = blocks;
    blocks += chunks_of(numels[i]);
    if (++table.count == kMaxSimpleTensors) flush();
  }
  flush();
}

}  // namespace

bool adamw_step_cuda(DType grad_dtype, const AdamWPointers* tensors, int64_t count,
                     const AdamWCoefficients& coefficients) {
  if (grad_dtype != DType::Float32 && grad_dtype != DType::BFloat16) return false;
  AdamWTable table;
  table.count = 0;
  int64_t blocks = 0;
  auto flush = [&] {
    if (table.count == 0) return;
    if (grad_dtype == DType::Float32)
      adamw_kernel<float><<<static_cast<unsigned>(blocks), kThreads, 0, cuda::stream()>>>(table, coefficients);
    else
      adamw_kernel<__nv_bfloat16><<<static_cast<unsigned>(blocks), kThreads, 0, cuda::stream()>>>(table, coefficients);
    STRATA_CUDA_CHECK_LAUNCH("adamw_kernel");
    table.count = 0;
    blocks = 0;
  };
  for (int64_t i = 0; i < count; ++i) {
    const AdamWPointers& t = tensors[i];
    if (t.numel == 0) continue;
    int k = table.count;
    table.param[k] = t.param;
    table.grad[k] = t.grad;
    table.exp_avg[k] = t.exp_avg;
    table.exp_avg_sq[k] = t.exp_avg_sq;
    table.numel[k] = t.numel;
    table.weight_decay[k] = t.weight_decay;
    table.first_block[k] = blocks;
    blocks += chunks_of(t.numel);
    if (++table.count == kMaxAdamWTensors) flush();
  }
  flush();
  return true;
}

int64_t squared_norm_cuda_blocks(const int64_t* numels, int64_t count) {
  int64_t blocks = 0;
  for (int64_t i = 0; i < count; ++i) blocks += chunks_of(numels[i]);
  return blocks;
}

bool squared_norm_cuda(DType dtype, void* const* tensors, const int64_t* numels, int64_t count, double* partials,
                       double* result) {
  if (dtype != DType::Float32 && dtype != DType::BFloat16) return false;
  int64_t total_blocks = 0;
  for_each_simple_table(tensors, numels, count, [&](const SimpleTable& table, int64_t blocks, int64_t blocks_before) {
    if (dtype == DType::Float32)
      squared_norm_kernel<float><<<static_cast<unsigned>(blocks), kThreads, 0, cuda::stream()>>>(
          table, partials + blocks_before);
    else
      squared_norm_kernel<__nv_bfloat16><<<static_cast<unsigned>(blocks), kThreads, 0, cuda::stream()>>>(
          table, partials + blocks_before);
    STRATA_CUDA_CHECK_LAUNCH("squared_norm_kernel");
    total_blocks = blocks_before + blocks;
  });
  sum_partials_kernel<<<1, kThreads, 0, cuda::stream()>>>(partials, total_blocks, result);
  STRATA_CUDA_CHECK_LAUNCH("sum_partials_kernel");
  return true;
}

bool scale_in_place_cuda(DType dtype, void* const* tensors, const int64_t* numels, int64_t count, float factor) {
  if (dtype != DType::Float32 && dtype != DType::BFloat16) return false;
  for_each_simple_table(tensors, numels, count, [&](const SimpleTable& table, int64_t blocks, int64_t) {
    if (dtype == DType::Float32)
      scale_kernel<float><<<static_cast<unsigned>(blocks), kThreads, 0, cuda::stream()>>>(table, factor);
    else
      scale_kernel<__nv_bfloat16><<<static_cast<unsigned>(blocks), kThreads, 0, cuda::stream()>>>(table, factor);
    STRATA_CUDA_CHECK_LAUNCH("scale_kernel");
  });
  return true;
}

}  // namespace strata::kernels
