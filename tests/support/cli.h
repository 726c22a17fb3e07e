// Running the built strata program from tests (ctest sets STRATA_BINARY), in the
// foreground or the background, and reading what a training run wrote.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace strata::testing {

struct CommandResult {
  int exit_code;
  std::string out, err;
};

inline std::string binary() {
  const char* path = std::getenv("STRATA_BINARY");
  REQUIRE_MESSAGE(path != nullptr, "STRATA_BINARY is not set (run through ctest)");
  return path;
}

inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `strata <arguments>` through the shell, stdout and stderr captured in a
// folder of its own that is removed afterwards.
inline CommandResult run_strata(const std::string& arguments) {
  static std::atomic<int> calls{0};
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / fmt::format("strata-run-{}-{}", getpid(), calls++);
  std::filesystem::create_directories(dir);
  std::string command = fmt::format("{} {} >{}/out 2>{}/err", binary(), arguments, dir.string(), dir.string());
  int status = std::system(command.c_str());
  CommandResult result{WIFEXITED(status) ? WEXITSTATUS(status) : 128, slurp(dir / "out"), slurp(dir / "err")};
  std::filesystem::remove_all(dir);
  return result;
}

// A strata program running in the background; its stdout and stderr go to the
// files `out` and `err`, which stay for the test to read after it ends.
struct BackgroundProcess {
  pid_t pid = -1;
  std::filesystem::path out, err;
};

// Starts `<environment> strata <arguments>` (environment: assignments such as
// "OMP_NUM_THREADS=1", or none) with its output in <log_dir>/<name>.out and .err.
inline BackgroundProcess start_strata(const std::string& arguments, const std::filesystem::path& log_dir,
                                      const std::string& name, const std::string& environment = "") {
  std::filesystem::create_directories(log_dir);
  BackgroundProcess p{-1, log_dir / (name + ".out"), log_dir / (name + ".err")};
  std::string command =
      fmt::format("{} exec {} {} >{} 2>{}", environment, binary(), arguments, p.out.string(), p.err.string());
  p.pid = fork();
  REQUIRE(p.pid >= 0);
  if (p.pid == 0) {
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return p;
}

// The exit code (128 + signal when killed), or -1 after `limit` (the process is then killed).
inline int wait_for(const BackgroundProcess& p, std::chrono::seconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(p.pid, &status, WNOHANG) == p.pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(p.pid, SIGKILL);
  waitpid(p.pid, nullptr, 0);
  return -1;
}

// The records of <run>/metrics.jsonl, one per logged step or evaluation.
inline std::vector<nlohmann::json> metrics(const std::filesystem::path& run) {
  std::vector<nlohmann::json> records;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) records.push_back(nlohmann::json::parse(line));
  return records;
}

// The training losses logged, keyed by step.
inline std::map<int64_t, double> losses(const std::filesystem::path& run) {
  std::map<int64_t, double> by_step;
  for (const auto& r : metrics(run))
    if (r.contains("loss")) by_step[r["step"].get<int64_t>()] = r["loss"].get<double>();
  return by_step;
}

// Waits until <run>/metrics.jsonl holds `records` records, looking every `poll`;
// fails the test when `limit` passes first.
inline void wait_for_records(const std::filesystem::path& run, size_t records, std::chrono::seconds limit,
                             std::chrono::milliseconds poll = std::chrono::milliseconds(100)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (metrics(run).size() < records) {
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "the run did not get going");
    std::this_thread::sleep_for(poll);
  }
}

// Keeps the metrics of steps <= step and the checkpoints up to it: the run as it
// was when it stopped there.
inline void rewind(const std::filesystem::path& run, int64_t step) {
  std::vector<nlohmann::json> kept;
  for (const auto& m : metrics(run))
    if (m["step"].get<int64_t>() <= step) kept.push_back(m);
  std::ofstream rewrite(run / "metrics.jsonl");
  for (const auto& m : kept) rewrite << m.dump() << '\n';
  for (const auto& entry : std::filesystem::directory_iterator(run / "checkpoints"))
    if (entry.path().filename().string() > fmt::format("step_{:08d}.h5", step))
      std::filesystem::remove(entry.path());
}

// The King James bytes under data/generated/bible_kjv, prepared once for every test that trains on them.
inline void ensure_bible() {
  if (std::filesystem::exists("data/generated/bible_kjv/train.bin")) return;
  CommandResult r = run_strata("prepare bible_kjv");
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
}

}  // namespace strata::testing
