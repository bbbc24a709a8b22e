"""Shared helpers for the atheris fuzz targets: turn fuzzer bytes into arrays, and the only
exceptions an entry point may raise for hostile input."""

from __future__ import annotations

import numpy as np

ALLOWED = (IndexError, TypeError, ValueError, UnicodeEncodeError, OverflowError)

INT_DTYPES = [np.int32, np.int64, np.int8, np.uint8, np.uint32, np.uint64, np.float64, np.bool_]
FLOAT_DTYPES = [np.float32, np.float64, np.float16, np.int64]


def pick(fdp, options):
    return options[fdp.ConsumeIntInRange(0, len(options) - 1)]


def int_array(fdp, max_len=64, low=-4, high=40):
    n = fdp.ConsumeIntInRange(0, max_len)
    values = [fdp.ConsumeIntInRange(low, high) for _ in range(n)]
    dtype = pick(fdp, INT_DTYPES)
    with np.errstate(all="ignore"):
        return np.array(values).astype(dtype)


def float_table(fdp, max_rows=40, max_dim=20):
    rows, dim = fdp.ConsumeIntInRange(0, max_rows), fdp.ConsumeIntInRange(0, max_dim)
    dtype = pick(fdp, FLOAT_DTYPES)
    table = np.arange(rows * dim, dtype=np.float64).reshape(rows, dim) / 7.0 - 3.0
    table = table.astype(dtype)
    if fdp.ConsumeBool() and table.size:
        table = np.asfortranarray(table)
    if fdp.ConsumeBool():
        table.flags.writeable = False
    return table


def offsets_for(fdp, n):
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:  # valid CSR
        cuts = sorted(fdp.ConsumeIntInRange(0, n) for _ in range(fdp.ConsumeIntInRange(0, 6)))
        return np.array([0, *cuts, n], np.int64)
    if kind == 1:  # arbitrary ints
        return int_array(fdp, 8, -3, n + 3)
    if kind == 2:
        return None
    return np.array([0.0, float(n)])
