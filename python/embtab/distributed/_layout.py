"""Which shard owns which row, where it sits in that shard, and the initial rows of a table.

Pure numpy + embtab: the client and every shard actor compute the same answers from the same four
numbers (num_rows, num_shards, route, and for the initial rows: init, std, seed), so nothing but
those numbers ever has to be sent to describe a table.
"""

from __future__ import annotations

import operator
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

import embtab
from embtab._arrays import aligned_empty, aligned_zeros
from embtab.layers import _check_size

ROUTES = ("hash", "range")
INITS = ("normal", "uniform", "xavier_uniform", "zeros")

# Rows hashed at a time when a hash-routed shard lists the rows it owns: bounds the scratch memory
# (about 20 bytes a row) whatever the table's size.
_OWNED_CHUNK = 1 << 22


def group_by_shard(shard: NDArray[np.int64], num_shards: int,
                   grouped: bool = False) -> Tuple[Optional[NDArray[np.int64]], NDArray[np.int64]]:
    """``(order, bounds)``: ``order[bounds[s]:bounds[s + 1]]`` are the positions of shard ``s``'s
    items, in their original order; ``order`` is None (the identity) when the items already come
    shard by shard (``grouped``, or one shard)."""
    bounds = np.concatenate([[0], np.cumsum(np.bincount(shard, minlength=num_shards))]).astype(np.int64)
    if grouped or num_shards == 1:
        return None, bounds
    # numpy's stable sort of 16-bit integers is a radix sort: linear, 5-10x faster than on int64.
    keys = shard.astype(np.uint16) if num_shards <= 2**16 else shard
    return np.argsort(keys, kind="stable"), bounds


