// Shared by the `strata bench` subcommands (src/cli/bench*.cpp).
#pragma once

#include <string>
#include <vector>

namespace strata::cli {

// One result line: the name, the mean time, the rate (amount per second, in `unit`)
// and that rate as a percentage of `limit`, a reference measured in the same run.
void report(const std::string& name, double ms, double amount, const char* unit, double limit);

// Whether a `--only` list asks for `group` (an empty list asks for everything).
bool selected(const std::vector<std::string>& only, const std::string& group);

}  // namespace strata::cli
