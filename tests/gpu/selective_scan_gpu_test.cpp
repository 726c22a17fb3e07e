// CUDA selective scan against the float64 CPU reference on fresh random inputs, in
// float32 and bfloat16: y, the final state and the gradient of every input, over
// lengths 1, 7, 300 and 2048 (the chunk is 32 steps for N = 1 and 16 otherwise, so
// 7 and 300 end on a partial chunk), N = 1, 16 and 64 (the three register layouts),
// d_inner 1, 5 and 128, groups and both directions; the per-step states output
// and its gradient; K routes in one launch against the CPU and against K separate
// CUDA scans; then the step kernel against the CPU and against the CUDA scan.
//
// Tolerances, relative to the largest reference value of each tensor:
//  - float32 2e-4: exp(delta A) uses __expf (relative error about 2^-21 |delta A|,
//    |delta A| <= 2 here), the state and every sum are float32, and dA, dB, dC, dD
//    and delta_bias sum up to 2 * 128 * 2048 terms in an order set by atomics; the
//    measured error is expected near 1e-5, while a wrong index or formula is O(1).
//  - bfloat16 5e-2: every input is rounded to 8 bits of mantissa (2^-9 relative)
//    before the kernel sees it, the reference sees the float64 values, and that
//    rounding enters exp(delta A) and sums over up to 2048 positions; outputs are
//    rounded to bfloat16 too. The float32 run is the one that pins the algorithm.
#include "strata/ops/ssm.h"
#include "support/check.h"
#include "support/selective_scan.h"

using namespace strata;

namespace {

struct GpuScanCase {
  int64_t batch = 2, d_inner = 5, length = 7, d_state = 16, groups = 1;
  bool reverse = false, states = false;
};

// Inputs u, delta, A, B, C, D, z, delta_bias, initial_state (float64 CPU leaves);
// delta is raw (softplus follows) and delta_bias puts softplus(delta + bias) in
// about [0.01, 0.5], the range Mamba initialises dt to.
std::vector<Tensor> make_inputs(const GpuScanCase& c, uint64_t seed) {
  std::vector<Tensor> inputs;
  auto add = [&](const Shape& shape, double low, double high) {
    inputs.push_back(testing::leaf(shape, seed++, low, high));
  };
  const Shape activation{c.batch, c.d_inner, c.length}, bc{c.batch, c.groups, c.d_state, c.length};
  add(activation, -1.0, 1.0);               // u
  add(activation, -1.0, 1.0);               // delta
  add({c.d_inner, c.d_state}, -2.0, -0.1);  // A
  add(bc, -1.0, 1.0);                       // B
  add(bc, -1.0, 1.0);                       // C
  add({c.d_inner}, -1.0, 1.0);              // D
  add(activation, -2.0, 2.0);               // z
  add({c.d_inner}, -3.5, -1.5);             // delta_bias
  add({c.batch, c.d_inner, c.d_state}, -1.0, 1.0);
  return inputs;
}

using testing::all_scan_options;

// y, the final state and (when the case asks) the per-step states, the states in
// y's dtype, flattened into one tensor.
Tensor scan_everything(const GpuScanCase& c, const std::vector<Tensor>& in) {
  ops::SelectiveScanOptions options = all_scan_options(in);
  options.reverse = c.reverse;
  options.return_states = c.states;
  ops::SelectiveScanResult result = ops::selective_scan(in[0], in[1], in[2], in[3], in[4], options);
  const DType dtype = result.y.dtype();
  std::vector<Tensor> parts{ops::reshape(result.y, {-1}), ops::reshape(ops::cast(result.final_state, dtype), {-1})};
  if (c.states) parts.push_back(ops::reshape(ops::cast(result.states, dtype), {-1}));
  return ops::concat(parts, 0);
}

void check_case(const GpuScanCase& c, uint64_t seed) {
  MESSAGE("selective_scan batch " << c.batch << ", d_inner " << c.d_inner << ", length " << c.length << ", N "
                                  << c.d_state << ", groups " << c.groups << (c.reverse ? ", reverse" : "")
                                  << (c.states ? ", per-step states" : ""));
  std::vector<Tensor> inputs = make_inputs(c, seed);
  auto f = [c](const std::vector<Tensor>& in) { return scan_everything(c, in); };
  testing::check_cuda_matches_cpu(f, inputs, DType::Float32, 2e-4);
  testing::check_cuda_matches_cpu(f, inputs, DType::BFloat16, 5e-2);
}

Tensor position(const Tensor& t, int64_t index) {
  int last = t.dim() - 1;
  return ops::squeeze(ops::slice(t, last, index, index + 1), last);
}

}  // namespace

