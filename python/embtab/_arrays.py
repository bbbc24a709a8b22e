"""Small argument helpers shared by the public API modules (no validation of substance: the
compiled layer checks dtypes, shapes and bounds and raises the errors)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

# DLPack device types (dlpack.h) whose memory the CPU reads directly, and names for the others.
_DLPACK_HOST_DEVICES = (1, 3, 11, 13)  # CPU, CUDA pinned host, ROCm pinned host, CUDA managed
_DLPACK_DEVICE_NAMES = {2: "cuda", 4: "opencl", 7: "vulkan", 8: "metal", 9: "vpi", 10: "rocm", 12: "ext_dev",
                        14: "oneapi", 15: "webgpu", 16: "hexagon", 17: "maia"}


def as_array(x: Any, name: str) -> Any:
    """A numpy view of an object that exports ``__dlpack__`` (a torch tensor, a JAX or CuPy array
    in host memory): zero-copy, sharing memory, so arrays that a kernel writes stay shared. Anything
    else is returned unchanged (the compiled layer judges it).

    Raises TypeError naming the device when the memory is not readable by the CPU.
    """
    if isinstance(x, np.ndarray) or not hasattr(x, "__dlpack__") or not hasattr(x, "__dlpack_device__"):
        return x
    device_type, device_id = x.__dlpack_device__()
    if int(device_type) not in _DLPACK_HOST_DEVICES:
        device = _DLPACK_DEVICE_NAMES.get(int(device_type), f"dlpack device type {int(device_type)}")
        raise_device_error(name, f"{device}:{device_id}")
    return np.from_dlpack(x)


def raise_device_error(name: str, device: str) -> None:
    raise TypeError(f"{name} is on device {device}; embtab's kernels run on the CPU "
                    "(move it to host memory first, e.g. tensor.cpu())")


def as_ids(ids: Any, name: str = "ids") -> Any:
    """Pass int32/int64 arrays through untouched; widen other safe integer inputs to int64.

    Lists and tuples become arrays (an empty one becomes an empty int64 array). Narrow signed and
    unsigned integer arrays (int8/16, uint8/16/32) are widened to int64, which is exact. Everything
    else (float, bool, uint64, object) goes through unchanged so the compiled layer rejects it with
    a TypeError. DLPack exporters are viewed as numpy arrays first (:func:`as_array`).
    """
    ids = as_array(ids, name)
    if not isinstance(ids, np.ndarray):
        arr = np.asarray(ids)
        if arr.size == 0 and arr.dtype == np.float64:
            return arr.astype(np.int64)
        ids = arr
    if ids.dtype.kind in "iu" and ids.dtype not in (np.int32, np.int64) and np.can_cast(ids.dtype, np.int64, "safe"):
        return ids.astype(np.int64)
    return ids


def as_values(values: Any, like: Any, name: str = "values") -> Any:
    """Lists become arrays of the table's dtype; arrays (and DLPack exporters, viewed as arrays)
    pass untouched (their dtype is checked)."""
    values = as_array(values, name)
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
