// The NCCL communicator and NCCL data parallelism on 2 or more GPUs (skipped with
// fewer). NCCL needs one process per GPU, so the collective tests start this test
// binary again as the ranks (through dist::launch_local, as `strata launch` does):
// a process with STRATA_NCCL_TEST_WORKER set runs the test case as its rank. The
// training tests run the strata program (STRATA_BINARY) on a synthetic task, so
// they need no prepared data. NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>

#include "strata/checkpoint/h5file.h"
#include "strata/core/memory.h"
#include "strata/dist/communicator.h"
#include "strata/dist/data_parallel.h"
#include "strata/dist/launch.h"
#include "support/check.h"
#include "support/cli.h"

namespace fs = std::filesystem;
using namespace strata;
using namespace strata::dist;
using Clock = std::chrono::steady_clock;

namespace {

int gpus_for_test() {
  testing::require_cuda();
  if (cuda_device_count() < 2) {
    MESSAGE("fewer than 2 CUDA devices: skipping");
    std::exit(77);
  }
  ::setenv("NCCL_NVLS_ENABLE", "0", 0);
  return std::min(cuda_device_count(), 8);
}

bool is_worker() { return std::getenv("STRATA_NCCL_TEST_WORKER") != nullptr; }

// In the parent: runs the test case `name` (no commas: doctest splits filters at
// them) again in `ranks` processes, one per GPU.
void run_as_ranks(const char* name, int ranks) {
  ::setenv("STRATA_NCCL_TEST_WORKER", "1", 1);
  LocalLaunch launch;
  launch.nproc_per_node = ranks;
  launch.program = "/proc/self/exe";
  launch.arguments = {fmt::format("--test-case={}", name), "-s"};
  int code = launch_local(launch);
  ::unsetenv("STRATA_NCCL_TEST_WORKER");
  CHECK_MESSAGE(code == 0, "a rank failed; its doctest report is above");
}

// In a rank: the NCCL communicator of this process's GPU.
std::shared_ptr<Communicator> join() {
  LaunchInfo launch = resolve_launch();
  Device device = Device::cuda(launch.local_rank);
  cuda::set_device(device.index);
  DataParallelOptions options;
  options.backend = "nccl";
  options.timeout_seconds = 120;
  return connect(connect_options(launch, options, device));
}

// Rank r's values r + 1 + (i mod 8) / 2 on the GPU: exact in bfloat16 and every sum here.
Tensor rank_values(int rank, int64_t n, DType dtype, Device device) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = rank + 1 + (is_floating(dtype) ? 0.5 * (i % 8) : i % 8);
  return Tensor::from_vector<double>(v, {n}).to(dtype).to(device);
}

double expected(ReduceOp op, int world_size, int64_t i, DType dtype) {
  double step = is_floating(dtype) ? 0.5 * (i % 8) : i % 8, sum = 0;
  for (int r = 0; r < world_size; ++r) sum += r + 1 + step;
  return op == ReduceOp::Sum ? sum : op == ReduceOp::Avg ? sum / world_size : world_size + step;
}

}  // namespace

