// ssd_chunked and gated_rms_norm on the CPU: the chunked SSD against a hand-computed
// case and against the naive sequential recurrence written here (several chunk
// sizes, 1 included), finite-difference gradients in double for every input and
// flag, splitting a sequence through the final/initial state, non-contiguous and
// mixed-dtype inputs, and the messages of bad arguments; the gated RMSNorm against
// its composition from basic ops, with gradients and errors.
#include "strata/ops/ssd.h"

#include <cmath>

#include "support/check.h"

using namespace strata;

namespace {

struct SsdCase {
  int64_t batch = 2, length = 7, heads = 2, head_dim = 3, groups = 1, d_state = 2, chunk_size = 3;
  bool with_D = false, with_dt_bias = false, softplus = false, with_initial_state = false, final_state = false;
};

// Inputs x, dt, A, B, C, then D, dt_bias and initial_state when the case has them;
// float64 leaves.
std::vector<Tensor> make_inputs(const SsdCase& c, uint64_t seed) {
  std::vector<Tensor> inputs;
  auto add = [&](const Shape& shape, double low, double high) {
    inputs.push_back(testing::leaf(shape, seed++, low, high));
  };
  const Shape bc{c.batch, c.length, c.groups, c.d_state};
  add({c.batch, c.length, c.heads, c.head_dim}, -1.0, 1.0);                             // x
  add({c.batch, c.length, c.heads}, c.softplus ? -1.5 : 0.05, c.softplus ? 1.0 : 0.8);  // dt: raw, or a step size
  add({c.heads}, -1.5, -0.2);                                                           // A < 0
  add(bc, -1.0, 1.0);                                                                   // B
  add(bc, -1.0, 1.0);                                                                   // C
  if (c.with_D) add({c.heads}, -1.0, 1.0);
  if (c.with_dt_bias) add({c.heads}, 0.0, 0.3);
  if (c.with_initial_state) add({c.batch, c.heads, c.head_dim, c.d_state}, -1.0, 1.0);
  return inputs;
}

ops::SsdOptions options_of(const SsdCase& c, const std::vector<Tensor>& in) {
  ops::SsdOptions options;
  size_t next = 5;
  if (c.with_D) options.D = in[next++];
  if (c.with_dt_bias) options.dt_bias = in[next++];
  if (c.with_initial_state) options.initial_state = in[next++];
  options.dt_softplus = c.softplus;
  options.chunk_size = c.chunk_size;
  options.return_final_state = c.final_state;
  return options;
}

ops::SsdResult run_ssd(const SsdCase& c, const std::vector<Tensor>& in) {
  return ops::ssd_chunked(in[0], in[1], in[2], in[3], in[4], options_of(c, in));
}

// y, with the final state appended (flattened) when the case returns it.
Tensor ssd_output(const SsdCase& c, const std::vector<Tensor>& in) {
  ops::SsdResult result = run_ssd(c, in);
  if (!c.final_state) return result.y;
  return ops::concat({ops::reshape(result.y, {-1}), ops::reshape(result.final_state, {-1})}, 0);
}

struct NaiveResult {
  std::vector<double> y, final_state;
};

// The sequential recurrence, one position at a time, in plain doubles:
//   S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,  y_t = S_t C_t + D x_t.
NaiveResult naive_recurrence(const SsdCase& c, const std::vector<Tensor>& in) {
  auto values = [](const Tensor& t) { return t.to_vector<double>(); };
  std::vector<double> x = values(in[0]), dt = values(in[1]), A = values(in[2]), B = values(in[3]), C = values(in[4]), D,
                      bias, initial;
  size_t next = 5;
  if (c.with_D) D = values(in[next++]);
  if (c.with_dt_bias) bias = values(in[next++]);
  if (c.with_initial_state) initial = values(in[next++]);
  const int64_t H = c.heads, P = c.head_dim, N = c.d_state, G = c.groups, L = c.length;
  NaiveResult result{std::vector<double>(x.size()), std::vector<double>(c.batch * H * P * N)};
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      std::vector<double> S(P * N, 0.0);
      if (c.with_initial_state)
        for (int64_t k = 0; k < P * N; ++k) S[k] = initial[(b * H + h) * P * N + k];
      for (int64_t t = 0; t < L; ++t) {
        double step = dt[(b * L + t) * H + h] + (c.with_dt_bias ? bias[h] : 0.0);
        if (c.softplus) step = std::log(1.0 + std::exp(step));
        const double* x_t = &x[((b * L + t) * H + h) * P];
        const double* B_t = &B[((b * L + t) * G + g) * N];
        const double* C_t = &C[((b * L + t) * G + g) * N];
        for (int64_t p = 0; p < P; ++p) {
          double y = c.with_D ? D[h] * x_t[p] : 0.0;
          for (int64_t n = 0; n < N; ++n) {
            S[p * N + n] = std::exp(step * A[h]) * S[p * N + n] + step * x_t[p] * B_t[n];
            y += S[p * N + n] * C_t[n];
          }
          result.y[((b * L + t) * H + h) * P + p] = y;
        }
      }
      for (int64_t k = 0; k < P * N; ++k) result.final_state[(b * H + h) * P * N + k] = S[k];
    }
  }
  return result;
}

