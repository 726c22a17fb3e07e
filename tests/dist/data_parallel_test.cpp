// Data-parallel training end to end, on the CPU with Gloo and two processes, through
// the strata program (STRATA_BINARY) as a user runs it:
//   - 2 ranks with per-rank batch B train like 1 process with batch 2B (losses and
//     final parameters within float32 rounding), also with gradient accumulation
//     and as two nodes (two launchers with --nnodes 2);
//   - strata bench-comm prints its all-reduce table on Gloo;
//   - a run resumes at another world size (2 -> 1, 1 -> 2, and with another global
//     batch) and continues as the uninterrupted run;
//   - a rank killed with SIGKILL ends the run with a non-zero exit in bounded time,
//     under strata launch and without it; SIGTERM to the launcher stops every rank
//     at the same step with a checkpoint; ranks with different recipes refuse to start.
// Every process runs with OMP_NUM_THREADS=1: two ranks share the CI machine's cores.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "strata/checkpoint/h5file.h"
#include "support/check.h"
#include "support/cli.h"
#include "support/network.h"

namespace fs = std::filesystem;
using namespace strata;
using Clock = std::chrono::steady_clock;

namespace {

using testing::BackgroundProcess;
using testing::ensure_bible;
using testing::free_port;
using testing::losses;
using testing::metrics;
using testing::rewind;
using testing::slurp;
using testing::wait_for;
using Result = testing::CommandResult;

// Every strata process of these tests runs with one OpenMP thread (two ranks share
// the machine's cores), its output kept under build/test-runs/dist-logs/<name>.
BackgroundProcess start_strata(const std::string& arguments, const std::string& name) {
  return testing::start_strata(arguments, "build/test-runs/dist-logs", name, "OMP_NUM_THREADS=1");
}

Result run_strata(const std::string& arguments, const std::string& name) {
  BackgroundProcess p = start_strata(arguments, name);
  int code = wait_for(p, std::chrono::seconds(600));
  return Result{code, slurp(p.out), slurp(p.err)};
}

std::map<std::string, std::vector<float>> parameters(const fs::path& checkpoint) {
  checkpoint::H5Reader reader(checkpoint.string());
  std::map<std::string, std::vector<float>> out;
  for (const std::string& name : reader.list("/model")) out[name] = reader.read_tensor(name).to_vector<float>();
  return out;
}

// A tiny Transformer on the King James bytes under build/test-runs/<name>, with
// the default recipe's AdamW; no dropout.
std::string tiny(const std::string& name, const std::string& extra) {
  fs::remove_all("build/test-runs/" + name);
  return fmt::format(
      "recipes/transformer/kjv-cpu.yaml run.name={0} run.dir=build/test-runs/{0} device=cpu model.d_model=32 "
      "model.n_layers=2 model.n_heads=2 model.max_length=32 data.seq_len=32 train.log_every=1 eval.batches=4 "
      "schedule.warmup_steps=2 model.dropout=0 train.eval_every=0 {1}",
      name, extra);
}

// The same model trained with plain SGD (momentum 0.9, constant learning rate),
// whose updates are proportional to the gradients, so the final parameters can be
// compared: AdamW divides by the root of the second moment, which turns gradients
// that are rounding noise (the attention key bias's, exactly zero by the softmax's
// shift invariance) into steps of about lr in either direction.
std::string tiny_sgd(const std::string& name, const std::string& extra) {
  fs::path recipe = "build/test-runs/dist-recipe/sgd.yaml";
  fs::create_directories(recipe.parent_path());
  std::ofstream(recipe) << "include:\n  - ../../../configs/models/transformer-tiny.yaml\n"
                           "  - ../../../configs/data/bible_kjv.yaml\n"
                           "run:\n  name: dist-sgd\ndevice: cpu\ntrain:\n  steps: 6\n  seed: 1\n  eval_every: 0\n"
                           "optim:\n  name: sgd\n  lr: 0.1\nschedule:\n  kind: constant\n";
  fs::remove_all("build/test-runs/" + name);
  return fmt::format(
      "{0} run.name={1} run.dir=build/test-runs/{1} model.d_model=32 model.n_layers=2 model.n_heads=2 "
      "model.max_length=32 data.seq_len=32 train.log_every=1 eval.batches=4 {2}",
      recipe.string(), name, extra);
}

std::string on_two_ranks(const std::string& command) { return "launch --nproc-per-node 2 -- " + command; }

// Losses of the same steps agree to float32 rounding: the ranks' halves of the
// batch are averaged in another order than one process sums the whole batch, and
// that difference grows a little with every optimizer step.
void check_same_losses(const std::map<int64_t, double>& a, const std::map<int64_t, double>& b, int64_t from,
                       int64_t to) {
  for (int64_t step = from; step <= to; ++step) {
    CAPTURE(step);
    REQUIRE(a.count(step));
    REQUIRE(b.count(step));
    CHECK(a.at(step) == doctest::Approx(b.at(step)).epsilon(2e-6));
  }
}

// Final parameters of SGD runs (tiny_sgd): float32 rounding of the gradients,
// carried through a few steps of lr 0.1 (weights are ~0.1, their ulp ~1e-8).
void check_same_parameters(const fs::path& a, const fs::path& b) {
  auto pa = parameters(a), pb = parameters(b);
  REQUIRE(pa.size() == pb.size());
  double worst = 0;
  std::string where;
  for (const auto& [name, values] : pa) {
    REQUIRE(pb.count(name));
    for (size_t i = 0; i < values.size(); ++i) {
      double d = std::abs(values[i] - pb[name][i]);
      if (d > worst) where = fmt::format("{}[{}] {} vs {}", name, i, values[i], pb[name][i]);
      worst = std::max(worst, d);
    }
  }
  MESSAGE("largest parameter difference: " << worst << " at " << where);
  CHECK(worst < 1e-6);
}

}  // namespace

