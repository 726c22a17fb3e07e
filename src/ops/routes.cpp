// Scan routes: the order generators, the cached RouteTable, and route_gather /
// route_scatter / route_merge. The three ops are one kernel
// (kernels/routes/routes_args.h) reading through the routes' orders or their
// inverses, so a scatter is a gather by the inverse permutation and a merge a
// summed one: no write conflicts, no atomics. Each op's backward is another of the
// three, recorded like any op (so it is differentiable again).
#include "strata/ops/routes.h"

#include <algorithm>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#include "kernels/routes/routes_cpu.h"
#include "ops/op_utils.h"
#include "strata/autograd/autograd.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/routes/routes_cuda.h"
#endif

namespace strata::ops {

namespace {

struct KindName {
  RouteKind kind;
  const char* name;
};
constexpr KindName kKindNames[] = {{RouteKind::RowMajor, "row_major"},     {RouteKind::ColumnMajor, "column_major"},
                                   {RouteKind::RowSnake, "row_snake"},     {RouteKind::ColumnSnake, "column_snake"},
                                   {RouteKind::Diagonal, "diagonal"},      {RouteKind::Spiral, "spiral"},
                                   {RouteKind::Sublattice2, "sublattice2"}};
constexpr const char* kReversedSuffix = "_reversed";

// The cells of an H x W grid in the order of `kind`, as (row, column) -> raster index.
std::vector<int32_t> forward_order(RouteKind kind, int64_t H, int64_t W) {
  std::vector<int32_t> order;
  order.reserve(H * W);
  auto visit = [&](int64_t i, int64_t j) { order.push_back(static_cast<int32_t>(i * W + j)); };
  switch (kind) {
    case RouteKind::RowMajor:
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) visit(i, j);
      break;
    case RouteKind::ColumnMajor:
      for (int64_t j = 0; j < W; ++j)
        for (int64_t i = 0; i < H; ++i) visit(i, j);
      break;
    case RouteKind::RowSnake:
      for (int64_t i = 0; i < H; ++i)
        for (int64_t step = 0; step < W; ++step) visit(i, i % 2 == 0 ? step : W - 1 - step);
      break;
    case RouteKind::ColumnSnake:
      for (int64_t j = 0; j < W; ++j)
        for (int64_t step = 0; step < H; ++step) visit(j % 2 == 0 ? step : H - 1 - step, j);
      break;
    case RouteKind::Diagonal:
      // Anti-diagonal d holds the cells with i + j = d, rows first_i .. last_i.
      for (int64_t d = 0; d < H + W - 1; ++d) {
        const int64_t first_i = std::max<int64_t>(0, d - (W - 1)), last_i = std::min<int64_t>(d, H - 1);
        for (int64_t step = 0; step <= last_i - first_i; ++step) {
          const int64_t i = d % 2 == 1 ? first_i + step : last_i - step;
          visit(i, d - i);
        }
      }
      break;
    case RouteKind::Spiral: {
      // Peel the outer ring clockwise (top row, right column, bottom row, left column), then the next.
      int64_t top = 0, bottom = H - 1, left = 0, right = W - 1;
      while (top <= bottom && left <= right) {
        for (int64_t j = left; j <= right; ++j) visit(top, j);
        ++top;
        for (int64_t i = top; i <= bottom; ++i) visit(i, right);
        --right;
        if (top <= bottom) {
          for (int64_t j = right; j >= left; --j) visit(bottom, j);
          --bottom;
        }
        if (left <= right) {
          for (int64_t i = bottom; i >= top; --i) visit(i, left);
          ++left;
        }
      }
      break;
    }
    case RouteKind::Sublattice2: {
      // (row parity, column parity, column-major?) of EfficientVMamba's four atrous routes.
      constexpr std::tuple<int64_t, int64_t, bool> kLattices[] = {
          {0, 0, false}, {1, 0, true}, {0, 1, false}, {1, 1, true}};
      for (const auto& [row_parity, column_parity, column_major] : kLattices) {
        if (column_major) {
          for (int64_t j = column_parity; j < W; j += 2)
            for (int64_t i = row_parity; i < H; i += 2) visit(i, j);
        } else {
          for (int64_t i = row_parity; i < H; i += 2)
            for (int64_t j = column_parity; j < W; j += 2) visit(i, j);
        }
      }
      break;
    }
  }
  return order;
}

void check_grid(const char* op, int64_t height, int64_t width) {
  STRATA_CHECK(height > 0 && width > 0 && height * width <= std::numeric_limits<int32_t>::max(),
               "{}: a {} x {} grid is not supported (need positive sides and at most 2^31 - 1 cells)", op, height,
               width);
}

}  // namespace

