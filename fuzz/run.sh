#!/usr/bin/env bash
# Runs every atheris fuzz target for a while. Usage:
#   bash fuzz/run.sh [seconds per target, default 20]
# Under ci/sanitize.sh (ASan preloaded) a memory error stops a run with a report; any other crash,
# or an exception outside the bad-input contract, or a wrong result fails it too. Run longer with
# e.g. `bash fuzz/run.sh 3600`; crashing inputs are written to fuzz/artifacts/.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
mkdir -p artifacts
status=0
for target in fuzz_lookup fuzz_sparse fuzz_hashing fuzz_subwords fuzz_checkpoint; do
  log="artifacts/$target.log"
  python "$target.py" -max_total_time="$seconds" -rss_limit_mb=4096 -artifact_prefix=artifacts/ \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(grep -E "^stat::number_of_executed_units" "$log" | awk '{print $2}')
  echo "$target: ${runs:-?} inputs in ${seconds} s, exit $rc"
  if [ "$rc" -ne 0 ]; then
    tail -40 "$log"
    status=1
  fi
done
exit $status
