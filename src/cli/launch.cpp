// Data parallelism on the command line: `strata launch` (start and watch the ranks
// of one machine), the rank flags of `train` and `resume`, and `strata bench-comm`.
#include <fmt/format.h>

#include "cli/commands.h"
#include "strata/core/device.h"
#include "strata/core/memory.h"
#include "strata/dist/bench.h"
#include "strata/dist/data_parallel.h"
#include "strata/dist/launch.h"

namespace strata::cli {

namespace {

void add_launch_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "launch",
      "Start and watch the data-parallel ranks of this machine: strata launch --nproc-per-node 2 -- train recipe.yaml");
  auto options = std::make_shared<dist::LocalLaunch>();
  auto grace_seconds = std::make_shared<double>(15);
  cmd->add_option("--nproc-per-node", options->nproc_per_node, "Ranks on this machine (one per GPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--nnodes", options->nnodes, "Machines taking part (each runs its own strata launch)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--node-rank", options->node_rank, "This machine's index among them");
  cmd->add_option("--master-addr", options->master_addr, "Address of the machine running rank 0");
  cmd->add_option("--run-id", options->run_id,
                  "Name of the run, the same on every node (default: STRATA_RUN_ID, else random on one machine)");
  cmd->add_option("--master-port", options->master_port,
                  "torchrun's MASTER_PORT (Strata's rendezvous listens on it + 1); default: a free port, one machine");
  cmd->add_option("--stop-grace", *grace_seconds,
                  "Seconds the other ranks get to stop after one fails, before SIGKILL");
  cmd->add_option("command", options->arguments, "The strata command every rank runs, after --")->required();
  cmd->callback([options, grace_seconds] {
    options->stop_grace = std::chrono::milliseconds(static_cast<int64_t>(*grace_seconds * 1000));
    set_exit_code(dist::launch_local(*options));
  });
}

// --rank, --world-size, ... on `train` and `resume`: the first source resolve_launch reads.
void add_rank_flags(CLI::App& command) {
  dist::LaunchFlags& flags = dist::command_line_launch_flags();
  const std::string group = "Data parallel (else torchrun, Slurm or Open MPI variables)";
  command.add_option_function<int>("--rank", [&flags](const int& v) { flags.rank = v; }, "This process's rank")
      ->group(group);
  command.add_option_function<int>("--world-size", [&flags](const int& v) { flags.world_size = v; }, "Number of ranks")
      ->group(group);
  command.add_option_function<int>("--local-rank", [&flags](const int& v) { flags.local_rank = v; },
                                   "Rank among this machine's (its GPU); default: --rank")
      ->group(group);
  command.add_option_function<std::string>("--master-addr", [&flags](const std::string& v) { flags.master_addr = v; },
                                           "Address of rank 0's machine")
      ->group(group);
  command.add_option_function<int>("--master-port", [&flags](const int& v) { flags.master_port = v; },
                                   "torchrun's port; Strata's rendezvous store listens on it + 1")
      ->group(group);
  command.add_option_function<int>("--store-port", [&flags](const int& v) { flags.store_port = v; },
                                   "Port of Strata's rendezvous store on rank 0's machine")
      ->group(group);
  command.add_option_function<std::string>("--rendezvous-dir",
                                           [&flags](const std::string& v) { flags.rendezvous_dir = v; },
                                           "Meet through files in this shared directory (fresh for each job) "
                                           "instead of TCP")
      ->group(group);
  command.add_option_function<std::string>("--run-id", [&flags](const std::string& v) { flags.run_id = v; },
                                           "The run's name, the same on every rank: ranks of another run that "
                                           "reach the same store are refused (else STRATA_RUN_ID, torchrun's "
                                           "rdzv id, the Slurm job)")
      ->group(group);
}

void add_bench_comm_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench-comm",
      "All-reduce bus bandwidth of Strata's communicator against plain ncclAllReduce, 1 MiB to 1 GiB; run it under "
      "strata launch (or torchrun, srun)");
  struct Options {
    std::string backend = "auto", device = "auto";
    double min_mib = 1, max_mib = 1024, timeout_seconds = 300;
    int iterations = 20, warmup = 5;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("--backend", o->backend, "auto, nccl or gloo")->check(CLI::IsMember({"auto", "nccl", "gloo"}));
  cmd->add_option("--device", o->device, "auto (cuda:<local rank> when there is a GPU), cpu or cuda");
  cmd->add_option("--min-mib", o->min_mib, "Smallest all-reduce, MiB")->check(CLI::PositiveNumber);
  cmd->add_option("--max-mib", o->max_mib, "Largest all-reduce, MiB (sizes double from the smallest)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--iterations", o->iterations, "Timed all-reduces per size (more below 32 MiB)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", o->warmup, "Untimed all-reduces per size first");
  add_rank_flags(*cmd);
  cmd->callback([o] {
    dist::LaunchInfo launch = dist::resolve_launch();
    Device device = dist::device_for_rank(parse_device(o->device), launch);
    if (device.is_cuda()) cuda::set_device(device.index);
    dist::DataParallelOptions options;
    options.backend = o->backend;
    options.timeout_seconds = o->timeout_seconds;
    auto communicator = dist::connect(dist::connect_options(launch, options, device));
    std::vector<int64_t> sizes;
    for (double mib = o->min_mib; mib <= o->max_mib * (1 + 1e-9); mib *= 2)
      sizes.push_back(static_cast<int64_t>(mib * (1 << 20)) / 4 * 4);
    auto timings = dist::benchmark_all_reduce(*communicator, sizes, o->iterations, o->warmup);
    if (communicator->rank() != 0) return;
    int n = communicator->world_size();
    fmt::print("all-reduce (float32 sum) over {} ranks, {} on {}; the slowest rank's mean of {}+ iterations\n", n,
               communicator->backend(), device.str(), o->iterations);
    fmt::print("{:>10}  {:>12}  {:>14}  {:>14}  {:>12}  {:>14}  {:>8}\n", "size", "strata ms", "strata GB/s",
               "async GB/s", "plain ms", "plain GB/s", "ratio");
    for (const dist::AllReduceTiming& t : timings) {
      double bus = dist::all_reduce_bus_bandwidth(t.bytes, t.communicator_ms, n);
      double async_bus = dist::all_reduce_bus_bandwidth(t.bytes, t.async_ms, n);
      std::string size = t.bytes >= (1 << 30) ? fmt::format("{:g} GiB", t.bytes / double(1 << 30))
                                              : fmt::format("{:g} MiB", t.bytes / double(1 << 20));
      if (t.plain_ms > 0) {
        double plain = dist::all_reduce_bus_bandwidth(t.bytes, t.plain_ms, n);
        fmt::print("{:>10}  {:>12.4f}  {:>14.2f}  {:>14.2f}  {:>12.4f}  {:>14.2f}  {:>8.3f}\n", size,
                   t.communicator_ms, bus, async_bus, t.plain_ms, plain, bus / plain);
      } else {
        fmt::print("{:>10}  {:>12.4f}  {:>14.2f}  {:>14.2f}  {:>12}  {:>14}  {:>8}\n", size, t.communicator_ms, bus,
                   async_bus, "-", "-", "-");
      }
    }
  });
}

}  // namespace

void add_dist_commands(CLI::App& app) {
  add_launch_command(app);
  add_bench_comm_command(app);
  for (const char* name : {"train", "resume"}) add_rank_flags(*app.get_subcommand(name));
}

}  // namespace strata::cli
