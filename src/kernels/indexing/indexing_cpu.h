// CPU reference of the indexing family (raw pointers, contiguous operands, int64
// indices already checked to lie in [0, n)). Every op sees its operands as
// (outer, n, inner): `n` is the size of the indexed dim, `outer` the product of the
// sizes before it and `inner` of those after it; the index (or the result) has `k`
// in place of `n`.
//
//   index_select  out[o][j][i]  = a[o][index[j]][i]          index (k)
//   index_add     acc[o][index[j]][i]  += src[o][j][i]       index (k); backward of index_select
//   gather        out[o][j][i]  = a[o][index[o][j][i]][i]    index (outer, k, inner)
//   scatter_add   acc[o][index[o][j][i]][i] += src[o][j][i]  index (outer, k, inner); backward of gather
//
// The accumulating kernels add in a fixed order (j ascending for each (o, i)), so
// their results do not depend on the thread count.
#pragma once

#include <cstdint>

namespace strata::kernels {

template <class T>
void index_select_cpu(const T* a, const int64_t* index, T* out, int64_t outer, int64_t n, int64_t k, int64_t inner);
template <class T>
void index_add_cpu(const T* src, const int64_t* index, T* accumulator, int64_t outer, int64_t n, int64_t k,
                   int64_t inner);
template <class T>
void gather_cpu(const T* a, const int64_t* index, T* out, int64_t outer, int64_t n, int64_t k, int64_t inner);
template <class T>
void scatter_add_cpu(const T* src, const int64_t* index, T* accumulator, int64_t outer, int64_t n, int64_t k,
                     int64_t inner);

}  // namespace strata::kernels
