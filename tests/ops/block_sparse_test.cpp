// Block layouts and ops::block_sparse_attention on the CPU: the exact block lists
// of every builder on small cases, the CSC transpose, the diagonal under Lq != Lk,
// a full layout against dense attention and a causal layout against causal dense
// attention (equal up to rounding), every builder against dense attention with a
// -inf bias outside its blocks, finite-difference gradients in double (per-head
// layouts, GQA, lengths that end inside a block, Lq != Lk, blocks of 128), and the
// messages of bad layouts.
#include <cmath>

#include "strata/kernels/block_layout.h"
#include "strata/ops/attention.h"
#include "support/check.h"

using namespace strata;
using kernels::BlockLayout;
using kernels::LayoutGeometry;

namespace {

using Rows = std::vector<std::vector<int32_t>>;

// Every row of one head of a layout.
Rows rows_of(const BlockLayout& layout, int64_t head = 0) {
  Rows rows;
  for (int64_t qb = 0; qb < layout.query_blocks(); ++qb) rows.push_back(layout.key_blocks_of(head, qb));
  return rows;
}

// A layout of n x n blocks of 64 over Lq = Lk = 64 n.
LayoutGeometry square(int64_t blocks, int64_t block_size = 64) {
  return {.query_length = blocks * block_size, .key_length = blocks * block_size, .block_size = block_size};
}

using testing::leaf;

// (1, layout heads, Lq, Lk) float64: 0 inside the layout's blocks, -inf outside.
Tensor layout_bias(const BlockLayout& layout) {
  const int64_t length_q = layout.query_length(), length_k = layout.key_length(), bs = layout.block_size();
  std::vector<double> bias(layout.heads() * length_q * length_k, -INFINITY);
  for (int64_t h = 0; h < layout.heads(); ++h)
    for (int64_t qb = 0; qb < layout.query_blocks(); ++qb)
      for (int32_t kb : layout.key_blocks_of(h, qb))
        for (int64_t i = qb * bs; i < std::min((qb + 1) * bs, length_q); ++i)
          for (int64_t j = kb * bs; j < std::min((kb + 1) * bs, length_k); ++j)
            bias[(h * length_q + i) * length_k + j] = 0.0;
  return Tensor::from_vector(bias, {1, layout.heads(), length_q, length_k});
}

struct Qkv {
  Tensor q, k, v;
};

Qkv make_qkv(int64_t batch, int64_t heads, int64_t kv_heads, int64_t length_q, int64_t length_k, int64_t dim,
             uint64_t seed) {
  return {leaf({batch, heads, length_q, dim}, seed, -1.5, 1.5),
          leaf({batch, kv_heads, length_k, dim}, seed + 1, -1.5, 1.5),
          leaf({batch, kv_heads, length_k, dim}, seed + 2)};
}

}  // namespace

TEST_CASE("LayoutGeometry: the diagonal follows end-aligned causality") {
  CHECK(square(4).diagonal(0) == 0);
  CHECK(square(4).diagonal(3) == 3);
  // Lq = 100 (2 query blocks) against Lk = 300 (5 key blocks): queries sit at keys 200..299.
  LayoutGeometry decode{.query_length = 100, .key_length = 300, .block_size = 64};
  CHECK(decode.query_blocks() == 2);
  CHECK(decode.key_blocks() == 5);
  CHECK(decode.diagonal(0) == 4);  // query 63 sees keys up to 263
  CHECK(decode.diagonal(1) == 4);
  // Lq = 300 against Lk = 100: queries 0..199 see no key.
  LayoutGeometry blind{.query_length = 300, .key_length = 100, .block_size = 64};
  CHECK(blind.diagonal(0) == -1);  // query 63 would see key -137
  CHECK(blind.diagonal(2) == -1);  // query 191 would see key -9
  CHECK(blind.diagonal(3) == 0);   // query 255 sees keys up to 55
  CHECK(blind.diagonal(4) == 1);   // query 299 sees keys up to 99
}

