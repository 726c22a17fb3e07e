// CUDA route_gather / route_scatter / route_merge against the float64 CPU reference
// on fresh random inputs, in float32 and bfloat16, outputs and gradients, on
// VMamba's four cross-scan routes over a 14 x 14 grid, all fourteen routes over an
// odd 7 x 5 grid, and a 56 x 56 grid with one channel.
//
// Tolerances, relative to the largest reference value of each tensor:
//  - gather and scatter only copy rows, so the only error is the rounding of the
//    float64 inputs (and of the random output weights the gradient check uses) to
//    the test dtype: 2^-24 (float32, bound 1e-7) and 2^-9 (bfloat16, bound 4e-3).
//  - merge adds K values in float32 and rounds once; its inputs lie in [0.5, 1], so
//    the sum is at least as large as each term: float32 (K + 1) 2^-24 (bound 1e-6);
//    bfloat16 rounds each input and the sum by 2^-9 (bound 1e-2 for K up to 14,
//    measured against the largest sum, which is at least K/2).
#include <tuple>

#include "strata/ops/routes.h"
#include "support/check.h"

using namespace strata;
using ops::Route;
using ops::RouteKind;

namespace {

std::vector<Route> every_route() {
  std::vector<Route> routes;
  for (RouteKind kind : {RouteKind::RowMajor, RouteKind::ColumnMajor, RouteKind::RowSnake, RouteKind::ColumnSnake,
                         RouteKind::Diagonal, RouteKind::Spiral, RouteKind::Sublattice2})
    for (bool reverse : {false, true}) routes.push_back({kind, reverse});
  return routes;
}

void check_table(const ops::RouteTable& table, int64_t batch, int64_t channels, uint64_t seed) {
  MESSAGE("routes: " << table.count() << " over a " << table.height() << " x " << table.width() << " grid, batch "
                     << batch << ", channels " << channels);
  const Shape grid{batch, table.length(), channels}, stack{batch, table.count(), table.length(), channels};
  auto gather = [table](const std::vector<Tensor>& in) { return ops::route_gather(in[0], table); };
  auto scatter = [table](const std::vector<Tensor>& in) { return ops::route_scatter(in[0], table); };
  auto merge = [table](const std::vector<Tensor>& in) { return ops::route_merge(in[0], table); };
  std::vector<Tensor> grid_input{testing::random(grid, seed).set_requires_grad(true)};
  std::vector<Tensor> stack_input{testing::random(stack, seed + 1).set_requires_grad(true)};
  std::vector<Tensor> positive_stack{
      testing::random(stack, seed + 2, DType::Float64, 0.5, 1.0).set_requires_grad(true)};
  for (auto [dtype, copy_bound, merge_bound] :
       {std::tuple{DType::Float32, 1e-7, 1e-6}, std::tuple{DType::BFloat16, 4e-3, 1e-2}}) {
    testing::check_cuda_matches_cpu(gather, grid_input, dtype, copy_bound);
    testing::check_cuda_matches_cpu(gather, stack_input, dtype, copy_bound);
    testing::check_cuda_matches_cpu(scatter, stack_input, dtype, copy_bound);
    testing::check_cuda_matches_cpu(merge, positive_stack, dtype, merge_bound);
  }
}

}  // namespace

TEST_CASE("route ops on CUDA match the CPU on VMamba's cross-scan routes") {
  testing::require_cuda();
  ops::RouteTable table({{RouteKind::RowMajor, false},
                         {RouteKind::ColumnMajor, false},
                         {RouteKind::RowMajor, true},
                         {RouteKind::ColumnMajor, true}},
                        14, 14);
  check_table(table, 3, 96, 1);
}

TEST_CASE("route ops on CUDA match the CPU for every route on an odd grid") {
  testing::require_cuda();
  check_table(ops::RouteTable(every_route(), 7, 5), 2, 3, 10);
}

TEST_CASE("route ops on CUDA match the CPU with one channel on a large grid") {
  testing::require_cuda();
  check_table(ops::RouteTable({{RouteKind::Spiral, false}, {RouteKind::Sublattice2, true}}, 56, 56), 2, 1, 20);
}

TEST_CASE("RouteTable keeps one device copy of its tables") {
  testing::require_cuda();
  ops::RouteTable table({{RouteKind::Diagonal, false}}, 9, 4);
  Tensor order = table.order_on(Device::cuda());
  CHECK(order.device() == Device::cuda());
  CHECK(ops::RouteTable({{RouteKind::Diagonal, false}}, 9, 4).order_on(Device::cuda()).data_ptr() == order.data_ptr());
  CHECK(order.to_vector<int32_t>() == table.order());
  CHECK(table.inverse_on(Device::cuda()).to_vector<int32_t>() == table.inverse());
}
