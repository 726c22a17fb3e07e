// The mixture-of-experts kernels on CUDA against the CPU reference. Routing
// decisions (top-k, the permutation, capacity) are integers and must match
// exactly; the inputs are chosen so that both devices rank the same values (values
// rounded to bfloat16 before either device sees them, or small integers that every
// dtype holds exactly).
#include <cmath>
#include <vector>

#include "strata/ops/moe.h"
#include "support/check.h"

using namespace strata;

namespace {

std::vector<int64_t> integers(const Tensor& t) { return t.to(Device::cpu()).to_vector<int64_t>(); }

// (tokens, experts) logits whose rows are distinct multiples of 0.5 in [-E/4, E/4):
// exact in bfloat16, so no device sees a different order or a different tie.
Tensor separated_logits(int64_t tokens, int64_t experts) {
  std::vector<double> v(tokens * experts);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t e = 0; e < experts; ++e)
      v[t * experts + e] = 0.5 * static_cast<double>((e * 7 + t * 3) % experts) - 0.25 * static_cast<double>(experts);
  return Tensor::from_vector<double>(v, {tokens, experts});
}

// Small integers in [-2, 2]: products and sums of a few of them are exact in every dtype.
Tensor small_integers(const Shape& shape, uint64_t seed) {
  std::vector<double> v = testing::random(shape, seed, DType::Float64, -2.5, 2.5).to_vector<double>();
  for (double& x : v) x = std::round(x);
  return Tensor::from_vector<double>(v, shape);
}

void check_same_routing(const ops::MoERouting& cpu, const ops::MoERouting& cuda) {
  CHECK(integers(cuda.expert_indices) == integers(cpu.expert_indices));
  CHECK(integers(cuda.expert_offsets) == integers(cpu.expert_offsets));
  CHECK(integers(cuda.expert_counts) == integers(cpu.expert_counts));
  CHECK(integers(cuda.sorted_assignment) == integers(cpu.sorted_assignment));
  CHECK(integers(cuda.assignment_row) == integers(cpu.assignment_row));
  CHECK(integers(cuda.dropped) == integers(cpu.dropped));
  CHECK(cuda.rows == cpu.rows);
}

}  // namespace

TEST_CASE("topk_indices on CUDA picks what the CPU picks, ties included") {
  testing::require_cuda();
  struct Case {
    int64_t rows, n, k;
  };
  for (Case c : {Case{1, 8, 2}, Case{257, 64, 8}, Case{33, 1024, 32}, Case{5, 3, 3}, Case{4, 5000, 7}}) {
    CAPTURE(c.n);
    for (DType dtype : {DType::Float32, DType::BFloat16}) {
      // Rounding to bfloat16 first creates ties, which both devices break by index.
      Tensor values = testing::random({c.rows, c.n}, 17, DType::Float32).to(dtype);
      Tensor reference = ops::topk_indices(values.to(DType::Float32), c.k);
      CHECK(integers(ops::topk_indices(values.to(Device::cuda()), c.k)) == integers(reference));
    }
  }
  Tensor zeros = Tensor::zeros({3, 40}, DType::Float32, Device::cuda());
  CHECK(integers(ops::topk_indices(zeros, 3)) == std::vector<int64_t>{0, 1, 2, 0, 1, 2, 0, 1, 2});
}

TEST_CASE("moe_route on CUDA builds the CPU's permutation, with and without capacity") {
  testing::require_cuda();
  struct Case {
    int64_t tokens, experts, top_k;
    double capacity_factor;
  };
  // 70001 tokens: many 256-assignment blocks, a partial last block; capacity drops.
  for (Case c : {Case{1, 4, 1, 0.0}, Case{300, 8, 2, 0.0}, Case{300, 8, 2, 0.5}, Case{70001, 64, 2, 0.0},
                 Case{70001, 16, 4, 1.0}}) {
    CAPTURE(c.tokens);
    CAPTURE(c.capacity_factor);
    ops::MoERouteOptions options;
    options.top_k = c.top_k;
    options.capacity_factor = c.capacity_factor;
    for (DType dtype : {DType::Float32, DType::BFloat16}) {
      Tensor logits = testing::random({c.tokens, c.experts}, 3, DType::Float32, -3, 3).to(dtype);
      ops::MoERouting cpu = ops::moe_route(logits.to(DType::Float32), options);
      ops::MoERouting cuda = ops::moe_route(logits.to(Device::cuda()), options);
      check_same_routing(cpu, cuda);
      // float32: the same scores up to rounding; bfloat16 weights hold 8 bits.
      double tolerance = dtype == DType::Float32 ? 1e-6 : 1e-2;
      CHECK(testing::max_abs_difference(cuda.weights.to(Device::cpu()).to(DType::Float32), cpu.weights) <= tolerance);
      CHECK(cuda.load_balancing_loss.item() == doctest::Approx(cpu.load_balancing_loss.item()).epsilon(1e-4));
      CHECK(cuda.z_loss.item() == doctest::Approx(cpu.z_loss.item()).epsilon(1e-4));
    }
  }
}

