#!/usr/bin/env bash
# On the GPU machine, from the repository root: runs the bundled test binaries whose
# name contains FILTER (all when empty), optionally under compute-sanitizer, into one
# gzipped log under $OUT, and prints one line per binary plus every failed check.
#   run-gpu-tests.sh [memcheck|racecheck|plain] [filter]
set -uo pipefail
tool=${1:-plain}
filter=${2:-}
export STRATA_BINARY=$PWD/dist/strata
# Bundled libraries load each other (libgloo needs libhiredis) without runpaths of their own.
export LD_LIBRARY_PATH=$PWD/dist${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export NCCL_NVLS_ENABLE=0
log="${OUT:-/tmp}/gpu-tests.$tool.log"
: >"$log"
failed=0
for t in dist/tests/*_test; do
  [[ -n "$filter" && "$t" != *"$filter"* ]] && continue
  echo "=== $t ($tool)" >>"$log"
  if [[ "$tool" == plain ]]; then
    "$t" -s >>"$log" 2>&1
  else
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$t" >>"$log" 2>&1
  fi
  rc=$?
  echo "$(basename "$t") $tool: exit $rc"
  ((rc != 0 && rc != 77)) && failed=1
done
grep -E -B2 -A5 "ERROR|FATAL|========= (Invalid|Race|Error)" "$log" | head -150
gzip -f "$log"
exit $failed
