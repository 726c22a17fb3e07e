#include "cli/commands.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "strata/core/device.h"
#include "strata/models/model.h"
#include "strata/train/trainer.h"

namespace strata::cli {

namespace {
int code = 0;
}

int exit_code() { return code; }
void set_exit_code(int value) { code = value; }

void add_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("train", "Train a model from a YAML recipe");
    auto options = std::make_shared<train::TrainCommand>();
    cmd->add_option("recipe", options->recipe, "Recipe YAML file")->required()->check(CLI::ExistingFile);
    cmd->add_option("overrides", options->overrides, "Overrides: key.path=value ...");
    cmd->add_option("--resume", options->resume,
                    "Continue from a checkpoint: 'auto' (the run's newest, if any) or a checkpoint path");
    cmd->add_flag("--dry-run", options->dry_run,
                  "Resolve and validate the recipe, build the model, print its size and a memory estimate, and exit");
    cmd->callback([options] { set_exit_code(train::train(*options)); });
  }
  {
    auto* cmd = app.add_subcommand("resume", "Continue a run from its newest readable checkpoint");
    auto run_dir = std::make_shared<std::string>();
    auto overrides = std::make_shared<std::vector<std::string>>();
    cmd->add_option("run_dir", *run_dir, "Run folder (runs/<name>)")->required()->check(CLI::ExistingDirectory);
    cmd->add_option("overrides", *overrides, "Overrides: key.path=value (e.g. train.steps=2000)");
    cmd->callback([run_dir, overrides] { set_exit_code(train::resume(*run_dir, *overrides)); });
  }
  {
    auto* cmd = app.add_subcommand("eval", "Evaluate a checkpoint on validation data; prints JSON");
    auto options = std::make_shared<train::EvalCommand>();
    cmd->add_option("checkpoint", options->checkpoint, "Checkpoint .h5 file")->required()->check(CLI::ExistingFile);
    cmd->add_option("overrides", options->overrides, "Overrides of the stored recipe (e.g. data.path=...)");
    cmd->add_option("--batches", options->batches, "Number of validation batches (default: eval.batches)");
    cmd->callback([options] { set_exit_code(train::evaluate(*options)); });
  }
  {
    auto* cmd = app.add_subcommand("generate", "Sample text from a language-model checkpoint");
    auto options = std::make_shared<train::GenerateCommand>();
    cmd->add_option("checkpoint", options->checkpoint, "Checkpoint .h5 file")->required()->check(CLI::ExistingFile);
    cmd->add_option("--prompt", options->prompt, "Text to continue");
    cmd->add_option("--tokens", options->max_new_tokens, "Number of tokens to generate")->check(CLI::PositiveNumber);
    cmd->add_option("--temperature", options->temperature, "Softmax temperature (0: greedy)");
    cmd->add_option("--top-k", options->top_k, "Sample among the k most likely tokens (0: all)");
    cmd->add_option("--seed", options->seed, "Sampling seed");
    cmd->callback([options] { set_exit_code(train::generate(*options)); });
  }
  {
    auto* cmd = app.add_subcommand("info", "Print the build and the devices Strata sees");
    auto has_cuda = std::make_shared<bool>(false);
    cmd->add_flag("--has-cuda", *has_cuda, "Exit 0 when a CUDA device is visible, 1 otherwise");
    cmd->callback([has_cuda] {
      if (*has_cuda) {
        set_exit_code(cuda_available() ? 0 : 1);
        return;
      }
      fmt::print("strata {}\nCUDA back end: {}\nCUDA devices: {}\nmodel families: {}\n", STRATA_VERSION,
#ifdef STRATA_WITH_CUDA
                 "built",
#else
                 "not built",
#endif
                 cuda_device_count(), fmt::join(models::families(), ", "));
    });
  }
  add_prepare_command(app);
  add_bench_command(app);
  add_op_command(app);
  add_plot_command(app);
  add_dist_commands(app);
}

}  // namespace strata::cli
