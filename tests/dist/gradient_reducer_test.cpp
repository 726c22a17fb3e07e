// GradientReducer: buckets start during the backward pass and strictly in order
// (against a communicator that records its calls), and the gradients it leaves are
// the average over ranks (two Gloo ranks as threads), with accumulation and with
// parameters that only some ranks, or none, use.
#include <filesystem>
#include <future>

#include "strata/dist/gradient_reducer.h"
#include "support/check.h"

using namespace strata;
using namespace strata::dist;
namespace fs = std::filesystem;

namespace {

class FinishedWork : public Work {
 public:
  void wait() override {}
  double duration_ms() override { return 0; }
  double ended_after_ms(const Mark&) override { return 0; }
};

// One rank that writes "all_reduce <elements>" to a log for each all-reduce it is asked for.
class RecordingCommunicator : public Communicator {
 public:
  explicit RecordingCommunicator(std::vector<std::string>& log) : log_(log) {}
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  Device device() const override { return Device::cpu(); }
  std::string backend() const override { return "recording"; }
  std::shared_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op, bool timed) override {
    log_.push_back(fmt::format("all_reduce {}", tensor.numel()));
    return std::make_shared<FinishedWork>();
  }
  void broadcast(Tensor&, int) override { FAIL("unexpected broadcast"); }
  void all_gather(const Tensor&, Tensor&) override { FAIL("unexpected all_gather"); }
  void reduce_scatter(const Tensor&, Tensor&, ReduceOp) override { FAIL("unexpected reduce_scatter"); }
  void barrier() override { FAIL("unexpected barrier"); }
  void abort(const std::string&) override {}
  std::shared_ptr<Mark> mark() override { return std::make_shared<Mark>(); }

 private:
  std::vector<std::string>& log_;
};

Tensor parameter(const std::string& name, const Shape& shape, uint64_t seed) {
  Tensor p = testing::random(shape, seed, DType::Float32);
  p.set_requires_grad(true);
  p.set_name(name);
  return p;
}

}  // namespace

TEST_CASE("buckets: reverse registration order, cut at the byte limit, one parameter at least") {
  std::vector<std::string> log;
  auto recorder = std::make_shared<RecordingCommunicator>(log);
  std::vector<Tensor> ps{parameter("p0", {2}, 1), parameter("p1", {3}, 2), parameter("p2", {4}, 3)};
  // p2 alone (16 bytes; adding p1's 12 would exceed 24), then p1 and p0 (20 bytes).
  GradientReducer reducer(ps, recorder, 24);
  CHECK(reducer.bucket_layout() == std::vector<std::vector<size_t>>{{2}, {1, 0}});
  GradientReducer one_each({parameter("q0", {5}, 4), parameter("q1", {5}, 5)}, recorder, 1);
  CHECK(one_each.bucket_count() == 2);
}

TEST_CASE("a bucket starts as soon as its gradients are complete, while the backward pass goes on") {
  std::vector<std::string> log;
  auto recorder = std::make_shared<RecordingCommunicator>(log);
  Tensor p0 = parameter("p0", {2}, 1), p1 = parameter("p1", {3}, 2), p2 = parameter("p2", {4}, 3);
  // Registered before the reducer's hook, so it runs first: marks when p0's gradient is done.
  p0.register_grad_hook([&](const Tensor&) { log.push_back("p0 ready"); });
  GradientReducer reducer({p0, p1, p2}, recorder, 1);  // one bucket per parameter: [p2], [p1], [p0]
  // p2 is used last in the forward pass, so the backward pass completes its gradient first.
  Tensor a = ops::sum(ops::mul(p0, testing::random({2}, 11, DType::Float32)));
  Tensor b = ops::sum(ops::mul(p1, ops::mul(testing::random({3}, 12, DType::Float32), a)));
  Tensor loss = ops::sum(ops::mul(p2, ops::mul(testing::random({4}, 13, DType::Float32), b)));
  reducer.prepare_backward(true);
  autograd::backward(loss);
  reducer.finish();
  // Each bucket holds the gradient and one presence flag per parameter.
  CHECK(log == std::vector<std::string>{"all_reduce 5", "all_reduce 4", "p0 ready", "all_reduce 3"});
}

TEST_CASE("buckets start in order even when a later bucket is ready first") {
  std::vector<std::string> log;
  auto recorder = std::make_shared<RecordingCommunicator>(log);
  Tensor p0 = parameter("p0", {2}, 1), p1 = parameter("p1", {3}, 2), p2 = parameter("p2", {4}, 3);
  p2.register_grad_hook([&](const Tensor&) { log.push_back("p2 ready"); });
  GradientReducer reducer({p0, p1, p2}, recorder, 1);
  // Now p0 is used last: its gradient is complete first, but its bucket is the last.
  Tensor c = ops::sum(ops::mul(p2, testing::random({4}, 13, DType::Float32)));
  Tensor b = ops::sum(ops::mul(p1, ops::mul(testing::random({3}, 12, DType::Float32), c)));
  Tensor loss = ops::sum(ops::mul(p0, ops::mul(testing::random({2}, 11, DType::Float32), b)));
  reducer.prepare_backward(true);
  autograd::backward(loss);
  reducer.finish();
  CHECK(log == std::vector<std::string>{"p2 ready", "all_reduce 5", "all_reduce 4", "all_reduce 3"});
}

