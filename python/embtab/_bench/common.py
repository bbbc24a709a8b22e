"""The Case type and timing helpers shared by the benchmark case modules."""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np


@dataclass
class Config:
    """Sizes for one run. ``quick`` shrinks everything to run in seconds."""

    quick: bool = False
    num_rows: int = 1_000_000
    dim: int = 128
    gather_ids: int = 200_000
    num_bags: int = 10_000
    bag_len: int = 20
    seed: int = 0

    @classmethod
    def make(cls, quick: bool) -> "Config":
        if quick:
            return cls(quick=True, num_rows=20_000, dim=128, gather_ids=20_000, num_bags=1_000, bag_len=20)
        return cls()


@dataclass
class Case:
    """One benchmark row.

    ``run`` is embtab's implementation; ``baseline`` the reference it is compared with (its name in
    ``baseline_name``: "numpy", "sklearn", "mmh3 loop", ...); ``peers`` further implementations shown
    as extra columns (e.g. torch). ``check(embtab_result, baseline_result)`` must raise if they
    differ; it runs before any timing. ``bytes_moved`` is the memory traffic of one run (for GB/s);
    ``items`` and ``item_unit`` give a rate such as keys/s. ``baseline_threaded`` marks a baseline
    that runs on embtab's threads (embtab's own float32 kernel), measured at each thread count.
    """

    name: str
    sizes: str
    run: Callable[[], Any]
    baseline: Optional[Callable[[], Any]] = None
    baseline_name: str = "numpy"
    check: Optional[Callable[[Any, Any], None]] = None
    peers: Dict[str, Callable[[], Any]] = field(default_factory=dict)
    peer_checks: Dict[str, Callable[[Any, Any], None]] = field(default_factory=dict)
    bytes_moved: Optional[float] = None
    items: Optional[float] = None
    item_unit: str = "items"
    repeats: Optional[int] = None  # override of the run's default
    baseline_threaded: bool = False  # the baseline runs on embtab's threads: measure it per thread count


def optional_import(name: str) -> Any:
    """The module, or None when it is not installed (peers are optional)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> List[float]:
    """Seconds per call for `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def assert_close(actual: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


def assert_equal(actual: Any, expected: Any) -> None:
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))
