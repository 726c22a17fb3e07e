#!/usr/bin/env bash
# The main job: installs what is missing, builds, prepares the King James corpus and
# trains the default recipe (the byte-level Transformer; on CUDA when a device is
# visible, else the CPU-sized variant).
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP threads that spin while waiting starve the other processes on a small
# machine (ctest runs two test binaries at once): let them sleep instead.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
scripts/install-deps.sh
scripts/build.sh
build/strata prepare bible_kjv
if build/strata info --has-cuda >/dev/null 2>&1; then
  build/strata train recipes/transformer/kjv-gpu.yaml "$@"
else
  build/strata train recipes/transformer/kjv-cpu.yaml "$@"
fi
