// MambaBlock and Mamba2Block on the CPU: parameter names, shapes and weight-decay
// flags of every variant; the papers' initialisation; MambaBlock's forward pass
// against plain loops over doubles written here from the equations of
// include/strata/nn/mamba.h; the bidirectional block as the mean of two
// unidirectional blocks, one run on the flipped sequence with the "_b" parameters;
// finite-difference gradients in double for the input and every parameter; the
// one-token step (for Mamba2Block a recurrence written with
// plain ops, independent of the chunked SSD) against the full forward; and the
// messages of bad arguments.
#include <cmath>
#include <map>

#include "strata/nn/mamba.h"
#include "strata/ops/ops.h"
#include "support/check.h"

using namespace strata;

namespace {

nn::MambaOptions tiny_options(bool lti = false, bool bidirectional = false) {
  nn::MambaOptions o;
  o.d_model = 4;
  o.d_state = 3;
  o.expand = 2;  // d_inner 8
  o.d_conv = 3;
  o.dt_rank = 2;
  o.lti = lti;
  o.bidirectional = bidirectional;
  return o;
}

struct ParameterInfo {
  Shape shape;
  bool weight_decay;
};

std::vector<std::pair<std::string, ParameterInfo>> parameter_table(const nn::Module& module) {
  std::vector<std::pair<std::string, ParameterInfo>> table;
  for (const nn::NamedParameter& p : module.named_parameters())
    table.push_back({p.name, ParameterInfo{p.tensor.shape(), p.weight_decay}});
  return table;
}

void check_table(const nn::Module& module, const std::vector<std::pair<std::string, ParameterInfo>>& expected) {
  auto actual = parameter_table(module);
  REQUIRE(actual.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    CAPTURE(expected[i].first);
    CHECK(actual[i].first == expected[i].first);
    CHECK(actual[i].second.shape == expected[i].second.shape);
    CHECK(actual[i].second.weight_decay == expected[i].second.weight_decay);
  }
}

std::map<std::string, std::vector<double>> parameter_values(const nn::Module& module) {
  std::map<std::string, std::vector<double>> values;
  for (const nn::NamedParameter& p : module.named_parameters()) values[p.name] = p.tensor.to_vector<double>();
  return values;
}

// The name in a bidirectional block of the backward counterpart of a
// unidirectional block's parameter: conv1d.weight -> conv1d_b.weight, A_log ->
// A_b_log, D -> D_b, ...; in_proj and out_proj are shared.
std::string backward_name(const std::string& name) {
  if (name.rfind("in_proj.", 0) == 0 || name.rfind("out_proj.", 0) == 0) return name;
  if (name == "A_log") return "A_b_log";
  const size_t dot = name.find('.');
  return dot == std::string::npos ? name + "_b" : name.substr(0, dot) + "_b" + name.substr(dot);
}

double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }
double silu(double x) { return x / (1.0 + std::exp(-x)); }

