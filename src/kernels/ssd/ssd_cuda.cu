// Chunked SSD (Mamba-2) on CUDA: float32 or bfloat16 x, dt, B, C; float32 states,
// parameters and arithmetic. The algorithm is the one of ssd_args.h / ssd_cpu.h,
// cut into kernels that each parallelise over (batch, chunk, head):
//
//  Forward
//   1. dt_cumsum: one warp per (batch, head, chunk) applies bias and softplus to dt
//      and takes the inclusive cumulative sum u of dt A inside the chunk (a warp
//      scan per 32 positions with a carry). Workspace dt, u: (batch, heads, length).
//   2. chunk_state: the state each chunk adds, sum_j exp(u_last - u_j) dt_j x_j B_j^T,
//      a (P x len) by (len x N) product per (batch, chunk, head), one 64 x 64 tile of
//      (P, N) per block. Workspace states: (batch, chunks, heads, P, N).
//   3. state_passing: one thread per (batch, head, p, n) walks the chunks in order
//      and replaces each chunk's added state by the state entering the chunk
//      (in place); the last running value is the final state.
//   4. chunk_output: one block per (batch, chunk, head, 64 rows i of the chunk)
//      loops over 64-column tiles of P: exp(u_i) C_i S_in (a product over N), then
//      for each 64-row tile j <= i the masked decay matrix
//      M[i, j] = exp(u_i - u_j) dt_j (C_i . B_j) (a product over N, masked and
//      scaled in registers, kept in shared memory) times x_j; y = that + D x.
//  Backward (the states are recomputed with 1-3, nothing is saved)
//   5. chunk_state in adjoint mode: sum_i exp(u_i) dy_i C_i^T per chunk, then
//      state_passing in reverse: the gradient of the state leaving each chunk, and
//      of the initial state.
//   6. chunk_output in row-dot mode: r_i = dy_i . (y_i - D x_i).
//   7. chunk_dx: per (batch, chunk, head, 64 rows j): dx~_j = sum_{i >= j} M'[j, i]
//      dy_i + exp(u_last - u_j) dS_out B_j with M'[j, i] = exp(u_i - u_j) (B_j . C_i);
//      writes dx and the row dots q_j = x_j . dx~_j and e_j = x_j . dy_j.
//   8. state_dot: <dS_out, S_out> per (batch, chunk, head), a block reduction.
//   9. dt_backward: one warp per (batch, head, chunk): du_i = r_i - dt_i q_i (+ the
//      state dot at the chunk's last position), its reverse cumulative sum da, ddt
//      through A and the softplus, and per-chunk partial sums of dA, dD, ddt_bias;
//      parameter_sums adds the partials of each head in a fixed order.
//  10. chunk_dC and chunk_dB: one block per (batch, chunk, group, 64 rows, 64 columns
//      of N) loops over the heads of the group (so the sum over heads needs no
//      atomics), with the same masked-matrix-times-tile structure.
//
// Tiles: 256 threads compute a 64 x 64 float32 output tile, 4 x 4 values per thread
// at rows ty + 16 r and columns tx + 16 c (ty, tx = thread / 16, thread % 16).
// Operands stream through shared memory 16 deep (two 16 x 65 float arrays; the
// padding keeps both the transposing stores and the reads free of bank conflicts);
// the masked 64 x 64 decay matrix sits in a third, 64 x 65 array. Every sum has a
// fixed order, so results are deterministic; nothing uses atomics.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/ssd/ssd_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kTile = 64;      // output tile rows and columns
constexpr int kStep = 16;      // depth of one shared-memory stage
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each
constexpr int kWarpsPerScanBlock = 4;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float softplus_derivative(float x) { return x > 20.f ? 1.f : 1.f / (1.f + expf(-x)); }

// ---- 64 x 64 tiles ----------------------------------------------------------------

struct TileShared {
  float a[kStep][kTile + 1];  // a[k][row]
  float b[kStep][kTile + 1];  // b[k][col]
};
using DecayMatrix = float[kTile][kTile + 1];

__device__ __forceinline__ int tile_row(int r) { return static_cast<int>(threadIdx.x) / 16 + 16 * r; }
__device__ __forceinline__ int tile_col(int c) { return static_cast<int>(threadIdx.x) % 16 + 16 * c; }

__device__ __forceinline__ void zero(float (&acc)[4][4]) {
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = 0.f;
}

// Stages load_b(k0 + k, col) for k < kStep into s.b (zero past depth). kColContiguous:
// consecutive threads take consecutive columns (the operand's columns are adjacent in
// memory), else consecutive k.
template <bool kColContiguous, class LoadB>
__device__ __forceinline__ void stage_b(int k0, int depth, const LoadB& load_b, TileShared& s) {
  for (int e = threadIdx.x; e < kTile * kStep; e += kThreads) {
    const int col = kColContiguous ? e % kTile : e / kStep;
    const int k = kColContiguous ? e / kTile : e % kStep;
    s.b[k][col] = k0 + k < depth ? load_b(k0 + k, col) : 0.f;
  }
}