using testing::check_close;

using testing::detached;

}  // namespace

TEST_CASE("ssd_chunked computes a two-step case by hand") {
  // One head, head_dim = d_state = 1: S1 = 0.5 * 1 * 1, y1 = 2 S1 + 0.5 * 1;
  // S2 = exp(-0.5) S1 + 0.25 * 2 * 3, y2 = -S2 + 0.5 * 2.
  Tensor x = Tensor::from_vector<double>({1.0, 2.0}, {1, 2, 1, 1});
  Tensor dt = Tensor::from_vector<double>({0.5, 0.25}, {1, 2, 1});
  Tensor A = Tensor::from_vector<double>({-2.0}, {1});
  Tensor B = Tensor::from_vector<double>({1.0, 3.0}, {1, 2, 1, 1});
  Tensor C = Tensor::from_vector<double>({2.0, -1.0}, {1, 2, 1, 1});
  for (int64_t chunk_size : {1, 2, 256}) {
    CAPTURE(chunk_size);
    ops::SsdOptions options;
    options.D = Tensor::from_vector<double>({0.5}, {1});
    options.chunk_size = chunk_size;
    options.return_final_state = true;
    ops::SsdResult result = ops::ssd_chunked(x, dt, A, B, C, options);
    const double S2 = 0.5 * std::exp(-0.5) + 1.5;
    std::vector<double> y = result.y.to_vector<double>();
    CHECK(y[0] == doctest::Approx(1.5).epsilon(1e-15));
    CHECK(y[1] == doctest::Approx(1.0 - S2).epsilon(1e-15));
    CHECK(result.final_state.item() == doctest::Approx(S2).epsilon(1e-15));
    CHECK(result.final_state.shape() == Shape{1, 1, 1, 1});
    CHECK(result.y.dtype() == DType::Float64);
  }
}

