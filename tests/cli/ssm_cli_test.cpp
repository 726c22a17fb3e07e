// End-to-end test of `strata bench ssm`, run through the built binary
// (STRATA_BINARY) at its CPU smoke size.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "support/check.h"

namespace fs = std::filesystem;
using namespace strata;

namespace {

struct Result {
  int exit_code;
  std::string out, err;
};

std::string slurp(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `strata <arguments>` with stdout and stderr captured.
Result run_strata(const std::string& arguments) {
  const char* binary = std::getenv("STRATA_BINARY");
  REQUIRE_MESSAGE(binary != nullptr, "STRATA_BINARY is not set (run through ctest)");
  const fs::path dir = fs::temp_directory_path() / fmt::format("strata-ssm-cli-test-{}", getpid());
  fs::create_directories(dir);
  std::string command = fmt::format("{} {} >{}/out 2>{}/err", binary, arguments, dir.string(), dir.string());
  int status = std::system(command.c_str());
  Result result{WIFEXITED(status) ? WEXITSTATUS(status) : 128, slurp(dir / "out"), slurp(dir / "err")};
  fs::remove_all(dir);
  return result;
}

}  // namespace

TEST_CASE("strata bench ssm runs at its CPU smoke size and prints every kernel against the copy") {
  Result r = run_strata("bench ssm --device cpu");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  for (const char* line :
       {"copy float32[2^24]", "selective_scan forward float32[2, 128, 256] N 16",
        "selective_scan backward float32[2, 128, 256] N 16", "selective_scan forward float32[2, 128, 256] N 1",
        "selective_scan backward float32[2, 128, 256] N 1", "causal_conv1d forward float32[2, 128, 256] kernel 4",
        "causal_conv1d backward float32[2, 128, 256] kernel 4", "ssd_chunked forward float32[2, 256, 8 x 16] N 16",
        "ssd_chunked backward float32[2, 256, 8 x 16] N 16 chunk 64", "% of copy", "Mtok/s", "Gexp/s"})
    CHECK_MESSAGE(r.out.find(line) != std::string::npos, line << " missing from\n" << r.out);
}

TEST_CASE("strata bench ssm runs one kernel at the sizes it is given") {
  Result r = run_strata("bench ssm --device cpu --only scan --batch 1 --d-inner 8 --lengths 33 --states 4");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("selective_scan backward float32[1, 8, 33] N 4") != std::string::npos);
  CHECK(r.out.find("causal_conv1d") == std::string::npos);
  CHECK(r.out.find("ssd_chunked") == std::string::npos);
}

TEST_CASE("strata bench ssm refuses an unknown kernel and a state size over 256") {
  Result r = run_strata("bench ssm --device cpu --only scna");
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("scna") != std::string::npos);
  r = run_strata("bench ssm --device cpu --states 257");
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("257") != std::string::npos);
}
