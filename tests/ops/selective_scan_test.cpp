// selective_scan on the CPU: values against a hand-computed case and a naive
// per-step loop written here (output, final state and per-step states),
// finite-difference gradients in double for every input and every flag, sequence
// splitting through the final/initial state, the reverse flag against flipped
// inputs, the one-token step against the full scan, selective_scan_routes against
// K separate scans, and the messages of bad arguments.
#include <omp.h>

#include <cmath>

#include "strata/ops/ssm.h"
#include "support/check.h"
#include "support/selective_scan.h"

using namespace strata;

namespace {

struct ScanCase {
  int64_t batch = 2, d_inner = 4, length = 5, d_state = 3, groups = 1;
  bool with_D = false, with_z = false, with_delta_bias = false, softplus = false, reverse = false,
       with_initial_state = false, final_state = false, states = false;
};

// The inputs in the order u, delta, A, B, C, then D, z, delta_bias and
// initial_state when the case has them; float64 leaves.
std::vector<Tensor> make_inputs(const ScanCase& c, uint64_t seed) {
  std::vector<Tensor> inputs;
  auto add = [&](const Shape& shape, double low, double high) {
    inputs.push_back(testing::leaf(shape, seed++, low, high));
  };
  const Shape activation{c.batch, c.d_inner, c.length}, bc{c.batch, c.groups, c.d_state, c.length};
  add(activation, -1.0, 1.0);                                         // u
  add(activation, c.softplus ? -1.5 : 0.05, c.softplus ? 1.0 : 0.8);  // delta: raw before softplus, else a step size
  add({c.d_inner, c.d_state}, -1.5, -0.2);                            // A < 0: decaying states
  add(bc, -1.0, 1.0);                                                 // B
  add(bc, -1.0, 1.0);                                                 // C
  if (c.with_D) add({c.d_inner}, -1.0, 1.0);
  if (c.with_z) add(activation, -2.0, 2.0);
  if (c.with_delta_bias) add({c.d_inner}, 0.0, 0.3);
  if (c.with_initial_state) add({c.batch, c.d_inner, c.d_state}, -1.0, 1.0);
  return inputs;
}

ops::SelectiveScanResult run_scan(const ScanCase& c, const std::vector<Tensor>& in) {
  ops::SelectiveScanOptions options;
  size_t next = 5;
  if (c.with_D) options.D = in[next++];
  if (c.with_z) options.z = in[next++];
  if (c.with_delta_bias) options.delta_bias = in[next++];
  if (c.with_initial_state) options.initial_state = in[next++];
  options.delta_softplus = c.softplus;
  options.reverse = c.reverse;
  options.return_final_state = c.final_state;
  options.return_states = c.states;
  return ops::selective_scan(in[0], in[1], in[2], in[3], in[4], options);
}

// y, with the final state and the per-step states appended (flattened) when the
// case returns them.
Tensor scan_output(const ScanCase& c, const std::vector<Tensor>& in) {
  ops::SelectiveScanResult result = run_scan(c, in);
  std::vector<Tensor> parts{ops::reshape(result.y, {-1})};
  if (c.final_state) parts.push_back(ops::reshape(result.final_state, {-1}));
  if (c.states) parts.push_back(ops::reshape(result.states, {-1}));
  return ops::concat(parts, 0);
}

struct NaiveResult {
  std::vector<double> y, final_state, states;  // states: (batch, d_inner, length, N)
};

// Plain loops over doubles, straight from the equations of ssm.h.
NaiveResult naive_scan(const ScanCase& c, const std::vector<Tensor>& in) {
  auto values = [](const Tensor& t) { return t.to_vector<double>(); };
  std::vector<double> u = values(in[0]), delta = values(in[1]), A = values(in[2]), B = values(in[3]), C = values(in[4]),
                      D, z, bias, initial;
  size_t next = 5;
  if (c.with_D) D = values(in[next++]);
  if (c.with_z) z = values(in[next++]);
  if (c.with_delta_bias) bias = values(in[next++]);
  if (c.with_initial_state) initial = values(in[next++]);
  const int64_t L = c.length, N = c.d_state, channels_per_group = c.d_inner / c.groups;
  NaiveResult result{std::vector<double>(u.size()), std::vector<double>(c.batch * c.d_inner * N),
                     std::vector<double>(u.size() * N)};
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t d = 0; d < c.d_inner; ++d) {
      const int64_t g = d / channels_per_group, row = (b * c.d_inner + d) * L;
      std::vector<double> h(N, 0.0);
      if (c.with_initial_state)
        for (int64_t n = 0; n < N; ++n) h[n] = initial[(b * c.d_inner + d) * N + n];
      for (int64_t step = 0; step < L; ++step) {
        const int64_t t = c.reverse ? L - 1 - step : step;
        double dt = delta[row + t] + (c.with_delta_bias ? bias[d] : 0.0);
        if (c.softplus) dt = std::log(1.0 + std::exp(dt));
        double y = c.with_D ? D[d] * u[row + t] : 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t bc = ((b * c.groups + g) * N + n) * L + t;
          h[n] = std::exp(dt * A[d * N + n]) * h[n] + dt * B[bc] * u[row + t];
          y += C[bc] * h[n];
          result.states[(row + t) * N + n] = h[n];
        }
        if (c.with_z) y *= z[row + t] / (1.0 + std::exp(-z[row + t]));
        result.y[row + t] = y;
      }
      for (int64_t n = 0; n < N; ++n) result.final_state[(b * c.d_inner + d) * N + n] = h[n];
    }
  }
  return result;
}

