// Fused attention on CUDA, dense or block-sparse (equations in attention_args.h).
//
// Two kernel pairs share the tile walk (which key tiles a query tile visits, and
// back), so a block list only changes which tiles are visited:
//
// Fast path: bfloat16 and float16 with head_dim 64 or 128 (16-byte aligned rows),
// tensor cores through mma.sync m16n8k16 with float32 accumulation.
//  - forward, one block of 4 warps per (batch, head, 128 query rows): Q and two
//    stages of (K, V) tiles of 64 keys in shared memory (rows padded by 16 bytes, so
//    ldmatrix is free of bank conflicts), loaded by cp.async: the next tile arrives
//    while this one is computed, with one barrier per tile. Each warp owns 32 query
//    rows (two m16 tiles), so every K and V fragment read from shared memory feeds 4
//    mma: at head_dim 128, 256 bytes of ldmatrix per mma for S = Q K^T and 128 for
//    P V (320 and 256 with 16 rows per warp). The warp's scores, running maximum and
//    sum (online softmax in log2 units, exp2f) and its (32 x head_dim) output stay in
//    registers; at head_dim 128 the softmax steps over 32 keys at a time, as o takes
//    128 registers. P feeds P V straight from the score registers (rounded to the
//    input dtype, as FlashAttention-2 does). The sink enters as the initial maximum
//    with weight 1. Causal: a warp skips the keys that none of its rows sees, and
//    masks per entry only the steps that cross its diagonal.
//    A bias or a key mask (per-entry reads that the 128-row kernel has no registers
//    for), and a block list of 64-row blocks, take a 64-row kernel: 4 warps of 16
//    rows, one K and one V buffer (V arrives while S is computed, the next K while
//    P V is).
//  - backward, one block of 8 warps per (batch, kv head, 64 keys): K and V stay in
//    shared memory; for every head of the group and every query tile that sees
//    these keys, Q, dO, lse and delta are loaded (two stages: the next tile's loads
//    are issued after the first of the tile's two barriers and land while this one
//    is computed), S and dP = dO V^T are recomputed (each warp 16 rows x 32 keys),
//    P and dS are staged in shared memory (input dtype), and each warp adds its 16
//    keys x head_dim/2 slice of dV += P^T dO and dK += dS^T Q in registers. dQ += dS K
//    goes to a float32 buffer by atomicAdd (its rows are shared by all key tiles),
//    converted to the input dtype at the end; so dQ's summation order, and its last
//    bits, vary from run to run. dK and dV are written once per key tile, without
//    atomics. Tiles without bias, key mask or edge take an elementwise path without
//    per-entry indices.
//
// Generic path: float32 inputs, and other head dims up to 256, on CUDA cores:
//  - forward, 256 threads per (batch, head, 32 query rows), 8 lanes per row: Q and
//    one K and V tile of 32 keys as float32 in shared memory, the 8 lanes of a row
//    split the 32 scores and the head_dim outputs;
//  - backward, 256 threads per (batch, kv head, 32 keys), 8 lanes per key, the same
//    walk and the same dQ atomics as the fast path.
//
// Both backward passes read delta_i = dO_i . O_i - dlse_i from a row kernel that
// runs first, and recompute P from the saved lse (never stored).
//
// Dynamic key mask (DMA, AttentionKeyMask): the walks also skip the key tiles whose
// largest keep_end (block_keep_end, per 32 keys) is at or before the first query's
// end, and the query tiles after the last query that keeps any key of the tile;
// inside a visited tile the dropped keys are masked per element like causal ones.
// Its bias gradient is summed over the query rows in registers, then over the
// warps of the key tile in shared memory, and written once per key.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/attention/attention_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "kernels/common/tensor_core.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kMaxGridY = 65535;

// ---- element conversion ------------------------------------------------------------

// Two floats as one 32-bit register of two 16-bit values, the first in the low half
// (the element with the lower index, as mma.sync and memory expect).
template <class T>
__device__ __forceinline__ uint32_t pack_pair(float first, float second);
template <>
__device__ __forceinline__ uint32_t pack_pair<__nv_bfloat16>(float first, float second) {
  __nv_bfloat162 pair = __floats2bfloat162_rn(first, second);
  return *reinterpret_cast<uint32_t*>(&pair);
}
template <>
__device__ __forceinline__ uint32_t pack_pair<__half>(float first, float second) {
  __half2 pair = __floats2half2_rn(first, second);
  return *reinterpret_cast<uint32_t*>(&pair);
}

// ---- the tile walk -------------------------------------------------------------------

// The key tiles (kTile keys each) that query rows [first_row, last_row] of head h
// visit, in increasing order: items 0 .. count-1, where tile(n) < 0 marks an item
// to skip (past the keys, or after every key the rows may see). Dense attention
// walks every tile up to the causal limit; a block list walks the tiles of the key
// blocks listed for the rows' query block.
template <int kTile>
struct KeyTileWalk {
  const int32_t* column_indices;  // null: dense
  int64_t key_tiles, last_key, begin = 0, count = 0;
  int tiles_per_block = 1;
  const int32_t* block_keep_end = nullptr;  // this (batch, kv head)'s, with a key mask
  int64_t keep_blocks = 0, first_end = 0;

  __device__ KeyTileWalk(const AttentionSizes& s, const AttentionBlocks& b, int64_t h, int64_t first_row,
                         int64_t last_row, const AttentionKeyMask<float>& mask, int64_t batch)
      : column_indices(b.sparse() ? b.column_indices : nullptr) {
    if (mask.active()) {
      keep_blocks = (s.length_k + kKeepEndBlock - 1) / kKeepEndBlock;
      block_keep_end = mask.block_keep_end + (batch * s.kv_heads + h / s.group()) * keep_blocks;
      first_end = first_row + s.causal_offset();
    }
    key_tiles = (s.length_k + kTile - 1) / kTile;
    last_key = s.causal ? min(s.length_k - 1, last_row + s.causal_offset()) : s.length_k - 1;
    if (b.sparse()) {
      tiles_per_block = static_cast<int>(b.block_size / kTile);
      const int64_t row = b.row(h, first_row / b.block_size);
      begin = b.row_offsets[row];
      count = (b.row_offsets[row + 1] - begin) * tiles_per_block;
    } else {
      count = last_key < 0 ? 0 : last_key / kTile + 1;
    }
  }
  __device__ int64_t tile(int64_t n) const {
    const int64_t t = column_indices
                          ? int64_t{column_indices[begin + n / tiles_per_block]} * tiles_per_block + n % tiles_per_block
                          : n;
    if (t >= key_tiles || t * kTile > last_key) return -1;
    if (block_keep_end) {  // skipped when every key of the tile is dropped before the first row's end
      int32_t keep_end = 0;
      for (int64_t k = t * (kTile / kKeepEndBlock); k < min(keep_blocks, (t + 1) * (kTile / kKeepEndBlock)); ++k)
        keep_end = max(keep_end, block_keep_end[k]);
      if (keep_end <= first_end) return -1;
    }
    return t;
  }
  // The first item at or after n that is not skipped, or count.
  __device__ int64_t next(int64_t n) const {
    while (n < count && tile(n) < 0) ++n;
    return n;
  }
};

// The query tiles (kTile rows each) of head h that see any of the keys
// [first_key, last_key], in increasing order, with the same conventions.
template <int kTile>
struct QueryTileWalk {
  const int32_t* row_indices;  // null: dense
  int64_t query_tiles, first_row, begin = 0, count = 0;
  int64_t last_row = INT64_MAX;  // with a key mask: the last row that keeps a key of the tile
  int tiles_per_block = 1;

  __device__ QueryTileWalk(const AttentionSizes& s, const AttentionBlocks& b, int64_t h, int64_t first_key,
                           const AttentionKeyMask<float>& mask, int64_t batch)
      : row_indices(b.sparse() ? b.row_indices : nullptr) {
    query_tiles = (s.length_q + kTile - 1) / kTile;
    first_row = s.causal ? max(int64_t{0}, first_key - s.causal_offset()) : 0;  // the first row that sees first_key
    if (mask.active()) {
      const int64_t keep_blocks = (s.length_k + kKeepEndBlock - 1) / kKeepEndBlock;
      const int32_t* block_keep_end = mask.block_keep_end + (batch * s.kv_heads + h / s.group()) * keep_blocks;
      int32_t keep_end = 0;
      for (int64_t k = first_key / kKeepEndBlock; k < min(keep_blocks, (first_key + kTile) / kKeepEndBlock); ++k)
        keep_end = max(keep_end, block_keep_end[k]);
      last_row = keep_end - 1 - s.causal_offset();
    }
    if (b.sparse()) {
      tiles_per_block = static_cast<int>(b.block_size / kTile);
      const int64_t column = b.column(h, first_key / b.block_size);
      begin = b.column_offsets[column];
      count = (b.column_offsets[column + 1] - begin) * tiles_per_block;
    } else {
      count = first_row >= s.length_q ? 0 : query_tiles;
    }
  }
  __device__ int64_t tile(int64_t n) const {
    const int64_t t =
        row_indices ? int64_t{row_indices[begin + n / tiles_per_block]} * tiles_per_block + n % tiles_per_block : n;
    return t >= query_tiles || (t + 1) * kTile <= first_row || t * kTile > last_row ? -1 : t;
  }
};

