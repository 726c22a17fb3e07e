// Internal helpers shared by the ops: argument checks with messages that name the
// op, broadcasting, and the reduction of a broadcast gradient back to its input.
#pragma once

#include <string>
#include <vector>

#include "strata/autograd/autograd.h"
#include "strata/core/tensor.h"

namespace strata::ops::detail {

// dim in [-ndim, ndim) -> [0, ndim).
int normalize_dim(const char* op, int dim, int ndim);

void check_defined(const char* op, const Tensor& t, const char* what);
void check_same_device(const char* op, const Tensor& a, const Tensor& b);
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b);
// Float dtypes the op's kernels support on the tensor's device: float32/float64 on
// the CPU, float32/bfloat16 on CUDA.
void check_compute_dtype(const char* op, const Tensor& t);
void check_index_dtype(const char* op, const Tensor& index);
// t has `rank` dims / the shape `expected`; layout, e.g. "(batch, length, heads)",
// names the dims in the message.
void check_rank(const char* op, const char* name, const Tensor& t, int rank, const char* layout);
void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected, const char* layout);

// Calls run(float{}) or run(double{}): the CPU kernels' element type for `dtype`.
template <class Run>
void for_cpu_dtype(DType dtype, Run&& run) {
  if (dtype == DType::Float32)
    run(float{});
  else
    run(double{});
}

// The broadcast shape of a and b, or an error naming the op and both shapes.
Shape broadcast_shape(const char* op, const Shape& a, const Shape& b);
// Strides that read `t` as if it had `shape` (0 on broadcast dims), aligned right.
Shape broadcast_strides(const Tensor& t, const Shape& shape);
// Sums `grad` (of a broadcast result) down to `shape`.
Tensor reduce_to_shape(const Tensor& grad, const Shape& shape);

}  // namespace strata::ops::detail