// The block as loops over doubles: u (batch, L, d_model) row-major -> out, same layout.
std::vector<double> naive_block(const nn::MambaBlock& block, const std::vector<double>& u, int64_t batch,
                                int64_t length) {
  const nn::MambaOptions& o = block.options();
  const int64_t Dm = o.d_model, Di = o.d_inner(), N = o.d_state, K = o.d_conv, R = block.dt_rank();
  auto p = parameter_values(block);
  const std::vector<double>&W_in = p["in_proj.weight"], &W_out = p["out_proj.weight"];
  std::vector<double> out(static_cast<size_t>(batch * length * Dm), 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    // in_proj.
    std::vector<std::vector<double>> x(length, std::vector<double>(Di)), z = x;
    for (int64_t t = 0; t < length; ++t)
      for (int64_t j = 0; j < 2 * Di; ++j) {
        double sum = 0;
        for (int64_t i = 0; i < Dm; ++i) sum += W_in[j * Dm + i] * u[(b * length + t) * Dm + i];
        (j < Di ? x[t][j] : z[t][j - Di]) = sum;
      }
    const int directions = o.bidirectional ? 2 : 1;
    std::vector<std::vector<double>> y_total(length, std::vector<double>(Di, 0.0));
    for (int direction = 0; direction < directions; ++direction) {
      auto name = [&](const std::string& base) {
        return direction == 0 ? base : (base == "A_log" ? std::string("A_b_log") : base + "_b");
      };
      // The direction's conv and silu on the x half: causal forward (taps on t - K + 1
      // .. t), anti-causal backward (the conv over the flipped sequence: taps on
      // t + K - 1 .. t).
      const std::vector<double>&conv_w = p[name("conv1d") + ".weight"], &conv_b = p[name("conv1d") + ".bias"];
      std::vector<std::vector<double>> xc(length, std::vector<double>(Di));
      for (int64_t t = 0; t < length; ++t)
        for (int64_t c = 0; c < Di; ++c) {
          double sum = conv_b[c];
          for (int64_t k = 0; k < K; ++k) {
            int64_t source = direction == 0 ? t - (K - 1) + k : t + (K - 1) - k;
            if (source >= 0 && source < length) sum += conv_w[c * K + k] * x[source][c];
          }
          xc[t][c] = silu(sum);
        }
      const std::vector<double>&A_log = p[name("A_log")], &D = p[name("D")];
      // delta (L, Di) after softplus; B, C (L, Di, N).
      std::vector<std::vector<double>> delta(length, std::vector<double>(Di));
      std::vector<std::vector<std::vector<double>>> Bm(length, std::vector<std::vector<double>>(Di, std::vector<double>(N))),
          Cm = Bm;
      for (int64_t t = 0; t < length; ++t) {
        if (o.lti) {
          for (int64_t c = 0; c < Di; ++c) {
            delta[t][c] = softplus(p[name("dt_bias")][c]);
            for (int64_t n = 0; n < N; ++n) {
              Bm[t][c][n] = p[name("B")][n];
              Cm[t][c][n] = p[name("C")][n];
            }
          }
          continue;
        }
        const std::vector<double>&W_x = p[name("x_proj") + ".weight"], &W_dt = p[name("dt_proj") + ".weight"],
                         &dt_bias = p[name("dt_proj") + ".bias"];
        std::vector<double> projected(R + 2 * N, 0.0);
        for (int64_t j = 0; j < R + 2 * N; ++j)
          for (int64_t c = 0; c < Di; ++c) projected[j] += W_x[j * Di + c] * xc[t][c];
        for (int64_t c = 0; c < Di; ++c) {
          double sum = dt_bias[c];
          for (int64_t r = 0; r < R; ++r) sum += W_dt[c * R + r] * projected[r];
          delta[t][c] = softplus(sum);
          for (int64_t n = 0; n < N; ++n) {
            Bm[t][c][n] = projected[R + n];
            Cm[t][c][n] = projected[R + N + n];
          }
        }
      }
      for (int64_t c = 0; c < Di; ++c) {
        std::vector<double> h(N, 0.0);
        for (int64_t step = 0; step < length; ++step) {
          const int64_t t = direction == 0 ? step : length - 1 - step;
          double y = D[c] * xc[t][c];
          for (int64_t n = 0; n < N; ++n) {
            h[n] = std::exp(-delta[t][c] * std::exp(A_log[c * N + n])) * h[n] + delta[t][c] * Bm[t][c][n] * xc[t][c];
            y += Cm[t][c][n] * h[n];
          }
          y_total[t][c] += y * silu(z[t][c]) / directions;  // Vim's mean of the two directions
        }
      }
    }
    for (int64_t t = 0; t < length; ++t)
      for (int64_t m = 0; m < Dm; ++m) {
        double sum = 0;
        for (int64_t c = 0; c < Di; ++c) sum += W_out[m * Di + c] * y_total[t][c];
        out[(b * length + t) * Dm + m] = sum;
      }
  }
  return out;
}

// Overwrites every parameter with U(low, high) values around its initial ones, so
// that no gradient is checked at a special point (D = 1, B = 1, ...).
void perturb(nn::Module& module, uint64_t seed, double scale) {
  for (const nn::NamedParameter& p : module.named_parameters()) {
    Tensor target = p.tensor;
    target.copy_(ops::add(p.tensor.detach(), testing::random(p.tensor.shape(), seed++, p.tensor.dtype(), -scale, scale)));
  }
}

}  // namespace