constexpr const char* kCollectives = "NCCL collectives: every op and dtype on every GPU of the machine";
TEST_CASE(kCollectives) {
  int gpus = gpus_for_test();
  if (!is_worker()) return run_as_ranks(kCollectives, gpus);
  auto c = join();
  const int n = c->world_size();
  const int64_t count = 1000;
  for (DType dtype : {DType::Float32, DType::BFloat16, DType::Float64, DType::Int32, DType::Int64}) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max}) {
      if (op == ReduceOp::Avg && !is_floating(dtype)) continue;
      CAPTURE(dtype_name(dtype));
      CAPTURE(reduce_op_name(op));
      Tensor t = rank_values(c->rank(), count, dtype, c->device());
      c->all_reduce(t, op);
      std::vector<double> values = t.to_vector<double>();
      for (int64_t i = 0; i < count; ++i) CHECK(values[i] == expected(op, n, i, dtype));

      Tensor whole = rank_values(c->rank(), count * n, dtype, c->device());
      Tensor part = Tensor::zeros({count}, dtype, c->device());
      c->reduce_scatter(whole, part, op);
      values = part.to_vector<double>();
      for (int64_t i = 0; i < count; ++i) CHECK(values[i] == expected(op, n, c->rank() * count + i, dtype));
    }
  }
  Tensor bytes = Tensor::full({7}, 3 * c->rank(), DType::UInt8, c->device());
  c->broadcast(bytes, n - 1);
  CHECK(bytes.to_vector<double>() == std::vector<double>(7, 3 * (n - 1)));
  Tensor mine = Tensor::full({2}, c->rank(), DType::Int64, c->device());
  Tensor gathered = Tensor::zeros({2 * n}, DType::Int64, c->device());
  c->all_gather(mine, gathered);
  std::vector<int64_t> everyone = gathered.to_vector<int64_t>();
  for (int r = 0; r < n; ++r) CHECK((everyone[2 * r] == r && everyone[2 * r + 1] == r));
  CHECK(sum_over_ranks(*c, {1.0}) == std::vector<double>{static_cast<double>(n)});
  c->barrier();
}

constexpr const char* kOrdering =
    "NCCL stream ordering: the collective sees the compute stream's writes and the compute stream sees its result";
TEST_CASE(kOrdering) {
  int gpus = gpus_for_test();
  if (!is_worker()) return run_as_ranks(kOrdering, gpus);
  auto c = join();
  const int64_t count = 1 << 24;  // 64 MiB: long enough that a missing dependency shows
  for (int round = 0; round < 5; ++round) {
    Tensor t = Tensor::zeros({count}, DType::Float32, c->device());
    t.fill_(c->rank() + round);  // on the compute stream, just before the collective
    std::shared_ptr<Work> work = c->all_reduce_async(t, ReduceOp::Sum, /*timed=*/true);
    std::shared_ptr<Mark> mark = c->mark();
    work->wait();
    Tensor doubled = ops::mul(t, 2.0);  // on the compute stream, after wait()
    double expected_sum = 0;
    for (int r = 0; r < c->world_size(); ++r) expected_sum += r + round;
    std::vector<float> values = doubled.to_vector<float>();
    CHECK(values.front() == 2 * expected_sum);
    CHECK(values.back() == 2 * expected_sum);
    CHECK(work->duration_ms() > 0);
    CHECK(std::isfinite(work->ended_after_ms(*mark)));
  }
}

namespace {

using testing::BackgroundProcess;
using testing::losses;
using testing::slurp;
using testing::wait_for;

BackgroundProcess start_strata(const std::string& arguments, const std::string& name) {
  return testing::start_strata(arguments, "build/test-runs/nccl-logs", name);
}

// A tiny Transformer on induction heads (generated from a seed: no data to
// prepare), trained with SGD so that final parameters can be compared (AdamW
// turns rounding noise in zero gradients into steps of about lr).
std::string recipe(const std::string& name, const std::string& extra) {
  fs::path file = "build/test-runs/nccl-recipe/induction.yaml";
  fs::create_directories(file.parent_path());
  std::ofstream(file) << "include:\n  - ../../../configs/models/transformer-tiny.yaml\n"
                         "  - ../../../configs/data/induction_heads.yaml\n"
                         "run:\n  name: nccl\ndevice: cuda\ntrain:\n  steps: 8\n  seed: 1\n  log_every: 1\n"
                         "  eval_every: 0\noptim:\n  name: sgd\n  lr: 0.1\nschedule:\n  kind: constant\n"
                         "eval:\n  batches: 2\n";
  fs::remove_all("build/test-runs/" + name);
  return fmt::format(
      "{} run.name={} run.dir=build/test-runs/{} model.vocab_size=16 data.seq_len=64 model.max_length=64 {}",
      file.string(), name, name, extra);
}

}  // namespace

