"""pytest-benchmark: lookups over float16 / bfloat16 / 8-bit tables against embtab's float32 lookup
of the same table, in one group per operation; each checks its result against numpy on the
upcast / dequantized table before timing.

Run with ``python -m pytest bench`` (not part of the test suite).
"""

from __future__ import annotations

import numpy as np
import pytest

import embtab

NUM_ROWS, DIM = 200_000, 128
FORMATS = ["f32", "f16", "bf16", "int8"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((NUM_ROWS, DIM), dtype=np.float32)
    tables = {
        "f32": table,
        "f16": table.astype(np.float16),
        "bf16": embtab.to_bfloat16(table),
        "int8": embtab.quantize_rows(table),
    }
    upcast = {
        "f32": table,
        "f16": tables["f16"].astype(np.float32),
        "bf16": tables["bf16"].to_float32(),
        "int8": tables["int8"].dequantize(),
    }
    ids = rng.integers(0, NUM_ROWS, 200_000)
    bags = rng.integers(0, NUM_ROWS, (10_000, 20))
    return tables, upcast, ids, bags


@pytest.mark.parametrize("fmt", FORMATS)
def test_gather(benchmark, data, fmt):
    tables, upcast, ids, _ = data
    out = np.empty((ids.size, DIM), np.float32)
    np.testing.assert_array_equal(embtab.gather(tables[fmt], ids, out=out), upcast[fmt][ids])
    benchmark.group = "lowp gather (out=)"
    benchmark(embtab.gather, tables[fmt], ids, out=out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bags_sum(benchmark, data, fmt):
    tables, upcast, _, bags = data
    expected = upcast[fmt][bags].sum(axis=1)
    np.testing.assert_allclose(embtab.gather_bags(tables[fmt], bags), expected, rtol=1e-5, atol=1e-5)
    benchmark.group = "lowp bags_sum"
    benchmark(embtab.gather_bags, tables[fmt], bags)
