#include <vector>

#include "strata/ops/moe.h"
#include "support/check.h"

using namespace strata;

namespace {

// The grouped product as a loop of ops::linear, one per non-empty group.
Tensor per_expert_reference(const Tensor& x, const Tensor& weight, const std::vector<int64_t>& offsets) {
  std::vector<Tensor> parts;
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    if (offsets[e + 1] == offsets[e]) continue;
    Tensor expert_weight = ops::squeeze(ops::slice(weight, 0, e, e + 1), 0);
    parts.push_back(ops::linear(ops::slice(x, 0, offsets[e], offsets[e + 1]), expert_weight));
  }
  return ops::concat(parts, 0);
}

Tensor offsets_tensor(const std::vector<int64_t>& offsets) {
  return Tensor::from_vector<int64_t>(offsets, {static_cast<int64_t>(offsets.size())});
}

}  // namespace

TEST_CASE("grouped_linear equals a loop of ops::linear over the experts, empty groups included") {
  const std::vector<std::vector<int64_t>> groupings = {
      {0, 3, 3, 10, 11},  // sizes 3, 0, 7, 1
      {0, 11},            // one expert
      {0, 0, 0, 0, 11},   // everything in the last expert
      {0, 1, 2, 3, 11},
  };
  for (DType dtype : {DType::Float64, DType::Float32}) {
    for (const std::vector<int64_t>& offsets : groupings) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(offsets.size());
      const int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
      Tensor x = testing::random({11, 6}, 1, dtype);
      Tensor weight = testing::random({experts, 5, 6}, 2, dtype);
      Tensor out = ops::grouped_linear(x, weight, offsets_tensor(offsets));
      CHECK(out.shape() == Shape{11, 5});
      CHECK(out.dtype() == dtype);
      // Same blocked GEMM underneath: float32 sums may differ only in their order.
      CHECK(testing::max_abs_difference(out, per_expert_reference(x, weight, offsets)) <
            (dtype == DType::Float64 ? 1e-13 : 1e-5));
    }
  }
  // int32 offsets, a non-contiguous x, and a large group that spans many tiles.
  Tensor x = ops::transpose(testing::random({40, 300}, 3), 0, 1);  // (300, 40), strided
  Tensor weight = testing::random({3, 17, 40}, 4);
  std::vector<int64_t> offsets{0, 1, 299, 300};
  Tensor offsets32 = Tensor::from_vector<int32_t>({0, 1, 299, 300}, {4});
  CHECK(testing::max_abs_difference(ops::grouped_linear(x, weight, offsets32), per_expert_reference(x, weight, offsets)) <
        1e-12);
}

TEST_CASE("grouped_linear with no rows at all returns an empty result") {
  Tensor out = ops::grouped_linear(Tensor::zeros({0, 4}, DType::Float64), testing::random({2, 3, 4}, 1),
                                   offsets_tensor({0, 0, 0}));
  CHECK(out.shape() == Shape{0, 3});
}

TEST_CASE("grouped_linear gradients: x and weight, with empty groups and with one group") {
  for (const std::vector<int64_t>& offsets : std::vector<std::vector<int64_t>>{{0, 2, 2, 5, 7}, {0, 7}}) {
    CAPTURE(offsets.size());
    const int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
    Tensor x = testing::random({7, 4}, 11).set_requires_grad(true);
    Tensor weight = testing::random({experts, 3, 4}, 12).set_requires_grad(true);
    Tensor group_offsets = offsets_tensor(offsets);
    testing::check_gradients(
        [&](const std::vector<Tensor>& in) { return ops::grouped_linear(in[0], in[1], group_offsets); }, {x, weight});
  }
  // An expert with no rows gets an exactly zero weight gradient; a weight-only graph
  // gives no gradient to a constant x.
  Tensor x = testing::random({5, 4}, 13);
  Tensor weight = testing::random({3, 2, 4}, 14).set_requires_grad(true);
  autograd::backward(ops::sum(ops::grouped_linear(x, weight, offsets_tensor({0, 2, 2, 5}))));
  std::vector<double> grad = weight.grad().to_vector<double>();
  for (int64_t i = 8; i < 16; ++i) CHECK(grad[i] == 0.0);
  CHECK(testing::max_abs(weight.grad()) > 0.0);
  CHECK(!x.grad().defined());
}

TEST_CASE("grouped_linear as the experts of a routed MoE layer") {
  // Dispatch, grouped SwiGLU-free expert (one linear), combine: gradient to every input.
  ops::MoERouting routing = ops::moe_route(testing::random({9, 3}, 21), {});
  Tensor x = testing::random({9, 4}, 22).set_requires_grad(true);
  Tensor weight = testing::random({3, 5, 4}, 23).set_requires_grad(true);
  testing::check_gradients(
      [&](const std::vector<Tensor>& in) {
        return ops::moe_combine(ops::grouped_linear(ops::moe_dispatch(in[0], routing), in[1], routing.expert_offsets),
                                routing);
      },
      {x, weight});
}

TEST_CASE("grouped_linear errors name the op and the shapes") {
  Tensor x = Tensor::zeros({5, 4}, DType::Float64);
  Tensor weight = Tensor::zeros({2, 3, 4}, DType::Float64);
  CHECK_THROWS_WITH_AS(ops::grouped_linear(x, weight, offsets_tensor({0, 5})),
                       doctest::Contains("grouped_linear: offsets int64[2] on cpu must have experts + 1 = 3 entries for "
                                         "weight float64[2, 3, 4] on cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::grouped_linear(x, weight, offsets_tensor({0, 2, 4})),
                       doctest::Contains("offsets must run from 0 to the 5 rows of x_sorted float64[5, 4] on cpu, got 0..4"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::grouped_linear(x, weight, offsets_tensor({0, 6, 5})),
                       doctest::Contains("grouped_linear: offsets decrease at expert 1 (6 then 5)"), Error);
  CHECK_THROWS_WITH_AS(ops::grouped_linear(x, Tensor::zeros({2, 3, 5}, DType::Float64), offsets_tensor({0, 2, 5})),
                       doctest::Contains("x_sorted float64[5, 4] on cpu and weight float64[2, 3, 5] on cpu differ in d_in"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::grouped_linear(x, Tensor::zeros({3, 4}, DType::Float64), offsets_tensor({0, 5})),
                       doctest::Contains("weight float64[3, 4] on cpu must be (experts, d_out, d_in)"), Error);
  CHECK_THROWS_WITH_AS(ops::grouped_linear(x, Tensor::zeros({2, 3, 4}), offsets_tensor({0, 2, 5})),
                       doctest::Contains("grouped_linear: dtypes differ: float64[5, 4] on cpu and float32[2, 3, 4] on cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::grouped_linear(x, weight, Tensor::zeros({3}, DType::Float64)),
                       doctest::Contains("grouped_linear: index float64[3] on cpu must be int32 or int64"), Error);
}