// acc += A (64 x depth) B (depth x 64), the operands read through load_a(row, k) and
// load_b(k, col), which return 0 outside the matrices. kAKContiguous: A's k index is
// adjacent in memory (else its rows are).
template <bool kAKContiguous, bool kBColContiguous, class LoadA, class LoadB>
__device__ void tile_multiply(float (&acc)[4][4], int depth, const LoadA& load_a, const LoadB& load_b, TileShared& s) {
  for (int k0 = 0; k0 < depth; k0 += kStep) {
    for (int e = threadIdx.x; e < kTile * kStep; e += kThreads) {
      const int row = kAKContiguous ? e / kStep : e % kTile;
      const int k = kAKContiguous ? e % kStep : e / kTile;
      s.a[k][row] = k0 + k < depth ? load_a(row, k0 + k) : 0.f;
    }
    stage_b<kBColContiguous>(k0, depth, load_b, s);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kStep; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = s.a[k][tile_row(r)];
#pragma unroll
      for (int c = 0; c < 4; ++c) b[c] = s.b[k][tile_col(c)];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    }
    __syncthreads();
  }
}

// acc += m (64 x 64, in shared memory) B (64 x 64, read through load_b).
template <bool kBColContiguous, class LoadB>
__device__ void tile_multiply_by_decay(float (&acc)[4][4], const DecayMatrix& m, const LoadB& load_b, TileShared& s) {
  for (int k0 = 0; k0 < kTile; k0 += kStep) {
    stage_b<kBColContiguous>(k0, kTile, load_b, s);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kStep; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = m[tile_row(r)][k0 + k];
#pragma unroll
      for (int c = 0; c < 4; ++c) b[c] = s.b[k][tile_col(c)];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    }
    __syncthreads();
  }
}

// Sums v over the 16 threads that share a tile row (one half-warp); every thread
// gets the sum.
__device__ __forceinline__ float sum_over_row_threads(float v) {
#pragma unroll
  for (int offset = 8; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// ---- indexing -----------------------------------------------------------------------

// The inputs with the workspace arrays, and index helpers that read like ssd_args.h.
template <class V>
struct View {
  SsdSizes s;
  const V* x;
  const V* dt;
  const float* A;
  const V* B;
  const V* C;
  const float* D;
  const float* dt_bias;
  const float* initial_state;
  float* dt_w;    // (batch, heads, length): dt after bias and softplus
  float* u;       // (batch, heads, length): cumulative dt A inside each chunk
  float* states;  // (batch, chunks, heads, P, N)

  __device__ int64_t token(int64_t b, int64_t t, int64_t h) const { return (b * s.length + t) * s.heads + h; }
  __device__ int64_t row(int64_t b, int64_t h) const { return (b * s.heads + h) * s.length; }  // (b, h, 0)
  __device__ int64_t bc_offset(int64_t b, int64_t t, int64_t g) const {
    return ((b * s.length + t) * s.groups + g) * s.d_state;
  }
  __device__ int64_t state_offset(int64_t b, int64_t c, int64_t h) const {
    return ((b * s.chunks() + c) * s.heads + h) * s.head_dim * s.d_state;
  }
};

// One (batch, chunk, head) of a block: where the chunk starts, its length, and its
// dt and u, read from the workspace.
struct ChunkPosition {
  int64_t b, c, h, g, start;
  int len;
  const float* dt;  // dt of the chunk's positions
  const float* u;   // u of the chunk's positions
  __device__ float u_last() const { return u[len - 1]; }
};

template <class V>
__device__ ChunkPosition chunk_position(const View<V>& v, int64_t b, int64_t c, int64_t h) {
  ChunkPosition p;
  p.b = b;
  p.c = c;
  p.h = h;
  p.g = h / v.s.heads_per_group();
  p.start = c * v.s.chunk_size;
  p.len = static_cast<int>(smaller(v.s.chunk_size, v.s.length - p.start));
  p.dt = v.dt_w + v.row(b, h) + p.start;
  p.u = v.u + v.row(b, h) + p.start;
  return p;
}

// blockIdx.x = (b * chunks + c) * heads_or_groups + h_or_g.
template <class V>
__device__ void split_block_index(const View<V>& v, int64_t inner, int64_t& b, int64_t& c, int64_t& h) {
  const int64_t index = blockIdx.x;
  h = index % inner;
  c = (index / inner) % v.s.chunks();
  b = index / inner / v.s.chunks();
}

// ---- 1. dt and its cumulative sum ---------------------------------------------------

template <class V>
__global__ void dt_cumsum_kernel(View<V> v) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerScanBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t chunks = v.s.chunks();
  if (warp >= v.s.batch * v.s.heads * chunks) return;
  const int64_t c = warp % chunks, h = (warp / chunks) % v.s.heads, b = warp / chunks / v.s.heads;
  const int64_t start = c * v.s.chunk_size;
  const int len = static_cast<int>(smaller(v.s.chunk_size, v.s.length - start));
  const float A = v.A[h], bias = v.dt_bias ? v.dt_bias[h] : 0.f;
  float carry = 0.f;
  for (int base = 0; base < len; base += 32) {
    const int i = base + lane;
    float dt = 0.f;
    if (i < len) {
      const float raw = to_float(v.dt[v.token(b, start + i, h)]) + bias;
      dt = v.s.dt_softplus ? softplus(raw) : raw;
    }
    float sum = dt * A;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const float before = __shfl_up_sync(kFullMask, sum, offset);
      if (lane >= offset) sum += before;
    }
    sum += carry;
    if (i < len) {
      v.dt_w[v.row(b, h) + start + i] = dt;
      v.u[v.row(b, h) + start + i] = sum;
    }
    carry = __shfl_sync(kFullMask, sum, 31);
  }
}

