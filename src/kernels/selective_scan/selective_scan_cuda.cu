// CUDA selective scan (Mamba-1 / S6): forward, backward and the one-token step.
//
// Tiling. A block of 128 threads serves one batch b and up to `channels_per_block`
// consecutive channels of one group (so they share B and C). Each channel is owned
// by `lanes` adjacent threads of one warp (a power of two <= 32); a thread keeps
// kSlots of the channel's N states in registers (states lane, lane + lanes, ...),
// with kSlots = 1 for N = 1, 4 for N <= 16 and 8 up to N = 256, and lanes the
// smallest power of two with lanes * kSlots >= N. Three instantiations per dtype
// and direction cover every N; N = 1 is one thread per channel, 128 channels a block.
//
// The steps are walked in chunks of kChunk (32 for kSlots = 1, else 16). For each
// chunk the block stages in shared memory, converted to float32 and loaded
// coalesced along the positions: u and delta (bias added, softplus applied once per
// element) as (channels, kChunk) tiles, and B and C as (N, kChunk) tiles; rows are
// padded to kChunk + 1 floats so a warp reading one column touches distinct banks.
// Each thread then walks the chunk in order with its states in registers:
//   h = exp(delta A) h + delta B u,  y += C h,
// the lanes of a channel add their partial y with warp shuffles, and lane 0 writes
// y + D u into the delta tile (its column was just read). The gate and the store
// to global memory run over the tile, coalesced again.
//
// With per-step states asked for, each thread also stores its states after every
// step straight from registers into (batch, d_inner, length, N): the `lanes` threads
// of a channel write adjacent floats.
//
// Routes (sizes.routes > 1) need nothing of the tiling: a block's channels lie in
// one group and so in one route, whose direction the block reads once.
//
// The forward pass stores the state entering each chunk (checkpoints,
// (batch, d_inner, n_chunks, N) float32, N / kChunk floats per channel and position:
// 1/32 for N = 1, 1 for N = 16) when a backward pass will follow. The backward
// pass walks the chunks from the last to the first. Per chunk it stages the same
// tiles (and two (N, kChunk) tiles for dB and dC), then
//   1. recomputes the chunk's states from its checkpoint, keeping each state before
//      its step in shared memory (kChunk * kSlots floats per thread: the only
//      per-step states ever stored), and y before the gate when there is a gate;
//   2. turns the output gradient into dy = dout silu(z) and writes dz (coalesced);
//   3. sweeps the chunk in reverse with the adjoint g = dL/dh in registers:
//        g += C dy (+ the gradient of the per-step state, when they were output);
//        dA += g delta exp(delta A) h_prev;  du, ddelta += sums over n;
//        dB += g delta u;  dC += dy h;  g = exp(delta A) g  (to the previous step),
//      recomputing exp(delta A). du and ddelta are summed over the lanes of a
//      channel with shuffles; dB and dC, which sum over channels, are added over
//      the channels of a warp with shuffles and across warps with shared-memory
//      atomics into (N, kChunk) tiles, then with one float32 atomicAdd per element
//      and block into the global dB, dC buffers;
//   4. stores du and ddelta (written over the u and delta tiles) coalesced.
// dA, dD and ddelta_bias stay in registers for the whole sequence and are added
// into their float32 buffers with one atomicAdd per thread at the end; the adjoint
// left after the first step is the gradient of the initial state.
//
// Shared memory per block: forward (2 channels + 2 N) (kChunk + 1) floats, 33 KiB
// for N = 1; backward adds a third channel tile, two N tiles and the states,
// 66 KiB for N = 1, 43 KiB for N = 16, 133 KiB for N = 256.
//
// The step kernel (generation) gives one thread each (batch, channel) row of the
// state and walks its N states; it forms each product in the scan's order.
//
// exp(delta A) uses __expf (relative error about 2^-21 |delta A|); the state and all
// sums are float32. The float32 atomics make the order of the dA, dB, dC, dD and
// ddelta_bias sums, and so their last bits, depend on scheduling.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/selective_scan/selective_scan_cuda.h"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kThreads = 128;
constexpr int kWarpSize = 32;

template <int kSlots>
struct Tiling {
  static constexpr int kChunk = kSlots == 1 ? 32 : 16;
  static constexpr int kPitch = kChunk + 1;
};

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

