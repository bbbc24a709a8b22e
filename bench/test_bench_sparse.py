"""pytest-benchmark: embtab's sparse gradients and training steps against numpy (and torch where
installed) on the same inputs, same group; each result is checked before it is timed.

Run with ``python -m pytest bench`` (not part of the test suite).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import pytest

import embtab
from embtab._bench.common import optional_import
from embtab._bench.sparse_cases import TrainingStep, coalesce_numpy

NUM_ROWS, DIM = 200_000, 128
NUM_IDS = 200_000
NUM_BAGS, BAG_LEN = 10_000, 20


@pytest.fixture(scope="module")
def data() -> Dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "ids": rng.integers(0, NUM_ROWS, NUM_IDS),
        "values": rng.standard_normal((NUM_IDS, DIM), dtype=np.float32),
        "bags": rng.integers(0, NUM_ROWS, (NUM_BAGS, BAG_LEN)),
        "table": rng.standard_normal((NUM_ROWS, DIM), dtype=np.float32),
        "target": rng.standard_normal((NUM_BAGS, DIM), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def training(data: Dict[str, Any]) -> TrainingStep:
    return TrainingStep(data["table"], data["bags"], data["target"], optional_import("torch"))


def test_scatter_add_embtab(benchmark: Any, data: Dict[str, Any]) -> None:
    ids, values = data["ids"], data["values"]
    target, expected = np.zeros((NUM_ROWS, DIM), np.float32), np.zeros((NUM_ROWS, DIM), np.float32)
    embtab.scatter_add(target, ids, values)
    np.add.at(expected, ids, values)
    np.testing.assert_array_equal(target, expected)
    benchmark.group = "scatter_add"
    benchmark(embtab.scatter_add, target, ids, values)


def test_scatter_add_numpy(benchmark: Any, data: Dict[str, Any]) -> None:
    target = np.zeros((NUM_ROWS, DIM), np.float32)
    benchmark.group = "scatter_add"
    benchmark.pedantic(np.add.at, (target, data["ids"], data["values"]), rounds=3, iterations=1)


def test_coalesce_embtab(benchmark: Any, data: Dict[str, Any]) -> None:
    ids, values = data["ids"], data["values"]
    rows, sums = embtab.coalesce(ids, values)
    exp_rows, exp_sums = coalesce_numpy(ids, values)
    np.testing.assert_array_equal(rows, exp_rows)
    np.testing.assert_array_equal(sums, exp_sums)
    benchmark.group = "coalesce"
    benchmark(embtab.coalesce, ids, values)


def test_coalesce_numpy(benchmark: Any, data: Dict[str, Any]) -> None:
    benchmark.group = "coalesce"
    benchmark.pedantic(coalesce_numpy, (data["ids"], data["values"]), rounds=3, iterations=1)


def _first_step_matches(training: TrainingStep, kind: str, name: str) -> None:
    training.kind = None  # reset every table and optimizer
    training.numpy_step(kind)
    getattr(training, f"{name}_step")(kind)
    training.check_against_numpy(name)


@pytest.mark.parametrize("kind", ["adagrad", "adam"])
def test_train_step_embtab(benchmark: Any, training: TrainingStep, kind: str) -> None:
    _first_step_matches(training, kind, "embtab")
    benchmark.group = f"train_step_{kind}"
    benchmark(training.embtab_step, kind)


@pytest.mark.parametrize("kind", ["adagrad", "adam"])
def test_train_step_numpy(benchmark: Any, training: TrainingStep, kind: str) -> None:
    benchmark.group = f"train_step_{kind}"
    benchmark.pedantic(training.numpy_step, (kind,), rounds=3, iterations=1)


@pytest.mark.parametrize("kind", ["adagrad", "adam"])
def test_train_step_torch(benchmark: Any, training: TrainingStep, kind: str) -> None:
    pytest.importorskip("torch")
    _first_step_matches(training, kind, "torch")
    benchmark.group = f"train_step_{kind}"
    benchmark.pedantic(training.torch_step, (kind,), rounds=3, iterations=1)