// ---- 2. the state each chunk adds (or, in adjoint mode, its gradient's) ------------

// Forward: out[p, n] = sum_j exp(u_last - u_j) dt_j left[j, p] right[j, n] with
// left = x, right = B. Adjoint: out[p, n] = sum_i exp(u_i) left[i, p] right[i, n] with
// left = dy, right = C. out: (batch, chunks, heads, P, N). Grid (batch * chunks *
// heads, P tiles, N tiles).
template <class V, bool kAdjoint>
__global__ void __launch_bounds__(kThreads) chunk_state_kernel(View<V> v, const V* left, const V* right, float* out) {
  __shared__ TileShared s;
  int64_t b, c, h;
  split_block_index(v, v.s.heads, b, c, h);
  const ChunkPosition ch = chunk_position(v, b, c, h);
  const int64_t P = v.s.head_dim, N = v.s.d_state;
  const int64_t p0 = static_cast<int64_t>(blockIdx.y) * kTile, n0 = static_cast<int64_t>(blockIdx.z) * kTile;
  const float u_last = ch.u_last();
  auto load_left = [&](int p, int j) {  // (p, j), adjacent in p
    if (p0 + p >= P) return 0.f;
    const float value = to_float(left[v.token(b, ch.start + j, h) * P + p0 + p]);
    return kAdjoint ? expf(ch.u[j]) * value : expf(u_last - ch.u[j]) * ch.dt[j] * value;
  };
  auto load_right = [&](int j, int n) {  // (j, n), adjacent in n
    return n0 + n < N ? to_float(right[v.bc_offset(b, ch.start + j, ch.g) + n0 + n]) : 0.f;
  };
  float acc[4][4];
  zero(acc);
  tile_multiply<false, true>(acc, ch.len, load_left, load_right, s);
  float* state = out + v.state_offset(b, c, h);
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) {
      const int64_t p = p0 + tile_row(r), n = n0 + tile_col(cc);
      if (p < P && n < N) state[p * N + n] = acc[r][cc];
    }
}

// ---- 3. passing the states from chunk to chunk ----------------------------------------

// For each (batch, head, p, n), walks the chunks (last to first when reverse) and
// turns states[c], what chunk c adds, into the running value before it:
//   running = initial;  for each c: states[c], running = running, decay_c running + states[c]
// with decay_c = exp(u_last of chunk c); final_out gets the last running value. The
// forward direction gives the states entering the chunks and the final state; the
// reverse direction, fed with what each chunk adds to the state gradient, gives the
// gradient of the state leaving each chunk and of the initial state.
template <class V>
__global__ void state_passing_kernel(View<V> v, float* states, const float* initial, float* final_out, bool reverse) {
  const int64_t size = v.s.head_dim * v.s.d_state;
  const int64_t element = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (element >= v.s.batch * v.s.heads * size) return;
  const int64_t pn = element % size, h = (element / size) % v.s.heads, b = element / size / v.s.heads;
  const int64_t chunks = v.s.chunks();
  float running = initial ? initial[element] : 0.f;
  for (int64_t step = 0; step < chunks; ++step) {
    const int64_t c = reverse ? chunks - 1 - step : step;
    float& slot = states[v.state_offset(b, c, h) + pn];
    const float added = slot;
    slot = running;
    const int64_t last = smaller((c + 1) * v.s.chunk_size, v.s.length) - 1;
    running = expf(v.u[v.row(b, h) + last]) * running + added;
  }
  if (final_out) final_out[element] = running;
}

// ---- 4. the output of each chunk --------------------------------------------------------

