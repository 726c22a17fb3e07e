// Where this process stands among the ranks (resolve_launch), and `strata launch`,
// which starts and watches the ranks of one machine (launch_local).
#include "strata/dist/launch.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "strata/core/error.h"

namespace strata::dist {

namespace {

std::optional<int> parse_int(const Environment& environment, const std::string& name) {
  std::optional<std::string> text = environment(name);
  if (!text) return std::nullopt;
  int value = 0;
  const char* end = text->data() + text->size();
  auto [stop, error] = std::from_chars(text->data(), end, value);
  STRATA_CHECK(error == std::errc() && stop == end && !text->empty(),
               "environment variable {}='{}' is not an integer", name, *text);
  return value;
}

// SLURM_NTASKS_PER_NODE looks like "4", "4(x2)" or "4,2": the first count.
std::optional<int> leading_count(const std::optional<std::string>& text) {
  if (!text || text->empty()) return std::nullopt;
  int value = 0;
  auto [stop, error] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (error != std::errc() || stop == text->data()) return std::nullopt;
  return value;
}

}  // namespace

Environment process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

LaunchFlags& command_line_launch_flags() {
  static LaunchFlags flags;
  return flags;
}

std::string first_host(const std::string& nodelist) {
  std::string host;
  int depth = 0;
  bool taking = true;  // inside brackets: only the first element of the first range
  for (char c : nodelist) {
    if (c == ',' && depth == 0) break;
    if (c == '[') {
      ++depth;
      taking = true;
    } else if (c == ']') {
      --depth;
    } else if (depth > 0) {
      if (c == '-' || c == ',') taking = false;
      if (taking) host += c;
    } else {
      host += c;
    }
  }
  STRATA_CHECK(!host.empty() && depth == 0, "cannot read the first host of the Slurm node list '{}'", nodelist);
  return host;
}

LaunchInfo resolve_launch(const LaunchFlags& flags, const Environment& environment) {
  LaunchInfo info;
  auto env = [&](const std::string& name) { return environment(name); };
  auto require = [&](const std::string& name, const std::string& because) {
    std::optional<int> value = parse_int(environment, name);
    STRATA_CHECK(value.has_value(), "{} is set but {} is not", because, name);
    return *value;
  };

  if (flags.rank || flags.world_size) {
    STRATA_CHECK(flags.rank && flags.world_size, "--rank and --world-size must be given together");
    info.rank = *flags.rank;
    info.world_size = *flags.world_size;
    info.local_rank = flags.local_rank.value_or(info.rank);
    info.local_world_size = info.world_size;
    info.source = "flags";
  } else if (std::optional<int> rank = parse_int(environment, "RANK")) {
    info.rank = *rank;
    info.world_size = require("WORLD_SIZE", "RANK");
    info.local_rank = parse_int(environment, "LOCAL_RANK").value_or(info.rank);
    info.local_world_size = parse_int(environment, "LOCAL_WORLD_SIZE").value_or(info.world_size);
    info.source = "torchrun variables";
  } else if (std::optional<int> rank = parse_int(environment, "SLURM_PROCID")) {
    info.rank = *rank;
    info.world_size = require("SLURM_NTASKS", "SLURM_PROCID");
    info.local_rank = parse_int(environment, "SLURM_LOCALID").value_or(0);
    info.local_world_size = leading_count(env("SLURM_NTASKS_PER_NODE")).value_or(info.world_size);
    info.source = "Slurm";
  } else if (std::optional<int> rank = parse_int(environment, "OMPI_COMM_WORLD_RANK")) {
    info.rank = *rank;
    info.world_size = require("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK");
    info.local_rank = parse_int(environment, "OMPI_COMM_WORLD_LOCAL_RANK").value_or(0);
    info.local_world_size = parse_int(environment, "OMPI_COMM_WORLD_LOCAL_SIZE").value_or(info.world_size);
    info.source = "Open MPI";
  }
  STRATA_CHECK(info.world_size >= 1, "world size {} (from {}) must be at least 1", info.world_size, info.source);
  STRATA_CHECK(info.rank >= 0 && info.rank < info.world_size, "rank {} (from {}) is not in [0, world size {})",
               info.rank, info.source, info.world_size);
  STRATA_CHECK(info.local_rank >= 0, "local rank {} (from {}) is negative", info.local_rank, info.source);

  if (flags.master_addr) {
    info.master_addr = *flags.master_addr;
  } else if (std::optional<std::string> address = env("MASTER_ADDR")) {
    info.master_addr = *address;
  } else if (info.source == "Slurm" && (env("SLURM_JOB_NODELIST") || env("SLURM_NODELIST"))) {
    info.master_addr = first_host(env("SLURM_JOB_NODELIST") ? *env("SLURM_JOB_NODELIST") : *env("SLURM_NODELIST"));
  } else {
    STRATA_CHECK(info.local_world_size >= info.world_size,
                 "cannot tell where rank 0 runs ({} ranks, {} on this machine, from {}): set MASTER_ADDR or "
                 "--master-addr",
                 info.world_size, info.local_world_size, info.source);
  }
  info.master_port = flags.master_port ? *flags.master_port : parse_int(environment, "MASTER_PORT").value_or(29500);
  info.store_port = flags.store_port ? *flags.store_port
                                     : parse_int(environment, "STRATA_STORE_PORT").value_or(info.master_port + 1);
  for (int port : {info.master_port, info.store_port})
    STRATA_CHECK(port > 0 && port < 65536, "port {} is not in [1, 65535]", port);
  // torchrun's --rdzv-id and Slurm's job step name a run on every rank.
  if (flags.run_id) {
    info.run_id = *flags.run_id;
  } else if (std::optional<std::string> id = env("STRATA_RUN_ID")) {
    info.run_id = *id;
  } else if (std::optional<std::string> id = env("TORCHELASTIC_RUN_ID")) {
    info.run_id = *id;
  } else if (std::optional<std::string> job = env("SLURM_JOB_ID")) {
    info.run_id = "slurm-" + *job + (env("SLURM_STEP_ID") ? "." + *env("SLURM_STEP_ID") : "");
  }
  if (flags.rendezvous_dir) {
    info.rendezvous_dir = *flags.rendezvous_dir;
  } else if (std::optional<std::string> directory = env("STRATA_RENDEZVOUS_DIR")) {
    info.rendezvous_dir = *directory;
  }
  return info;
}

LaunchInfo resolve_launch() { return resolve_launch(command_line_launch_flags(), process_environment()); }

namespace {

using Clock = std::chrono::steady_clock;

// A port that was free a moment ago, minus one: the ranks' rendezvous store
// listens on MASTER_PORT + 1, and nothing of Strata's listens on MASTER_PORT itself.
int master_port_with_free_store_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  STRATA_CHECK(fd >= 0, "strata launch: socket failed: {}", std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  bool found = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
               ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  STRATA_CHECK(found, "strata launch: cannot find a free port: {}", std::strerror(errno));
  return ntohs(address.sin_port) - 1;
}

// 64 random bits in hex: tells this launch's ranks from another run's.
std::string random_run_id() {
  std::random_device source;
  uint64_t bits = (static_cast<uint64_t>(source()) << 32) ^ source();
  return fmt::format("launch-{:016x}", bits);
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("exited with status {}", WEXITSTATUS(status));
}

int exit_code_of(int status) { return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status); }

struct Child {
  int rank;
  pid_t pid;
  bool running = true;
};

// This process's environment with `set` replacing (or adding) variables, and
// `defaults` added where absent, as "NAME=value" strings for execve.
std::vector<std::string> child_environment(const std::vector<std::pair<std::string, std::string>>& set,
                                           const std::vector<std::pair<std::string, std::string>>& defaults) {
  std::vector<std::string> out;
  auto name_of = [](const std::string& entry) { return entry.substr(0, entry.find('=')); };
  auto listed = [](const auto& list, const std::string& name) {
    return std::any_of(list.begin(), list.end(), [&](const auto& kv) { return kv.first == name; });
  };
  std::vector<std::string> present;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string text = *entry;
    std::string name = name_of(text);
    if (listed(set, name)) continue;
    present.push_back(name);
    out.push_back(std::move(text));
  }
  for (const auto& [name, value] : set) out.push_back(name + "=" + value);
  for (const auto& [name, value] : defaults)
    if (std::find(present.begin(), present.end(), name) == present.end()) out.push_back(name + "=" + value);
  return out;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

int launch_local(const LocalLaunch& launch) {
  STRATA_CHECK(launch.nproc_per_node >= 1, "strata launch: --nproc-per-node must be at least 1");
  STRATA_CHECK(launch.nnodes >= 1 && launch.node_rank >= 0 && launch.node_rank < launch.nnodes,
               "strata launch: --node-rank {} is not in [0, --nnodes {})", launch.node_rank, launch.nnodes);
  STRATA_CHECK(launch.nnodes == 1 || launch.master_port != 0,
               "strata launch: with several nodes, give --master-addr and --master-port (the same on every node)");
  STRATA_CHECK(!launch.arguments.empty(), "strata launch: no command given (e.g. -- train recipe.yaml)");
  const int world_size = launch.nnodes * launch.nproc_per_node;
  const int master_port = launch.master_port != 0 ? launch.master_port : master_port_with_free_store_port();
  std::string run_id = launch.run_id;
  if (run_id.empty() && std::getenv("STRATA_RUN_ID") != nullptr) run_id = std::getenv("STRATA_RUN_ID");
  if (run_id.empty() && launch.nnodes == 1) run_id = random_run_id();
  std::error_code error;
  std::string program = std::filesystem::canonical(launch.program, error).string();
  STRATA_CHECK(!error, "strata launch: cannot resolve {}: {}", launch.program, error.message());
  // One process per rank shares the cores: give OpenMP its share unless told.
  std::string threads = std::to_string(
      std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(launch.nproc_per_node)));

