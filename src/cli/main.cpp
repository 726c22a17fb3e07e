// The strata program.
#include <CLI/CLI.hpp>

#include <iostream>

#include "strata/core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"Strata: train state-space, sparse-attention and mixture-of-experts models"};
  app.set_version_flag("--version", std::string("strata ") + STRATA_VERSION);
  app.require_subcommand(0);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