__device__ __forceinline__ bool causally_visible(const AttentionSizes& s, int64_t i, int64_t j) {
  return !s.causal || j <= i + s.causal_offset();
}

// The score of an entry (key j < Lk, row i < Lq) that is visible otherwise, with the
// dynamic key mask: x plus the key's bias where row i keeps key j, else -inf.
__device__ __forceinline__ float key_masked(const AttentionSizes& s, const AttentionKeyMask<float>& mask, int64_t b,
                                            int64_t kv_head, int64_t i, int64_t j, float x, float bias_scale) {
  if (!mask.active()) return x;
  return mask.kept(s, b, kv_head, i, j) ? x + mask.bias[mask.at(s, b, kv_head, j)] * bias_scale : -INFINITY;
}

// ---- delta and the dQ conversion (both paths) ------------------------------------------

// delta_i = dO_i . O_i - dlse_i, one warp per row.
template <class T>
__global__ void attention_delta_kernel(const T* out, const T* grad_out, const float* grad_lse, float* delta,
                                       int64_t rows, int head_dim) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float total = 0.f;
  for (int d = lane; d < head_dim; d += 32)
    total += to_float(out[row * head_dim + d]) * to_float(grad_out[row * head_dim + d]);
  for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
  if (lane == 0) delta[row] = total - (grad_lse ? grad_lse[row] : 0.f);
}

template <class T>
__global__ void attention_dq_kernel(const float* dq_accumulator, T* dq, int64_t n, float scale) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dq[e] = from_float<T>(dq_accumulator[e] * scale);
}

// ---- fast path: mma.sync m16n8k16 -------------------------------------------------------

constexpr int kFastTile = 64;  // keys per tile (both passes), query rows per backward tile
constexpr int kForwardRowsPerWarp = 32;  // two m-tiles, so every K and V fragment feeds 4 mma
constexpr int kFastForwardThreads = 128;
constexpr int kFastForwardRows = kFastForwardThreads / 32 * kForwardRowsPerWarp;
constexpr int kFastForwardBlocksPerSm = 2;  // __launch_bounds__: at most 255 registers per thread
constexpr int kFastRows64Threads = 128;
constexpr int kFastBackwardThreads = 256;
constexpr int kPad = 8;  // 16 bytes of padding per shared-memory row

// Rows [first, first + kRows) of a (rows, kD) matrix into shared memory with row
// stride kD + kPad; rows at or past `rows` become zeros.
template <class T, int kD, int kRows>
__device__ __forceinline__ void load_tile_async(T* shared, const T* global, int64_t first, int64_t rows) {
  constexpr int kChunksPerRow = kD / 8;  // 8 elements of 2 bytes per 16-byte chunk
  for (int c = threadIdx.x; c < kRows * kChunksPerRow; c += blockDim.x) {
    const int r = c / kChunksPerRow, column = (c % kChunksPerRow) * 8;
    const bool valid = first + r < rows;
    copy_async_16(shared + r * (kD + kPad) + column, valid ? global + (first + r) * kD + column : global, valid);
  }
}

// Rows [first, first + kRows) of a (rows, kD) matrix into shared memory as
// load_tile_async does, for a block of exactly kThreads threads: each thread keeps
// one 16-byte column and steps down the rows.
template <class T, int kD, int kRows, int kThreads>
__device__ __forceinline__ void load_rows_async(T* shared, const T* global, int64_t first, int64_t rows) {
  constexpr int kChunksPerRow = kD / 8, kRowsPerPass = kThreads / kChunksPerRow;
  static_assert(kThreads % kChunksPerRow == 0 && kRows % kRowsPerPass == 0);
  const int r0 = threadIdx.x / kChunksPerRow, column = (threadIdx.x % kChunksPerRow) * 8;
  const int64_t remaining = rows - first - r0;  // rows at or past it are zeros
  const T* source = global + (first + r0) * kD + column;
  T* target = shared + r0 * (kD + kPad) + column;
#pragma unroll
  for (int pass = 0; pass < kRows / kRowsPerPass; ++pass) {
    const bool valid = pass * kRowsPerPass < remaining;
    copy_async_16(target + pass * kRowsPerPass * (kD + kPad), valid ? source + pass * kRowsPerPass * kD : global,
                  valid);
  }
}

// Fragment loads for mma m16n8k16 from a row-major tile with row stride `stride`
// (elements). The lane formulas place matrix i of the x4 load where register i of
// the fragment expects it.
//
// A (16 x 16) = tile[row0 .. row0+15][col0 .. col0+15].
template <class T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int stride, int row0, int col0) {
  const int lane = threadIdx.x % 32;
  load_matrix_x4(a, tile + (row0 + lane % 16) * stride + col0 + (lane / 16) * 8);
}
// A (16 x 16) = the transpose of tile[row0 .. row0+15][col0 .. col0+15]: A[m][k] = tile[row0 + k][col0 + m].
template <class T>
__device__ __forceinline__ void load_a_transposed(uint32_t (&a)[4], const T* tile, int stride, int row0, int col0) {
  const int lane = threadIdx.x % 32;
  load_matrix_x4_transposed(a, tile + (row0 + lane % 8 + (lane / 16) * 8) * stride + col0 + ((lane / 8) % 2) * 8);
}
// B for two n-tiles, B[k][n] = tile[n0 + n][k0 + k] (the tile is n-major, like K for Q K^T):
// b[0], b[1] for columns n0 .. n0+7; b[2], b[3] for n0+8 .. n0+15.
template <class T>
__device__ __forceinline__ void load_b_n_major(uint32_t (&b)[4], const T* tile, int stride, int n0, int k0) {
  const int lane = threadIdx.x % 32;
  load_matrix_x4(b, tile + (n0 + lane % 8 + (lane / 16) * 8) * stride + k0 + ((lane / 8) % 2) * 8);
}
// B for two n-tiles, B[k][n] = tile[k0 + k][n0 + n] (the tile is k-major, like V for P V).
template <class T>
__device__ __forceinline__ void load_b_k_major(uint32_t (&b)[4], const T* tile, int stride, int k0, int n0) {
  const int lane = threadIdx.x % 32;
  load_matrix_x4_transposed(b, tile + (k0 + lane % 8 + ((lane / 8) % 2) * 8) * stride + n0 + (lane / 16) * 8);
}

template <int kD>
constexpr size_t fast_forward_shared_bytes() {
  return (size_t{kFastForwardRows} + size_t{4} * kFastTile) * (kD + kPad) * 2;  // Q, 2 stages of K and V
}
template <int kD>
constexpr size_t fast_forward_rows64_shared_bytes() {
  return size_t{3} * kFastTile * (kD + kPad) * 2;  // Q, K, V
}
template <int kD>
constexpr size_t fast_backward_shared_bytes() {
  return size_t{6} * kFastTile * (kD + kPad) * 2           // K, V, 2 stages of Q and dO
         + size_t{2} * kFastTile * (kFastTile + kPad) * 2  // P, dS
         + size_t{4} * kFastTile * 4;                      // 2 stages of lse and delta
}

