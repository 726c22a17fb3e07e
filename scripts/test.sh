#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test (the
# `gpu`-labelled ones skip when no CUDA device is visible).
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP threads that spin while waiting starve the other processes on a small
# machine (ctest runs two test binaries at once): let them sleep instead.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
scripts/install-deps.sh
scripts/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