// y_i - D x_i = exp(u_i) S_in C_i + sum_{j <= i} exp(u_i - u_j) dt_j (C_i . B_j) x_j.
// kRowDot false: writes y. kRowDot true: writes r_i = dy_i . (y_i - D x_i) to
// row_dot (batch, heads, length). Grid (batch * chunks * heads, row tiles of a chunk).
template <class V, bool kRowDot>
__global__ void __launch_bounds__(kThreads) chunk_output_kernel(View<V> v, const V* dy, V* y, float* row_dot) {
  __shared__ TileShared s;
  __shared__ DecayMatrix m;
  int64_t b, c, h;
  split_block_index(v, v.s.heads, b, c, h);
  const ChunkPosition ch = chunk_position(v, b, c, h);
  const int i0 = blockIdx.y * kTile;
  if (i0 >= ch.len) return;
  const int64_t P = v.s.head_dim, N = v.s.d_state;
  const float* S_in = v.states + v.state_offset(b, c, h);
  const float D = v.D ? v.D[h] : 0.f;
  auto C_at = [&](int i, int n) { return to_float(v.C[v.bc_offset(b, ch.start + i, ch.g) + n]); };
  auto B_at = [&](int j, int n) { return to_float(v.B[v.bc_offset(b, ch.start + j, ch.g) + n]); };
  float row_sum[4] = {0.f, 0.f, 0.f, 0.f};

  for (int64_t p0 = 0; p0 < P; p0 += kTile) {
    float acc[4][4];
    zero(acc);
    // exp(u_i) C_i (64 x N) times S_in^T (N x 64 columns of P).
    auto scaled_C = [&](int i, int n) { return i0 + i < ch.len ? expf(ch.u[i0 + i]) * C_at(i0 + i, n) : 0.f; };
    auto state_T = [&](int n, int p) { return p0 + p < P ? S_in[(p0 + p) * N + n] : 0.f; };
    tile_multiply<true, false>(acc, static_cast<int>(N), scaled_C, state_T, s);

    for (int j0 = 0; j0 <= i0; j0 += kTile) {
      float cb[4][4];
      zero(cb);
      auto C_rows = [&](int i, int n) { return i0 + i < ch.len ? C_at(i0 + i, n) : 0.f; };
      auto B_T = [&](int n, int j) { return j0 + j < ch.len ? B_at(j0 + j, n) : 0.f; };
      tile_multiply<true, false>(cb, static_cast<int>(N), C_rows, B_T, s);
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) {
          const int i = i0 + tile_row(r), j = j0 + tile_col(cc);
          m[tile_row(r)][tile_col(cc)] = j <= i && i < ch.len ? expf(ch.u[i] - ch.u[j]) * ch.dt[j] * cb[r][cc] : 0.f;
        }
      __syncthreads();
      auto x_rows = [&](int j, int p) {
        return j0 + j < ch.len && p0 + p < P ? to_float(v.x[v.token(b, ch.start + j0 + j, h) * P + p0 + p]) : 0.f;
      };
      tile_multiply_by_decay<true>(acc, m, x_rows, s);
    }

#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = i0 + tile_row(r);
      if (i >= ch.len) continue;
      const int64_t offset = v.token(b, ch.start + i, h) * P;
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        const int64_t p = p0 + tile_col(cc);
        if (p >= P) continue;
        if constexpr (kRowDot)
          row_sum[r] += to_float(dy[offset + p]) * acc[r][cc];
        else
          y[offset + p] = from_float<V>(acc[r][cc] + D * to_float(v.x[offset + p]));
      }
    }
  }
  if constexpr (kRowDot) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float total = sum_over_row_threads(row_sum[r]);
      const int i = i0 + tile_row(r);
      if (threadIdx.x % 16 == 0 && i < ch.len) row_dot[v.row(b, h) + ch.start + i] = total;
    }
  }
}

// ---- 7. dx and the row dots of dt ---------------------------------------------------------

// dx~_j = exp(u_last - u_j) dS_out B_j + sum_{i >= j} exp(u_i - u_j) (B_j . C_i) dy_i;
// writes dx_j = dt_j dx~_j + D dy_j, q_j = x_j . dx~_j and e_j = x_j . dy_j (q, e:
// (batch, heads, length)). grad_states: the gradient of the state leaving each chunk.
// Grid (batch * chunks * heads, row tiles of a chunk).
template <class V>
__global__ void __launch_bounds__(kThreads)
    chunk_dx_kernel(View<V> v, const V* dy, const float* grad_states, V* dx, float* q, float* e) {
  __shared__ TileShared s;
  __shared__ DecayMatrix m;
  int64_t b, c, h;
  split_block_index(v, v.s.heads, b, c, h);
  const ChunkPosition ch = chunk_position(v, b, c, h);
  const int j0 = blockIdx.y * kTile;
  if (j0 >= ch.len) return;
  const int64_t P = v.s.head_dim, N = v.s.d_state;
  const float* dS_out = grad_states + v.state_offset(b, c, h);
  const float D = v.D ? v.D[h] : 0.f, u_last = ch.u_last();
  auto B_at = [&](int j, int n) { return to_float(v.B[v.bc_offset(b, ch.start + j, ch.g) + n]); };
  auto C_at = [&](int i, int n) { return to_float(v.C[v.bc_offset(b, ch.start + i, ch.g) + n]); };
  float q_sum[4] = {0.f, 0.f, 0.f, 0.f}, e_sum[4] = {0.f, 0.f, 0.f, 0.f};

  for (int64_t p0 = 0; p0 < P; p0 += kTile) {
    float acc[4][4];
    zero(acc);
    auto scaled_B = [&](int j, int n) { return j0 + j < ch.len ? expf(u_last - ch.u[j0 + j]) * B_at(j0 + j, n) : 0.f; };
    auto grad_state_T = [&](int n, int p) { return p0 + p < P ? dS_out[(p0 + p) * N + n] : 0.f; };
    tile_multiply<true, false>(acc, static_cast<int>(N), scaled_B, grad_state_T, s);

    for (int i0 = j0; i0 < ch.len; i0 += kTile) {
      float bc[4][4];
      zero(bc);
      auto B_rows = [&](int j, int n) { return j0 + j < ch.len ? B_at(j0 + j, n) : 0.f; };
      auto C_T = [&](int n, int i) { return i0 + i < ch.len ? C_at(i0 + i, n) : 0.f; };
      tile_multiply<true, false>(bc, static_cast<int>(N), B_rows, C_T, s);
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) {
          const int j = j0 + tile_row(r), i = i0 + tile_col(cc);
          m[tile_row(r)][tile_col(cc)] = i >= j && i < ch.len ? expf(ch.u[i] - ch.u[j]) * bc[r][cc] : 0.f;
        }
      __syncthreads();
      auto dy_rows = [&](int i, int p) {
        return i0 + i < ch.len && p0 + p < P ? to_float(dy[v.token(b, ch.start + i0 + i, h) * P + p0 + p]) : 0.f;
      };
      tile_multiply_by_decay<true>(acc, m, dy_rows, s);
    }

#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int j = j0 + tile_row(r);
      if (j >= ch.len) continue;
      const int64_t offset = v.token(b, ch.start + j, h) * P;
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        const int64_t p = p0 + tile_col(cc);
        if (p >= P) continue;
        const float x = to_float(v.x[offset + p]), grad = to_float(dy[offset + p]);
        dx[offset + p] = from_float<V>(ch.dt[j] * acc[r][cc] + D * grad);
        q_sum[r] += x * acc[r][cc];
        e_sum[r] += x * grad;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const float q_total = sum_over_row_threads(q_sum[r]), e_total = sum_over_row_threads(e_sum[r]);
    const int j = j0 + tile_row(r);
    if (threadIdx.x % 16 == 0 && j < ch.len) {
      q[v.row(b, h) + ch.start + j] = q_total;
      e[v.row(b, h) + ch.start + j] = e_total;
    }
  }
}

