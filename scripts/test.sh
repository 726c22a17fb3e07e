#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test (the
# `gpu`-labelled ones skip when no CUDA device is visible).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
