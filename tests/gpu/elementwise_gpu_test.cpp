// CUDA element-wise kernels against the float64 CPU reference, forward and backward,
// in float32 and bfloat16, over one table of cases: every op, broadcasting both
// ways, rank 0, sizes that leave a tail after the 16-byte packs of the dense path,
// transposed and misaligned (sliced) inputs that take the strided path.
//
// Tolerances, relative to the largest reference value:
//  - float32: 1e-5. Math is float32 (a few ulps, ~1e-7) on inputs rounded to float32;
//    broadcast gradients add sums of at most a few thousand terms.
//  - bfloat16: 2e-2. Inputs, loss weights and outputs are each rounded to 8 bits of
//    mantissa (relative 2^-9 = 2e-3); the bound allows a few such roundings to
//    compound through a derivative of order one. Gradients also get an absolute
//    2^-8: tanh and sigmoid differentiate through their saved bfloat16 output y
//    (1 - y^2, y * (1 - y)), and where y nears 1 those terms of order one cancel,
//    so the rounding of y (up to 2^-9 * |y|, |y| <= 1) moves the gradient by up
//    to 2 * 2^-9 * |dy| (|dy| <= 1: check.h's loss weights), whatever its size.
#include "support/check.h"

using namespace strata;
using testing::check_cuda_matches_cpu;

namespace {

constexpr double kFloat32Tolerance = 1e-5;
constexpr double kBFloat16Tolerance = 2e-2;
constexpr double kBFloat16GradientAtol = 0x1p-8;

Tensor input(const Shape& shape, uint64_t seed, double low = -2.0, double high = 2.0) {
  return testing::leaf(shape, seed, low, high);
}

void check_both_dtypes(const testing::Function& f, const std::vector<Tensor>& inputs) {
  check_cuda_matches_cpu(f, inputs, DType::Float32, kFloat32Tolerance);
  std::vector<double> bfloat16_atol{0.0};  // the output, then one per gradient
  for (const Tensor& x : inputs)
    if (x.requires_grad()) bfloat16_atol.push_back(kBFloat16GradientAtol);
  check_cuda_matches_cpu(f, inputs, DType::BFloat16, kBFloat16Tolerance, bfloat16_atol);
}

}  // namespace

TEST_CASE("binary ops on CUDA match the CPU, broadcasting both ways") {
  testing::require_cuda();
  using Binary = Tensor (*)(const Tensor&, const Tensor&);
  const std::pair<const char*, Binary> binary_ops[] = {
      {"add", ops::add}, {"sub", ops::sub}, {"mul", ops::mul}, {"div", ops::div}};
  const std::pair<Shape, Shape> shapes[] = {
      {{33, 65}, {33, 65}},   {{3, 1}, {1, 4}},   {{2, 3, 4}, {4}},         {{4}, {2, 3, 4}},
      {{}, {5, 7}},           {{1, 3, 1}, {2, 1, 5}}, {{257, 1031}, {257, 1031}}, {{512, 1000}, {1000}},
      {{64, 1, 300}, {64, 7, 1}},
  };
  uint64_t seed = 1;
  for (const auto& [name, op] : binary_ops) {
    for (const auto& [shape_a, shape_b] : shapes) {
      std::string op_name = name, shapes_given = shape_str(shape_a) + " and " + shape_str(shape_b);
      CAPTURE(op_name);
      CAPTURE(shapes_given);
      Tensor a = input(shape_a, seed++), b = input(shape_b, seed++, 0.5, 2.0);  // divisors away from zero
      check_both_dtypes([op = op](const std::vector<Tensor>& xs) { return op(xs[0], xs[1]); }, {a, b});
    }
  }
}

