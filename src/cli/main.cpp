// The strata program. Every error is printed as one line ("strata: <message>")
// with a non-zero exit; STRATA_DEBUG=1 adds the source location.
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <iostream>

#include "cli/commands.h"
#include "strata/core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"Strata: train state-space, sparse-attention and mixture-of-experts models from YAML recipes"};
  app.set_version_flag("--version", std::string("strata ") + STRATA_VERSION);
  app.require_subcommand(1);
  strata::cli::add_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const strata::Error& e) {
    std::cerr << "strata: " << e.what() << "\n";
    if (std::getenv("STRATA_DEBUG")) std::cerr << "  at " << e.where() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "strata: " << e.what() << "\n";
    return 1;
  }
  return strata::cli::exit_code();
}