// log(1 + exp(x)); x itself above 20, as on the CPU.
__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Sum over the `lanes` threads of one channel (aligned groups of a warp).
__device__ __forceinline__ float sum_over_lanes(float v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
// Sum over the channels of a warp, for each lane index (the result lands in every
// channel's threads; the warp's first channel adds it up further).
__device__ __forceinline__ float sum_over_channels_of_warp(float v, int lanes) {
  for (int offset = lanes; offset < kWarpSize; offset *= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

struct LaunchGeometry {
  SelectiveScanSizes sizes;
  int lanes = 1;               // threads per channel
  int channels_per_block = 0;  // kThreads / lanes
  int64_t blocks_per_group = 0;
  int64_t n_chunks = 0;
};

int slots_for(int64_t d_state) { return d_state == 1 ? 1 : d_state <= 16 ? 4 : 8; }

// Where a block is: batch b, group, its first channel and how many of its channel
// rows hold a real channel (the last block of a group may be partly empty).
struct BlockPlace {
  int64_t b, group, first_channel;
  int channels;
  bool reversed;  // the direction of the block's route
};

__device__ BlockPlace locate_block(const LaunchGeometry& geometry) {
  const SelectiveScanSizes& s = geometry.sizes;
  const int64_t in_group = blockIdx.x % geometry.blocks_per_group;
  const int64_t batch_group = blockIdx.x / geometry.blocks_per_group;
  BlockPlace place;
  place.b = batch_group / s.groups;
  place.group = batch_group % s.groups;
  place.first_channel = place.group * s.channels_per_group() + in_group * geometry.channels_per_block;
  const int64_t remaining = s.channels_per_group() - in_group * geometry.channels_per_block;
  place.channels = static_cast<int>(remaining < geometry.channels_per_block ? remaining : geometry.channels_per_block);
  place.reversed = s.reversed(place.first_channel);
  return place;
}

__device__ __forceinline__ int64_t position_of(const SelectiveScanSizes& s, const BlockPlace& place, int64_t step) {
  return place.reversed ? s.length - 1 - step : step;
}

// Stages steps [step0, step0 + count) of the block: u and delta (bias and softplus
// applied) as (channels, kChunk) tiles and B and C as (N, kChunk) tiles, zero
// outside the block's channels and the chunk.
template <class T, int kSlots>
__device__ void stage_chunk(const LaunchGeometry& geometry, const BlockPlace& place,
                            const SelectiveScanInputs<T, float>& in, int64_t step0, int count, float* u_tile,
                            float* delta_tile, float* B_tile, float* C_tile) {
  constexpr int kChunk = Tiling<kSlots>::kChunk, kPitch = Tiling<kSlots>::kPitch;
  const SelectiveScanSizes& s = geometry.sizes;
  for (int i = threadIdx.x; i < geometry.channels_per_block * kChunk; i += kThreads) {
    const int c = i / kChunk, j = i % kChunk;
    float u = 0.0f, delta = 0.0f;
    if (c < place.channels && j < count) {
      const int64_t d = place.first_channel + c;
      const int64_t index = (place.b * s.d_inner + d) * s.length + position_of(s, place, step0 + j);
      u = load(in.u, index);
      delta = load(in.delta, index) + (in.delta_bias ? in.delta_bias[d] : 0.0f);
      if (s.delta_softplus) delta = softplus(delta);
    }
    u_tile[c * kPitch + j] = u;
    delta_tile[c * kPitch + j] = delta;
  }
  const int64_t bc_row = (place.b * s.groups + place.group) * s.d_state;
  for (int i = threadIdx.x; i < s.d_state * kChunk; i += kThreads) {
    const int n = i / kChunk, j = i % kChunk;
    float b_value = 0.0f, c_value = 0.0f;
    if (j < count) {
      const int64_t index = (bc_row + n) * s.length + position_of(s, place, step0 + j);
      b_value = load(in.B, index);
      c_value = load(in.C, index);
    }
    B_tile[n * kPitch + j] = b_value;
    C_tile[n * kPitch + j] = c_value;
  }
}

template <class T, int kSlots>
__global__ void __launch_bounds__(kThreads)
    selective_scan_forward_kernel(const LaunchGeometry geometry, const SelectiveScanInputs<T, float> in,
                                  const SelectiveScanOutputs<T, float> outputs, float* checkpoints) {
  constexpr int kChunk = Tiling<kSlots>::kChunk, kPitch = Tiling<kSlots>::kPitch;
  const SelectiveScanSizes& s = geometry.sizes;
  const int N = static_cast<int>(s.d_state), lanes = geometry.lanes;
  extern __shared__ float shared[];
  float* u_tile = shared;                                             // (channels, kPitch)
  float* delta_tile = u_tile + geometry.channels_per_block * kPitch;  // (channels, kPitch), then y
  float* B_tile = delta_tile + geometry.channels_per_block * kPitch;  // (N, kPitch)
  float* C_tile = B_tile + N * kPitch;                                // (N, kPitch)

  const BlockPlace place = locate_block(geometry);
  const int c = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  const bool has_channel = c < place.channels;
  const int64_t d = place.first_channel + c;
  const int64_t state_row = (place.b * s.d_inner + d) * N;

  float A[kSlots], h[kSlots];
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int n = lane + k * lanes;
    const bool owned = has_channel && n < N;
    A[k] = owned ? in.A[d * N + n] : 0.0f;
    h[k] = owned && in.initial_state ? in.initial_state[state_row + n] : 0.0f;
  }
  const float D = has_channel && in.D ? in.D[d] : 0.0f;

  for (int64_t chunk = 0; chunk < geometry.n_chunks; ++chunk) {
    const int64_t step0 = chunk * kChunk;
    const int count = static_cast<int>(s.length - step0 < kChunk ? s.length - step0 : kChunk);
    if (checkpoints) {
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int n = lane + k * lanes;
        if (has_channel && n < N) checkpoints[((place.b * s.d_inner + d) * geometry.n_chunks + chunk) * N + n] = h[k];
      }
    }
    stage_chunk<T, kSlots>(geometry, place, in, step0, count, u_tile, delta_tile, B_tile, C_tile);
    __syncthreads();

    for (int j = 0; j < count; ++j) {
      const float delta = delta_tile[c * kPitch + j], u = u_tile[c * kPitch + j];
      const float delta_u = delta * u;
      float y = 0.0f;
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int n = lane + k * lanes;
        if (n < N) {
          h[k] = __expf(delta * A[k]) * h[k] + delta_u * B_tile[n * kPitch + j];
          y += C_tile[n * kPitch + j] * h[k];
        }
      }
      if (outputs.states && has_channel) {
        float* states_row =
            outputs.states + ((place.b * s.d_inner + d) * s.length + position_of(s, place, step0 + j)) * N;
#pragma unroll
        for (int k = 0; k < kSlots; ++k)
          if (lane + k * lanes < N) states_row[lane + k * lanes] = h[k];
      }
      y = sum_over_lanes(y, lanes);
      if (lanes > 1) __syncwarp();  // every lane has read delta_tile[c][j] before lane 0 overwrites it
      if (lane == 0) delta_tile[c * kPitch + j] = y + D * u;
    }
    __syncthreads();

    for (int i = threadIdx.x; i < geometry.channels_per_block * kChunk; i += kThreads) {
      const int cc = i / kChunk, j = i % kChunk;
      if (cc >= place.channels || j >= count) continue;
      const int64_t index =
          (place.b * s.d_inner + place.first_channel + cc) * s.length + position_of(s, place, step0 + j);
      float y = delta_tile[cc * kPitch + j];
      if (in.z) {
        const float z = load(in.z, index);
        y *= z * sigmoid(z);
      }
      store(outputs.out, index, y);
    }
    __syncthreads();  // the tiles are staged again for the next chunk
  }

  if (outputs.final_state) {
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int n = lane + k * lanes;
      if (has_channel && n < N) outputs.final_state[state_row + n] = h[k];
    }
  }
}