TEST_CASE("selective_scan on CUDA matches the CPU for N = 1 (one thread per channel)") {
  testing::require_cuda();
  check_case({.batch = 2, .d_inner = 128, .length = 2048, .d_state = 1, .groups = 1}, 1);
  check_case({.batch = 1, .d_inner = 5, .length = 300, .d_state = 1, .groups = 5, .reverse = true}, 2);
  check_case({.batch = 2, .d_inner = 1, .length = 7, .d_state = 1}, 3);
  check_case({.batch = 2, .d_inner = 128, .length = 1, .d_state = 1, .groups = 4}, 4);
}

TEST_CASE("selective_scan on CUDA matches the CPU for N = 16 (four lanes per channel)") {
  testing::require_cuda();
  check_case({.batch = 2, .d_inner = 128, .length = 300, .d_state = 16, .groups = 1}, 11);
  check_case({.batch = 2, .d_inner = 128, .length = 2048, .d_state = 16, .groups = 4, .reverse = true}, 12);
  check_case({.batch = 1, .d_inner = 5, .length = 7, .d_state = 16}, 13);
  check_case({.batch = 2, .d_inner = 1, .length = 1, .d_state = 16}, 14);
}

TEST_CASE("selective_scan on CUDA matches the CPU for N = 64 (eight lanes per channel)") {
  testing::require_cuda();
  check_case({.batch = 2, .d_inner = 128, .length = 300, .d_state = 64, .groups = 2, .reverse = true}, 21);
  check_case({.batch = 2, .d_inner = 5, .length = 2048, .d_state = 64}, 22);
  check_case({.batch = 1, .d_inner = 1, .length = 7, .d_state = 64}, 23);
}

TEST_CASE("selective_scan on CUDA covers odd state sizes up to 256") {
  testing::require_cuda();
  // 3: four slots on one lane; 37: eight slots on eight lanes, most unused; 256: 32 lanes of 8.
  for (int64_t d_state : {3, 37, 256}) check_case({.batch = 1, .d_inner = 5, .length = 300, .d_state = d_state}, 30);
}

TEST_CASE("selective_scan on CUDA returns the per-step states and takes their gradient") {
  testing::require_cuda();
  // The three register layouts, both directions, partial last chunks, and groups.
  check_case({.batch = 2, .d_inner = 128, .length = 300, .d_state = 1, .groups = 2, .states = true}, 60);
  check_case({.batch = 2, .d_inner = 5, .length = 300, .d_state = 1, .reverse = true, .states = true}, 61);
  check_case({.batch = 2, .d_inner = 128, .length = 300, .d_state = 16, .groups = 4, .states = true}, 62);
  check_case({.batch = 1, .d_inner = 5, .length = 2048, .d_state = 16, .reverse = true, .states = true}, 63);
  check_case({.batch = 2, .d_inner = 37, .length = 41, .d_state = 64, .groups = 1, .states = true}, 64);
  check_case({.batch = 1, .d_inner = 3, .length = 20, .d_state = 256, .reverse = true, .states = true}, 65);
}

