// Rotary position embedding composed from ops; see include/strata/ops/rope.h.
#include "strata/ops/rope.h"

#include <cmath>
#include <vector>

#include "op_utils.h"
#include "strata/ops/ops.h"

namespace strata::ops {
namespace {

constexpr const char* kOp = "rotary_embedding";

// cos and sin of position_m * theta_i, each (length, head_dim / 2), in `dtype` on
// `device`. Formed in double: at long positions a float32 angle loses the low bits
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
  Tensor cos_table = Tensor::from_vector(cosines, {length, half}).to(dtype).to(device);
  Tensor sin_table = Tensor::from_vector(sines, {length, half}).to(dtype).to(device);
  return {cos_table, sin_table};
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
  int64_t half = head_dim / 2;
  auto [cos_table, sin_table] = rotation_tables(positions, head_dim, base, x.dtype(), x.device());
  // (length, half) broadcasts over (batch, heads, length, half).
  Tensor first = slice(x, 3, 0, half), second = slice(x, 3, half, head_dim);
  Tensor rotated_first = sub(mul(first, cos_table), mul(second, sin_table));
  Tensor rotated_second = add(mul(second, cos_table), mul(first, sin_table));
  return concat({rotated_first, rotated_second}, 3);
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
