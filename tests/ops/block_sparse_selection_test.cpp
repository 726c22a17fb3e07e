// The layouts added for issue #5's remaining pieces, on the CPU: 2-D neighborhood
// attention (block layout and element mask against NATTEN's window start written out
// independently, attention against dense attention with an explicit -inf mask), top-k
// block selection (against a brute-force ranking, its invariants, GQA sharing), and
// block_sparse_attention with per-sequence layouts (against one sequence at a time,
// finite-difference gradients in double with bias, sinks and temperatures).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "strata/kernels/block_layout.h"
#include "strata/ops/attention.h"
#include "support/check.h"

using namespace strata;
using kernels::BlockLayout;
using kernels::LayoutGeometry;

namespace {

using testing::leaf;

// NATTEN's window start along one axis (odd kernel sizes), as its C++ reference
// writes it: neighborhood = kernel / 2; dilation 1 clamps; dilated windows are
// placed inside the dilation group, with the group's length at the right border.
int64_t natten_window_start(int64_t index, int64_t length, int64_t kernel, int64_t dilation) {
  const int64_t neighborhood = kernel / 2;
  if (dilation <= 1) {
    int64_t start = std::max<int64_t>(index - neighborhood, 0);
    if (index + neighborhood >= length) start += length - index - neighborhood - 1;
    return start;
  }
  if (index - neighborhood * dilation < 0) return index % dilation;
  if (index + neighborhood * dilation >= length) {
    const int64_t residue = index % dilation, full = (length / dilation) * dilation, rest = length - full;
    if (residue < rest) return length - rest + residue - 2 * neighborhood * dilation;
    return full + residue - kernel * dilation;
  }
  return index - neighborhood * dilation;
}

// The (tokens, tokens) visibility of 2-D neighborhood attention from NATTEN's windows.
std::vector<char> natten_visibility(int64_t height, int64_t width, int64_t kh, int64_t kw, int64_t dh, int64_t dw) {
  const int64_t tokens = height * width;
  std::vector<char> visible(tokens * tokens, 0);
  for (int64_t r = 0; r < height; ++r)
    for (int64_t c = 0; c < width; ++c) {
      const int64_t row0 = natten_window_start(r, height, kh, dh), col0 = natten_window_start(c, width, kw, dw);
      for (int64_t m = 0; m < kh; ++m)
        for (int64_t n = 0; n < kw; ++n)
          visible[(r * width + c) * tokens + (row0 + m * dh) * width + col0 + n * dw] = 1;
    }
  return visible;
}

struct GridCase {
  int64_t height, width, kh, kw, dh, dw, block;
};

}  // namespace

