// Top-k block selection on CUDA (rule in topk_blocks.h), in six small kernels:
//  0. row offsets: the row lengths depend on the query block only, so row r = (batch,
//     head) * query_blocks + i starts at (r / query_blocks) * per_head + prefix(i),
//     one thread per row (no host copy, no synchronisation);
//  1. pool: one block of threads per pooled row (a query block of a selecting head,
//     or a key block of a kv head), threads over head_dim, float32 sums;
//  2. select: one warp per selecting row; the lanes score the visible key blocks into
//     shared memory, then pick the best remaining block top_k - forced times by a
//     warp argmax (score, then lower index), and write the chosen blocks in
//     increasing order (ballot compaction) to the rows of every head that selects
//     with this one;
//  3. count: one thread per layout column (batch, head, key block) counts the rows
//     that list it (binary search in each sorted row);
//  4. scan: one block turns the counts into column offsets (exclusive prefix sum);
//  5. fill: the same walk as count writes each column's query blocks in order.
// The selection is a small fraction of the attention that follows (pooled rows are
// 1 / block_size of the inputs), so the kernels favour simplicity over speed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/block_sparse/topk_blocks_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kPoolThreads = 128;
constexpr int kScanThreads = 1024;
constexpr int kColumnThreads = 256;

__global__ void fill_row_offsets(TopKBlockSizes s, int32_t* row_offsets) {
  const int64_t rows = s.batch * s.heads * s.query_blocks();
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r > rows) return;
  int64_t per_head = 0, prefix = 0;
  const int64_t i = r % s.query_blocks();
  for (int64_t n = 0; n < s.query_blocks(); ++n) {
    if (n < i) prefix += s.row_length(n);
    per_head += s.row_length(n);
  }
  row_offsets[r] = static_cast<int32_t>((r / s.query_blocks()) * per_head + prefix);
}

// pooled_q (batch, selecting heads, query_blocks, D) then pooled_k (batch, kv_heads,
// key_blocks, D): blockIdx.x enumerates the query rows first, then the key rows.
template <class T>
__global__ void pool_blocks(TopKBlockSizes s, const T* q, const T* k, float* pooled_q, float* pooled_k) {
  const int64_t query_rows = s.batch * s.selecting_heads() * s.query_blocks();
  const int64_t row = blockIdx.x;
  const int64_t D = s.head_dim;
  if (row < query_rows) {
    const int64_t i = row % s.query_blocks(), sh = (row / s.query_blocks()) % s.selecting_heads(),
                  b = row / (s.query_blocks() * s.selecting_heads());
    const int64_t per = s.share_by_group ? s.group() : 1;
    const int64_t first = i * s.block_size, last = min(s.length_q, first + s.block_size);
    const float count = static_cast<float>((last - first) * per);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float total = 0.f;
      for (int64_t h = sh * per; h < (sh + 1) * per; ++h)
        for (int64_t t = first; t < last; ++t) total += to_float(q[((b * s.heads + h) * s.length_q + t) * D + d]);
      pooled_q[row * D + d] = total / count;
    }
  } else {
    const int64_t r = row - query_rows;
    const int64_t j = r % s.key_blocks(), bg = r / s.key_blocks();
    const int64_t first = j * s.block_size, last = min(s.length_k, first + s.block_size);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float total = 0.f;
      for (int64_t t = first; t < last; ++t) total += to_float(k[(bg * s.length_k + t) * D + d]);
      pooled_k[r * D + d] = total / static_cast<float>(last - first);
    }
  }
}

// Is (score a, index ia) better than (b, ib)? Higher score, then lower index; an
// index < 0 is "none" and loses to anything.
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) {
  if (ib < 0) return ia >= 0;
  if (ia < 0) return false;
  return a > b || (a == b && ia < ib);
}