TEST_CASE("layout builders give the block lists of their definitions") {
  SUBCASE("dense and causal") {
    CHECK(rows_of(kernels::dense_layout(square(2))) == Rows{{0, 1}, {0, 1}});
    CHECK(rows_of(kernels::causal_layout(square(3))) == Rows{{0}, {0, 1}, {0, 1, 2}});
    LayoutGeometry blind{.query_length = 300, .key_length = 100, .block_size = 64};
    CHECK(rows_of(kernels::causal_layout(blind)) == Rows{{}, {}, {}, {0}, {0, 1}});
  }
  SUBCASE("sliding window") {
    CHECK(rows_of(kernels::sliding_window_layout(square(6), 3)) ==
          Rows{{0}, {0, 1}, {0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 5}});
    CHECK(rows_of(kernels::sliding_window_layout(square(4), 2, false)) == Rows{{0, 1}, {0, 1, 2}, {1, 2, 3}, {2, 3}});
  }
  SUBCASE("global tokens and sinks") {
    CHECK(rows_of(kernels::global_layout(square(4), 1)) == Rows{{0}, {0}, {0}, {0}});
    CHECK(rows_of(kernels::global_layout(square(4), 1, false)) == Rows{{0, 1, 2, 3}, {0}, {0}, {0}});
    CHECK(rows_of(kernels::global_layout(square(4), 2)) == Rows{{0}, {0, 1}, {0, 1}, {0, 1}});
  }
  SUBCASE("dilated") {
    CHECK(rows_of(kernels::dilated_layout(square(8), 3, 2)) ==
          Rows{{0}, {1}, {0, 2}, {1, 3}, {0, 2, 4}, {1, 3, 5}, {2, 4, 6}, {3, 5, 7}});
    CHECK(rows_of(kernels::dilated_layout(square(8), 3, 2, false))[4] == std::vector<int32_t>{0, 2, 4, 6});
    // A window covering the sequence: the strided pattern.
    CHECK(rows_of(kernels::dilated_layout(square(8), 8, 3))[7] == std::vector<int32_t>{1, 4, 7});
  }
  SUBCASE("PowerAttention") {
    Rows rows = rows_of(kernels::power_layout(square(16), 1, 1));
    CHECK(rows[15] == std::vector<int32_t>{0, 7, 11, 13, 14, 15});  // sink, distances 8, 4, 2, 1, 0
    CHECK(rows[5] == std::vector<int32_t>{0, 1, 3, 4, 5});          // sink, distances 4, 2, 1, 0
    CHECK(rows[0] == std::vector<int32_t>{0});
    CHECK(rows_of(kernels::power_layout(square(8), 2, 0))[7] == std::vector<int32_t>{3, 5, 6, 7});
  }
  SUBCASE("S2-Attention: shifted strided shards per head, with a dense head") {
    // 4 heads, head 0 dense; 3 sparse heads, step max(1, 4 / 3) = 1, offset 1: sparse head s keeps
    // key blocks with (j + s + 1) % 4 == 0, and its own block (local_blocks 1).
    BlockLayout layout = kernels::s2_layout(square(8), 4, 1, 4, 1);
    CHECK(layout.heads() == 4);
    CHECK(rows_of(layout, 0)[7] == std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7});
    CHECK(rows_of(layout, 1)[7] == std::vector<int32_t>{3, 7});
    CHECK(rows_of(layout, 2)[7] == std::vector<int32_t>{2, 6, 7});
    CHECK(rows_of(layout, 3)[7] == std::vector<int32_t>{1, 5, 7});
    CHECK(rows_of(layout, 3)[4] == std::vector<int32_t>{1, 4});
    // Two sparse heads with stride 2 cover every earlier block between them.
    BlockLayout pair = kernels::s2_layout(square(6), 2, 1, 2);
    CHECK(rows_of(pair, 0)[5] == std::vector<int32_t>{1, 3, 5});
    CHECK(rows_of(pair, 1)[5] == std::vector<int32_t>{0, 2, 4, 5});
  }
  SUBCASE("neighborhood windows, shifted at the borders, with dilation") {
    CHECK(rows_of(kernels::neighborhood_layout(square(6), 3)) ==
          Rows{{0, 1, 2}, {0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 5}, {3, 4, 5}});
    // Dilation 2: groups {0, 2, 4, 6} and {1, 3, 5, 7}, a window of 3 within each.
    CHECK(rows_of(kernels::neighborhood_layout(square(8), 3, 2)) ==
          Rows{{0, 2, 4}, {1, 3, 5}, {0, 2, 4}, {1, 3, 5}, {2, 4, 6}, {3, 5, 7}, {2, 4, 6}, {3, 5, 7}});
    CHECK(rows_of(kernels::neighborhood_layout(square(8), 2, 2, true)) ==
          Rows{{0}, {1}, {0, 2}, {1, 3}, {2, 4}, {3, 5}, {4, 6}, {5, 7}});
    // A window wider than the group keeps the whole group.
    CHECK(rows_of(kernels::neighborhood_layout(square(3), 5)) == Rows{{0, 1, 2}, {0, 1, 2}, {0, 1, 2}});
  }
  SUBCASE("union") {
    BlockLayout layout =
        kernels::union_layouts(kernels::sliding_window_layout(square(5), 2), kernels::global_layout(square(5), 1));
    CHECK(rows_of(layout) == Rows{{0}, {0, 1}, {0, 1, 2}, {0, 2, 3}, {0, 3, 4}});
    BlockLayout per_head =
        kernels::union_layouts(kernels::s2_layout(square(4), 2, 1, 4), kernels::causal_layout(square(4)));
    CHECK(per_head.heads() == 2);
    CHECK(rows_of(per_head, 1) == rows_of(kernels::causal_layout(square(4))));
  }
}