template <class T, int kSlots>
__global__ void __launch_bounds__(kThreads)
    selective_scan_backward_kernel(const LaunchGeometry geometry, const SelectiveScanInputs<T, float> in,
                                   const float* checkpoints,
                                   const SelectiveScanOutputs<const T, const float> output_grads,
                                   const SelectiveScanGrads<T, float> grads) {
  constexpr int kChunk = Tiling<kSlots>::kChunk, kPitch = Tiling<kSlots>::kPitch;
  const SelectiveScanSizes& s = geometry.sizes;
  const int N = static_cast<int>(s.d_state), lanes = geometry.lanes, channels = geometry.channels_per_block;
  extern __shared__ float shared[];
  float* u_tile = shared;                           // (channels, kPitch), then du
  float* delta_tile = u_tile + channels * kPitch;   // (channels, kPitch), then ddelta
  float* dy_tile = delta_tile + channels * kPitch;  // (channels, kPitch): y before the gate, then dy
  float* B_tile = dy_tile + channels * kPitch;      // (N, kPitch)
  float* C_tile = B_tile + N * kPitch;
  float* dB_tile = C_tile + N * kPitch;
  float* dC_tile = dB_tile + N * kPitch;
  float* history = dC_tile + N * kPitch;  // (kChunk, kSlots, kThreads): the state before each step

  const BlockPlace place = locate_block(geometry);
  const int c = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  const bool has_channel = c < place.channels;
  const int64_t d = place.first_channel + c;
  const int64_t state_row = (place.b * s.d_inner + d) * N;
  const int64_t bc_row = (place.b * s.groups + place.group) * s.d_state;

  // adjoint[k]: dL/dh of the state before the step being swept, from the later steps.
  float A[kSlots], adjoint[kSlots], dA[kSlots];
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int n = lane + k * lanes;
    const bool owned = has_channel && n < N;
    A[k] = owned ? in.A[d * N + n] : 0.0f;
    adjoint[k] = owned && output_grads.final_state ? output_grads.final_state[state_row + n] : 0.0f;
    dA[k] = 0.0f;
  }
  const float D = has_channel && in.D ? in.D[d] : 0.0f;
  float dD = 0.0f, ddelta_bias = 0.0f;  // lane 0's sums over the whole sequence

  for (int64_t chunk = geometry.n_chunks - 1; chunk >= 0; --chunk) {
    const int64_t step0 = chunk * kChunk;
    const int count = static_cast<int>(s.length - step0 < kChunk ? s.length - step0 : kChunk);
    stage_chunk<T, kSlots>(geometry, place, in, step0, count, u_tile, delta_tile, B_tile, C_tile);
    for (int i = threadIdx.x; i < N * kPitch; i += kThreads) dB_tile[i] = dC_tile[i] = 0.0f;
    float h[kSlots];
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int n = lane + k * lanes;
      h[k] = has_channel && n < N ? checkpoints[((place.b * s.d_inner + d) * geometry.n_chunks + chunk) * N + n] : 0.0f;
    }
    __syncthreads();

    // 1. The chunk's states again, from its checkpoint.
    for (int j = 0; j < count; ++j) {
      const float delta = delta_tile[c * kPitch + j], u = u_tile[c * kPitch + j];
      const float delta_u = delta * u;
      float y = 0.0f;
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int n = lane + k * lanes;
        if (n < N) {
          history[(j * kSlots + k) * kThreads + threadIdx.x] = h[k];
          h[k] = __expf(delta * A[k]) * h[k] + delta_u * B_tile[n * kPitch + j];
          y += C_tile[n * kPitch + j] * h[k];
        }
      }
      if (in.z) {
        y = sum_over_lanes(y, lanes);
        if (lane == 0) dy_tile[c * kPitch + j] = y + D * u;
      }
    }
    __syncthreads();

    // 2. dy = dout silu(z) and dz = dout y silu'(z), with silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z))).
    for (int i = threadIdx.x; i < channels * kChunk; i += kThreads) {
      const int cc = i / kChunk, j = i % kChunk;
      float dy = 0.0f;
      if (cc < place.channels && j < count) {
        const int64_t index =
            (place.b * s.d_inner + place.first_channel + cc) * s.length + position_of(s, place, step0 + j);
        const float dout = load(output_grads.out, index);
        if (in.z) {
          const float z = load(in.z, index), gate = sigmoid(z);
          store(grads.dz, index, dout * dy_tile[cc * kPitch + j] * gate * (1.0f + z * (1.0f - gate)));
          dy = dout * z * gate;
        } else {
          dy = dout;
        }
      }
      dy_tile[cc * kPitch + j] = dy;
    }
    __syncthreads();

    // 3. The reverse sweep.
    for (int j = count - 1; j >= 0; --j) {
      const float delta = delta_tile[c * kPitch + j], u = u_tile[c * kPitch + j], dy = dy_tile[c * kPitch + j];
      const float delta_u = delta * u;
      // (b, d, t, 0) of the per-step states' gradient, when the states were an output.
      const float* grad_states_row =
          output_grads.states && has_channel
              ? output_grads.states + ((place.b * s.d_inner + d) * s.length + position_of(s, place, step0 + j)) * N
              : nullptr;
      float du = 0.0f, ddelta = 0.0f, dB[kSlots], dC[kSlots];
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int n = lane + k * lanes;
        dB[k] = 0.0f;
        dC[k] = 0.0f;
        if (n < N) {
          const float B = B_tile[n * kPitch + j], C = C_tile[n * kPitch + j];
          const float decay = __expf(delta * A[k]);
          const float previous = history[(j * kSlots + k) * kThreads + threadIdx.x];
          const float g = adjoint[k] + dy * C + (grad_states_row ? grad_states_row[n] : 0.0f);  // dL/dh here
          dC[k] = dy * (decay * previous + delta_u * B);
          dB[k] = g * delta_u;
          du += g * delta * B;
          ddelta += g * (B * u + A[k] * decay * previous);
          dA[k] += g * delta * decay * previous;
          adjoint[k] = decay * g;
        }
      }
      du = sum_over_lanes(du, lanes);
      ddelta = sum_over_lanes(ddelta, lanes);
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        dB[k] = sum_over_channels_of_warp(dB[k], lanes);
        dC[k] = sum_over_channels_of_warp(dC[k], lanes);
      }
      if (threadIdx.x % kWarpSize < lanes) {  // the warp's first channel holds the warp's sums
#pragma unroll
        for (int k = 0; k < kSlots; ++k) {
          const int n = lane + k * lanes;
          if (n < N) {
            atomicAdd(&dB_tile[n * kPitch + j], dB[k]);
            atomicAdd(&dC_tile[n * kPitch + j], dC[k]);
          }
        }
      }
      if (lanes > 1) __syncwarp();  // every lane has read column j before lane 0 overwrites it
      if (lane == 0 && has_channel) {
        du += dy * D;
        dD += dy * u;
        if (s.delta_softplus) ddelta *= -expm1f(-delta);  // sigmoid(x) = 1 - exp(-softplus(x))
        ddelta_bias += ddelta;
        u_tile[c * kPitch + j] = du;
        delta_tile[c * kPitch + j] = ddelta;
      }
    }
    __syncthreads();

    // 4. Store du and ddelta; add the block's dB and dC.
    for (int i = threadIdx.x; i < channels * kChunk; i += kThreads) {
      const int cc = i / kChunk, j = i % kChunk;
      if (cc >= place.channels || j >= count) continue;
      const int64_t index =
          (place.b * s.d_inner + place.first_channel + cc) * s.length + position_of(s, place, step0 + j);
      store(grads.du, index, u_tile[cc * kPitch + j]);
      store(grads.ddelta, index, delta_tile[cc * kPitch + j]);
    }
    for (int i = threadIdx.x; i < N * kChunk; i += kThreads) {
      const int n = i / kChunk, j = i % kChunk;
      if (j >= count) continue;
      const int64_t index = (bc_row + n) * s.length + position_of(s, place, step0 + j);
      atomicAdd(&grads.dB[index], dB_tile[n * kPitch + j]);
      atomicAdd(&grads.dC[index], dC_tile[n * kPitch + j]);
    }
    __syncthreads();  // the tiles are staged again for the next chunk
  }