TEST_CASE("ssd_chunked equals the sequential recurrence for every chunk size") {
  SsdCase all;
  all.batch = 2, all.length = 11, all.heads = 4, all.head_dim = 3, all.groups = 2, all.d_state = 5;
  all.with_D = all.with_dt_bias = all.softplus = all.with_initial_state = all.final_state = true;
  std::vector<Tensor> in = make_inputs(all, 100);
  NaiveResult expected = naive_recurrence(all, in);
  // 1 (every position its own chunk), sizes that do and do not divide 11, 11 itself, and more than 11.
  for (int64_t chunk_size : {1, 2, 3, 4, 11, 16, 256}) {
    CAPTURE(chunk_size);
    SsdCase c = all;
    c.chunk_size = chunk_size;
    ops::SsdResult result = run_ssd(c, in);
    check_close(result.y.to_vector<double>(), expected.y, 1e-13);
    check_close(result.final_state.to_vector<double>(), expected.final_state, 1e-13);
    // float32 computes in float32 with a float32 state.
    ops::SsdResult result32 = run_ssd(c, detached(in, DType::Float32));
    CHECK(result32.y.dtype() == DType::Float32);
    CHECK(result32.final_state.dtype() == DType::Float32);
    check_close(result32.y.to_vector<double>(), expected.y, 2e-5);
    check_close(result32.final_state.to_vector<double>(), expected.final_state, 2e-5);
  }
  // No options at all: zero initial state, dt used as given.
  SsdCase plain;
  std::vector<Tensor> plain_in = make_inputs(plain, 200);
  check_close(run_ssd(plain, plain_in).y.to_vector<double>(), naive_recurrence(plain, plain_in).y, 1e-13);
}

TEST_CASE("ssd_chunked gradients match finite differences for every input and flag") {
  auto check = [](const SsdCase& c, uint64_t seed) {
    std::vector<Tensor> in = make_inputs(c, seed);
    testing::check_gradients([&](const std::vector<Tensor>& xs) { return ssd_output(c, xs); }, in);
  };
  SsdCase c;  // batch 2, length 7, chunk 3: the last chunk holds one position
  SUBCASE("no options") { check(c, 1); }
  SUBCASE("D") {
    c.with_D = true;
    check(c, 2);
  }
  SUBCASE("dt_bias and softplus") {
    c.with_dt_bias = c.softplus = true;
    check(c, 3);
  }
  SUBCASE("softplus without bias") {
    c.softplus = true;
    check(c, 4);
  }
  SUBCASE("dt_bias without softplus") {
    c.with_dt_bias = true;
    check(c, 5);
  }
  SUBCASE("initial state") {
    c.with_initial_state = true;
    check(c, 6);
  }
  SUBCASE("final state") {
    c.final_state = true;
    check(c, 7);
  }
  SUBCASE("groups > 1") {
    c.heads = 4;
    c.groups = 2;
    check(c, 8);
  }
  SUBCASE("length shorter than the chunk") {
    c.length = 5;
    c.chunk_size = 8;
    c.final_state = c.with_initial_state = true;
    check(c, 9);
  }
  SUBCASE("chunk size 1") {
    c.chunk_size = 1;
    c.final_state = true;
    check(c, 10);
  }
  SUBCASE("batch 1, one head, one group") {
    c.batch = 1;
    c.heads = 1;
    c.with_D = true;
    check(c, 11);
  }
  SUBCASE("everything at once") {
    c.length = 10;
    c.chunk_size = 4;
    c.heads = 6;
    c.groups = 3;
    c.d_state = 3;
    c.with_D = c.with_dt_bias = c.softplus = c.with_initial_state = c.final_state = true;
    check(c, 12);
  }
}

TEST_CASE("ssd_chunked gradient through the final state alone reaches every input") {
  // The loss reads only the final state, so the gradient enters through the reverse
  // state passing alone (dy = 0).
  SsdCase c;
  c.with_D = c.with_dt_bias = c.softplus = c.with_initial_state = c.final_state = true;
  std::vector<Tensor> in = make_inputs(c, 20);
  testing::check_gradients([&](const std::vector<Tensor>& xs) { return run_ssd(c, xs).final_state; }, in);
}

