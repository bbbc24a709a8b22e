"""Small argument helpers shared by the public API modules (no validation of substance: the
compiled layer checks dtypes, shapes and bounds and raises the errors)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


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


# Tables and optimizer state start on a 128-byte boundary. numpy's large arrays start 16 bytes past
# a page, and a cache-line (64-byte) boundary is not enough: the adjacent-line prefetcher fetches
# 128-byte aligned pairs of lines, so a 512-byte row that starts on an odd line pulls 10 lines from
# memory, not 8 (random-row lookups measured 12-14% slower, for torch's embedding_bag as well).
ROW_ALIGNMENT = 128


def _aligned(alloc: Any, shape: Any, dtype: Any, alignment: int) -> NDArray[Any]:
    dtype = np.dtype(dtype)
    shape = tuple(int(x) for x in np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer: NDArray[np.uint8] = alloc(nbytes + alignment, np.uint8)
    start = -buffer.ctypes.data % alignment
    aligned: NDArray[Any] = buffer[start : start + nbytes].view(dtype).reshape(shape)
    return aligned


def aligned_empty(shape: Any, dtype: Any, alignment: int = ROW_ALIGNMENT) -> NDArray[Any]:
    """An uninitialized C-contiguous array whose data starts on an `alignment`-byte boundary."""
    return _aligned(np.empty, shape, dtype, alignment)


def aligned_zeros(shape: Any, dtype: Any, alignment: int = ROW_ALIGNMENT) -> NDArray[Any]:
    """A zeroed C-contiguous array whose data starts on an `alignment`-byte boundary. Like
    np.zeros, a large one gets its zero pages from the OS lazily: untouched rows cost nothing."""
    return _aligned(np.zeros, shape, dtype, alignment)