#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int n = lane + k * lanes;
    if (has_channel && n < N) {
      atomicAdd(&grads.dA[d * N + n], dA[k]);
      if (grads.dinitial_state) grads.dinitial_state[state_row + n] = adjoint[k];
    }
  }
  if (lane == 0 && has_channel) {
    if (grads.dD) atomicAdd(&grads.dD[d], dD);
    if (grads.ddelta_bias) atomicAdd(&grads.ddelta_bias[d], ddelta_bias);
  }
}

// One thread per (batch, channel) walks the N states of its row of `state`.
template <class T>
__global__ void selective_scan_step_kernel(const SelectiveScanSizes s, const SelectiveScanInputs<T, float> in,
                                           float* state, T* out) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // b * d_inner + d
  if (row >= s.batch * s.d_inner) return;
  const int64_t b = row / s.d_inner, d = row % s.d_inner, group = d / s.channels_per_group();
  const int64_t N = s.d_state;
  const float u = load(in.u, row);
  float delta = load(in.delta, row) + (in.delta_bias ? in.delta_bias[d] : 0.0f);
  if (s.delta_softplus) delta = softplus(delta);
  float y = in.D ? in.D[d] * u : 0.0f;
  const float delta_u = delta * u;  // the products in the order the scan kernel forms them
  const int64_t bc_row = (b * s.groups + group) * N;
  for (int64_t n = 0; n < N; ++n) {
    float h = state[row * N + n];
    h = __expf(delta * in.A[d * N + n]) * h + delta_u * load(in.B, bc_row + n);
    state[row * N + n] = h;
    y += load(in.C, bc_row + n) * h;
  }
  if (in.z) {
    const float z = load(in.z, row);
    y *= z * sigmoid(z);
  }
  store(out, row, y);
}