TEST_CASE("BlockLayout keeps CSR and its CSC transpose consistent") {
  BlockLayout layout = kernels::s2_layout(square(7, 128), 3, 2, 3);
  CHECK(layout.block_size() == 128);
  int64_t present = 0;
  for (int64_t h = 0; h < layout.heads(); ++h) {
    for (int64_t kb = 0; kb < layout.key_blocks(); ++kb) {
      std::vector<int32_t> expected;
      for (int64_t qb = 0; qb < layout.query_blocks(); ++qb) {
        std::vector<int32_t> row = layout.key_blocks_of(h, qb);
        if (std::find(row.begin(), row.end(), kb) != row.end()) expected.push_back(static_cast<int32_t>(qb));
      }
      CHECK(layout.query_blocks_of(h, kb) == expected);
      present += static_cast<int64_t>(expected.size());
    }
  }
  CHECK(layout.present_blocks() == present);
  CHECK(layout.density() == doctest::Approx(static_cast<double>(present) / (3 * 7 * 7)));
  CHECK(layout.row_offsets().shape() == Shape{3 * 7 + 1});
  CHECK(layout.column_offsets().dtype() == DType::Int32);
  CHECK(layout.str() ==
        fmt::format("block layout: 3 heads, 7 x 7 blocks of 128 (Lq = 896, Lk = 896), density {:.4g} on cpu",
                    layout.density()));
}

TEST_CASE("BlockLayout rejects bad lists and bad builder arguments") {
  LayoutGeometry g = square(3);
  CHECK_THROWS_WITH_AS(BlockLayout::from_lists(g, {{{0}, {0, 3}, {}}}),
                       doctest::Contains("BlockLayout: head 0, query block 1: key block 3 is outside [0, 3)"), Error);
  CHECK_THROWS_WITH_AS(BlockLayout::from_lists(g, {{{0}, {1, 0, 1}, {}}}),
                       doctest::Contains("query block 1: key block 1 is listed twice"), Error);
  CHECK_THROWS_WITH_AS(BlockLayout::from_lists(g, {{{0}, {1}}}),
                       doctest::Contains("head 0 has 2 query blocks, expected 3 (Lq = 192, block 64)"), Error);
  CHECK_THROWS_WITH_AS(kernels::dense_layout({.query_length = 10, .key_length = 10, .block_size = 32}),
                       doctest::Contains("block_size must be 64 or 128, got 32"), Error);
  CHECK_THROWS_WITH_AS(kernels::sliding_window_layout(g, 0),
                       doctest::Contains("sliding_window_layout: window_blocks must be positive, got 0"), Error);
  CHECK_THROWS_WITH_AS(kernels::s2_layout(g, 2, 1, 2, 3),
                       doctest::Contains("s2_layout: dense_heads must be in [0, 2], got 3"), Error);
  CHECK_THROWS_WITH_AS(kernels::neighborhood_layout({.query_length = 64, .key_length = 128}, 3),
                       doctest::Contains("neighborhood_layout: needs Lq == Lk"), Error);
  CHECK_THROWS_WITH_AS(kernels::union_layouts(kernels::causal_layout(square(3)), kernels::causal_layout(square(4))),
                       doctest::Contains("union_layouts: geometries differ"), Error);
  CHECK_THROWS_WITH_AS(kernels::union_layouts(kernels::s2_layout(g, 2, 1, 2), kernels::s2_layout(g, 3, 1, 2)),
                       doctest::Contains("union_layouts: head counts differ"), Error);
}

