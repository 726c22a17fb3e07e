#include <omp.h>

#include <chrono>
#include <cmath>

#include "strata/kernels/gemm.h"
#include "support/check.h"

using namespace strata;
using testing::check_gradients;
using testing::random;

namespace {

using testing::leaf;

// Unit roundoff of the dtype the product rounds in.
double unit_roundoff(DType dtype) { return dtype == DType::Float64 ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24); }

// a (*a_batch, n, k) @ b (*b_batch, k, m) with broadcast leading dims, by the triple
// loop in double, and for each element sum_p |a_ip| |b_pj|: any summation order in a
// dtype with unit roundoff u stays within about k u times it of the exact product.
struct Naive {
  Shape shape;
  std::vector<double> product, magnitude;
};

Naive naive_matmul(const Tensor& a, const Tensor& b) {
  const int64_t n = a.size(-2), k = a.size(-1), m = b.size(-1);
  Shape a_batch(a.shape().begin(), a.shape().end() - 2), b_batch(b.shape().begin(), b.shape().end() - 2);
  size_t rank = std::max(a_batch.size(), b_batch.size());
  a_batch.insert(a_batch.begin(), rank - a_batch.size(), 1);
  b_batch.insert(b_batch.begin(), rank - b_batch.size(), 1);
  Shape batch(rank);
  for (size_t d = 0; d < rank; ++d) batch[d] = std::max(a_batch[d], b_batch[d]);
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  Naive result;
  result.shape = batch;
  result.shape.push_back(n);
  result.shape.push_back(m);
  for (int64_t s = 0; s < shape_numel(batch); ++s) {
    int64_t a_index = 0, b_index = 0;  // row-major index into each operand's own batch
    for (size_t d = 0, rest = static_cast<size_t>(s); d < rank; ++d) {
      int64_t below = shape_numel(Shape(batch.begin() + static_cast<int64_t>(d) + 1, batch.end()));
      int64_t coordinate = static_cast<int64_t>(rest) / below;
      rest %= static_cast<size_t>(below);
      a_index = a_index * a_batch[d] + (a_batch[d] == 1 ? 0 : coordinate);
      b_index = b_index * b_batch[d] + (b_batch[d] == 1 ? 0 : coordinate);
    }
    const double* xa = x.data() + a_index * n * k;
    const double* yb = y.data() + b_index * k * m;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        double sum = 0, magnitude = 0;
        for (int64_t p = 0; p < k; ++p) {
          sum += xa[i * k + p] * yb[p * m + j];
          magnitude += std::fabs(xa[i * k + p] * yb[p * m + j]);
        }
        result.product.push_back(sum);
        result.magnitude.push_back(magnitude);
      }
  }
  return result;
}

// Every element of `out` within (k + 2) u sum|a||b| of the exact product (the +2 covers
// the rounding of alpha/beta and of the inputs to the compute dtype).
void check_close(const Tensor& out, const Naive& expected, int64_t k, DType compute_dtype) {
  REQUIRE(out.shape() == expected.shape);
  std::vector<double> got = out.to_vector<double>();
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    double bound = (static_cast<double>(k) + 2) * unit_roundoff(compute_dtype) * expected.magnitude[i] + 1e-300;
    worst = std::max(worst, std::fabs(got[i] - expected.product[i]) / bound);
  }
  CHECK_MESSAGE(worst <= 1.0, "error / bound = " << worst << " for " << out.str());
}

}  // namespace

