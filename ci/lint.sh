#!/usr/bin/env bash
# Style and type checks (issue 13): ruff over the repository, mypy --strict over python/embtab, and
# the stub of the compiled module (python/embtab/_core.pyi) against the built module. Runs in the
# current virtual environment, where embtab must already be installed (the stub checks import the
# built embtab._core). Any finding fails the run.
#
# Not run: `ruff format --check`. The code aligns continuation lines under the opening bracket,
# which ruff format rewrites: it would reformat 53 of the 77 Python files (~2,800 changed lines).
set -euo pipefail
cd "$(dirname "$0")/.."

# The `lint` extra's requirements alone: `pip install ".[lint]"` would rebuild embtab as well.
mapfile -t requirements < <(python - <<'EOF'
try:
    import tomllib
except ImportError:  # Python < 3.11: pip's own copy of the same parser
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["lint"]))
EOF
)
python -m pip install --quiet "${requirements[@]}"

status=0
step() {
    echo "== $*"
    local start=$SECONDS
    "$@" || status=1
    echo "   ($((SECONDS - start)) s)"
}

step ruff check .
step python -m mypy                       # files and flags: [tool.mypy] in pyproject.toml
# From outside the repository, so that `embtab` is the installed package, not python/embtab.
step bash -c 'cd / && exec python -m mypy.stubtest embtab._core --allowlist "$0"' "$PWD/ci/stubtest-allowlist.txt"
# stubtest cannot see pybind11's argument lists; this compares them with the stub's.
step python ci/check_core_stub.py

exit $status