TEST_CASE("MambaBlock registers the reference's parameters, without weight decay on A_log, D and the dt bias") {
  Generator generator{1, 0};
  const Shape inner{8}, a_shape{8, 3};
  nn::MambaBlock selective(tiny_options(), generator);
  check_table(selective, {{"A_log", {a_shape, false}},
                          {"D", {inner, false}},
                          {"in_proj.weight", {{16, 4}, true}},
                          {"conv1d.weight", {{8, 3}, true}},
                          {"conv1d.bias", {inner, false}},
                          {"x_proj.weight", {{2 + 2 * 3, 8}, true}},
                          {"dt_proj.weight", {{8, 2}, true}},
                          {"dt_proj.bias", {inner, false}},
                          {"out_proj.weight", {{4, 8}, true}}});

  nn::MambaBlock lti(tiny_options(true), generator);
  check_table(lti, {{"B", {{3}, false}},
                    {"C", {{3}, false}},
                    {"dt_bias", {inner, false}},
                    {"A_log", {a_shape, false}},
                    {"D", {inner, false}},
                    {"in_proj.weight", {{16, 4}, true}},
                    {"conv1d.weight", {{8, 3}, true}},
                    {"conv1d.bias", {inner, false}},
                    {"out_proj.weight", {{4, 8}, true}}});

  nn::MambaBlock bidirectional(tiny_options(false, true), generator);
  check_table(bidirectional, {{"A_log", {a_shape, false}},
                              {"D", {inner, false}},
                              {"A_b_log", {a_shape, false}},
                              {"D_b", {inner, false}},
                              {"in_proj.weight", {{16, 4}, true}},
                              {"conv1d.weight", {{8, 3}, true}},
                              {"conv1d.bias", {inner, false}},
                              {"x_proj.weight", {{8, 8}, true}},
                              {"dt_proj.weight", {{8, 2}, true}},
                              {"dt_proj.bias", {inner, false}},
                              {"conv1d_b.weight", {{8, 3}, true}},
                              {"conv1d_b.bias", {inner, false}},
                              {"x_proj_b.weight", {{8, 8}, true}},
                              {"dt_proj_b.weight", {{8, 2}, true}},
                              {"dt_proj_b.bias", {inner, false}},
                              {"out_proj.weight", {{4, 8}, true}}});

  nn::MambaBlock lti_bidirectional(tiny_options(true, true), generator);
  check_table(lti_bidirectional, {{"B", {{3}, false}},
                                  {"C", {{3}, false}},
                                  {"dt_bias", {inner, false}},
                                  {"A_log", {a_shape, false}},
                                  {"D", {inner, false}},
                                  {"B_b", {{3}, false}},
                                  {"C_b", {{3}, false}},
                                  {"dt_bias_b", {inner, false}},
                                  {"A_b_log", {a_shape, false}},
                                  {"D_b", {inner, false}},
                                  {"in_proj.weight", {{16, 4}, true}},
                                  {"conv1d.weight", {{8, 3}, true}},
                                  {"conv1d.bias", {inner, false}},
                                  {"conv1d_b.weight", {{8, 3}, true}},
                                  {"conv1d_b.bias", {inner, false}},
                                  {"out_proj.weight", {{4, 8}, true}}});

  nn::MambaOptions automatic = tiny_options();
  automatic.d_model = 40;
  automatic.dt_rank = 0;
  CHECK(nn::MambaBlock(automatic, generator).dt_rank() == 3);  // ceil(40 / 16)
}