TEST_CASE("gemm matches a triple loop for every transpose, alpha and beta") {
  struct Size {
    int64_t m, k, n;
  };
  for (DType dtype : {DType::Float64, DType::Float32}) {
    for (Size size : {Size{1, 1, 1}, Size{7, 13, 5}, Size{65, 129, 33}, Size{300, 200, 100}, Size{13, 600, 70}}) {
      for (int transposes = 0; transposes < 4; ++transposes) {
        bool transpose_a = transposes & 1, transpose_b = transposes & 2;
        INFO("m " << size.m << " k " << size.k << " n " << size.n << " transposes " << transposes);
        // Stored as the transposes say; the product always sees (m, k) @ (k, n).
        Tensor a = random(transpose_a ? Shape{size.k, size.m} : Shape{size.m, size.k}, 1, dtype);
        Tensor b = random(transpose_b ? Shape{size.n, size.k} : Shape{size.k, size.n}, 2, dtype);
        Tensor c0 = random({size.m, size.n}, 3, dtype);
        Tensor c = c0.clone();
        kernels::gemm(a, b, c, transpose_a, transpose_b, 1.5f, 0.5f);
        Naive expected = naive_matmul(transpose_a ? a.as_strided({size.m, size.k}, {1, size.m}, 0) : a,
                                      transpose_b ? b.as_strided({size.k, size.n}, {1, size.k}, 0) : b);
        std::vector<double> before = c0.to_vector<double>();
        for (size_t i = 0; i < before.size(); ++i) {
          expected.product[i] = 1.5 * expected.product[i] + 0.5 * before[i];
          expected.magnitude[i] = 1.5 * expected.magnitude[i] + 0.5 * std::fabs(before[i]);
        }
        check_close(c, expected, size.k, dtype);
      }
    }
  }
}

TEST_CASE("gemm with beta 0 never reads c, other betas accumulate, k 0 is an empty sum") {
  // Small integers: every sum is exact in float32, whatever the order, so equality holds.
  auto integers = [](const Shape& shape, uint64_t seed) {
    std::vector<float> v = random(shape, seed, DType::Float32, -4.0, 4.0).to_vector<float>();
    for (float& x : v) x = std::round(x);
    return Tensor::from_vector<float>(v, shape);
  };
  Tensor a = integers({9, 300}, 4), b = integers({300, 20}, 5);
  Tensor c = Tensor::full({9, 20}, NAN, DType::Float32);
  kernels::gemm(a, b, c, false, false, 1.0f, 0.0f);
  Naive expected = naive_matmul(a, b);
  CHECK(c.to_vector<double>() == expected.product);
  kernels::gemm(a, b, c, false, false, -1.0f, 3.0f);  // 3 ab - ab
  for (double& x : expected.product) x *= 2;
  CHECK(c.to_vector<double>() == expected.product);

  Tensor empty_a = Tensor::zeros({3, 0}, DType::Float64), empty_b = Tensor::zeros({0, 2}, DType::Float64);
  Tensor target = Tensor::full({3, 2}, 4.0, DType::Float64);
  kernels::gemm(empty_a, empty_b, target, false, false, 1.0f, 0.5f);
  CHECK(target.to_vector<double>() == std::vector<double>(6, 2.0));
  kernels::gemm(empty_a, empty_b, target, false, false, 1.0f, 0.0f);
  CHECK(target.to_vector<double>() == std::vector<double>(6, 0.0));
}

TEST_CASE("gemm writes through a transposed or strided output view") {
  Tensor a = random({6, 5}, 6), b = random({5, 9}, 7);
  Tensor storage = Tensor::zeros({9, 6}, DType::Float64);
  Tensor c = storage.as_strided({6, 9}, {1, 6}, 0);  // column-major c
  kernels::gemm(a, b, c, false, false, 1.0f, 0.0f);
  check_close(c, naive_matmul(a, b), 5, DType::Float64);
  Tensor wide = Tensor::zeros({6, 20}, DType::Float64);
  Tensor every_other = wide.as_strided({6, 9}, {20, 2}, 1);
  kernels::gemm(a, b, every_other, false, false, 1.0f, 0.0f);
  check_close(every_other, naive_matmul(a, b), 5, DType::Float64);
  CHECK(wide.to_vector<double>()[0] == 0.0);  // untouched between the written columns
}

