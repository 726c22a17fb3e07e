// Scan routes over an image grid: the orders in which vision state-space models
// (VMamba's cross-scan, PlainMamba's snakes, MHS-VM's diagonals and spirals,
// EfficientVMamba's atrous sub-lattices) walk the H x W cells, and the gather /
// scatter ops that move a feature map into those orders and back.
//
// Layout: channels last. A feature map is (batch, H*W, channels) with the cells in
// raster order (cell (i, j) at row i, column j is index i*W + j); a stack of K
// routed sequences is (batch, K, H*W, channels), route k's step t in [b, k, t, :].
// Rows of channels stay contiguous, so every gather moves whole rows.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "strata/core/tensor.h"

namespace strata::ops {

// Each route visits every cell once. Orders on a 3 x 4 grid (the raster index of
// the cell visited at each step):
//   row_major     0 1 2 3 4 5 6 7 8 9 10 11
//   column_major  0 4 8 1 5 9 2 6 10 3 7 11
//   row_snake     0 1 2 3 7 6 5 4 8 9 10 11    (boustrophedon: odd rows right to left)
//   column_snake  0 4 8 9 5 1 2 6 10 11 7 3    (odd columns bottom to top)
//   diagonal      0 1 4 8 5 2 3 6 9 10 7 11    (anti-diagonals i + j = d, zigzag: down-left
//                                              for odd d, up-right for even d)
//   spiral        0 1 2 3 7 11 10 9 8 4 5 6    (clockwise from the top-left corner, inwards)
//   sublattice2   0 2 8 10 | 4 6 | 1 3 9 11 | 5 7
//       the four stride-2 sub-lattices one after another (EfficientVMamba's atrous
//       scan): (even row, even column) row-major, (odd, even) column-major,
//       (even, odd) row-major, (odd, odd) column-major; sublattice2_lengths gives
//       the four segment lengths (all H*W/4 when H and W are even, so the sequence
//       reshapes to (batch, 4, H*W/4, channels)).
// `reversed` walks the same route from its last step to its first.
enum class RouteKind : uint8_t { RowMajor, ColumnMajor, RowSnake, ColumnSnake, Diagonal, Spiral, Sublattice2 };

struct Route {
  RouteKind kind = RouteKind::RowMajor;
  bool reversed = false;
  bool operator==(const Route&) const = default;
};

// "row_major", "column_snake_reversed", ...; parse_route throws strata::Error on an
// unknown name and lists the known ones.
std::string route_name(Route route);
Route parse_route(const std::string& name);

// order[t] = the raster index of the cell visited at step t (a permutation of 0 .. H*W-1).
std::vector<int32_t> route_order(Route route, int64_t height, int64_t width);
// The segment lengths of sublattice2 on an H x W grid, in route order.
std::array<int64_t, 4> sublattice2_lengths(int64_t height, int64_t width);

// The int32 index tables of K routes over one grid, built once per (routes, H, W)
// and kept in a process-wide cache; copies are cheap handles to the cached tables.
// The device copies of the tables are made on first use on each device and kept.
class RouteTable {
 public:
  RouteTable(const std::vector<Route>& routes, int64_t height, int64_t width);

  int64_t height() const;
  int64_t width() const;
  int64_t length() const { return height() * width(); }
  int64_t count() const;  // K
  const std::vector<Route>& routes() const;
  // (K, H*W): order[k*L + t] = the cell route k visits at step t; inverse[k*L + r] =
  // the step at which route k visits cell r.
  const std::vector<int32_t>& order() const;
  const std::vector<int32_t>& inverse() const;
  // The same tables as int32 (K, H*W) tensors on `device`.
  Tensor order_on(Device device) const;
  Tensor inverse_on(Device device) const;

  struct Tables;

 private:
  std::shared_ptr<const Tables> tables_;
};

// x (batch, H*W, channels) -> (batch, K, H*W, channels): every route reads x,
//   out[b, k, t, :] = x[b, order_k[t], :]   (the K-route stack in one launch);
// x (batch, K, H*W, channels) -> the same shape: route k reads x[b, k],
//   out[b, k, t, :] = x[b, k, order_k[t], :].
// Backward: route_merge of the gradient (first form) or route_scatter (second).
Tensor route_gather(const Tensor& x, const RouteTable& table);

// The inverse of the second form of route_gather: y (batch, K, H*W, channels) in
// route order back to raster order per route, out[b, k, order_k[t], :] = y[b, k, t, :].
// Backward: route_gather of the gradient (second form).
Tensor route_scatter(const Tensor& y, const RouteTable& table);

// The K routes summed back into the grid (VMamba's cross-merge):
// y (batch, K, H*W, channels) -> (batch, H*W, channels), out[b, order_k[t], :] += y[b, k, t, :].
// Backward: route_gather of the gradient (first form).
Tensor route_merge(const Tensor& y, const RouteTable& table);

}  // namespace strata::ops
