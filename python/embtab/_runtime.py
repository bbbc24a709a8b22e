"""Threads, SIMD paths and the memory embtab keeps for reuse."""

from __future__ import annotations

import operator
from typing import List

from . import _core


def get_num_threads() -> int:
    """Number of threads embtab's kernels use."""
    return int(_core.get_num_threads())


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in every kernel (0 restores the default: the CPUs available to this process).

    Results are bitwise identical for every thread count.

    Parameters
    ----------
    n : int
        0 to 1024.

    Raises
    ------
    ValueError
        ``n`` is negative or above 1024.
    RuntimeError
        The threads could not be started (a process or memory limit); the pool keeps the threads
        it had, so ``get_num_threads()`` is unchanged and kernels keep working.
    """
    _core.set_num_threads(operator.index(n))


def set_spin_time(microseconds: int) -> None:
    """How long the pool's idle threads spin before they sleep (default 200 us; 0 sleeps at once).

    Spinning saves the tens of microseconds it takes to wake a sleeping thread at the start of each
    parallel region. A spinning thread yields its CPU to any other thread that is ready to run
    (torch's OpenMP threads, other processes), and kernels never wait for a worker that has not
    started, so the default suits a machine shared with other work too; 0 gives every idle CPU
    cycle back at the price of that wake-up latency, like ``OMP_WAIT_POLICY=passive``.

    Parameters
    ----------
    microseconds : int
        0 to 1_000_000 (ValueError otherwise).
    """
    _core.set_spin_time(operator.index(microseconds))


def get_spin_time() -> int:
    """The pool's spin time in microseconds (see :func:`set_spin_time`)."""
    return int(_core.get_spin_time())


def release_memory() -> int:
    """Free every output buffer embtab keeps for reuse; returns the number of bytes freed.

    Outputs of 1 MB or more (``gather`` results, gradients) are carved from blocks that are kept
    when the array is freed and handed out again, since fresh pages cost about as much as a large
    lookup. Up to :func:`get_buffer_pool_limit` bytes (512 MiB by default) stay cached after every
    output is gone; this returns them to the system. Outputs still alive are not affected.
    """
    return int(_core.release_memory())


def set_buffer_pool_limit(nbytes: int) -> None:
    """The most bytes of freed output buffers embtab keeps for reuse (0 keeps none).

    Lowering it frees cached buffers at once until the cache fits. The environment variable
    ``EMBTAB_POOL_LIMIT`` (bytes) sets it at import.

    Parameters
    ----------
    nbytes : int
        >= 0 (ValueError otherwise). The default is 512 MiB.
    """
    _core.set_buffer_pool_limit(operator.index(nbytes))


def get_buffer_pool_limit() -> int:
    """The buffer pool's limit in bytes (see :func:`set_buffer_pool_limit`)."""
    return int(_core.get_buffer_pool_limit())


def simd_path() -> str:
    """The instruction set the kernels run with now: "scalar", "avx2" or "avx512"."""
    return str(_core.simd_path())


def set_simd_path(name: str) -> None:
    """Switch the kernels to another compiled path (ValueError if this CPU cannot run it)."""
    _core.set_simd_path(name)


def available_simd_paths() -> List[str]:
    """The paths this build has and this CPU supports, slowest first."""
    return list(_core.available_simd_paths())
