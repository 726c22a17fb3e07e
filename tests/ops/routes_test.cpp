// Scan routes on the CPU: the exact order of every route on a 3 x 4 grid (and the
// 4 x 4 orders the vision papers print), that every route is a permutation on many
// grids, the neighbour property of snakes, spirals and diagonals, the RouteTable
// cache, route_gather / route_scatter / route_merge values and their inverses,
// finite-difference gradients, and the messages of bad arguments.
#include "strata/ops/routes.h"

#include <set>

#include "support/check.h"

using namespace strata;
using ops::Route;
using ops::RouteKind;

namespace {

using Order = std::vector<int32_t>;

const RouteKind kAllKinds[] = {RouteKind::RowMajor,    RouteKind::ColumnMajor, RouteKind::RowSnake,
                               RouteKind::ColumnSnake, RouteKind::Diagonal,    RouteKind::Spiral,
                               RouteKind::Sublattice2};

Order reversed(Order order) {
  std::reverse(order.begin(), order.end());
  return order;
}

}  // namespace

TEST_CASE("each route visits the cells of a 3 x 4 grid in the documented order") {
  // Raster indices of the grid:   0  1  2  3
  //                               4  5  6  7
  //                               8  9 10 11
  const std::vector<std::pair<RouteKind, Order>> expected{
      {RouteKind::RowMajor, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
      {RouteKind::ColumnMajor, {0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}},
      {RouteKind::RowSnake, {0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11}},
      {RouteKind::ColumnSnake, {0, 4, 8, 9, 5, 1, 2, 6, 10, 11, 7, 3}},
      {RouteKind::Diagonal, {0, 1, 4, 8, 5, 2, 3, 6, 9, 10, 7, 11}},
      {RouteKind::Spiral, {0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6}},
      {RouteKind::Sublattice2, {0, 2, 8, 10, 4, 6, 1, 3, 9, 11, 5, 7}},
  };
  for (const auto& [kind, order] : expected) {
    CAPTURE(ops::route_name({kind, false}));
    CHECK(ops::route_order({kind, false}, 3, 4) == order);
    CHECK(ops::route_order({kind, true}, 3, 4) == reversed(order));
  }
  // The hand-written list covers every kind.
  CHECK(expected.size() == std::size(kAllKinds));
}

TEST_CASE("routes on a 4 x 4 grid match the orders printed in the vision papers") {
  // VMamba's cross-scan k1 and k3, PlainMamba's snakes o1 and o3, MHS-VM's zigzag X0
  // and spiral S0, EfficientVMamba's four atrous routes (shared/papers/vision.md).
  CHECK(ops::route_order({RouteKind::ColumnMajor, false}, 4, 4) ==
        Order{0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15});
  CHECK(ops::route_order({RouteKind::ColumnMajor, true}, 4, 4) ==
        Order{15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0});
  CHECK(ops::route_order({RouteKind::RowSnake, false}, 4, 4) ==
        Order{0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12});
  CHECK(ops::route_order({RouteKind::ColumnSnake, false}, 4, 4) ==
        Order{0, 4, 8, 12, 13, 9, 5, 1, 2, 6, 10, 14, 15, 11, 7, 3});
  CHECK(ops::route_order({RouteKind::Diagonal, false}, 4, 4) ==
        Order{0, 1, 4, 8, 5, 2, 3, 6, 9, 12, 13, 10, 7, 11, 14, 15});
  CHECK(ops::route_order({RouteKind::Spiral, false}, 4, 4) ==
        Order{0, 1, 2, 3, 7, 11, 15, 14, 13, 12, 8, 4, 5, 6, 10, 9});
  CHECK(ops::route_order({RouteKind::Sublattice2, false}, 4, 4) ==
        Order{0, 2, 8, 10, 4, 12, 6, 14, 1, 3, 9, 11, 5, 13, 7, 15});
}

TEST_CASE("every route is a permutation of the grid on grids of many shapes") {
  for (auto [height, width] :
       {std::pair<int64_t, int64_t>{1, 1}, {1, 5}, {5, 1}, {2, 2}, {3, 4}, {4, 3}, {5, 7}, {6, 6}, {7, 2}}) {
    for (RouteKind kind : kAllKinds) {
      for (bool reverse : {false, true}) {
        const Route route{kind, reverse};
        CAPTURE(ops::route_name(route));
        CAPTURE(height);
        CAPTURE(width);
        Order order = ops::route_order(route, height, width);
        REQUIRE(static_cast<int64_t>(order.size()) == height * width);
        Order sorted = order;
        std::sort(sorted.begin(), sorted.end());
        for (int64_t r = 0; r < height * width; ++r) CHECK(sorted[r] == r);
        // Snakes and spirals step to an edge neighbour; the zigzag also steps along diagonals.
        const int max_step_size = kind == RouteKind::Diagonal ? 2 : 1;
        if (kind == RouteKind::RowSnake || kind == RouteKind::ColumnSnake || kind == RouteKind::Spiral ||
            kind == RouteKind::Diagonal) {
          for (size_t t = 1; t < order.size(); ++t) {
            const int64_t di = std::abs(order[t] / width - order[t - 1] / width);
            const int64_t dj = std::abs(order[t] % width - order[t - 1] % width);
            CHECK(di <= 1);
            CHECK(dj <= 1);
            CHECK(di + dj >= 1);
            CHECK(di + dj <= max_step_size);
          }
        }
      }
    }
  }
}

TEST_CASE("sublattice2 visits the four stride-2 sub-lattices in turn") {
  CHECK(ops::sublattice2_lengths(3, 4) == std::array<int64_t, 4>{4, 2, 4, 2});
  CHECK(ops::sublattice2_lengths(4, 4) == std::array<int64_t, 4>{4, 4, 4, 4});
  CHECK(ops::sublattice2_lengths(5, 3) == std::array<int64_t, 4>{6, 4, 3, 2});
  const int64_t height = 5, width = 3;
  Order order = ops::route_order({RouteKind::Sublattice2, false}, height, width);
  const std::array<std::pair<int, int>, 4> parities{{{0, 0}, {1, 0}, {0, 1}, {1, 1}}};  // (row, column)
  size_t t = 0;
  std::array<int64_t, 4> lengths = ops::sublattice2_lengths(height, width);
  for (int segment = 0; segment < 4; ++segment)
    for (int64_t step = 0; step < lengths[segment]; ++step, ++t) {
      CHECK(order[t] / width % 2 == parities[segment].first);
      CHECK(order[t] % width % 2 == parities[segment].second);
    }
  CHECK(t == order.size());
}

TEST_CASE("route names round-trip and unknown names are rejected") {
  for (RouteKind kind : kAllKinds)
    for (bool reverse : {false, true})
      CHECK(ops::parse_route(ops::route_name({kind, reverse})) == Route{kind, reverse});
  CHECK(ops::route_name({RouteKind::ColumnSnake, true}) == "column_snake_reversed");
  CHECK_THROWS_WITH_AS(ops::parse_route("zigzag"),
                       doctest::Contains("unknown scan route 'zigzag' (known: row_major, column_major, row_snake, "
                                         "column_snake, diagonal, spiral, sublattice2, each also with the suffix "
                                         "_reversed)"),
                       Error);
}

TEST_CASE("RouteTable builds each table once and inverts the orders") {
  const std::vector<Route> routes{
      {RouteKind::RowMajor, false}, {RouteKind::Spiral, true}, {RouteKind::Diagonal, false}};
  ops::RouteTable first(routes, 3, 4), second(routes, 3, 4), other({{RouteKind::Spiral, true}}, 3, 4);
  CHECK(&first.order() == &second.order());  // the cached table, not a copy
  CHECK(&first.order() != &other.order());
  CHECK(first.count() == 3);
  CHECK(first.length() == 12);
  CHECK(first.routes() == routes);
  for (int64_t k = 0; k < 3; ++k) {
    Order order = ops::route_order(routes[k], 3, 4);
    for (int64_t t = 0; t < 12; ++t) {
      CHECK(first.order()[k * 12 + t] == order[t]);
      CHECK(first.inverse()[k * 12 + order[t]] == t);
    }
  }
  Tensor on_cpu = first.order_on(Device::cpu());
  CHECK(on_cpu.shape() == Shape{3, 12});
  CHECK(on_cpu.dtype() == DType::Int32);
  CHECK(on_cpu.to_vector<int32_t>() == first.order());
  CHECK(second.order_on(Device::cpu()).data_ptr() == on_cpu.data_ptr());
  CHECK(first.inverse_on(Device::cpu()).to_vector<int32_t>() == first.inverse());
}

TEST_CASE("route_gather, route_scatter and route_merge move rows as their tables say") {
  const std::vector<Route> routes{{RouteKind::ColumnMajor, false}, {RouteKind::Sublattice2, true}};
  ops::RouteTable table(routes, 3, 4);
  Tensor x = testing::random({2, 12, 3}, 1);  // (batch, H*W, channels)
  std::vector<double> values = x.to_vector<double>();

  Tensor stack = ops::route_gather(x, table);
  REQUIRE(stack.shape() == Shape{2, 2, 12, 3});
  std::vector<double> gathered = stack.to_vector<double>();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t k = 0; k < 2; ++k)
      for (int64_t t = 0; t < 12; ++t)
        for (int64_t c = 0; c < 3; ++c)
          CHECK(gathered[((b * 2 + k) * 12 + t) * 3 + c] == values[(b * 12 + table.order()[k * 12 + t]) * 3 + c]);

  // Scattering each route back gives the grid K times; merging sums those copies.
  Tensor back = ops::route_scatter(stack, table);
  CHECK(testing::max_abs_difference(back, ops::expand(ops::unsqueeze(x, 1), {2, 2, 12, 3})) == 0.0);
  CHECK(testing::max_abs_difference(ops::route_merge(stack, table), ops::mul(x, 2.0)) == 0.0);

  // Per-route gather and scatter are inverse permutations, both ways round.
  Tensor per_route = testing::random({2, 2, 12, 3}, 2);
  CHECK(testing::max_abs_difference(ops::route_scatter(ops::route_gather(per_route, table), table), per_route) == 0.0);
  CHECK(testing::max_abs_difference(ops::route_gather(ops::route_scatter(per_route, table), table), per_route) == 0.0);

  // float32 takes the same path.
  Tensor stack32 = ops::route_gather(x.to(DType::Float32), table);
  CHECK(stack32.dtype() == DType::Float32);
  CHECK(testing::max_abs_difference(stack32, stack) < 1e-7);
}

