#include "support/check.h"

using namespace strata;

namespace {
using testing::values;
// 0, 1, 2, ... in float64, contiguous.
Tensor iota(const Shape& shape) { return Tensor::arange(shape_numel(shape), DType::Float64).view(shape); }
}  // namespace

TEST_CASE("reshape views when the strides allow it and copies otherwise") {
  Tensor a = iota({2, 3, 4});
  Tensor flat = ops::reshape(a, {6, -1});
  CHECK(flat.shape() == Shape{6, 4});
  CHECK(flat.data_ptr() == a.data_ptr());  // a view
  CHECK(values(flat) == values(a));

  // (3, 2, 4) transposed from (2, 3, 4): dims 0 and 1 are no longer one chunk, dim 2 is.
  Tensor t = ops::transpose(a, 0, 1);
  Tensor merged_inner = ops::reshape(t, {3, 2, 2, 2});
  CHECK(merged_inner.storage().data() == a.storage().data());  // splitting the contiguous last dim is a view
  CHECK(values(merged_inner) == values(t.contiguous()));
  Tensor merged_outer = ops::reshape(t, {6, 4});
  CHECK(merged_outer.storage().data() != a.storage().data());  // merging across the transpose needs a copy
  CHECK(values(merged_outer) == values(t.contiguous()));

  // Size-1 dims anywhere, scalars and empty tensors.
  CHECK(ops::reshape(iota({1, 4, 1}), {2, 1, 2}).shape() == Shape{2, 1, 2});
  CHECK(ops::reshape(Tensor::scalar(3.0, DType::Float64), {1, 1}).shape() == Shape{1, 1});
  CHECK(ops::reshape(Tensor::zeros({0, 3}), {3, -1, 2}).shape() == Shape{3, 0, 2});

  CHECK_THROWS_WITH_AS(ops::reshape(a, {5, -1}), doctest::Contains("reshape: cannot reshape float64[2, 3, 4]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::reshape(a, {-1, -1}), doctest::Contains("more than one -1"), Error);
  CHECK_THROWS_WITH_AS(ops::reshape(a, {7, 3}), doctest::Contains("24 vs 21 elements"), Error);
}

TEST_CASE("permute, transpose, unsqueeze and squeeze move strides") {
  Tensor a = iota({2, 3, 4});
  Tensor p = ops::permute(a, {2, 0, -2});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.strides() == Shape{1, 12, 4});
  CHECK(values(p.contiguous())[1] == 4.0);  // p[0][0][1] = a[0][1][0]
  CHECK_THROWS_WITH_AS(ops::permute(a, {0, 0, 1}), doctest::Contains("permute: dim 0 repeats"), Error);
  CHECK_THROWS_WITH_AS(ops::permute(a, {0, 1}), doctest::Contains("permute: 2 dims given"), Error);

  Tensor t = ops::transpose(a, -1, 0);
  CHECK(t.shape() == Shape{4, 3, 2});
  CHECK_THROWS_WITH_AS(ops::transpose(a, 0, 3), doctest::Contains("transpose: dim 3 is out of range"), Error);

  Tensor u = ops::unsqueeze(a, -1);
  CHECK(u.shape() == Shape{2, 3, 4, 1});
  CHECK(u.is_contiguous());
  CHECK(ops::unsqueeze(a, 0).shape() == Shape{1, 2, 3, 4});
  CHECK(ops::squeeze(u, 3).shape() == Shape{2, 3, 4});
  CHECK_THROWS_WITH_AS(ops::squeeze(a, 1), doctest::Contains("squeeze: dim 1 of float64[2, 3, 4] on cpu has size 3, not 1"),
                       Error);
}

TEST_CASE("slice follows Python's rules for negative and out-of-range bounds") {
  Tensor a = iota({10});
  CHECK(values(ops::slice(a, 0, 2, 5)) == std::vector<double>{2, 3, 4});
  CHECK(values(ops::slice(a, 0, -3, 100)) == std::vector<double>{7, 8, 9});
  CHECK(values(ops::slice(a, 0, 1, -1, 3)) == std::vector<double>{1, 4, 7});
  CHECK(values(ops::slice(a, 0, -100, 2)) == std::vector<double>{0, 1});
  CHECK(ops::slice(a, 0, 6, 3).numel() == 0);
  CHECK_THROWS_WITH_AS(ops::slice(a, 0, 0, 5, 0), doctest::Contains("slice: step must be positive"), Error);

  Tensor m = iota({3, 4});
  Tensor column = ops::slice(m, 1, 1, 2);
  CHECK(column.shape() == Shape{3, 1});
  CHECK(values(column) == std::vector<double>{1, 5, 9});
}

TEST_CASE("expand broadcasts size-1 dims only") {
  Tensor a = iota({3, 1});
  Tensor e = ops::expand(a, {2, -1, 4});
  CHECK(e.shape() == Shape{2, 3, 4});
  CHECK(e.strides() == Shape{0, 1, 0});
  CHECK(values(e)[5] == 1.0);  // e[0][1][1] = a[1][0]
  CHECK_THROWS_WITH_AS(ops::expand(a, {2, 4}), doctest::Contains("dim 0 has size 3, not 1"), Error);
  CHECK_THROWS_WITH_AS(ops::expand(a, {4}), doctest::Contains("fewer dims"), Error);
}

TEST_CASE("contiguous, cast and to_device return the input when nothing changes") {
  Tensor a = iota({2, 3});
  CHECK(ops::contiguous(a).impl() == a.impl());
  CHECK(ops::cast(a, DType::Float64).impl() == a.impl());
  CHECK(ops::to_device(a, Device::cpu()).impl() == a.impl());
  Tensor t = ops::contiguous(ops::transpose(a, 0, 1));
  CHECK(t.is_contiguous());
  CHECK(values(t) == std::vector<double>{0, 3, 1, 4, 2, 5});
  Tensor f = ops::cast(a, DType::Float32);
  CHECK(f.dtype() == DType::Float32);
  CHECK(values(f) == values(a));
}

TEST_CASE("concat and split are inverse along any dim") {
  Tensor a = iota({2, 3}), b = Tensor::from_vector<double>({0, 10}, {2, 1}), c = iota({2, 2});
  Tensor joined = ops::concat({a, b, c}, 1);
  CHECK(joined.shape() == Shape{2, 6});
  CHECK(values(joined) == std::vector<double>{0, 1, 2, 0, 0, 1, 3, 4, 5, 10, 2, 3});
  std::vector<Tensor> parts = ops::split(joined, {3, 1, 2}, -1);
  REQUIRE(parts.size() == 3);
  CHECK(values(parts[0]) == values(a));
  CHECK(values(parts[1]) == values(b));
  CHECK(values(parts[2]) == values(c));

  Tensor rows = ops::concat({iota({1, 3}), iota({2, 3})}, 0);
  CHECK(values(rows) == std::vector<double>{0, 1, 2, 0, 1, 2, 3, 4, 5});

  CHECK_THROWS_WITH_AS(ops::concat({a, iota({3, 3})}, 1),
                       doctest::Contains("concat: tensor 1 (float64[3, 3] on cpu) does not match tensor 0"), Error);
  CHECK_THROWS_WITH_AS(ops::concat({a, ops::cast(a, DType::Float32)}, 0), doctest::Contains("concat: tensor 1"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::concat({}, 0), doctest::Contains("concat: no tensors"), Error);
  CHECK_THROWS_WITH_AS(ops::split(a, {1, 1}, 1), doctest::Contains("add up to 2, but dim 1"), Error);
}

// ---- gradients (finite differences in float64) -------------------------------------

namespace {
using testing::leaf;
}  // namespace

TEST_CASE("reshape gradients on the view and the copy path") {
  Tensor x = leaf({2, 3, 4}, 1);
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::reshape(in[0], {4, -1}); }, {x});
  testing::check_gradients(
      [](const std::vector<Tensor>& in) { return ops::reshape(ops::transpose(in[0], 0, 1), {6, 4}); }, {x});
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::reshape(in[0], {1, 24, 1}); }, {x});
}