TEST_CASE("MambaBlock starts from the paper's initialisation, in both directions") {
  nn::MambaOptions o;
  o.d_model = 256;  // d_inner 512 step sizes: enough draws to see the whole range
  o.d_state = 16;
  for (auto [lti, bidirectional] : {std::pair{false, false}, {true, false}, {false, true}, {true, true}}) {
    CAPTURE(lti);
    CAPTURE(bidirectional);
    o.lti = lti;
    o.bidirectional = bidirectional;
    Generator generator{7, 0};
    nn::MambaBlock block(o, generator);
    auto p = parameter_values(block);
    const int64_t d_inner = 512, N = 16;
    for (int direction = 0; direction < (bidirectional ? 2 : 1); ++direction) {
      CAPTURE(direction);
      auto name = [&](const std::string& base) {
        return direction == 0 ? base : (base == "A_log" ? std::string("A_b_log") : base + "_b");
      };
      // S4D-real: A_log[d, n] = log(n + 1) in every channel; D = 1.
      const std::vector<double>& A_log = p[name("A_log")];
      REQUIRE(A_log.size() == static_cast<size_t>(d_inner * N));
      for (int64_t d = 0; d < d_inner; ++d)
        for (int64_t n = 0; n < N; ++n) REQUIRE(A_log[d * N + n] == static_cast<double>(std::log(float(n + 1))));
      for (double v : p[name("D")]) REQUIRE(v == 1.0);

      // The conv as PyTorch's Conv1d: U(-1/sqrt(d_conv), 1/sqrt(d_conv)) with d_conv 4, filling the range.
      double largest_tap = 0;
      for (double w : p[name("conv1d") + ".weight"]) largest_tap = std::max(largest_tap, std::fabs(w));
      CHECK(largest_tap <= 0.5);
      CHECK(largest_tap > 0.49);

      // softplus(dt bias) log-uniform in [1e-3, 1e-1]: inside the range (up to the
      // float32 rounding of the bias), covering it, and centred at 1e-2 in log space.
      const std::vector<double>& bias = lti ? p[name("dt_bias")] : p[name("dt_proj") + ".bias"];
      REQUIRE(bias.size() == static_cast<size_t>(d_inner));
      double low = INFINITY, high = 0, log_sum = 0;
      for (double b : bias) {
        double dt = softplus(b);
        low = std::min(low, dt);
        high = std::max(high, dt);
        log_sum += std::log(dt);
      }
      CHECK(low >= 1e-3 * (1 - 1e-5));
      CHECK(high <= 1e-1 * (1 + 1e-5));
      CHECK(low < 1.2e-3);
      CHECK(high > 0.08);
      CHECK(std::exp(log_sum / d_inner) == doctest::Approx(1e-2).epsilon(0.25));  // 4 standard errors

      if (lti) {
        for (double v : p[name("B")]) REQUIRE(v == 1.0);
        double sum = 0, squares = 0;
        for (double v : p[name("C")]) sum += v, squares += v * v;
        const double count = static_cast<double>(N);
        CHECK(std::fabs(sum / count) < 1.0);  // N(0, 1): mean 0 within 4 standard errors of 16 draws
        CHECK(std::sqrt(squares / count) == doctest::Approx(1.0).epsilon(0.5));
      } else {
        // dt_proj.weight ~ U(-R^-1/2, R^-1/2), R = ceil(256 / 16) = 16.
        double largest = 0;
        for (double w : p[name("dt_proj") + ".weight"]) largest = std::max(largest, std::fabs(w));
        CHECK(largest <= 0.25);
        CHECK(largest > 0.24);
      }
    }
    if (bidirectional) {
      // The backward direction draws its own values: nothing is a copy of the forward one.
      for (const std::string& base : lti ? std::vector<std::string>{"conv1d.weight", "conv1d.bias", "C", "dt_bias"}
                                         : std::vector<std::string>{"conv1d.weight", "conv1d.bias", "x_proj.weight",
                                                                    "dt_proj.weight", "dt_proj.bias"}) {
        CAPTURE(base);
        CHECK(p[base] != p[backward_name(base)]);
      }
    }
  }

  // Another range and a floor above part of it.
  o.lti = false;
  o.dt_min = 1e-4;
  o.dt_max = 1e-3;
  o.dt_init_floor = 5e-4;
  Generator generator{8, 0};
  nn::MambaBlock floored(o, generator);
  double low = INFINITY, high = 0;
  auto floored_values = parameter_values(floored);
  for (double b : floored_values["dt_proj.bias"]) {
    low = std::min(low, softplus(b));
    high = std::max(high, softplus(b));
  }
  CHECK(low == doctest::Approx(5e-4).epsilon(1e-5));
  CHECK(high <= 1e-3 * (1 + 1e-5));
}

