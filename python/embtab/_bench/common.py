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
    id_batches: int = 4  # batches of ids per lookup case; each call takes the next (see IdBatches)
    onehot_ids: int = 512  # ids per one-hot product (a batch of one-hot rows, times the table)

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(quick=True, num_rows=20_000, dim=128, gather_ids=20_000, num_bags=1_000, bag_len=20, id_batches=2,
                       onehot_ids=32)
        return cls()


class IdBatches:
    """Several batches of ids drawn alike, one of them current; a case's functions read the current
    one's arrays as attributes (``batches.bag_ids``). The runner moves to the next batch before
    every call it makes (warm-up and timed), so no call finds the rows that the call before it read
    still in the CPU's last-level cache, as a training loop's next batch would not. Repeating one
    batch would reward the rows' reuse, not the lookup: an 8-bit sum-bag call reads 26 MB of codes,
    most of which a 32 MB cache still holds at the next call, while a float32 call reads 102 MB."""

    def __init__(self, batches: List[Dict[str, Any]]) -> None:
        if not batches:
            raise ValueError("IdBatches needs at least one batch")
        self._batches = batches
        self.index = 0

    def __len__(self) -> int:
        return len(self._batches)

    def __getattr__(self, name: str) -> Any:
        batches = self.__dict__.get("_batches")
        if batches is None or name not in batches[self.index]:
            raise AttributeError(name)
        return batches[self.index][name]

    def select(self, index: int) -> None:
        self.index = index % len(self._batches)

    def advance(self) -> None:
        self.select(self.index + 1)


def draw_id_batches(config: Config, rng: np.random.Generator, torch: Any = None) -> IdBatches:
    """`config.id_batches` batches of uniform random ids into a `config.num_rows`-row table: `ids`
    (a gather's), `bag_ids` (num_bags x bag_len), `flat` (bag_ids raveled) and `weights` (one per
    bag id), and, when torch is given, torch tensors sharing their memory (``t_ids``, ...)."""
    batches = []
    for _ in range(config.id_batches):
        ids = rng.integers(0, config.num_rows, config.gather_ids, dtype=np.int64)
        bag_ids = rng.integers(0, config.num_rows, (config.num_bags, config.bag_len), dtype=np.int64)
        batch = {"ids": ids, "bag_ids": bag_ids, "flat": bag_ids.ravel(),
                 "weights": rng.random(bag_ids.shape, dtype=np.float32)}
        if torch is not None:
            batch.update({"t_" + k: torch.from_numpy(v) for k, v in list(batch.items())})
        batches.append(batch)
    return IdBatches(batches)


@dataclass
class Case:
    """One benchmark row.

    ``run`` is embtab's implementation; ``baseline`` the reference it is compared with (its name in
    ``baseline_name``: "numpy", "sklearn", "mmh3 loop", ...); ``peers`` further implementations shown
    as extra columns (e.g. torch). ``check(embtab_result, baseline_result)`` must raise if they
    differ; it runs before any timing. ``bytes_moved`` is the memory traffic of one run (for GB/s);
    ``items`` and ``item_unit`` give a rate such as keys/s. ``baseline_threaded`` marks a baseline
    that runs on embtab's threads (embtab's own float32 kernel), measured at each thread count.
    ``batches``: the ids its functions read, moved on before every call (checks use the first).
    """

    name: str
    sizes: str
    # Called with no arguments (the checks: with two). Callable[..., Any] because the cases bind loop
    # variables as lambda defaults (`lambda kind=kind: ...`), which mypy cannot match against
    # Callable[[], Any].
    run: Callable[..., Any]
    baseline: Optional[Callable[..., Any]] = None
    baseline_name: str = "numpy"
    check: Optional[Callable[..., None]] = None
    peers: Dict[str, Callable[..., Any]] = field(default_factory=dict)
    peer_checks: Dict[str, Callable[..., None]] = field(default_factory=dict)
    bytes_moved: Optional[float] = None
    items: Optional[float] = None
    item_unit: str = "items"
    repeats: Optional[int] = None  # override of the run's default
    baseline_threaded: bool = False  # the baseline runs on embtab's threads: measure it per thread count
    batches: Optional[IdBatches] = None


def optional_import(name: str) -> Any:
    """The module, or None when it is not installed (peers are optional)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1,
              before: Optional[Callable[[], None]] = None) -> List[float]:
    """Seconds per call for `repeats` calls after `warmup` untimed ones; `before`, if given, runs
    (untimed) before every call."""
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def assert_close(actual: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


def assert_equal(actual: Any, expected: Any) -> None:
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))
