// End-to-end test of `strata bench ssm`, run through the built binary
// (STRATA_BINARY) at its CPU smoke size.
#include "support/check.h"
#include "support/cli.h"

using namespace strata;

using Result = testing::CommandResult;
using testing::run_strata;

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

TEST_CASE("strata bench ssm (or scan) runs one kernel at the sizes it is given") {
  Result r = run_strata("bench scan --device cpu --only scan --batch 1 --d-inner 8 --lengths 33 --states 4");
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