TEST_CASE("route ops' gradients match finite differences") {
  ops::RouteTable table({{RouteKind::RowSnake, false}, {RouteKind::Spiral, true}, {RouteKind::Sublattice2, false}}, 3,
                        4);
  Tensor grid = testing::random({2, 12, 3}, 1).set_requires_grad(true);
  Tensor stack = testing::random({2, 3, 12, 3}, 2).set_requires_grad(true);
  SUBCASE("gather from a grid (backward: merge)") {
    testing::check_gradients([&](const auto& in) { return ops::route_gather(in[0], table); }, {grid});
  }
  SUBCASE("gather per route (backward: scatter)") {
    testing::check_gradients([&](const auto& in) { return ops::route_gather(in[0], table); }, {stack});
  }
  SUBCASE("scatter (backward: gather per route)") {
    testing::check_gradients([&](const auto& in) { return ops::route_scatter(in[0], table); }, {stack});
  }
  SUBCASE("merge (backward: gather from a grid)") {
    testing::check_gradients([&](const auto& in) { return ops::route_merge(in[0], table); }, {stack});
  }
  SUBCASE("a non-contiguous grid, gathered and merged back") {
    Tensor channels_first = testing::random({2, 3, 12}, 3).set_requires_grad(true);  // (batch, channels, H*W)
    testing::check_gradients(
        [&](const auto& in) { return ops::route_merge(ops::route_gather(ops::transpose(in[0], 1, 2), table), table); },
        {channels_first});
  }
}

