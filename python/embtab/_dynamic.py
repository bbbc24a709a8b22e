"""Dynamic embedding tables: every key gets its own row, created when the key is first seen.

The hashing trick (:func:`hash_buckets`, :class:`HashEmbedding`) maps an unbounded vocabulary into
a fixed table and pays with collisions. A :class:`DynamicTable` is the other answer, as in
production recommenders (Monolith, TensorFlow Recommenders Addons' dynamic embeddings,
HierarchicalKV, DeepRec's EmbeddingVariable): a hash table from the raw key to a row of its own,
rows created on first sight (after ``admit_after`` sightings), and eviction of stale rows (least
recently or least frequently used once ``max_rows`` is reached, or not seen for ``ttl`` steps) so
that memory stays bounded.
"""

from __future__ import annotations

import contextlib
import operator
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core
from ._arrays import as_ids
from ._checkpoint import CheckpointError, register_checkpointable
from ._forward import Differentiable, ForwardContext, Grad
from ._hashing import murmur3_128
from ._lookup import PoolMode
from ._sparse import gather_bags_grad

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DynamicTable", "DynamicEmbeddingBag"]

_SNAPSHOT_ARRAYS = ("keys", "rows", "counts", "stamps", "free_rows", "last_evicted")
_SNAPSHOT_COUNTERS = ("high_water", "step", "call", "hits", "misses", "admitted", "evicted")


def _hash_keys(keys: Any) -> NDArray[np.int64]:
    """str / bytes keys as int64: the first 64 bits (h1) of their MurmurHash3 x64_128."""
    return np.ascontiguousarray(np.asarray(murmur3_128(keys))[..., 0]).view(np.int64)


def _as_keys(keys: Any) -> Any:
    """int64 keys from ints or str / bytes (hashed); other inputs pass on for the binding to refuse."""
    if isinstance(keys, (str, bytes)):
        return _hash_keys([keys]).reshape(())
    if isinstance(keys, (list, tuple)) and any(isinstance(k, (str, bytes)) for k in keys):
        return _hash_keys(list(keys))  # a non-str item in the list is a TypeError there
    keys = as_ids(keys)
    if keys.dtype.kind in "USO" and keys.size:
        return _hash_keys(keys)
    return keys


def _seed64(seed: Any) -> int:
    return operator.index(seed) % 2**64