TEST_CASE("unary and scalar ops on CUDA match the CPU") {
  testing::require_cuda();
  using Unary = Tensor (*)(const Tensor&);
  struct Case {
    const char* name;
    Unary op;
    double low, high;
  };
  const Case cases[] = {
      {"neg", ops::neg, -2, 2},         {"exp", ops::exp, -2, 2},            {"log", ops::log, 0.2, 3},
      {"tanh", ops::tanh, -3, 3},       {"sigmoid", ops::sigmoid, -6, 6},    {"silu", ops::silu, -6, 6},
      {"gelu", ops::gelu, -4, 4},       {"softplus", ops::softplus, -25, 25}, {"relu", ops::relu, -2, 2},
      {"sqrt", ops::sqrt, 0.2, 3},      {"rsqrt", ops::rsqrt, 0.2, 3},
  };
  uint64_t seed = 100;
  for (const Case& c : cases) {
    std::string name = c.name;
    CAPTURE(name);
    const Unary op = c.op;
    auto f = [op](const std::vector<Tensor>& xs) { return op(xs[0]); };
    check_both_dtypes(f, {input({37, 129}, seed++, c.low, c.high)});
    check_both_dtypes(f, {input({(1 << 20) + 3}, seed++, c.low, c.high)});
    // Rank 0: one element, so the bound is relative to that element alone. Inputs in
    // [1.5, 2.5] keep every op's output and derivative away from zero there (bfloat16
    // rounding of x moves softplus(-22) ~ exp(-22) by 22 * 2^-9 = 4%, log(1) by 2^-9).
    check_both_dtypes(f, {input({}, seed++, 1.5, 2.5)});
  }
  Tensor x = input({129, 33}, seed++, 0.3, 2.0);
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::pow(xs[0], 3.0); }, {x});
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::pow(xs[0], -0.5); }, {x});
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::add(xs[0], -1.25); }, {x});
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::mul(xs[0], 3.5); }, {x});
}

TEST_CASE("strided and misaligned inputs on CUDA match the CPU") {
  testing::require_cuda();
  Tensor a = input({300, 257}, 201), b = input({257, 300}, 202);
  // Transposed: the strided kernel, in both the unary and the binary form.
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::silu(ops::transpose(xs[0], 0, 1)); }, {a});
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::mul(ops::transpose(xs[0], 0, 1), xs[1]); },
                    {a, b});
  // Dense but starting one element in: not 16-byte aligned, so no vector loads.
  Tensor flat = input({4099}, 203);
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::exp(ops::slice(xs[0], 0, 1, 4099)); }, {flat});
  check_both_dtypes(
      [](const std::vector<Tensor>& xs) {
        return ops::add(ops::slice(xs[0], 0, 1, 4099), ops::slice(xs[0], 0, 0, 4098));
      },
      {flat});
}

TEST_CASE("masked_fill on CUDA matches the CPU") {
  testing::require_cuda();
  Tensor x = input({4, 33, 33}, 301);
  Tensor mask = ops::causal_mask(33);  // bool (33, 33), broadcast over the leading 4
  check_both_dtypes(
      [&](const std::vector<Tensor>& xs) { return ops::masked_fill(xs[0], mask.to(xs[0].device()), -3.0); }, {x});
  Tensor byte_mask = rand_bernoulli({4, 1, 33}, 0.5);
  check_both_dtypes(
      [&](const std::vector<Tensor>& xs) { return ops::masked_fill(xs[0], byte_mask.to(xs[0].device()), 0.5); }, {x});
}

TEST_CASE("element-wise errors on CUDA name the devices and dtypes") {
  testing::require_cuda();
  Tensor on_cpu = Tensor::zeros({2});
  Tensor on_cuda = Tensor::zeros({2}, DType::Float32, Device::cuda());
  CHECK_THROWS_WITH_AS(
      ops::add(on_cpu, on_cuda),
      doctest::Contains("add: tensors are on different devices: float32[2] on cpu and float32[2] on cuda:0"), Error);
  CHECK_THROWS_WITH_AS(ops::masked_fill(on_cuda, Tensor::zeros({2}, DType::Bool), 0.0),
                       doctest::Contains("masked_fill: tensors are on different devices"), Error);
  CHECK_THROWS_WITH_AS(
      ops::exp(Tensor::zeros({2}, DType::Float64, Device::cuda())),
      doctest::Contains("exp: float64[2] on cuda:0 is not supported (supported: float32, bfloat16 on cuda)"), Error);
}