template <class T>
SelectiveScanInputs<T, float> typed(const SelectiveScanInputs<void, float>& in) {
  return {static_cast<const T*>(in.u),
          static_cast<const T*>(in.delta),
          in.A,
          static_cast<const T*>(in.B),
          static_cast<const T*>(in.C),
          in.D,
          static_cast<const T*>(in.z),
          in.delta_bias,
          in.initial_state};
}
template <class T>
SelectiveScanOutputs<T, float> typed(const SelectiveScanOutputs<void, float>& o) {
  return {static_cast<T*>(o.out), o.final_state, o.states};
}
template <class T>
SelectiveScanOutputs<const T, const float> typed(const SelectiveScanOutputs<const void, const float>& o) {
  return {static_cast<const T*>(o.out), o.final_state, o.states};
}
template <class T>
SelectiveScanGrads<T, float> typed(const SelectiveScanGrads<void, float>& g) {
  return {static_cast<T*>(g.du), static_cast<T*>(g.ddelta), static_cast<T*>(g.dz), g.dA, g.dB, g.dC, g.dD,
          g.ddelta_bias,         g.dinitial_state};
}

template <int kSlots>
LaunchGeometry make_geometry(const SelectiveScanSizes& sizes) {
  LaunchGeometry geometry;
  geometry.sizes = sizes;
  while (geometry.lanes * kSlots < sizes.d_state) geometry.lanes *= 2;
  geometry.channels_per_block = kThreads / geometry.lanes;
  geometry.blocks_per_group =
      (sizes.channels_per_group() + geometry.channels_per_block - 1) / geometry.channels_per_block;
  geometry.n_chunks = (sizes.length + Tiling<kSlots>::kChunk - 1) / Tiling<kSlots>::kChunk;
  return geometry;
}