using testing::check_close;
using testing::detached;

// Positions reversed along the last dim.
Tensor flip_last(const Tensor& t) {
  int64_t length = t.shape().back();
  std::vector<int64_t> order(length);
  for (int64_t i = 0; i < length; ++i) order[i] = length - 1 - i;
  return ops::index_select(t, t.dim() - 1, Tensor::from_vector<int64_t>(order, {length}));
}

Tensor position(const Tensor& t, int64_t index) {
  int last = t.dim() - 1;
  return ops::squeeze(ops::slice(t, last, index, index + 1), last);
}

}  // namespace

TEST_CASE("selective_scan computes a two-step case by hand") {
  // d_inner = N = 1: h1 = 0.5 * 1 * 1, y1 = 2 h1 + 0.5 * 1; h2 = exp(-0.5) h1 + 0.25 * 3 * 2, y2 = -h2 + 0.5 * 2.
  Tensor u = Tensor::from_vector<double>({1.0, 2.0}, {1, 1, 2});
  Tensor delta = Tensor::from_vector<double>({0.5, 0.25}, {1, 1, 2});
  Tensor A = Tensor::from_vector<double>({-2.0}, {1, 1});
  Tensor B = Tensor::from_vector<double>({1.0, 3.0}, {1, 1, 1, 2});
  Tensor C = Tensor::from_vector<double>({2.0, -1.0}, {1, 1, 1, 2});
  ops::SelectiveScanOptions options;
  options.D = Tensor::from_vector<double>({0.5}, {1});
  options.return_final_state = true;
  ops::SelectiveScanResult result = ops::selective_scan(u, delta, A, B, C, options);
  const double h2 = 0.5 * std::exp(-0.5) + 1.5;
  std::vector<double> y = result.y.to_vector<double>();
  CHECK(y[0] == doctest::Approx(1.5).epsilon(1e-15));
  CHECK(y[1] == doctest::Approx(1.0 - h2).epsilon(1e-15));
  CHECK(result.final_state.item() == doctest::Approx(h2).epsilon(1e-15));
  CHECK(result.final_state.shape() == Shape{1, 1, 1});
  CHECK(result.y.dtype() == DType::Float64);
}

