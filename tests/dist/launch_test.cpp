// Where a process stands among the ranks: flags, torchrun, Slurm and Open MPI
// variables in that order; Slurm node lists; the data position carried across
// world sizes.
#include <map>

#include "strata/dist/data_parallel.h"
#include "strata/dist/launch.h"
#include "support/check.h"

using namespace strata;
using namespace strata::dist;

namespace {

Environment fake(std::map<std::string, std::string> variables) {
  return [variables](const std::string& name) -> std::optional<std::string> {
    auto found = variables.find(name);
    if (found == variables.end()) return std::nullopt;
    return found->second;
  };
}

const std::map<std::string, std::string> torchrun = {{"RANK", "3"},          {"WORLD_SIZE", "8"},
                                                     {"LOCAL_RANK", "1"},    {"LOCAL_WORLD_SIZE", "2"},
                                                     {"MASTER_ADDR", "n0"}, {"MASTER_PORT", "6000"}};
const std::map<std::string, std::string> slurm = {{"SLURM_PROCID", "5"},
                                                  {"SLURM_NTASKS", "6"},
                                                  {"SLURM_LOCALID", "2"},
                                                  {"SLURM_NTASKS_PER_NODE", "3(x2)"},
                                                  {"SLURM_JOB_NODELIST", "gpu[07-08]"}};
const std::map<std::string, std::string> openmpi = {{"OMPI_COMM_WORLD_RANK", "1"},
                                                    {"OMPI_COMM_WORLD_SIZE", "4"},
                                                    {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                    {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}};

std::map<std::string, std::string> merged(std::initializer_list<std::map<std::string, std::string>> parts) {
  std::map<std::string, std::string> all;
  for (const auto& part : parts)
    for (const auto& [name, value] : part) all[name] = value;  // later parts win
  return all;
}

}  // namespace

TEST_CASE("first_host expands the first entry of a Slurm node list") {
  CHECK(first_host("node01") == "node01");
  CHECK(first_host("node[01-03]") == "node01");
  CHECK(first_host("node[7,9-12],gpu3") == "node7");
  CHECK(first_host("a1,a2") == "a1");
  CHECK(first_host("rack[2,4]-n[007-009]") == "rack2-n007");
  CHECK_THROWS_WITH_AS(first_host("node[01-03"), doctest::Contains("node[01-03"), Error);
  CHECK_THROWS_WITH_AS(first_host(""), doctest::Contains("first host"), Error);
}

TEST_CASE("alone, a process is rank 0 of 1 on loopback") {
  LaunchInfo info = resolve_launch({}, fake({}));
  CHECK(info.rank == 0);
  CHECK(info.world_size == 1);
  CHECK_FALSE(info.distributed());
  CHECK(info.master_addr == "127.0.0.1");
  CHECK(info.master_port == 29500);
  CHECK(info.store_port == 29501);
}

TEST_CASE("torchrun variables: rank, local rank, master; the store listens on MASTER_PORT + 1") {
  LaunchInfo info = resolve_launch({}, fake(torchrun));
  CHECK(info.rank == 3);
  CHECK(info.world_size == 8);
  CHECK(info.local_rank == 1);
  CHECK(info.local_world_size == 2);
  CHECK(info.master_addr == "n0");
  CHECK(info.master_port == 6000);
  CHECK(info.store_port == 6001);
  CHECK(info.source == "torchrun variables");

  auto with_store = merged({torchrun, {{"STRATA_STORE_PORT", "7000"}, {"STRATA_RENDEZVOUS_DIR", "/shared/job9"}}});
  info = resolve_launch({}, fake(with_store));
  CHECK(info.store_port == 7000);
  CHECK(info.rendezvous_dir == "/shared/job9");
}

TEST_CASE("Slurm: the first node of the job is the master") {
  LaunchInfo info = resolve_launch({}, fake(slurm));
  CHECK(info.rank == 5);
  CHECK(info.world_size == 6);
  CHECK(info.local_rank == 2);
  CHECK(info.local_world_size == 3);
  CHECK(info.master_addr == "gpu07");
  CHECK(info.master_port == 29500);
  CHECK(info.source == "Slurm");
  // An exported MASTER_ADDR wins over the node list.
  info = resolve_launch({}, fake(merged({slurm, {{"MASTER_ADDR", "login1"}, {"MASTER_PORT", "1234"}}})));
  CHECK(info.master_addr == "login1");
  CHECK(info.master_port == 1234);
}

TEST_CASE("Open MPI: ranks from OMPI_COMM_WORLD_*, loopback when all ranks share the machine") {
  LaunchInfo info = resolve_launch({}, fake(openmpi));
  CHECK(info.rank == 1);
  CHECK(info.world_size == 4);
  CHECK(info.local_rank == 1);
  CHECK(info.master_addr == "127.0.0.1");
  CHECK(info.source == "Open MPI");
  auto two_machines = merged({openmpi});
  two_machines["OMPI_COMM_WORLD_LOCAL_SIZE"] = "2";
  CHECK_THROWS_WITH_AS(resolve_launch({}, fake(two_machines)), doctest::Contains("set MASTER_ADDR"), Error);
}

TEST_CASE("the order: flags, then torchrun, then Slurm, then Open MPI") {
  auto everything = merged({torchrun, slurm, openmpi});
  CHECK(resolve_launch({}, fake(everything)).source == "torchrun variables");
  auto without_torchrun = merged({slurm, openmpi});
  CHECK(resolve_launch({}, fake(without_torchrun)).source == "Slurm");

  LaunchFlags flags;
  flags.rank = 1;
  flags.world_size = 2;
  flags.master_addr = "10.0.0.1";
  flags.store_port = 4000;
  LaunchInfo info = resolve_launch(flags, fake(everything));
  CHECK(info.source == "flags");
  CHECK(info.rank == 1);
  CHECK(info.world_size == 2);
  CHECK(info.local_rank == 1);  // defaults to the rank: one machine
  CHECK(info.master_addr == "10.0.0.1");
  CHECK(info.master_port == 6000);  // not given by a flag: MASTER_PORT
  CHECK(info.store_port == 4000);
}

TEST_CASE("the run id: --run-id, else STRATA_RUN_ID, torchrun's rdzv id, the Slurm job step") {
  CHECK(resolve_launch({}, fake({})).run_id.empty());
  CHECK(resolve_launch({}, fake(merged({torchrun, {{"TORCHELASTIC_RUN_ID", "job7"}}}))).run_id == "job7");
  CHECK(resolve_launch({}, fake(merged({slurm, {{"SLURM_JOB_ID", "812"}, {"SLURM_STEP_ID", "3"}}}))).run_id ==
        "slurm-812.3");
  auto everything = merged({torchrun, {{"TORCHELASTIC_RUN_ID", "job7"}, {"STRATA_RUN_ID", "mine"}}});
  CHECK(resolve_launch({}, fake(everything)).run_id == "mine");
  LaunchFlags flags;
  flags.run_id = "flagged";
  CHECK(resolve_launch(flags, fake(everything)).run_id == "flagged");
}

TEST_CASE("inconsistent launch information is an error that names it") {
  CHECK_THROWS_WITH_AS(resolve_launch({}, fake({{"RANK", "0"}})), doctest::Contains("WORLD_SIZE"), Error);
  CHECK_THROWS_WITH_AS(resolve_launch({}, fake({{"RANK", "2"}, {"WORLD_SIZE", "2"}})),
                       doctest::Contains("rank 2 (from torchrun variables) is not in [0, world size 2)"), Error);
  CHECK_THROWS_WITH_AS(resolve_launch({}, fake({{"RANK", "one"}, {"WORLD_SIZE", "2"}})),
                       doctest::Contains("RANK='one' is not an integer"), Error);
  LaunchFlags rank_only;
  rank_only.rank = 0;
  CHECK_THROWS_WITH_AS(resolve_launch(rank_only, fake({})), doctest::Contains("--world-size"), Error);
  CHECK_THROWS_WITH_AS(resolve_launch({}, fake(merged({torchrun, {{"MASTER_PORT", "70000"}}}))),
                       doctest::Contains("port 70000"), Error);
}

TEST_CASE("the data position across world sizes") {
  data::LoaderState saved{2, 10, 7};
  SUBCASE("same global batch: the position carries over, and the change of ranks is reported") {
    TranslatedPosition t = translate_data_position(saved, 2, 16, 1, 16, 100);
    CHECK(t.state == saved);
    CHECK(t.note.find("2 rank(s) on 1") != std::string::npos);
    CHECK(translate_data_position(saved, 2, 16, 2, 16, 100).note.empty());
  }
  SUBCASE("another global batch: the examples seen stay seen") {
    TranslatedPosition t = translate_data_position(saved, 2, 16, 4, 32, 50);  // 160 examples seen
    CHECK(t.state == data::LoaderState{2, 5, 7});
    CHECK(t.note.find("from batch 10 to batch 5") != std::string::npos);
    t = translate_data_position(saved, 2, 16, 3, 24, 60);  // 160 = 6 * 24 + 16
    CHECK(t.state.position == 6);
    CHECK(t.note.find("16 examples of the epoch are seen again") != std::string::npos);
  }
  SUBCASE("less than one new global batch left: the next epoch begins") {
    TranslatedPosition t = translate_data_position(data::LoaderState{0, 9, 7}, 1, 10, 2, 20, 4);  // 90 of 99 seen
    CHECK(t.state == data::LoaderState{1, 0, 7});
    CHECK(t.note.find("epoch 1 begins") != std::string::npos);
  }
}
