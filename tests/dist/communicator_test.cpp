// The Gloo communicator, with the ranks as threads of this process (each with its
// own Gloo context, joined through a fresh rendezvous): every collective and dtype
// against values computed here, rendezvous over files and over TCP, argument
// errors, and failures: a rank that leaves, a rank that never answers.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <thread>

#include "strata/dist/communicator.h"
#include "support/check.h"
#include "support/network.h"

using namespace strata;
using namespace strata::dist;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// A directory no other test uses, for a file rendezvous.
std::string fresh_rendezvous_dir() {
  static int counter = 0;
  fs::path dir = fs::temp_directory_path() / fmt::format("strata-comm-test-{}-{}", getpid(), counter++);
  fs::remove_all(dir);
  return dir.string();
}

using testing::free_port;

ConnectOptions options_for(int rank, int world_size, const std::string& dir,
                           std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  ConnectOptions o;
  o.backend = "gloo";
  o.rank = rank;
  o.world_size = world_size;
  o.rendezvous_dir = dir;
  o.timeout = timeout;
  return o;
}

// Runs body(communicator) as every rank of a fresh group, each on its own thread,
// and returns what each rank's body returned. An exception on any rank is rethrown.
template <class Body>
auto on_ranks(int world_size, Body body) {
  using Result = decltype(body(std::declval<Communicator&>()));
  std::string dir = fresh_rendezvous_dir();
  std::vector<std::future<Result>> futures;
  for (int rank = 0; rank < world_size; ++rank)
    futures.push_back(std::async(std::launch::async, [=] {
      std::shared_ptr<Communicator> communicator = connect(options_for(rank, world_size, dir));
      return body(*communicator);
    }));
  std::vector<Result> results;
  for (auto& f : futures) results.push_back(f.get());
  fs::remove_all(dir);
  return results;
}

// Rank r's values: r + 1 + i / 2 (exact in bfloat16 for the sizes used here).
Tensor rank_values(int rank, int64_t n, DType dtype) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = rank + 1 + (is_floating(dtype) ? 0.5 * (i % 8) : i % 8);
  return Tensor::from_vector<double>(v, {n}).to(dtype);
}

double expected(ReduceOp op, int world_size, int64_t i, DType dtype) {
  double step = is_floating(dtype) ? 0.5 * (i % 8) : i % 8;
  double sum = 0, max = 0;
  for (int r = 0; r < world_size; ++r) {
    sum += r + 1 + step;
    max = std::max(max, r + 1 + step);
  }
  return op == ReduceOp::Sum ? sum : op == ReduceOp::Avg ? sum / world_size : max;
}

}  // namespace

TEST_CASE("all_reduce: sum, avg and max of every reducible dtype, on 1, 2 and 3 ranks") {
  for (int world_size : {1, 2, 3}) {
    for (DType dtype : {DType::Float32, DType::Float64, DType::BFloat16, DType::Int32, DType::Int64}) {
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max}) {
        if (op == ReduceOp::Avg && !is_floating(dtype)) continue;
        CAPTURE(world_size);
        CAPTURE(dtype_name(dtype));
        CAPTURE(reduce_op_name(op));
        const int64_t n = 37;
        auto results = on_ranks(world_size, [&](Communicator& c) {
          Tensor t = rank_values(c.rank(), n, dtype);
          c.all_reduce(t, op);
          return t.to_vector<double>();
        });
        for (const auto& values : results)
          for (int64_t i = 0; i < n; ++i) CHECK(values[i] == expected(op, world_size, i, dtype));
      }
    }
  }
}

TEST_CASE("an asynchronous all_reduce runs while the caller works, and reports its timing") {
  auto results = on_ranks(2, [](Communicator& c) {
    Tensor t = Tensor::full({1 << 16}, c.rank() + 1.0);
    std::shared_ptr<Mark> before = c.mark();
    std::shared_ptr<Work> work = c.all_reduce_async(t, ReduceOp::Sum, /*timed=*/true);
    work->wait();
    CHECK(work->duration_ms() >= 0);
    CHECK(work->ended_after_ms(*before) >= work->duration_ms());
    return t.to_vector<float>();
  });
  for (const auto& values : results) CHECK(values[12345] == 3.0f);
}

