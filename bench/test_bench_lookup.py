"""pytest-benchmark: embtab lookups against numpy on the same inputs, same group.

Run with ``python -m pytest bench`` (not part of the test suite).
"""

from __future__ import annotations

import numpy as np
import pytest

import embtab

NUM_ROWS, DIM = 200_000, 128


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((NUM_ROWS, DIM), dtype=np.float32)
    ids = rng.integers(0, NUM_ROWS, 200_000)
    bags = rng.integers(0, NUM_ROWS, (10_000, 20))
    return table, ids, bags


def test_gather_embtab(benchmark, data):
    table, ids, _ = data
    np.testing.assert_array_equal(embtab.gather(table, ids), np.take(table, ids, axis=0))
    benchmark.group = "gather"
    benchmark(embtab.gather, table, ids)


def test_gather_numpy(benchmark, data):
    table, ids, _ = data
    benchmark.group = "gather"
    benchmark(np.take, table, ids, 0)


def _numpy_bags_sum(table, bags):
    rows = np.take(table, bags.ravel(), axis=0)
    return np.add.reduceat(rows, np.arange(0, rows.shape[0], bags.shape[1]), axis=0)


def test_bags_sum_embtab(benchmark, data):
    table, _, bags = data
    np.testing.assert_allclose(embtab.gather_bags(table, bags), _numpy_bags_sum(table, bags), rtol=1e-5, atol=1e-5)
    benchmark.group = "bags_sum"
    benchmark(embtab.gather_bags, table, bags)


def test_bags_sum_numpy(benchmark, data):
    table, _, bags = data
    benchmark.group = "bags_sum"
    benchmark(_numpy_bags_sum, table, bags)