// ---- 8. how the decay of a whole chunk moves the state it passes on --------------------

// out[(b, h, c)] = <dS_out[c], S_out[c]> with S_out[c] the state entering chunk c + 1
// (the final state for the last chunk). Grid (batch * chunks * heads).
template <class V>
__global__ void __launch_bounds__(kThreads)
    state_dot_kernel(View<V> v, const float* grad_states, const float* final_state, float* out) {
  __shared__ float warp_sums[kThreads / 32];
  int64_t b, c, h;
  split_block_index(v, v.s.heads, b, c, h);
  const int64_t size = v.s.head_dim * v.s.d_state;
  const float* dS_out = grad_states + v.state_offset(b, c, h);
  const float* S_out =
      c + 1 < v.s.chunks() ? v.states + v.state_offset(b, c + 1, h) : final_state + (b * v.s.heads + h) * size;
  float sum = 0.f;
  for (int64_t k = threadIdx.x; k < size; k += kThreads) sum += dS_out[k] * S_out[k];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullMask, sum, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    out[(b * v.s.heads + h) * v.s.chunks() + c] = total;
  }
}

// ---- 9. dt, and the partial sums of dA, dD and ddt_bias -----------------------------------

// One warp per (batch, head, chunk). row_dot, q, e: (batch, heads, length);
// chunk_dot: (batch, heads, chunks); partials (3, heads, batch, chunks): dA, dD, ddt_bias.
template <class V>
__global__ void dt_backward_kernel(View<V> v, const float* row_dot, const float* q, const float* e,
                                   const float* chunk_dot, V* ddt, float* partials) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerScanBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t chunks = v.s.chunks();
  if (warp >= v.s.batch * v.s.heads * chunks) return;
  const int64_t c = warp % chunks, h = (warp / chunks) % v.s.heads, b = warp / chunks / v.s.heads;
  const ChunkPosition ch = chunk_position(v, b, c, h);
  const int64_t row = v.row(b, h) + ch.start;
  const float A = v.A[h], bias = v.dt_bias ? v.dt_bias[h] : 0.f;
  const float state_term = chunk_dot[(b * v.s.heads + h) * chunks + c];
  float carry = 0.f, dA = 0.f, dD = 0.f, ddt_bias = 0.f;
  // da_i = sum_{k >= i} du_k: per 32 positions from the last, a suffix sum over the
  // lanes plus what the later positions carry.
  for (int base = (ch.len - 1) / 32 * 32; base >= 0; base -= 32) {
    const int i = base + lane;
    const bool valid = i < ch.len;
    float du = 0.f;
    if (valid) du = row_dot[row + i] - ch.dt[i] * q[row + i] + (i == ch.len - 1 ? state_term : 0.f);
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const float after = __shfl_down_sync(kFullMask, du, offset);
      if (lane + offset < 32) du += after;
    }
    const float da = du + carry;
    carry = __shfl_sync(kFullMask, da, 0);
    if (valid) {
      float grad = q[row + i] + A * da;
      dA += ch.dt[i] * da;
      if (v.s.dt_softplus) grad *= softplus_derivative(to_float(v.dt[v.token(b, ch.start + i, h)]) + bias);
      ddt[v.token(b, ch.start + i, h)] = from_float<V>(grad);
      ddt_bias += grad;
      dD += e[row + i];
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    dA += __shfl_xor_sync(kFullMask, dA, offset);
    dD += __shfl_xor_sync(kFullMask, dD, offset);
    ddt_bias += __shfl_xor_sync(kFullMask, ddt_bias, offset);
  }
  if (lane == 0) {
    const int64_t stride = v.s.heads * v.s.batch * chunks, slot = (h * v.s.batch + b) * chunks + c;
    partials[slot] = dA;
    partials[stride + slot] = dD;
    partials[2 * stride + slot] = ddt_bias;
  }
}

