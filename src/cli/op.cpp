// strata op: run one differentiable op on inputs read from an HDF5 file and write
// its outputs and input gradients to another, so that other frameworks can check
// Strata's kernels (and Strata theirs). Each kernel family adds a subcommand in
// its own file (src/cli/op_<family>.cpp); see `strata op <family> --help` for the
// datasets it reads and writes.
#include "cli/op.h"

#include <algorithm>
#include <memory>

#include "cli/commands.h"
#include "strata/core/error.h"
#include "strata/core/memory.h"

namespace strata::cli {

void add_op_subcommand(CLI::App& op, const std::string& name, const std::string& description, const char* help,
                       OpRun run) {
  auto* cmd = op.add_subcommand(name, description + "; outputs and gradients to OUT.h5 (datasets: see --help)");
  cmd->footer(help);
  auto in = std::make_shared<std::string>(), out = std::make_shared<std::string>();
  auto device = std::make_shared<std::string>("cpu");
  cmd->add_option("in", *in, "Input HDF5 file")->required();
  cmd->add_option("out", *out, "Output HDF5 file")->required();
  cmd->add_option("--device", *device, "cpu, cuda or cuda:N");
  cmd->callback([in, out, device, run] { run(*in, *out, *device); });
}

Device op_device(const std::string& name) {
  Device device = parse_device(name);
  if (device.is_cuda()) cuda::set_device(device.index);
  return device;
}

void check_known_datasets(const std::string& op, const checkpoint::H5Reader& in,
                          const std::vector<std::string>& known) {
  for (const std::string& full_name : in.list("/")) {
    const std::string name = full_name.substr(1);  // list() gives "/name"
    STRATA_CHECK(std::find(known.begin(), known.end(), name) != known.end(),
                 "op {}: {}: dataset '{}' is not an input of this op (see strata op {} --help)", op, in.path(), name,
                 op);
  }
}

void add_op_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("op", "Run one op on HDF5 inputs and write its outputs and gradients (cross-checks)");
  cmd->require_subcommand(1);
  add_op_moe_command(*cmd);
  add_op_product_key_memory_command(*cmd);
  add_op_attention_command(*cmd);
  add_op_ssm_commands(*cmd);
}

}  // namespace strata::cli