int grid_size(const LaunchGeometry& geometry) {
  return static_cast<int>(geometry.sizes.batch * geometry.sizes.groups * geometry.blocks_per_group);
}

// Opts the kernel in to more than the default 48 KiB of dynamic shared memory.
template <class Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    STRATA_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <class T, int kSlots>
void launch_forward(const SelectiveScanSizes& sizes, const SelectiveScanInputs<void, float>& inputs,
                    const SelectiveScanOutputs<void, float>& outputs, float* checkpoints) {
  const LaunchGeometry geometry = make_geometry<kSlots>(sizes);
  const size_t bytes = sizeof(float) * (2 * geometry.channels_per_block + 2 * sizes.d_state) * Tiling<kSlots>::kPitch;
  auto kernel = selective_scan_forward_kernel<T, kSlots>;
  allow_shared_memory(kernel, bytes);
  kernel<<<grid_size(geometry), kThreads, bytes, cuda::stream()>>>(geometry, typed<T>(inputs), typed<T>(outputs),
                                                                   checkpoints);
  STRATA_CUDA_CHECK_LAUNCH("selective_scan_forward_kernel");
}

template <class T, int kSlots>
void launch_backward(const SelectiveScanSizes& sizes, const SelectiveScanInputs<void, float>& inputs,
                     const float* checkpoints, const SelectiveScanOutputs<const void, const float>& output_grads,
                     const SelectiveScanGrads<void, float>& grads) {
  const LaunchGeometry geometry = make_geometry<kSlots>(sizes);
  const size_t bytes = sizeof(float) * ((3 * geometry.channels_per_block + 4 * sizes.d_state) * Tiling<kSlots>::kPitch +
                                        Tiling<kSlots>::kChunk * kSlots * kThreads);
  auto kernel = selective_scan_backward_kernel<T, kSlots>;
  allow_shared_memory(kernel, bytes);
  kernel<<<grid_size(geometry), kThreads, bytes, cuda::stream()>>>(geometry, typed<T>(inputs), checkpoints,
                                                                   typed<T>(output_grads), typed<T>(grads));
  STRATA_CUDA_CHECK_LAUNCH("selective_scan_backward_kernel");
}