TEST_CASE("ssd_chunked continues a sequence from its final state") {
  SsdCase c;
  c.length = 9;
  c.chunk_size = 4;
  c.with_D = c.with_dt_bias = c.softplus = c.final_state = true;
  std::vector<Tensor> in = make_inputs(c, 30);
  autograd::NoGradGuard no_grad;
  ops::SsdResult whole = run_ssd(c, in);
  // Positions 0..4 and 5..8, the second part started from the first part's final state.
  auto part = [&](int64_t start, int64_t end) {
    std::vector<Tensor> piece = in;
    for (int i : {0, 1, 3, 4}) piece[i] = ops::slice(in[i], 1, start, end);
    return piece;
  };
  SsdCase first_case = c, second_case = c;
  first_case.length = 5;
  second_case.length = 4;
  second_case.with_initial_state = true;
  ops::SsdResult first = run_ssd(first_case, part(0, 5));
  std::vector<Tensor> second_in = part(5, 9);
  second_in.push_back(first.final_state);
  ops::SsdResult second = run_ssd(second_case, second_in);
  Tensor joined = ops::concat({first.y, second.y}, 1);
  check_close(joined.to_vector<double>(), whole.y.to_vector<double>(), 1e-13);
  check_close(second.final_state.to_vector<double>(), whole.final_state.to_vector<double>(), 1e-13);
}

TEST_CASE("ssd_chunked reads non-contiguous inputs") {
  SsdCase c;
  c.with_D = true;
  std::vector<Tensor> in = make_inputs(c, 40);
  // x stored as (batch, heads, length, head_dim) and B as (batch, groups, length, d_state):
  // transposed views with the expected shapes.
  Tensor x_heads_first = ops::contiguous(ops::transpose(in[0].detach(), 1, 2)).set_requires_grad(true);
  Tensor B_groups_first = ops::contiguous(ops::transpose(in[3].detach(), 1, 2)).set_requires_grad(true);
  std::vector<Tensor> leaves{x_heads_first, in[1], in[2], B_groups_first, in[4], in[5]};
  auto f = [&](const std::vector<Tensor>& xs) {
    std::vector<Tensor> views = xs;
    views[0] = ops::transpose(xs[0], 1, 2);
    views[3] = ops::transpose(xs[3], 1, 2);
    CHECK_FALSE(views[0].is_contiguous());
    return ssd_output(c, views);
  };
  check_close(f(leaves).to_vector<double>(), ssd_output(c, in).to_vector<double>(), 0.0);
  testing::check_gradients(f, leaves);
}

TEST_CASE("ssd_chunked takes float32 parameters with float64 activations") {
  SsdCase c;
  c.with_D = c.with_dt_bias = c.softplus = c.with_initial_state = true;
  std::vector<Tensor> in = make_inputs(c, 50);
  std::vector<Tensor> mixed = detached(in, DType::Float64);
  for (int i : {2, 5, 6, 7}) mixed[i] = mixed[i].to(DType::Float32).set_requires_grad(true);
  mixed[0].set_requires_grad(true);
  ops::SsdResult result = run_ssd(c, mixed);
  CHECK(result.y.dtype() == DType::Float64);
  // The same values in float64 throughout: the parameters are only widened.
  std::vector<Tensor> widened = mixed;
  for (Tensor& t : widened) t = t.detach().to(DType::Float64);
  check_close(result.y.to_vector<double>(), run_ssd(c, widened).y.to_vector<double>(), 0.0);
  autograd::backward(ops::sum(result.y));
  for (int i : {2, 5, 6, 7}) {
    REQUIRE(mixed[i].grad().defined());
    CHECK(mixed[i].grad().dtype() == DType::Float32);
  }
  CHECK(mixed[0].grad().dtype() == DType::Float64);
}