TEST_CASE("selective_scan matches a naive per-step loop for every flag") {
  ScanCase all;
  all.batch = 2, all.d_inner = 6, all.length = 7, all.d_state = 4, all.groups = 3;
  all.with_D = all.with_z = all.with_delta_bias = all.softplus = all.with_initial_state = all.final_state = true;
  for (bool reverse : {false, true}) {
    for (int64_t groups : {1, 3}) {
      CAPTURE(reverse);
      CAPTURE(groups);
      ScanCase c = all;
      c.reverse = reverse;
      c.groups = groups;
      std::vector<Tensor> in = make_inputs(c, 100);
      ops::SelectiveScanResult result = run_scan(c, in);
      NaiveResult expected = naive_scan(c, in);
      check_close(result.y.to_vector<double>(), expected.y, 1e-13);
      check_close(result.final_state.to_vector<double>(), expected.final_state, 1e-13);
      // float32 computes in float32 with a float32 state.
      ops::SelectiveScanResult result32 = run_scan(c, detached(in, DType::Float32));
      CHECK(result32.y.dtype() == DType::Float32);
      CHECK(result32.final_state.dtype() == DType::Float32);
      check_close(result32.y.to_vector<double>(), expected.y, 1e-5);
    }
  }
  // No flags: y = sum_n C h.
  ScanCase plain;
  std::vector<Tensor> in = make_inputs(plain, 200);
  check_close(run_scan(plain, in).y.to_vector<double>(), naive_scan(plain, in).y, 1e-13);
}

TEST_CASE("selective_scan gradients match finite differences for every input and flag") {
  auto check = [](const ScanCase& c, uint64_t seed) {
    std::vector<Tensor> in = make_inputs(c, seed);
    testing::check_gradients([&](const std::vector<Tensor>& xs) { return scan_output(c, xs); }, in);
  };
  ScanCase c;
  SUBCASE("no options") { check(c, 1); }
  SUBCASE("D and gate z") {
    c.with_D = c.with_z = true;
    check(c, 2);
  }
  SUBCASE("delta_bias and softplus") {
    c.with_delta_bias = c.softplus = true;
    check(c, 3);
  }
  SUBCASE("softplus without bias") {
    c.softplus = true;
    check(c, 4);
  }
  SUBCASE("reverse") {
    c.reverse = true;
    c.with_D = true;
    check(c, 5);
  }
  SUBCASE("groups of B and C") {
    c.groups = 2;
    check(c, 6);
  }
  SUBCASE("initial state in, final state out") {
    c.with_initial_state = c.final_state = true;
    check(c, 7);
  }
  SUBCASE("final state out only") {
    c.final_state = true;
    check(c, 8);
  }
  SUBCASE("reverse with initial and final state") {
    c.reverse = c.with_initial_state = c.final_state = true;
    check(c, 9);
  }
  SUBCASE("N = 1") {
    c.d_state = 1;
    c.with_D = c.with_z = true;
    check(c, 10);
  }
  SUBCASE("length 1") {
    c.length = 1;
    c.with_initial_state = c.final_state = c.with_z = true;
    check(c, 11);
  }
  SUBCASE("batch 1, one channel per group") {
    c.batch = 1;
    c.groups = c.d_inner;
    c.with_delta_bias = c.softplus = true;
    check(c, 12);
  }
  SUBCASE("everything at once") {
    c.d_inner = 6, c.groups = 3, c.length = 6;
    c.with_D = c.with_z = c.with_delta_bias = c.softplus = c.reverse = c.with_initial_state = c.final_state = true;
    check(c, 13);
  }
  SUBCASE("per-step states") {
    c.states = true;
    check(c, 14);
  }
  SUBCASE("per-step states with D, gate, softplus and groups") {
    c.d_inner = 6, c.groups = 3;
    c.states = c.with_D = c.with_z = c.with_delta_bias = c.softplus = true;
    check(c, 15);
  }
  SUBCASE("per-step states, reverse, initial and final state") {
    c.states = c.reverse = c.with_initial_state = c.final_state = true;
    check(c, 16);
  }
  SUBCASE("per-step states with N = 1") {
    c.d_state = 1;
    c.states = c.with_z = true;
    check(c, 17);
  }
}