// One block per head: dA, dD, ddt_bias = the sums of its partials over (batch, chunk).
__global__ void __launch_bounds__(kThreads)
    parameter_sums_kernel(const float* partials, int64_t heads, int64_t per_head, float* dA, float* dD,
                          float* ddt_bias) {
  __shared__ float warp_sums[kThreads / 32];
  const int64_t h = blockIdx.x;
  float* outputs[3] = {dA, dD, ddt_bias};
  for (int k = 0; k < 3; ++k) {
    const float* values = partials + (k * heads + h) * per_head;
    float sum = 0.f;
    for (int64_t i = threadIdx.x; i < per_head; i += kThreads) sum += values[i];
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullMask, sum, offset);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0 && outputs[k]) {
      float total = 0.f;
      for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
      outputs[k][h] = total;
    }
    __syncthreads();
  }
}

// ---- 10. dC and dB, summed over the heads of a group --------------------------------------

// dC_i = sum_h [ exp(u_i) S_in^T dy_i + sum_{j <= i} exp(u_i - u_j) dt_j (dy_i . x_j) B_j ].
// Grid (batch * chunks * groups, row tiles of a chunk, N tiles).
template <class V>
__global__ void __launch_bounds__(kThreads) chunk_dC_kernel(View<V> v, const V* dy, V* dC) {
  __shared__ TileShared s;
  __shared__ DecayMatrix m;
  int64_t b, c, g;
  split_block_index(v, v.s.groups, b, c, g);
  const int i0 = blockIdx.y * kTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.z) * kTile;
  const int64_t P = v.s.head_dim, N = v.s.d_state, per_group = v.s.heads_per_group();
  const int len = static_cast<int>(smaller(v.s.chunk_size, v.s.length - c * v.s.chunk_size));
  if (i0 >= len) return;
  float acc[4][4];
  zero(acc);
  for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
    const ChunkPosition ch = chunk_position(v, b, c, h);
    const float* S_in = v.states + v.state_offset(b, c, h);
    auto dy_at = [&](int i, int p) { return to_float(dy[v.token(b, ch.start + i, h) * P + p]); };
    auto scaled_dy = [&](int i, int p) { return i0 + i < len ? expf(ch.u[i0 + i]) * dy_at(i0 + i, p) : 0.f; };
    auto state = [&](int p, int n) { return n0 + n < N ? S_in[p * N + n0 + n] : 0.f; };
    tile_multiply<true, true>(acc, static_cast<int>(P), scaled_dy, state, s);

    for (int j0 = 0; j0 <= i0; j0 += kTile) {
      float dyx[4][4];
      zero(dyx);
      auto dy_rows = [&](int i, int p) { return i0 + i < len ? dy_at(i0 + i, p) : 0.f; };
      auto x_T = [&](int p, int j) {
        return j0 + j < len ? to_float(v.x[v.token(b, ch.start + j0 + j, h) * P + p]) : 0.f;
      };
      tile_multiply<true, false>(dyx, static_cast<int>(P), dy_rows, x_T, s);
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) {
          const int i = i0 + tile_row(r), j = j0 + tile_col(cc);
          m[tile_row(r)][tile_col(cc)] = j <= i && i < len ? expf(ch.u[i] - ch.u[j]) * ch.dt[j] * dyx[r][cc] : 0.f;
        }
      __syncthreads();
      auto B_rows = [&](int j, int n) {
        return j0 + j < len && n0 + n < N ? to_float(v.B[v.bc_offset(b, ch.start + j0 + j, g) + n0 + n]) : 0.f;
      };
      tile_multiply_by_decay<true>(acc, m, B_rows, s);
    }
  }
  const int64_t start = c * v.s.chunk_size;
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) {
      const int i = i0 + tile_row(r);
      const int64_t n = n0 + tile_col(cc);
      if (i < len && n < N) dC[v.bc_offset(b, start + i, g) + n] = from_float<V>(acc[r][cc]);
    }
}