template <class T, int kD>
__global__ void __launch_bounds__(kFastRows64Threads)
    attention_forward_fast_rows64_kernel(AttentionSizes s, AttentionBlocks blocks, AttentionInputs<void, float> in,
                                         T* out, float* lse) {
  constexpr int kStride = kD + kPad;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  T* q_tile = reinterpret_cast<T*>(shared_bytes);  // 64 rows
  T* k_tile = q_tile + kFastTile * kStride;
  T* v_tile = k_tile + kFastTile * kStride;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t bh = blockIdx.x, b = bh / s.heads, h = bh % s.heads, kv_head = h / s.group();
  // Causal rows near the end see the most keys: start them first.
  const int64_t query_tile = s.causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;
  const int64_t row0 = query_tile * kFastTile;
  const T* q = static_cast<const T*>(in.q) + bh * s.length_q * kD;
  const T* k = static_cast<const T*>(in.k) + (b * s.kv_heads + kv_head) * s.length_k * kD;
  const T* v = static_cast<const T*>(in.v) + (b * s.kv_heads + kv_head) * s.length_k * kD;
  const float scale_log2 = static_cast<float>(s.scale) * kLog2e;
  // This thread's two rows: g and g + 8 of the warp's 16.
  const int64_t rows[2] = {row0 + warp * 16 + g, row0 + warp * 16 + g + 8};

  const KeyTileWalk<kFastTile> walk(s, blocks, h, row0, min(row0 + kFastTile - 1, s.length_q - 1), in.key_mask, b);
  int64_t n = walk.next(0);
  load_tile_async<T, kD, kFastTile>(q_tile, q, row0, s.length_q);
  if (n < walk.count) load_tile_async<T, kD, kFastTile>(k_tile, k, walk.tile(n) * kFastTile, s.length_k);
  copy_async_commit();
  copy_async_wait_all();
  __syncthreads();

  // Running maximum (log2 units) per row, same in the 4 lanes of a row; partial sums
  // per lane, added across the row at the end (the sink's weight 1 in lane t == 0).
  const bool has_sink = in.sinks != nullptr;
  const float sink_log2 = has_sink ? in.sinks[h] * kLog2e : -INFINITY;
  float row_max[2] = {sink_log2, sink_log2};
  float row_sum[2] = {has_sink && t == 0 ? 1.f : 0.f, has_sink && t == 0 ? 1.f : 0.f};
  float o[kD / 8][4];
#pragma unroll
  for (int nt = 0; nt < kD / 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;

  while (n < walk.count) {
    const int64_t key0 = walk.tile(n) * kFastTile;
    load_tile_async<T, kD, kFastTile>(v_tile, v, key0, s.length_k);
    copy_async_commit();

    // S = Q K^T for the warp's 16 rows and the 64 keys: 8 n-tiles of 8 keys.
    float scores[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) scores[nt][0] = scores[nt][1] = scores[nt][2] = scores[nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t a[4];
      load_a(a, q_tile, kStride, warp * 16, ks * 16);
#pragma unroll
      for (int pair = 0; pair < 4; ++pair) {
        uint32_t bk[4];
        load_b_n_major(bk, k_tile, kStride, pair * 16, ks * 16);
        mma_16x8x16<T>(scores[2 * pair], a, bk[0], bk[1]);
        mma_16x8x16<T>(scores[2 * pair + 1], a, bk[2], bk[3]);
      }
    }

    // Scale, bias and mask, in log2 units.
    const bool needs_mask = in.key_mask.active() || key0 + kFastTile > s.length_k ||
                            (s.causal && key0 + kFastTile - 1 > row0 + warp * 16 + s.causal_offset());
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t i = rows[e / 2], j = key0 + nt * 8 + 2 * t + e % 2;
        float x = scores[nt][e] * scale_log2;
        if (in.bias.data && i < s.length_q && j < s.length_k) x += in.bias.at(b, h, i, j) * kLog2e;
        if (needs_mask && (j >= s.length_k || !causally_visible(s, i, j)))
          x = -INFINITY;
        else if (i < s.length_q)
          x = key_masked(s, in.key_mask, b, kv_head, i, j, x, kLog2e);
        scores[nt][e] = x;
      }
    }

    // Online softmax: rescale what was accumulated to the new maximum.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) tile_max = fmaxf(tile_max, fmaxf(scores[nt][2 * r], scores[nt][2 * r + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[r], tile_max);
      // Nothing finite yet: exp2f(-inf - 0) = 0 keeps every p and the (zero) sums at zero.
      const float reference = new_max == -INFINITY ? 0.f : new_max;
      const float correction = exp2f(row_max[r] - reference);
      row_max[r] = new_max;
      row_sum[r] *= correction;
#pragma unroll
      for (int nt = 0; nt < kD / 8; ++nt) {
        o[nt][2 * r] *= correction;
        o[nt][2 * r + 1] *= correction;
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        scores[nt][2 * r] = exp2f(scores[nt][2 * r] - reference);
        scores[nt][2 * r + 1] = exp2f(scores[nt][2 * r + 1] - reference);
        row_sum[r] += scores[nt][2 * r] + scores[nt][2 * r + 1];
      }
    }

    copy_async_wait_all();
    __syncthreads();  // V is in shared memory, and every warp is done with K
    const int64_t next = walk.next(n + 1);
    if (next < walk.count) load_tile_async<T, kD, kFastTile>(k_tile, k, walk.tile(next) * kFastTile, s.length_k);
    copy_async_commit();

    // O += P V: the score registers of n-tiles 2ks and 2ks+1 are the A fragment of k-step ks.
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      const uint32_t a[4] = {pack_pair<T>(scores[2 * ks][0], scores[2 * ks][1]),
                             pack_pair<T>(scores[2 * ks][2], scores[2 * ks][3]),
                             pack_pair<T>(scores[2 * ks + 1][0], scores[2 * ks + 1][1]),
                             pack_pair<T>(scores[2 * ks + 1][2], scores[2 * ks + 1][3])};
#pragma unroll
      for (int pair = 0; pair < kD / 16; ++pair) {
        uint32_t bv[4];
        load_b_k_major(bv, v_tile, kStride, ks * 16, pair * 16);
        mma_16x8x16<T>(o[2 * pair], a, bv[0], bv[1]);
        mma_16x8x16<T>(o[2 * pair + 1], a, bv[2], bv[3]);
      }
    }
    copy_async_wait_all();
    __syncthreads();  // the next K is in shared memory, and every warp is done with V
    n = next;
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = row_sum[r];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const int64_t i = rows[r];
    if (i >= s.length_q) continue;
    const float inverse = total > 0.f ? 1.f / total : 0.f;
    T* out_row = out + (bh * s.length_q + i) * kD;
#pragma unroll
    for (int nt = 0; nt < kD / 8; ++nt)
      *reinterpret_cast<uint32_t*>(out_row + nt * 8 + 2 * t) =
          pack_pair<T>(o[nt][2 * r] * inverse, o[nt][2 * r + 1] * inverse);
    if (t == 0) lse[bh * s.length_q + i] = total > 0.f ? (row_max[r] + log2f(total)) * kLn2 : -INFINITY;
  }
}