TEST_CASE("2 ranks with batch 4 each train like 1 process with batch 8") {
  ensure_bible();
  Result single = run_strata("train " + tiny_sgd("dist-single", "train.batch_size=8"), "single");
  REQUIRE_MESSAGE(single.exit_code == 0, single.err);
  Result two = run_strata(on_two_ranks("train " + tiny_sgd("dist-two", "train.batch_size=4")), "two");
  REQUIRE_MESSAGE(two.exit_code == 0, two.err);
  check_same_losses(losses("build/test-runs/dist-single"), losses("build/test-runs/dist-two"), 1, 6);
  check_same_parameters("build/test-runs/dist-single/checkpoints/step_00000006.h5",
                        "build/test-runs/dist-two/checkpoints/step_00000006.h5");

  // Rank 0 printed the rank table and the progress; rank 1 printed nothing.
  CHECK(two.out.find("data parallel: 2 ranks over gloo (ranks from torchrun variables") != std::string::npos);
  CHECK(std::regex_search(two.out, std::regex(R"(\n\s+1\s+1\s+\S+\s+\d+\s+cpu\n)")));
  CHECK(std::count(two.out.begin(), two.out.end(), '\n') < 20);
  // Every rank kept its log; the metrics say how long the all-reduces took.
  for (int rank : {0, 1}) {
    std::string log = slurp(fmt::format("build/test-runs/dist-two/rank{}.log", rank));
    CHECK(log.find("rank " + std::to_string(rank) + " of 2") != std::string::npos);
    CHECK(log.find("step 6: loss here") != std::string::npos);
  }
  nlohmann::json last = metrics("build/test-runs/dist-two")[5];
  CHECK(last["step"] == 6);
  CHECK(last.contains("communication_ms"));
  CHECK(last["tokens_seen"] == metrics("build/test-runs/dist-single")[5]["tokens_seen"]);
  checkpoint::H5Reader checkpoint("build/test-runs/dist-two/checkpoints/step_00000006.h5");
  CHECK(checkpoint.read_int("/meta/world_size") == 2);

  // The evaluation the ranks shared equals strata eval of the checkpoint in one process.
  double logged = -1;
  for (const auto& m : metrics("build/test-runs/dist-two"))
    if (m.contains("eval_loss")) logged = m["eval_loss"].get<double>();
  Result eval = run_strata("eval build/test-runs/dist-two/checkpoints/step_00000006.h5", "two-eval");
  REQUIRE_MESSAGE(eval.exit_code == 0, eval.err);
  CHECK(nlohmann::json::parse(eval.out)["eval_loss"].get<double>() == doctest::Approx(logged).epsilon(1e-9));
}

