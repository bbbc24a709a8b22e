#!/usr/bin/env bash
# Builds embtab with ThreadSanitizer into its own virtual environment and runs the multithreaded
# tests with the TSan runtime preloaded into the (uninstrumented) interpreter. Any report fails.
#
#   bash ci/tsan.sh [pytest args; default: the thread tests below]
#
# Only embtab's C++ is instrumented: TSan sees its kernels, thread pool, write regions and buffer
# pool, and the pthread calls of everything (the GIL included), so the GIL orders Python-level
# accesses. Races inside numpy or CPython are out of its sight (ignore_noninstrumented_modules).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-tsan
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
# The thread tests need no peer library: numpy, pytest and hypothesis (conftest) only.
pip install -q . pytest hypothesis \
  --config-settings=cmake.define.EMBTAB_TSAN=ON \
  --config-settings=build-dir=build/tsan

libtsan=$(gcc -print-file-name=libtsan.so)
if [ ! -e "$libtsan" ]; then
  echo "tsan.sh: libtsan.so not found (gcc -print-file-name=libtsan.so)" >&2
  exit 1
fi
# die_after_fork=0: the fork tests start threads in a child of a multithreaded parent, which TSan
# refuses by default; the child's pool is new, so nothing it reports there would be a false alarm.
export TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1:die_after_fork=0:ignore_noninstrumented_modules=1"
if [ "$#" -eq 0 ]; then
  set -- tests/test_concurrency.py tests/test_safety_steps.py tests/test_safety_runtime.py tests/test_runtime.py
fi
# ASLR off: the TSan runtime of older GCCs cannot map its shadow memory beside a randomized layout
# with the kernel's high mmap entropy ("unexpected memory mapping").
setarch "$(uname -m)" -R env LD_PRELOAD="$libtsan" python -m pytest -q -p no:cacheprovider "$@"