TEST_CASE("gemm_batched sums over the leading dims where c has stride 0") {
  // c (4, 3) seen as (5, 4, 3) with stride 0 on the batch: c = sum_s a[s] @ b[s]. A
  // contiguous a folds the batch into k; a strided one accumulates one product per s.
  Tensor b = random({5, 6, 3}, 9);
  for (const Tensor& a : {random({5, 4, 6}, 8), ops::slice(random({5, 4, 12}, 10), 2, 0, 12, 2)}) {
    CAPTURE(a.strides());
    Naive per_batch = naive_matmul(a, b);
    Naive expected{{5, 4, 3}, std::vector<double>(60, 0.0), std::vector<double>(60, 0.0)};
    for (size_t i = 0; i < per_batch.product.size(); ++i)
      for (size_t s = 0; s < 5; ++s) {
        expected.product[s * 12 + i % 12] += per_batch.product[i];
        expected.magnitude[s * 12 + i % 12] += per_batch.magnitude[i];
      }
    Tensor c = Tensor::full({4, 3}, NAN, DType::Float64);
    Tensor summed = c.as_strided({5, 4, 3}, {0, 3, 1}, 0);
    kernels::gemm_batched(a, b, summed, 1.0f, 0.0f);
    check_close(summed, expected, 30, DType::Float64);
  }
}

TEST_CASE("matmul values: batches, broadcasting both ways, transposed and strided operands") {
  struct Case {
    Tensor a, b;
  };
  Tensor base = random({3, 7, 5}, 20);
  std::vector<Case> cases = {
      {random({2, 3, 7, 5}, 11), random({2, 3, 5, 4}, 12)},
      {random({4, 6, 5}, 13), random({5, 3}, 14)},           // 2-D b shared by the batch
      {random({6, 5}, 15), random({4, 5, 3}, 16)},           // 2-D a shared
      {random({2, 1, 6, 5}, 17), random({1, 3, 5, 4}, 18)},  // both broadcast
      {ops::transpose(base, 1, 2), random({3, 7, 2}, 19)},   // a^T of a contiguous batch
      {random({2, 4}, 21), ops::transpose(random({9, 4}, 22), 0, 1)},
      {ops::slice(random({4, 9}, 23), 1, 1, 9, 2), ops::slice(random({8, 3}, 24), 0, 0, 8, 2)},
      {random({1, 1}, 25), random({1, 1}, 26)},
      {random({5, 1}, 27), random({1, 4}, 28)},     // k = 1
      {random({3, 1, 9}, 29), random({9, 1}, 30)},  // n = m = 1
      {random({2, 70, 257}, 31), random({257, 19}, 32)},
  };
  for (DType dtype : {DType::Float64, DType::Float32}) {
    for (const Case& c : cases) {
      Tensor a = c.a.to(dtype), b = c.b.to(dtype);
      INFO(a.str() << " @ " << b.str());
      Tensor out = ops::matmul(a, b);
      CHECK(out.dtype() == dtype);
      check_close(out, naive_matmul(a, b), a.size(-1), dtype);
    }
  }
}

TEST_CASE("matmul reads broadcast and transposed operands in place") {
  // On the CPU no operand layout needs a copy: the only allocation is the result.
  Tensor x = random({8, 16, 32}, 33, DType::Float32), weight = random({24, 32}, 34, DType::Float32);
  int64_t before = memory_stats(Device::cpu()).allocations;
  Tensor out = ops::matmul(x, ops::transpose(weight, 0, 1));
  CHECK(memory_stats(Device::cpu()).allocations == before + 1);
  check_close(out, naive_matmul(x, weight.as_strided({32, 24}, {1, 32}, 0)), 32, DType::Float32);
}

