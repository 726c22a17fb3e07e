// Raw CPU matrix product (no Tensor): float and double, any strides, a strided batch.
#pragma once

#include <cstdint>

namespace strata::kernels {

// Where the elements of one operand of a batched product lie: element (i, j) of
// matrix number b is data[b * batch_stride + i * row_stride + j * column_stride]
// (strides in elements). A transposed operand is the same matrix with its two
// strides swapped, so no transpose flag is needed.
struct MatrixLayout {
  int64_t row_stride = 0;
  int64_t column_stride = 1;
  int64_t batch_stride = 0;
};

// For b < batch: c[b] (m, n) = alpha * a[b] (m, k) @ b[b] (k, n) + beta * c[b].
// With beta == 0, c is written without being read (it may hold NaN). The matrices
// of c must not overlap each other; a and b may (batch_stride 0 shares one matrix
// across the batch).
template <class T>
void gemm_cpu(int64_t m, int64_t n, int64_t k, int64_t batch, T alpha, const T* a, const MatrixLayout& a_layout,
              const T* b, const MatrixLayout& b_layout, T beta, T* c, const MatrixLayout& c_layout);

}  // namespace strata::kernels