TEST_CASE("NCCL data parallelism: N GPUs with batch 4 each train like 1 GPU with batch 4N") {
  int gpus = gpus_for_test();
  BackgroundProcess single =
      start_strata("train " + recipe("nccl-single", fmt::format("train.batch_size={}", 4 * gpus)), "single");
  REQUIRE_MESSAGE(wait_for(single, std::chrono::seconds(300)) == 0, slurp(single.err));
  BackgroundProcess many = start_strata(
      fmt::format("launch --nproc-per-node {} -- train {}", gpus, recipe("nccl-many", "train.batch_size=4")), "many");
  REQUIRE_MESSAGE(wait_for(many, std::chrono::seconds(300)) == 0, slurp(many.err));
  CHECK(slurp(many.out).find(fmt::format("data parallel: {} ranks over nccl", gpus)) != std::string::npos);

  // cuBLASLt picks other kernels for other batch sizes, and the ranks' halves are
  // averaged in another order: float32 rounding, grown over 8 steps.
  auto a = losses("build/test-runs/nccl-single"), b = losses("build/test-runs/nccl-many");
  REQUIRE(a.size() == 8);
  REQUIRE(b.size() == 8);
  for (int64_t step = 1; step <= 8; ++step) CHECK(a[step] == doctest::Approx(b[step]).epsilon(1e-5));
  checkpoint::H5Reader ra("build/test-runs/nccl-single/checkpoints/step_00000008.h5");
  checkpoint::H5Reader rb("build/test-runs/nccl-many/checkpoints/step_00000008.h5");
  double worst = 0;
  for (const std::string& name : ra.list("/model")) {
    std::vector<float> x = ra.read_tensor(name).to_vector<float>(), y = rb.read_tensor(name).to_vector<float>();
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, double(std::abs(x[i] - y[i])));
  }
  MESSAGE("largest parameter difference: " << worst);
  CHECK(worst < 1e-5);
}

TEST_CASE("NCCL: a killed rank ends the run in bounded time, with and without strata launch") {
  int gpus = gpus_for_test();
  // Every record is a step's: the recipe evaluates only at the end.
  auto wait_for_steps = [](const fs::path& run, size_t steps) {
    testing::wait_for_records(run, steps, std::chrono::seconds(300));
  };
  SUBCASE("strata launch stops the others and exits non-zero") {
    BackgroundProcess launcher = start_strata(
        fmt::format("launch --nproc-per-node {} -- train {}", gpus,
                    recipe("nccl-killed", "train.steps=1000000 train.batch_size=4")),
        "killed");
    wait_for_steps("build/test-runs/nccl-killed", 3);
    std::smatch match;
    std::string table = slurp(launcher.out);
    REQUIRE(std::regex_search(table, match, std::regex(R"(\n\s+1\s+1\s+\S+\s+(\d+)\s)")));
    REQUIRE(kill(std::stoi(match[1]), SIGKILL) == 0);
    int code = wait_for(launcher, std::chrono::seconds(90));
    CHECK(code != 0);
    CHECK(code != -1);
  }
  SUBCASE("alone, the survivors' watchdog aborts NCCL and they exit non-zero") {
    std::string flags = fmt::format("--world-size 2 --master-port {}", 20000 + getpid() % 20000);
    std::string args = recipe("nccl-orphan", "train.steps=1000000 train.batch_size=4 dist.timeout_s=20");
    BackgroundProcess rank0 = start_strata(fmt::format("train {} --rank 0 --local-rank 0 {}", args, flags), "orphan0");
    BackgroundProcess rank1 = start_strata(fmt::format("train {} --rank 1 --local-rank 1 {}", args, flags), "orphan1");
    wait_for_steps("build/test-runs/nccl-orphan", 3);
    REQUIRE(kill(rank1.pid, SIGKILL) == 0);
    waitpid(rank1.pid, nullptr, 0);
    auto killed_at = Clock::now();
    int code = wait_for(rank0, std::chrono::seconds(90));
    MESSAGE("rank 0 exited " << std::chrono::duration<double>(Clock::now() - killed_at).count()
                             << " s after rank 1 was killed: " << slurp(rank0.err));
    CHECK(code != 0);
    CHECK(code != -1);
  }
}