TEST_CASE("matmul gradients") {
  auto product = [](const std::vector<Tensor>& x) { return ops::matmul(x[0], x[1]); };
  SUBCASE("2-D") { check_gradients(product, {leaf({3, 4}, 1), leaf({4, 5}, 2)}); }
  SUBCASE("sizes that are not multiples of the tiles, k across two depth panels") {
    check_gradients(product, {leaf({7, 13}, 3), leaf({13, 17}, 4)});
    check_gradients(product, {leaf({2, 260}, 5), leaf({260, 3}, 6)});
  }
  SUBCASE("batched") { check_gradients(product, {leaf({2, 3, 4}, 7), leaf({2, 4, 5}, 8)}); }
  SUBCASE("b broadcast over the batch") { check_gradients(product, {leaf({2, 3, 3, 4}, 9), leaf({4, 5}, 10)}); }
  SUBCASE("a broadcast over the batch") { check_gradients(product, {leaf({3, 4}, 11), leaf({2, 4, 5}, 12)}); }
  SUBCASE("both broadcast, size-1 batch dims") {
    check_gradients(product, {leaf({2, 1, 3, 4}, 13), leaf({1, 3, 4, 2}, 14)});
  }
  SUBCASE("transposed and strided operands") {
    check_gradients([](const std::vector<Tensor>& x) { return ops::matmul(ops::transpose(x[0], -1, -2), x[1]); },
                    {leaf({2, 4, 3}, 15), leaf({2, 4, 5}, 16)});
    check_gradients([](const std::vector<Tensor>& x) { return ops::matmul(x[0], ops::transpose(x[1], 0, 1)); },
                    {leaf({3, 4}, 17), leaf({5, 4}, 18)});
    check_gradients(
        [](const std::vector<Tensor>& x) {
          return ops::matmul(ops::slice(x[0], 1, 0, 8, 2), ops::slice(x[1], 0, 1, 5));
        },
        {leaf({3, 8}, 19), leaf({6, 5}, 20)});
  }
  SUBCASE("size-1 dims") {
    check_gradients(product, {leaf({1, 1}, 21), leaf({1, 1}, 22)});
    check_gradients(product, {leaf({3, 1}, 23), leaf({1, 4}, 24)});
    check_gradients(product, {leaf({1, 5}, 25), leaf({2, 5, 1}, 26)});
  }
  SUBCASE("one input without grad") {
    check_gradients(product, {leaf({3, 4}, 27), random({4, 2}, 28)});
    check_gradients(product, {random({2, 3, 4}, 29), leaf({4, 2}, 30)});
  }
}

TEST_CASE("linear values and gradients") {
  Tensor x = random({2, 3, 4}, 40), weight = random({5, 4}, 41), bias = random({5}, 42);
  Tensor y = ops::linear(x, weight, bias);
  CHECK(y.shape() == Shape{2, 3, 5});
  Naive expected = naive_matmul(x, weight.as_strided({4, 5}, {1, 4}, 0));
  std::vector<double> b = bias.to_vector<double>();
  for (size_t i = 0; i < expected.product.size(); ++i) {
    expected.product[i] += b[i % 5];
    expected.magnitude[i] += std::fabs(b[i % 5]);
  }
  check_close(y, expected, 4, DType::Float64);
  CHECK(ops::linear(random({4}, 43), weight).shape() == Shape{5});

  auto with_bias = [](const std::vector<Tensor>& v) { return ops::linear(v[0], v[1], v[2]); };
  auto without_bias = [](const std::vector<Tensor>& v) { return ops::linear(v[0], v[1]); };
  check_gradients(with_bias, {leaf({2, 3, 4}, 44), leaf({5, 4}, 45), leaf({5}, 46)});
  check_gradients(without_bias, {leaf({7, 13}, 47), leaf({9, 13}, 48)});
  check_gradients(with_bias, {leaf({4}, 49), leaf({3, 4}, 50), leaf({3}, 51)});
  // Leading dims that do not fold into rows (a transposed batch) and a bias alone.
  check_gradients([](const std::vector<Tensor>& v) { return ops::linear(ops::transpose(v[0], 0, 1), v[1], v[2]); },
                  {leaf({3, 2, 4}, 52), leaf({5, 4}, 53), leaf({5}, 54)});
  check_gradients(with_bias, {random({3, 4}, 55), random({2, 4}, 56), leaf({2}, 57)});
}

