// 2-D neighborhood attention: the block layout and the element mask, both read from
// one definition of the window along an axis (block_layout.h).
#include <algorithm>
#include <limits>
#include <vector>

#include "strata/kernels/block_layout.h"

namespace strata::kernels {

namespace {

// One axis of n positions with window `window` and dilation `dilation`: the first
// position a query at i sees; it then sees first, first + dilation, ... (window of them).
struct AxisWindow {
  int64_t n, window, dilation;

  int64_t first(int64_t i) const {
    const int64_t group = i % dilation;                                  // the dilation group of i
    const int64_t group_size = (n - group + dilation - 1) / dilation;    // positions group, group + d, ... < n
    const int64_t start = std::clamp<int64_t>(i / dilation - window / 2, 0, group_size - window);
    return group + start * dilation;
  }
  bool sees(int64_t i, int64_t j) const {
    const int64_t offset = j - first(i);
    return offset >= 0 && offset % dilation == 0 && offset / dilation < window;
  }
};

struct GridWindow {
  AxisWindow rows, columns;

  bool sees(int64_t query, int64_t key) const {
    const int64_t width = columns.n;
    return rows.sees(query / width, key / width) && columns.sees(query % width, key % width);
  }
};

GridWindow check_grid(const char* op, int64_t height, int64_t width, int64_t window_h, int64_t window_w,
                      int64_t dilation_h, int64_t dilation_w) {
  STRATA_CHECK(height > 0 && width > 0, "{}: the grid must be positive, got {} x {}", op, height, width);
  STRATA_CHECK(window_h > 0 && window_w > 0 && dilation_h > 0 && dilation_w > 0,
               "{}: windows ({} x {}) and dilations ({}, {}) must be positive", op, window_h, window_w, dilation_h,
               dilation_w);
  STRATA_CHECK(window_h * dilation_h <= height && window_w * dilation_w <= width,
               "{}: window x dilation must fit the grid: {} x {} rows of {}, {} x {} columns of {}", op, window_h,
               dilation_h, height, window_w, dilation_w, width);
  return {{height, window_h, dilation_h}, {width, window_w, dilation_w}};
}

}  // namespace

BlockLayout neighborhood_2d_layout(const LayoutGeometry& geometry, int64_t height, int64_t width, int64_t window_h,
                                   int64_t window_w, int64_t dilation_h, int64_t dilation_w) {
  const char* op = "neighborhood_2d_layout";
  const GridWindow grid = check_grid(op, height, width, window_h, window_w, dilation_h, dilation_w);
  STRATA_CHECK(geometry.query_length == height * width && geometry.key_length == height * width,
               "{}: needs Lq == Lk == height * width = {}, got Lq = {} and Lk = {}", op, height * width,
               geometry.query_length, geometry.key_length);
  const int64_t block = geometry.block_size, tokens = height * width;
  // Mark the key blocks of every neighbour of every query of each query block.
  std::vector<std::vector<int32_t>> rows(geometry.query_blocks());
  std::vector<char> seen(geometry.key_blocks());
  for (int64_t qb = 0; qb < geometry.query_blocks(); ++qb) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t query = qb * block; query < std::min(tokens, (qb + 1) * block); ++query) {
      const int64_t first_row = grid.rows.first(query / width), first_column = grid.columns.first(query % width);
      for (int64_t m = 0; m < window_h; ++m)
        for (int64_t n = 0; n < window_w; ++n)
          seen[((first_row + m * dilation_h) * width + first_column + n * dilation_w) / block] = 1;
    }
    for (int64_t kb = 0; kb < geometry.key_blocks(); ++kb)
      if (seen[kb]) rows[qb].push_back(static_cast<int32_t>(kb));
  }
  return BlockLayout::from_lists(geometry, {rows});
}

Tensor neighborhood_2d_mask(int64_t height, int64_t width, int64_t window_h, int64_t window_w, int64_t dilation_h,
                            int64_t dilation_w) {
  const GridWindow grid =
      check_grid("neighborhood_2d_mask", height, width, window_h, window_w, dilation_h, dilation_w);
  const int64_t tokens = height * width;
  std::vector<float> mask(static_cast<size_t>(tokens * tokens), -std::numeric_limits<float>::infinity());
  for (int64_t query = 0; query < tokens; ++query)
    for (int64_t key = 0; key < tokens; ++key)
      if (grid.sees(query, key)) mask[static_cast<size_t>(query * tokens + key)] = 0.0f;
  return Tensor::from_vector(mask, {tokens, tokens});
}

}  // namespace strata::kernels