TEST_CASE("block_sparse_attention with a full layout equals dense attention") {
  autograd::NoGradGuard no_grad;
  // 150 positions: blocks of 64, 64 and 22 (or one block of 128 and one of 22).
  Qkv x = make_qkv(2, 4, 2, 150, 150, 8, 1);
  for (int64_t block_size : {64, 128}) {
    for (bool causal : {false, true}) {
      CAPTURE(block_size);
      CAPTURE(causal);
      ops::AttentionOptions options;
      options.causal = causal;
      options.bias = testing::random({2, 1, 1, 150}, 2);
      options.sinks = testing::random({4}, 3);
      options.return_lse = true;
      ops::AttentionResult dense = ops::attention(x.q, x.k, x.v, options);
      BlockLayout full = kernels::dense_layout({.query_length = 150, .key_length = 150, .block_size = block_size});
      ops::AttentionResult sparse = ops::block_sparse_attention(x.q, x.k, x.v, full, options);
      CHECK(testing::max_abs_difference(sparse.out, dense.out) < 1e-13);
      CHECK(testing::max_abs_difference(sparse.lse, dense.lse) < 1e-13);
    }
  }
}

TEST_CASE("block_sparse_attention with a causal layout equals causal dense attention") {
  autograd::NoGradGuard no_grad;
  struct Lengths {
    int64_t q, k;
  };
  for (Lengths lengths : {Lengths{150, 150}, Lengths{200, 300}, Lengths{100, 300}, Lengths{1, 200}}) {
    for (int64_t block_size : {64, 128}) {
      CAPTURE(lengths.q);
      CAPTURE(lengths.k);
      CAPTURE(block_size);
      Qkv x = make_qkv(1, 2, 1, lengths.q, lengths.k, 5, 10);
      ops::AttentionOptions options;
      options.causal = true;
      options.return_lse = true;
      options.return_probabilities = true;
      ops::AttentionResult dense = ops::attention(x.q, x.k, x.v, options);
      BlockLayout causal =
          kernels::causal_layout({.query_length = lengths.q, .key_length = lengths.k, .block_size = block_size});
      ops::AttentionResult sparse = ops::block_sparse_attention(x.q, x.k, x.v, causal, options);
      CHECK(testing::max_abs_difference(sparse.out, dense.out) < 1e-13);
      CHECK(testing::max_abs_difference(sparse.lse, dense.lse) < 1e-13);
      CHECK(testing::max_abs_difference(sparse.probabilities, dense.probabilities) < 1e-13);
    }
  }
}

TEST_CASE("block_sparse_attention equals dense attention with -inf outside the blocks, for every builder") {
  autograd::NoGradGuard no_grad;
  const int64_t length = 300;  // blocks of 64: four full ones and one of 44
  LayoutGeometry g{.query_length = length, .key_length = length, .block_size = 64};
  struct Named {
    const char* name;
    BlockLayout layout;
    bool causal;
  };
  const std::vector<Named> layouts = {
      {"sliding window", kernels::sliding_window_layout(g, 2), true},
      {"sliding window, both sides", kernels::sliding_window_layout(g, 2, false), false},
      {"global + window", kernels::union_layouts(kernels::global_layout(g, 1), kernels::sliding_window_layout(g, 1)),
       true},
      {"dilated", kernels::dilated_layout(g, 2, 2), true},
      {"power", kernels::power_layout(g, 1, 1), true},
      {"s2 per head", kernels::s2_layout(g, 4, 1, 2, 1), true},
      {"neighborhood", kernels::neighborhood_layout(g, 3, 1), false},
      {"neighborhood, dilated", kernels::neighborhood_layout(g, 2, 2), false},
  };
  uint64_t seed = 20;
  for (const Named& named : layouts) {
    CAPTURE(named.name);
    Qkv x = make_qkv(2, 4, 2, length, length, 6, seed);
    ops::AttentionOptions options;
    options.causal = named.causal;
    options.bias = testing::random({2, 4, 1, length}, seed + 3);
    options.return_lse = true;
    options.return_probabilities = true;
    seed += 10;
    ops::AttentionResult sparse = ops::block_sparse_attention(x.q, x.k, x.v, named.layout, options);
    ops::AttentionOptions masked = options;
    masked.bias = ops::add(options.bias, layout_bias(named.layout));
    ops::AttentionResult dense = ops::attention(x.q, x.k, x.v, masked);
    CHECK(testing::max_abs_difference(sparse.out, dense.out) < 1e-13);
    CHECK(testing::max_abs_difference(sparse.lse, dense.lse) < 1e-13);
    CHECK(testing::max_abs_difference(sparse.probabilities, dense.probabilities) < 1e-13);
  }
}

