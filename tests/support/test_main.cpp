// doctest main for every test binary. A binary built from tests/gpu/ calls
// strata::testing::require_cuda() first thing, which exits 77 (ctest: skipped)
// when no CUDA device is visible.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  return context.run();
}
