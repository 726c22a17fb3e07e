// Rotary position embedding: one fused kernel (src/kernels/rope) over tables of
// cos/sin made on the host; see include/strata/ops/rope.h.
#include "strata/ops/rope.h"

#include <cmath>
#include <vector>

#include "kernels/rope/rope_cpu.h"
#include "op_utils.h"
#include "strata/ops/ops.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/rope/rope_cuda.h"
#endif

namespace strata::ops {
namespace {

constexpr const char* kOp = "rotary_embedding";

// cos and sin of position_m * theta_i, each (length, head_dim / 2), on `device`:
// float64 for float64 x, float32 otherwise (the kernels compute in float32 for
// bfloat16). Formed in double: at long positions a float32 angle loses the low bits
// of m * theta_i.
std::pair<Tensor, Tensor> rotation_tables(const std::vector<int64_t>& positions, int64_t head_dim, double base,
                                          DType dtype, Device device) {
  int64_t half = head_dim / 2, length = static_cast<int64_t>(positions.size());
  std::vector<double> thetas(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    thetas[static_cast<size_t>(i)] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  std::vector<double> cosines(static_cast<size_t>(length * half)), sines(cosines.size());
  for (int64_t m = 0; m < length; ++m) {
    for (int64_t i = 0; i < half; ++i) {
      double angle = static_cast<double>(positions[static_cast<size_t>(m)]) * thetas[static_cast<size_t>(i)];
      cosines[static_cast<size_t>(m * half + i)] = std::cos(angle);
      sines[static_cast<size_t>(m * half + i)] = std::sin(angle);
    }
  }
  DType table_dtype = dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  Tensor cos_table = Tensor::from_vector(cosines, {length, half}).to(table_dtype).to(device);
  Tensor sin_table = Tensor::from_vector(sines, {length, half}).to(table_dtype).to(device);
  return {cos_table, sin_table};
}

// The fused rotation of x (batch, heads, length, head_dim) by the tables, or by the
// opposite angles when `inverse`. A rotation's transpose is its inverse, so the
// backward pass is the same op with `inverse` flipped (and is differentiable too).
Tensor apply_rotation(const Tensor& x, const Tensor& cos_table, const Tensor& sin_table, bool inverse) {
  Tensor input = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  int64_t rows = x.size(0) * x.size(1), length = x.size(2), head_dim = x.size(3);
  bool supported = true;
  if (x.device().is_cpu()) {
    switch (x.dtype()) {
      case DType::Float32:
        kernels::rotary_embedding_cpu(input.data<float>(), out.data<float>(), cos_table.data<float>(),
                                      sin_table.data<float>(), rows, length, head_dim, inverse);
        break;
      case DType::Float64:
        kernels::rotary_embedding_cpu(input.data<double>(), out.data<double>(), cos_table.data<double>(),
                                      sin_table.data<double>(), rows, length, head_dim, inverse);
        break;
      default: supported = false;
    }
  } else {
#ifdef STRATA_WITH_CUDA
    supported = kernels::rotary_embedding_cuda(x.dtype(), input.data_ptr(), out.data_ptr(), cos_table.data<float>(),
                                               sin_table.data<float>(), rows, length, head_dim, inverse);
#else
    supported = false;
#endif
  }
  STRATA_CHECK(supported, "{}: {} is not supported", kOp, x.str());
  autograd::record(kOp, {x}, out, [cos_table, sin_table, inverse](const Tensor& grad) {
    return std::vector<Tensor>{apply_rotation(grad, cos_table, sin_table, !inverse)};
  });
  return out;
}

Tensor rotate(const Tensor& x, const std::vector<int64_t>& positions, double base) {
  detail::check_defined(kOp, x, "x");
  STRATA_CHECK(x.dim() == 4, "{}: x must be (batch, heads, length, head_dim), got {}", kOp, x.str());
  detail::check_compute_dtype(kOp, x);
  int64_t head_dim = x.size(3);
  STRATA_CHECK(head_dim % 2 == 0, "{}: head_dim must be even, got {}", kOp, x.str());
  STRATA_CHECK(static_cast<int64_t>(positions.size()) == x.size(2),
               "{}: {} positions for a length of {} in x {}", kOp, positions.size(), x.size(2), x.str());
  STRATA_CHECK(base > 1.0, "{}: base must be > 1, got {}", kOp, base);
  auto [cos_table, sin_table] = rotation_tables(positions, head_dim, base, x.dtype(), x.device());
  return apply_rotation(x, cos_table, sin_table, false);
}

}  // namespace

Tensor rotary_embedding(const Tensor& x, const Tensor& positions, double base) {
  detail::check_defined(kOp, positions, "positions");
  detail::check_index_dtype(kOp, positions);
  STRATA_CHECK(positions.dim() == 1, "{}: positions must be 1-D (length), got {}", kOp, positions.str());
  return rotate(x, positions.to_vector<int64_t>(), base);
}

Tensor rotary_embedding(const Tensor& x, int64_t offset, double base) {
  detail::check_defined(kOp, x, "x");
  STRATA_CHECK(offset >= 0, "{}: offset must be >= 0, got {}", kOp, offset);
  STRATA_CHECK(x.dim() == 4, "{}: x must be (batch, heads, length, head_dim), got {}", kOp, x.str());
  std::vector<int64_t> positions(static_cast<size_t>(x.size(2)));
  for (size_t m = 0; m < positions.size(); ++m) positions[m] = offset + static_cast<int64_t>(m);
  return rotate(x, positions, base);
}

}  // namespace strata::ops