TEST_CASE("selective_scan per-step states match the naive loop and end in the final state") {
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    ScanCase c;
    c.d_inner = 6, c.length = 7, c.groups = 3;
    c.with_D = c.with_z = c.with_delta_bias = c.softplus = c.with_initial_state = true;
    c.reverse = reverse, c.final_state = c.states = true;
    std::vector<Tensor> in = make_inputs(c, 900);
    ops::SelectiveScanResult result = run_scan(c, in);
    CHECK(result.states.shape() == Shape{c.batch, c.d_inner, c.length, c.d_state});
    CHECK(result.states.dtype() == DType::Float64);
    NaiveResult expected = naive_scan(c, in);
    check_close(result.states.to_vector<double>(), expected.states, 1e-13);
    check_close(result.y.to_vector<double>(), expected.y, 1e-13);
    // The last step is at position length - 1 forward, at position 0 in reverse.
    Tensor last = ops::squeeze(ops::slice(result.states, 2, reverse ? 0 : c.length - 1, reverse ? 1 : c.length), 2);
    check_close(last.to_vector<double>(), result.final_state.to_vector<double>(), 0.0);

    ops::SelectiveScanResult result32 = run_scan(c, detached(in, DType::Float32));
    CHECK(result32.states.dtype() == DType::Float32);
    check_close(result32.states.to_vector<double>(), expected.states, 1e-5);
  }
}

TEST_CASE("selective_scan per-step states carry their gradient into every input") {
  // The loss reads only the states: without their term in the adjoint every
  // gradient here would be zero.
  ScanCase c;
  c.with_delta_bias = c.softplus = c.with_initial_state = c.states = true;
  std::vector<Tensor> in = make_inputs(c, 950);
  autograd::backward(ops::sum(run_scan(c, in).states));
  for (size_t i = 0; i < in.size(); ++i) {
    CAPTURE(i);
    if (i == 4)
      CHECK(testing::max_abs(in[i].grad()) == 0.0);  // C reads the states, it does not make them
    else
      CHECK(testing::max_abs(in[i].grad()) > 1e-3);
  }
}

namespace {

// K routes: u, delta, A, B, C, D, z, delta_bias, initial_state in the layouts of
// selective_scan_routes (float64 leaves); delta is raw (softplus follows).
struct RoutesCase {
  int64_t batch = 2, routes = 3, d_inner = 4, length = 5, d_state = 3, groups = 2;
  std::vector<bool> reversed{false, true, true};
};

std::vector<Tensor> make_route_inputs(const RoutesCase& c, uint64_t seed) {
  std::vector<Tensor> inputs;
  auto add = [&](const Shape& shape, double low, double high) {
    inputs.push_back(testing::leaf(shape, seed++, low, high));
  };
  const Shape activation{c.batch, c.routes, c.d_inner, c.length}, per_route{c.routes, c.d_inner};
  const Shape bc{c.batch, c.routes, c.groups, c.d_state, c.length};
  add(activation, -1.0, 1.0);                       // u
  add(activation, -1.5, 1.0);                       // delta
  add({c.routes, c.d_inner, c.d_state}, -1.5, -0.2);  // A
  add(bc, -1.0, 1.0);                               // B
  add(bc, -1.0, 1.0);                               // C
  add(per_route, -1.0, 1.0);                        // D
  add(activation, -2.0, 2.0);                       // z
  add(per_route, 0.0, 0.3);                         // delta_bias
  add({c.batch, c.routes, c.d_inner, c.d_state}, -1.0, 1.0);
  return inputs;
}

using testing::all_scan_options;

// y, final state and per-step states of the K routes, flattened and joined.
Tensor flatten_result(const ops::SelectiveScanResult& r) {
  return ops::concat({ops::reshape(r.y, {-1}), ops::reshape(r.final_state, {-1}), ops::reshape(r.states, {-1})}, 0);
}

Tensor routes_in_one_launch(const RoutesCase& c, const std::vector<Tensor>& in) {
  return flatten_result(
      ops::selective_scan_routes(in[0], in[1], in[2], in[3], in[4], c.reversed, all_scan_options(in)));
}

// The same as K calls of selective_scan (testing::scan_routes_one_by_one).
Tensor routes_one_by_one(const RoutesCase& c, const std::vector<Tensor>& in) {
  return flatten_result(testing::scan_routes_one_by_one(in, c.reversed));
}

}  // namespace