template <class T>
void forward_for_state_size(const SelectiveScanSizes& sizes, const SelectiveScanInputs<void, float>& inputs,
                            const SelectiveScanOutputs<void, float>& outputs, float* checkpoints) {
  switch (slots_for(sizes.d_state)) {
    case 1:
      launch_forward<T, 1>(sizes, inputs, outputs, checkpoints);
      break;
    case 4:
      launch_forward<T, 4>(sizes, inputs, outputs, checkpoints);
      break;
    default:
      launch_forward<T, 8>(sizes, inputs, outputs, checkpoints);
      break;
  }
}

template <class T>
void backward_for_state_size(const SelectiveScanSizes& sizes, const SelectiveScanInputs<void, float>& inputs,
                             const float* checkpoints,
                             const SelectiveScanOutputs<const void, const float>& output_grads,
                             const SelectiveScanGrads<void, float>& grads) {
  switch (slots_for(sizes.d_state)) {
    case 1:
      launch_backward<T, 1>(sizes, inputs, checkpoints, output_grads, grads);
      break;
    case 4:
      launch_backward<T, 4>(sizes, inputs, checkpoints, output_grads, grads);
      break;
    default:
      launch_backward<T, 8>(sizes, inputs, checkpoints, output_grads, grads);
      break;
  }
}

template <class T>
void launch_step(const SelectiveScanSizes& sizes, const SelectiveScanInputs<void, float>& inputs, float* state,
                 void* out) {
  const int64_t rows = sizes.batch * sizes.d_inner;
  const int blocks = static_cast<int>((rows + kThreads - 1) / kThreads);
  selective_scan_step_kernel<T>
      <<<blocks, kThreads, 0, cuda::stream()>>>(sizes, typed<T>(inputs), state, static_cast<T*>(out));
  STRATA_CUDA_CHECK_LAUNCH("selective_scan_step_kernel");
}

}  // namespace

int64_t selective_scan_cuda_chunk_length(int64_t d_state) {
  return slots_for(d_state) == 1 ? Tiling<1>::kChunk : Tiling<8>::kChunk;
}

bool selective_scan_forward_cuda(DType dtype, const SelectiveScanSizes& sizes,
                                 const SelectiveScanInputs<void, float>& inputs,
                                 const SelectiveScanOutputs<void, float>& outputs, float* checkpoints) {
  switch (dtype) {
    case DType::Float32:
      forward_for_state_size<float>(sizes, inputs, outputs, checkpoints);
      return true;
    case DType::BFloat16:
      forward_for_state_size<__nv_bfloat16>(sizes, inputs, outputs, checkpoints);
      return true;
    default:
      return false;
  }
}

bool selective_scan_backward_cuda(DType dtype, const SelectiveScanSizes& sizes,
                                  const SelectiveScanInputs<void, float>& inputs, const float* checkpoints,
                                  const SelectiveScanOutputs<const void, const float>& output_grads,
                                  const SelectiveScanGrads<void, float>& grads) {
  switch (dtype) {
    case DType::Float32:
      backward_for_state_size<float>(sizes, inputs, checkpoints, output_grads, grads);
      return true;
    case DType::BFloat16:
      backward_for_state_size<__nv_bfloat16>(sizes, inputs, checkpoints, output_grads, grads);
      return true;
    default:
      return false;
  }
}

bool selective_scan_step_cuda(DType dtype, const SelectiveScanSizes& sizes,
                              const SelectiveScanInputs<void, float>& inputs, float* state, void* out) {
  switch (dtype) {
    case DType::Float32:
      launch_step<float>(sizes, inputs, state, out);
      return true;
    case DType::BFloat16:
      launch_step<__nv_bfloat16>(sizes, inputs, state, out);
      return true;
    default:
      return false;
  }
}

}  // namespace strata::kernels
