#include "support/check.h"

using namespace strata;

TEST_CASE("views share storage and index as expected") {
  Tensor t = Tensor::from_vector<double>({0, 1, 2, 3, 4, 5}, {2, 3});
  CHECK(t.is_contiguous());
  Tensor transposed = t.as_strided({3, 2}, {1, 3}, 0);
  CHECK_FALSE(transposed.is_contiguous());
  CHECK(transposed.contiguous().to_vector<double>() == std::vector<double>{0, 3, 1, 4, 2, 5});
  Tensor row = t.as_strided({3}, {1}, 3);
  CHECK(row.to_vector<double>() == std::vector<double>{3, 4, 5});
  Tensor broadcast = row.as_strided({2, 3}, {0, 1}, 3);
  CHECK(broadcast.contiguous().to_vector<double>() == std::vector<double>{3, 4, 5, 3, 4, 5});
  CHECK(t.view({3, -1}).shape() == Shape{3, 2});
  CHECK_THROWS_WITH_AS(t.view({4, -1}), doctest::Contains("cannot view"), Error);
  CHECK_THROWS_WITH_AS(transposed.view({6}), doctest::Contains("not contiguous"), Error);
}

TEST_CASE("dtype conversion round trips") {
  Tensor t = Tensor::from_vector<float>({1.0f, -2.5f, 3.140625f, 65504.0f, 1e-7f, 0.0f}, {6});
  CHECK(t.to(DType::BFloat16).to(DType::Float32).to_vector<float>()[2] == 3.140625f);
  std::vector<float> half = t.to(DType::Float16).to(DType::Float32).to_vector<float>();
  CHECK(half[0] == 1.0f);
  CHECK(half[1] == -2.5f);
  CHECK(half[3] == 65504.0f);
  CHECK(half[4] == doctest::Approx(1.1920929e-7f).epsilon(0.5));  // nearest subnormal
  CHECK(t.to(DType::Int64).to_vector<int64_t>() == std::vector<int64_t>{1, -2, 3, 65504, 0, 0});
  // bfloat16 rounds to nearest even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
  CHECK(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)) == 1.0f);
  CHECK(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)) == 1.0f + 4.0f / 256);
}

TEST_CASE("philox draws are reproducible and well distributed") {
  Generator a{42, 0}, b{42, 0};
  Tensor x = rand_uniform({10000}, 0.0, 1.0, DType::Float64, Device::cpu(), a);
  Tensor y = rand_uniform({10000}, 0.0, 1.0, DType::Float64, Device::cpu(), b);
  CHECK(x.to_vector<double>() == y.to_vector<double>());
  CHECK(a.offset == 2500);
  double mean = 0;
  for (double v : x.to_vector<double>()) mean += v / 10000;
  CHECK(mean == doctest::Approx(0.5).epsilon(0.02));
  Tensor z = rand_normal({20000}, 0.0, 1.0, DType::Float64, Device::cpu(), a);
  double m = 0, s = 0;
  for (double v : z.to_vector<double>()) m += v / 20000, s += v * v / 20000;
  CHECK(std::fabs(m) < 0.03);
  CHECK(s == doctest::Approx(1.0).epsilon(0.05));
  Tensor mask = rand_bernoulli({10000}, 0.3, Device::cpu(), a);
  double kept = 0;
  for (double v : mask.to_vector<double>()) kept += v / 10000;
  CHECK(kept == doctest::Approx(0.3).epsilon(0.05));
}

TEST_CASE("bad shapes and unknown names give clear errors") {
  CHECK_THROWS_WITH_AS(Tensor::empty({2, -1}), doctest::Contains("negative size"), Error);
  CHECK_THROWS_WITH_AS(parse_dtype("float8"), doctest::Contains("unknown dtype 'float8'"), Error);
  CHECK_THROWS_WITH_AS(parse_device("tpu"), doctest::Contains("unknown device 'tpu'"), Error);
  CHECK_THROWS_WITH_AS(Tensor::zeros({2}).item(), doctest::Contains("2 elements"), Error);
}

TEST_CASE("memory statistics track current and peak bytes") {
  reset_peak_memory(Device::cpu());
  int64_t before = memory_stats(Device::cpu()).current_bytes;
  {
    Tensor big = Tensor::empty({1024, 1024});
    CHECK(memory_stats(Device::cpu()).current_bytes == before + 4 * 1024 * 1024);
  }
  CHECK(memory_stats(Device::cpu()).current_bytes == before);
  CHECK(memory_stats(Device::cpu()).peak_bytes >= before + 4 * 1024 * 1024);
}