TEST_CASE("MambaBlock forward matches plain loops, for S6, LTI and bidirectional blocks") {
  const int64_t batch = 2, length = 7;
  for (auto [lti, bidirectional] : {std::pair{false, false}, {true, false}, {false, true}, {true, true}}) {
    CAPTURE(lti);
    CAPTURE(bidirectional);
    Generator generator{21, 0};
    nn::MambaBlock block(tiny_options(lti, bidirectional), generator);
    block.to(DType::Float64);
    perturb(block, 100, 0.3);
    Tensor u = testing::random({batch, length, 4}, 5);
    Tensor out = block.forward(u);
    CHECK(out.shape() == Shape{batch, length, 4});
    std::vector<double> expected = naive_block(block, u.to_vector<double>(), batch, length);
    double error = testing::max_abs_difference(out, Tensor::from_vector(expected, {batch, length, 4}));
    CHECK_MESSAGE(error < 1e-12, "max |block - loops| = " << error);
  }
}

namespace {

// a with its length dim (1) in reverse order, by plain copies.
Tensor flip_length(const Tensor& a) {
  std::vector<Tensor> positions;
  for (int64_t t = a.size(1) - 1; t >= 0; --t) positions.push_back(ops::slice(a, 1, t, t + 1));
  return ops::concat(positions, 1);
}

// Overwrites every parameter of `target` with its counterpart in `source` (the
// backward one when asked).
void copy_direction(const nn::MambaBlock& source, nn::MambaBlock& target, bool backward) {
  std::map<std::string, Tensor> by_name;
  for (const nn::NamedParameter& p : source.named_parameters()) by_name[p.name] = p.tensor;
  for (const nn::NamedParameter& p : target.named_parameters()) {
    const std::string name = backward ? backward_name(p.name) : p.name;
    CAPTURE(name);
    REQUIRE(by_name.count(name) == 1);
    Tensor destination = p.tensor;
    destination.copy_(by_name[name].detach());
  }
}

}  // namespace

TEST_CASE("A bidirectional MambaBlock is the mean of its forward block and its backward block run on the flipped "
          "sequence") {
  // out(u) = (forward(u) + flip(backward(flip(u)))) / 2, where forward and backward
  // are unidirectional blocks holding the bidirectional block's forward and "_b"
  // parameters: out_proj is linear, so averaging before it equals averaging after.
  // Lengths below and above d_conv.
  for (auto [lti, length] : {std::pair{false, int64_t{7}}, {true, int64_t{7}}, {false, int64_t{2}}}) {
    CAPTURE(lti);
    CAPTURE(length);
    Generator generator{81, 0};
    nn::MambaBlock both(tiny_options(lti, true), generator);
    nn::MambaBlock forward(tiny_options(lti, false), generator), backward(tiny_options(lti, false), generator);
    for (nn::Module* block : std::vector<nn::Module*>{&both, &forward, &backward}) block->to(DType::Float64);
    perturb(both, 600, 0.3);
    copy_direction(both, forward, false);
    copy_direction(both, backward, true);
    Tensor u = testing::random({2, length, 4}, 19);
    autograd::NoGradGuard no_grad;
    Tensor expected = ops::mul(ops::add(forward.forward(u), flip_length(backward.forward(flip_length(u)))), 0.5);
    double error = testing::max_abs_difference(both.forward(u), expected);
    CHECK_MESSAGE(error < 1e-13, "max |bidirectional - (forward + flipped backward) / 2| = " << error);
    // The backward direction matters: the forward block alone is something else.
    CHECK(testing::max_abs_difference(both.forward(u), forward.forward(u)) > 1e-3);
  }
}

TEST_CASE("A bidirectional MambaBlock draws its shared and forward parameters as the unidirectional block does") {
  // The backward direction is drawn after the forward one and before out_proj, so
  // from one seed everything up to it matches the unidirectional block.
  for (bool lti : {false, true}) {
    CAPTURE(lti);
    Generator first{91, 0}, second{91, 0};
    auto unidirectional = parameter_values(nn::MambaBlock(tiny_options(lti, false), first));
    auto bidirectional = parameter_values(nn::MambaBlock(tiny_options(lti, true), second));
    for (const auto& [name, values] : unidirectional) {
      CAPTURE(name);
      if (name == "out_proj.weight") continue;
      CHECK(bidirectional.at(name) == values);
    }
  }
}