TEST_CASE("router weights, auxiliary losses, dispatch and combine: CUDA gradients match the CPU") {
  testing::require_cuda();
  for (ops::RouterScoring scoring : {ops::RouterScoring::Softmax, ops::RouterScoring::Sigmoid})
    for (double capacity_factor : {0.0, 0.6})
      for (int64_t chunk_size : {1, 3}) {
        CAPTURE(ops::router_scoring_name(scoring));
        CAPTURE(capacity_factor);
        CAPTURE(chunk_size);
        ops::MoERouteOptions options;
        options.scoring = scoring;
        options.capacity_factor = capacity_factor;
        options.chunk_size = chunk_size;
        options.sequence_length = 30;
        // Chunk means of separated logits can tie: route chunk-level cases on
        // chunk-constant logits, whose means are the logits themselves.
        Tensor logits = chunk_size == 1 ? separated_logits(60, 8)
                                        : ops::reshape(ops::contiguous(ops::expand(
                                                           ops::unsqueeze(separated_logits(20, 8), 1), {20, 3, 8})),
                                                       {60, 8});
        logits.set_requires_grad(true);
        Tensor x = testing::random({60, 24}, 8).set_requires_grad(true);
        auto layer = [&](const std::vector<Tensor>& in) {
          ops::MoERouting r = ops::moe_route(in[1], options);
          return ops::moe_combine(ops::tanh(ops::moe_dispatch(in[0], r)), r);
        };
        auto losses = [&](const std::vector<Tensor>& in) {
          ops::MoERouting r = ops::moe_route(in[0], options);
          return ops::add(r.load_balancing_loss, r.z_loss);
        };
        // float32: a few roundings of values of order 1. bfloat16 activations carry
        // 8 bits (relative 2^-8 per rounding, a few roundings deep). The logits'
        // gradient sums terms p_i (delta_ij - p_j) g_j of routing probabilities that
        // are rounded to bfloat16 (absolute error up to 2^-9 each, two factors): where
        // it cancels to ~0 (saturated softmax over separated logits) the error is
        // absolute, up to 2^-7 (measured 4.6e-3 on an H200).
        testing::check_cuda_matches_cpu(layer, {x, logits}, DType::Float32, 1e-5, 1e-6);
        testing::check_cuda_matches_cpu(layer, {x, logits}, DType::BFloat16, 3e-2, 1.0 / 128);
        testing::check_cuda_matches_cpu(losses, {logits}, DType::Float32, 1e-5, 1e-6);
        // The losses are float32 sums over the routed logits, which are exact in
        // bfloat16 for token routing and rounded to 8 bits once by the chunk mean;
        // the logits' gradient comes back in bfloat16 (8 bits).
        testing::check_cuda_matches_cpu(losses, {logits}, DType::BFloat16, 1e-2, 1e-4);
      }
}

TEST_CASE("grouped_linear on CUDA matches the CPU, empty groups, one group and ragged tiles included") {
  testing::require_cuda();
  struct Case {
    int64_t d_in, d_out;
    std::vector<int64_t> offsets;
  };
  for (const Case& c : {Case{70, 130, {0, 0, 65, 200, 200, 300}}, Case{64, 64, {0, 1}}, Case{16, 8, {0, 1000}},
                        Case{33, 17, {0, 0, 0, 5}}, Case{128, 96, {0, 500, 501, 2000, 2048}}}) {
    CAPTURE(c.d_in);
    const int64_t experts = static_cast<int64_t>(c.offsets.size()) - 1, rows = c.offsets.back();
    Tensor x = testing::random({rows, c.d_in}, 5).set_requires_grad(true);
    Tensor weight = testing::random({experts, c.d_out, c.d_in}, 6, DType::Float64, -0.2, 0.2).set_requires_grad(true);
    Tensor offsets = Tensor::from_vector<int64_t>(c.offsets, {experts + 1});
    auto grouped = [&](const std::vector<Tensor>& in) { return ops::grouped_linear(in[0], in[1], in[2]); };
    // float32: sums of up to 2048 products in float32 (relative ~1e-6 of the
    // largest). bfloat16: operands rounded to 8 bits, float32 accumulation, a
    // bfloat16 result.
    testing::check_cuda_matches_cpu(grouped, {x, weight, offsets}, DType::Float32, 1e-5, 1e-6);
    testing::check_cuda_matches_cpu(grouped, {x, weight, offsets}, DType::BFloat16, 2e-2, 1e-3);
  }
  // No atomics: two runs agree to the bit.
  Tensor x = testing::random({777, 96}, 7, DType::Float32).to(Device::cuda());
  Tensor weight = testing::random({4, 80, 96}, 8, DType::Float32).to(Device::cuda());
  Tensor offsets = Tensor::from_vector<int64_t>({0, 100, 100, 700, 777}, {5}).to(Device::cuda());
  CHECK(testing::max_abs_difference(ops::grouped_linear(x, weight, offsets), ops::grouped_linear(x, weight, offsets)) ==
        0.0);
}

TEST_CASE("product-key memory on CUDA matches the CPU") {
  testing::require_cuda();
  for (int64_t top_k : {1, 4, 8}) {
    CAPTURE(top_k);
    // Integer queries and keys: every score is an exact small integer on both
    // devices, so both pick the same values (ties broken by index alike).
    Tensor query = small_integers({37, 8}, 1).set_requires_grad(true);
    Tensor keys_1 = small_integers({8, 4}, 2).set_requires_grad(true);
    Tensor keys_2 = small_integers({8, 4}, 3).set_requires_grad(true);
    Tensor values = testing::random({64, 24}, 4).set_requires_grad(true);
    auto memory = [&](const std::vector<Tensor>& in) {
      return ops::product_key_memory(in[0], in[1], in[2], in[3], top_k).output;
    };
    // float32: softmax and weighted sums of order-1 values. bfloat16: weights and
    // values rounded to 8 bits; the value gradient sums float32 atomics.
    testing::check_cuda_matches_cpu(memory, {query, keys_1, keys_2, values}, DType::Float32, 1e-5, 1e-6);
    testing::check_cuda_matches_cpu(memory, {query, keys_1, keys_2, values}, DType::BFloat16, 3e-2, 1e-3);
  }
}
