#!/usr/bin/env bash
# Builds embtab with AddressSanitizer + UndefinedBehaviorSanitizer into its own virtual
# environment and runs the whole test suite with the ASan runtime preloaded. Any report fails.
#
#   bash ci/sanitize.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-sanitize
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
pip install -q ".[test]" \
  --config-settings=cmake.define.EMBTAB_SANITIZE=ON \
  --config-settings=build-dir=build/sanitize

libasan=$(gcc -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
  echo "sanitize.sh: libasan.so not found (gcc -print-file-name=libasan.so)" >&2
  exit 1
fi
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# Hypothesis is slow under ASan; the property tests still run, with fewer examples.
export EMBTAB_SANITIZED=1
# libstdc++ is preloaded too: ASan must see it at start-up to intercept C++ exceptions (python
# itself does not link it).
LD_PRELOAD="$libasan $(gcc -print-file-name=libstdc++.so)" python -m pytest -q -p no:cacheprovider "$@"
