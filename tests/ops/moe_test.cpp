#include <cmath>
#include <vector>

#include "strata/ops/moe.h"
#include "support/check.h"

using namespace strata;

namespace {

using testing::values;
std::vector<int64_t> integers(const Tensor& t) { return t.to_vector<int64_t>(); }

// Five tokens over three experts, chosen so that the top-2 of each row is known and
// token 2 holds a tie (experts 0 and 1).
Tensor example_logits() {
  return Tensor::from_vector<double>({3, 2, 1,   // t0 -> 0, 1
                                      1, 3, 2,   // t1 -> 1, 2
                                      2, 2, 0,   // t2 -> 0, 1 (tie: lower index first)
                                      0, 1, 5,   // t3 -> 2, 1
                                      5, 0, 4},  // t4 -> 0, 2
                                     {5, 3});
}

ops::MoERouteOptions top(int64_t k) {
  ops::MoERouteOptions options;
  options.top_k = k;
  return options;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

TEST_CASE("topk_indices orders by value, breaks ties by the lower index and ranks NaN as -inf") {
  Tensor row = Tensor::from_vector<double>({1, 3, 3, 2, NAN, -INFINITY}, {1, 6});
  CHECK(integers(ops::topk_indices(row, 6)) == std::vector<int64_t>{1, 2, 3, 0, 4, 5});
  CHECK(integers(ops::topk_indices(row, 2)) == std::vector<int64_t>{1, 2});
  Tensor rows = Tensor::from_vector<float>({0, 0, 0, 5, -1, 4}, {2, 3});
  Tensor picked = ops::topk_indices(rows, 1);
  CHECK(picked.dtype() == DType::Int32);
  CHECK(integers(picked) == std::vector<int64_t>{0, 0});
  // A transposed (non-contiguous) view gives the answer of its contiguous copy.
  Tensor columns = ops::transpose(rows, 0, 1);  // (3, 2)
  CHECK(integers(ops::topk_indices(columns, 2)) == std::vector<int64_t>{1, 0, 0, 1, 1, 0});
}

TEST_CASE("moe_route picks the top-k experts and their renormalised softmax weights") {
  ops::MoERouting routing = ops::moe_route(example_logits(), top(2));
  CHECK(integers(routing.expert_indices) == std::vector<int64_t>{0, 1, 1, 2, 0, 1, 2, 1, 0, 2});
  std::vector<double> w = values(routing.weights);
  const double e = std::exp(1.0);
  CHECK(w[0] == doctest::Approx(e / (e + 1)));  // softmax over the chosen logits 3 and 2
  CHECK(w[1] == doctest::Approx(1 / (e + 1)));
  CHECK(w[4] == doctest::Approx(0.5));  // the tie
  CHECK(w[5] == doctest::Approx(0.5));
  CHECK(w[8] == doctest::Approx(e / (e + 1)));  // 5 and 4
  CHECK(routing.capacity == 0);
  CHECK(routing.rows == 10);
  CHECK(values(routing.dropped) == std::vector<double>(10, 0.0));

  // Without renormalisation: the full softmax; sigmoid scores each logit alone.
  ops::MoERouteOptions plain = top(2);
  plain.renormalize = false;
  std::vector<double> full = values(ops::moe_route(example_logits(), plain).weights);
  const double partition = std::exp(3.0) + std::exp(2.0) + std::exp(1.0);
  CHECK(full[0] == doctest::Approx(std::exp(3.0) / partition));
  CHECK(full[1] == doctest::Approx(std::exp(2.0) / partition));
  plain.scoring = ops::RouterScoring::Sigmoid;
  std::vector<double> independent = values(ops::moe_route(example_logits(), plain).weights);
  CHECK(independent[6] == doctest::Approx(sigmoid(5.0)));
  CHECK(independent[7] == doctest::Approx(sigmoid(1.0)));
  plain.renormalize = true;
  std::vector<double> normalised = values(ops::moe_route(example_logits(), plain).weights);
  CHECK(normalised[6] == doctest::Approx(sigmoid(5.0) / (sigmoid(5.0) + sigmoid(1.0))));
}

TEST_CASE("the permutation is a stable counting sort by expert, the same on every call") {
  ops::MoERouting first = ops::moe_route(example_logits(), top(2));
  CHECK(integers(first.expert_offsets) == std::vector<int64_t>{0, 3, 7, 10});
  CHECK(integers(first.expert_counts) == std::vector<int64_t>{3, 4, 3});
  // Expert 0 holds assignments 0, 4, 8 (tokens 0, 2, 4), expert 1 tokens 0, 1, 2, 3, ...
  CHECK(integers(first.sorted_assignment) == std::vector<int64_t>{0, 4, 8, 1, 2, 5, 7, 3, 6, 9});
  CHECK(integers(first.assignment_row) == std::vector<int64_t>{0, 3, 4, 7, 1, 5, 8, 6, 2, 9});
  for (int run = 0; run < 3; ++run) {
    ops::MoERouting again = ops::moe_route(example_logits(), top(2));
    CHECK(integers(again.sorted_assignment) == integers(first.sorted_assignment));
    CHECK(integers(again.assignment_row) == integers(first.assignment_row));
  }

  // Many tokens: every expert's rows hold its tokens in increasing order, and the
  // rows are a permutation of the assignments.
  Tensor logits = testing::random({257, 7}, 5);
  ops::MoERouting routing = ops::moe_route(logits, top(3));
  std::vector<int64_t> sorted = integers(routing.sorted_assignment), offsets = integers(routing.expert_offsets);
  std::vector<int64_t> chosen = integers(routing.expert_indices), rows = integers(routing.assignment_row);
  REQUIRE(sorted.size() == 257u * 3u);
  for (int64_t e = 0; e < 7; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      CHECK(chosen[sorted[r]] == e);
      if (r > offsets[e]) CHECK(sorted[r - 1] < sorted[r]);
      CHECK(rows[sorted[r]] == r);
    }
}

TEST_CASE("capacity keeps each expert's first tokens and drops the rest") {
  ops::MoERouteOptions options = top(2);
  options.capacity_factor = 0.6;  // ceil(0.6 * 10 / 3) = 2 per expert
  ops::MoERouting routing = ops::moe_route(example_logits(), options);
  CHECK(routing.capacity == 2);
  CHECK(integers(routing.expert_counts) == std::vector<int64_t>{2, 2, 2});
  CHECK(integers(routing.expert_offsets) == std::vector<int64_t>{0, 2, 4, 6});
  CHECK(routing.rows == 6);
  // Expert 0 drops token 4 (its third), expert 1 tokens 2 and 3, expert 2 token 4.
  CHECK(values(routing.dropped) == std::vector<double>{0, 0, 0, 0, 0, 1, 0, 1, 1, 1});
  CHECK(integers(routing.assignment_row) == std::vector<int64_t>{0, 2, 3, 4, 1, -1, 5, -1, -1, -1});
  std::vector<double> w = values(routing.weights);
  CHECK(w[5] == 0.0);
  CHECK(w[8] == 0.0);
  CHECK(w[9] == 0.0);
  CHECK(w[4] == doctest::Approx(0.5));  // kept weights are not renormalised again

  // A token whose choices were all dropped combines to zeros; the others to their
  // kept weights times themselves (an identity expert).
  Tensor x = testing::random({5, 4}, 9);
  std::vector<double> y = values(ops::moe_combine(ops::moe_dispatch(x, routing), routing));
  std::vector<double> xs = values(x);
  for (int64_t t = 0; t < 5; ++t)
    for (int64_t c = 0; c < 4; ++c)
      CHECK(y[t * 4 + c] == doctest::Approx((w[2 * t] + w[2 * t + 1]) * xs[t * 4 + c]));

  options.capacity_factor = 0.9;  // ceil(3.0) = 3: only expert 1's fourth token (3) is dropped
  ops::MoERouting looser = ops::moe_route(example_logits(), options);
  CHECK(looser.capacity == 3);
  CHECK(integers(looser.expert_counts) == std::vector<int64_t>{3, 3, 3});
  CHECK(values(looser.dropped) == std::vector<double>{0, 0, 0, 0, 0, 0, 0, 1, 0, 0});
}

TEST_CASE("an expert no token chose, and a single token, route cleanly") {
  Tensor logits = Tensor::from_vector<double>({0, 4, 1, 0, 5, 2}, {2, 3});  // expert 0 is never chosen
  ops::MoERouting routing = ops::moe_route(logits, top(2));
  CHECK(integers(routing.expert_counts) == std::vector<int64_t>{0, 2, 2});
  CHECK(integers(routing.expert_offsets) == std::vector<int64_t>{0, 0, 2, 4});
  Tensor x = testing::random({2, 3}, 4);
  CHECK(testing::max_abs_difference(ops::moe_combine(ops::moe_dispatch(x, routing), routing), x) < 1e-12);

  Tensor one = Tensor::from_vector<double>({0.5, -1, 2, 0}, {1, 4});
  ops::MoERouting single = ops::moe_route(one, top(1));
  CHECK(integers(single.expert_indices) == std::vector<int64_t>{2});
  CHECK(values(single.weights) == std::vector<double>{1.0});
  CHECK(integers(single.expert_offsets) == std::vector<int64_t>{0, 0, 0, 1, 1});
  // One token: f = one-hot(2), so the load-balancing loss is E * P_2.
  double partition = std::exp(0.5) + std::exp(-1.0) + std::exp(2.0) + 1.0;
  CHECK(single.load_balancing_loss.item() == doctest::Approx(4 * std::exp(2.0) / partition));
}

TEST_CASE("the auxiliary losses match their formulas") {
  Tensor logits = example_logits();
  ops::MoERouting routing = ops::moe_route(logits, top(2));
  std::vector<double> l = values(logits);
  // f = the fraction of the 10 choices per expert: 3, 4, 3.
  std::vector<double> fraction = values(routing.router_fraction);
  CHECK(fraction[0] == doctest::Approx(0.3));
  CHECK(fraction[1] == doctest::Approx(0.4));
  CHECK(fraction[2] == doctest::Approx(0.3));
  double load = 0, z = 0;
  std::vector<double> mean_probability(3, 0.0);
  for (int t = 0; t < 5; ++t) {
    double partition = 0;
    for (int e = 0; e < 3; ++e) partition += std::exp(l[t * 3 + e]);
    for (int e = 0; e < 3; ++e) mean_probability[e] += std::exp(l[t * 3 + e]) / partition / 5;
    z += std::log(partition) * std::log(partition) / 5;
  }
  for (int e = 0; e < 3; ++e) load += 3 * fraction[e] * mean_probability[e];
  CHECK(routing.load_balancing_loss.item() == doctest::Approx(load));
  CHECK(routing.z_loss.item() == doctest::Approx(z));
  CHECK(routing.load_balancing_loss.dtype() == DType::Float64);
  CHECK(ops::moe_route(ops::cast(logits, DType::Float32), top(2)).z_loss.dtype() == DType::Float32);

  // Perfect balance: uniform logits and one token per expert give exactly 1.
  Tensor balanced = Tensor::from_vector<double>({9, 0, 0, 0, 9, 0, 0, 0, 9}, {3, 3});
  ops::MoERouting even = ops::moe_route(balanced, top(1));
  CHECK(even.load_balancing_loss.item() == doctest::Approx(1.0));

  // Sigmoid scoring: P_e uses the scores normalised over the experts.
  ops::MoERouteOptions options = top(1);
  options.scoring = ops::RouterScoring::Sigmoid;
  Tensor row = Tensor::from_vector<double>({1, -1}, {1, 2});
  double s0 = sigmoid(1.0), s1 = sigmoid(-1.0);
  CHECK(ops::moe_route(row, options).load_balancing_loss.item() == doctest::Approx(2 * s0 / (s0 + s1)));
}

TEST_CASE("router weights and auxiliary losses have the gradients of their formulas") {
  for (ops::RouterScoring scoring : {ops::RouterScoring::Softmax, ops::RouterScoring::Sigmoid})
    for (bool renormalize : {true, false})
      for (double capacity_factor : {0.0, 0.75}) {
        CAPTURE(ops::router_scoring_name(scoring));
        CAPTURE(renormalize);
        CAPTURE(capacity_factor);
        ops::MoERouteOptions options = top(2);
        options.scoring = scoring;
        options.renormalize = renormalize;
        options.capacity_factor = capacity_factor;
        Tensor logits = testing::random({9, 5}, 21, DType::Float64, -2, 2).set_requires_grad(true);
        testing::check_gradients([&](const std::vector<Tensor>& in) { return ops::moe_route(in[0], options).weights; },
                                 {logits});
        testing::check_gradients(
            [&](const std::vector<Tensor>& in) { return ops::moe_route(in[0], options).load_balancing_loss; },
            {logits});
        testing::check_gradients([&](const std::vector<Tensor>& in) { return ops::moe_route(in[0], options).z_loss; },
                                 {logits});
      }
  // A dropped choice gets no gradient: its weight is a constant 0.
  ops::MoERouteOptions options = top(2);
  options.capacity_factor = 0.6;
  Tensor logits = example_logits().set_requires_grad(true);
  ops::MoERouting routing = ops::moe_route(logits, options);
  autograd::backward(ops::sum(ops::mul(routing.weights, Tensor::full({5, 2}, 1.0, DType::Float64))));
  std::vector<double> grad = values(logits.grad());
  for (int e = 0; e < 3; ++e) CHECK(grad[4 * 3 + e] == 0.0);  // token 4 lost both choices
}

TEST_CASE("chunk-level routing routes each chunk by its mean logits") {
  // Two sequences of 5 tokens, chunks of 2: (0, 1), (2, 3), (4) in each.
  Tensor logits = testing::random({10, 4}, 33, DType::Float64, -2, 2);
  ops::MoERouteOptions options = top(2);
  options.chunk_size = 2;
  options.sequence_length = 5;
  ops::MoERouting chunked = ops::moe_route(logits, options);

  std::vector<double> l = values(logits), mean_logits(40);
  for (int64_t t = 0; t < 10; ++t) {
    int64_t position = t % 5, start = t - position + position / 2 * 2, size = position == 4 ? 1 : 2;
    for (int64_t e = 0; e < 4; ++e) {
      double sum = 0;
      for (int64_t u = start; u < start + size; ++u) sum += l[u * 4 + e];
      mean_logits[t * 4 + e] = sum / static_cast<double>(size);
    }
  }
  ops::MoERouting reference = ops::moe_route(Tensor::from_vector<double>(mean_logits, {10, 4}), top(2));
  CHECK(integers(chunked.expert_indices) == integers(reference.expert_indices));
  CHECK(testing::max_abs_difference(chunked.weights, reference.weights) < 1e-12);
  CHECK(chunked.load_balancing_loss.item() == doctest::Approx(reference.load_balancing_loss.item()));
  std::vector<int64_t> chosen = integers(chunked.expert_indices);
  CHECK(chosen[0] == chosen[2]);  // tokens 0 and 1 share their chunk's experts
  CHECK(chosen[1] == chosen[3]);

  Tensor leaf = logits.clone().set_requires_grad(true);
  testing::check_gradients([&](const std::vector<Tensor>& in) { return ops::moe_route(in[0], options).weights; },
                           {leaf});
  testing::check_gradients(
      [&](const std::vector<Tensor>& in) {
        ops::MoERouting r = ops::moe_route(in[0], options);
        return ops::add(r.load_balancing_loss, r.z_loss);
      },
      {leaf});
  options.sequence_length = 0;  // one sequence of 10: chunks (0,1) ... (8,9)
  CHECK(ops::moe_route(logits, options).rows == 20);
}

TEST_CASE("dispatch gathers tokens into expert order; combine sums them back weighted") {
  ops::MoERouting routing = ops::moe_route(example_logits(), top(2));
  Tensor x = Tensor::arange(10, DType::Float64).view({5, 2});
  Tensor dispatched = ops::moe_dispatch(x, routing);
  // Rows hold tokens 0, 2, 4 (expert 0), 0, 1, 2, 3 (expert 1), 1, 3, 4 (expert 2).
  CHECK(values(dispatched) ==
        std::vector<double>{0, 1, 4, 5, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 2, 3, 6, 7, 8, 9});
  Tensor expert_out = Tensor::arange(20, DType::Float64).view({10, 2});
  std::vector<double> combined = values(ops::moe_combine(expert_out, routing));
  std::vector<double> w = values(routing.weights);
  // Token 0: rows 0 (expert 0) and 3 (expert 1).
  CHECK(combined[0] == doctest::Approx(w[0] * 0 + w[1] * 6));
  CHECK(combined[1] == doctest::Approx(w[0] * 1 + w[1] * 7));
  // A non-contiguous x gives the same rows.
  Tensor x_t = ops::transpose(ops::contiguous(ops::transpose(x, 0, 1)), 0, 1);
  CHECK(!x_t.is_contiguous());
  CHECK(values(ops::moe_dispatch(x_t, routing)) == values(dispatched));
}

TEST_CASE("dispatch and combine have the gradients of their formulas") {
  for (double capacity_factor : {0.0, 0.6}) {
    CAPTURE(capacity_factor);
    ops::MoERouteOptions options = top(2);
    options.capacity_factor = capacity_factor;
    ops::MoERouting routing = ops::moe_route(testing::random({11, 4}, 3), options);
    Tensor x = testing::random({11, 3}, 4).set_requires_grad(true);
    testing::check_gradients([&](const std::vector<Tensor>& in) { return ops::moe_dispatch(in[0], routing); }, {x});
    Tensor expert_out = testing::random({routing.rows, 3}, 5).set_requires_grad(true);
    Tensor weights = testing::random({11, 2}, 6).set_requires_grad(true);
    testing::check_gradients(
        [&](const std::vector<Tensor>& in) {
          ops::MoERouting r = routing;
          r.weights = in[1];
          return ops::moe_combine(in[0], r);
        },
        {expert_out, weights});

    // The whole path: logits -> weights, x -> dispatch -> an "expert" -> combine.
    Tensor logits = testing::random({11, 4}, 3).set_requires_grad(true);
    testing::check_gradients(
        [&](const std::vector<Tensor>& in) {
          ops::MoERouting r = ops::moe_route(in[1], options);
          return ops::moe_combine(ops::tanh(ops::moe_dispatch(in[0], r)), r);
        },
        {x, logits});
  }
}

TEST_CASE("moe errors name the op and the shapes") {
  Tensor logits = Tensor::zeros({4, 3}, DType::Float64);
  CHECK_THROWS_WITH_AS(ops::topk_indices(logits, 4),
                       doctest::Contains("topk_indices: k = 4 must be in 1..3 (the columns of values float64[4, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::topk_indices(Tensor::zeros({3}), 1), doctest::Contains("must be (rows, n)"), Error);
  CHECK_THROWS_WITH_AS(ops::moe_route(logits, top(0)),
                       doctest::Contains("moe_route: top_k = 0 must be in 1..3 (the experts of logits float64[4, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::moe_route(Tensor::zeros({0, 3}), top(1)),
                       doctest::Contains("must have at least one token and one expert"), Error);
  CHECK_THROWS_WITH_AS(ops::moe_route(Tensor::zeros({4, 3}, DType::Int32), top(1)),
                       doctest::Contains("moe_route: int32[4, 3] on cpu is not supported"), Error);
  ops::MoERouteOptions options = top(1);
  options.capacity_factor = -1;
  CHECK_THROWS_WITH_AS(ops::moe_route(logits, options), doctest::Contains("capacity_factor -1 must be 0"), Error);
  options = top(1);
  options.chunk_size = 2;
  options.sequence_length = 3;
  CHECK_THROWS_WITH_AS(ops::moe_route(logits, options),
                       doctest::Contains("sequence_length 3 must be 0 or divide the 4 tokens"), Error);
  CHECK_THROWS_WITH_AS(ops::parse_router_scoring("softmx"), doctest::Contains("'softmx' is not one of softmax, sigmoid"),
                       Error);

  ops::MoERouting routing = ops::moe_route(logits, top(2));
  CHECK_THROWS_WITH_AS(ops::moe_dispatch(Tensor::zeros({5, 2}, DType::Float64), routing),
                       doctest::Contains("moe_dispatch: x float64[5, 2] on cpu must have one row per routed token (4)"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::moe_dispatch(Tensor::zeros({4, 2}, DType::Float64), ops::MoERouting{}),
                       doctest::Contains("moe_dispatch: the routing is empty (make it with moe_route)"), Error);
  CHECK_THROWS_WITH_AS(ops::moe_combine(Tensor::zeros({7, 2}, DType::Float64), routing),
                       doctest::Contains("moe_combine: expert_out float64[7, 2] on cpu must have one row per kept "
                                         "assignment (8)"),
                       Error);
  ops::MoERouting bad_weights = routing;
  bad_weights.weights = Tensor::zeros({4, 3}, DType::Float64);
  CHECK_THROWS_WITH_AS(ops::moe_combine(Tensor::zeros({8, 2}, DType::Float64), bad_weights),
                       doctest::Contains("routing.weights float64[4, 3] on cpu must be (tokens, top_k) = [4, 2]"),
                       Error);
}