class Layout:
    """The partition of ``num_rows`` rows over ``num_shards`` shards.

    ``route="hash"``: row ``i`` belongs to shard ``murmur3_32(int64(i)) % num_shards``
    (:func:`embtab.hash_buckets`), so consecutive or popular ids spread evenly; a shard keeps its
    rows in increasing id order. ``route="range"``: contiguous blocks split as ``np.array_split``
    does (the first ``num_rows % num_shards`` shards hold one row more).
    """

    def __init__(self, num_rows: int, num_shards: int, route: str) -> None:
        self.num_rows = int(_check_size(num_rows, "num_rows", 0))
        self.num_shards = int(_check_size(num_shards, "num_shards", 1))
        if route not in ROUTES:
            raise ValueError(f"route must be 'hash' or 'range', got {route!r}")
        self.route = route
        base, extra = divmod(self.num_rows, self.num_shards)
        sizes = np.full(self.num_shards, base, np.int64)
        sizes[:extra] += 1
        # range route: shard s holds rows [starts[s], starts[s + 1]).
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._hash_sizes: Optional[NDArray[np.int64]] = None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Layout) and (self.num_rows, self.num_shards, self.route)
                == (other.num_rows, other.num_shards, other.route))

    def __repr__(self) -> str:
        return f"Layout(num_rows={self.num_rows}, num_shards={self.num_shards}, route={self.route!r})"

    def shard_of(self, ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """The owning shard of each (valid, int64) id."""
        if self.num_shards == 1:
            return np.zeros(ids.shape, np.int64)
        if self.route == "hash":
            return np.asarray(embtab.hash_buckets(ids, self.num_shards))
        return np.searchsorted(self.starts, ids, side="right").astype(np.int64) - 1

    def _id_chunks(self) -> Iterator[NDArray[np.int64]]:
        for begin in range(0, self.num_rows, _OWNED_CHUNK):
            yield np.arange(begin, min(begin + _OWNED_CHUNK, self.num_rows), dtype=np.int64)

    def owned(self, shard: int) -> NDArray[np.int64]:
        """The global ids of ``shard``'s rows, increasing: its local row ``r`` is ``owned[r]``."""
        if self.route == "range" or self.num_shards == 1:
            return np.arange(self.starts[shard], self.starts[shard + 1], dtype=np.int64)
        parts = [ids[self.shard_of(ids) == shard] for ids in self._id_chunks()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def owned_all(self) -> List[NDArray[np.int64]]:
        """``[owned(0), owned(1), ...]`` in one pass over the ids (the client's view of all shards)."""
        if self.route == "range" or self.num_shards == 1:
            return [self.owned(s) for s in range(self.num_shards)]
        parts: List[List[NDArray[np.int64]]] = [[] for _ in range(self.num_shards)]
        for ids in self._id_chunks():
            order, bounds = group_by_shard(self.shard_of(ids), self.num_shards)
            assert order is not None  # hash route, several shards
            for s in range(self.num_shards):
                parts[s].append(ids[order[bounds[s]:bounds[s + 1]]])
        return [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]

    def shard_sizes(self) -> NDArray[np.int64]:
        """Rows per shard (the hash route counts them once, chunk by chunk)."""
        if self.route == "range" or self.num_shards == 1:
            return np.diff(self.starts)
        if self._hash_sizes is None:
            self._hash_sizes = sum((np.bincount(self.shard_of(ids), minlength=self.num_shards)
                                    for ids in self._id_chunks()), np.zeros(self.num_shards, np.int64))
        return self._hash_sizes

    def to_dict(self) -> Dict[str, Any]:
        return {"num_rows": self.num_rows, "num_shards": self.num_shards, "route": self.route}


def local_rows(layout: Layout, shard: int, owned: Optional[NDArray[np.int64]], ids: NDArray[np.int64]) -> NDArray[np.int64]:
    """Local row of each global id of ``shard`` (``owned``: ``layout.owned(shard)`` for the hash
    route, None for the range route). An id the shard does not own is a routing bug, never bad
    input (the client checked every id): it raises rather than touching another row."""
    if owned is None:
        local: NDArray[np.int64] = ids - layout.starts[shard]
        if local.size and (local.min() < 0 or local.max() >= layout.starts[shard + 1] - layout.starts[shard]):
            raise RuntimeError(f"shard {shard} received ids it does not own (client and shard disagree on the layout)")
        return local
    local = np.searchsorted(owned, ids)
    if local.size and (local.max() >= owned.size or not np.array_equal(owned[local], ids)):
        raise RuntimeError(f"shard {shard} received ids it does not own (client and shard disagree on the layout)")
    return local


def _unit_floats(bits: NDArray[np.uint64]) -> NDArray[np.float64]:
    """The top 53 bits of each 64-bit hash as a float in [0, 1)."""
    unit: NDArray[np.float64] = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
    return unit


def init_rows(ids: NDArray[np.int64], dim: int, num_rows: int, init: str, std: Optional[float], seed: int,
              dtype: Any) -> NDArray[np.floating]:
    """The initial rows ``ids`` of a table, 128-byte aligned.

    Element ``(i, j)`` is a function of ``(seed, i * dim + j)`` alone (MurmurHash3_x64_128 of that
    counter as two 53-bit uniforms; Box-Muller for "normal"), so a table's initial rows are the
    same for every ``num_shards`` and ``route``, and each shard draws only its own rows. The
    distributions are those of :class:`embtab.Embedding`'s ``init``, not its values (a local layer
    draws the whole table from one numpy stream).
    """
    out: NDArray[np.floating] = (aligned_zeros((ids.size, dim), dtype) if init == "zeros"
                                 else aligned_empty((ids.size, dim), dtype))
    if init == "zeros" or out.size == 0:
        return out
    # Rows at a time: 2 hashes (16 bytes) and a few float64 temporaries per element.
    step = max(1, (1 << 20) // max(dim, 1))
    columns = np.arange(dim, dtype=np.int64)
    for begin in range(0, ids.size, step):
        counters = ids[begin:begin + step, None] * np.int64(dim) + columns
        bits = np.asarray(embtab.murmur3_128(counters, seed))
        u1, u2 = _unit_floats(bits[..., 0]), _unit_floats(bits[..., 1])
        if init == "normal":
            # 1 - u1 is in (0, 1]: the logarithm is finite.
            values = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
            values *= 1.0 if std is None else std
        else:
            if init == "uniform":
                bound = np.sqrt(3.0) * std if std is not None else 1.0 / max(dim, 1)
            else:  # xavier_uniform
                bound = np.sqrt(6.0 / (num_rows + dim)) if num_rows + dim > 0 else 0.0
            values = (2.0 * u1 - 1.0) * bound
        out[begin:begin + step] = values
    return out


def check_init(init: Any, std: Any, seed: Any) -> Tuple[str, Optional[float], int]:
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
    if std is not None:
        std = float(std)
        if not std >= 0 or np.isinf(std):
            raise ValueError(f"std must be >= 0 and finite, got {std}")
    seed = operator.index(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return init, std, int(seed)
