"""pytest-benchmark over the cases of ``python -m embtab bench`` (``python/embtab/_bench/*_cases.py``):
one definition of each case serves both. Per case, embtab, its baseline and each peer are timed in
one group, after their results are checked against each other (as the bench command does).

Run with ``python -m pytest bench`` (not part of the test suite), e.g.
``python -m pytest bench -k "lookup and bags_sum"``. Quick sizes by default; ``EMBTAB_BENCH_FULL=1``
uses the full sizes of ``python -m embtab bench`` (one module's tables in memory at a time).
"""

from __future__ import annotations

import gc
import importlib
import os
import pkgutil
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest

from embtab import _bench
from embtab._bench.common import Case, Config

FULL = os.environ.get("EMBTAB_BENCH_FULL") == "1"
MODULES = sorted(m.name for m in pkgutil.iter_modules(_bench.__path__) if m.name.endswith("_cases"))
# Timing budget per benchmark: rounds enough to fill it (at least 3, at most 50).
BUDGET_S = 1.0


def build(module: str, quick: bool) -> Dict[str, Case]:
    cases = importlib.import_module(f"embtab._bench.{module}").cases(Config.make(quick=quick))
    return {case.name: case for case in cases}


# The quick cases name what there is to benchmark (and are the cases themselves at quick sizes).
QUICK = {module: build(module, quick=True) for module in MODULES}
_full: Dict[str, Any] = {}


def cases_of(module: str) -> Dict[str, Case]:
    if not FULL:
        return QUICK[module]
    if _full.get("module") != module:
        _full.clear()  # free the previous module's tables first
        gc.collect()
        _full.update(module=module, cases=build(module, quick=False))
    return _full["cases"]


def implementations(case: Case) -> List[str]:
    return ["embtab"] + (["baseline"] if case.baseline is not None else []) + [f"peer:{p}" for p in case.peers]


PARAMS: List[Tuple[str, str, str]] = [
    (module, name, impl) for module, cases in QUICK.items() for name, case in cases.items()
    for impl in implementations(case)
]


def function_of(case: Case, impl: str) -> Callable[[], Any]:
    if impl == "embtab":
        return case.run
    if impl == "baseline":
        assert case.baseline is not None
        return case.baseline
    return case.peers[impl.split(":", 1)[1]]


def check(case: Case, impl: str) -> None:
    """embtab's result against this implementation's, on the first batch of ids."""
    if case.batches is not None:
        case.batches.select(0)
    if impl == "baseline" and case.check is not None:
        case.check(case.run(), function_of(case, impl)())
    elif impl.startswith("peer:") and impl[5:] in case.peer_checks:
        case.peer_checks[impl[5:]](case.run(), function_of(case, impl)())


@pytest.mark.parametrize("module, name, impl", PARAMS, ids=[f"{m[:-6]}:{n}:{i}" for m, n, i in PARAMS])
def test_case(benchmark: Any, module: str, name: str, impl: str) -> None:
    case = cases_of(module)[name]
    check(case, "baseline" if impl == "embtab" else impl)
    fn = function_of(case, impl)
    advance = case.batches.advance if case.batches is not None else None
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    benchmark.group = f"{module[:-6]}: {name} ({case.sizes})"
    benchmark.extra_info["implementation"] = case.baseline_name if impl == "baseline" else impl
    rounds = case.repeats or max(3, min(50, int(BUDGET_S / max(once, 1e-9))))
    benchmark.pedantic(fn, setup=advance, rounds=rounds, iterations=1, warmup_rounds=1)