class DynamicTable:
    """An embedding table indexed by raw keys: each key gets a row of its own on first sight.

    Parameters
    ----------
    dim : int >= 1
        Row length.
    dtype : float32 or float64
    init : {"normal", "uniform", "zeros"}
        Starting values of a new row: N(0, std) with std 1 by default; U(-sqrt(3) std, sqrt(3) std),
        or U(-1/dim, 1/dim) without std; zeros. They depend only on ``(seed, key)``: a key gets the
        same starting row whatever the order keys arrive in, the thread count, and when it comes
        back after an eviction. They are computed in float32 precision (a counter-based generator
        and the Box-Muller transform; tails are cut at 5.9 std).
    std : float, optional
    seed : int
    capacity : int >= 0
        Rows (and hash slots) to reserve; the table grows past it as needed.
    max_rows : int >= 1, optional
        The most rows the table holds; admitting a key beyond it evicts the row of another (see
        ``evict``). Without it the table grows without bound.
    admit_after : int >= 1
        A key gets a row once it has been seen this many times (every occurrence counts); before
        that :meth:`lookup` gives it row -1 and :meth:`gather` / :meth:`gather_bags` read it as a
        zero row. The counts of keys waiting for admission take a hash slot each (24 bytes); set
        ``ttl`` to forget keys that stop coming.
    evict : {"lru", "lfu"}
        Which row to give up when ``max_rows`` is reached: the least recently used (by call; rows
        last used in the same call go in row order) or the least frequently used (fewest
        occurrences; ties by recency, then row). Keys of the current call are never evicted: when
        all rows belong to them, the remaining new keys of the call wait (row -1).
    ttl : int >= 0, optional
        Keys (admitted or waiting) not seen in the last ``ttl`` steps are removed when a step ends:
        at :meth:`advance`, which every optimizer step on this table calls.

    Notes
    -----
    Keys are int64 (any value; int32 and uint64 below 2**63 are accepted) or str / bytes, mapped to
    int64 by the first 64 bits of MurmurHash3 x64_128 (:func:`murmur3_128`): two distinct strings
    then share a row with probability about 2**-64 per pair (for a billion strings, about 3%
    that any two of them collide).

    Each key costs a 24-byte hash slot (key, row, count, last-use stamp) beside its row; slots are
    kept between 40% and 80% full, so about 30 to 60 bytes per key.

    ``weight`` (and an optimizer's ``state`` arrays) are views of the current storage: a call that
    adds rows may move the storage, after which an older view no longer sees updates. Read them
    again after such calls.

    Calls from several threads are safe: calls that change the table run one at a time, lookups
    with ``insert=False`` run concurrently with them and never see a half-initialised or reused
    row. Row ids and values do not depend on the thread count.
    """

    _checkpoint_order = 0  # saved before the optimizers that update it

    def __init__(self, dim: int, *, dtype: Any = np.float32, init: str = "normal", std: Optional[float] = None,
                 seed: int = 0, capacity: int = 0, max_rows: Optional[int] = None, admit_after: int = 1,
                 evict: str = "lru", ttl: Optional[int] = None) -> None:
        self._table = _core.DynamicTable(dim, np.dtype(dtype), init, std, _seed64(seed), capacity, max_rows,
                                         admit_after, evict, ttl)
        self._config: Dict[str, Any] = {"dim": int(dim), "dtype": np.dtype(dtype).str, "init": init, "std": std,
                                        "seed": int(seed), "capacity": int(capacity), "max_rows": max_rows,
                                        "admit_after": int(admit_after), "evict": evict, "ttl": ttl}
        self._columns: List[Tuple[str, bool]] = [("weight", False)]  # (name, one value per row)
        self._optimizers = 0
        self._views: Dict[Tuple[int, bool], NDArray[np.floating]] = {}

    # --- lookups ---------------------------------------------------------------------------------

    def lookup(self, keys: Any, *, insert: bool = True) -> Any:
        """Row ids of ``keys`` in :attr:`weight` (int64, the shape of ``keys``), -1 for a key without one.

        With ``insert`` (the default) the keys count as seen: unknown keys are added, keys that
        reach ``admit_after`` sightings get rows (in the order of their first occurrence here), and
        rows may be evicted (:meth:`last_evicted`). ``insert=False`` changes nothing.

        Raises
        ------
        TypeError
            Keys that are not integers or str / bytes (float, bool, uint64 at or above 2**63, object
            arrays mixing str and int).
        ValueError
            The table is closed.
        """
        rows = self._table.lookup(_as_keys(keys), bool(insert))
        return rows[()] if rows.ndim == 0 else rows

    def gather(self, keys: Any, *, insert: bool = True) -> NDArray[np.floating]:
        """The rows of ``keys``, shape ``keys.shape + (dim,)``; a key without a row reads as zeros.

        One call: the keys are looked up (as :meth:`lookup` with ``insert``) and their rows read
        together, so no other thread's eviction can come between.
        """
        return self._table.gather(_as_keys(keys), bool(insert))

    def gather_bags(self, keys: Any, offsets: Optional[ArrayLike] = None, *, mode: PoolMode = "sum",
                    weights: Optional[ArrayLike] = None, insert: bool = True) -> NDArray[np.floating]:
        """Pooled rows of bags of keys, as :func:`embtab.gather_bags` with ``bounds="zero"``.

        Bags are ``keys[offsets[b]:offsets[b + 1]]`` (1-D keys and CSR offsets) or the rows of 2-D
        keys. A key without a row reads as a zero row (it still counts in a mean). The result is
        bitwise what :func:`embtab.gather_bags` gives on ``weight`` with the rows of the keys.
        """
        if offsets is not None:
            offsets = as_ids(offsets)
        if weights is not None and not isinstance(weights, np.ndarray):
            weights = np.asarray(weights, dtype=self.dtype)
        pooled: NDArray[np.floating] = self._table.gather_bags(_as_keys(keys), offsets, mode, weights, bool(insert))
        return pooled

    # --- removal ---------------------------------------------------------------------------------

    def advance(self) -> None:
        """End a step: with ``ttl``, remove the keys not seen in the last ``ttl`` steps."""
        self._table.advance()

    def evict(self, keys: Any) -> int:
        """Remove ``keys`` (admitted or waiting; unknown keys are ignored). Returns the number of rows freed."""
        return int(self._table.evict(_as_keys(keys)))

    def last_evicted(self) -> NDArray[np.int64]:
        """The keys whose rows the last inserting lookup, :meth:`advance` or :meth:`evict` freed
        (in the order freed; str keys as their int64 hashes)."""
        return self._table.last_evicted()

    # --- contents --------------------------------------------------------------------------------

    def keys(self) -> NDArray[np.int64]:
        """The keys that have rows, in row order."""
        return self._table.export()[0]

    def export(self) -> Tuple[NDArray[np.int64], NDArray[np.int64]]:
        """``(keys, rows)`` of every key that has a row, in row order; values are ``weight[rows]``."""
        keys, rows = self._table.export()
        return keys, rows

    def __len__(self) -> int:
        return len(self._table)

    def stats(self) -> Dict[str, int]:
        """``rows`` (keys with rows), ``capacity`` (rows allocated), ``bytes`` (memory held: slots,
        rows and optimizer state), ``hits`` / ``misses`` (looked-up keys that had / had no row),
        ``admitted``, ``evicted`` (totals), ``pending`` (keys counted, waiting for admission),
        ``slots`` (hash slots) and ``step``."""
        return dict(self._table.stats())

    @property
    def dim(self) -> int:
        return int(self._config["dim"])

    @property
    def dtype(self) -> np.dtype:
        dtype: np.dtype = np.dtype(self._config["dtype"])
        return dtype

    @property
    def weight(self) -> NDArray[np.floating]:
        """The rows, ``(rows allocated, dim)``: row ``lookup(key)`` is ``key``'s (freed rows keep
        their last values until reused). A view of the current storage (see the class notes)."""
        return self._view(0)

    def close(self) -> None:
        """Free the table's memory (arrays viewing it stay valid). Later calls raise ValueError."""
        self._table.close()
        self._views.clear()

    @property
    def closed(self) -> bool:
        return bool(self._table.closed)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"DynamicTable(dim={self.dim}, closed)"
        c = self._config
        return (f"DynamicTable(dim={self.dim}, dtype={self.dtype}, rows={len(self)}, max_rows={c['max_rows']}, "
                f"admit_after={c['admit_after']}, evict={c['evict']!r}, ttl={c['ttl']})")

    # --- views and the optimizer hook ------------------------------------------------------------

    def _view(self, column: int, with_sink: bool = False) -> NDArray[np.floating]:
        """The column's current view, the same object while the storage and row count are unchanged
        (checkpoints and optimizers share arrays by identity)."""
        view = self._table.column(column, with_sink)
        if self._columns[column][1]:
            view = view.reshape(-1)
        cached = self._views.get((column, with_sink))
        if cached is not None and cached.shape == view.shape and cached.ctypes.data == view.ctypes.data:
            return cached
        self._views[(column, with_sink)] = view
        return view

    @property
    def _dynamic_table(self) -> DynamicTable:
        return self

    def _new_state(self, optimizer: Any, name: str, fill: float, per_row: bool) -> NDArray[np.floating]:
        """A state column of `optimizer` (one row per table row, or one value with per_row); rows
        start at `fill`, and again whenever their row is reused."""
        if not hasattr(optimizer, "_dynamic_id"):
            optimizer._dynamic_id = self._optimizers
            self._optimizers += 1
        column = self._table.add_column(1 if per_row else self.dim, float(fill))
        self._columns.append((f"opt{optimizer._dynamic_id}.{name}", per_row))
        assert column == len(self._columns) - 1
        return self._view(column)

    def _sync(self, optimizer: Any, with_sink: bool = False) -> None:
        """Points optimizer.table and its state arrays at the current views."""
        names = [n for n, _ in self._columns]
        optimizer.table = self._view(0, with_sink)
        for key in optimizer._row_state():
            optimizer.state[key] = self._view(names.index(f"opt{optimizer._dynamic_id}.{key}"), with_sink)

    @contextlib.contextmanager
    def _update(self, optimizer: Any) -> Iterator[Any]:
        """An optimizer step: the table is held (no other call changes it), the optimizer's table and
        state view every row plus a sink row, and keys resolve to their rows (the sink for keys
        without one, so their gradient goes nowhere). The step then counts as a step (advance)."""
        self._table.hold()
        try:
            self._sync(optimizer, with_sink=True)
            yield lambda keys: self._table.resolve_for_update(_as_keys(keys))
            self._table.clear_sink()
            self._table.advance()
        finally:
            try:
                self._sync(optimizer)
            finally:
                self._table.release()

    # --- checkpoints -----------------------------------------------------------------------------

    def _checkpoint_state(self) -> Tuple[Dict[str, Any], Dict[str, NDArray[Any]]]:
        snap = self._table.snapshot()
        config = dict(self._config, columns=[[n, p, self._table.column_fill(i)] for i, (n, p) in enumerate(self._columns)],
                      optimizers=self._optimizers, **{k: int(snap[k]) for k in _SNAPSHOT_COUNTERS})
        arrays: Dict[str, NDArray[Any]] = {k: snap[k] for k in _SNAPSHOT_ARRAYS}
        for i, (name, _) in enumerate(self._columns):
            arrays["weight" if i == 0 else f"state.{name}"] = self._view(i)
        return config, arrays

    @classmethod
    def _from_checkpoint(cls, config: Dict[str, Any], arrays: Dict[str, NDArray[Any]]) -> DynamicTable:
        try:
            table = cls(config["dim"], dtype=config["dtype"], init=config["init"], std=config["std"],
                        seed=config["seed"], capacity=config["capacity"], max_rows=config["max_rows"],
                        admit_after=config["admit_after"], evict=config["evict"], ttl=config["ttl"])
            table._optimizers = int(config["optimizers"])
            rows = []
            for i, (name, per_row, fill) in enumerate(config["columns"]):
                if i > 0:
                    table._table.add_column(1 if per_row else table.dim, float(fill))
                    table._columns.append((name, bool(per_row)))
                width = 1 if per_row else table.dim
                rows.append(np.asarray(arrays["weight" if i == 0 else f"state.{name}"]).reshape(int(config["high_water"]), width))
            snap: Dict[str, Any] = {k: arrays[k] for k in _SNAPSHOT_ARRAYS}
            snap.update({k: int(config[k]) for k in _SNAPSHOT_COUNTERS})
            table._table.restore(snap, rows)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"cannot restore a DynamicTable: {exc}") from exc
        return table


