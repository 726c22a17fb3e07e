// The keep mask of dynamic mask attention (DMA, arXiv 2508.02124) from its key bias:
// which queries keep which keys. See kernels/attention/attention_args.h
// (AttentionKeyMask) for how the attention kernels read it.
//
// For one (batch, kv head), the bias b_j of key j is the same for every query, so the
// keys query i keeps, the top `window` keys by bias among the keys it sees causally,
// are the top `window` of the prefix [0, e_i] (e_i = i + Lk - Lq). Key j' beats key
// j when b_j' > b_j, or b_j' = b_j and j' < j (ties go to the earlier key). Along the
// prefixes e = j, j+1, ... key j stays among the top `window` until `window` keys
// that beat it have arrived, and never returns, so its keeping queries form one
// range, recorded by where it ends:
//   keep_end[j] = the smallest e >= j whose prefix [0, e] holds `window` keys that
//                 beat j (keep_end[j] = j: never kept), or Lk if there is none;
// query i keeps j exactly when j <= e_i < keep_end[j].
//
// CPU: one sweep over e per (batch, kv head) with a heap of the current top `window`
// keys, worst on top: key e enters, and when the heap holds window + 1 keys the worst
// leaves with keep_end = e. O(Lk log window), OpenMP over the (batch, kv head) rows.
#pragma once

#include <cstdint>

namespace strata::kernels {

// bias (rows, length) with rows = batch * kv_heads; writes keep_end (rows, length)
// and block_keep_end (rows, ceil(length / kKeepEndBlock)), the maximum keep_end of
// each block of kKeepEndBlock keys (attention_args.h). window >= 1.
template <class T>
void keep_window_ends_cpu(const T* bias, int64_t rows, int64_t length, int64_t window, int32_t* keep_end,
                          int32_t* block_keep_end);

}  // namespace strata::kernels