TEST_CASE("selective_scan_routes gives exactly the K separate scans, values and gradients") {
  for (int64_t d_state : {int64_t{1}, int64_t{3}}) {
    CAPTURE(d_state);
    RoutesCase c;
    c.routes = 4, c.d_state = d_state, c.reversed = {false, true, true, false};
    std::vector<Tensor> in = make_route_inputs(c, 1000 + d_state);
    auto gradients = [&](auto&& f) {
      for (Tensor t : in) t.zero_grad();
      Tensor out = f(c, in);
      autograd::backward(ops::sum(ops::mul(out, testing::random(out.shape(), 7))));
      std::vector<std::vector<double>> result{out.to_vector<double>()};
      for (const Tensor& t : in) result.push_back(t.grad().to_vector<double>());
      return result;
    };
    std::vector<std::vector<double>> together = gradients(routes_in_one_launch);
    std::vector<std::vector<double>> apart = gradients(routes_one_by_one);
    // The same arithmetic in the same order per channel: equal to the last bit.
    for (size_t i = 0; i < together.size(); ++i) CHECK_MESSAGE(together[i] == apart[i], "result " << i);
  }
}

TEST_CASE("selective_scan_routes gradients match finite differences") {
  RoutesCase c;
  SUBCASE("three routes, two reversed, N = 3") {}
  SUBCASE("two routes, N = 1, one group") {
    c.routes = 2, c.d_state = 1, c.groups = 1, c.reversed = {true, false};
  }
  SUBCASE("no reversed flags") {
    c.reversed = {};
  }
  std::vector<Tensor> in = make_route_inputs(c, 1100);
  testing::check_gradients([&](const std::vector<Tensor>& xs) { return routes_in_one_launch(c, xs); }, in);
}

TEST_CASE("selective_scan_routes errors name the routes' shapes") {
  RoutesCase c;
  std::vector<Tensor> in = make_route_inputs(c, 1200);
  auto scan = [&](const std::vector<Tensor>& x, const std::vector<bool>& reversed,
                  const ops::SelectiveScanOptions& options = {}) {
    return ops::selective_scan_routes(x[0], x[1], x[2], x[3], x[4], reversed, options);
  };
  std::vector<Tensor> bad = in;
  bad[0] = ops::reshape(in[0], {2, 12, 5});
  CHECK_THROWS_WITH_AS(scan(bad, c.reversed),
                       doctest::Contains("selective_scan_routes: u float64[2, 12, 5] on cpu must be (batch, K, "
                                         "d_inner, length)"),
                       Error);
  CHECK_THROWS_WITH_AS(scan(in, {true, false}), doctest::Contains("2 reversed flags for the K = 3 routes"), Error);
  bad = in;
  bad[2] = testing::random({2, 4, 3}, 1);
  CHECK_THROWS_WITH_AS(scan(bad, c.reversed),
                       doctest::Contains("A float64[2, 4, 3] on cpu must have shape [3, 4, 3] (K, d_inner, N)"), Error);
  bad = in;
  bad[4] = testing::random({2, 3, 2, 3, 4}, 1);
  CHECK_THROWS_WITH_AS(scan(bad, c.reversed),
                       doctest::Contains("C float64[2, 3, 2, 3, 4] on cpu must have shape [2, 3, 2, 3, 5]"), Error);
  bad = in;
  bad[3] = testing::random({2, 3, 3, 3, 5}, 1);
  bad[4] = testing::random({2, 3, 3, 3, 5}, 2);
  CHECK_THROWS_WITH_AS(scan(bad, c.reversed),
                       doctest::Contains("d_inner 4 of u float64[2, 3, 4, 5] on cpu is not divisible by the 3 groups"),
                       Error);
  ops::SelectiveScanOptions options;
  options.D = testing::random({12}, 1);
  CHECK_THROWS_WITH_AS(scan(in, c.reversed, options),
                       doctest::Contains("D float64[12] on cpu must have shape [3, 4] (K, d_inner)"), Error);
  options = {};
  options.reverse = true;
  CHECK_THROWS_WITH_AS(scan(in, c.reversed, options), doctest::Contains("options.reverse must be false"), Error);
  std::vector<Tensor> many{Tensor::zeros({1, 65, 1, 2}, DType::Float64), Tensor::zeros({1, 65, 1, 2}, DType::Float64),
                           Tensor::zeros({65, 1, 1}, DType::Float64), Tensor::zeros({1, 65, 1, 1, 2}, DType::Float64),
                           Tensor::zeros({1, 65, 1, 1, 2}, DType::Float64)};
  CHECK_THROWS_WITH_AS(scan(many, {}), doctest::Contains("K = 65 routes"), Error);
}