TEST_CASE("gradient accumulation: 2 ranks x batch 2 x 2 micro-batches train like 1 process x batch 4 x 2") {
  ensure_bible();
  std::string common = "train.grad_accumulation=2";
  Result single = run_strata("train " + tiny_sgd("dist-accum-single", common + " train.batch_size=4"), "accum-single");
  REQUIRE_MESSAGE(single.exit_code == 0, single.err);
  Result two =
      run_strata(on_two_ranks("train " + tiny_sgd("dist-accum-two", common + " train.batch_size=2")), "accum-two");
  REQUIRE_MESSAGE(two.exit_code == 0, two.err);
  check_same_losses(losses("build/test-runs/dist-accum-single"), losses("build/test-runs/dist-accum-two"), 1, 6);
  check_same_parameters("build/test-runs/dist-accum-single/checkpoints/step_00000006.h5",
                        "build/test-runs/dist-accum-two/checkpoints/step_00000006.h5");
}

TEST_CASE("two nodes (two launchers on this machine, --nnodes 2) train like one process with the combined batch") {
  ensure_bible();
  Result single = run_strata("train " + tiny_sgd("dist-nodes-single", "train.batch_size=8"), "nodes-single");
  REQUIRE_MESSAGE(single.exit_code == 0, single.err);
  // Each launcher starts one rank; rank 0's store listens on --master-port + 1.
  std::string launch = fmt::format("launch --nnodes 2 --nproc-per-node 1 --master-addr 127.0.0.1 --master-port {} "
                                   "--run-id dist-nodes",
                                   free_port() - 1);
  std::string train = "train " + tiny_sgd("dist-nodes", "train.batch_size=4");
  BackgroundProcess node0 = start_strata(launch + " --node-rank 0 -- " + train, "node0");
  BackgroundProcess node1 = start_strata(launch + " --node-rank 1 -- " + train, "node1");
  CHECK_MESSAGE(wait_for(node0, std::chrono::seconds(600)) == 0, slurp(node0.err));
  CHECK_MESSAGE(wait_for(node1, std::chrono::seconds(600)) == 0, slurp(node1.err));
  CHECK(slurp(node0.err).find("ranks 0..0 of 2 on this node") != std::string::npos);
  CHECK(slurp(node1.err).find("ranks 1..1 of 2 on this node") != std::string::npos);
  check_same_losses(losses("build/test-runs/dist-nodes-single"), losses("build/test-runs/dist-nodes"), 1, 6);
  check_same_parameters("build/test-runs/dist-nodes-single/checkpoints/step_00000006.h5",
                        "build/test-runs/dist-nodes/checkpoints/step_00000006.h5");
}

TEST_CASE("strata bench-comm times the communicator's all-reduce on Gloo, a row per size") {
  Result r = run_strata(on_two_ranks("bench-comm --backend gloo --device cpu --min-mib 1 --max-mib 2 "
                                     "--iterations 2 --warmup 1"),
                        "bench-comm");
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.out.find("all-reduce (float32 sum) over 2 ranks, gloo on cpu") != std::string::npos);
  // No plain NCCL to compare with on the CPU: its columns say so.
  for (const char* size : {"1 MiB", "2 MiB"})
    CHECK_MESSAGE(std::regex_search(r.out, std::regex(fmt::format(R"(\n\s+{}\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+-\s+-\s+-\n)",
                                                                  size))),
                  r.out);
}

