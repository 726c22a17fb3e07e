#!/usr/bin/env bash
# On the GPU machine, from the repository root: runs every bundled test binary
# (the gpu ones included), optionally under compute-sanitizer, into one log under $OUT:
#   run-gpu-tests.sh [memcheck|racecheck] [filter]
set -uo pipefail
tool=${1:-}
filter=${2:-}
export STRATA_BINARY=$PWD/dist/strata
failed=0
log="${OUT:-/tmp}/gpu-tests${tool:+.$tool}.log"
: >"$log"
for t in dist/tests/*_test; do
  [[ -n "$filter" && "$t" != *"$filter"* ]] && continue
  if [[ -n "$tool" ]]; then
    echo "=== $t ($tool)" >>"$log"
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$t" -s >>"$log" 2>&1
  else
    echo "=== $t" >>"$log"
    "$t" -s >>"$log" 2>&1
  fi
  rc=$?
  echo "$(basename "$t") ${tool:-plain}: exit $rc"
  ((rc != 0 && rc != 77)) && failed=1
done
exit $failed
