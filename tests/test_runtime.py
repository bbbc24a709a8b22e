"""Version, threads and SIMD-path selection."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import embtab


def test_version():
    # The one source of the version is pyproject.toml; the build passes it to the compiled module.
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert declared is not None
    assert embtab.__version__ == declared.group(1)
    assert embtab.__version__ == importlib.metadata.version("embtab")


def test_simd_paths():
    paths = embtab.available_simd_paths()
    assert paths[0] == "scalar"
    assert embtab.simd_path() in paths


def test_num_threads_roundtrip():
    default = embtab.get_num_threads()
    assert default >= 1
    embtab.set_num_threads(3)
    assert embtab.get_num_threads() == 3
    embtab.set_num_threads(0)
    assert embtab.get_num_threads() == default
    assert default == len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else True


@pytest.mark.parametrize("path", embtab.available_simd_paths())
def test_environment_override(path):
    code = "import embtab; print(embtab.simd_path())"
    env = dict(os.environ, EMBTAB_SIMD=path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == path


def test_environment_override_refuses_unknown_path():
    env = dict(os.environ, EMBTAB_SIMD="neon9")
    out = subprocess.run([sys.executable, "-c", "import embtab"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "SIMD path" in out.stderr


def test_pool_survives_fork():
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    import numpy as np

    table = np.ones((100, 64), np.float32)
    ids = np.zeros((10_000,), np.int64)
    embtab.gather(table, ids)  # pool started in the parent
    code = (
        "import os, numpy as np, embtab\n"
        "t = np.ones((100, 64), np.float32); i = np.zeros(10000, np.int64)\n"
        "embtab.gather(t, i)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    ok = embtab.gather(t, i).sum() == 640000\n"
        "    os._exit(0 if ok else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.WEXITSTATUS(status))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "0"