// One warp per selecting row; dynamic shared memory: D + key_blocks floats, then
// key_blocks chars.
__global__ void select_blocks(TopKBlockSizes s, const float* pooled_q, const float* pooled_k,
                              const int32_t* row_offsets, int32_t* column_indices) {
  extern __shared__ float shared[];
  const int64_t D = s.head_dim, key_blocks = s.key_blocks();
  float* query = shared;
  float* scores = shared + D;
  char* chosen = reinterpret_cast<char*>(scores + key_blocks);
  const int lane = threadIdx.x;
  const int64_t row = blockIdx.x;
  const int64_t i = row % s.query_blocks(), sh = (row / s.query_blocks()) % s.selecting_heads(),
                b = row / (s.query_blocks() * s.selecting_heads());
  const int64_t kv_head = s.share_by_group ? sh : sh / s.group();
  const int64_t visible = s.visible(i);

  for (int64_t d = lane; d < D; d += 32) query[d] = pooled_q[row * D + d];
  __syncwarp();
  int forced = 0;
  for (int64_t j = lane; j < visible; j += 32) {
    const float* key = pooled_k + ((b * s.kv_heads + kv_head) * key_blocks + j) * D;
    float score = 0.f;
    for (int64_t d = 0; d < D; ++d) score += query[d] * key[d];
    scores[j] = isnan(score) ? -INFINITY : score;
    chosen[j] = s.forced(i, j) ? 1 : 0;
    forced += chosen[j];
  }
  for (int offset = 16; offset > 0; offset >>= 1) forced += __shfl_xor_sync(0xffffffffu, forced, offset);
  __syncwarp();

  for (int64_t taken = forced; taken < s.row_length(i); ++taken) {
    float best_score = -INFINITY;
    int best = -1;
    for (int64_t j = lane; j < visible; j += 32)
      if (!chosen[j] && better(scores[j], static_cast<int>(j), best_score, best)) {
        best_score = scores[j];
        best = static_cast<int>(j);
      }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float other_score = __shfl_xor_sync(0xffffffffu, best_score, offset);
      const int other = __shfl_xor_sync(0xffffffffu, best, offset);
      if (better(other_score, other, best_score, best)) {
        best_score = other_score;
        best = other;
      }
    }
    if (lane == 0) chosen[best] = 1;
    __syncwarp();
  }

  // Compact the chosen blocks in increasing order into every row of the group.
  const int64_t per = s.share_by_group ? s.group() : 1;
  int written = 0;
  for (int64_t base = 0; base < visible; base += 32) {
    const int64_t j = base + lane;
    const bool mine = j < visible && chosen[j];
    const unsigned ballot = __ballot_sync(0xffffffffu, mine);
    if (mine) {
      const int position = written + __popc(ballot & ((1u << lane) - 1u));
      for (int64_t h = sh * per; h < (sh + 1) * per; ++h)
        column_indices[row_offsets[(b * s.heads + h) * s.query_blocks() + i] + position] = static_cast<int32_t>(j);
    }
    written += __popc(ballot);
  }
}

// The position of `value` in the sorted run [begin, end), or -1.
__device__ __forceinline__ int64_t find(const int32_t* values, int64_t begin, int64_t end, int32_t value) {
  while (begin < end) {
    const int64_t middle = (begin + end) / 2;
    if (values[middle] < value)
      begin = middle + 1;
    else
      end = middle;
  }
  return begin;
}

// fill == false: counts[column] = the rows listing it; fill == true: writes them
// to row_indices from column_offsets[column] on.
template <bool kFill>
__global__ void walk_columns(TopKBlockSizes s, const int32_t* row_offsets, const int32_t* column_indices,
                             int32_t* counts, const int32_t* column_offsets, int32_t* row_indices) {
  const int64_t column = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t key_blocks = s.key_blocks(), query_blocks = s.query_blocks();
  if (column >= s.batch * s.heads * key_blocks) return;
  const int32_t j = static_cast<int32_t>(column % key_blocks);
  const int64_t head_row = (column / key_blocks) * query_blocks;  // the first row of this (batch, head)
  int32_t n = 0;
  int32_t* out = kFill ? row_indices + column_offsets[column] : nullptr;
  for (int64_t i = 0; i < query_blocks; ++i) {
    const int64_t begin = row_offsets[head_row + i], end = row_offsets[head_row + i + 1];
    const int64_t at = find(column_indices, begin, end, j);
    if (at < end && column_indices[at] == j) {
      if (kFill) out[n] = static_cast<int32_t>(i);
      ++n;
    }
  }
  if (!kFill) counts[column] = n;
}