std::string route_name(Route route) {
  for (const KindName& entry : kKindNames)
    if (entry.kind == route.kind) return std::string(entry.name) + (route.reversed ? kReversedSuffix : "");
  STRATA_FAIL("route_name: unknown route kind {}", static_cast<int>(route.kind));
}

Route parse_route(const std::string& name) {
  for (bool reversed : {false, true})
    for (const KindName& entry : kKindNames)
      if (name == std::string(entry.name) + (reversed ? kReversedSuffix : "")) return {entry.kind, reversed};
  std::vector<std::string> known;
  for (const KindName& entry : kKindNames) known.emplace_back(entry.name);
  STRATA_FAIL("unknown scan route '{}' (known: {}, each also with the suffix {})", name, fmt::join(known, ", "),
              kReversedSuffix);
}

std::vector<int32_t> route_order(Route route, int64_t height, int64_t width) {
  check_grid("route_order", height, width);
  std::vector<int32_t> order = forward_order(route.kind, height, width);
  if (route.reversed) std::reverse(order.begin(), order.end());
  return order;
}

std::array<int64_t, 4> sublattice2_lengths(int64_t height, int64_t width) {
  check_grid("sublattice2_lengths", height, width);
  const int64_t even_rows = (height + 1) / 2, odd_rows = height / 2, even_columns = (width + 1) / 2,
                odd_columns = width / 2;
  return {even_rows * even_columns, odd_rows * even_columns, even_rows * odd_columns, odd_rows * odd_columns};
}

// ---- RouteTable ---------------------------------------------------------------------

struct RouteTable::Tables {
  std::vector<Route> routes;
  int64_t height = 0, width = 0;
  std::vector<int32_t> order, inverse;  // (K, H*W)

  // Device copies, made on first use: (device type, index) -> (order, inverse).
  mutable std::mutex device_mutex;
  mutable std::map<std::pair<int, int>, std::pair<Tensor, Tensor>> on_device;

  const std::pair<Tensor, Tensor>& tensors_on(Device device) const {
    std::lock_guard<std::mutex> lock(device_mutex);
    auto key = std::make_pair(static_cast<int>(device.type), device.index);
    auto found = on_device.find(key);
    if (found != on_device.end()) return found->second;
    const Shape shape{static_cast<int64_t>(routes.size()), height * width};
    return on_device[key] = {Tensor::from_vector<int32_t>(order, shape, device),
                             Tensor::from_vector<int32_t>(inverse, shape, device)};
  }
};

RouteTable::RouteTable(const std::vector<Route>& routes, int64_t height, int64_t width) {
  check_grid("RouteTable", height, width);
  STRATA_CHECK(!routes.empty(), "RouteTable: no routes given for the {} x {} grid", height, width);
  using Key = std::tuple<std::vector<std::pair<int, bool>>, int64_t, int64_t>;
  static std::mutex cache_mutex;
  static std::map<Key, std::shared_ptr<const Tables>> cache;
  Key key{{}, height, width};
  for (const Route& route : routes) std::get<0>(key).emplace_back(static_cast<int>(route.kind), route.reversed);

  std::lock_guard<std::mutex> lock(cache_mutex);
  auto found = cache.find(key);
  if (found != cache.end()) {
    tables_ = found->second;
    return;
  }
  auto tables = std::make_shared<Tables>();
  tables->routes = routes;
  tables->height = height;
  tables->width = width;
  const int64_t L = height * width;
  tables->inverse.resize(routes.size() * L);
  for (size_t k = 0; k < routes.size(); ++k) {
    std::vector<int32_t> order = route_order(routes[k], height, width);
    for (int64_t t = 0; t < L; ++t) tables->inverse[k * L + order[t]] = static_cast<int32_t>(t);
    tables->order.insert(tables->order.end(), order.begin(), order.end());
  }
  tables_ = cache[key] = std::move(tables);
}

int64_t RouteTable::height() const { return tables_->height; }
int64_t RouteTable::width() const { return tables_->width; }
int64_t RouteTable::count() const { return static_cast<int64_t>(tables_->routes.size()); }
const std::vector<Route>& RouteTable::routes() const { return tables_->routes; }
const std::vector<int32_t>& RouteTable::order() const { return tables_->order; }
const std::vector<int32_t>& RouteTable::inverse() const { return tables_->inverse; }
Tensor RouteTable::order_on(Device device) const { return tables_->tensors_on(device).first; }
Tensor RouteTable::inverse_on(Device device) const { return tables_->tensors_on(device).second; }