TEST_CASE("accumulating passes do not communicate; finish without a reducing pass is an error") {
  std::vector<std::string> log;
  auto recorder = std::make_shared<RecordingCommunicator>(log);
  Tensor p = parameter("p", {3}, 1);
  GradientReducer reducer({p}, recorder);
  reducer.prepare_backward(false);
  autograd::backward(ops::sum(ops::mul(p, p)));
  CHECK(log.empty());
  CHECK_THROWS_WITH_AS(reducer.finish(), doctest::Contains("no reducing backward pass was prepared"), Error);
  reducer.prepare_backward(true);
  autograd::backward(ops::sum(ops::mul(p, p)));
  CHECK(log.size() == 1);
  CHECK_THROWS_WITH_AS(reducer.prepare_backward(true), doctest::Contains("never finish()ed"), Error);
  reducer.finish();
}

namespace {

// The model of the two-rank test: w (3, 4) and b (4) used by every rank, u (2) only
// by rank 1, z (2) by nobody. Each rank sees its own inputs.
struct Replica {
  Tensor w = parameter("w", {3, 4}, 1), b = parameter("b", {4}, 2), u = parameter("u", {2}, 3),
         z = parameter("z", {2}, 4);
  std::vector<Tensor> parameters() const { return {w, b, u, z}; }

  void backward(int rank, int micro_batch) const {
    Tensor x = testing::random({5, 3}, 100 + 10 * rank + micro_batch, DType::Float32);
    Tensor loss = ops::sum(ops::tanh(ops::add(ops::matmul(x, w), b)));
    if (rank == 1) loss = ops::add(loss, ops::sum(ops::mul(u, u)));
    autograd::backward(loss);
  }
};

// What the reducer must produce: the gradients of each rank's data computed here,
// one rank after the other, then averaged.
std::vector<std::vector<float>> averaged_gradients(int micro_batches) {
  std::vector<std::vector<float>> average(4);
  for (int rank = 0; rank < 2; ++rank) {
    Replica replica;
    for (int micro = 0; micro < micro_batches; ++micro) replica.backward(rank, micro);
    std::vector<Tensor> ps = replica.parameters();
    for (size_t i = 0; i < ps.size(); ++i) {
      if (!ps[i].grad().defined()) continue;
      std::vector<float> g = ps[i].grad().to_vector<float>();
      average[i].resize(g.size());
      for (size_t k = 0; k < g.size(); ++k) average[i][k] += g[k] / 2;
    }
  }
  return average;
}

}  // namespace

TEST_CASE("two Gloo ranks: every gradient becomes the average over ranks") {
  for (int micro_batches : {1, 3}) {
    CAPTURE(micro_batches);
    fs::path dir = fs::temp_directory_path() / fmt::format("strata-reducer-test-{}-{}", getpid(), micro_batches);
    fs::remove_all(dir);
    std::vector<std::future<std::vector<std::vector<float>>>> ranks;
    for (int rank = 0; rank < 2; ++rank)
      ranks.push_back(std::async(std::launch::async, [=] {
        ConnectOptions o;
        o.rank = rank;
        o.world_size = 2;
        o.rendezvous_dir = dir.string();
        Replica replica;
        GradientReducer reducer(replica.parameters(), connect(o), /*bucket_bytes=*/16);
        for (int micro = 0; micro < micro_batches; ++micro) {
          reducer.prepare_backward(micro + 1 == micro_batches);
          replica.backward(rank, micro);
        }
        reducer.finish();
        GradientReducer::Stats stats = reducer.take_stats();
        CHECK(stats.passes == 1);
        CHECK(stats.bytes == (12 + 4 + 2 + 2 + 4 /* presence flags */) * 4);
        std::vector<std::vector<float>> grads;
        for (const Tensor& p : replica.parameters())
          grads.push_back(p.grad().defined() ? p.grad().to_vector<float>() : std::vector<float>{});
        return grads;
      }));
    std::vector<std::vector<float>> expected = averaged_gradients(micro_batches);
    CHECK(expected[2].size() == 2);  // u: rank 1's gradient, halved
    CHECK(expected[3].empty());      // z: no gradient anywhere
    for (auto& rank : ranks) {
      std::vector<std::vector<float>> grads = rank.get();
      for (size_t i = 0; i < grads.size(); ++i) {
        CAPTURE(i);
        REQUIRE(grads[i].size() == expected[i].size());
        // The two halves are added in another order than here: float32 rounding.
        for (size_t k = 0; k < grads[i].size(); ++k) CHECK(grads[i][k] == doctest::Approx(expected[i][k]).epsilon(1e-6));
      }
    }
    fs::remove_all(dir);
  }
}