TEST_CASE("broadcast, all_gather and reduce_scatter") {
  SUBCASE("broadcast from rank 1 of 3, any dtype") {
    auto results = on_ranks(3, [](Communicator& c) {
      Tensor bytes = Tensor::full({5}, 10 * c.rank(), DType::UInt8);
      Tensor halves = Tensor::full({2, 3}, 0.5 * c.rank(), DType::BFloat16);
      c.broadcast(bytes, 1);
      c.broadcast(halves, 1);
      std::vector<double> out = bytes.to_vector<double>();
      for (double v : halves.to_vector<double>()) out.push_back(v);
      return out;
    });
    for (const auto& values : results) CHECK(values == std::vector<double>{10, 10, 10, 10, 10, .5, .5, .5, .5, .5, .5});
  }
  SUBCASE("all_gather puts each rank's input at its rank's place") {
    auto results = on_ranks(3, [](Communicator& c) {
      Tensor input = Tensor::from_vector<int64_t>({c.rank() * 10, c.rank() * 10 + 1}, {2});
      Tensor output = Tensor::zeros({6}, DType::Int64);
      c.all_gather(input, output);
      return output.to_vector<int64_t>();
    });
    for (const auto& values : results) CHECK(values == std::vector<int64_t>{0, 1, 10, 11, 20, 21});
  }
  SUBCASE("reduce_scatter leaves each rank the reduction of its slice") {
    for (int world_size : {2, 3}) {
      for (DType dtype : {DType::Float32, DType::BFloat16, DType::Int64}) {
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Avg}) {
          if (op == ReduceOp::Avg && !is_floating(dtype)) continue;
          CAPTURE(world_size);
          CAPTURE(dtype_name(dtype));
          CAPTURE(reduce_op_name(op));
          const int64_t part = 5;
          auto results = on_ranks(world_size, [&](Communicator& c) {
            Tensor input = rank_values(c.rank(), part * c.world_size(), dtype);
            Tensor output = Tensor::zeros({part}, dtype);
            c.reduce_scatter(input, output, op);
            return output.to_vector<double>();
          });
          for (int rank = 0; rank < world_size; ++rank)
            for (int64_t i = 0; i < part; ++i)
              CHECK(results[rank][i] == expected(op, world_size, rank * part + i, dtype));
        }
      }
    }
  }
}

