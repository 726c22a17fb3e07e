// CUDA chunked SSD and gated RMSNorm against the float64 CPU reference on fresh
// random inputs, in float32 and bfloat16: the output, the final state and the
// gradient of every input. SSD shapes cover one 64 x 64 tile per operand (Mamba-2's
// head_dim 64, d_state 64, chunk 256 with a partial last chunk), several tiles with
// partial ones (head_dim 70, d_state 130, chunk 100), tiny shapes (chunk 1, head_dim
// 5), groups, and a long sequence (16 chunks passing their states).
//
// Tolerances, relative to the largest reference value of each tensor:
//  - SSD float32 1e-4: every product is a float32 sum of at most chunk_size x
//    (head_dim + d_state) terms in a fixed order, the states pass through up to 16
//    chunks, and exp() is float32 (about 2 ulp); dA, dD and dt_bias add up to
//    batch x length terms. Running the same kernels on the host (a thread-per-CUDA-
//    thread emulation) on the shapes below measured at most 3e-6; a wrong index or
//    mask is O(1).
//  - SSD bfloat16 2e-2: every input (A, D, dt_bias and the initial state too, since
//    the harness converts all of them) is rounded to 8 bits of mantissa (2^-9
//    relative) before the kernels see it, and that rounding enters the decays
//    exp(sum dt A) over a whole chunk; y and the activation gradients are rounded to
//    bfloat16 again. Measured on the host: up to 4e-3 (ddt). The float32 run is the
//    one that pins the algorithm.
//  - gated RMSNorm float32 2e-5: a group's statistics sum at most 2048 float32
//    terms; dweight sums up to 264 rows in 128 fixed slices.
//  - gated RMSNorm bfloat16 2e-2: inputs and outputs rounded to bfloat16 (2^-9
//    each); dweight sums bfloat16-rounded products.
#include "strata/ops/ssd.h"
#include "support/check.h"

using namespace strata;

namespace {

struct GpuSsdCase {
  int64_t batch = 2, length = 7, heads = 2, head_dim = 3, groups = 1, d_state = 4, chunk_size = 256;
};

// x, dt, A, B, C, D, dt_bias, initial_state (float64 CPU leaves). dt is raw (softplus
// follows): softplus(dt + dt_bias) lies in about [0.01, 0.5], Mamba-2's dt range.
std::vector<Tensor> make_inputs(const GpuSsdCase& c, uint64_t seed) {
  std::vector<Tensor> inputs;
  auto add = [&](const Shape& shape, double low, double high) {
    inputs.push_back(testing::leaf(shape, seed++, low, high));
  };
  const Shape bc{c.batch, c.length, c.groups, c.d_state};
  add({c.batch, c.length, c.heads, c.head_dim}, -1.0, 1.0);   // x
  add({c.batch, c.length, c.heads}, -1.0, 1.0);               // dt
  add({c.heads}, -4.0, -0.5);                                 // A
  add(bc, -1.0, 1.0);                                         // B
  add(bc, -1.0, 1.0);                                         // C
  add({c.heads}, -1.0, 1.0);                                  // D
  add({c.heads}, -3.5, -1.5);                                 // dt_bias
  add({c.batch, c.heads, c.head_dim, c.d_state}, -1.0, 1.0);  // initial_state
  return inputs;
}

// y and the final state (in y's dtype), flattened into one tensor.
Tensor ssd_everything(const GpuSsdCase& c, const std::vector<Tensor>& in) {
  ops::SsdOptions options;
  options.D = in[5];
  options.dt_bias = in[6];
  options.initial_state = in[7];
  options.dt_softplus = true;
  options.chunk_size = c.chunk_size;
  options.return_final_state = true;
  ops::SsdResult result = ops::ssd_chunked(in[0], in[1], in[2], in[3], in[4], options);
  return ops::concat(
      {ops::reshape(result.y, {-1}), ops::reshape(ops::cast(result.final_state, result.y.dtype()), {-1})}, 0);
}

void check_case(const GpuSsdCase& c, uint64_t seed) {
  MESSAGE("ssd_chunked batch " << c.batch << ", length " << c.length << ", heads " << c.heads << ", head_dim "
                               << c.head_dim << ", groups " << c.groups << ", d_state " << c.d_state << ", chunk "
                               << c.chunk_size);
  std::vector<Tensor> inputs = make_inputs(c, seed);
  auto f = [c](const std::vector<Tensor>& in) { return ssd_everything(c, in); };
  testing::check_cuda_matches_cpu(f, inputs, DType::Float32, 1e-4);
  testing::check_cuda_matches_cpu(f, inputs, DType::BFloat16, 2e-2);
}

}  // namespace

