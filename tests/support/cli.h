// Running the built strata program from tests: ctest sets STRATA_BINARY.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>

namespace strata::testing {

struct CommandResult {
  int exit_code;
  std::string out, err;
};

inline std::string binary() {
  const char* path = std::getenv("STRATA_BINARY");
  REQUIRE_MESSAGE(path != nullptr, "STRATA_BINARY is not set (run through ctest)");
  return path;
}

inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `strata <arguments>` through the shell, stdout and stderr captured in a
// folder of its own that is removed afterwards.
inline CommandResult run_strata(const std::string& arguments) {
  static std::atomic<int> calls{0};
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / fmt::format("strata-run-{}-{}", getpid(), calls++);
  std::filesystem::create_directories(dir);
  std::string command = fmt::format("{} {} >{}/out 2>{}/err", binary(), arguments, dir.string(), dir.string());
  int status = std::system(command.c_str());
  CommandResult result{WIFEXITED(status) ? WEXITSTATUS(status) : 128, slurp(dir / "out"), slurp(dir / "err")};
  std::filesystem::remove_all(dir);
  return result;
}

}  // namespace strata::testing