TEST_CASE("selective_scan on many channels runs threaded and gives the same bits on one thread") {
  ScanCase c;
  c.batch = 2, c.d_inner = 32, c.length = 80, c.d_state = 16, c.groups = 2;  // 2^16 + state updates: threaded
  c.with_D = c.with_z = c.with_delta_bias = c.softplus = c.with_initial_state = c.final_state = true;
  std::vector<Tensor> in = make_inputs(c, 800);
  auto gradients = [&]() {
    for (Tensor t : in) t.zero_grad();
    autograd::backward(
        ops::sum(ops::mul(scan_output(c, in), testing::random({c.batch * c.d_inner * (c.length + c.d_state)}, 9))));
    std::vector<std::vector<double>> grads;
    for (const Tensor& t : in) grads.push_back(t.grad().to_vector<double>());
    return grads;
  };
  NaiveResult expected = naive_scan(c, in);
  check_close(run_scan(c, in).y.to_vector<double>(), expected.y, 1e-12);
  std::vector<std::vector<double>> threaded = gradients();
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  std::vector<std::vector<double>> single = gradients();
  omp_set_num_threads(threads);
  for (size_t i = 0; i < in.size(); ++i) CHECK_MESSAGE(threaded[i] == single[i], "input " << i);
}

TEST_CASE("selective_scan carries a split sequence through final and initial state") {
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    ScanCase c;
    c.length = 9, c.groups = 2, c.with_D = c.with_z = c.with_delta_bias = c.softplus = true;
    c.reverse = reverse, c.final_state = true;
    std::vector<Tensor> in = make_inputs(c, 300);
    ops::SelectiveScanResult whole = run_scan(c, in);

    // Scan the positions in the order the direction visits them: [0, 4) then [4, 9)
    // forward; [4, 9) then [0, 4) in reverse.
    auto part = [&](int64_t start, int64_t end, const Tensor& initial_state) {
      auto cut = [&](const Tensor& t) { return ops::slice(t, t.dim() - 1, start, end); };
      ops::SelectiveScanOptions options;
      options.D = in[5];
      options.z = cut(in[6]);
      options.delta_bias = in[7];
      options.initial_state = initial_state;
      options.delta_softplus = true;
      options.reverse = reverse;
      options.return_final_state = true;
      return ops::selective_scan(cut(in[0]), cut(in[1]), in[2], cut(in[3]), cut(in[4]), options);
    };
    ops::SelectiveScanResult first = reverse ? part(4, 9, Tensor()) : part(0, 4, Tensor());
    ops::SelectiveScanResult second = reverse ? part(0, 4, first.final_state) : part(4, 9, first.final_state);
    Tensor joined = reverse ? ops::concat({second.y, first.y}, 2) : ops::concat({first.y, second.y}, 2);
    check_close(joined.to_vector<double>(), whole.y.to_vector<double>(), 1e-13);
    check_close(second.final_state.to_vector<double>(), whole.final_state.to_vector<double>(), 1e-13);
  }
}

TEST_CASE("selective_scan in reverse is the forward scan of flipped inputs") {
  ScanCase c;
  c.with_D = c.with_z = true;
  c.reverse = true;
  std::vector<Tensor> in = make_inputs(c, 400);
  Tensor reversed = run_scan(c, in).y;
  c.reverse = false;
  std::vector<Tensor> flipped = in;
  for (size_t i : {0, 1, 3, 4, 6}) flipped[i] = flip_last(in[i]);
  Tensor forward = run_scan(c, flipped).y;
  check_close(flip_last(forward).to_vector<double>(), reversed.to_vector<double>(), 1e-14);
}

