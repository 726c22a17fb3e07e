// Internal: everything a run holds (recipe, model, optimizer, data, counters), built
// from a resolved recipe, and the checkpoint format that saves and restores it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "strata/config/config.h"
#include "strata/data/dataset.h"
#include "strata/data/loader.h"
#include "strata/dist/data_parallel.h"
#include "strata/models/model.h"
#include "strata/optim/optimizer.h"
#include "strata/optim/schedule.h"

namespace strata::train {

struct TrainSettings {
  std::string run_name, run_dir;
  int64_t steps, batch_size, grad_accumulation, log_every, eval_every, eval_batches, checkpoint_every,
      keep_checkpoints;
  bool keep_best;
  double clip_grad_norm;
  std::string precision;     // float32 | bf16
  std::string on_nonfinite;  // stop | skip
  uint64_t seed;

  static TrainSettings read(const config::Config& config);
};

struct Session {
  config::Config config;
  TrainSettings settings;
  Device device;
  std::shared_ptr<models::Model> model;
  std::unique_ptr<optim::Optimizer> optimizer;
  optim::LearningRateSchedule schedule;
  std::shared_ptr<const data::Dataset> train_data, eval_data;
  std::unique_ptr<data::Loader> loader;
  int64_t step = 0;
  int64_t tokens_seen = 0;
  std::shared_ptr<dist::DataParallel> data_parallel;  // null when training alone

  int rank() const { return data_parallel ? data_parallel->rank() : 0; }
  int world_size() const { return data_parallel ? data_parallel->world_size() : 1; }
};

enum class Purpose { Train, Evaluate };
// Resolves the device, builds the model (initialised from train.seed on the CPU,
// then moved), the optimizer and the datasets, and checks that every recipe key
// was understood. For training with launch.world_size > 1, the loader takes this
// rank's shard, a CUDA device becomes cuda:<local rank>, and the session joins the
// other ranks (data_parallel).
Session build_session(config::Config config, Purpose purpose, const dist::LaunchInfo& launch = {});

// Mean loss (and accuracy for tasks with scored positions) over `batches`
// validation batches, always the same ones. Under data parallelism the ranks share
// the batches (batch b goes to rank b mod world size) and sum their totals.
struct Evaluation {
  double loss = 0;
  double accuracy = -1;  // < 0 when not measured
  int64_t scored = 0;    // number of scored targets
};
Evaluation evaluate_model(Session& session, int64_t batches);
// The loss of one batch (cross-entropy over scored targets).
Tensor batch_loss(models::Model& model, const data::Batch& batch, Device device);

void save_checkpoint(const Session& session, const std::string& path, std::optional<double> eval_loss);
// Loads parameters (and, with `training_state`, the optimizer, counters, RNG and
// data position). Names, shapes and dtypes must match; the error says what differs.
// A checkpoint of another world size (or global batch) resumes with the data
// position translated (dist::translate_data_position); rank 0 prints the change.
void load_checkpoint(Session& session, const std::string& path, bool training_state);
// The resolved recipe stored in a checkpoint.
config::Config checkpoint_config(const std::string& path, const std::vector<std::string>& overrides);
// The newest checkpoint in run_dir/checkpoints that opens, or "" when none does.
std::string newest_checkpoint(const std::string& run_dir);

}  // namespace strata::train