// dB_j = sum_h [ exp(u_last - u_j) dt_j dS_out^T x_j + sum_{i >= j} exp(u_i - u_j) dt_j (dy_i . x_j) C_i ].
// Grid (batch * chunks * groups, row tiles of a chunk, N tiles).
template <class V>
__global__ void __launch_bounds__(kThreads) chunk_dB_kernel(View<V> v, const V* dy, const float* grad_states, V* dB) {
  __shared__ TileShared s;
  __shared__ DecayMatrix m;
  int64_t b, c, g;
  split_block_index(v, v.s.groups, b, c, g);
  const int j0 = blockIdx.y * kTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.z) * kTile;
  const int64_t P = v.s.head_dim, N = v.s.d_state, per_group = v.s.heads_per_group();
  const int len = static_cast<int>(smaller(v.s.chunk_size, v.s.length - c * v.s.chunk_size));
  if (j0 >= len) return;
  float acc[4][4];
  zero(acc);
  for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
    const ChunkPosition ch = chunk_position(v, b, c, h);
    const float* dS_out = grad_states + v.state_offset(b, c, h);
    const float u_last = ch.u_last();
    auto x_at = [&](int j, int p) { return to_float(v.x[v.token(b, ch.start + j, h) * P + p]); };
    auto scaled_x = [&](int j, int p) {
      return j0 + j < len ? expf(u_last - ch.u[j0 + j]) * ch.dt[j0 + j] * x_at(j0 + j, p) : 0.f;
    };
    auto grad_state = [&](int p, int n) { return n0 + n < N ? dS_out[p * N + n0 + n] : 0.f; };
    tile_multiply<true, true>(acc, static_cast<int>(P), scaled_x, grad_state, s);

    for (int i0 = j0; i0 < len; i0 += kTile) {
      float xdy[4][4];
      zero(xdy);
      auto x_rows = [&](int j, int p) { return j0 + j < len ? x_at(j0 + j, p) : 0.f; };
      auto dy_T = [&](int p, int i) {
        return i0 + i < len ? to_float(dy[v.token(b, ch.start + i0 + i, h) * P + p]) : 0.f;
      };
      tile_multiply<true, false>(xdy, static_cast<int>(P), x_rows, dy_T, s);
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) {
          const int j = j0 + tile_row(r), i = i0 + tile_col(cc);
          m[tile_row(r)][tile_col(cc)] =
              i >= j && i < len && j < len ? expf(ch.u[i] - ch.u[j]) * ch.dt[j] * xdy[r][cc] : 0.f;
        }
      __syncthreads();
      auto C_rows = [&](int i, int n) {
        return i0 + i < len && n0 + n < N ? to_float(v.C[v.bc_offset(b, ch.start + i0 + i, g) + n0 + n]) : 0.f;
      };
      tile_multiply_by_decay<true>(acc, m, C_rows, s);
    }
  }
  const int64_t start = c * v.s.chunk_size;
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) {
      const int j = j0 + tile_row(r);
      const int64_t n = n0 + tile_col(cc);
      if (j < len && n < N) dB[v.bc_offset(b, start + j, g) + n] = from_float<V>(acc[r][cc]);
    }
}

// ---- launchers ------------------------------------------------------------------------------

unsigned blocks_for(int64_t n, int64_t per_block) { return static_cast<unsigned>((n + per_block - 1) / per_block); }
unsigned tiles(int64_t n) { return static_cast<unsigned>((n + kTile - 1) / kTile); }

int64_t token_values(const SsdSizes& s) { return s.batch * s.heads * s.length; }
int64_t chunk_state_values(const SsdSizes& s) { return s.batch * s.chunks() * s.heads * s.head_dim * s.d_state; }
int64_t state_values(const SsdSizes& s) { return s.batch * s.heads * s.head_dim * s.d_state; }

template <class V>
View<V> make_view(const SsdSizes& sizes, const SsdInputs<void, float>& in, float* workspace) {
  View<V> v{sizes,
            static_cast<const V*>(in.x),
            static_cast<const V*>(in.dt),
            in.A,
            static_cast<const V*>(in.B),
            static_cast<const V*>(in.C),
            in.D,
            in.dt_bias,
            in.initial_state,
            workspace,
            workspace + token_values(sizes),
            workspace + 2 * token_values(sizes)};
  return v;
}

// Kernels 1-3: dt, u and the states entering the chunks; the final state when asked for.
template <class V>
void chunk_states(const View<V>& v, float* final_state) {
  const SsdSizes& s = v.s;
  const int64_t scan_warps = s.batch * s.heads * s.chunks();
  dt_cumsum_kernel<V><<<blocks_for(scan_warps, kWarpsPerScanBlock), kWarpsPerScanBlock * 32, 0, cuda::stream()>>>(v);
  STRATA_CUDA_CHECK_LAUNCH("ssd dt_cumsum_kernel");
  const dim3 state_grid(static_cast<unsigned>(s.batch * s.chunks() * s.heads), tiles(s.head_dim), tiles(s.d_state));
  chunk_state_kernel<V, false><<<state_grid, kThreads, 0, cuda::stream()>>>(v, v.x, v.B, v.states);
  STRATA_CUDA_CHECK_LAUNCH("ssd chunk_state_kernel");
  state_passing_kernel<V><<<blocks_for(state_values(s), kThreads), kThreads, 0, cuda::stream()>>>(
      v, v.states, v.initial_state, final_state, false);
  STRATA_CUDA_CHECK_LAUNCH("ssd state_passing_kernel");
}

template <class V>
void forward(const SsdSizes& sizes, const SsdInputs<void, float>& inputs, void* y, float* final_state,
             float* workspace) {
  const View<V> v = make_view<V>(sizes, inputs, workspace);
  chunk_states(v, final_state);
  const dim3 grid(static_cast<unsigned>(sizes.batch * sizes.chunks() * sizes.heads),
                  tiles(std::min(sizes.chunk_size, sizes.length)));
  chunk_output_kernel<V, false><<<grid, kThreads, 0, cuda::stream()>>>(v, nullptr, static_cast<V*>(y), nullptr);
  STRATA_CUDA_CHECK_LAUNCH("ssd chunk_output_kernel");
}