TEST_CASE("selective_scan reads non-contiguous inputs and mixes float32 parameters with float64 activations") {
  ScanCase c;
  c.with_D = true;
  std::vector<Tensor> in = make_inputs(c, 500);
  Tensor expected = run_scan(c, in).y;

  // u and delta as a Mamba block makes them: (batch, length, d_inner) transposed.
  std::vector<Tensor> strided = in;
  for (size_t i : {0, 1}) {
    Tensor made = ops::contiguous(ops::transpose(in[i].detach(), 1, 2));
    strided[i] = ops::transpose(made, 1, 2);
    CHECK_FALSE(strided[i].is_contiguous());
  }
  check_close(run_scan(c, strided).y.to_vector<double>(), expected.to_vector<double>(), 0.0);

  std::vector<Tensor> mixed = in;
  mixed[2] = in[2].detach().to(DType::Float32).set_requires_grad(true);
  mixed[5] = in[5].detach().to(DType::Float32).set_requires_grad(true);
  Tensor y = run_scan(c, mixed).y;
  CHECK(y.dtype() == DType::Float64);
  check_close(y.to_vector<double>(), expected.to_vector<double>(), 1e-6);  // A and D rounded to float32
  autograd::backward(ops::sum(y));
  CHECK(mixed[2].grad().dtype() == DType::Float32);
  CHECK(mixed[5].grad().dtype() == DType::Float32);
  CHECK(mixed[0].grad().dtype() == DType::Float64);
}

TEST_CASE("selective_scan_step reproduces the scan token by token") {
  for (DType dtype : {DType::Float64, DType::Float32}) {
    CAPTURE(dtype_name(dtype));
    ScanCase c;
    c.length = 6, c.d_inner = 6, c.groups = 3, c.d_state = 5;
    c.with_D = c.with_z = c.with_delta_bias = c.softplus = c.final_state = true;
    std::vector<Tensor> in = detached(make_inputs(c, 600), dtype);
    ops::SelectiveScanResult scan = run_scan(c, in);

    autograd::NoGradGuard no_grad;
    Tensor state = Tensor::zeros({c.batch, c.d_inner, c.d_state}, dtype);
    ops::SelectiveScanStepOptions options;
    options.D = in[5];
    options.delta_bias = in[7];
    options.delta_softplus = true;
    const double tolerance = dtype == DType::Float64 ? 1e-14 : 1e-6;
    for (int64_t t = 0; t < c.length; ++t) {
      CAPTURE(t);
      options.z = position(in[6], t);
      Tensor y = ops::selective_scan_step(state, position(in[0], t), position(in[1], t), in[2], position(in[3], t),
                                          position(in[4], t), options);
      CHECK(y.shape() == Shape{c.batch, c.d_inner});
      check_close(y.to_vector<double>(), position(scan.y, t).to_vector<double>(), tolerance);
    }
    check_close(state.to_vector<double>(), scan.final_state.to_vector<double>(), tolerance);
  }
}