TEST_CASE("a run resumes at another world size and continues as the uninterrupted one") {
  ensure_bible();
  std::string common = "train.steps=6 train.checkpoint_every=3 train.keep_checkpoints=5";
  Result reference = run_strata("train " + tiny("dist-resume-ref", common + " train.batch_size=8"), "resume-ref");
  REQUIRE_MESSAGE(reference.exit_code == 0, reference.err);
  std::map<int64_t, double> uninterrupted = losses("build/test-runs/dist-resume-ref");

  SUBCASE("2 ranks -> 1 process, same global batch: the position carries over") {
    fs::path run = "build/test-runs/dist-resume-2to1";
    Result two = run_strata(on_two_ranks("train " + tiny("dist-resume-2to1", common + " train.batch_size=4")), "2to1");
    REQUIRE_MESSAGE(two.exit_code == 0, two.err);
    rewind(run, 3);
    Result resumed = run_strata("resume " + run.string() + " train.batch_size=8", "2to1-resume");
    REQUIRE_MESSAGE(resumed.exit_code == 0, resumed.err);
    CHECK(resumed.out.find("resuming a checkpoint of 2 rank(s) on 1: the global batch is still 8 examples") !=
          std::string::npos);
    check_same_losses(uninterrupted, losses(run), 4, 6);
  }
  SUBCASE("1 process -> 2 ranks") {
    fs::path run = "build/test-runs/dist-resume-1to2";
    Result one = run_strata("train " + tiny("dist-resume-1to2", common + " train.batch_size=8"), "1to2");
    REQUIRE_MESSAGE(one.exit_code == 0, one.err);
    rewind(run, 3);
    Result resumed = run_strata(on_two_ranks("resume " + run.string() + " train.batch_size=4"), "1to2-resume");
    REQUIRE_MESSAGE(resumed.exit_code == 0, resumed.err);
    CHECK(resumed.out.find("resuming a checkpoint of 1 rank(s) on 2") != std::string::npos);
    check_same_losses(uninterrupted, losses(run), 4, 6);
    checkpoint::H5Reader checkpoint((run / "checkpoints/step_00000006.h5").string());
    CHECK(checkpoint.read_int("/meta/world_size") == 2);
  }
  SUBCASE("another global batch: the examples seen stay seen, and the change is reported") {
    fs::path run = "build/test-runs/dist-resume-batch";
    Result two = run_strata(on_two_ranks("train " + tiny("dist-resume-batch", common + " train.batch_size=4")),
                            "batch");
    REQUIRE_MESSAGE(two.exit_code == 0, two.err);
    rewind(run, 3);
    Result resumed = run_strata("resume " + run.string(), "batch-resume");  // 1 process x batch 4
    REQUIRE_MESSAGE(resumed.exit_code == 0, resumed.err);
    CHECK(resumed.out.find("the data position in epoch 0 goes from batch 3 to batch 6") != std::string::npos);
    CHECK(losses(run).size() == 6);
  }
}

namespace {

// Waits until the run has logged `steps` steps (or fails the test after 120 s).
void wait_for_steps(const fs::path& run, size_t steps) {
  testing::wait_for_records(run, steps, std::chrono::seconds(120));
}

pid_t rank_pid(const std::string& rank_table, int rank) {
  std::smatch match;
  REQUIRE(std::regex_search(rank_table, match, std::regex(fmt::format(R"(\n\s+{}\s+\d+\s+\S+\s+(\d+)\s)", rank))));
  return std::stoi(match[1]);
}

}  // namespace