TEST_CASE("MambaBlock gradients match finite differences in double, for every variant") {
  for (auto [lti, bidirectional] : {std::pair{false, false}, {true, false}, {false, true}, {true, true}}) {
    CAPTURE(lti);
    CAPTURE(bidirectional);
    Generator generator{31, 0};
    nn::MambaBlock block(tiny_options(lti, bidirectional), generator);
    block.to(DType::Float64);
    perturb(block, 200, 0.3);
    std::vector<Tensor> inputs{testing::random({2, 5, 4}, 9).set_requires_grad(true)};
    for (const Tensor& p : block.parameters()) inputs.push_back(p);
    testing::check_gradients([&](const std::vector<Tensor>& xs) { return block.forward(xs[0]); }, inputs);
  }
}

TEST_CASE("MambaBlock step reproduces forward position by position") {
  const int64_t batch = 3, length = 9;
  for (bool lti : {false, true}) {
    CAPTURE(lti);
    Generator generator{41, 0};
    nn::MambaBlock block(tiny_options(lti), generator);
    block.to(DType::Float64);
    perturb(block, 300, 0.3);
    Tensor u = testing::random({batch, length, 4}, 11);
    autograd::NoGradGuard no_grad;
    Tensor full = block.forward(u);
    nn::MambaDecodingState state = block.start_decoding(batch);
    CHECK(state.conv_state.shape() == Shape{batch, 8, 2});
    CHECK(state.ssm_state.shape() == Shape{batch, 8, 3});
    double worst = 0;
    for (int64_t t = 0; t < length; ++t) {
      Tensor out_t = block.step(ops::squeeze(ops::slice(u, 1, t, t + 1), 1), state);
      Tensor expected = ops::squeeze(ops::slice(full, 1, t, t + 1), 1);
      worst = std::max(worst, testing::max_abs_difference(out_t, expected));
    }
    CHECK_MESSAGE(worst < 1e-12, "max |step - forward| = " << worst);
  }

  // float32 blocks keep a float32 state.
  Generator generator{42, 0};
  nn::MambaBlock single(tiny_options(), generator);
  nn::MambaDecodingState state = single.start_decoding(2);
  CHECK(state.conv_state.dtype() == DType::Float32);
  CHECK(state.ssm_state.dtype() == DType::Float32);
}

TEST_CASE("MambaBlock rejects bad options and inputs with messages that say what is wrong") {
  Generator generator{0, 0};
  nn::MambaOptions o = tiny_options();
  o.d_conv = 9;
  CHECK_THROWS_WITH_AS(nn::MambaBlock(o, generator), doctest::Contains("d_conv must be in 2..8, got 9"), Error);
  o = tiny_options();
  o.dt_min = 0.2;
  CHECK_THROWS_WITH_AS(nn::MambaBlock(o, generator), doctest::Contains("need 0 < dt_min <= dt_max"), Error);

  nn::MambaBlock block(tiny_options(), generator);
  CHECK_THROWS_WITH_AS(block.forward(Tensor::zeros({2, 5, 3})),
                       doctest::Contains("MambaBlock: expected u (batch, length, 4), got float32[2, 5, 3] on cpu"),
                       Error);
  nn::MambaDecodingState state = block.start_decoding(2);
  autograd::NoGradGuard no_grad;
  CHECK_THROWS_WITH_AS(block.step(Tensor::zeros({2, 1, 4}), state),
                       doctest::Contains("MambaBlock::step: expected u_t (batch, 4)"), Error);

  nn::MambaBlock bidirectional(tiny_options(false, true), generator);
  CHECK_THROWS_WITH_AS(bidirectional.start_decoding(1), doctest::Contains("cannot decode token by token"), Error);
}

namespace {

// d_inner 8 in 4 heads of 2 channels, 2 groups of B and C, chunks shorter than the
// test sequences.
nn::Mamba2Options tiny_mamba2_options() {
  nn::Mamba2Options o;
  o.d_model = 4;
  o.d_state = 3;
  o.expand = 2;
  o.d_conv = 3;
  o.head_dim = 2;
  o.groups = 2;
  o.chunk_size = 3;
  return o;
}

}  // namespace

