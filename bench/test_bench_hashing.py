"""pytest-benchmark: embtab's hashing against scikit-learn, mmh3 and fastText on the same inputs,
each pair in the same group (the cases of ``python -m embtab bench``, see
``embtab._bench.hashing_cases``).

Run with ``python -m pytest bench/test_bench_hashing.py`` (not part of the test suite). Quick sizes
by default; ``EMBTAB_BENCH_FULL=1`` uses the issue's sizes (10M int keys, 1M strings / tokens / words).
"""

from __future__ import annotations

import os
from typing import Any, Dict

import pytest

from embtab._bench.common import Case, Config
from embtab._bench.hashing_cases import cases

CASES: Dict[str, Case] = {c.name: c for c in cases(Config.make(quick=os.environ.get("EMBTAB_BENCH_FULL") != "1"))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_embtab(benchmark: Any, name: str) -> None:
    case = CASES[name]
    if case.baseline is not None and case.check is not None:
        case.check(case.run(), case.baseline())  # equal results before any timing
    benchmark.group = name
    benchmark(case.run)


@pytest.mark.parametrize("name", sorted(name for name, c in CASES.items() if c.baseline is not None))
def test_baseline(benchmark: Any, name: str) -> None:
    case = CASES[name]
    benchmark.group = name
    benchmark.extra_info["baseline"] = case.baseline_name
    benchmark.pedantic(case.baseline, rounds=3, iterations=1, warmup_rounds=1)