TEST_CASE("permute, transpose, unsqueeze, squeeze and contiguous gradients") {
  Tensor x = leaf({2, 3, 4}, 2);
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::permute(in[0], {1, 2, 0}); }, {x});
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::transpose(in[0], -1, 0); }, {x});
  testing::check_gradients(
      [](const std::vector<Tensor>& in) { return ops::contiguous(ops::permute(in[0], {2, 0, 1})); }, {x});
  Tensor y = leaf({3, 1, 2}, 3);
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::squeeze(in[0], 1); }, {y});
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::unsqueeze(in[0], -1); }, {y});
}

TEST_CASE("slice gradients: steps, negative bounds, non-contiguous input") {
  Tensor x = leaf({4, 7}, 4);
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::slice(in[0], 1, 1, -1, 2); }, {x});
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::slice(in[0], 0, -2, 10); }, {x});
  testing::check_gradients(
      [](const std::vector<Tensor>& in) { return ops::slice(ops::transpose(in[0], 0, 1), 0, 2, 5); }, {x});
}

TEST_CASE("expand gradients sum over broadcast and new dims") {
  Tensor x = leaf({3, 1}, 5);
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::expand(in[0], {2, 3, 4}); }, {x});
  Tensor one = leaf({1}, 6);
  testing::check_gradients([](const std::vector<Tensor>& in) { return ops::expand(in[0], {5}); }, {one});
}

TEST_CASE("cast gradients cast back") {
  Tensor x = leaf({3, 2}, 7);
  // The float32 round trip rounds x to 24 bits, so the differences need a wider step.
  testing::check_gradients(
      [](const std::vector<Tensor>& in) {
        Tensor narrow = ops::cast(in[0], DType::Float32);
        CHECK(narrow.dtype() == DType::Float32);
        return ops::cast(narrow, DType::Float64);
      },
      {x}, 1e-3, 1e-4);
}

TEST_CASE("concat and split gradients along several dims") {
  Tensor a = leaf({2, 3}, 8), b = leaf({2, 1}, 9), c = leaf({2, 2}, 10);
  for (int dim : {1, -1})
    testing::check_gradients([dim](const std::vector<Tensor>& in) { return ops::concat(in, dim); }, {a, b, c});
  Tensor d = leaf({1, 3}, 11);
  Tensor constant = testing::random({3, 3}, 12);  // needs no gradient
  testing::check_gradients([&](const std::vector<Tensor>& in) { return ops::concat({in[0], constant, in[1]}, 0); },
                           {a, d});

  Tensor x = leaf({2, 6, 3}, 13);
  // The middle part is unused: its gradient is the zeros the engine provides.
  testing::check_gradients(
      [](const std::vector<Tensor>& in) {
        std::vector<Tensor> parts = ops::split(in[0], {2, 1, 3}, 1);
        return ops::concat({parts[2], parts[0]}, 1);
      },
      {x});
  testing::check_gradients(
      [](const std::vector<Tensor>& in) { return ops::split(ops::transpose(in[0], 0, 2), {1, 2}, 0)[1]; }, {x});
}
