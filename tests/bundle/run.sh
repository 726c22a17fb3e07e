#!/usr/bin/env bash
# scripts/bundle.sh end to end: bundles BUILD_DIR into OUT_DIR and checks that the
# bundle holds the program, its library, the tests and the non-CUDA libraries they
# need (and not glibc's or CUDA's), and that the program loads those copies through
# its $ORIGIN rpath rather than the system's.
#   tests/bundle/run.sh BUILD_DIR OUT_DIR
set -euo pipefail
build=$1
out=$2
fail() { echo "bundle_test: $*" >&2; exit 1; }
"$(dirname "$0")/../../scripts/bundle.sh" "$build" "$out" >/dev/null
for file in strata libstrata.so run-gpu-tests.sh tests/cli_test; do
  [[ -f "$out/$file" ]] || fail "$out/$file is missing"
done
# (ldd's output is kept rather than piped into grep -q, whose early exit would make
# ldd fail with SIGPIPE under pipefail.)
loaded=$(ldd "$out/strata")
for lib in libyaml-cpp libhdf5; do
  compgen -G "$out/$lib*.so*" >/dev/null || fail "$lib was not bundled"
  # ldd names the copy next to the binary: the rpath finds it before the system's.
  grep -q "$lib[^ ]* => $(realpath "$out")/" <<<"$loaded" || fail "strata does not load $lib from $out"
done
for lib in libc.so libstdc++ libcudart libcublas; do
  if compgen -G "$out/$lib*" >/dev/null; then fail "$lib must not be bundled"; fi
done
"$out/strata" --help >/dev/null || fail "$out/strata --help failed"
echo "bundle_test: $(du -sh "$out" | cut -f1) in $out, libraries loaded from it"
