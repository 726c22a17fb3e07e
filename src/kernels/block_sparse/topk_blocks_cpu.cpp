// CPU reference of top-k block selection: plain loops, one selecting row at a time
// (OpenMP over rows); see topk_blocks.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/block_sparse/topk_blocks.h"

namespace strata::kernels {

template <class T>
void topk_blocks_cpu(const TopKBlockSizes& s, const T* q, const T* k, const int32_t* row_offsets,
                     int32_t* column_indices) {
  const int64_t D = s.head_dim, query_blocks = s.query_blocks(), key_blocks = s.key_blocks();
  const int64_t selecting = s.selecting_heads(), heads_per_selecting = s.share_by_group ? s.group() : 1;

  // Mean-pooled keys, (batch, kv_heads, key_blocks, D).
  std::vector<double> pooled_k(static_cast<size_t>(s.batch * s.kv_heads * key_blocks * D), 0.0);
  for (int64_t r = 0; r < s.batch * s.kv_heads * key_blocks; ++r) {
    const int64_t j = r % key_blocks, bg = r / key_blocks;
    const int64_t first = j * s.block_size, last = std::min(s.length_k, first + s.block_size);
    double* pooled = pooled_k.data() + r * D;
    for (int64_t t = first; t < last; ++t)
      for (int64_t d = 0; d < D; ++d) pooled[d] += static_cast<double>(k[(bg * s.length_k + t) * D + d]);
    for (int64_t d = 0; d < D; ++d) pooled[d] /= static_cast<double>(last - first);
  }

  const int64_t rows = s.batch * selecting * query_blocks;
#pragma omp parallel for schedule(static) if (rows * key_blocks * D > (int64_t{1} << 18))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r % query_blocks, sh = (r / query_blocks) % selecting, b = r / (query_blocks * selecting);
    // Pooled query over the block's positions and the heads that select together.
    const int64_t first = i * s.block_size, last = std::min(s.length_q, first + s.block_size);
    std::vector<double> pooled_q(static_cast<size_t>(D), 0.0);
    for (int64_t h = sh * heads_per_selecting; h < (sh + 1) * heads_per_selecting; ++h)
      for (int64_t t = first; t < last; ++t) {
        const T* row = q + ((b * s.heads + h) * s.length_q + t) * D;
        for (int64_t d = 0; d < D; ++d) pooled_q[d] += static_cast<double>(row[d]);
      }
    const double count = static_cast<double>((last - first) * heads_per_selecting);

    // Scores of the visible key blocks (NaN ranks as -inf), forced blocks first.
    const int64_t kv_head = s.share_by_group ? sh : sh / s.group(), visible = s.visible(i);
    std::vector<char> chosen(static_cast<size_t>(key_blocks), 0);
    std::vector<double> scores(static_cast<size_t>(std::max<int64_t>(visible, 0)));
    int64_t taken = 0;
    for (int64_t j = 0; j < visible; ++j) {
      const double* pooled = pooled_k.data() + ((b * s.kv_heads + kv_head) * key_blocks + j) * D;
      double score = 0;
      for (int64_t d = 0; d < D; ++d) score += pooled_q[d] / count * pooled[d];
      scores[j] = std::isnan(score) ? -std::numeric_limits<double>::infinity() : score;
      if (s.forced(i, j)) {
        chosen[j] = 1;
        ++taken;
      }
    }
    // The best remaining block until the row is full (ties to the lower index).
    for (; taken < s.row_length(i); ++taken) {
      int64_t best = -1;
      for (int64_t j = 0; j < visible; ++j)
        if (!chosen[j] && (best < 0 || scores[j] > scores[best])) best = j;
      chosen[best] = 1;
    }
    // The same list for every head that selects with this one.
    for (int64_t h = sh * heads_per_selecting; h < (sh + 1) * heads_per_selecting; ++h) {
      int32_t* out = column_indices + row_offsets[(b * s.heads + h) * query_blocks + i];
      for (int64_t j = 0; j < visible; ++j)
        if (chosen[j]) *out++ = static_cast<int32_t>(j);
    }
  }
}

template void topk_blocks_cpu<float>(const TopKBlockSizes&, const float*, const float*, const int32_t*, int32_t*);
template void topk_blocks_cpu<double>(const TopKBlockSizes&, const double*, const double*, const int32_t*, int32_t*);

}  // namespace strata::kernels
