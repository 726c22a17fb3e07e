// BlockLayout: CSR and CSC index arrays built on the host from per-head block lists,
// and the layout builders. Every builder is a predicate over (head, query block,
// key block) read straight from the pattern's definition in block_layout.h.
#include "strata/kernels/block_layout.h"

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <utility>

namespace strata::kernels {

namespace {

void check_geometry(const char* op, const LayoutGeometry& g) {
  STRATA_CHECK(g.block_size == 64 || g.block_size == 128, "{}: block_size must be 64 or 128, got {}", op, g.block_size);
  STRATA_CHECK(g.query_length > 0 && g.key_length > 0, "{}: lengths must be positive, got Lq = {} and Lk = {}", op,
               g.query_length, g.key_length);
}

void check_positive(const char* op, const char* name, int64_t value) {
  STRATA_CHECK(value > 0, "{}: {} must be positive, got {}", op, name, value);
}

Tensor int32_tensor(const std::vector<int32_t>& values) {
  return Tensor::from_vector(values, {static_cast<int64_t>(values.size())});
}

bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

}  // namespace

int64_t LayoutGeometry::diagonal(int64_t query_block) const {
  int64_t last_query = std::min(query_length, (query_block + 1) * block_size) - 1;
  int64_t last_key = std::min(key_length - 1, last_query + (key_length - query_length));
  return last_key < 0 ? -1 : last_key / block_size;
}

BlockLayout BlockLayout::from_lists(const LayoutGeometry& geometry,
                                    const std::vector<std::vector<std::vector<int32_t>>>& key_blocks) {
  const char* op = "BlockLayout";
  check_geometry(op, geometry);
  const int64_t heads = static_cast<int64_t>(key_blocks.size());
  const int64_t query_blocks = geometry.query_blocks(), n_key_blocks = geometry.key_blocks();
  STRATA_CHECK(heads > 0, "{}: no heads given", op);
  std::vector<int32_t> row_offsets{0}, column_indices;
  std::vector<std::vector<int32_t>> columns(heads * n_key_blocks);  // query blocks per (head, key block)
  for (int64_t h = 0; h < heads; ++h) {
    STRATA_CHECK(static_cast<int64_t>(key_blocks[h].size()) == query_blocks,
                 "{}: head {} has {} query blocks, expected {} (Lq = {}, block {})", op, h, key_blocks[h].size(),
                 query_blocks, geometry.query_length, geometry.block_size);
    for (int64_t qb = 0; qb < query_blocks; ++qb) {
      std::vector<int32_t> row = key_blocks[h][qb];
      std::sort(row.begin(), row.end());
      for (size_t n = 0; n < row.size(); ++n) {
        STRATA_CHECK(row[n] >= 0 && row[n] < n_key_blocks,
                     "{}: head {}, query block {}: key block {} is outside [0, {})", op, h, qb, row[n], n_key_blocks);
        STRATA_CHECK(n == 0 || row[n] != row[n - 1], "{}: head {}, query block {}: key block {} is listed twice", op, h,
                     qb, row[n]);
        columns[h * n_key_blocks + row[n]].push_back(static_cast<int32_t>(qb));
      }
      column_indices.insert(column_indices.end(), row.begin(), row.end());
      row_offsets.push_back(static_cast<int32_t>(column_indices.size()));
    }
  }
  std::vector<int32_t> column_offsets{0}, row_indices;
  for (const std::vector<int32_t>& column : columns) {  // query blocks were appended in increasing order
    row_indices.insert(row_indices.end(), column.begin(), column.end());
    column_offsets.push_back(static_cast<int32_t>(row_indices.size()));
  }
  BlockLayout layout;
  layout.geometry_ = geometry;
  layout.heads_ = heads;
  layout.row_offsets_ = int32_tensor(row_offsets);
  layout.column_indices_ = int32_tensor(column_indices);
  layout.column_offsets_ = int32_tensor(column_offsets);
  layout.row_indices_ = int32_tensor(row_indices);
  return layout;
}

BlockLayout BlockLayout::from_predicate(const LayoutGeometry& geometry, int64_t heads,
                                        const std::function<bool(int64_t, int64_t, int64_t)>& present) {
  check_geometry("BlockLayout", geometry);
  check_positive("BlockLayout", "heads", heads);
  std::vector<std::vector<std::vector<int32_t>>> lists(heads,
                                                       std::vector<std::vector<int32_t>>(geometry.query_blocks()));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t qb = 0; qb < geometry.query_blocks(); ++qb)
      for (int64_t kb = 0; kb < geometry.key_blocks(); ++kb)
        if (present(h, qb, kb)) lists[h][qb].push_back(static_cast<int32_t>(kb));
  return from_lists(geometry, lists);
}

