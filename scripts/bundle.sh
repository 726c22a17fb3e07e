#!/usr/bin/env bash
# Copies the built program, library and test binaries into dist/ together with the
# non-CUDA shared libraries they need (yaml-cpp, HDF5, fmt, ...), so the build runs
# on a GPU machine that has CUDA but not those libraries. Binaries find them through
# their $ORIGIN rpath (set in CMakeLists.txt). dist/ is git-ignored.
#   scripts/bundle.sh [BUILD_DIR (build)] [OUT_DIR (dist)]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
dist=${2:-dist}
rm -rf "$dist" && mkdir -p "$dist/tests"
cp "$build/strata" "$build/libstrata.so" "$dist/"
find "$build/tests" -maxdepth 1 -type f -name '*_test' -exec cp {} "$dist/tests/" \;
# Everything ldd resolves, minus glibc and the C++ runtime (present everywhere, and
# glibc's parts must match each other) and CUDA's own
# libraries (present on the GPU machine, matched to its driver).
ldd "$dist/strata" "$dist/libstrata.so" "$dist"/tests/* 2>/dev/null | awk '/=> \//{print $3}' | sort -u |
  grep -v -E '/(libc|libm|libdl|librt|libpthread|libresolv|libutil|libanl|libnss_[a-z]+|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' |
  grep -v -E 'lib(cuda|cudart|cublas|cublasLt|cufft|cudnn[a-z_]*|nccl|nvrtc|nvJitLink)\.so' |
  grep -v "^$PWD/" | while read -r lib; do cp -L "$lib" "$dist/"; done
cp scripts/run-gpu-tests.sh "$dist/"
echo "$dist/: $(du -sh "$dist" | cut -f1)"