template <class T, int kD>
__global__ void __launch_bounds__(kFastForwardThreads, kFastForwardBlocksPerSm)
    attention_forward_fast_kernel(AttentionSizes s, AttentionBlocks blocks, AttentionInputs<void, float> in, T* out,
                                  float* lse) {
  constexpr int kStride = kD + kPad;
  constexpr int kRows = kFastForwardRows;
  constexpr int kTileElements = kFastTile * kStride;
  constexpr int kThreads = kFastForwardThreads;
  // Keys per softmax step: at head_dim 128, o (128 registers) and the scores of 64
  // keys (64) leave too few registers, so each shared-memory tile takes two steps.
  constexpr int kScoreKeys = kD == 128 ? 32 : kFastTile;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  T* q_tile = reinterpret_cast<T*>(shared_bytes);
  T* kv_stages = q_tile + kRows * kStride;  // stage st: K at kv_stages + 2 st kTileElements, V after it

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t bh = blockIdx.x, b = bh / s.heads, h = bh % s.heads, kv_head = h / s.group();
  // Row and key indices fit in int (the launcher checks): 32-bit math inside the key loop.
  const int length_q = static_cast<int>(s.length_q), length_k = static_cast<int>(s.length_k);
  const int causal_offset = length_k - length_q;
  // Causal rows near the end see the most keys: start them first.
  const int query_tile = static_cast<int>(s.causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y);
  const int row0 = query_tile * kRows, warp_row0 = row0 + warp * kForwardRowsPerWarp;
  const T* q = static_cast<const T*>(in.q) + bh * s.length_q * kD;
  const T* k = static_cast<const T*>(in.k) + (b * s.kv_heads + kv_head) * s.length_k * kD;
  const T* v = static_cast<const T*>(in.v) + (b * s.kv_heads + kv_head) * s.length_k * kD;
  const float scale_log2 = static_cast<float>(s.scale) * kLog2e;

  const KeyTileWalk<kFastTile> walk(s, blocks, h, row0, min(row0 + kRows - 1, length_q - 1), in.key_mask, b);
  int64_t n = walk.next(0);
  load_rows_async<T, kD, kRows, kThreads>(q_tile, q, row0, s.length_q);
  if (n < walk.count) {
    const int64_t key0 = walk.tile(n) * kFastTile;
    load_rows_async<T, kD, kFastTile, kThreads>(kv_stages, k, key0, s.length_k);
    load_rows_async<T, kD, kFastTile, kThreads>(kv_stages + kTileElements, v, key0, s.length_k);
  }
  copy_async_commit();
  // This lane's shared-memory addresses for the fragment loads (the lane formulas of
  // load_a, load_b_n_major and load_b_k_major): Q at the warp's first m-tile, K and V
  // of stage 0; stage 1 lies kStageBytes further.
  const uint32_t q_lane =
      shared_address(q_tile + (warp * kForwardRowsPerWarp + lane % 16) * kStride + (lane / 16) * 8);
  const uint32_t k_lane = shared_address(kv_stages + (lane % 8 + (lane / 16) * 8) * kStride + ((lane / 8) % 2) * 8);
  const uint32_t v_lane =
      shared_address(kv_stages + kTileElements + (lane % 8 + ((lane / 8) % 2) * 8) * kStride + (lane / 16) * 8);
  constexpr uint32_t kStageBytes = 2 * kTileElements * sizeof(T);

  // Per m-tile m (rows 16 m .. 16 m + 15 of the warp's 32) and half r (row g or
  // g + 8 of it): the running maximum (log2 units), the same in the 4 lanes of a
  // row, and this lane's partial sum, added across the row at the end (the sink's
  // weight 1 in lane t == 0).
  const bool has_sink = in.sinks != nullptr;
  const float sink_log2 = has_sink ? in.sinks[h] * kLog2e : -INFINITY;
  float row_max[2][2], row_sum[2][2];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_max[m][r] = sink_log2;
      row_sum[m][r] = has_sink && t == 0 ? 1.f : 0.f;
    }
  float o[2][kD / 8][4];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int nt = 0; nt < kD / 8; ++nt) o[m][nt][0] = o[m][nt][1] = o[m][nt][2] = o[m][nt][3] = 0.f;

  int stage = 0;
  while (n < walk.count) {
    const int tile_key0 = static_cast<int>(walk.tile(n)) * kFastTile;
    const int64_t next = walk.next(n + 1);
    copy_async_wait_all();
    __syncthreads();  // this tile is in `stage` for every warp, and every warp is done with the other stage
    if (next < walk.count) {
      const int64_t next_key0 = walk.tile(next) * kFastTile;
      T* next_k = kv_stages + 2 * (stage ^ 1) * kTileElements;
      load_rows_async<T, kD, kFastTile, kThreads>(next_k, k, next_key0, s.length_k);
      load_rows_async<T, kD, kFastTile, kThreads>(next_k + kTileElements, v, next_key0, s.length_k);
    }
    copy_async_commit();
    const uint32_t k_stage = k_lane + stage * kStageBytes, v_stage = v_lane + stage * kStageBytes;
    stage ^= 1;
    n = next;

#pragma unroll 1
    for (int sub = 0; sub < kFastTile / kScoreKeys; ++sub) {
      const int key0 = tile_key0 + sub * kScoreKeys;
      // A warp whose rows all lie past Lq, or before every key here (causal), has nothing to add.
      if (warp_row0 >= length_q || (s.causal && key0 > warp_row0 + kForwardRowsPerWarp - 1 + causal_offset)) continue;

      // S = Q K^T for the warp's 32 rows and kScoreKeys keys: each K fragment feeds both m-tiles.
      float scores[2][kScoreKeys / 8][4];
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int nt = 0; nt < kScoreKeys / 8; ++nt)
          scores[m][nt][0] = scores[m][nt][1] = scores[m][nt][2] = scores[m][nt][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        uint32_t a[2][4];
#pragma unroll
        for (int m = 0; m < 2; ++m) load_matrix_x4(a[m], q_lane + (16 * m * kStride + ks * 16) * sizeof(T));
#pragma unroll
        for (int pair = 0; pair < kScoreKeys / 16; ++pair) {
          uint32_t bk[4];
          load_matrix_x4(bk, k_stage + ((sub * kScoreKeys + pair * 16) * kStride + ks * 16) * sizeof(T));
#pragma unroll
          for (int m = 0; m < 2; ++m) {
            mma_16x8x16<T>(scores[m][2 * pair], a[m], bk[0], bk[1]);
            mma_16x8x16<T>(scores[m][2 * pair + 1], a[m], bk[2], bk[3]);
          }
        }
      }

      // Scale and mask, in log2 units. Most steps need only the scale: every key inside
      // Lk and visible to the warp's first row.
      const bool unmasked =
          key0 + kScoreKeys <= length_k && (!s.causal || key0 + kScoreKeys - 1 <= warp_row0 + causal_offset);
      if (unmasked) {
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
          for (int nt = 0; nt < kScoreKeys / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) scores[m][nt][e] *= scale_log2;
      } else {
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
          for (int nt = 0; nt < kScoreKeys / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int i = warp_row0 + 16 * m + g + (e / 2) * 8, j = key0 + nt * 8 + 2 * t + e % 2;
              const bool visible = j < length_k && (!s.causal || j <= i + causal_offset);
              scores[m][nt][e] = visible ? scores[m][nt][e] * scale_log2 : -INFINITY;
            }
      }

      // Online softmax: rescale what was accumulated to the new maximum, then P = exp2(S - max)
      // rounded to the input dtype as the A fragments of P V (n-tiles 2ks, 2ks+1 form k-step ks).
      uint32_t p[2][kScoreKeys / 16][4];
#pragma unroll
      for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float step_max = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < kScoreKeys / 8; ++nt)
            step_max = fmaxf(step_max, fmaxf(scores[m][nt][2 * r], scores[m][nt][2 * r + 1]));
          step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 1));
          step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 2));
          const float new_max = fmaxf(row_max[m][r], step_max);
          // Nothing finite yet: exp2f(-inf - 0) = 0 keeps every p and the (zero) sums at zero.
          const float reference = new_max == -INFINITY ? 0.f : new_max;
          const float correction = exp2f(row_max[m][r] - reference);
          row_max[m][r] = new_max;
          row_sum[m][r] *= correction;
#pragma unroll
          for (int nt = 0; nt < kD / 8; ++nt) {
            o[m][nt][2 * r] *= correction;
            o[m][nt][2 * r + 1] *= correction;
          }
#pragma unroll
          for (int nt = 0; nt < kScoreKeys / 8; ++nt) {
            const float p0 = exp2f(scores[m][nt][2 * r] - reference);
            const float p1 = exp2f(scores[m][nt][2 * r + 1] - reference);
            row_sum[m][r] += p0 + p1;
            p[m][nt / 2][(nt % 2) * 2 + r] = pack_pair<T>(p0, p1);
          }
        }
      }

      // O += P V: each V fragment feeds both m-tiles.
#pragma unroll
      for (int ks = 0; ks < kScoreKeys / 16; ++ks) {
#pragma unroll
        for (int pair = 0; pair < kD / 16; ++pair) {
          uint32_t bv[4];
          load_matrix_x4_transposed(bv, v_stage + ((sub * kScoreKeys + ks * 16) * kStride + pair * 16) * sizeof(T));
#pragma unroll
          for (int m = 0; m < 2; ++m) {
            mma_16x8x16<T>(o[m][2 * pair], p[m][ks], bv[0], bv[1]);
            mma_16x8x16<T>(o[m][2 * pair + 1], p[m][ks], bv[2], bv[3]);
          }
        }
      }
    }
  }
  copy_async_wait_all();  // the loads of the prologue were never waited for when no key tile is visited

#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float total = row_sum[m][r];
      total += __shfl_xor_sync(0xffffffffu, total, 1);
      total += __shfl_xor_sync(0xffffffffu, total, 2);
      const int i = warp_row0 + 16 * m + g + 8 * r;
      if (i >= length_q) continue;
      const float inverse = total > 0.f ? 1.f / total : 0.f;
      T* out_row = out + (bh * s.length_q + i) * kD;
#pragma unroll
      for (int nt = 0; nt < kD / 8; ++nt)
        *reinterpret_cast<uint32_t*>(out_row + nt * 8 + 2 * t) =
            pack_pair<T>(o[m][nt][2 * r] * inverse, o[m][nt][2 * r + 1] * inverse);
      if (t == 0) lse[bh * s.length_q + i] = total > 0.f ? (row_max[m][r] + log2f(total)) * kLn2 : -INFINITY;
    }
}