BlockLayout BlockLayout::from_arrays(const LayoutGeometry& geometry, int64_t batches, int64_t heads,
                                     Tensor row_offsets, Tensor column_indices, Tensor column_offsets,
                                     Tensor row_indices) {
  const char* op = "BlockLayout::from_arrays";
  check_geometry(op, geometry);
  check_positive(op, "batches", batches);
  check_positive(op, "heads", heads);
  const int64_t rows = batches * heads * geometry.query_blocks(), columns = batches * heads * geometry.key_blocks();
  for (const Tensor* t : {&row_offsets, &column_indices, &column_offsets, &row_indices})
    STRATA_CHECK(t->defined() && t->dim() == 1 && t->dtype() == DType::Int32 && t->is_contiguous() &&
                     t->device() == row_offsets.device(),
                 "{}: index arrays must be contiguous 1-D int32 tensors on one device, got {}", op, t->str());
  STRATA_CHECK(row_offsets.numel() == rows + 1 && column_offsets.numel() == columns + 1 &&
                   row_indices.numel() == column_indices.numel(),
               "{}: row_offsets {} and column_offsets {} must have {} and {} entries, row_indices {} as many as "
               "column_indices {}",
               op, row_offsets.str(), column_offsets.str(), rows + 1, columns + 1, row_indices.str(),
               column_indices.str());
  BlockLayout layout;
  layout.geometry_ = geometry;
  layout.heads_ = heads;
  layout.batches_ = batches;
  layout.row_offsets_ = std::move(row_offsets);
  layout.column_indices_ = std::move(column_indices);
  layout.column_offsets_ = std::move(column_offsets);
  layout.row_indices_ = std::move(row_indices);
  return layout;
}

BlockLayout BlockLayout::fold_batches() const {
  BlockLayout folded = *this;
  folded.heads_ = batches_ * heads_;
  folded.batches_ = 1;
  return folded;
}

BlockLayout BlockLayout::with_batches(int64_t batches) const {
  STRATA_CHECK(defined() && batches > 0 && (batches_ * heads_) % batches == 0,
               "BlockLayout::with_batches: {} cannot be read as {} batches", str(), batches);
  BlockLayout split = *this;
  split.heads_ = batches_ * heads_ / batches;
  split.batches_ = batches;
  return split;
}

int64_t BlockLayout::present_blocks() const { return defined() ? column_indices_.numel() : 0; }

double BlockLayout::density() const {
  if (!defined()) return 0.0;
  return static_cast<double>(present_blocks()) / static_cast<double>(batches_ * heads_ * query_blocks() * key_blocks());
}

std::vector<int32_t> BlockLayout::key_blocks_of(int64_t head, int64_t query_block, int64_t batch) const {
  STRATA_CHECK(defined() && head >= 0 && head < heads_ && query_block >= 0 && query_block < query_blocks() &&
                   batch >= 0 && batch < batches_,
               "BlockLayout: no row (batch {}, head {}, query block {}) in {}", batch, head, query_block, str());
  std::vector<int32_t> offsets = row_offsets_.to_vector<int32_t>(), columns = column_indices_.to_vector<int32_t>();
  int64_t row = (batch * heads_ + head) * query_blocks() + query_block;
  return {columns.begin() + offsets[row], columns.begin() + offsets[row + 1]};
}