TEST_CASE("Mamba2Block registers the reference's parameters and starts from its initialisation") {
  Generator generator{51, 0};
  nn::Mamba2Block block(tiny_mamba2_options(), generator);
  const Shape heads{4};
  // in_proj: z (8), xBC (8 + 2 * 2 * 3), dt (4).
  check_table(block, {{"A_log", {heads, false}},
                      {"D", {heads, false}},
                      {"dt_bias", {heads, false}},
                      {"in_proj.weight", {{8 + 20 + 4, 4}, true}},
                      {"conv1d.weight", {{20, 3}, true}},
                      {"conv1d.bias", {{20}, false}},
                      {"norm.weight", {{8}, false}},
                      {"out_proj.weight", {{4, 8}, true}}});

  nn::Mamba2Options wide = tiny_mamba2_options();
  wide.d_model = 256;  // 512 / 2 = 256 heads: enough draws to see the ranges
  Generator wide_generator{52, 0};
  nn::Mamba2Block large(wide, wide_generator);
  auto p = parameter_values(large);
  double a_low = INFINITY, a_high = 0, dt_low = INFINITY, dt_high = 0;
  for (double a_log : p["A_log"]) {
    a_low = std::min(a_low, std::exp(a_log));
    a_high = std::max(a_high, std::exp(a_log));
  }
  for (double b : p["dt_bias"]) {
    dt_low = std::min(dt_low, softplus(b));
    dt_high = std::max(dt_high, softplus(b));
  }
  CHECK(a_low >= 1.0 - 1e-6);  // A = -U(1, 16)
  CHECK(a_high <= 16.0 + 1e-5);
  CHECK(a_low < 1.5);
  CHECK(a_high > 15.0);
  CHECK(dt_low >= 1e-3 * (1 - 1e-5));
  CHECK(dt_high <= 1e-1 * (1 + 1e-5));
  for (double v : p["D"]) REQUIRE(v == 1.0);
  for (double v : p["norm.weight"]) REQUIRE(v == 1.0);
}

TEST_CASE("Mamba2Block gradients match finite differences in double") {
  Generator generator{61, 0};
  nn::Mamba2Block block(tiny_mamba2_options(), generator);
  block.to(DType::Float64);
  perturb(block, 400, 0.3);
  std::vector<Tensor> inputs{testing::random({2, 7, 4}, 13).set_requires_grad(true)};
  for (const Tensor& p : block.parameters()) inputs.push_back(p);
  testing::check_gradients([&](const std::vector<Tensor>& xs) { return block.forward(xs[0]); }, inputs);
}

TEST_CASE("Mamba2Block step reproduces the chunked forward position by position") {
  const int64_t batch = 2, length = 8;
  Generator generator{71, 0};
  nn::Mamba2Block block(tiny_mamba2_options(), generator);
  block.to(DType::Float64);
  perturb(block, 500, 0.3);
  Tensor u = testing::random({batch, length, 4}, 17);
  autograd::NoGradGuard no_grad;
  Tensor full = block.forward(u);
  CHECK(full.shape() == Shape{batch, length, 4});
  nn::MambaDecodingState state = block.start_decoding(batch);
  CHECK(state.conv_state.shape() == Shape{batch, 20, 2});
  CHECK(state.ssm_state.shape() == Shape{batch, 4, 2, 3});
  double worst = 0;
  for (int64_t t = 0; t < length; ++t) {
    Tensor out_t = block.step(ops::squeeze(ops::slice(u, 1, t, t + 1), 1), state);
    worst = std::max(worst, testing::max_abs_difference(out_t, ops::squeeze(ops::slice(full, 1, t, t + 1), 1)));
  }
  CHECK_MESSAGE(worst < 1e-12, "max |step - forward| = " << worst);

  nn::Mamba2Options bad = tiny_mamba2_options();
  bad.head_dim = 3;
  CHECK_THROWS_WITH_AS(nn::Mamba2Block(bad, generator), doctest::Contains("is not a multiple of head_dim 3"), Error);
  bad = tiny_mamba2_options();
  bad.groups = 3;
  CHECK_THROWS_WITH_AS(nn::Mamba2Block(bad, generator), doctest::Contains("4 heads are not divisible into 3 groups"),
                       Error);
}
