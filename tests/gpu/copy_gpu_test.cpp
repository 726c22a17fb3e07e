// Strided copies on CUDA (contiguous() of permuted, sliced, broadcast and offset
// views, in every element size) equal the same copies on the CPU exactly: a copy
// moves bits, so any difference is a wrong index or a torn word.
#include <numeric>

#include "support/check.h"

using namespace strata;

namespace {

// A view of `base` (contiguous, dims `shape`) through strides and an offset, copied
// to contiguous memory on the CPU and on the GPU.
void check_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  Tensor cpu = base.as_strided(shape, strides, offset).contiguous();
  Tensor gpu = base.to(Device::cuda(0)).as_strided(shape, strides, offset).contiguous().to(Device::cpu());
  INFO(dtype_name(base.dtype()), " view ", shape_str(shape), " strides ", shape_str(strides), " offset ", offset);
  CHECK(testing::max_abs_difference(cpu.to(DType::Float64), gpu.to(DType::Float64)) == 0.0);
}

}  // namespace

TEST_CASE("strided copies on CUDA equal the CPU's, for every element size") {
  testing::require_cuda();
  for (DType dtype : {DType::Float32, DType::BFloat16, DType::Int64, DType::UInt8}) {
    Tensor base = testing::random({2 * 3 * 130 * 64 + 8}, 7, DType::Float64, 0, 100).to(dtype);
    // (2, 130, 3, 64) read as (2, 3, 130, 64): the split_heads permute.
    check_view(base, {2, 3, 130, 64}, {130 * 3 * 64, 64, 3 * 64, 1}, 0);
    // The same from an odd offset (no wide words).
    check_view(base, {2, 3, 130, 64}, {130 * 3 * 64, 64, 3 * 64, 1}, 1);
    // A 2-D transpose (no contiguous inner dim).
    check_view(base, {64, 130}, {1, 64}, 0);
    // A slice of the inner dim (rows of 40 out of 64), and a broadcast dim.
    check_view(base, {3, 130, 40}, {130 * 64, 64, 1}, 8);
    check_view(base, {4, 130, 64}, {0, 64, 1}, 0);
    // Odd inner sizes and a single element.
    check_view(base, {7, 5, 3}, {3, 21, 1}, 2);
    check_view(base, {1, 1}, {1, 1}, 5);
  }
}