template <class T, int kD>
__global__ void __launch_bounds__(kFastBackwardThreads)
    attention_backward_fast_kernel(AttentionSizes s, AttentionBlocks blocks, AttentionInputs<void, float> in,
                                   const T* grad_out, const float* lse, const float* delta, float* dq_accumulator,
                                   T* dk, T* dv, float* dbias, float* grads_key_bias) {
  constexpr int kStride = kD + kPad, kScoreStride = kFastTile + kPad;
  constexpr int kHalf = kD / 2;  // the head_dim columns of dK, dV and dQ one warp owns
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  constexpr int kTileElements = kFastTile * kStride;
  T* k_tile = reinterpret_cast<T*>(shared_bytes);
  T* v_tile = k_tile + kTileElements;
  T* q_stages = v_tile + kTileElements;          // 2 stages of Q
  T* do_stages = q_stages + 2 * kTileElements;   // 2 stages of dO
  T* p_tile = do_stages + 2 * kTileElements;
  T* ds_tile = p_tile + kFastTile * kScoreStride;
  float* lse_stages = reinterpret_cast<float*>(ds_tile + kFastTile * kScoreStride);  // log2 units, +inf: no key
  float* delta_stages = lse_stages + 2 * kFastTile;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int slice = warp % 4, half = warp / 4;  // 16 rows (or keys) and one half of head_dim
  const int64_t b = blockIdx.x / s.kv_heads, kv_head = blockIdx.x % s.kv_heads;
  const int64_t key0 = static_cast<int64_t>(blockIdx.y) * kFastTile;
  const T* k = static_cast<const T*>(in.k) + (b * s.kv_heads + kv_head) * s.length_k * kD;
  const T* v = static_cast<const T*>(in.v) + (b * s.kv_heads + kv_head) * s.length_k * kD;
  const float scale_log2 = static_cast<float>(s.scale) * kLog2e;

  load_tile_async<T, kD, kFastTile>(k_tile, k, key0, s.length_k);
  load_tile_async<T, kD, kFastTile>(v_tile, v, key0, s.length_k);
  copy_async_commit();

  float dv_acc[kHalf / 8][4], dk_acc[kHalf / 8][4];
#pragma unroll
  for (int nt = 0; nt < kHalf / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dv_acc[nt][e] = dk_acc[nt][e] = 0.f;
  // Key-mask bias gradient: this thread's dS summed over its rows, for its keys
  // half * 32 + nt * 8 + 2t + c (c = 0, 1).
  float key_bias_grad[4][2] = {{0.f, 0.f}, {0.f, 0.f}, {0.f, 0.f}, {0.f, 0.f}};

  // The (head, query tile) items of this key tile, head by head: (h, n) is the next
  // item of walk to visit; h == end_head when none is left.
  const int64_t end_head = (kv_head + 1) * s.group();
  int64_t h = kv_head * s.group(), n = 0;
  QueryTileWalk<kFastTile> walk(s, blocks, h, key0, in.key_mask, b);
  const auto settle = [&] {  // moves (h, n) to the first visited item at or after it
    while (h < end_head) {
      while (n < walk.count && walk.tile(n) < 0) ++n;
      if (n < walk.count) return;
      if (++h < end_head) {
        walk = QueryTileWalk<kFastTile>(s, blocks, h, key0, in.key_mask, b);
        n = 0;
      }
    }
  };
  // Q and dO rows [row0, row0 + 64) of head `head` into stage `into` by cp.async;
  // the threads < 64 read the rows' lse (log2 units, +inf for a row that sees no key
  // or lies past Lq) and delta into registers, stored by store_rows once they arrive.
  float next_lse = 0.f, next_delta = 0.f;
  const auto load_item = [&](int64_t head, int64_t row0, int into) {
    const int64_t bh = b * s.heads + head;
    load_tile_async<T, kD, kFastTile>(q_stages + into * kTileElements,
                                      static_cast<const T*>(in.q) + bh * s.length_q * kD, row0, s.length_q);
    load_tile_async<T, kD, kFastTile>(do_stages + into * kTileElements, grad_out + bh * s.length_q * kD, row0,
                                      s.length_q);
    if (threadIdx.x < kFastTile) {
      const int64_t i = row0 + threadIdx.x;
      const float row_lse = i < s.length_q ? lse[bh * s.length_q + i] : -INFINITY;
      next_lse = row_lse == -INFINITY ? INFINITY : row_lse * kLog2e;
      next_delta = i < s.length_q ? delta[bh * s.length_q + i] : 0.f;
    }
  };
  const auto store_rows = [&](int into) {
    if (threadIdx.x < kFastTile) {
      lse_stages[into * kFastTile + threadIdx.x] = next_lse;
      delta_stages[into * kFastTile + threadIdx.x] = next_delta;
    }
  };

  settle();
  if (h < end_head) {
    load_item(h, walk.tile(n) * kFastTile, 0);
    store_rows(0);
  }
  copy_async_commit();
  int stage = 0;
  while (h < end_head) {
    // This item; then (h, n) moves on to the next, which is loaded while this one is computed.
    const int64_t item_head = h, bh = b * s.heads + item_head, row0 = walk.tile(n) * kFastTile;
    ++n;
    settle();
    const bool has_next = h < end_head;
    copy_async_wait_all();
    __syncthreads();  // this item is in `stage`; every warp is done with the other stage, P and dS
    if (has_next) load_item(h, walk.tile(n) * kFastTile, stage ^ 1);
    copy_async_commit();
    const T* q_tile = q_stages + stage * kTileElements;
    const T* do_tile = do_stages + stage * kTileElements;
    const float* lse_tile = lse_stages + stage * kFastTile;
    const float* delta_tile = delta_stages + stage * kFastTile;

    // S = Q K^T and dP = dO V^T for rows 16 slice .. +15 and keys 32 half .. +31.
    float scores[4][4], dp[4][4];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) scores[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t aq[4], ado[4];
      load_a(aq, q_tile, kStride, slice * 16, ks * 16);
      load_a(ado, do_tile, kStride, slice * 16, ks * 16);
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        uint32_t bk[4], bv[4];
        load_b_n_major(bk, k_tile, kStride, half * 32 + pair * 16, ks * 16);
        load_b_n_major(bv, v_tile, kStride, half * 32 + pair * 16, ks * 16);
        mma_16x8x16<T>(scores[2 * pair], aq, bk[0], bk[1]);
        mma_16x8x16<T>(scores[2 * pair + 1], aq, bk[2], bk[3]);
        mma_16x8x16<T>(dp[2 * pair], ado, bv[0], bv[1]);
        mma_16x8x16<T>(dp[2 * pair + 1], ado, bv[2], bv[3]);
      }
    }

    // P = exp(S - lse) and dS = P (dP - delta), staged in shared memory. Most tiles
    // need no per-entry index: no bias, no key mask, every row and key inside and visible.
    const bool plain = !in.bias.data && !in.key_mask.active() && !grads_key_bias && row0 + kFastTile <= s.length_q &&
                       key0 + kFastTile <= s.length_k &&
                       (!s.causal || key0 + kFastTile - 1 <= row0 + s.causal_offset());
    if (plain) {
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = slice * 16 + g + (e / 2) * 8;
          scores[nt][e] = exp2f(scores[nt][e] * scale_log2 - lse_tile[r]);
          dp[nt][e] = scores[nt][e] * (dp[nt][e] - delta_tile[r]);
        }
    } else {
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = slice * 16 + g + (e / 2) * 8, c = half * 32 + nt * 8 + 2 * t + e % 2;
          const int64_t i = row0 + r, j = key0 + c;
          const bool inside = i < s.length_q && j < s.length_k;
          float x = scores[nt][e] * scale_log2;
          if (in.bias.data && inside) x += in.bias.at(b, item_head, i, j) * kLog2e;
          if (inside) x = key_masked(s, in.key_mask, b, kv_head, i, j, x, kLog2e);
          const float p = j < s.length_k && causally_visible(s, i, j) ? exp2f(x - lse_tile[r]) : 0.f;
          const float ds = p * (dp[nt][e] - delta_tile[r]);
          if (dbias && inside) dbias[(bh * s.length_q + i) * s.length_k + j] = ds;
          key_bias_grad[nt][e % 2] += ds;
          scores[nt][e] = p;
          dp[nt][e] = ds;
        }
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int c = half * 32 + nt * 8 + 2 * t;
#pragma unroll
      for (int r2 = 0; r2 < 2; ++r2) {
        const int r = slice * 16 + g + r2 * 8;
        *reinterpret_cast<uint32_t*>(p_tile + r * kScoreStride + c) =
            pack_pair<T>(scores[nt][2 * r2], scores[nt][2 * r2 + 1]);
        *reinterpret_cast<uint32_t*>(ds_tile + r * kScoreStride + c) =
            pack_pair<T>(dp[nt][2 * r2], dp[nt][2 * r2 + 1]);
      }
    }
    __syncthreads();

    // dV += P^T dO and dK += dS^T Q for keys 16 slice .. +15, columns kHalf half .. +kHalf-1.
#pragma unroll
    for (int ks = 0; ks < kFastTile / 16; ++ks) {
      uint32_t ap[4], ads[4];
      load_a_transposed(ap, p_tile, kScoreStride, ks * 16, slice * 16);
      load_a_transposed(ads, ds_tile, kScoreStride, ks * 16, slice * 16);
#pragma unroll
      for (int pair = 0; pair < kHalf / 16; ++pair) {
        uint32_t bo[4], bq[4];
        load_b_k_major(bo, do_tile, kStride, ks * 16, half * kHalf + pair * 16);
        load_b_k_major(bq, q_tile, kStride, ks * 16, half * kHalf + pair * 16);
        mma_16x8x16<T>(dv_acc[2 * pair], ap, bo[0], bo[1]);
        mma_16x8x16<T>(dv_acc[2 * pair + 1], ap, bo[2], bo[3]);
        mma_16x8x16<T>(dk_acc[2 * pair], ads, bq[0], bq[1]);
        mma_16x8x16<T>(dk_acc[2 * pair + 1], ads, bq[2], bq[3]);
      }
    }

    // dQ += dS K for rows 16 slice .. +15, columns kHalf half .. +kHalf-1, 16 at a time.
    uint32_t a_ds[kFastTile / 16][4];
#pragma unroll
    for (int ks = 0; ks < kFastTile / 16; ++ks) load_a(a_ds[ks], ds_tile, kScoreStride, slice * 16, ks * 16);
