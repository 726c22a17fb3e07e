// Dropout draws its mask from the counter-based generator, so one seed gives the
// same mask on the CPU and on CUDA.
#include "support/check.h"

using namespace strata;

TEST_CASE("dropout's mask is the same on CPU and CUDA for one seed") {
  testing::require_cuda();
  Tensor x = testing::random({17, 129}, 51, DType::Float32, 0.5, 1.5);  // no zeros of its own
  Generator on_cpu{2024, 3}, on_cuda{2024, 3};
  std::vector<float> cpu = ops::dropout(x, 0.25, true, on_cpu).to_vector<float>();
  std::vector<float> cuda = ops::dropout(x.to(Device::cuda()), 0.25, true, on_cuda).to_vector<float>();
  CHECK(on_cpu.offset == on_cuda.offset);
  REQUIRE(cpu.size() == cuda.size());
  int64_t mismatches = 0;
  for (size_t i = 0; i < cpu.size(); ++i) mismatches += (cpu[i] == 0.0f) != (cuda[i] == 0.0f);
  CHECK(mismatches == 0);
  // Kept values are x / 0.75 on both: one float32 multiply each, so within an ulp or two.
  CHECK(testing::max_abs_difference(Tensor::from_vector(cpu, {17, 129}), Tensor::from_vector(cuda, {17, 129})) <
        1e-6);
}
