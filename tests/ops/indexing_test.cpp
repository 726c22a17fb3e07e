#include "support/check.h"

using namespace strata;

namespace {
using testing::values;
Tensor iota(const Shape& shape) { return Tensor::arange(shape_numel(shape), DType::Float64).view(shape); }
using testing::leaf;
Tensor ids64(const std::vector<int64_t>& v, const Shape& shape) { return Tensor::from_vector(v, shape); }
Tensor ids32(const std::vector<int32_t>& v, const Shape& shape) { return Tensor::from_vector(v, shape); }
}  // namespace

TEST_CASE("index_select picks rows along any dim, repeats allowed") {
  Tensor a = iota({3, 4});
  CHECK(values(ops::index_select(a, 0, ids64({2, 0, 2}, {3}))) ==
        std::vector<double>{8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11});
  CHECK(values(ops::index_select(a, -1, ids32({3, 3}, {2}))) == std::vector<double>{3, 3, 7, 7, 11, 11});
  // Non-contiguous input: rows of the transpose are columns of a.
  CHECK(values(ops::index_select(ops::transpose(a, 0, 1), 0, ids64({1}, {1}))) == std::vector<double>{1, 5, 9});
  CHECK(ops::index_select(a, 1, ids64({}, {0})).shape() == Shape{3, 0});
}

TEST_CASE("gather and scatter_add follow their definitions") {
  Tensor a = iota({2, 3});
  // out[i][j] = a[i][index[i][j]]
  Tensor index = ids64({2, 2, 0, 1, 0, 1}, {2, 3});
  CHECK(values(ops::gather(a, 1, index)) == std::vector<double>{2, 2, 0, 4, 3, 4});
  // out[index[i][j]][j] += src[i][j] along dim 0, with a repeated row.
  Tensor rows = ids32({1, 0, 1, 1, 1, 0}, {2, 3});
  Tensor src = Tensor::from_vector<double>({10, 20, 30, 40, 50, 60}, {2, 3});
  CHECK(values(ops::scatter_add(a, 0, rows, src)) == std::vector<double>{0, 21, 62, 53, 54, 35});
  CHECK(values(a) == std::vector<double>{0, 1, 2, 3, 4, 5});  // a itself is untouched
  // Gathering fewer entries than the dim has: index (2, 1).
  CHECK(values(ops::gather(a, 1, ids64({1, 2}, {2, 1}))) == std::vector<double>{1, 5});
}

TEST_CASE("causal_mask is true strictly above the diagonal") {
  Tensor mask = ops::causal_mask(3);
  CHECK(mask.dtype() == DType::Bool);
  CHECK(mask.to_vector<bool>() == std::vector<bool>{false, true, true, false, false, true, false, false, false});
  CHECK(ops::causal_mask(0).shape() == Shape{0, 0});
}

TEST_CASE("index_select gradients add up repeated indices") {
  Tensor x = leaf({4, 3}, 21);
  Tensor index = ids64({1, 3, 1, 1, 0}, {5});
  for (int dim : {0, 1}) {
    Tensor in_range = dim == 0 ? index : ids64({2, 0, 2}, {3});
    testing::check_gradients([&](const std::vector<Tensor>& in) { return ops::index_select(in[0], dim, in_range); },
                             {x});
  }
  testing::check_gradients(
      [&](const std::vector<Tensor>& in) { return ops::index_select(ops::transpose(in[0], 0, 1), 1, index); }, {x});
}

TEST_CASE("gather and scatter_add gradients with repeated indices") {
  Tensor x = leaf({3, 4, 2}, 22);
  Tensor index = ids32({0, 0, 3, 3, 1, 1, 0, 2, 2, 2, 3, 0, 1, 1, 1, 0, 3, 2}, {3, 3, 2});
  testing::check_gradients([&](const std::vector<Tensor>& in) { return ops::gather(in[0], 1, index); }, {x});
  // Non-contiguous input: the (4, 3, 2) transpose, picking one of the two entries of its last dim.
  Tensor along_last = ids64({1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1}, {4, 3, 1});
  testing::check_gradients(
      [&](const std::vector<Tensor>& in) { return ops::gather(ops::transpose(in[0], 0, 1), 2, along_last); }, {x});

  Tensor src = leaf({3, 3, 2}, 23);
  testing::check_gradients([&](const std::vector<Tensor>& in) { return ops::scatter_add(in[0], 1, index, in[1]); },
                           {x, src});
  Tensor rows = ids64({2, 0, 2, 2, 1, 0, 0, 0}, {1, 4, 2});
  Tensor src_rows = leaf({1, 4, 2}, 24);
  testing::check_gradients(
      [&](const std::vector<Tensor>& in) { return ops::scatter_add(in[0], 0, rows, in[1]); }, {x, src_rows});
}

TEST_CASE("indexing errors name the op and the bad index or shape") {
  Tensor a = iota({3, 4});
  CHECK_THROWS_WITH_AS(ops::index_select(a, 0, ids64({0, 3}, {2})),
                       doctest::Contains("index_select: index 3 is out of range for dim 0 of float64[3, 4] on cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::index_select(a, 1, ids32({-1}, {1})), doctest::Contains("index -1 is out of range"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::index_select(a, 0, ids64({0, 1}, {1, 2})), doctest::Contains("must be 1-D"), Error);
  CHECK_THROWS_WITH_AS(ops::index_select(a, 2, ids64({0}, {1})), doctest::Contains("index_select: dim 2"), Error);
  CHECK_THROWS_WITH_AS(ops::index_select(a, 0, Tensor::zeros({1})), doctest::Contains("must be int32 or int64"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::gather(a, 1, ids64({4, 0, 0}, {3, 1})),
                       doctest::Contains("gather: index 4 is out of range for dim 1"), Error);
  CHECK_THROWS_WITH_AS(ops::gather(a, 1, ids64({0, 0}, {2, 1})),
                       doctest::Contains("gather: index int64[2, 1] on cpu must have the rank of float64[3, 4]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::scatter_add(a, 0, ids64({0, 0, 0, 0}, {1, 4}), iota({2, 4})),
                       doctest::Contains("scatter_add: src float64[2, 4] on cpu and index int64[1, 4] on cpu differ"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::scatter_add(a, 0, ids64({0, 5, 0, 0}, {1, 4}), iota({1, 4})),
                       doctest::Contains("scatter_add: index 5 is out of range for dim 0"), Error);
  CHECK_THROWS_WITH_AS(ops::scatter_add(a, 0, ids64({0, 0, 0, 0}, {1, 4}), ops::cast(iota({1, 4}), DType::Float32)),
                       doctest::Contains("scatter_add: dtypes differ"), Error);
}
