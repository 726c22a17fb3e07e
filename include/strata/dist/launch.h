// Launch and rendezvous: where this process stands among the ranks of a run, read
// from the conventions launchers already use, and `strata launch`, which starts and
// watches the ranks of one machine.
//
// Resolution order, first match wins:
//   1. explicit flags (--rank, --world-size, --local-rank, --master-addr, ...);
//   2. torchrun's variables RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
//      MASTER_ADDR, MASTER_PORT (so `torchrun --no-python strata train ...` works,
//      and `strata launch` sets them for its children);
//   3. Slurm's SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE and
//      the first host of SLURM_JOB_NODELIST as the master;
//   4. Open MPI's OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE.
// The rank, world size and local rank come together from the first source that
// names a rank; the master address and port from the first source that names
// them (flags, then MASTER_ADDR/MASTER_PORT, then Slurm's first host), else
// 127.0.0.1:29500 when every rank is on this machine.
//
// Ports: MASTER_PORT is torchrun's own store; Strata's rendezvous store listens on
// MASTER_PORT + 1 unless --store-port or STRATA_STORE_PORT says otherwise.
// --rendezvous-dir or STRATA_RENDEZVOUS_DIR: meet through files in a shared
// directory instead of TCP.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace strata::dist {

struct LaunchInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  int store_port = 29501;
  std::string rendezvous_dir;       // empty: TCP store at master_addr:store_port
  // The run's identity at the TCP store: a rank whose id differs from rank 0's is
  // refused, so ranks of two runs that share a port never join each other. Empty
  // (no launcher said one) matches only empty.
  std::string run_id;
  std::string source = "single process";  // where the rank came from: flags, torchrun, Slurm, Open MPI
  bool distributed() const { return world_size > 1; }
};

struct LaunchFlags {
  std::optional<int> rank, world_size, local_rank, master_port, store_port;
  std::optional<std::string> master_addr, rendezvous_dir, run_id;
};

// Reads an environment variable; nullopt when unset.
using Environment = std::function<std::optional<std::string>(const std::string& name)>;
Environment process_environment();

LaunchInfo resolve_launch(const LaunchFlags& flags, const Environment& environment);
// With the flags the command line gave (command_line_launch_flags) and this
// process's environment.
LaunchInfo resolve_launch();
// Filled by the CLI's rank flags on `train` and `resume`.
LaunchFlags& command_line_launch_flags();

// The first host of a Slurm node list: "node[01-03],gpu7" -> "node01",
// "a1,a2" -> "a1", "rack[2,4]-n[7-9]" -> "rack2-n7".
std::string first_host(const std::string& nodelist);

// `strata launch`: starts nproc_per_node processes of `program` (this binary) with
// `arguments` (e.g. {"train", "recipe.yaml", ...}), each with torchrun's variables
// set for its rank, and watches them:
//   - SIGTERM or SIGINT to the launcher is forwarded to every rank (a second one
//     kills them);
//   - when a rank exits with a non-zero status or is killed, the others get
//     SIGTERM, and SIGKILL after `stop_grace`; the launcher then exits non-zero;
//   - when the launcher dies, the ranks get SIGTERM (PR_SET_PDEATHSIG).
// Returns the exit code: 0 when every rank exited 0, else the first failure's
// status (128 + signal for a killed rank).
struct LocalLaunch {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: a free port of this machine (one node only)
  std::string run_id;   // empty: STRATA_RUN_ID, else a random one (one node only)
  std::string program = "/proc/self/exe";
  std::vector<std::string> arguments;
  std::chrono::milliseconds stop_grace{std::chrono::seconds(15)};
};
int launch_local(const LocalLaunch& launch);

}  // namespace strata::dist
