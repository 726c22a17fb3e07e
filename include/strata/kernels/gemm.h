// Matrix products on raw tensors (never recorded on the tape): the layer under
// ops::matmul and ops::linear, and what `strata bench` times.
//
// Dtypes: on the CPU float32 or float64, one dtype for a, b and c. On CUDA a and b
// are float32 or bfloat16 (one dtype) and c is float32, or bfloat16 for bfloat16
// inputs; products accumulate in float32 either way (bfloat16 inputs with a float32
// c is how autocast keeps float32 activations and gradients).
//
// Layouts: a and b may be any strided views. A view that is the transpose of a
// row-major matrix costs nothing (cuBLAS gets a transpose flag, the CPU kernel packs
// it like any other); on CUDA an operand with a unit stride in neither matrix dim is
// copied first. c is written in place through its view; beta == 0 never reads it.
#pragma once

#include "strata/core/tensor.h"

namespace strata::kernels {

// c (m, n) = alpha * op(a) @ op(b) + beta * c for 2-D tensors on one device, where
// op(x) is x, or x^T when transpose_x: op(a) is (m, k) and op(b) is (k, n).
void gemm(const Tensor& a, const Tensor& b, Tensor& c, bool transpose_a, bool transpose_b, float alpha, float beta);

// For every index s of the leading dims: c[s] = alpha * a[s] @ b[s] + beta * c[s], with
// a (..., m, k), b (..., k, n) and c (..., m, n) of one rank and one set of leading
// dims. A leading dim of a or b with stride 0 (an expanded view) shares that operand
// across the dim without copying it. A leading dim of c with stride 0 sums the
// products along that dim into c: that is how the backward pass of a broadcast
// product reduces its gradient. Where the memory layout allows it, leading dims are
// folded into the matrix rows (a 2-D weight shared by a contiguous batch becomes one
// tall product) or into k (a sum over the batch becomes one deeper product).
void gemm_batched(const Tensor& a, const Tensor& b, Tensor& c, float alpha, float beta);

// gemm through plain cublasGemmEx with cuBLAS's default algorithm (CUDA only): the
// baseline the bench compares gemm's cuBLASLt path against. a and b need a unit
// stride in one of their dims, c a unit column stride.
void gemm_cublas_reference(const Tensor& a, const Tensor& b, Tensor& c, bool transpose_a, bool transpose_b, float alpha,
                           float beta);

// Whether float32 products on CUDA may round their inputs to TF32 in the tensor
// cores (process-wide). Off by default: float32 means float32.
void set_allow_tf32(bool allow);
bool allow_tf32();

}  // namespace strata::kernels