TEST_CASE("neighborhood_2d_mask equals NATTEN's windows, with the same number of keys for every query") {
  for (const GridCase& c : {GridCase{9, 11, 3, 5, 1, 1, 64}, GridCase{12, 10, 5, 3, 2, 3, 64},
                            GridCase{7, 7, 7, 7, 1, 1, 64}, GridCase{16, 9, 3, 3, 4, 2, 128}}) {
    CAPTURE(c.height);
    CAPTURE(c.dh);
    const std::vector<char> expected = natten_visibility(c.height, c.width, c.kh, c.kw, c.dh, c.dw);
    const std::vector<float> mask =
        kernels::neighborhood_2d_mask(c.height, c.width, c.kh, c.kw, c.dh, c.dw).to_vector<float>();
    const int64_t tokens = c.height * c.width;
    REQUIRE(static_cast<int64_t>(mask.size()) == tokens * tokens);
    int64_t mismatches = 0;
    for (int64_t i = 0; i < tokens; ++i) {
      int64_t keys = 0;
      for (int64_t j = 0; j < tokens; ++j) {
        const bool sees = mask[i * tokens + j] == 0.0f;
        CHECK((sees || std::isinf(mask[i * tokens + j])));
        mismatches += sees != static_cast<bool>(expected[i * tokens + j]);
        keys += sees;
      }
      CHECK(keys == c.kh * c.kw);
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("neighborhood_2d_layout holds exactly the blocks with a visible key") {
  for (const GridCase& c : {GridCase{9, 11, 3, 5, 1, 1, 64}, GridCase{12, 10, 5, 3, 2, 3, 64},
                            GridCase{20, 20, 3, 3, 1, 1, 64}, GridCase{16, 9, 3, 3, 4, 2, 128}}) {
    const int64_t tokens = c.height * c.width, bs = c.block;
    const LayoutGeometry g{tokens, tokens, bs};
    const BlockLayout layout = kernels::neighborhood_2d_layout(g, c.height, c.width, c.kh, c.kw, c.dh, c.dw);
    const std::vector<char> visible = natten_visibility(c.height, c.width, c.kh, c.kw, c.dh, c.dw);
    CHECK(layout.heads() == 1);
    for (int64_t qb = 0; qb < g.query_blocks(); ++qb) {
      std::vector<int32_t> expected;
      for (int64_t kb = 0; kb < g.key_blocks(); ++kb) {
        bool any = false;
        for (int64_t i = qb * bs; i < std::min(tokens, (qb + 1) * bs); ++i)
          for (int64_t j = kb * bs; j < std::min(tokens, (kb + 1) * bs); ++j) any = any || visible[i * tokens + j];
        if (any) expected.push_back(static_cast<int32_t>(kb));
      }
      CHECK(layout.key_blocks_of(0, qb) == expected);
    }
  }
  // A 20 x 20 grid with 3 x 3 windows in blocks of 64 (3.2 rows): each query block
  // needs the blocks of its own rows and one row above and below, not all 7.
  const BlockLayout small = kernels::neighborhood_2d_layout({400, 400, 64}, 20, 20, 3, 3);
  CHECK(small.density() < 0.5);
}

TEST_CASE("block-sparse 2-D neighborhood attention with its mask equals dense attention with the mask") {
  const int64_t height = 10, width = 13, tokens = height * width;  // 130 tokens: blocks of 64, 64, 2
  for (int64_t dilation : {1, 2}) {
    const BlockLayout layout = kernels::neighborhood_2d_layout({tokens, tokens, 64}, height, width, 3, 5, dilation, 2);
    const Tensor mask = kernels::neighborhood_2d_mask(height, width, 3, 5, dilation, 2).to(DType::Float64);
    const std::vector<char> visible = natten_visibility(height, width, 3, 5, dilation, 2);
    std::vector<double> explicit_bias(tokens * tokens);
    for (int64_t n = 0; n < tokens * tokens; ++n) explicit_bias[n] = visible[n] ? 0.0 : -INFINITY;
    ops::AttentionOptions dense_options;
    dense_options.bias = Tensor::from_vector(explicit_bias, {tokens, tokens});
    ops::AttentionOptions sparse_options;
    sparse_options.bias = mask;
    const Tensor q = leaf({2, 4, tokens, 16}, 1, -1.5, 1.5), k = leaf({2, 2, tokens, 16}, 2, -1.5, 1.5),
                 v = leaf({2, 2, tokens, 16}, 3);
    Tensor dense = ops::attention(q, k, v, dense_options).out;
    Tensor sparse = ops::block_sparse_attention(q, k, v, layout, sparse_options).out;
    CHECK(testing::max_abs_difference(dense, sparse) < 1e-12);
  }
  // Gradients through the sparse path (a smaller grid).
  const BlockLayout layout = kernels::neighborhood_2d_layout({70, 70, 64}, 7, 10, 3, 3, 2, 1);
  const Tensor mask = kernels::neighborhood_2d_mask(7, 10, 3, 3, 2, 1).to(DType::Float64);
  testing::check_gradients(
      [&](const std::vector<Tensor>& in) {
        ops::AttentionOptions o;
        o.bias = mask;
        return ops::block_sparse_attention(in[0], in[1], in[2], layout, o).out;
      },
      {leaf({1, 2, 70, 4}, 4), leaf({1, 1, 70, 4}, 5), leaf({1, 1, 70, 4}, 6)});
}

TEST_CASE("neighborhood_2d builders reject windows that do not fit") {
  CHECK_THROWS_WITH_AS(kernels::neighborhood_2d_layout({100, 100, 64}, 10, 10, 5, 3, 3, 1),
                       doctest::Contains("window x dilation must fit the grid: 5 x 3 rows of 10"), Error);
  CHECK_THROWS_WITH_AS(kernels::neighborhood_2d_layout({99, 99, 64}, 10, 10, 3, 3),
                       doctest::Contains("needs Lq == Lk == height * width = 100, got Lq = 99"), Error);
  CHECK_THROWS_WITH_AS(kernels::neighborhood_2d_mask(4, 4, 0, 3), doctest::Contains("must be positive"), Error);
}

namespace {

// The top-k rows by brute force: mean-pooled blocks, scores for every visible block,
// forced blocks, then the best others by (score desc, index asc), sorted.
std::vector<int32_t> brute_force_row(const Tensor& q, const Tensor& k, int64_t b, int64_t h,
                                     const kernels::TopKBlockOptions& o, int64_t qb) {
  const int64_t heads = q.size(1), kv_heads = k.size(1), group = heads / kv_heads, bs = o.block_size;
  const int64_t length_q = q.size(2), length_k = k.size(2), dim = q.size(3);
  const LayoutGeometry g{length_q, length_k, bs};
  const std::vector<double> qv = q.to_vector<double>(), kv = k.to_vector<double>();
  const int64_t kv_head = h / group;
  std::vector<double> pooled_q(dim, 0.0);
  const int64_t first_head = o.share_by_group ? kv_head * group : h;
  const int64_t last_head = o.share_by_group ? first_head + group : h + 1;
  double count = 0;
  for (int64_t hh = first_head; hh < last_head; ++hh)
    for (int64_t i = qb * bs; i < std::min(length_q, (qb + 1) * bs); ++i, ++count)
      for (int64_t d = 0; d < dim; ++d) pooled_q[d] += qv[((b * heads + hh) * length_q + i) * dim + d];
  const int64_t diagonal = g.diagonal(qb), visible = o.causal ? diagonal + 1 : g.key_blocks();
  std::vector<std::pair<double, int32_t>> ranked;
  std::vector<int32_t> row;
  for (int64_t kb = 0; kb < visible; ++kb) {
    if (kb == diagonal || (o.keep_first && kb == 0)) {
      row.push_back(static_cast<int32_t>(kb));
      continue;
    }
    double score = 0;
    for (int64_t d = 0; d < dim; ++d) {
      double key = 0, n = 0;
      for (int64_t j = kb * bs; j < std::min(length_k, (kb + 1) * bs); ++j, ++n)
        key += kv[((b * kv_heads + kv_head) * length_k + j) * dim + d];
      score += pooled_q[d] / count * key / n;
    }
    ranked.emplace_back(-score, static_cast<int32_t>(kb));
  }
  std::sort(ranked.begin(), ranked.end());
  for (const auto& [negative_score, kb] : ranked)
    if (static_cast<int64_t>(row.size()) < o.top_k) row.push_back(kb);
  std::sort(row.begin(), row.end());
  return row;
}

void check_against_brute_force(const Tensor& q, const Tensor& k, const kernels::TopKBlockOptions& o) {
  const BlockLayout layout = kernels::topk_block_layout(q, k, o);
  REQUIRE(layout.batches() == q.size(0));
  REQUIRE(layout.heads() == q.size(1));
  for (int64_t b = 0; b < q.size(0); ++b)
    for (int64_t h = 0; h < q.size(1); ++h)
      for (int64_t qb = 0; qb < layout.query_blocks(); ++qb) {
        CAPTURE(b);
        CAPTURE(h);
        CAPTURE(qb);
        CHECK(layout.key_blocks_of(h, qb, b) == brute_force_row(q, k, b, h, o, qb));
      }
  // The CSC transpose lists the same blocks.
  for (int64_t b = 0; b < q.size(0); ++b)
    for (int64_t h = 0; h < q.size(1); ++h)
      for (int64_t kb = 0; kb < layout.key_blocks(); ++kb) {
        std::vector<int32_t> expected;
        for (int64_t qb = 0; qb < layout.query_blocks(); ++qb) {
          std::vector<int32_t> row = layout.key_blocks_of(h, qb, b);
          if (std::find(row.begin(), row.end(), kb) != row.end()) expected.push_back(static_cast<int32_t>(qb));
        }
        CHECK(layout.query_blocks_of(h, kb, b) == expected);
      }
}

}  // namespace

TEST_CASE("topk_block_layout selects the diagonal and the best-scoring visible blocks") {
  // 600 positions: 10 blocks, the last of 24.
  const Tensor q = testing::random({2, 4, 600, 8}, 11), k = testing::random({2, 2, 600, 8}, 12);
  kernels::TopKBlockOptions o;
  o.top_k = 3;
  check_against_brute_force(q, k, o);
  o.keep_first = true;
  check_against_brute_force(q, k, o);
  o.share_by_group = false;
  check_against_brute_force(q, k, o);
  o.causal = false;
  o.keep_first = false;
  check_against_brute_force(q, k, o);
  o.block_size = 128;
  o.top_k = 2;
  o.causal = true;
  check_against_brute_force(q.to(DType::Float32), k.to(DType::Float32), o);
  // Lq != Lk (queries at the end of the keys).
  check_against_brute_force(testing::random({1, 2, 100, 8}, 13), testing::random({1, 1, 450, 8}, 14), o);
}

TEST_CASE("topk_block_layout: row lengths, causality, GQA sharing") {
  const Tensor q = testing::random({2, 4, 512, 16}, 21), k = testing::random({2, 2, 512, 16}, 22);
  kernels::TopKBlockOptions o;
  o.top_k = 3;
  const BlockLayout shared = kernels::topk_block_layout(q, k, o);
  int64_t differing_groups = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t qb = 0; qb < 8; ++qb) {
      for (int64_t h = 0; h < 4; ++h) {
        std::vector<int32_t> row = shared.key_blocks_of(h, qb, b);
        CHECK(static_cast<int64_t>(row.size()) == std::min<int64_t>(qb + 1, 3));
        CHECK(row.back() == qb);  // the diagonal, and nothing after it
      }
      CHECK(shared.key_blocks_of(0, qb, b) == shared.key_blocks_of(1, qb, b));
      CHECK(shared.key_blocks_of(2, qb, b) == shared.key_blocks_of(3, qb, b));
      differing_groups += shared.key_blocks_of(0, qb, b) != shared.key_blocks_of(2, qb, b);
    }
  CHECK(differing_groups > 0);  // the two kv heads do choose differently
  CHECK(shared.density() == doctest::Approx((1 + 2 + 3 * 6) / 64.0));
  CHECK(shared.str().find("2 batches of 4 heads") != std::string::npos);
}

TEST_CASE("topk_block_layout rejects bad arguments") {
  const Tensor q = testing::random({1, 4, 128, 8}, 1), k = testing::random({1, 3, 128, 8}, 2);
  kernels::TopKBlockOptions o;
  CHECK_THROWS_WITH_AS(kernels::topk_block_layout(q, k, o), doctest::Contains("kv_heads dividing the heads"), Error);
  o.keep_first = true;
  o.top_k = 1;
  CHECK_THROWS_WITH_AS(kernels::topk_block_layout(q, testing::random({1, 2, 128, 8}, 3), o),
                       doctest::Contains("top_k must be at least 2 (the forced blocks), got 1"), Error);
  o.top_k = 4;
  o.block_size = 32;
  CHECK_THROWS_WITH_AS(kernels::topk_block_layout(q, testing::random({1, 2, 128, 8}, 3), o),
                       doctest::Contains("block_size must be 64 or 128, got 32"), Error);
}

TEST_CASE("block_sparse_attention with per-sequence layouts equals each sequence with its own layout") {
  const Tensor q = leaf({3, 4, 200, 8}, 31, -1.5, 1.5), k = leaf({3, 2, 200, 8}, 32, -1.5, 1.5),
               v = leaf({3, 2, 200, 8}, 33);
  kernels::TopKBlockOptions o;
  o.top_k = 2;
  o.share_by_group = false;
  const BlockLayout layout = kernels::topk_block_layout(q, k, o);
  ops::AttentionOptions a;
  a.causal = true;
  a.return_lse = true;
  ops::AttentionResult batched = ops::block_sparse_attention(q, k, v, layout, a);
  for (int64_t b = 0; b < 3; ++b) {
    std::vector<std::vector<std::vector<int32_t>>> lists(4);
    for (int64_t h = 0; h < 4; ++h)
      for (int64_t qb = 0; qb < layout.query_blocks(); ++qb) lists[h].push_back(layout.key_blocks_of(h, qb, b));
    const BlockLayout own = BlockLayout::from_lists(layout.geometry(), lists);
    auto one = [b](const Tensor& t) { return ops::slice(t, 0, b, b + 1); };
    ops::AttentionResult single = ops::block_sparse_attention(one(q), one(k), one(v), own, a);
    CHECK(testing::max_abs_difference(single.out, one(batched.out)) < 1e-14);
    CHECK(testing::max_abs_difference(single.lse, one(batched.lse)) < 1e-14);
  }
  CHECK_THROWS_WITH_AS(ops::block_sparse_attention(ops::slice(q, 0, 0, 2), ops::slice(k, 0, 0, 2),
                                                   ops::slice(v, 0, 0, 2), layout, a),
                       doctest::Contains("needs q (batch = 3, heads = 4, Lq, d)"), Error);
}

TEST_CASE("block_sparse_attention with per-sequence layouts: gradients match finite differences") {
  // The layout is chosen once from fixed inputs (the selection is not differentiated).
  kernels::TopKBlockOptions o;
  o.top_k = 2;
  o.keep_first = true;
  const BlockLayout layout =
      kernels::topk_block_layout(testing::random({2, 2, 150, 4}, 41), testing::random({2, 1, 150, 4}, 42), o);
  const std::vector<Tensor> inputs{leaf({2, 2, 150, 4}, 43), leaf({2, 1, 150, 4}, 44), leaf({2, 1, 150, 4}, 45),
                                   leaf({1, 150}, 46),        leaf({2}, 47),            leaf({2, 1, 150}, 48, 0.5, 1.5),
                                   leaf({150}, 49, 0.5, 1.5)};
  testing::check_gradients(
      [&](const std::vector<Tensor>& in) {
        ops::AttentionOptions a;
        a.causal = true;
        a.bias = in[3];
        a.sinks = in[4];
        a.query_temperature = in[5];
        a.key_temperature = in[6];
        a.return_lse = true;
        ops::AttentionResult r = ops::block_sparse_attention(in[0], in[1], in[2], layout, a);
        return ops::add(r.out, ops::unsqueeze(r.lse, -1));
      },
      inputs);
}