TEST_CASE("block_sparse_attention gradients match finite differences") {
  struct GradCase {
    const char* name;
    int64_t heads, kv_heads, length_q, length_k;
    BlockLayout layout;
    bool causal;
  };
  const LayoutGeometry g130{.query_length = 130, .key_length = 130, .block_size = 64};  // blocks of 64, 64, 2
  const LayoutGeometry wide{.query_length = 70, .key_length = 200, .block_size = 64};   // Lq != Lk
  const std::vector<GradCase> cases = {
      {"s2 per head, GQA", 3, 1, 130, 130, kernels::s2_layout(g130, 3, 1, 2, 1), true},
      {"power, Lq < Lk", 2, 1, 70, 200, kernels::power_layout(wide, 1, 1), true},
      {"neighborhood", 1, 1, 130, 130, kernels::neighborhood_layout(g130, 2, 1), false},
      {"sliding, blocks of 128", 1, 1, 200, 200,
       kernels::sliding_window_layout({.query_length = 200, .key_length = 200, .block_size = 128}, 1), true},
  };
  uint64_t seed = 200;
  for (const GradCase& c : cases) {
    CAPTURE(c.name);
    Qkv x = make_qkv(1, c.heads, c.kv_heads, c.length_q, c.length_k, 2, seed);
    std::vector<Tensor> in{x.q, x.k, x.v, leaf({c.length_k}, seed + 3), leaf({c.heads}, seed + 4)};
    seed += 10;
    const BlockLayout layout = c.layout;
    const bool causal = c.causal;
    // out and lse (finite everywhere thanks to the sinks), so lse's gradient is checked too.
    auto f = [layout, causal](const std::vector<Tensor>& x) {
      ops::AttentionOptions o;
      o.causal = causal;
      o.bias = x[3];
      o.sinks = x[4];
      o.return_lse = true;
      ops::AttentionResult r = ops::block_sparse_attention(x[0], x[1], x[2], layout, o);
      return ops::concat({ops::reshape(r.out, {-1}), ops::reshape(r.lse, {-1})}, 0);
    };
    testing::check_gradients(f, in);
  }
}

TEST_CASE("block_sparse_attention gives zeros to query blocks without key blocks") {
  autograd::NoGradGuard no_grad;
  LayoutGeometry g{.query_length = 128, .key_length = 128, .block_size = 64};
  BlockLayout layout = BlockLayout::from_lists(g, {{{}, {0, 1}}});
  Qkv x = make_qkv(1, 1, 1, 128, 128, 4, 300);
  ops::AttentionOptions options;
  options.return_lse = true;
  ops::AttentionResult r = ops::block_sparse_attention(x.q, x.k, x.v, layout, options);
  CHECK(testing::max_abs(ops::slice(r.out, 2, 0, 64)) == 0.0);
  CHECK(testing::max_abs(ops::slice(r.out, 2, 64, 128)) > 0.0);
  std::vector<double> lse = r.lse.to_vector<double>();
  CHECK(lse[0] == -INFINITY);
  CHECK(lse[63] == -INFINITY);
  CHECK(std::isfinite(lse[64]));
}

TEST_CASE("block_sparse_attention rejects layouts that do not fit") {
  Qkv x = make_qkv(1, 4, 2, 150, 150, 4, 400);
  LayoutGeometry g{.query_length = 150, .key_length = 150, .block_size = 64};
  CHECK_THROWS_WITH_AS(ops::block_sparse_attention(x.q, x.k, x.v, BlockLayout()),
                       doctest::Contains("block_sparse_attention: the block layout is undefined"), Error);
  CHECK_THROWS_WITH_AS(
      ops::block_sparse_attention(x.q, x.k, x.v, kernels::causal_layout({.query_length = 150, .key_length = 151})),
      doctest::Contains(
          "was built for Lq = 150, Lk = 151, but q float64[1, 4, 150, 4] on cpu has Lq = 150 and k has Lk = 150"),
      Error);
  CHECK_THROWS_WITH_AS(ops::block_sparse_attention(x.q, x.k, x.v, kernels::s2_layout(g, 2, 1, 2)),
                       doctest::Contains("must have 1 head or 4 (the heads of q float64[1, 4, 150, 4] on cpu)"), Error);
}
