// strata op: run one differentiable op on inputs read from an HDF5 file and write
// its outputs and input gradients to another, so that other frameworks can check
// Strata's kernels (and Strata theirs). Each kernel family adds a subcommand in
// its own file (src/cli/op_<family>.cpp); see `strata op <family> --help` for the
// datasets it reads and writes.
#include "cli/commands.h"

namespace strata::cli {

void add_op_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("op", "Run one op on HDF5 inputs and write its outputs and gradients (cross-checks)");
  cmd->require_subcommand(1);
  add_op_moe_command(*cmd);
  add_op_product_key_memory_command(*cmd);
  add_op_attention_command(*cmd);
  add_op_ssm_commands(*cmd);
}

}  // namespace strata::cli