TEST_CASE("barrier waits for the last rank") {
  auto waited = on_ranks(2, [](Communicator& c) {
    if (c.rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto start = Clock::now();
    c.barrier();
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  });
  CHECK(waited[0] > 200);
}

TEST_CASE("sum_over_ranks adds host values") {
  auto results = on_ranks(3, [](Communicator& c) { return sum_over_ranks(c, {1.0, c.rank() * 0.5}); });
  for (const auto& values : results) CHECK(values == std::vector<double>{3.0, 1.5});
}

TEST_CASE("ranks meet over TCP: rank 0 serves the store on the given port") {
  int port = free_port();
  std::vector<std::future<std::vector<float>>> ranks;
  for (int rank = 0; rank < 2; ++rank)
    ranks.push_back(std::async(std::launch::async, [=] {
      ConnectOptions o = options_for(rank, 2, "");
      o.master_addr = "localhost";
      o.store_port = port;
      o.run_id = "meet-over-tcp";
      // Rank 1 may try first: it retries until rank 0's store is up.
      if (rank == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
      auto c = connect(o);
      Tensor t = Tensor::full({4}, rank + 1.0);
      c->all_reduce(t, ReduceOp::Avg);
      return t.to_vector<float>();
    }));
  for (auto& r : ranks) CHECK(r.get() == std::vector<float>(4, 1.5f));
}

TEST_CASE("a rank that never arrives fails the rendezvous within the timeout") {
  ConnectOptions o = options_for(0, 2, "", std::chrono::milliseconds(1500));
  o.store_port = free_port();
  auto start = Clock::now();
  CHECK_THROWS_WITH_AS(connect(o), doctest::Contains("joining 2 ranks as rank 0"), Error);
  CHECK(Clock::now() - start < std::chrono::seconds(20));
}

TEST_CASE("a port held by another program is not taken for rank 0's store") {
  // A listener that accepts and never answers, as a foreign server on the port would.
  testing::LoopbackSocket listener = testing::bind_loopback_socket();
  REQUIRE(::listen(listener.fd, 4) == 0);
  ConnectOptions o = options_for(1, 2, "", std::chrono::milliseconds(1500));
  o.master_addr = "127.0.0.1";
  o.store_port = listener.port;
  CHECK_THROWS_WITH_AS(connect(o), doctest::Contains("does not answer as a Strata rendezvous store"), Error);
  ::close(listener.fd);
}

TEST_CASE("a rank of another run that reaches the store is refused, and rank 0 keeps waiting for its own") {
  int port = free_port();
  auto rank0 = std::async(std::launch::async, [=] {
    ConnectOptions o = options_for(0, 2, "", std::chrono::milliseconds(4000));
    o.store_port = port;
    o.run_id = "run-a";
    return connect(o);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // rank 0's store is up
  ConnectOptions stranger = options_for(1, 2, "", std::chrono::milliseconds(1500));
  stranger.store_port = port;
  stranger.run_id = "run-b";
  CHECK_THROWS_WITH_AS(connect(stranger), doctest::Contains("the store there serves another run (this rank's run id is 'run-b')"),
                       Error);
  CHECK_THROWS_WITH_AS(rank0.get(), doctest::Contains("timed out waiting for key '1'"), Error);
}

TEST_CASE("argument errors name the call and the tensor") {
  on_ranks(1, [](Communicator& c) {
    Tensor ints = Tensor::zeros({4}, DType::Int32);
    CHECK_THROWS_WITH_AS(c.all_reduce(ints, ReduceOp::Avg), doctest::Contains("avg of int32 tensors"), Error);
    Tensor bytes = Tensor::zeros({4}, DType::UInt8);
    CHECK_THROWS_WITH_AS(c.all_reduce(bytes, ReduceOp::Sum), doctest::Contains("cannot reduce uint8"), Error);
    Tensor strided = Tensor::zeros({4, 4}).as_strided({4}, {4}, 0);
    CHECK_THROWS_WITH_AS(c.all_reduce(strided, ReduceOp::Sum), doctest::Contains("is not contiguous"), Error);
    Tensor output = Tensor::zeros({3});
    CHECK_THROWS_WITH_AS(c.all_gather(Tensor::zeros({2}), output),
                         doctest::Contains("must have world size (1) times the elements"), Error);
    Tensor any = Tensor::zeros({2});
    CHECK_THROWS_WITH_AS(c.broadcast(any, 1), doctest::Contains("root 1 is not a rank of 1"), Error);
    return 0;
  });
  ConnectOptions o = options_for(0, 1, fresh_rendezvous_dir());
  o.backend = "nccl";
  CHECK_THROWS_WITH_AS(connect(o), doctest::Contains("nccl needs a CUDA device"), Error);
  o.backend = "mpi";
  CHECK_THROWS_WITH_AS(connect(o), doctest::Contains("expected auto, nccl or gloo"), Error);
}

TEST_CASE("a rank that leaves makes the others' collectives fail, and later calls too") {
  std::string dir = fresh_rendezvous_dir();
  std::promise<void> left;
  auto leaver = std::async(std::launch::async, [&] {
    auto c = connect(options_for(1, 2, dir));
    c->barrier();
    c.reset();  // closes its connections, as a dying process would
    left.set_value();
  });
  auto c = connect(options_for(0, 2, dir));
  c->barrier();
  left.get_future().wait();
  leaver.get();
  Tensor t = Tensor::ones({1024});
  auto start = Clock::now();
  CHECK_THROWS_WITH_AS(c->all_reduce(t, ReduceOp::Sum), doctest::Contains("gloo all_reduce(float32[1024] on cpu, sum) "
                                                                          "failed on rank 0 of 2"),
                       Error);
  CHECK(Clock::now() - start < std::chrono::seconds(10));
  CHECK_THROWS_WITH_AS(c->barrier(), doctest::Contains("was not run: an earlier operation failed"), Error);
  fs::remove_all(dir);
}

TEST_CASE("a rank that never answers fails the others' collective within the timeout") {
  std::string dir = fresh_rendezvous_dir();
  std::promise<void> done;
  auto silent = std::async(std::launch::async, [&] {
    auto c = connect(options_for(1, 2, dir, std::chrono::milliseconds(1000)));
    done.get_future().wait();  // alive, connected, but never joins the all-reduce
  });
  auto c = connect(options_for(0, 2, dir, std::chrono::milliseconds(1000)));
  Tensor t = Tensor::ones({8});
  auto start = Clock::now();
  CHECK_THROWS_WITH_AS(c->all_reduce(t, ReduceOp::Sum), doctest::Contains("failed on rank 0 of 2"), Error);
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  CHECK(seconds >= 0.9);
  CHECK(seconds < 10);
  c->abort("test over");
  CHECK_THROWS_WITH_AS(c->barrier(), doctest::Contains("an earlier operation failed"), Error);
  done.set_value();
  silent.get();
  fs::remove_all(dir);
}

TEST_CASE("abort makes every later call fail with the reason") {
  on_ranks(1, [](Communicator& c) {
    c.abort("rank 3 died");
    Tensor t = Tensor::ones({2});
    CHECK_THROWS_WITH_AS(c.all_reduce(t, ReduceOp::Sum), doctest::Contains("aborted: rank 3 died"), Error);
    return 0;
  });
}