TEST_CASE("autocast is thread-local, nests, and leaves CPU products alone") {
  CHECK_FALSE(ops::autocast_dtype().has_value());
  Tensor a = random({5, 7}, 60, DType::Float32), b = random({7, 3}, 61, DType::Float32);
  std::vector<float> plain = ops::matmul(a, b).to_vector<float>();
  {
    ops::AutocastGuard outer;
    CHECK(ops::autocast_dtype() == DType::BFloat16);
    {
      ops::AutocastGuard inner(DType::BFloat16);
      CHECK(ops::autocast_dtype() == DType::BFloat16);
    }
    CHECK(ops::autocast_dtype() == DType::BFloat16);
    Tensor out = ops::matmul(a, b);
    CHECK(out.dtype() == DType::Float32);
    CHECK(out.to_vector<float>() == plain);  // no bfloat16 rounding on the CPU
  }
  CHECK_FALSE(ops::autocast_dtype().has_value());
  CHECK_THROWS_WITH_AS(ops::AutocastGuard(DType::Float16), doctest::Contains("only bfloat16"), Error);
  CHECK_FALSE(ops::autocast_dtype().has_value());
}

TEST_CASE("bad matmul and linear arguments name the shapes") {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4, 5});
  CHECK_THROWS_WITH_AS(ops::matmul(a, b),
                       doctest::Contains("matmul: shapes [2, 3] and [4, 5]: inner dimensions 3 and 4 differ"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(Tensor::zeros({3}), Tensor::zeros({3, 2})),
                       doctest::Contains("matmul: operands need rank >= 2"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(Tensor::zeros({2, 4, 3}), Tensor::zeros({3, 3, 5})),
                       doctest::Contains("batch dimensions [2] and [3] do not broadcast"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(a, Tensor::zeros({3, 2}, DType::Float64)),
                       doctest::Contains("matmul: dtypes differ"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(Tensor::zeros({2, 3}, DType::Int64), Tensor::zeros({3, 2}, DType::Int64)),
                       doctest::Contains("matmul: int64[2, 3] on cpu is not supported"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(a, Tensor()), doctest::Contains("matmul: b is an undefined tensor"), Error);

  Tensor weight = Tensor::zeros({5, 4});
  CHECK_THROWS_WITH_AS(ops::linear(Tensor::zeros({2, 3}), weight),
                       doctest::Contains("linear: input float32[2, 3] on cpu has 3 features but weight float32[5, 4] "
                                         "on cpu takes 4"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::linear(Tensor::zeros({2, 4}), Tensor::zeros({4})),
                       doctest::Contains("must be (out_features, in_features)"), Error);
  CHECK_THROWS_WITH_AS(ops::linear(Tensor::zeros({2, 4}), weight, Tensor::zeros({4})),
                       doctest::Contains("linear: bias float32[4] on cpu must be (5)"), Error);
  CHECK_THROWS_WITH_AS(kernels::gemm(a, b, a, false, false, 1.0f, 0.0f), doctest::Contains("gemm: shapes"), Error);
  Tensor square = Tensor::zeros({3, 3});
  CHECK_THROWS_WITH_AS(kernels::gemm(square, Tensor::zeros({3, 3}, DType::Float64), square, false, false, 1.0f, 0.0f),
                       doctest::Contains("are not supported"), Error);
}

TEST_CASE("CPU float32 GEMM throughput (printed, not asserted)") {
  const int64_t size = 512;
  Tensor a = Tensor::ones({size, size}), b = Tensor::full({size, size}, 0.5), c = Tensor::empty({size, size});
  auto gflops = [&](int threads) {
    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    kernels::gemm(a, b, c, false, false, 1.0f, 0.0f);  // warm-up: packing buffers, thread pool
    const int repeats = 10;
    auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < repeats; ++r) kernels::gemm(a, b, c, false, false, 1.0f, 0.0f);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / repeats;
    omp_set_num_threads(saved);
    return 2.0 * size * size * size / seconds * 1e-9;
  };
  double one_core = gflops(1), all = gflops(omp_get_max_threads());
  MESSAGE("512 x 512 x 512 float32: " << one_core << " GFLOP/s on one core, " << all << " GFLOP/s on "
                                      << omp_get_max_threads() << " threads (goal: >= 10 per core)");
  for (float v : c.to_vector<float>()) REQUIRE(v == 256.0f);  // sum of 512 halves, exact in float32
}
