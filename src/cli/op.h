// What the `strata op` subcommands (src/cli/op_<family>.cpp) share: the command
// line `strata op NAME IN.h5 OUT.h5 [--device D]`, the device, and the check that
// IN.h5 holds only datasets the subcommand reads.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include "strata/checkpoint/h5file.h"
#include "strata/core/device.h"

namespace strata::cli {

using OpRun = std::function<void(const std::string& in_path, const std::string& out_path, const std::string& device)>;

// Registers `strata op <name> IN.h5 OUT.h5 [--device D]`; `help` (the datasets read
// and written) is the footer of its --help. The input file is not checked by CLI11:
// H5Reader's error for a missing file is one line like every other error.
void add_op_subcommand(CLI::App& op, const std::string& name, const std::string& description, const char* help,
                       OpRun run);

// The device named by --device, made the current GPU when it is one.
Device op_device(const std::string& name);

// An error naming the file and the dataset when `in` holds a dataset that is not in
// `known` (full names without the leading '/', e.g. "layout/block_size"): a
// misspelt option would otherwise be ignored and its default used.
void check_known_datasets(const std::string& op, const checkpoint::H5Reader& in,
                          const std::vector<std::string>& known);

}  // namespace strata::cli
