// Raw CUDA matrix products (nvcc-safe: no Tensor, no fmt). The arguments are
// validated by src/kernels/gemm/gemm.cpp; these calls only translate them for cuBLAS.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

// One row-major input operand of a (batched) product. op(x) is the (rows, cols)
// matrix the product uses: x itself stored row-major with row stride
// leading_dimension, or, when transposed, the transpose of a stored row-major
// (cols, rows) matrix with row stride leading_dimension. Matrix number i of the
// batch starts batch_stride elements after matrix i - 1 (0: shared by the batch).
struct CudaGemmOperand {
  const void* data = nullptr;
  bool transposed = false;
  int64_t leading_dimension = 0;
  int64_t batch_stride = 0;
};

// For i < batch: c[i] (m, n) = alpha * op(a[i]) (m, k) @ op(b[i]) (k, n) + beta * c[i],
// c row-major with row stride ldc, on Strata's stream, through cuBLASLt with float32
// accumulation. input_dtype: float32 or bfloat16; output_dtype: float32, or bfloat16
// for bfloat16 inputs. With allow_tf32, float32 inputs may be rounded to TF32 inside
// the tensor cores. Heuristic algorithms are cached per shape, layout, dtype and
// alignment. Requires m, n, k >= 1 and batch <= INT32_MAX. Returns false when the
// dtype pair is not supported.
bool gemm_cuda(DType input_dtype, DType output_dtype, int64_t m, int64_t n, int64_t k, int64_t batch, float alpha,
               const CudaGemmOperand& a, const CudaGemmOperand& b, float beta, void* c, int64_t ldc,
               int64_t c_batch_stride, bool allow_tf32);

// One (unbatched) product through plain cublasGemmEx with the default algorithm and
// float32 accumulation: the baseline `strata bench` compares gemm_cuda against.
// Requires m, n, k, and the leading dimensions to fit in int32.
bool gemm_cublas_reference_cuda(DType input_dtype, DType output_dtype, int64_t m, int64_t n, int64_t k, float alpha,
                                const CudaGemmOperand& a, const CudaGemmOperand& b, float beta, void* c, int64_t ldc,
                                bool allow_tf32);

}  // namespace strata::kernels
