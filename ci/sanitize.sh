#!/usr/bin/env bash
# Builds embtab with AddressSanitizer + UndefinedBehaviorSanitizer into its own virtual
# environment, runs the whole test suite with the ASan runtime preloaded, then each atheris fuzz
# target for EMBTAB_FUZZ_SECONDS (default 15) seconds under the same runtime. Any report fails.
#
#   bash ci/sanitize.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-sanitize
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
pip install -q ".[test,fuzz]" \
  --config-settings=cmake.define.EMBTAB_SANITIZE=ON \
  --config-settings=build-dir=build/sanitize

libasan=$(gcc -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
  echo "sanitize.sh: libasan.so not found (gcc -print-file-name=libasan.so)" >&2
  exit 1
fi
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# libstdc++ is preloaded too: ASan must see it at start-up to intercept C++ exceptions (python
# itself does not link it).
preload="$libasan $(gcc -print-file-name=libstdc++.so)"
# The multi-node Ray cluster test is left out here: it starts three raylets, which under ASan on a
# 2-core machine can miss Ray's own start-up timeout (it exercises Ray's failover, and runs in the
# plain test run; tests/test_distributed.py runs Ray actors under ASan).
LD_PRELOAD="$preload" python -m pytest -q -p no:cacheprovider --ignore=tests/test_distributed_cluster.py "$@"
LD_PRELOAD="$preload" bash fuzz/run.sh "${EMBTAB_FUZZ_SECONDS:-15}"
