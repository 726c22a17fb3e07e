// Data parallelism for the trainer: one process per rank, each with a full replica
// of the model and its own shard of every global batch (data::Loader shards by
// rank); gradients averaged by a GradientReducer, so every replica takes the same
// optimizer step.
//
// The recipe's `dist` section:
//   dist.backend    auto | nccl | gloo   (auto: nccl on CUDA, gloo on the CPU)
//   dist.timeout_s  seconds a collective (or the rendezvous) may take before the
//                   rank gives up with an error (default 300)
//   dist.bucket_mb  gradient bucket size in MiB (default 25)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "strata/config/config.h"
#include "strata/data/loader.h"
#include "strata/dist/communicator.h"
#include "strata/dist/gradient_reducer.h"
#include "strata/dist/launch.h"
#include "strata/nn/module.h"

namespace strata::dist {

struct DataParallelOptions {
  std::string backend = "auto";
  double timeout_seconds = 300;
  double bucket_megabytes = 25;
  static DataParallelOptions read(const config::Config& config);
};

// The device a rank trains on: under data parallelism with several ranks, a CUDA
// device becomes cuda:<local rank> (cuda:0 when the process sees one GPU only: the
// launcher gave each rank its own); otherwise `requested` itself.
Device device_for_rank(Device requested, const LaunchInfo& launch);
// How `launch`'s rank joins the others on `device` (GLOO_SOCKET_IFNAME, when set,
// names the interface Gloo binds).
ConnectOptions connect_options(const LaunchInfo& launch, const DataParallelOptions& options, Device device);

class DataParallel {
 public:
  // Joins the other ranks (blocks until all have arrived).
  DataParallel(const LaunchInfo& launch, const DataParallelOptions& options, Device device);

  int rank() const { return launch_.rank; }
  int world_size() const { return launch_.world_size; }
  bool is_lead() const { return launch_.rank == 0; }
  const LaunchInfo& launch() const { return launch_; }
  Communicator& communicator() { return *communicator_; }

  // Collective. Throws on every rank, naming the ranks that differ, unless all
  // ranks have the same recipe, the same parameters (names, shapes, dtypes) and
  // start at the same step.
  void check_consistency(const std::string& config_yaml, const std::vector<nn::NamedParameter>& parameters,
                         int64_t step);
  // Collective: one line per rank (rank, local rank, host, pid, device), for rank 0 to print.
  std::string rank_table();
  // Collective: every parameter = rank 0's.
  void broadcast_parameters(const std::vector<nn::NamedParameter>& parameters);

  // Gradient averaging (GradientReducer), attached once to the parameters.
  void attach(const std::vector<Tensor>& parameters);
  void prepare_backward(bool reduce) { reducer_->prepare_backward(reduce); }
  void finish_backward() { reducer_->finish(); }
  GradientReducer::Stats take_stats() { return reducer_->take_stats(); }

  // Collective: element-wise sums over ranks.
  std::vector<double> sum(const std::vector<double>& values) { return sum_over_ranks(*communicator_, values); }

 private:
  LaunchInfo launch_;
  DataParallelOptions options_;
  std::shared_ptr<Communicator> communicator_;
  std::unique_ptr<GradientReducer> reducer_;
};

// Resuming at another world size. The loader's global batches do not depend on
// the world size, so with the same global batch (per-rank batch x ranks) the
// position carries over as it is. With another global batch, the examples already
// seen in the current epoch stay seen: the position becomes
// floor(position * saved_global_batch / global_batch) of the new loader (which has
// batches_per_epoch batches per epoch). `note` says what changed ("" when nothing did).
struct TranslatedPosition {
  data::LoaderState state;
  std::string note;
};
TranslatedPosition translate_data_position(const data::LoaderState& saved, int64_t saved_world_size,
                                           int64_t saved_global_batch, int64_t world_size, int64_t global_batch,
                                           int64_t batches_per_epoch);

}  // namespace strata::dist