// ---- the ops ------------------------------------------------------------------------

namespace {

// A routed stack (batch, K, H*W, channels) or a grid (batch, H*W, channels) that fits
// the table; returns the sizes of the kernel reading it.
kernels::RouteGatherSizes check_routed(const char* op, const char* name, const Tensor& t, const RouteTable& table,
                                       bool stacked) {
  detail::check_defined(op, t, name);
  detail::check_compute_dtype(op, t);
  kernels::RouteGatherSizes sizes;
  if (stacked) {
    STRATA_CHECK(t.dim() == 4 && t.size(1) == table.count() && t.size(2) == table.length(),
                 "{}: {} {} must be (batch, K, H*W, channels) = (batch, {}, {}, channels) for the {} routes of a {} x "
                 "{} grid",
                 op, name, t.str(), table.count(), table.length(), table.count(), table.height(), table.width());
  } else {
    STRATA_CHECK(t.dim() == 3 && t.size(1) == table.length(),
                 "{}: {} {} must be (batch, H*W, channels) = (batch, {}, channels) for a {} x {} grid", op, name,
                 t.str(), table.length(), table.height(), table.width());
  }
  sizes.batch = t.size(0);
  sizes.routes = table.count();
  sizes.length = table.length();
  sizes.channels = t.size(-1);
  sizes.source_per_route = stacked;
  return sizes;
}

// Runs the kernel on a contiguous copy of src through `index` (the order or the inverse).
Tensor run_gather(const kernels::RouteGatherSizes& sizes, const Tensor& src, const RouteTable& table,
                  bool use_inverse) {
  const Device device = src.device();
  const Shape out_shape = sizes.sum_routes ? Shape{sizes.batch, sizes.length, sizes.channels}
                                           : Shape{sizes.batch, sizes.routes, sizes.length, sizes.channels};
  Tensor out = Tensor::empty(out_shape, src.dtype(), device);
  Tensor source = src.contiguous();
  if (device.is_cpu()) {
    const int32_t* index = use_inverse ? table.inverse().data() : table.order().data();
    if (src.dtype() == DType::Float32)
      kernels::route_gather_cpu(sizes, source.data<float>(), index, out.data<float>());
    else
      kernels::route_gather_cpu(sizes, source.data<double>(), index, out.data<double>());
    return out;
  }
#ifdef STRATA_WITH_CUDA
  Tensor index = use_inverse ? table.inverse_on(device) : table.order_on(device);
  bool supported =
      kernels::route_gather_cuda(src.dtype(), sizes, source.data_ptr(), index.data<int32_t>(), out.data_ptr());
  STRATA_CHECK(supported, "route gather: {} is not supported on CUDA", src.str());
#endif
  return out;
}

}  // namespace

Tensor route_gather(const Tensor& x, const RouteTable& table) {
  const char* op = "route_gather";
  detail::check_defined(op, x, "x");
  STRATA_CHECK(x.dim() == 3 || x.dim() == 4,
               "{}: x {} must be a grid (batch, H*W, channels) or a routed stack (batch, K, H*W, channels)", op,
               x.str());
  const bool stacked = x.dim() == 4;
  kernels::RouteGatherSizes sizes = check_routed(op, "x", x, table, stacked);
  Tensor out = run_gather(sizes, x, table, false);
  autograd::record(op, {x}, out, [table, stacked](const Tensor& grad) {
    return std::vector<Tensor>{stacked ? route_scatter(grad, table) : route_merge(grad, table)};
  });
  return out;
}

Tensor route_scatter(const Tensor& y, const RouteTable& table) {
  const char* op = "route_scatter";
  kernels::RouteGatherSizes sizes = check_routed(op, "y", y, table, true);
  Tensor out = run_gather(sizes, y, table, true);
  autograd::record(op, {y}, out,
                   [table](const Tensor& grad) { return std::vector<Tensor>{route_gather(grad, table)}; });
  return out;
}

Tensor route_merge(const Tensor& y, const RouteTable& table) {
  const char* op = "route_merge";
  kernels::RouteGatherSizes sizes = check_routed(op, "y", y, table, true);
  sizes.sum_routes = true;
  Tensor out = run_gather(sizes, y, table, true);
  autograd::record(op, {y}, out,
                   [table](const Tensor& grad) { return std::vector<Tensor>{route_gather(grad, table)}; });
  return out;
}

}  // namespace strata::ops
