"""Small argument helpers shared by the public API modules (no validation of substance: the
compiled layer checks dtypes, shapes and bounds and raises the errors)."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_ids(ids: Any) -> Any:
    """Pass int32/int64 arrays through untouched; widen other safe integer inputs to int64.

    Lists and tuples become arrays (an empty one becomes an empty int64 array). Narrow signed and
    unsigned integer arrays (int8/16, uint8/16/32) are widened to int64, which is exact. Everything
    else (float, bool, uint64, object) goes through unchanged so the compiled layer rejects it with
    a TypeError.
    """
    if not isinstance(ids, np.ndarray):
        arr = np.asarray(ids)
        if arr.size == 0 and arr.dtype == np.float64:
            return arr.astype(np.int64)
        ids = arr
    if ids.dtype.kind in "iu" and ids.dtype not in (np.int32, np.int64) and np.can_cast(ids.dtype, np.int64, "safe"):
        return ids.astype(np.int64)
    return ids


def as_values(values: Any, like: Any) -> Any:
    """Lists become arrays of the table's dtype; arrays pass untouched (their dtype is checked)."""
    if values is None or isinstance(values, np.ndarray):
        return values
    dtype = like.dtype if isinstance(like, np.ndarray) else None
    return np.asarray(values, dtype=dtype)


def aligned_empty(shape: Any, dtype: Any, alignment: int = 64) -> Any:
    """An uninitialized C-contiguous array whose data starts on a cache-line boundary (numpy's
    large arrays start 16 bytes past one), so that a row of 512 bytes spans 8 cache lines, not 9."""
    dtype = np.dtype(dtype)
    shape = tuple(int(x) for x in np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(nbytes + alignment, np.uint8)
    start = -buffer.ctypes.data % alignment
    return buffer[start : start + nbytes].view(dtype).reshape(shape)