#pragma unroll
    for (int pair = 0; pair < kHalf / 16; ++pair) {
      float dq[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
      for (int ks = 0; ks < kFastTile / 16; ++ks) {
        uint32_t bk[4];
        load_b_k_major(bk, k_tile, kStride, ks * 16, half * kHalf + pair * 16);
        mma_16x8x16<T>(dq[0], a_ds[ks], bk[0], bk[1]);
        mma_16x8x16<T>(dq[1], a_ds[ks], bk[2], bk[3]);
      }
      // Columns d and d + 1 in one 8-byte atomic (sm_90), half as many as one per float.
#pragma unroll
      for (int r2 = 0; r2 < 2; ++r2) {
        const int64_t i = row0 + slice * 16 + g + r2 * 8;
        if (i >= s.length_q) continue;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const int d = half * kHalf + pair * 16 + nt * 8 + 2 * t;
          atomicAdd(reinterpret_cast<float2*>(dq_accumulator + (bh * s.length_q + i) * kD + d),
                    make_float2(dq[nt][2 * r2], dq[nt][2 * r2 + 1]));
        }
      }
    }
    if (has_next) store_rows(stage ^ 1);  // the next item's lse and delta have arrived by now
    stage ^= 1;
  }

  if (grads_key_bias) {
    // Sum over the 8 row groups g of the warp (lanes with the same t), then over the
    // 4 warps of each half in shared memory (lse_stages is free now).
    float* key_sums = lse_stages;
    __syncthreads();
    if (threadIdx.x < kFastTile) key_sums[threadIdx.x] = 0.f;
    __syncthreads();
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float total = key_bias_grad[nt][c];
        for (int offset = 4; offset < 32; offset *= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
        if (g == 0) atomicAdd(key_sums + half * 32 + nt * 8 + 2 * t + c, total);
      }
    __syncthreads();
    if (threadIdx.x < kFastTile && key0 + threadIdx.x < s.length_k)
      grads_key_bias[(b * s.kv_heads + kv_head) * s.length_k + key0 + threadIdx.x] = key_sums[threadIdx.x];
  }

  // dK (scaled) and dV for keys 16 slice .. +15 of this tile.
  copy_async_wait_all();  // K and V were never waited for when no query tile sees these keys
  const float scale = static_cast<float>(s.scale);
  const int64_t kv_row0 = (b * s.kv_heads + kv_head) * s.length_k;
#pragma unroll
  for (int r2 = 0; r2 < 2; ++r2) {
    const int64_t j = key0 + slice * 16 + g + r2 * 8;
    if (j >= s.length_k) continue;
#pragma unroll
    for (int nt = 0; nt < kHalf / 8; ++nt) {
      const int64_t offset = (kv_row0 + j) * kD + half * kHalf + nt * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(dk + offset) =
          pack_pair<T>(dk_acc[nt][2 * r2] * scale, dk_acc[nt][2 * r2 + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv + offset) = pack_pair<T>(dv_acc[nt][2 * r2], dv_acc[nt][2 * r2 + 1]);
    }
  }
}

// ---- generic path: CUDA cores, float32 tiles -----------------------------------------------

constexpr int kGenericTile = 32;  // query rows per forward block, keys per tile
constexpr int kGenericThreads = 256;
constexpr int kLanesPerRow = 8;  // lanes that share one query row (forward) or one key (backward)
constexpr int kMaxColumnsPerLane = static_cast<int>(kAttentionCudaMaxHeadDim) / kLanesPerRow;
constexpr int kGenericScoreStride = kGenericTile + 1;

// Rows [first, first + kGenericTile) of a (rows, head_dim) matrix as float32 into
// shared memory with row stride head_dim + 1 (odd: lanes reading different rows at
// the same column hit different banks); rows past `rows` become zeros.
template <class T>
__device__ void load_tile_float(float* shared, const T* global, int64_t first, int64_t rows, int head_dim) {
  for (int e = threadIdx.x; e < kGenericTile * head_dim; e += blockDim.x) {
    const int r = e / head_dim, d = e % head_dim;
    shared[r * (head_dim + 1) + d] = first + r < rows ? to_float(global[(first + r) * head_dim + d]) : 0.f;
  }
}

__device__ __forceinline__ float dot_shared(const float* a, const float* b, int n) {
  float total = 0.f;
  for (int d = 0; d < n; ++d) total += a[d] * b[d];
  return total;
}

// Sum or maximum over the 8 lanes of a row (consecutive lanes).
__device__ __forceinline__ float row_sum8(float x) {
  for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}