std::vector<int32_t> BlockLayout::query_blocks_of(int64_t head, int64_t key_block, int64_t batch) const {
  STRATA_CHECK(defined() && head >= 0 && head < heads_ && key_block >= 0 && key_block < key_blocks() && batch >= 0 &&
                   batch < batches_,
               "BlockLayout: no column (batch {}, head {}, key block {}) in {}", batch, head, key_block, str());
  std::vector<int32_t> offsets = column_offsets_.to_vector<int32_t>(), rows = row_indices_.to_vector<int32_t>();
  int64_t column = (batch * heads_ + head) * key_blocks() + key_block;
  return {rows.begin() + offsets[column], rows.begin() + offsets[column + 1]};
}

BlockLayout BlockLayout::to(Device device) const {
  if (!defined() || device == this->device()) return *this;
  BlockLayout moved = *this;
  moved.row_offsets_ = row_offsets_.to(device);
  moved.column_indices_ = column_indices_.to(device);
  moved.column_offsets_ = column_offsets_.to(device);
  moved.row_indices_ = row_indices_.to(device);
  return moved;
}

std::string BlockLayout::str() const {
  if (!defined()) return "block layout: undefined";
  return fmt::format("block layout: {}{} head{}, {} x {} blocks of {} (Lq = {}, Lk = {}), density {:.4g} on {}",
                     batches_ == 1 ? "" : fmt::format("{} batches of ", batches_), heads_, heads_ == 1 ? "" : "s",
                     query_blocks(), key_blocks(), block_size(), query_length(), key_length(), density(),
                     device().str());
}

// ---- builders ---------------------------------------------------------------------

BlockLayout dense_layout(const LayoutGeometry& geometry) {
  return BlockLayout::from_predicate(geometry, 1, [](int64_t, int64_t, int64_t) { return true; });
}

BlockLayout causal_layout(const LayoutGeometry& geometry) {
  return BlockLayout::from_predicate(geometry, 1,
                                     [&](int64_t, int64_t qb, int64_t kb) { return kb <= geometry.diagonal(qb); });
}

BlockLayout sliding_window_layout(const LayoutGeometry& geometry, int64_t window_blocks, bool causal) {
  check_positive("sliding_window_layout", "window_blocks", window_blocks);
  return BlockLayout::from_predicate(geometry, 1, [&](int64_t, int64_t qb, int64_t kb) {
    int64_t distance = geometry.diagonal(qb) - kb;
    return causal ? distance >= 0 && distance < window_blocks : std::abs(distance) < window_blocks;
  });
}

BlockLayout global_layout(const LayoutGeometry& geometry, int64_t global_blocks, bool causal) {
  check_positive("global_layout", "global_blocks", global_blocks);
  return BlockLayout::from_predicate(geometry, 1, [&](int64_t, int64_t qb, int64_t kb) {
    if (causal && kb > geometry.diagonal(qb)) return false;
    return kb < global_blocks || qb < global_blocks;
  });
}

BlockLayout dilated_layout(const LayoutGeometry& geometry, int64_t window_blocks, int64_t dilation, bool causal) {
  check_positive("dilated_layout", "window_blocks", window_blocks);
  check_positive("dilated_layout", "dilation", dilation);
  return BlockLayout::from_predicate(geometry, 1, [&](int64_t, int64_t qb, int64_t kb) {
    int64_t distance = geometry.diagonal(qb) - kb;
    if (causal && distance < 0) return false;
    distance = std::abs(distance);
    return distance % dilation == 0 && distance / dilation < window_blocks;
  });
}

BlockLayout power_layout(const LayoutGeometry& geometry, int64_t local_blocks, int64_t sink_blocks) {
  check_positive("power_layout", "local_blocks", local_blocks);
  STRATA_CHECK(sink_blocks >= 0, "power_layout: sink_blocks must not be negative, got {}", sink_blocks);
  return BlockLayout::from_predicate(geometry, 1, [&](int64_t, int64_t qb, int64_t kb) {
    int64_t distance = geometry.diagonal(qb) - kb;
    if (distance < 0) return false;
    return distance < local_blocks || kb < sink_blocks || is_power_of_two(distance);
  });
}