TEST_CASE("selective_scan errors name the tensor and both shapes") {
  ScanCase c;
  std::vector<Tensor> in = make_inputs(c, 700);
  const Tensor &u = in[0], &delta = in[1], &A = in[2], &B = in[3], &C = in[4];
  auto scan = [&](const Tensor& u_, const Tensor& delta_, const Tensor& A_, const Tensor& B_, const Tensor& C_,
                  const ops::SelectiveScanOptions& options = {}) {
    return ops::selective_scan(u_, delta_, A_, B_, C_, options);
  };
  CHECK_THROWS_WITH_AS(scan(u, testing::random({2, 4, 6}, 1), A, B, C),
                       doctest::Contains("selective_scan: delta float64[2, 4, 6] on cpu must have shape [2, 4, 5] "
                                         "(batch, d_inner, length)"),
                       Error);
  CHECK_THROWS_WITH_AS(scan(ops::reshape(u, {8, 5}), delta, A, B, C),
                       doctest::Contains("selective_scan: u float64[8, 5] on cpu must be (batch, d_inner, length)"),
                       Error);
  CHECK_THROWS_WITH_AS(scan(u, delta, testing::random({3, 3}, 1), B, C),
                       doctest::Contains("A float64[3, 3] on cpu must have shape [4, 3] (d_inner, N)"), Error);
  CHECK_THROWS_WITH_AS(scan(u, delta, testing::random({4, 2}, 1), B, C),
                       doctest::Contains("B float64[2, 1, 3, 5] on cpu must have shape [2, 1, 2, 5]"), Error);
  CHECK_THROWS_WITH_AS(scan(u, delta, A, B, testing::random({2, 1, 3, 4}, 1)),
                       doctest::Contains("C float64[2, 1, 3, 4] on cpu must have shape [2, 1, 3, 5]"), Error);
  CHECK_THROWS_WITH_AS(
      scan(u, delta, A, testing::random({2, 3, 3, 5}, 1), testing::random({2, 3, 3, 5}, 2)),
      doctest::Contains("d_inner 4 of u float64[2, 4, 5] on cpu is not divisible by the 3 groups of B"), Error);
  CHECK_THROWS_WITH_AS(scan(u, delta, A, ops::reshape(B, {2, 3, 5}), C),
                       doctest::Contains("B float64[2, 3, 5] on cpu must be (batch, groups, N, length)"), Error);

  ops::SelectiveScanOptions bad;
  bad.D = testing::random({5}, 1);
  CHECK_THROWS_WITH_AS(scan(u, delta, A, B, C, bad), doctest::Contains("D float64[5] on cpu must have shape [4]"),
                       Error);
  bad = {};
  bad.z = testing::random({2, 4, 4}, 1);
  CHECK_THROWS_WITH_AS(scan(u, delta, A, B, C, bad),
                       doctest::Contains("z float64[2, 4, 4] on cpu must have shape [2, 4, 5]"), Error);
  bad = {};
  bad.delta_bias = testing::random({4, 1}, 1);
  CHECK_THROWS_WITH_AS(scan(u, delta, A, B, C, bad),
                       doctest::Contains("delta_bias float64[4, 1] on cpu must have shape [4]"), Error);
  bad = {};
  bad.initial_state = testing::random({2, 4, 2}, 1);
  CHECK_THROWS_WITH_AS(scan(u, delta, A, B, C, bad),
                       doctest::Contains("initial_state float64[2, 4, 2] on cpu must have shape [2, 4, 3]"), Error);

  CHECK_THROWS_WITH_AS(scan(u, delta.detach().to(DType::Float32), A, B, C),
                       doctest::Contains("delta float32[2, 4, 5] on cpu must have the dtype of u (float64)"), Error);
  CHECK_THROWS_WITH_AS(scan(u.detach().to(DType::Float32), delta.detach().to(DType::Float32), A.detach(),
                            B.detach().to(DType::Float32), C.detach().to(DType::Float32)),
                       doctest::Contains("A float64[4, 3] on cpu must be float32"), Error);
  CHECK_THROWS_WITH_AS(scan(Tensor::zeros({2, 4, 0}, DType::Float64), Tensor::zeros({2, 4, 0}, DType::Float64), A,
                            Tensor::zeros({2, 1, 3, 0}, DType::Float64), Tensor::zeros({2, 1, 3, 0}, DType::Float64)),
                       doctest::Contains("must not be empty"), Error);
}

TEST_CASE("selective_scan_step checks its state and refuses to record a gradient") {
  Tensor u = testing::random({2, 4}, 1), delta = testing::random({2, 4}, 2, DType::Float64, 0.1, 0.5);
  Tensor A = testing::random({4, 3}, 3, DType::Float64, -1.0, -0.1);
  Tensor B = testing::random({2, 1, 3}, 4), C = testing::random({2, 1, 3}, 5);
  CHECK_THROWS_WITH_AS(
      ops::selective_scan_step(Tensor::zeros({2, 4, 2}, DType::Float64), u, delta, A, B, C),
      doctest::Contains(
          "selective_scan_step: state float64[2, 4, 2] on cpu must have shape [2, 4, 3] (batch, d_inner, N)"),
      Error);
  CHECK_THROWS_WITH_AS(ops::selective_scan_step(Tensor::zeros({2, 4, 3}, DType::Float32), u, delta, A, B, C),
                       doctest::Contains("state float32[2, 4, 3] on cpu must be a contiguous float64 tensor"), Error);
  CHECK_THROWS_WITH_AS(ops::selective_scan_step(Tensor::zeros({2, 4, 3}, DType::Float64), u, delta, A,
                                                testing::random({2, 1, 3, 1}, 6), C),
                       doctest::Contains("B float64[2, 1, 3, 1] on cpu must be (batch, groups, N)"), Error);
  Tensor trainable = A.clone().set_requires_grad(true);
  CHECK_THROWS_WITH_AS(ops::selective_scan_step(Tensor::zeros({2, 4, 3}, DType::Float64), u, delta, trainable, B, C),
                       doctest::Contains("selective_scan_step: is not differentiable"), Error);
}