TEST_CASE("ssd_chunked on CUDA matches the CPU at Mamba-2's tile sizes") {
  testing::require_cuda();
  // head_dim 64 and d_state 64: one tile each; 300 = 256 + a partial chunk of 44.
  check_case({.batch = 2, .length = 300, .heads = 4, .head_dim = 64, .groups = 1, .d_state = 64, .chunk_size = 256}, 1);
}

TEST_CASE("ssd_chunked on CUDA matches the CPU with partial tiles in every dimension") {
  testing::require_cuda();
  // head_dim 70 (tiles of 64 + 6), d_state 130 (64 + 64 + 2), chunk 100 (64 + 36 rows), 250 = 2 x 100 + 50.
  check_case({.batch = 1, .length = 250, .heads = 4, .head_dim = 70, .groups = 2, .d_state = 130, .chunk_size = 100},
             2);
}

TEST_CASE("ssd_chunked on CUDA matches the CPU on tiny shapes and chunk size 1") {
  testing::require_cuda();
  check_case({.batch = 1, .length = 7, .heads = 3, .head_dim = 5, .groups = 3, .d_state = 4, .chunk_size = 4}, 3);
  check_case({.batch = 2, .length = 9, .heads = 2, .head_dim = 3, .groups = 1, .d_state = 2, .chunk_size = 1}, 4);
  check_case({.batch = 1, .length = 1, .heads = 1, .head_dim = 1, .groups = 1, .d_state = 1, .chunk_size = 256}, 5);
}

TEST_CASE("ssd_chunked on CUDA passes states across many chunks") {
  testing::require_cuda();
  check_case({.batch = 2, .length = 1024, .heads = 8, .head_dim = 32, .groups = 2, .d_state = 16, .chunk_size = 64}, 6);
}

TEST_CASE("ssd_chunked on CUDA takes float32 parameters with bfloat16 activations") {
  testing::require_cuda();
  GpuSsdCase c{.batch = 2, .length = 300, .heads = 4, .head_dim = 64, .groups = 1, .d_state = 64, .chunk_size = 256};
  std::vector<Tensor> in = make_inputs(c, 7);
  std::vector<Tensor> mixed, full;
  for (size_t i = 0; i < in.size(); ++i) {
    const bool activation = i == 0 || i == 1 || i == 3 || i == 4;
    // Both runs see the same bfloat16-rounded activations; only the storage differs.
    Tensor rounded = activation ? in[i].detach().to(DType::BFloat16) : in[i].detach().to(DType::Float32);
    mixed.push_back(rounded.to(Device::cuda()));
    full.push_back(rounded.to(DType::Float32).to(Device::cuda()));
  }
  Tensor y_mixed = ssd_everything(c, mixed).to(DType::Float64).to(Device::cpu());
  Tensor y_full = ssd_everything(c, full).to(DType::Float64).to(Device::cpu());
  // The same float32 arithmetic on the same values; the outputs of the mixed run are
  // rounded to bfloat16 (2^-9 relative).
  double error = testing::max_abs_difference(y_mixed, y_full), bound = 4e-3 * testing::max_abs(y_full);
  MESSAGE("bfloat16 activations with float32 parameters: max |difference| = " << error << ", bound " << bound);
  CHECK(error <= bound);
}

TEST_CASE("gated_rms_norm on CUDA matches the CPU") {
  testing::require_cuda();
  struct NormCase {
    Shape shape;
    int64_t group_size;
    bool gate, weight;
  };
  // Mamba-2's d_inner 1536 in 8 groups and whole; odd dims; one group per element; no gate, no weight.
  for (const NormCase& c : {NormCase{{2, 33, 1536}, 192, true, true}, NormCase{{2, 33, 1536}, 0, true, true},
                            NormCase{{264, 7}, 7, true, true}, NormCase{{5, 6}, 1, true, true},
                            NormCase{{3, 2048}, 512, false, true}, NormCase{{4, 100}, 25, true, false}}) {
    MESSAGE("gated_rms_norm " << shape_str(c.shape) << ", group_size " << c.group_size << (c.gate ? "" : ", no gate")
                              << (c.weight ? "" : ", no weight"));
    std::vector<Tensor> inputs{testing::random(c.shape, 1).set_requires_grad(true),
                               testing::random(c.shape, 2, DType::Float64, -3.0, 3.0).set_requires_grad(true),
                               testing::random({c.shape.back()}, 3, DType::Float64, 0.5, 1.5).set_requires_grad(true)};
    auto f = [c](const std::vector<Tensor>& in) {
      return ops::gated_rms_norm(in[0], c.gate ? in[1] : Tensor(), c.weight ? in[2] : Tensor(), 1e-5, c.group_size);
    };
    if (!c.gate) inputs[1].set_requires_grad(false);
    if (!c.weight) inputs[2].set_requires_grad(false);
    testing::check_cuda_matches_cpu(f, inputs, DType::Float32, 2e-5);
    testing::check_cuda_matches_cpu(f, inputs, DType::BFloat16, 2e-2);
  }
}
