// The training runtime behind `strata train`, `resume`, `eval` and `generate`.
//
// A run lives in runs/<name>/: config.yaml (the fully resolved recipe),
// metrics.jsonl (one JSON object per logged step or evaluation) and
// checkpoints/step_<N>.h5. The checkpoint layout (open it with h5py):
//   /model/<parameter path>    every parameter, float32, e.g. /model/layers.0.mlp.up.weight
//   /optim/<state name>        optimizer state, e.g. /optim/layers.0.mlp.up.weight.exp_avg
//   /meta/step, /meta/tokens_seen, /meta/world_size         int64
//   /meta/rng_seed, /meta/rng_offset                         int64, the default generator
//   /meta/loader_epoch, /meta/loader_position, /meta/loader_seed   int64, the data position
//   /meta/config (resolved YAML), /meta/strata_version       strings
//   /meta/eval_loss                                          float64, when evaluated at that step
// Files are written to a temporary name, fsynced and renamed, so a checkpoint that
// exists is complete.
#pragma once

#include <string>
#include <vector>

namespace strata::train {

struct TrainCommand {
  std::string recipe;
  std::vector<std::string> overrides;  // key.path=value
  std::string resume;                  // "", "auto" (newest checkpoint of the run, if any) or a checkpoint path
  bool dry_run = false;
};

// Each returns the process exit code; errors are thrown as strata::Error.
int train(const TrainCommand& command);
int resume(const std::string& run_dir, const std::vector<std::string>& overrides);

struct EvalCommand {
  std::string checkpoint;
  std::vector<std::string> overrides;  // e.g. data.split=val, eval.batches=50
  int64_t batches = 0;                 // 0: the recipe's eval.batches
};
// Prints {"step", "loss", "perplexity", "bits_per_byte" or "accuracy", ...} as JSON.
int evaluate(const EvalCommand& command);

struct GenerateCommand {
  std::string checkpoint;
  std::string prompt;
  int64_t max_new_tokens = 200;
  double temperature = 0.8;
  int64_t top_k = 40;
  uint64_t seed = 0;
};
int generate(const GenerateCommand& command);

}  // namespace strata::train