TEST_CASE("ssd_chunked rejects bad arguments with messages that name them") {
  SsdCase c;
  std::vector<Tensor> in = make_inputs(c, 60);
  const Tensor &x = in[0], &dt = in[1], &A = in[2], &B = in[3], &C = in[4];
  auto with = [](auto change) {
    ops::SsdOptions options;
    change(options);
    return options;
  };
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(ops::reshape(x, {2, 7, 6}), dt, A, B, C),
                       doctest::Contains("ssd_chunked: x float64[2, 7, 6] on cpu must be (batch, length, heads, "
                                         "head_dim)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(x, ops::slice(dt, 1, 0, 6), A, B, C),
                       doctest::Contains("dt float64[2, 6, 2] on cpu must have shape [2, 7, 2] (batch, length, heads)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(x, dt, Tensor::zeros({3}, DType::Float64), B, C),
                       doctest::Contains("A float64[3] on cpu must have shape [2] (heads)"), Error);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(x, dt, A, B, ops::slice(C, 3, 0, 1)),
                       doctest::Contains("C float64[2, 7, 1, 1] on cpu must have shape [2, 7, 1, 2]"), Error);
  Tensor three_groups = Tensor::zeros({2, 7, 3, 2}, DType::Float64);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(x, dt, A, three_groups, three_groups),
                       doctest::Contains("the 2 heads of x float64[2, 7, 2, 3] on cpu are not divisible by the 3 "
                                         "groups of B"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(x, dt, A, B.to(DType::Float32), C),
                       doctest::Contains("B float32[2, 7, 1, 2] on cpu must have the dtype of x (float64)"), Error);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(x, dt, A, B, C, with([](auto& o) { o.chunk_size = 0; })),
                       doctest::Contains("ssd_chunked: chunk_size must be positive, got 0"), Error);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(x, dt, A, B, C, with([](auto& o) {
                                          o.D = Tensor::zeros({2, 1}, DType::Float64);
                                        })),
                       doctest::Contains("D float64[2, 1] on cpu must have shape [2] (heads)"), Error);
  CHECK_THROWS_WITH_AS(
      ops::ssd_chunked(x, dt, A, B, C, with([](auto& o) { o.dt_bias = Tensor::zeros({2}, DType::Int64); })),
      doctest::Contains("dt_bias int64[2] on cpu must be float64 or float32"), Error);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(x, dt, A, B, C, with([](auto& o) {
                                          o.initial_state = Tensor::zeros({2, 2, 2, 3}, DType::Float64);
                                        })),
                       doctest::Contains("initial_state float64[2, 2, 2, 3] on cpu must have shape [2, 2, 3, 2] "
                                         "(batch, heads, head_dim, d_state)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(x.to(DType::Int32), dt, A, B, C),
                       doctest::Contains("ssd_chunked: int32[2, 7, 2, 3] on cpu is not supported"), Error);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(Tensor::zeros({2, 0, 2, 3}, DType::Float64), dt, A, B, C),
                       doctest::Contains("must not be empty"), Error);
  CHECK_THROWS_WITH_AS(ops::ssd_chunked(x, Tensor(), A, B, C),
                       doctest::Contains("ssd_chunked: dt is an undefined tensor"), Error);
}

// ---- gated RMSNorm ------------------------------------------------------------------------

namespace {

// rms_norm(x * silu(z)) over groups of the last dim, from basic ops.
Tensor composed_gated_rms_norm(const Tensor& x, const Tensor& z, const Tensor& weight, double eps, int64_t group_size) {
  Tensor g = z.defined() ? ops::mul(x, ops::silu(z)) : x;
  Shape grouped = x.shape();
  grouped.back() /= group_size;
  grouped.push_back(group_size);
  Tensor normed = ops::reshape(ops::rms_norm(ops::reshape(g, grouped), Tensor(), eps), x.shape());
  return weight.defined() ? ops::mul(normed, weight) : normed;
}

}  // namespace

