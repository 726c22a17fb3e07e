// ops::rotary_embedding on CUDA against the CPU, float32 and bfloat16, forward and
// the gradient, the inverse rotation (check_cuda_matches_cpu compares both).
#include "strata/ops/rope.h"

#include "support/check.h"

using namespace strata;

TEST_CASE("rotary_embedding on CUDA matches the CPU") {
  testing::require_cuda();
  for (int64_t length : {1, 7, 129}) {
    Tensor x = testing::random({2, 3, length, 64}, static_cast<uint64_t>(length), DType::Float32).set_requires_grad(true);
    auto f = [](const std::vector<Tensor>& in) { return ops::rotary_embedding(in[0], 11); };
    // float32 against the float64 CPU reference: cos/sin rounded to float32, then two
    // products and a sum in float32 (about 4 ulp of 2^-24 each) on values below 2.
    testing::check_cuda_matches_cpu(f, {x}, DType::Float32, 1e-6, 1e-6);
    // bfloat16: the cos/sin tables and every product round to 8 mantissa bits (2^-8 relative).
    testing::check_cuda_matches_cpu(f, {x}, DType::BFloat16, 2e-2, 2e-2);
  }
}
