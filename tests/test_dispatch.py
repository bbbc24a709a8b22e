"""Run-time dispatch: a SIMD path runs only where the CPU (and its OS) supports every feature the
path is compiled for, checked against the kernel's own account of the CPU (/proc/cpuinfo)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import embtab

# The -m flags of each path (CMakeLists.txt) that the issue names; the build may add implied ones.
AVX2_FEATURES = {"avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt", "popcnt"}
AVX512_FEATURES = AVX2_FEATURES | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
# GCC's -m names as /proc/cpuinfo spells them (Linux lists lzcnt as "abm").
CPUINFO_NAME = {"bmi": "bmi1", "lzcnt": "abm"}

x86_only = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 SIMD paths")


def cpuinfo_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    pytest.skip("no /proc/cpuinfo")


def available_in_subprocess(disabled: str) -> list:
    env = dict(os.environ, EMBTAB_DISABLE_CPU_FEATURES=disabled)
    env.pop("EMBTAB_SIMD", None)
    code = "import embtab; print(','.join(embtab.available_simd_paths()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(",")


@x86_only
def test_each_path_requires_every_feature_it_is_compiled_for():
    assert embtab._core.simd_path_features("scalar") == []
    assert set(embtab._core.simd_path_features("avx2")) >= AVX2_FEATURES
    assert set(embtab._core.simd_path_features("avx512")) >= AVX512_FEATURES
    with pytest.raises(ValueError, match="unknown SIMD path"):
        embtab._core.simd_path_features("neon")


@x86_only
def test_available_paths_follow_the_cpu_flags_the_os_reports():
    # Linux lists a feature in /proc/cpuinfo only when the OS supports it (AVX and AVX-512 need the
    # OS to save their registers), so a path is available exactly when all its features are listed.
    flags = cpuinfo_flags()
    expected = ["scalar"] + [
        path for path in ("avx2", "avx512")
        if all(CPUINFO_NAME.get(f, f) in flags for f in embtab._core.simd_path_features(path))
    ]
    assert embtab.available_simd_paths() == expected
    assert embtab._core.best_simd_path() == expected[-1]


@x86_only
def test_a_missing_feature_disables_every_path_that_needs_it():
    available = embtab.available_simd_paths()
    if "avx2" not in available:
        pytest.skip("this CPU runs no AVX2 path")
    # Features that a CPU with AVX2 nearly always has, but the AVX2 objects are compiled for too.
    for feature in ("lzcnt", "bmi", "bmi2", "popcnt", "f16c", "fma"):
        assert available_in_subprocess(feature) == ["scalar"], feature
    assert available_in_subprocess("AVX512BW, unknown_name") == ["scalar", "avx2"]
    assert available_in_subprocess("") == available
    # A path that is not available cannot be chosen.
    env = dict(os.environ, EMBTAB_DISABLE_CPU_FEATURES="bmi2", EMBTAB_SIMD="avx2")
    out = subprocess.run([sys.executable, "-c", "import embtab"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "not available" in out.stderr