  // The signals the launcher handles stay blocked and are taken by sigtimedwait,
  // so none is lost between starting the ranks and watching them.
  sigset_t handled, previous;
  sigemptyset(&handled);
  for (int signal : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) sigaddset(&handled, signal);
  sigprocmask(SIG_BLOCK, &handled, &previous);

  std::vector<std::string> argument_text{"strata"};
  argument_text.insert(argument_text.end(), launch.arguments.begin(), launch.arguments.end());
  std::vector<char*> argv = pointers(argument_text);

  fmt::print(stderr, "strata launch: ranks {}..{} of {} on this node, master {}:{}\n",
             launch.node_rank * launch.nproc_per_node, (launch.node_rank + 1) * launch.nproc_per_node - 1, world_size,
             launch.master_addr, master_port);
  std::vector<Child> children;
  const pid_t launcher = ::getpid();
  for (int local = 0; local < launch.nproc_per_node; ++local) {
    int rank = launch.node_rank * launch.nproc_per_node + local;
    std::vector<std::pair<std::string, std::string>> variables{
        {"RANK", std::to_string(rank)},
        {"WORLD_SIZE", std::to_string(world_size)},
        {"LOCAL_RANK", std::to_string(local)},
        {"LOCAL_WORLD_SIZE", std::to_string(launch.nproc_per_node)},
        {"GROUP_RANK", std::to_string(launch.node_rank)},
        {"MASTER_ADDR", launch.master_addr},
        {"MASTER_PORT", std::to_string(master_port)}};
    if (!run_id.empty()) variables.emplace_back("STRATA_RUN_ID", run_id);
    std::vector<std::string> environment_text = child_environment(variables, {{"OMP_NUM_THREADS", threads}});
    std::vector<char*> envp = pointers(environment_text);
    pid_t pid = ::fork();
    STRATA_CHECK(pid >= 0, "strata launch: fork failed: {}", std::strerror(errno));
    if (pid == 0) {  // only async-signal-safe calls from here to execve
      sigprocmask(SIG_SETMASK, &previous, nullptr);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != launcher) _exit(1);  // the launcher died before prctl
      ::execve(program.c_str(), argv.data(), envp.data());
      _exit(127);
    }
    children.push_back(Child{rank, pid});
  }

  int exit_code = 0;
  int signals_received = 0;
  Clock::time_point kill_at = Clock::time_point::max();  // SIGKILL what still runs then
  auto signal_running = [&](int signal) {
    for (const Child& c : children)
      if (c.running) ::kill(c.pid, signal);
  };
  auto running = [&] { return std::count_if(children.begin(), children.end(), [](const Child& c) { return c.running; }); };

  while (running() > 0) {
    timespec poll_interval{0, 100'000'000};
    siginfo_t info;
    int signal = sigtimedwait(&handled, &info, &poll_interval);
    if (signal == SIGINT || signal == SIGTERM || signal == SIGHUP) {
      if (++signals_received == 1) {
        fmt::print(stderr, "strata launch: {}: passing it to every rank (again to kill them)\n", strsignal(signal));
        signal_running(signal);
      } else {
        fmt::print(stderr, "strata launch: {} again: killing every rank\n", strsignal(signal));
        signal_running(SIGKILL);
      }
    }
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      auto child = std::find_if(children.begin(), children.end(), [&](const Child& c) { return c.pid == pid; });
      if (child == children.end()) continue;
      child->running = false;
      bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
      if (failed && exit_code == 0) {
        exit_code = exit_code_of(status);
        fmt::print(stderr, "strata launch: rank {} (pid {}) {}; stopping the other ranks\n", child->rank, pid,
                   describe_status(status));
        signal_running(SIGTERM);
        kill_at = Clock::now() + launch.stop_grace;
      }
    }
    if (Clock::now() >= kill_at && running() > 0) {
      fmt::print(stderr, "strata launch: {} rank(s) still running {:.0f} s after SIGTERM: killing them\n", running(),
                 std::chrono::duration<double>(launch.stop_grace).count());
      signal_running(SIGKILL);
      kill_at = Clock::time_point::max();
    }
  }
  sigprocmask(SIG_SETMASK, &previous, nullptr);
  return exit_code;
}

}  // namespace strata::dist