BlockLayout s2_layout(const LayoutGeometry& geometry, int64_t heads, int64_t local_blocks, int64_t vertical_stride,
                      int64_t dense_heads, int64_t offset) {
  const char* op = "s2_layout";
  check_positive(op, "heads", heads);
  check_positive(op, "local_blocks", local_blocks);
  check_positive(op, "vertical_stride", vertical_stride);
  STRATA_CHECK(dense_heads >= 0 && dense_heads <= heads, "{}: dense_heads must be in [0, {}], got {}", op, heads,
               dense_heads);
  STRATA_CHECK(offset >= 0, "{}: offset must not be negative, got {}", op, offset);
  const int64_t sparse_heads = heads - dense_heads;
  const int64_t step = std::max<int64_t>(1, sparse_heads > 0 ? vertical_stride / sparse_heads : 1);
  return BlockLayout::from_predicate(geometry, heads, [&](int64_t h, int64_t qb, int64_t kb) {
    int64_t distance = geometry.diagonal(qb) - kb;
    if (distance < 0) return false;
    if (h < dense_heads) return true;
    int64_t shard = h - dense_heads;
    return distance < local_blocks || (kb + shard * step + offset) % vertical_stride == 0;
  });
}

BlockLayout neighborhood_layout(const LayoutGeometry& geometry, int64_t window_blocks, int64_t dilation, bool causal) {
  const char* op = "neighborhood_layout";
  check_positive(op, "window_blocks", window_blocks);
  check_positive(op, "dilation", dilation);
  STRATA_CHECK(geometry.query_length == geometry.key_length,
               "{}: needs Lq == Lk (a window centred on each query), got Lq = {} and Lk = {}", op,
               geometry.query_length, geometry.key_length);
  const int64_t blocks = geometry.query_blocks();
  return BlockLayout::from_predicate(geometry, 1, [&](int64_t, int64_t qb, int64_t kb) {
    if (kb % dilation != qb % dilation) return false;  // different dilation group
    // Positions within the dilation group: blocks g, g + dilation, g + 2 dilation, ...
    const int64_t group = qb % dilation, group_blocks = (blocks - group + dilation - 1) / dilation;
    const int64_t query = qb / dilation, key = kb / dilation;
    if (causal) return key <= query && query - key < window_blocks;
    int64_t start =
        std::clamp<int64_t>(query - window_blocks / 2, 0, std::max<int64_t>(0, group_blocks - window_blocks));
    return key >= start && key < start + window_blocks;
  });
}

BlockLayout union_layouts(const BlockLayout& a, const BlockLayout& b) {
  const char* op = "union_layouts";
  STRATA_CHECK(a.defined() && b.defined(), "{}: a layout is undefined", op);
  STRATA_CHECK(a.batches() == 1 && b.batches() == 1, "{}: per-batch layouts are not supported: {} and {}", op,
               a.str(), b.str());
  const LayoutGeometry& g = a.geometry();
  STRATA_CHECK(g.query_length == b.query_length() && g.key_length == b.key_length() && g.block_size == b.block_size(),
               "{}: geometries differ: {} and {}", op, a.str(), b.str());
  STRATA_CHECK(a.heads() == b.heads() || a.heads() == 1 || b.heads() == 1, "{}: head counts differ: {} and {}", op,
               a.str(), b.str());
  const int64_t heads = std::max(a.heads(), b.heads()), query_blocks = g.query_blocks();
  const std::vector<int32_t> a_offsets = a.row_offsets().to_vector<int32_t>(),
                             a_columns = a.column_indices().to_vector<int32_t>(),
                             b_offsets = b.row_offsets().to_vector<int32_t>(),
                             b_columns = b.column_indices().to_vector<int32_t>();
  std::vector<std::vector<std::vector<int32_t>>> lists(heads, std::vector<std::vector<int32_t>>(query_blocks));
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t qb = 0; qb < query_blocks; ++qb) {
      int64_t a_row = (a.heads() == 1 ? 0 : h) * query_blocks + qb,
              b_row = (b.heads() == 1 ? 0 : h) * query_blocks + qb;
      std::set_union(a_columns.begin() + a_offsets[a_row], a_columns.begin() + a_offsets[a_row + 1],
                     b_columns.begin() + b_offsets[b_row], b_columns.begin() + b_offsets[b_row + 1],
                     std::back_inserter(lists[h][qb]));
    }
  }
  return BlockLayout::from_lists(g, lists);
}

}  // namespace strata::kernels
