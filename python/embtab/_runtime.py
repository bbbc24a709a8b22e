"""Threads and SIMD paths."""

from __future__ import annotations

import operator
from typing import List

from . import _core


def get_num_threads() -> int:
    """Number of threads embtab's kernels use."""
    return int(_core.get_num_threads())


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in every kernel (0 restores the default: the CPUs available to this process).

    Results are bitwise identical for every thread count.
    """
    _core.set_num_threads(operator.index(n))


def simd_path() -> str:
    """The instruction set the kernels run with now: "scalar", "avx2" or "avx512"."""
    return str(_core.simd_path())


def set_simd_path(name: str) -> None:
    """Switch the kernels to another compiled path (ValueError if this CPU cannot run it)."""
    _core.set_simd_path(name)


def available_simd_paths() -> List[str]:
    """The paths this build has and this CPU supports, slowest first."""
    return list(_core.available_simd_paths())