TEST_CASE("route ops reject bad arguments with messages that name them") {
  ops::RouteTable table({{RouteKind::RowMajor, false}, {RouteKind::ColumnMajor, false}}, 3, 4);
  CHECK_THROWS_WITH_AS(ops::route_gather(testing::random({2, 10, 3}, 1), table),
                       doctest::Contains("route_gather: x float64[2, 10, 3] on cpu must be (batch, H*W, channels) = "
                                         "(batch, 12, channels) for a 3 x 4 grid"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::route_gather(testing::random({12, 3}, 1), table),
                       doctest::Contains("route_gather: x float64[12, 3] on cpu must be a grid (batch, H*W, channels) "
                                         "or a routed stack (batch, K, H*W, channels)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::route_scatter(testing::random({2, 3, 12, 3}, 1), table),
                       doctest::Contains("route_scatter: y float64[2, 3, 12, 3] on cpu must be (batch, K, H*W, "
                                         "channels) = (batch, 2, 12, channels) for the 2 routes of a 3 x 4 grid"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::route_merge(testing::random({2, 12, 3}, 1), table),
                       doctest::Contains("route_merge: y float64[2, 12, 3] on cpu must be (batch, K, H*W, channels)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::route_gather(Tensor::zeros({2, 12, 3}, DType::Int64), table),
                       doctest::Contains("route_gather: int64[2, 12, 3] on cpu is not supported"), Error);
  CHECK_THROWS_WITH_AS(ops::RouteTable({}, 3, 4), doctest::Contains("RouteTable: no routes given for the 3 x 4 grid"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::RouteTable({{RouteKind::Spiral, false}}, 0, 4),
                       doctest::Contains("RouteTable: a 0 x 4 grid is not supported"), Error);
  CHECK_THROWS_WITH_AS(ops::route_order({RouteKind::Spiral, false}, 3, -1),
                       doctest::Contains("route_order: a 3 x -1 grid is not supported"), Error);
}
