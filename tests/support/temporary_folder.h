// A folder of the test's own under the system's temporary directory.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

namespace strata::testing {

// <temporary directory>/strata-<name>-<pid>, emptied when made and removed with
// this object.
struct TemporaryFolder {
  std::filesystem::path path;

  explicit TemporaryFolder(const std::string& name)
      : path(std::filesystem::temp_directory_path() / ("strata-" + name + "-" + std::to_string(getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TemporaryFolder() { std::filesystem::remove_all(path); }
  TemporaryFolder(const TemporaryFolder&) = delete;
  TemporaryFolder& operator=(const TemporaryFolder&) = delete;

  // The path of `name` inside the folder.
  std::string file(const std::string& name) const { return (path / name).string(); }
};

}  // namespace strata::testing