TEST_CASE("gated_rms_norm equals rms_norm(x * silu(z)) over groups") {
  Tensor x = testing::random({3, 4, 12}, 1), z = testing::random({3, 4, 12}, 2, DType::Float64, -3.0, 3.0);
  Tensor weight = testing::random({12}, 3, DType::Float64, 0.5, 1.5);
  for (int64_t group_size : {0, 12, 4, 1}) {
    CAPTURE(group_size);
    const int64_t size = group_size == 0 ? 12 : group_size;
    check_close(ops::gated_rms_norm(x, z, weight, 1e-5, group_size).to_vector<double>(),
                composed_gated_rms_norm(x, z, weight, 1e-5, size).to_vector<double>(), 1e-14);
    check_close(ops::gated_rms_norm(x, Tensor(), Tensor(), 1e-5, group_size).to_vector<double>(),
                composed_gated_rms_norm(x, Tensor(), Tensor(), 1e-5, size).to_vector<double>(), 1e-14);
  }
  // float32 stays float32, within float32 rounding of the float64 result.
  Tensor y32 = ops::gated_rms_norm(x.to(DType::Float32), z.to(DType::Float32), weight.to(DType::Float32), 1e-5, 4);
  CHECK(y32.dtype() == DType::Float32);
  check_close(y32.to_vector<double>(), ops::gated_rms_norm(x, z, weight, 1e-5, 4).to_vector<double>(), 1e-5);
}

TEST_CASE("gated_rms_norm gradients match finite differences") {
  auto leaf = [](const Shape& shape, uint64_t seed, double low, double high) {
    return testing::random(shape, seed, DType::Float64, low, high).set_requires_grad(true);
  };
  Tensor x = leaf({2, 3, 8}, 1, -1.0, 1.0), z = leaf({2, 3, 8}, 2, -3.0, 3.0), weight = leaf({8}, 3, 0.5, 1.5);
  SUBCASE("gate, weight, one group") {
    testing::check_gradients([](const auto& in) { return ops::gated_rms_norm(in[0], in[1], in[2], 1e-5, 0); },
                             {x, z, weight});
  }
  SUBCASE("gate, weight, groups of 4 and of 1") {
    for (int64_t group_size : {4, 1})
      testing::check_gradients(
          [group_size](const auto& in) { return ops::gated_rms_norm(in[0], in[1], in[2], 1e-5, group_size); },
          {x, z, weight});
  }
  SUBCASE("no gate") {
    testing::check_gradients([](const auto& in) { return ops::gated_rms_norm(in[0], Tensor(), in[1], 1e-5, 2); },
                             {x, weight});
  }
  SUBCASE("no weight, non-contiguous x") {
    Tensor stored = leaf({2, 8, 3}, 4, -1.0, 1.0);
    testing::check_gradients(
        [](const auto& in) { return ops::gated_rms_norm(ops::transpose(in[0], 1, 2), in[1], Tensor(), 1e-5, 4); },
        {stored, z});
  }
}

TEST_CASE("gated_rms_norm rejects bad arguments with messages that name them") {
  Tensor x = testing::random({2, 6}, 1), z = testing::random({2, 6}, 2), weight = testing::random({6}, 3);
  CHECK_THROWS_WITH_AS(
      ops::gated_rms_norm(x, z, weight, 1e-5, 4),
      doctest::Contains("gated_rms_norm: group_size 4 does not divide the last dim of x float64[2, 6]"), Error);
  CHECK_THROWS_WITH_AS(ops::gated_rms_norm(x, ops::reshape(z, {6, 2}), weight),
                       doctest::Contains("z float64[6, 2] on cpu must have the shape of x float64[2, 6] on cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::gated_rms_norm(x, z, testing::random({4}, 3)),
                       doctest::Contains("weight float64[4] on cpu must have shape [6] (dim)"), Error);
  CHECK_THROWS_WITH_AS(ops::gated_rms_norm(x, z.to(DType::Float32), weight),
                       doctest::Contains("z float32[2, 6] on cpu must have the dtype of x (float64)"), Error);
  CHECK_THROWS_WITH_AS(ops::gated_rms_norm(x, z, weight, 1e-5, -2), doctest::Contains("group_size -2 does not divide"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::gated_rms_norm(Tensor::zeros({2, 0}, DType::Float64), Tensor(), Tensor()),
                       doctest::Contains("has no last dim to normalise over"), Error);
}
