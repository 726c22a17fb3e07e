// Subcommands of the strata program. Each registers its flags on the app and runs
// from its parse callback; the exit code it sets is the program's.
#pragma once

#include <CLI/CLI.hpp>

namespace strata::cli {

void add_commands(CLI::App& app);
int exit_code();
void set_exit_code(int code);

// Defined in their own files.
void add_bench_command(CLI::App& app);  // `bench` and its per-family subcommands (src/cli/bench*.cpp)
void add_op_command(CLI::App& app);     // `op` and its per-family subcommands (src/cli/op*.cpp)
void add_prepare_command(CLI::App& app);
void add_plot_command(CLI::App& app);
void add_bench_moe_command(CLI::App& bench);  // src/cli/bench_moe.cpp
void add_op_moe_command(CLI::App& op);        // src/cli/op_moe.cpp
void add_op_product_key_memory_command(CLI::App& op);  // src/cli/op_moe.cpp
void add_bench_attention_command(CLI::App& bench);  // src/cli/bench_attention.cpp
void add_bench_ssm_command(CLI::App& bench);  // src/cli/bench_ssm.cpp
void add_op_attention_command(CLI::App& op);        // src/cli/op_attention.cpp
void add_op_ssm_commands(CLI::App& op);  // selective_scan, causal_conv1d, ssd, gated_rms_norm (src/cli/op_ssm.cpp)
void add_dist_commands(CLI::App& app);  // launch, bench-comm, rank flags of train/resume (src/cli/launch.cpp)

}  // namespace strata::cli