// offsets[0] = 0, offsets[c + 1] = offsets[c] + counts[c], in one block: each thread
// sums a contiguous chunk, the chunk totals are scanned in shared memory, then each
// thread writes its chunk.
__global__ void scan_counts(const int32_t* counts, int64_t n, int32_t* offsets) {
  __shared__ int32_t totals[kScanThreads];
  const int64_t chunk = (n + kScanThreads - 1) / kScanThreads;
  const int64_t begin = threadIdx.x * chunk, end = min(n, begin + chunk);
  int32_t total = 0;
  for (int64_t c = begin; c < end; ++c) total += counts[c];
  totals[threadIdx.x] = total;
  __syncthreads();
  for (int stride = 1; stride < kScanThreads; stride <<= 1) {  // inclusive Hillis-Steele scan
    const int32_t add = threadIdx.x >= stride ? totals[threadIdx.x - stride] : 0;
    __syncthreads();
    totals[threadIdx.x] += add;
    __syncthreads();
  }
  int32_t running = totals[threadIdx.x] - total;
  if (threadIdx.x == 0) offsets[0] = 0;
  for (int64_t c = begin; c < end; ++c) {
    running += counts[c];
    offsets[c + 1] = running;
  }
}

template <class T>
void launch(const TopKBlockSizes& s, const void* q, const void* k, int32_t* row_offsets, int32_t* column_indices,
            int32_t* column_offsets, int32_t* row_indices, float* workspace, int32_t* column_counts) {
  cudaStream_t stream = cuda::stream();
  const int64_t rows = s.batch * s.heads * s.query_blocks();
  fill_row_offsets<<<static_cast<unsigned>((rows + 1 + kColumnThreads - 1) / kColumnThreads), kColumnThreads, 0,
                     stream>>>(s, row_offsets);
  STRATA_CUDA_CHECK_LAUNCH("topk_blocks fill_row_offsets");

  float* pooled_q = workspace;
  float* pooled_k = workspace + s.batch * s.selecting_heads() * s.query_blocks() * s.head_dim;
  const int64_t query_rows = s.batch * s.selecting_heads() * s.query_blocks();
  const int64_t pooled_rows = query_rows + s.batch * s.kv_heads * s.key_blocks();
  pool_blocks<T><<<static_cast<unsigned>(pooled_rows), kPoolThreads, 0, stream>>>(
      s, static_cast<const T*>(q), static_cast<const T*>(k), pooled_q, pooled_k);
  STRATA_CUDA_CHECK_LAUNCH("topk_blocks pool_blocks");

  const size_t shared = (s.head_dim + s.key_blocks()) * sizeof(float) + s.key_blocks();
  if (shared > 48 * 1024)
    STRATA_CUDA_CHECK(
        cudaFuncSetAttribute(select_blocks, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
  select_blocks<<<static_cast<unsigned>(query_rows), 32, shared, stream>>>(s, pooled_q, pooled_k, row_offsets,
                                                                         column_indices);
  STRATA_CUDA_CHECK_LAUNCH("topk_blocks select_blocks");

  const int64_t columns = s.batch * s.heads * s.key_blocks();
  const unsigned column_grid = static_cast<unsigned>((columns + kColumnThreads - 1) / kColumnThreads);
  walk_columns<false><<<column_grid, kColumnThreads, 0, stream>>>(s, row_offsets, column_indices, column_counts,
                                                                  nullptr, nullptr);
  STRATA_CUDA_CHECK_LAUNCH("topk_blocks count_columns");
  scan_counts<<<1, kScanThreads, 0, stream>>>(column_counts, columns, column_offsets);
  STRATA_CUDA_CHECK_LAUNCH("topk_blocks scan_counts");
  walk_columns<true><<<column_grid, kColumnThreads, 0, stream>>>(s, row_offsets, column_indices, nullptr,
                                                                 column_offsets, row_indices);
  STRATA_CUDA_CHECK_LAUNCH("topk_blocks fill_columns");
}

}  // namespace

bool topk_blocks_cuda(DType dtype, const TopKBlockSizes& sizes, const void* q, const void* k, int32_t* row_offsets,
                      int32_t* column_indices, int32_t* column_offsets, int32_t* row_indices, float* workspace,
                      int32_t* column_counts) {
  switch (dtype) {
    case DType::Float32:
      launch<float>(sizes, q, k, row_offsets, column_indices, column_offsets, row_indices, workspace, column_counts);
      return true;
    case DType::BFloat16:
      launch<__nv_bfloat16>(sizes, q, k, row_offsets, column_indices, column_offsets, row_indices, workspace,
                            column_counts);
      return true;
    case DType::Float16:
      launch<__half>(sizes, q, k, row_offsets, column_indices, column_offsets, row_indices, workspace, column_counts);
      return true;
    default:
      return false;
  }
}

}  // namespace strata::kernels
