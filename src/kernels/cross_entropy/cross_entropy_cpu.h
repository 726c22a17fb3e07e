// CPU reference of the fused cross-entropy loss (no Tensor: raw pointers).
// logits (rows, classes) contiguous in T (float or double), targets (rows) of
// int32 or int64. A row whose target equals ignore_index does not count.
// Accumulated in double.
#pragma once

#include <cstdint>

namespace strata::kernels {

// The first row whose target is neither in [0, classes) nor ignore_index, or -1.
template <class Index>
int64_t first_invalid_target_cpu(const Index* targets, int64_t rows, int64_t classes, int64_t ignore_index);

// Targets must be valid (first_invalid_target_cpu). Writes, per row, the
// logsumexp of its logits (saved for the backward; 0 for ignored rows), and
// loss = mean over counted rows of (logsumexp(logits[r]) - logits[r, targets[r]])
// (0 when no row counts) and count = the number of counted rows.
template <class T, class Index>
void cross_entropy_forward_cpu(const T* logits, const Index* targets, int64_t rows, int64_t classes,
                               int64_t ignore_index, T* row_logsumexp, T* loss, T* count);

// dlogits[r] = (softmax(logits[r]) - onehot(targets[r])) * scale, with
// softmax = exp(logits - logsumexp); zero for ignored rows. scale = dloss / count.
template <class T, class Index>
void cross_entropy_backward_cpu(const T* logits, const Index* targets, const T* row_logsumexp, int64_t rows,
                                int64_t classes, int64_t ignore_index, double scale, T* dlogits);

}  // namespace strata::kernels