template <class V>
void backward(const SsdSizes& s, const SsdInputs<void, float>& inputs, const void* grad_y_raw,
              const float* grad_final_state, const SsdGrads<void, float>& grads, float* workspace) {
  const View<V> v = make_view<V>(s, inputs, workspace);
  float* final_state = workspace + ssd_forward_cuda_workspace(s);
  float* grad_states = final_state + state_values(s);
  float* row_dot = grad_states + chunk_state_values(s);
  float* q = row_dot + token_values(s);
  float* e = q + token_values(s);
  float* chunk_dot = e + token_values(s);
  float* partials = chunk_dot + s.batch * s.heads * s.chunks();
  const V* dy = static_cast<const V*>(grad_y_raw);
  const int64_t chunks = s.chunks();
  const unsigned chunk_heads = static_cast<unsigned>(s.batch * chunks * s.heads);
  const unsigned chunk_groups = static_cast<unsigned>(s.batch * chunks * s.groups);
  const unsigned row_tiles = tiles(std::min(s.chunk_size, s.length));

  chunk_states(v, final_state);
  const dim3 state_grid(chunk_heads, tiles(s.head_dim), tiles(s.d_state));
  chunk_state_kernel<V, true><<<state_grid, kThreads, 0, cuda::stream()>>>(v, dy, v.C, grad_states);
  STRATA_CUDA_CHECK_LAUNCH("ssd chunk_state_kernel (adjoint)");
  state_passing_kernel<V><<<blocks_for(state_values(s), kThreads), kThreads, 0, cuda::stream()>>>(
      v, grad_states, grad_final_state, grads.dinitial_state, true);
  STRATA_CUDA_CHECK_LAUNCH("ssd state_passing_kernel (reverse)");

  chunk_output_kernel<V, true><<<dim3(chunk_heads, row_tiles), kThreads, 0, cuda::stream()>>>(v, dy, nullptr, row_dot);
  STRATA_CUDA_CHECK_LAUNCH("ssd chunk_output_kernel (row dots)");
  chunk_dx_kernel<V><<<dim3(chunk_heads, row_tiles), kThreads, 0, cuda::stream()>>>(v, dy, grad_states,
                                                                                    static_cast<V*>(grads.dx), q, e);
  STRATA_CUDA_CHECK_LAUNCH("ssd chunk_dx_kernel");
  state_dot_kernel<V><<<chunk_heads, kThreads, 0, cuda::stream()>>>(v, grad_states, final_state, chunk_dot);
  STRATA_CUDA_CHECK_LAUNCH("ssd state_dot_kernel");
  const int64_t scan_warps = s.batch * s.heads * chunks;
  dt_backward_kernel<V><<<blocks_for(scan_warps, kWarpsPerScanBlock), kWarpsPerScanBlock * 32, 0, cuda::stream()>>>(
      v, row_dot, q, e, chunk_dot, static_cast<V*>(grads.ddt), partials);
  STRATA_CUDA_CHECK_LAUNCH("ssd dt_backward_kernel");
  parameter_sums_kernel<<<static_cast<unsigned>(s.heads), kThreads, 0, cuda::stream()>>>(
      partials, s.heads, s.batch * chunks, grads.dA, grads.dD, grads.ddt_bias);
  STRATA_CUDA_CHECK_LAUNCH("ssd parameter_sums_kernel");

  const dim3 bc_grid(chunk_groups, row_tiles, tiles(s.d_state));
  chunk_dC_kernel<V><<<bc_grid, kThreads, 0, cuda::stream()>>>(v, dy, static_cast<V*>(grads.dC));
  STRATA_CUDA_CHECK_LAUNCH("ssd chunk_dC_kernel");
  chunk_dB_kernel<V><<<bc_grid, kThreads, 0, cuda::stream()>>>(v, dy, grad_states, static_cast<V*>(grads.dB));
  STRATA_CUDA_CHECK_LAUNCH("ssd chunk_dB_kernel");
}

}  // namespace

int64_t ssd_forward_cuda_workspace(const SsdSizes& sizes) {
  return 2 * token_values(sizes) + chunk_state_values(sizes);  // dt, u, states
}

int64_t ssd_backward_cuda_workspace(const SsdSizes& sizes) {
  // The forward's, then final state, state gradients, r, q, e, chunk dots, partials.
  return ssd_forward_cuda_workspace(sizes) + state_values(sizes) + chunk_state_values(sizes) + 3 * token_values(sizes) +
         sizes.batch * sizes.heads * sizes.chunks() + 3 * sizes.heads * sizes.batch * sizes.chunks();
}

bool ssd_forward_cuda(DType dtype, const SsdSizes& sizes, const SsdInputs<void, float>& inputs, void* y,
                      float* final_state, float* workspace) {
  switch (dtype) {
    case DType::Float32: forward<float>(sizes, inputs, y, final_state, workspace); return true;
    case DType::BFloat16: forward<__nv_bfloat16>(sizes, inputs, y, final_state, workspace); return true;
    default: return false;
  }
}

bool ssd_backward_cuda(DType dtype, const SsdSizes& sizes, const SsdInputs<void, float>& inputs, const void* grad_y,
                       const float* grad_final_state, const SsdGrads<void, float>& grads, float* workspace) {
  switch (dtype) {
    case DType::Float32: backward<float>(sizes, inputs, grad_y, grad_final_state, grads, workspace); return true;
    case DType::BFloat16:
      backward<__nv_bfloat16>(sizes, inputs, grad_y, grad_final_state, grads, workspace);
      return true;
    default: return false;
  }
}

}  // namespace strata::kernels