namespace {

// K routes in the layouts of selective_scan_routes: u, delta, A, B, C, D, z,
// delta_bias, initial_state (float64 CPU leaves), in make_inputs' ranges.
std::vector<Tensor> make_route_inputs(int64_t batch, int64_t routes, int64_t d_inner, int64_t length, int64_t d_state,
                                      uint64_t seed) {
  std::vector<Tensor> inputs;
  auto add = [&](const Shape& shape, double low, double high) {
    inputs.push_back(testing::leaf(shape, seed++, low, high));
  };
  const Shape activation{batch, routes, d_inner, length}, bc{batch, routes, 1, d_state, length};
  add(activation, -1.0, 1.0);
  add(activation, -1.0, 1.0);
  add({routes, d_inner, d_state}, -2.0, -0.1);
  add(bc, -1.0, 1.0);
  add(bc, -1.0, 1.0);
  add({routes, d_inner}, -1.0, 1.0);
  add(activation, -2.0, 2.0);
  add({routes, d_inner}, -3.5, -1.5);
  add({batch, routes, d_inner, d_state}, -1.0, 1.0);
  return inputs;
}

Tensor flatten_result(const ops::SelectiveScanResult& r) {
  const DType dtype = r.y.dtype();
  return ops::concat({ops::reshape(r.y, {-1}), ops::reshape(ops::cast(r.final_state, dtype), {-1}),
                      ops::reshape(ops::cast(r.states, dtype), {-1})},
                     0);
}

}  // namespace

TEST_CASE("selective_scan_routes on CUDA matches the CPU and K separate CUDA scans") {
  testing::require_cuda();
  const std::vector<bool> reversed{false, true, true, false};
  for (int64_t d_state : {int64_t{1}, int64_t{16}}) {
    MESSAGE("selective_scan_routes K 4 (two reversed), batch 2, d_inner 96, length 300, N " << d_state);
    std::vector<Tensor> in = make_route_inputs(2, 4, 96, 300, d_state, 70 + d_state);
    auto together = [&](const std::vector<Tensor>& x) {
      return flatten_result(ops::selective_scan_routes(x[0], x[1], x[2], x[3], x[4], reversed, all_scan_options(x)));
    };
    // Tolerances as for the single scan (top of this file).
    testing::check_cuda_matches_cpu(together, in, DType::Float32, 2e-4);
    testing::check_cuda_matches_cpu(together, in, DType::BFloat16, 5e-2);

    // One launch against four: the forward pass runs the same blocks on the same
    // values (equal to the last bit); the gradients differ only in the order of
    // their float32 atomic sums.
    auto apart = [&](const std::vector<Tensor>& x) {
      return flatten_result(testing::scan_routes_one_by_one(x, reversed));
    };
    auto run = [&](auto&& f) {
      std::vector<Tensor> x;
      for (const Tensor& t : in) x.push_back(t.detach().to(DType::Float32).to(Device::cuda()).set_requires_grad(true));
      Tensor out = f(x);
      Tensor weights = testing::random(out.shape(), 5).to(DType::Float32).to(Device::cuda());
      autograd::backward(ops::sum(ops::mul(out, weights)));
      std::vector<Tensor> results{out.to(Device::cpu()).to(DType::Float64)};
      for (const Tensor& t : x) results.push_back(t.grad().to(Device::cpu()).to(DType::Float64));
      return results;
    };
    std::vector<Tensor> one = run(together), four = run(apart);
    CHECK(testing::max_abs_difference(one[0], four[0]) == 0.0);
    for (size_t i = 1; i < one.size(); ++i) {
      double error = testing::max_abs_difference(one[i], four[i]), bound = 1e-5 * testing::max_abs(four[i]);
      MESSAGE("gradient " << i << ": max |one launch - four| = " << error << ", bound " << bound);
      CHECK(error <= bound);
    }
  }
}

TEST_CASE("selective_scan on CUDA takes float32 parameters with bfloat16 activations") {
  testing::require_cuda();
  GpuScanCase c{.batch = 2, .d_inner = 128, .length = 300, .d_state = 16};
  std::vector<Tensor> in = make_inputs(c, 40);
  std::vector<Tensor> mixed, full;
  for (size_t i = 0; i < in.size(); ++i) {
    bool activation = i == 0 || i == 1 || i == 3 || i == 4 || i == 6;
    // Both runs see the same bfloat16-rounded activations; only the parameters differ in storage.
    Tensor rounded = activation ? in[i].detach().to(DType::BFloat16) : in[i].detach().to(DType::Float32);
    mixed.push_back(rounded.to(Device::cuda()));
    full.push_back(rounded.to(DType::Float32).to(Device::cuda()));
  }
  Tensor y_mixed = scan_everything(c, mixed).to(DType::Float64).to(Device::cpu());
  Tensor y_full = scan_everything(c, full).to(DType::Float64).to(Device::cpu());
  // Same float32 arithmetic on the same values; the only difference is rounding y to bfloat16 (2^-9).
  double error = testing::max_abs_difference(y_mixed, y_full), bound = 4e-3 * testing::max_abs(y_full);
  MESSAGE("bfloat16 activations with float32 parameters: max |difference| = " << error << ", bound " << bound);
  CHECK(error <= bound);
}