TEST_CASE("a killed rank makes strata launch stop the others and exit non-zero within 60 s") {
  ensure_bible();
  fs::path run = "build/test-runs/dist-killed";
  BackgroundProcess launcher =
      start_strata(on_two_ranks("train " + tiny("dist-killed", "train.steps=100000 train.batch_size=4")), "killed");
  wait_for_steps(run, 2);
  pid_t victim = rank_pid(slurp(launcher.out), 1);
  auto killed_at = Clock::now();
  REQUIRE(kill(victim, SIGKILL) == 0);
  int code = wait_for(launcher, std::chrono::seconds(60));
  MESSAGE("the launcher exited " << std::chrono::duration<double>(Clock::now() - killed_at).count()
                                  << " s after the kill");
  CHECK(code != 0);
  CHECK(code != -1);
  CHECK(slurp(launcher.err).find(fmt::format("rank 1 (pid {}) was killed by signal 9", victim)) != std::string::npos);
}

TEST_CASE("without a launcher, the surviving rank notices the dead one and exits non-zero") {
  ensure_bible();
  fs::path run = "build/test-runs/dist-orphan";
  std::string recipe = tiny("dist-orphan", "train.steps=100000 train.batch_size=4 dist.timeout_s=30");
  std::string flags = fmt::format("--world-size 2 --store-port {} --run-id dist-orphan", free_port());
  BackgroundProcess rank0 = start_strata(fmt::format("train {} --rank 0 {}", recipe, flags), "orphan0");
  BackgroundProcess rank1 = start_strata(fmt::format("train {} --rank 1 {}", recipe, flags), "orphan1");
  wait_for_steps(run, 2);
  REQUIRE(kill(rank1.pid, SIGKILL) == 0);
  waitpid(rank1.pid, nullptr, 0);
  int code = wait_for(rank0, std::chrono::seconds(60));
  CHECK(code != 0);
  CHECK(code != -1);
  std::string err = slurp(rank0.err);
  MESSAGE(err);
  CHECK(err.find("failed on rank 0 of 2") != std::string::npos);
}

TEST_CASE("SIGTERM to strata launch stops every rank at the same step with a checkpoint, exit 0") {
  ensure_bible();
  fs::path run = "build/test-runs/dist-sigterm";
  BackgroundProcess launcher =
      start_strata(on_two_ranks("train " + tiny("dist-sigterm", "train.steps=100000 train.batch_size=4")), "sigterm");
  wait_for_steps(run, 3);
  REQUIRE(kill(launcher.pid, SIGTERM) == 0);
  CHECK(wait_for(launcher, std::chrono::seconds(60)) == 0);
  std::vector<fs::path> checkpoints;
  for (const auto& e : fs::directory_iterator(run / "checkpoints")) checkpoints.push_back(e.path());
  REQUIRE(checkpoints.size() == 1);
  int64_t step = checkpoint::H5Reader(checkpoints[0].string()).read_int("/meta/step");
  for (int rank : {0, 1}) {
    std::string log = slurp(run / fmt::format("rank{}.log", rank));
    CHECK(log.find(fmt::format("stopped by signal 15 at step {};", step)) != std::string::npos);
  }
  Result eval = run_strata("eval " + checkpoints[0].string() + " --batches 1", "sigterm-eval");
  CHECK_MESSAGE(eval.exit_code == 0, eval.err);
}

TEST_CASE("ranks started with different recipes refuse to train, naming the rank") {
  ensure_bible();
  std::string flags = fmt::format("--world-size 2 --store-port {} --run-id dist-mismatch", free_port());
  std::string recipe = tiny("dist-mismatch", "train.steps=3");
  BackgroundProcess rank0 = start_strata(fmt::format("train {} --rank 0 {}", recipe, flags), "mismatch0");
  BackgroundProcess rank1 = start_strata(fmt::format("train {} optim.lr=0.01 --rank 1 {}", recipe, flags), "mismatch1");
  for (const BackgroundProcess& p : {rank0, rank1}) {
    CHECK(wait_for(p, std::chrono::seconds(120)) == 1);
    CHECK(slurp(p.err).find("the resolved recipe of rank(s) 1 differs from rank 0's") != std::string::npos);
  }
  CHECK_FALSE(fs::exists("build/test-runs/dist-mismatch"));  // nothing written
}