__device__ __forceinline__ float row_max8(float x) {
  for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

size_t generic_forward_shared_bytes(int head_dim) {
  return (size_t{3} * kGenericTile * (head_dim + 1) + size_t{kGenericTile} * kGenericScoreStride) * sizeof(float);
}
size_t generic_backward_shared_bytes(int head_dim) {
  return (size_t{4} * kGenericTile * (head_dim + 1) + size_t{2} * kGenericTile * kGenericScoreStride +
          2 * kGenericTile) *
         sizeof(float);
}

template <class T>
__global__ void __launch_bounds__(kGenericThreads)
    attention_forward_generic_kernel(AttentionSizes s, AttentionBlocks blocks, AttentionInputs<void, float> in, T* out,
                                     float* lse) {
  extern __shared__ float shared[];
  const int D = static_cast<int>(s.head_dim), stride = D + 1;
  float* q_tile = shared;
  float* k_tile = q_tile + kGenericTile * stride;
  float* v_tile = k_tile + kGenericTile * stride;
  float* p_tile = v_tile + kGenericTile * stride;

  const int row = threadIdx.x / kLanesPerRow, lane = threadIdx.x % kLanesPerRow;
  const int64_t bh = blockIdx.x, b = bh / s.heads, h = bh % s.heads, kv_head = h / s.group();
  const int64_t query_tile = s.causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;
  const int64_t row0 = query_tile * kGenericTile, i = row0 + row;
  const T* q = static_cast<const T*>(in.q) + bh * s.length_q * D;
  const T* k = static_cast<const T*>(in.k) + (b * s.kv_heads + kv_head) * s.length_k * D;
  const T* v = static_cast<const T*>(in.v) + (b * s.kv_heads + kv_head) * s.length_k * D;
  const float scale = static_cast<float>(s.scale);

  load_tile_float(q_tile, q, row0, s.length_q, D);
  float row_max = in.sinks ? in.sinks[h] : -INFINITY;  // the sink enters with weight exp(sink - max)
  float row_total = in.sinks ? 1.f : 0.f;
  float acc[kMaxColumnsPerLane];
#pragma unroll
  for (int m = 0; m < kMaxColumnsPerLane; ++m) acc[m] = 0.f;

  const KeyTileWalk<kGenericTile> walk(s, blocks, h, row0, min(row0 + kGenericTile - 1, s.length_q - 1),
                                       in.key_mask, b);
  for (int64_t n = walk.next(0); n < walk.count; n = walk.next(n + 1)) {
    const int64_t key0 = walk.tile(n) * kGenericTile;
    __syncthreads();  // every thread is done with the previous K, V and P
    load_tile_float(k_tile, k, key0, s.length_k, D);
    load_tile_float(v_tile, v, key0, s.length_k, D);
    __syncthreads();

    float scores[kGenericTile / kLanesPerRow], tile_max = -INFINITY;
#pragma unroll
    for (int m = 0; m < kGenericTile / kLanesPerRow; ++m) {
      const int c = lane + m * kLanesPerRow;
      const int64_t j = key0 + c;
      float x = -INFINITY;
      if (i < s.length_q && j < s.length_k && causally_visible(s, i, j)) {
        x = scale * dot_shared(q_tile + row * stride, k_tile + c * stride, D);
        if (in.bias.data) x += in.bias.at(b, h, i, j);
        x = key_masked(s, in.key_mask, b, kv_head, i, j, x, 1.f);
      }
      scores[m] = x;
      tile_max = fmaxf(tile_max, x);
    }
    const float new_max = fmaxf(row_max, row_max8(tile_max));
    const float reference = new_max == -INFINITY ? 0.f : new_max;  // nothing finite yet: keep zeros
    const float correction = expf(row_max - reference);
    float tile_total = 0.f;
#pragma unroll
    for (int m = 0; m < kGenericTile / kLanesPerRow; ++m) {
      const float p = expf(scores[m] - reference);
      p_tile[row * kGenericScoreStride + lane + m * kLanesPerRow] = p;
      tile_total += p;
    }
    row_total = row_total * correction + row_sum8(tile_total);
    row_max = new_max;
    __syncwarp();  // the row's P is written by lanes of this warp
#pragma unroll
    for (int m = 0; m < kMaxColumnsPerLane; ++m) acc[m] *= correction;
    for (int c = 0; c < kGenericTile; ++c) {
      const float p = p_tile[row * kGenericScoreStride + c];
#pragma unroll
      for (int m = 0; m < kMaxColumnsPerLane; ++m) {
        const int d = lane + m * kLanesPerRow;
        if (d < D) acc[m] += p * v_tile[c * stride + d];
      }
    }
  }

  if (i >= s.length_q) return;
  const float inverse = row_total > 0.f ? 1.f / row_total : 0.f;
#pragma unroll
  for (int m = 0; m < kMaxColumnsPerLane; ++m) {
    const int d = lane + m * kLanesPerRow;
    if (d < D) out[(bh * s.length_q + i) * D + d] = from_float<T>(acc[m] * inverse);
  }
  if (lane == 0) lse[bh * s.length_q + i] = row_total > 0.f ? row_max + logf(row_total) : -INFINITY;
}

template <class T>
__global__ void __launch_bounds__(kGenericThreads)
    attention_backward_generic_kernel(AttentionSizes s, AttentionBlocks blocks, AttentionInputs<void, float> in,
                                      const T* grad_out, const float* lse, const float* delta, float* dq_accumulator,
                                      T* dk, T* dv, float* dbias, float* grads_key_bias) {
  extern __shared__ float shared[];
  const int D = static_cast<int>(s.head_dim), stride = D + 1;
  float* k_tile = shared;
  float* v_tile = k_tile + kGenericTile * stride;
  float* q_tile = v_tile + kGenericTile * stride;
  float* do_tile = q_tile + kGenericTile * stride;
  float* p_tile = do_tile + kGenericTile * stride;
  float* ds_tile = p_tile + kGenericTile * kGenericScoreStride;
  float* lse_tile = ds_tile + kGenericTile * kGenericScoreStride;  // -inf: the row sees no key
  float* delta_tile = lse_tile + kGenericTile;

  const int key = threadIdx.x / kLanesPerRow, lane = threadIdx.x % kLanesPerRow;
  const int64_t b = blockIdx.x / s.kv_heads, kv_head = blockIdx.x % s.kv_heads;
  const int64_t key0 = static_cast<int64_t>(blockIdx.y) * kGenericTile, j = key0 + key;
  const T* k = static_cast<const T*>(in.k) + (b * s.kv_heads + kv_head) * s.length_k * D;
  const T* v = static_cast<const T*>(in.v) + (b * s.kv_heads + kv_head) * s.length_k * D;
  const float scale = static_cast<float>(s.scale);

  load_tile_float(k_tile, k, key0, s.length_k, D);
  load_tile_float(v_tile, v, key0, s.length_k, D);
  float dk_acc[kMaxColumnsPerLane], dv_acc[kMaxColumnsPerLane];
#pragma unroll
  for (int m = 0; m < kMaxColumnsPerLane; ++m) dk_acc[m] = dv_acc[m] = 0.f;
  float key_bias_grad = 0.f;  // this thread's key, its rows lane, lane + 8, ...

  for (int64_t h = kv_head * s.group(); h < (kv_head + 1) * s.group(); ++h) {
    const int64_t bh = b * s.heads + h;
    const T* q = static_cast<const T*>(in.q) + bh * s.length_q * D;
    const T* dout = grad_out + bh * s.length_q * D;
    const QueryTileWalk<kGenericTile> walk(s, blocks, h, key0, in.key_mask, b);
    for (int64_t n = 0; n < walk.count; ++n) {
      const int64_t query_tile = walk.tile(n);
      if (query_tile < 0) continue;
      const int64_t row0 = query_tile * kGenericTile;
      __syncthreads();  // every thread is done with the previous Q, dO, P and dS
      load_tile_float(q_tile, q, row0, s.length_q, D);
      load_tile_float(do_tile, dout, row0, s.length_q, D);
      if (threadIdx.x < kGenericTile) {
        const int64_t i = row0 + threadIdx.x;
        lse_tile[threadIdx.x] = i < s.length_q ? lse[bh * s.length_q + i] : -INFINITY;
        delta_tile[threadIdx.x] = i < s.length_q ? delta[bh * s.length_q + i] : 0.f;
      }
      __syncthreads();

      // P and dS for this thread's key and rows lane, lane + 8, ...
#pragma unroll
      for (int m = 0; m < kGenericTile / kLanesPerRow; ++m) {
        const int r = lane + m * kLanesPerRow;
        const int64_t i = row0 + r;
        float p = 0.f, ds = 0.f;
        if (i < s.length_q && j < s.length_k && causally_visible(s, i, j) && lse_tile[r] != -INFINITY) {
          float x = scale * dot_shared(q_tile + r * stride, k_tile + key * stride, D);
          if (in.bias.data) x += in.bias.at(b, h, i, j);
          x = key_masked(s, in.key_mask, b, kv_head, i, j, x, 1.f);
          p = expf(x - lse_tile[r]);
          ds = p * (dot_shared(do_tile + r * stride, v_tile + key * stride, D) - delta_tile[r]);
          if (dbias) dbias[(bh * s.length_q + i) * s.length_k + j] = ds;
          key_bias_grad += ds;
        }
        p_tile[r * kGenericScoreStride + key] = p;
        ds_tile[r * kGenericScoreStride + key] = ds;
      }
      __syncthreads();

      // dV += P^T dO and dK += dS^T Q for this thread's key.
      for (int r = 0; r < kGenericTile; ++r) {
        const float p = p_tile[r * kGenericScoreStride + key], ds = ds_tile[r * kGenericScoreStride + key];
#pragma unroll
        for (int m = 0; m < kMaxColumnsPerLane; ++m) {
          const int d = lane + m * kLanesPerRow;
          if (d < D) {
            dv_acc[m] += p * do_tile[r * stride + d];
            dk_acc[m] += ds * q_tile[r * stride + d];
          }
        }
      }
      // dQ += dS K, one (row, column) per thread at a time.
      for (int e = threadIdx.x; e < kGenericTile * D; e += blockDim.x) {
        const int r = e / D, d = e % D;
        const int64_t i = row0 + r;
        if (i >= s.length_q) continue;
        float total = 0.f;
        for (int c = 0; c < kGenericTile; ++c) total += ds_tile[r * kGenericScoreStride + c] * k_tile[c * stride + d];
        atomicAdd(dq_accumulator + (bh * s.length_q + i) * D + d, total);
      }
    }
  }

  key_bias_grad = row_sum8(key_bias_grad);  // every lane takes part in the shuffles
  if (j >= s.length_k) return;
  if (grads_key_bias && lane == 0) grads_key_bias[(b * s.kv_heads + kv_head) * s.length_k + j] = key_bias_grad;
  const int64_t offset = ((b * s.kv_heads + kv_head) * s.length_k + j) * D;
#pragma unroll
  for (int m = 0; m < kMaxColumnsPerLane; ++m) {
    const int d = lane + m * kLanesPerRow;
    if (d < D) {
      dk[offset + d] = from_float<T>(dk_acc[m] * scale);
      dv[offset + d] = from_float<T>(dv_acc[m]);
    }
  }
}

// ---- probabilities (diagnostics) --------------------------------------------------------------

__device__ bool block_listed(const AttentionBlocks& blocks, int64_t h, int64_t i, int64_t j) {
  if (!blocks.sparse()) return true;
  const int64_t row = blocks.row(h, i / blocks.block_size), key_block = j / blocks.block_size;
  for (int32_t n = blocks.row_offsets[row]; n < blocks.row_offsets[row + 1]; ++n)
    if (blocks.column_indices[n] == key_block) return true;
  return false;
}

template <class T>
__global__ void attention_probabilities_kernel(AttentionSizes s, AttentionBlocks blocks,
                                               AttentionInputs<void, float> in, const float* lse,
                                               float* probabilities) {
  const int64_t total = s.batch * s.heads * s.length_q * s.length_k;
  const int D = static_cast<int>(s.head_dim);
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = e % s.length_k, row = e / s.length_k, i = row % s.length_q, bh = row / s.length_q;
    const int64_t b = bh / s.heads, h = bh % s.heads, kv_head = h / s.group();
    float p = 0.f;
    if (lse[row] != -INFINITY && causally_visible(s, i, j) && block_listed(blocks, h, i, j)) {
      const T* q = static_cast<const T*>(in.q) + row * D;
      const T* k = static_cast<const T*>(in.k) + ((b * s.kv_heads + kv_head) * s.length_k + j) * D;
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot += to_float(q[d]) * to_float(k[d]);
      float x = static_cast<float>(s.scale) * dot;
      if (in.bias.data) x += in.bias.at(b, h, i, j);
      p = expf(key_masked(s, in.key_mask, b, kv_head, i, j, x, 1.f) - lse[row]);
    }
    probabilities[e] = p;
  }
}

// ---- launchers -------------------------------------------------------------------------------

bool aligned_16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

template <class T>
bool fast_path(const AttentionSizes& s, std::initializer_list<const void*> pointers) {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    if (s.head_dim != 64 && s.head_dim != 128) return false;
    for (const void* p : pointers)
      if (!aligned_16(p)) return false;
    return true;
  }
}