TEST_CASE("selective_scan_step on CUDA matches the CPU step and the CUDA scan") {
  testing::require_cuda();
  for (int64_t d_state : {1, 16, 64}) {
    CAPTURE(d_state);
    GpuScanCase c{.batch = 2, .d_inner = 128, .length = 9, .d_state = d_state, .groups = 2};
    std::vector<Tensor> in = make_inputs(c, 50 + d_state);
    std::vector<Tensor> cuda_in;
    for (const Tensor& t : in) cuda_in.push_back(t.detach().to(DType::Float32).to(Device::cuda()));
    ops::SelectiveScanOptions scan_options;
    scan_options.D = cuda_in[5];
    scan_options.z = cuda_in[6];
    scan_options.delta_bias = cuda_in[7];
    scan_options.delta_softplus = true;
    scan_options.return_final_state = true;
    autograd::NoGradGuard no_grad;
    ops::SelectiveScanResult scan =
        ops::selective_scan(cuda_in[0], cuda_in[1], cuda_in[2], cuda_in[3], cuda_in[4], scan_options);

    Tensor cpu_state = Tensor::zeros({c.batch, c.d_inner, c.d_state}, DType::Float64);
    Tensor cuda_state = Tensor::zeros({c.batch, c.d_inner, c.d_state}, DType::Float32, Device::cuda());
    double worst_vs_cpu = 0.0, worst_vs_scan = 0.0;
    for (int64_t t = 0; t < c.length; ++t) {
      auto step = [&](const std::vector<Tensor>& x, const Tensor& state) {
        ops::SelectiveScanStepOptions options;
        options.D = x[5];
        options.z = position(x[6], t);
        options.delta_bias = x[7];
        options.delta_softplus = true;
        return ops::selective_scan_step(state, position(x[0], t), position(x[1], t), x[2], position(x[3], t),
                                        position(x[4], t), options);
      };
      std::vector<Tensor> cpu_in;
      for (const Tensor& x : in) cpu_in.push_back(x.detach());
      Tensor y_cpu = step(cpu_in, cpu_state);
      Tensor y_cuda = step(cuda_in, cuda_state).to(Device::cpu()).to(DType::Float64);
      worst_vs_cpu = std::max(worst_vs_cpu, testing::max_abs_difference(y_cuda, y_cpu));
      Tensor y_scan = position(scan.y, t).to(Device::cpu()).to(DType::Float64);
      worst_vs_scan = std::max(worst_vs_scan, testing::max_abs_difference(y_cuda, y_scan));
    }
    Tensor final_scan = scan.final_state.to(Device::cpu()).to(DType::Float64);
    double state_error = testing::max_abs_difference(cuda_state.to(Device::cpu()).to(DType::Float64), final_scan);
    double y_scale = testing::max_abs(scan.y.to(Device::cpu()).to(DType::Float64));
    MESSAGE("N " << d_state << ": step max |cuda - cpu| = " << worst_vs_cpu << ", |step - scan| = " << worst_vs_scan
                 << ", final state " << state_error << " (max |y| " << y_scale << ")");
    // Against the CPU: float32-rounded inputs and float32 arithmetic over 9 steps.
    // Against the scan: the same float32 operations per state, but y summed over the
    // states in another order (warp shuffles), so a few ulps of the largest term.
    CHECK(worst_vs_cpu <= 1e-4 * y_scale);
    CHECK(worst_vs_scan <= 1e-5 * y_scale);
    CHECK(state_error <= 1e-5 * testing::max_abs(final_scan));
  }
}
