// CUDA reductions against the float64 CPU reference, forward and backward, in
// float32 and bfloat16: the row path (reduced dims innermost), the column path,
// both with and without the two-pass split used when the outputs alone cannot fill
// the device, sums over dims that are not neighbours, max and logsumexp.
//
// Tolerances, relative to the largest reference value:
//  - float32: 1e-5. Each output is a float32 sum of at most ~1e6 terms of size one,
//    accumulated in short per-thread runs and then a tree; inputs are rounded to float32.
//  - bfloat16: 2e-2. Inputs, loss weights and outputs each carry a relative rounding
//    of 2^-9 (2e-3); sums accumulate in float32, so only those roundings remain.
#include <algorithm>
#include <numeric>
#include <random>

#include "support/check.h"

using namespace strata;
using testing::check_cuda_matches_cpu;

namespace {

constexpr double kFloat32Tolerance = 1e-5;
constexpr double kBFloat16Tolerance = 2e-2;

using testing::leaf;

// Rows (along `dim` of a 2-D shape) holding a permutation of 0, 1/8, 2/8, ...: values
// exact in bfloat16 (for at most 256 of them) and without ties, so the CPU and CUDA
// agree on where the maximum is.
Tensor distinct_along(int64_t rows, int64_t length, uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::vector<double> values;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> row(length);
    std::iota(row.begin(), row.end(), 0.0);
    std::shuffle(row.begin(), row.end(), engine);
    for (double v : row) values.push_back(v / 8);
  }
  Tensor t = Tensor::from_vector(values, {rows, length});
  t.set_requires_grad(true);
  return t;
}

void check_both_dtypes(const testing::Function& f, const std::vector<Tensor>& inputs) {
  check_cuda_matches_cpu(f, inputs, DType::Float32, kFloat32Tolerance);
  check_cuda_matches_cpu(f, inputs, DType::BFloat16, kBFloat16Tolerance);
}

}  // namespace

TEST_CASE("sum and mean on CUDA match the CPU") {
  testing::require_cuda();
  struct Case {
    Shape shape;
    std::vector<int> dims;  // empty: all elements
  };
  const Case cases[] = {
      {{7}, {}},                    // one short row
      {{(1 << 20) + 5}, {}},        // one long row: split in chunks, then the partials summed
      {{1000, 999}, {1}},           // many rows: one block each
      {{3, 100003}, {-1}},          // few long rows: split
      {{4096, 64}, {0}},            // few columns, long: split column path
      {{37, 2000}, {0}},            // many columns
      {{16, 333, 24}, {1}},         // middle dim: column path with outer > 1
      {{64, 3, 1025}, {0, 2}},      // dims that are not neighbours: two passes
      {{2, 1, 5, 1}, {1, 3}},       // only size-1 dims reduced: a copy
  };
  uint64_t seed = 1;
  for (const Case& c : cases) {
    for (bool keepdim : {false, true}) {
      std::string shape = shape_str(c.shape);
      CAPTURE(shape);
      CAPTURE(keepdim);
      // Positive terms: a sum of signed ones could land near zero, where a bound relative
      // to the result would be smaller than the rounding of the inputs.
      Tensor x = leaf(c.shape, seed++, 0.0, 1.0);
      if (c.dims.empty()) {
        check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::sum(xs[0]); }, {x});
        check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::mean(xs[0]); }, {x});
      } else {
        check_both_dtypes([&](const std::vector<Tensor>& xs) { return ops::sum(xs[0], c.dims, keepdim); }, {x});
        check_both_dtypes([&](const std::vector<Tensor>& xs) { return ops::mean(xs[0], c.dims, keepdim); }, {x});
      }
    }
  }
  // A transposed input is made dense first.
  Tensor y = leaf({300, 70}, seed++);
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::sum(ops::transpose(xs[0], 0, 1), {1}); }, {y});
}

TEST_CASE("max on CUDA matches the CPU and routes the gradient to the same element") {
  testing::require_cuda();
  Tensor rows = distinct_along(300, 200, 11);  // (300, 200): reduce dim 1 (rows) or dim 0 (columns)
  for (bool keepdim : {false, true}) {
    CAPTURE(keepdim);
    check_both_dtypes([&](const std::vector<Tensor>& xs) { return ops::max(xs[0], 1, keepdim); }, {rows});
    check_both_dtypes([&](const std::vector<Tensor>& xs) { return ops::max(ops::transpose(xs[0], 0, 1), 0, keepdim); },
                      {rows});
  }
  // Ties: every element equal, so the first one gets the gradient on both devices.
  Tensor flat = Tensor::ones({5, 700}, DType::Float64);
  flat.set_requires_grad(true);
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::max(xs[0], 1); }, {flat});
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::max(xs[0], 0); }, {flat});
  // Several dims (moved last and merged): the same element on both devices.
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::max(ops::reshape(xs[0], {30, 10, 200}), {0, 2}); },
                    {rows});
}

TEST_CASE("logsumexp on CUDA matches the CPU") {
  testing::require_cuda();
  uint64_t seed = 21;
  for (const Shape& shape : {Shape{513, 1000}, Shape{7, 50000}, Shape{1000, 40}, Shape{3, 17, 65}}) {
    for (int dim : {-1, 0}) {
      std::string shape_text = shape_str(shape);
      CAPTURE(shape_text);
      CAPTURE(dim);
      check_both_dtypes([dim](const std::vector<Tensor>& xs) { return ops::logsumexp(xs[0], dim); },
                        {leaf(shape, seed++)});
    }
  }
  check_both_dtypes([](const std::vector<Tensor>& xs) { return ops::logsumexp(xs[0], {0, 2}, true); },
                    {leaf({3, 17, 65}, seed++)});
  // Values around 1000, whose exponentials overflow float32. x + 1000 is rounded
  // to float32 on the device (spacing 2^-14 at 1000: each value moves by up to
  // 2^-15), and so is the result lse ~ 1000. The gradient dy * exp(x_i - lse)
  // (|dy| <= 1) then moves by up to 3 * 2^-15 relative to exp(x_i - lse): the
  // value's own shift, the mean shift that lse inherits, lse's rounding. An
  // absolute bound from the largest exp(x_i - lse), on top of the float32
  // arithmetic's relative one.
  Tensor large = leaf({64, 300}, seed++);
  const double p_max = testing::max_abs(ops::softmax(large.detach(), 1));
  check_cuda_matches_cpu([](const std::vector<Tensor>& xs) { return ops::logsumexp(ops::add(xs[0], 1000.0), 1); },
                         {large}, DType::Float32, kFloat32Tolerance, {0.0, 3 * 0x1p-15 * p_max});
}