template <class Kernel>
void allow_shared_bytes(Kernel kernel, size_t bytes) {
  STRATA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Query (forward) or key (backward) tiles run along grid y, which holds 65535.
void check_grid(int64_t tiles, const char* message) {
  if (tiles > kMaxGridY) ::strata::detail::throw_message(__FILE__, __LINE__, message);
}

template <class T, int kD>
void launch_forward_fast(const AttentionSizes& s, const AttentionBlocks& blocks, const AttentionInputs<void, float>& in,
                         void* out, float* lse) {
  // A bias or a key mask reads per-entry data inside the softmax, which the 128-row
  // kernel has no registers left for; a block list of 64-row blocks gives every 64
  // rows their own key tiles. Both take the 64-row kernel.
  if (in.bias.data || in.key_mask.active() || (blocks.sparse() && blocks.block_size < kFastForwardRows)) {
    const int64_t tiles = (s.length_q + kFastTile - 1) / kFastTile;
    check_grid(tiles, "attention: Lq is longer than 65535 tiles of 64 queries");
    auto kernel = attention_forward_fast_rows64_kernel<T, kD>;
    constexpr size_t bytes = fast_forward_rows64_shared_bytes<kD>();
    allow_shared_bytes(kernel, bytes);
    dim3 grid(static_cast<unsigned>(s.batch * s.heads), static_cast<unsigned>(tiles));
    kernel<<<grid, kFastRows64Threads, bytes, cuda::stream()>>>(s, blocks, in, static_cast<T*>(out), lse);
    STRATA_CUDA_CHECK_LAUNCH("attention_forward_fast_rows64_kernel");
    return;
  }
  const int64_t tiles = (s.length_q + kFastForwardRows - 1) / kFastForwardRows;
  check_grid(tiles, "attention: Lq is longer than 65535 tiles of 128 queries");
  // The kernel indexes keys with int (and rows, which the grid bounds).
  if (s.length_k > INT32_MAX - kFastTile)
    ::strata::detail::throw_message(__FILE__, __LINE__, "attention: Lk is 2^31 - 64 keys or longer");
  auto kernel = attention_forward_fast_kernel<T, kD>;
  constexpr size_t bytes = fast_forward_shared_bytes<kD>();
  allow_shared_bytes(kernel, bytes);
  // Two blocks per SM need 2 x 103 KiB at head_dim 128: ask for the largest carveout.
  STRATA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                         static_cast<int>(cudaSharedmemCarveoutMaxShared)));
  dim3 grid(static_cast<unsigned>(s.batch * s.heads), static_cast<unsigned>(tiles));
  kernel<<<grid, kFastForwardThreads, bytes, cuda::stream()>>>(s, blocks, in, static_cast<T*>(out), lse);
  STRATA_CUDA_CHECK_LAUNCH("attention_forward_fast_kernel");
}

template <class T, int kD>
void launch_backward_fast(const AttentionSizes& s, const AttentionBlocks& blocks,
                          const AttentionInputs<void, float>& in, const void* grad_out, const float* lse,
                          const float* delta, float* dq_accumulator, const AttentionGrads<void, float>& grads) {
  const int64_t tiles = (s.length_k + kFastTile - 1) / kFastTile;
  check_grid(tiles, "attention backward: Lk is longer than 65535 tiles of 64 keys");
  auto kernel = attention_backward_fast_kernel<T, kD>;
  constexpr size_t bytes = fast_backward_shared_bytes<kD>();
  allow_shared_bytes(kernel, bytes);
  dim3 grid(static_cast<unsigned>(s.batch * s.kv_heads), static_cast<unsigned>(tiles));
  kernel<<<grid, kFastBackwardThreads, bytes, cuda::stream()>>>(s, blocks, in, static_cast<const T*>(grad_out), lse,
                                                                delta, dq_accumulator, static_cast<T*>(grads.dk),
                                                                static_cast<T*>(grads.dv), grads.dbias,
                                                                grads.dkey_bias);
  STRATA_CUDA_CHECK_LAUNCH("attention_backward_fast_kernel");
}

template <class T>
void launch_forward(const AttentionSizes& s, const AttentionBlocks& blocks, const AttentionInputs<void, float>& in,
                    void* out, float* lse) {
  if (fast_path<T>(s, {in.q, in.k, in.v, out})) {
    if constexpr (!std::is_same_v<T, float>) {
      if (s.head_dim == 64)
        launch_forward_fast<T, 64>(s, blocks, in, out, lse);
      else
        launch_forward_fast<T, 128>(s, blocks, in, out, lse);
      return;
    }
  }
  const int64_t tiles = (s.length_q + kGenericTile - 1) / kGenericTile;
  check_grid(tiles, "attention: Lq is longer than 65535 tiles of 32 queries");
  const size_t bytes = generic_forward_shared_bytes(static_cast<int>(s.head_dim));
  allow_shared_bytes(attention_forward_generic_kernel<T>, bytes);
  dim3 grid(static_cast<unsigned>(s.batch * s.heads), static_cast<unsigned>(tiles));
  attention_forward_generic_kernel<T>
      <<<grid, kGenericThreads, bytes, cuda::stream()>>>(s, blocks, in, static_cast<T*>(out), lse);
  STRATA_CUDA_CHECK_LAUNCH("attention_forward_generic_kernel");
}

template <class T>
void launch_backward(const AttentionSizes& s, const AttentionBlocks& blocks, const AttentionInputs<void, float>& in,
                     const void* out, const float* lse, const void* grad_out, const float* grad_lse, float* delta,
                     float* dq_accumulator, const AttentionGrads<void, float>& grads) {
  const int64_t rows = s.batch * s.heads * s.length_q;
  constexpr int kRowsPerBlock = 8;  // one warp per row
  attention_delta_kernel<T>
      <<<static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock), kRowsPerBlock * 32, 0, cuda::stream()>>>(
          static_cast<const T*>(out), static_cast<const T*>(grad_out), grad_lse, delta, rows,
          static_cast<int>(s.head_dim));
  STRATA_CUDA_CHECK_LAUNCH("attention_delta_kernel");
  const int64_t dq_elements = rows * s.head_dim;
  STRATA_CUDA_CHECK(
      cudaMemsetAsync(dq_accumulator, 0, static_cast<size_t>(dq_elements) * sizeof(float), cuda::stream()));

  bool fast = false;
  if (fast_path<T>(s, {in.q, in.k, in.v, grad_out, grads.dk, grads.dv})) {
    if constexpr (!std::is_same_v<T, float>) {
      if (s.head_dim == 64)
        launch_backward_fast<T, 64>(s, blocks, in, grad_out, lse, delta, dq_accumulator, grads);
      else
        launch_backward_fast<T, 128>(s, blocks, in, grad_out, lse, delta, dq_accumulator, grads);
      fast = true;
    }
  }
  if (!fast) {
    const int64_t tiles = (s.length_k + kGenericTile - 1) / kGenericTile;
    check_grid(tiles, "attention backward: Lk is longer than 65535 tiles of 32 keys");
    const size_t bytes = generic_backward_shared_bytes(static_cast<int>(s.head_dim));
    allow_shared_bytes(attention_backward_generic_kernel<T>, bytes);
    dim3 grid(static_cast<unsigned>(s.batch * s.kv_heads), static_cast<unsigned>(tiles));
    attention_backward_generic_kernel<T><<<grid, kGenericThreads, bytes, cuda::stream()>>>(
        s, blocks, in, static_cast<const T*>(grad_out), lse, delta, dq_accumulator, static_cast<T*>(grads.dk),
        static_cast<T*>(grads.dv), grads.dbias, grads.dkey_bias);
    STRATA_CUDA_CHECK_LAUNCH("attention_backward_generic_kernel");
  }

  const int dq_blocks = static_cast<int>(std::min<int64_t>((dq_elements + 255) / 256, 4096));
  attention_dq_kernel<T><<<dq_blocks, 256, 0, cuda::stream()>>>(dq_accumulator, static_cast<T*>(grads.dq), dq_elements,
                                                                static_cast<float>(s.scale));
  STRATA_CUDA_CHECK_LAUNCH("attention_dq_kernel");
}

template <class T>
void launch_probabilities(const AttentionSizes& s, const AttentionBlocks& blocks,
                          const AttentionInputs<void, float>& in, const float* lse, float* probabilities) {
  const int64_t total = s.batch * s.heads * s.length_q * s.length_k;
  const int grid = static_cast<int>(std::min<int64_t>((total + 255) / 256, 8192));
  attention_probabilities_kernel<T><<<grid, 256, 0, cuda::stream()>>>(s, blocks, in, lse, probabilities);
  STRATA_CUDA_CHECK_LAUNCH("attention_probabilities_kernel");
}

// Calls run(T{}) with the CUDA element type of dtype; false when there is none.
template <class Run>
bool dispatch(DType dtype, Run&& run) {
  switch (dtype) {
    case DType::Float32:
      run(float{});
      return true;
    case DType::BFloat16:
      run(__nv_bfloat16{});
      return true;
    case DType::Float16:
      run(__half{});
      return true;
    default:
      return false;
  }
}

}  // namespace

bool attention_forward_cuda(DType dtype, const AttentionSizes& sizes, const AttentionBlocks& blocks,
                            const AttentionInputs<void, float>& inputs, void* out, float* lse) {
  return dispatch(dtype, [&]<class T>(T) { launch_forward<T>(sizes, blocks, inputs, out, lse); });
}

bool attention_backward_cuda(DType dtype, const AttentionSizes& sizes, const AttentionBlocks& blocks,
                             const AttentionInputs<void, float>& inputs, const void* out, const float* lse,
                             const void* grad_out, const float* grad_lse, float* delta, float* dq_accumulator,
                             const AttentionGrads<void, float>& grads) {
  return dispatch(dtype, [&]<class T>(T) {
    launch_backward<T>(sizes, blocks, inputs, out, lse, grad_out, grad_lse, delta, dq_accumulator, grads);
  });
}

bool attention_probabilities_cuda(DType dtype, const AttentionSizes& sizes, const AttentionBlocks& blocks,
                                  const AttentionInputs<void, float>& inputs, const float* lse, float* probabilities) {
  return dispatch(dtype, [&]<class T>(T) { launch_probabilities<T>(sizes, blocks, inputs, lse, probabilities); });
}

}  // namespace strata::kernels