register_checkpointable(DynamicTable)


def _bag_keys(keys: Any, offsets: Any) -> Tuple[Any, Any]:
    """Keys and offsets of a forward call: a list of documents (lists of keys) becomes CSR."""
    if offsets is None and isinstance(keys, (list, tuple)) and keys and all(
            isinstance(d, (list, tuple, np.ndarray)) for d in keys):
        lengths = [len(d) for d in keys]
        flat: List[Any] = [k for d in keys for k in (d.tolist() if isinstance(d, np.ndarray) else d)]
        return _as_keys(flat) if flat else np.zeros(0, np.int64), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return _as_keys(keys), (as_ids(offsets) if offsets is not None else None)


@register_checkpointable
class DynamicEmbeddingBag(Differentiable):
    """Pooled lookups of raw keys in a :class:`DynamicTable`, as :class:`embtab.EmbeddingBag` of
    row ids: ``forward(keys, offsets=None, per_sample_weights=None)`` returns one row per bag.

    Bags are ``keys[offsets[b]:offsets[b + 1]]``, the rows of 2-D keys, or a list of documents
    (lists of keys). Keys are ints or str / bytes. In training mode (the default) ``forward`` adds
    the keys to the table (admission and eviction as the table's); in eval mode it only reads, and
    unknown keys read as zero rows. ``backward(grad_out)`` returns ``(keys, key_grads)``, the int64
    keys that had rows (str keys as their hashes), each once, and their summed gradients, and adds
    them to ``self.grad`` (by key; as :mod:`embtab.layers` do, gradients add up until
    ``zero_grad()``, and forward contexts pair each backward with its forward); an optimizer of
    :mod:`embtab.optim` built on the layer applies ``self.grad`` by key in ``step()``, so a key
    evicted in between gets nothing.

    Takes the arguments of :class:`DynamicTable` plus ``mode`` ("sum", "mean" or "max").
    """

    _checkpoint_order = 0

    def __init__(self, dim: int, *, mode: PoolMode = "sum", dtype: Any = np.float32, init: str = "normal",
                 std: Optional[float] = None, seed: int = 0, capacity: int = 0, max_rows: Optional[int] = None,
                 admit_after: int = 1, evict: str = "lru", ttl: Optional[int] = None) -> None:
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        self.mode: PoolMode = mode
        self.table = DynamicTable(dim, dtype=dtype, init=init, std=std, seed=seed, capacity=capacity,
                                  max_rows=max_rows, admit_after=admit_after, evict=evict, ttl=ttl)
        self._init_differentiable()

    # Read-only here (the dynamic table's storage), assigned in the fixed-size layers: the
    # attribute of Differentiable cannot say "readable everywhere, writable in some".
    @property
    def weight(self) -> NDArray[np.floating]:  # type: ignore[override]
        return self.table.weight

    @property
    def dim(self) -> int:
        return self.table.dim

    @property
    def _dynamic_table(self) -> DynamicTable:
        return self.table

    def forward(self, keys: Any, offsets: Optional[ArrayLike] = None, per_sample_weights: Optional[ArrayLike] = None,
                *, return_context: bool = False) -> Any:
        """Pooled rows of each bag of keys (see the class documentation); with
        ``return_context=True`` also the :class:`embtab.layers.ForwardContext` of this call."""
        keys, offsets = _bag_keys(keys, offsets)
        weights = per_sample_weights
        if weights is not None and not isinstance(weights, np.ndarray):
            weights = np.asarray(weights, dtype=self.table.dtype)
        result = self.table._table.gather_bags(keys, offsets, self.mode, weights, self.training,
                                               return_argmax=self.mode == "max", return_rows=True)
        out, rows = result[0], result[-1]
        saved = {"keys": np.asarray(keys), "rows": rows, "offsets": offsets, "weights": weights,
                 "argmax": result[1] if self.mode == "max" else None, "num_bags": out.shape[0]}
        return self._remember(saved, out, return_context)

    def backward(self, grad_out: ArrayLike, ctx: Optional[ForwardContext] = None) -> Grad:
        """Differentiates a forward call (``ctx``, or the calling thread's most recent one) and
        adds its gradient to ``grad``; returns this call's ``(keys, key_grads)``."""
        ctx = self._context(ctx)
        grad_out = self._check_grad_out(grad_out, (ctx._saved["num_bags"], self.dim))
        with self._using(ctx) as saved:
            rows, keys = saved["rows"], saved["keys"]
            # Keys without a row read as zeros: route their (discarded) gradient to a row past the others.
            sink = int(rows.max()) + 1 if rows.size else 0
            ids = np.where(rows >= 0, rows, sink)
            grad_rows, grads = gather_bags_grad(np.ascontiguousarray(grad_out), ids, saved["offsets"], mode=self.mode,
                                                weights=saved["weights"], argmax=saved["argmax"])
            keep = grad_rows != sink
            grad_rows, grads = grad_rows[keep], grads[keep]
            distinct, first = np.unique(rows.reshape(-1), return_index=True)
            first = first[distinct >= 0]  # aligned with grad_rows: both are the sorted rows that are >= 0
            return self._accumulate(keys.reshape(-1)[first], grads)

    def _merge_grads(self, old: Grad, new: Grad) -> Grad:
        """Sums by key (keys may be negative, so not with coalesce): the old sum, then the new one."""
        keys, where = np.unique(np.concatenate([old[0], new[0]]), return_inverse=True)
        sums = np.zeros((keys.size,) + old[1].shape[1:], old[1].dtype)
        np.add.at(sums, where, np.concatenate([old[1], new[1]]))
        return keys, sums

    def _checkpoint_state(self) -> Tuple[Dict[str, Any], Dict[str, NDArray[Any]]]:
        config, arrays = self.table._checkpoint_state()
        return dict(config, mode=self.mode), arrays

    @classmethod
    def _from_checkpoint(cls, config: Dict[str, Any], arrays: Dict[str, NDArray[Any]]) -> DynamicEmbeddingBag:
        layer = cls.__new__(cls)
        layer.mode = config["mode"]
        layer.table = DynamicTable._from_checkpoint(config, arrays)
        layer._init_differentiable()
        return layer

    def __repr__(self) -> str:
        return f"DynamicEmbeddingBag(dim={self.dim}, mode={self.mode!r}, table={self.table!r})"
