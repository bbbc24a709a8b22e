"""ShardedTable: an embedding table whose rows live in Ray actors, one per shard."""

from __future__ import annotations

import numbers
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import ray
from numpy.typing import ArrayLike, NDArray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

import embtab
from embtab import _core
from embtab._arrays import aligned_empty, as_ids, as_values
from embtab._checkpoint import register_checkpointable
from embtab._lookup import PoolMode
from embtab.layers import _check_size

from . import _store
from ._layout import Layout, check_init, group_by_shard
from ._optimizer import OptimizerSpec, check_optimizer
from ._shard import Restarted, ShardActor

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ShardLost", "ShardedTable", "Shard"]

_DEFAULT_ACTOR_OPTIONS: Dict[str, Any] = {
    # Ray restarts a shard whose process dies; the restarted shard reloads the last checkpoint.
    "max_restarts": -1,
    # A call that was running when its shard died is not replayed on the restarted shard: the
    # client raises ShardLost instead, and the caller decides what to run again.
    "max_task_retries": 0,
    # One shard per node as far as the cluster allows: each shard has a node's memory to itself.
    "scheduling_strategy": "SPREAD",
}

_remote_shard: Any = None


def _shard_class() -> Any:
    global _remote_shard
    if _remote_shard is None:
        _remote_shard = ray.remote(ShardActor)
    return _remote_shard


def connect() -> None:
    """Join Ray if this process has not: the cluster that ``RAY_ADDRESS`` names or that ``ray start``
    started on this machine, else a new local instance. Says which on stderr (one line each side of
    ``ray.init``), so that a user who meant to use a cluster sees at once that they did not."""
    if ray.is_initialized():
        return
    print("embtab.distributed: Ray is not initialized in this process; calling ray.init(), which joins the "
          "cluster named by RAY_ADDRESS or started by `ray start` on this machine, or else starts a local one "
          "(call ray.init(address=...) before creating a sharded table to choose)", file=sys.stderr)
    ray.init()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
    print(f"embtab.distributed: using the Ray cluster at {ray.get_runtime_context().gcs_address} "
          f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus:g} CPUs)", file=sys.stderr)


class ShardLost(RuntimeError):
    """A shard's process died (or Ray restarted it) before or during a call.

    The call that found out raises this instead of returning partial results; it did nothing on
    the lost shards (other shards may have run it: a step then advanced them, and
    :attr:`ShardedTable.step_count` tells where each shard stands). Ray restarts a lost shard,
    which reloads the table's last checkpoint (``checkpoint_dir``) or, without one, its initial
    rows; the table keeps working from there. ``table.load(checkpoint_dir)`` brings every shard
    back to the same checkpoint.

    Attributes
    ----------
    lost : dict
        ``shard index -> step it went back to`` for every lost shard of the call; the step is None
        when the shard has no rows to go back to (no checkpoint and no ``init``) or did not come
        back (Ray's ``max_restarts`` exhausted): ``table.load(path)`` then restores it.
    shard, step : int, int or None
        The first lost shard and its step.
    """

    def __init__(self, lost: Dict[int, Optional[int]], why: Dict[int, str], num_shards: int) -> None:
        self.lost = dict(sorted(lost.items()))
        self.why = dict(why)
        self.num_shards = num_shards
        self.shard, self.step = next(iter(self.lost.items()))
        parts = []
        for shard, step in self.lost.items():
            if step is None:
                parts.append(f"shard {shard} of {num_shards} was lost and has no rows now ({why[shard]}); "
                             "table.load(path) restores it from a checkpoint")
            else:
                parts.append(f"shard {shard} of {num_shards} was lost; Ray restarted it from {why[shard]} "
                             f"at step {step}")
        super().__init__("; ".join(parts) + ". This call returned nothing and did nothing on the lost "
                         f"shard{'s' if len(self.lost) > 1 else ''}; other shards may have run it (table.step_count tells where each shard stands; "
                         "table.load(checkpoint_dir) brings them all back to the last checkpoint)")

    def __reduce__(self) -> Any:
        return (type(self), (self.lost, self.why, self.num_shards))


class Shard(NamedTuple):
    """One shard of a table's layout: its index, its number of rows, and for the range route the
    block of ids ``[start, stop)`` it holds (None for the hash route)."""

    index: int  # type: ignore[assignment]  # public field name; shadows tuple.index as namedtuple allows
    num_rows: int
    start: Optional[int]
    stop: Optional[int]


def _own(ids: Any) -> Any:
    """A private copy of an id or offset array: what embtab's checks validated is exactly what is
    then routed and sent, even if another thread rewrites the caller's array meanwhile."""
    return None if ids is None else np.array(as_ids(ids))


def _payload_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(_payload_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_payload_bytes(v) for v in value.values())
    return 0


def _take(values: NDArray[Any], order: Optional[NDArray[np.int64]], begin: int, end: int) -> NDArray[Any]:
    return values[begin:end] if order is None else values[order[begin:end]]


class _BagsPlan:
    """A batch of bags split by shard: each shard gets its distinct ids, the index into them of
    each of its positions (in the batch's order), CSR offsets over its non-empty bags and the
    weights of its positions."""

    def __init__(self, layout: Layout, flat: NDArray[np.int64], offsets: NDArray[np.int64],
                 weights: Optional[NDArray[np.floating]]) -> None:
        self.flat, self.offsets, self.num_bags = flat, offsets, len(offsets) - 1
        self.unique, self.inverse = np.unique(flat, return_inverse=True)
        self.inverse = self.inverse.reshape(-1)
        unique_shard = layout.shard_of(self.unique)
        # Sorted ids of the range route come shard by shard already.
        order, bounds = group_by_shard(unique_shard, layout.num_shards, grouped=layout.route == "range")
        rank = np.empty(self.unique.size, np.int64)  # position of each distinct id in its shard's list
        within = np.arange(self.unique.size, dtype=np.int64) - np.repeat(bounds[:-1], np.diff(bounds))
        if order is None:
            rank[:] = within
        else:
            rank[order] = within
        position_shard = unique_shard[self.inverse]
        pos_order, pos_bounds = group_by_shard(position_shard, layout.num_shards)
        self.bag_of = np.repeat(np.arange(self.num_bags, dtype=np.int64), np.diff(offsets))
        everywhere = np.arange(flat.size, dtype=np.int64)
        self._keys: Optional[NDArray[np.int64]] = None
        self._first: Optional[NDArray[np.int64]] = None
        self.payloads: Dict[int, Tuple[Any, ...]] = {}
        self.bags: Dict[int, NDArray[np.int64]] = {}  # the non-empty bags of each shard
        for s in range(layout.num_shards):
            if pos_bounds[s] == pos_bounds[s + 1]:
                continue
            positions = _take(everywhere, pos_order, pos_bounds[s], pos_bounds[s + 1])
            counts = np.bincount(self.bag_of[positions], minlength=self.num_bags)
            bags = np.flatnonzero(counts)
            # 4-byte indices and offsets halve what they cost to send.
            index_dtype = np.int32 if bounds[s + 1] - bounds[s] < 2**31 and positions.size < 2**31 else np.int64
            sub_offsets = np.concatenate([[0], np.cumsum(counts[bags])]).astype(index_dtype)
            self.payloads[s] = (_take(self.unique, order, bounds[s], bounds[s + 1]),
                                rank[self.inverse[positions]].astype(index_dtype), sub_offsets,
                                None if weights is None else weights[positions])
            self.bags[s] = bags

    def first_position(self, bags: NDArray[np.int64], ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """Where id ``ids[k]`` first occurs in bag ``bags[k]`` (each is known to occur)."""
        if self._keys is None or self._first is None:
            keys = self.bag_of * self.unique.size + self.inverse
            self._keys, self._first = np.unique(keys, return_index=True)
        query = bags * self.unique.size + np.searchsorted(self.unique, ids)
        return self._first[np.searchsorted(self._keys, query)]


class ShardedTable:
    """An embedding table partitioned by rows over ``num_shards`` Ray actors.

    Each shard actor holds an embtab table of its rows and, with ``optimizer``, the optimizer
    state of those rows; lookups and updates run embtab's kernels inside the actors. The calls are
    those of a local table with the same arguments, shapes and errors: :meth:`gather`,
    :meth:`gather_bags`, :meth:`step`, :meth:`step_bags`, plus :meth:`save` and :meth:`load`.

    Parameters
    ----------
    num_rows, dim : int
        The table's shape.
    num_shards : int
        Number of shard actors (at least 1).
    route : {"hash", "range"}
        ``"hash"``: id ``i`` lives on shard ``murmur3_32(int64(i)) % num_shards`` (embtab's
        :func:`~embtab.hash_buckets`): popular or consecutive ids spread evenly. ``"range"``:
        contiguous blocks of ids, split as ``np.array_split`` does.
    dtype : float32 or float64
    init : {"normal", "uniform", "xavier_uniform", "zeros"}
        The distribution of the initial rows, as :class:`embtab.Embedding`'s (``std`` scales
        "normal" and "uniform"). Each element is drawn from a counter-based generator (a hash of
        ``seed`` and the element's position), so the initial table is the same for every
        ``num_shards`` and ``route`` and each shard draws only its own rows; its values differ
        from a local layer's with the same seed. :meth:`from_array` starts from given rows.
    std : float, optional
    seed : int in [0, 2**32)
    optimizer : (name, dict), optional
        The sparse optimizer every shard runs on its rows: ``("sgd" | "adagrad" |
        "rowwise_adagrad" | "adam", {hyperparameters})`` with the keyword arguments of the
        :mod:`embtab.optim` class (names of the classes and the classes themselves work too),
        e.g. ``("rowwise_adagrad", {"lr": 0.01})``. Without one, :meth:`step` raises.
    checkpoint_dir : str or path-like, optional
        Where :meth:`save` writes by default, and what a shard that Ray restarts after its process
        died reloads (the last checkpoint saved there). Shards and the client must all see it: on a
        cluster, a shared file system.
    actor_options : dict, optional
        Passed to Ray's ``.options()`` for every shard actor, over the defaults
        ``max_restarts=-1`` (restart forever), ``max_task_retries=0`` and
        ``scheduling_strategy="SPREAD"``: e.g. ``{"num_cpus": 8, "memory": 64 * 2**30}``. A shard
        with ``num_cpus`` runs embtab's kernels on that many threads.
    timeout : float
        Seconds a call waits for its shards before it raises TimeoutError (and for a lost shard
        to come back before it raises ShardLost): no call hangs for ever.

    Notes
    -----
    Results against a local table with the same rows and optimizer:

    - ``gather`` is exact, ``gather_bags(mode="max")`` exact (values equal; the winners of
      ``return_argmax`` are those of the local call, ties going to the first position).
    - ``gather_bags`` with "sum" and "mean" adds each shard's partial sum of a bag in shard order,
      so the terms of a bag are added in another grouping than the local call's, which adds them
      in order: the results agree to float rounding, within ``(len(bag) - 1) * eps`` times the
      sum of the terms' magnitudes (eps = 2**-24 for float32). With one shard they are bitwise
      equal, and they are bitwise the same on every run.
    - ``step`` and ``step_bags`` update every row bitwise as the local optimizer does with the same
      gradients: the client forms each row's summed gradient with :func:`embtab.coalesce` /
      :func:`embtab.gather_bags_grad`, which add a row's contributions in their original order as
      the local fused step does, and the row's shard applies it. Every shard counts every step
      (Adam's bias correction and Adagrad's ``lr_decay`` see the same step as locally). A training
      loop whose gradients come from ``gather_bags`` sums therefore follows the local run to the
      rounding of those sums (bitwise with one shard).

    Calls from several threads (or processes holding a copy of the table) are allowed: each shard
    runs one call at a time, in the order they reach it.
    """

    def __init__(self, num_rows: int, dim: int, *, num_shards: int, route: str = "hash", dtype: Any = np.float32,
                 init: str = "normal", std: Optional[float] = None, seed: int = 0, optimizer: Any = None,
                 checkpoint_dir: Any = None, actor_options: Optional[Dict[str, Any]] = None,
                 timeout: float = 300.0) -> None:
        init, std, seed = check_init(init, std, seed)
        self._configure(Layout(num_rows, num_shards, route), dim, dtype, {"init": init, "std": std, "seed": seed},
                        optimizer, checkpoint_dir, actor_options, timeout)
        self._start()

    @classmethod
    def from_array(cls, table: NDArray[np.floating], *, num_shards: int, route: str = "hash", optimizer: Any = None,
                   checkpoint_dir: Any = None, actor_options: Optional[Dict[str, Any]] = None,
                   timeout: float = 300.0) -> ShardedTable:
        """A sharded table with the rows of ``table`` (copied into the shards; a pretrained table).

        Takes the keyword arguments of the constructor. Until the first :meth:`save` into
        ``checkpoint_dir`` a shard that Ray restarts has no rows to go back to (its calls raise
        :class:`ShardLost` until :meth:`load`), so save once right away if that matters.
        """
        if not isinstance(table, np.ndarray):
            raise TypeError(f"table must be a numpy array, got {type(table).__name__}")
        if table.ndim != 2:
            raise ValueError(f"table must be 2-D (num_rows, dim), got shape {table.shape}")
        self = cls.__new__(cls)
        self._configure(Layout(table.shape[0], num_shards, route), table.shape[1], table.dtype, None, optimizer,
                        checkpoint_dir, actor_options, timeout)
        self._start()
        self._assign(table, {}, [0] * num_shards)
        return self

    @classmethod
    def from_checkpoint(cls, path: Any, *, num_shards: Optional[int] = None, route: Optional[str] = None,
                        checkpoint_dir: Any = None, actor_options: Optional[Dict[str, Any]] = None,
                        timeout: float = 300.0) -> ShardedTable:
        """The table a :meth:`save` wrote at ``path``, with its optimizer and steps, on new actors.

        ``num_shards`` and ``route`` default to the checkpoint's; others re-shard the rows (each
        new shard reads its rows from the saved shards). ``checkpoint_dir`` defaults to ``path``.
        """
        path = os.path.abspath(os.fspath(path))
        manifest = _store.read_manifest(path)
        self = cls.__new__(cls)
        self._configure(Layout(manifest["num_rows"], manifest["num_shards"] if num_shards is None else num_shards,
                               manifest["route"] if route is None else route),
                        manifest["dim"], np.dtype(manifest["dtype"]), manifest["init"], manifest["optimizer"],
                        path if checkpoint_dir is None else checkpoint_dir, actor_options, timeout)
        self._start()
        self.load(path)
        return self

    # -- set-up ----------------------------------------------------------------------------------

    def _configure(self, layout: Layout, dim: int, dtype: Any, init: Optional[Dict[str, Any]], optimizer: Any,
                   checkpoint_dir: Any, actor_options: Optional[Dict[str, Any]], timeout: float) -> None:
        self._layout = layout
        self._dim = int(_check_size(dim, "dim", 1))
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64) or not dtype.isnative:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self._dtype: np.dtype = dtype
        self._init = init
        self._optimizer: Optional[OptimizerSpec] = check_optimizer(optimizer, dtype)
        self._checkpoint_dir: Optional[str] = None if checkpoint_dir is None else os.path.abspath(os.fspath(checkpoint_dir))
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"actor_options must be a dict of Ray actor options, got {type(actor_options).__name__}")
        self._actor_options = {**_DEFAULT_ACTOR_OPTIONS, **(actor_options or {})}
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._timeout: float = float(timeout)
        # A zero-width table with the real number of rows: embtab's own checks of ids, offsets,
        # weights and modes run on it (same errors, same messages as a local table) at no memory.
        self._probe: NDArray[np.floating] = np.empty((layout.num_rows, 0), dtype)
        self._sent: NDArray[np.int64] = np.zeros(layout.num_shards, np.int64)
        self._received: NDArray[np.int64] = np.zeros(layout.num_shards, np.int64)
        self._actors: List[Any] = []
        self._tokens: List[Optional[str]] = []

    def _spec(self) -> Dict[str, Any]:
        return {**self._layout.to_dict(), "dim": self._dim, "dtype": self._dtype.str, "init": self._init,
                "optimizer": self._optimizer, "checkpoint_dir": self._checkpoint_dir}

    def _new_actor(self, shard: int) -> Any:
        return _shard_class().options(**self._actor_options).remote(self._spec(), shard)

    def _start(self) -> None:
        connect()
        self._actors = [self._new_actor(s) for s in range(self._layout.num_shards)]
        self._tokens = [None] * self._layout.num_shards
        refs = [a.hello.remote() for a in self._actors]
        _ready, pending = ray.wait(refs, num_returns=len(refs), timeout=self._timeout)
        if pending:
            self.close()
            raise TimeoutError(f"{len(pending)} of {len(refs)} shard actors did not start within {self._timeout:g} s: "
                               "does the cluster have the resources that actor_options asks for each shard?")
        self._tokens = [info["token"] for info in ray.get(refs)]

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # A copy in another process (a Ray task or trainer) counts its own traffic; Ray hands numpy
        # arrays over read-only.
        self.__dict__.update(state)
        self._sent = np.zeros(self.num_shards, np.int64)
        self._received = np.zeros(self.num_shards, np.int64)

    def close(self) -> None:
        """End the shard actors (their rows go with them: save first). The table is unusable after."""
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- properties ------------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return self._layout.num_rows

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def shape(self) -> Tuple[int, int]:
        return (self._layout.num_rows, self._dim)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def num_shards(self) -> int:
        return self._layout.num_shards

    @property
    def route(self) -> str:
        return self._layout.route

    @property
    def optimizer(self) -> Optional[OptimizerSpec]:
        """The ``(kind, hyperparameters)`` every shard runs, or None."""
        return self._optimizer

    @property
    def checkpoint_dir(self) -> Optional[str]:
        return self._checkpoint_dir

    @property
    def shards(self) -> Tuple[Shard, ...]:
        """The layout: one :class:`Shard` (index, num_rows, start, stop) per shard."""
        sizes = self._layout.shard_sizes()
        range_route = self._layout.route == "range"
        starts = self._layout.starts
        return tuple(Shard(s, int(sizes[s]), int(starts[s]) if range_route else None,
                           int(starts[s + 1]) if range_route else None) for s in range(self.num_shards))

    @property
    def step_count(self) -> Tuple[Optional[int], ...]:
        """Steps each shard has applied (None for a shard that has no rows now). Equal for all shards
        unless a shard was lost and went back to a checkpoint."""
        return tuple(entry.get("step_count") for entry in self.stats())

    def stats(self) -> List[Dict[str, Any]]:
        """Per shard: ``rows``, ``bytes`` (its rows and optimizer state), ``calls`` (by kind, since
        the shard's process started), ``step_count``, ``bytes_sent`` / ``bytes_received`` (array
        bytes this client sent it and got back), ``node_id``, ``pid``, ``threads``, ``restarted``
        and ``rows_from``; ``{"shard": s, "alive": False, "error": ...}`` for a shard that does not
        answer."""
        self._check_open()
        refs = [a.stats.remote() for a in self._actors]
        ray.wait(refs, num_returns=len(refs), timeout=self._timeout)
        out = []
        for s, ref in enumerate(refs):
            try:
                entry = dict(ray.get(ref, timeout=0), alive=True)
            except (RayActorError, GetTimeoutError) as exc:
                entry = {"shard": s, "alive": False, "error": str(exc).splitlines()[0]}
            entry.update(bytes_sent=int(self._sent[s]), bytes_received=int(self._received[s]))
            out.append(entry)
        return out

    def __repr__(self) -> str:
        opt = f", optimizer={self._optimizer[0]!r}" if self._optimizer else ""
        return (f"ShardedTable({self.num_rows}, {self.dim}, num_shards={self.num_shards}, route={self.route!r}, "
                f"dtype={self._dtype}{opt})")

    # -- calls -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._actors:
            raise RuntimeError("this ShardedTable is closed")

    def _call(self, method: str, payloads: Dict[int, Any]) -> Dict[int, Any]:
        """Run ``method`` on the given shards (arrays through Ray's object store, one ``ray.put``
        per shard) and wait for all of them; ShardLost / TimeoutError instead of partial results."""
        self._check_open()
        refs = {}
        for s, payload in payloads.items():
            self._sent[s] += _payload_bytes(payload)
            arg = None if payload is None else ray.put(payload)
            refs[s] = getattr(self._actors[s], method).remote(self._tokens[s], arg)
        return self._collect(refs)

    def _collect(self, refs: Dict[int, Any]) -> Dict[int, Any]:
        _, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self._timeout)
        if pending:
            late = sorted(s for s, ref in refs.items() if ref in pending)
            raise TimeoutError(f"shard{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} did not answer "
                               f"within {self._timeout:g} s (a hung or partitioned node?); the call's effect on "
                               "them is unknown: table.step_count tells where each shard stands")
        results: Dict[int, Any] = {}
        lost: Dict[int, Any] = {}
        failure: Optional[BaseException] = None
        for s, ref in refs.items():
            try:
                value = ray.get(ref)
            except RayActorError as exc:
                lost[s] = exc
                continue
            except Exception as exc:  # an error raised inside the shard (a full disk on save)
                failure = failure or exc
                continue
            if isinstance(value, Restarted):
                lost[s] = value
            else:
                self._received[s] += _payload_bytes(value)
                results[s] = value
        if lost:
            self._raise_lost(lost)
        if failure is not None:
            raise failure
        return results

    def _raise_lost(self, lost: Dict[int, Any]) -> None:
        steps: Dict[int, Optional[int]] = {}
        why: Dict[int, str] = {}
        for s, cause in lost.items():
            if isinstance(cause, Restarted):
                self._tokens[s] = cause.token  # seen: the next call runs on the restarted shard
                steps[s], why[s] = cause.step, cause.source
            else:
                steps[s], why[s] = self._await_restart(s)
        raise ShardLost(steps, why, self.num_shards)

    def _await_restart(self, shard: int) -> Tuple[Optional[int], str]:
        """Wait (up to the timeout) for Ray to bring a dead shard back; its step and rows' source."""
        deadline = time.monotonic() + self._timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                info = ray.get(self._actors[shard].hello.remote(), timeout=max(remaining, 0.001))
            except ActorUnavailableError:  # restarting
                if remaining <= 0:
                    return None, f"it did not come back within {self._timeout:g} s"
                time.sleep(0.05)
                continue
            except RayActorError as exc:
                return None, f"Ray will not restart it: {str(exc).splitlines()[0]}"
            except GetTimeoutError:
                return None, f"it did not come back within {self._timeout:g} s"
            self._tokens[shard] = info["token"]
            return info["step"], info["source"]

    def _split_rows(self, rows: NDArray[np.int64], *values: NDArray[Any]) -> Dict[int, Tuple[NDArray[Any], ...]]:
        """Distinct sorted ids (and arrays aligned with them) split by shard, every shard present."""
        order, bounds = group_by_shard(self._layout.shard_of(rows), self.num_shards,
                                       grouped=self._layout.route == "range")
        return {s: tuple(_take(a, order, bounds[s], bounds[s + 1]) for a in (rows,) + values)
                for s in range(self.num_shards)}

    def gather(self, ids: ArrayLike) -> NDArray[np.floating]:
        """Rows at ``ids``: ``table[ids]``, shape ``ids.shape + (dim,)``, exactly.

        Each shard receives its distinct ids once, however often they repeat in ``ids``.

        Raises
        ------
        IndexError
            An id is negative or >= num_rows (its position and value named); nothing is sent.
        TypeError
            ``ids`` is not an integer array.
        ShardLost, TimeoutError
            A shard was lost / did not answer.
        """
        ids = _own(ids)
        embtab.gather(self._probe, ids)
        ids = np.asarray(ids)
        out = np.empty(ids.shape + (self._dim,), self._dtype)
        if ids.size == 0:
            return out
        unique, inverse = np.unique(ids.reshape(-1).astype(np.int64, copy=False), return_inverse=True)
        parts = self._split_rows(unique, np.arange(unique.size))
        results = self._call("gather", {s: p[0] for s, p in parts.items() if p[0].size})
        rows = np.empty((unique.size, self._dim), self._dtype)
        for s, found in results.items():
            rows[parts[s][1]] = found
        np.take(rows, inverse.reshape(-1), axis=0, out=out.reshape(-1, self._dim))
        return out

    def gather_bags(self, ids: ArrayLike, offsets: Optional[ArrayLike] = None, *, mode: PoolMode = "sum",
                    weights: Optional[ArrayLike] = None, return_argmax: bool = False) -> Any:
        """Pooled lookup: one row per bag, as :func:`embtab.gather_bags` on the whole table.

        Each shard receives its distinct ids, the positions of its rows in the bags and their
        weights, and returns the partial sum (or maximum) of its part of each bag; the client
        adds the partials in shard order ("mean" then divides by each bag's length).

        Parameters
        ----------
        ids, offsets, mode, weights, return_argmax :
            As :func:`embtab.gather_bags` (``return_argmax`` gives the winning global ids).

        Returns
        -------
        ndarray (num_bags, dim); ``(out, argmax)`` with ``return_argmax=True``.

        Raises
        ------
        IndexError, TypeError, ValueError
            As :func:`embtab.gather_bags`, before anything is sent.
        ShardLost, TimeoutError
            A shard was lost / did not answer.
        """
        ids, offsets = _own(ids), _own(offsets)
        weights = as_values(weights, self._probe)
        embtab.gather_bags(self._probe, ids, offsets, mode=mode, weights=weights, return_argmax=return_argmax)
        offs = _core.bag_offsets(ids, offsets)  # int64 CSR offsets (checked above)
        flat = np.asarray(ids).reshape(-1).astype(np.int64, copy=False)
        plan = _BagsPlan(self._layout, flat, offs, None if weights is None else np.asarray(weights).reshape(-1))
        results = self._call("bags", {s: p + (mode, return_argmax) for s, p in plan.payloads.items()})
        out = np.zeros((plan.num_bags, self._dim), self._dtype)
        argmax = np.full(out.shape, -1, np.int64) if return_argmax else None
        filled = np.zeros(plan.num_bags, bool)
        part_arg: Any
        for s in sorted(results):
            bags = plan.bags[s]
            part, part_arg = results[s] if return_argmax else (results[s], None)
            first = ~filled[bags]
            out[bags[first]] = part[first]
            if argmax is not None:
                argmax[bags[first]] = part_arg[first]
            later = bags[~first]
            if later.size:
                if mode == "max":
                    self._max_into(out, argmax, later, part[~first], None if part_arg is None else part_arg[~first],
                                   plan)
                else:
                    out[later] += part[~first]
            filled[bags] = True
        if mode == "mean":
            lengths = np.diff(offs)
            nonempty = lengths > 0
            out[nonempty] /= lengths[nonempty].astype(self._dtype)[:, None]
        return (out, argmax) if return_argmax else out

    @staticmethod
    def _max_into(out: NDArray[Any], argmax: Optional[NDArray[np.int64]], bags: NDArray[np.int64],
                  new: NDArray[Any], new_arg: Optional[NDArray[np.int64]], plan: _BagsPlan) -> None:
        """Merge another shard's maxima of ``bags`` into ``out`` with the local kernel's rule: the
        first NaN, else the largest value, ties going to the row that comes first in the bag."""
        cur = out[bags]
        cur_nan, new_nan = np.isnan(cur), np.isnan(new)
        take = (new > cur) | (new_nan & ~cur_nan)
        if argmax is not None and new_arg is not None:
            cur_arg = argmax[bags]
            tie = (new == cur) | (new_nan & cur_nan)
            if tie.any():
                b, j = np.nonzero(tie)
                bag = bags[b]
                earlier = plan.first_position(bag, new_arg[b, j]) < plan.first_position(bag, cur_arg[b, j])
                take[b[earlier], j[earlier]] = True
            argmax[bags] = np.where(take, new_arg, cur_arg)
        out[bags] = np.where(take, new, cur)

    def _require_optimizer(self) -> None:
        if self._optimizer is None:
            raise RuntimeError("this ShardedTable has no optimizer: create it with optimizer=(name, {hyperparameters}), "
                               "e.g. ('rowwise_adagrad', {'lr': 0.01})")

    def _check_dtype(self, name: str, values: Any) -> NDArray[np.floating]:
        values = as_values(values, self._probe)
        if not isinstance(values, np.ndarray) or values.dtype != self._dtype:
            got = values.dtype if isinstance(values, np.ndarray) else type(values).__name__
            raise TypeError(f"{name} must have the table's dtype {self._dtype}, got {got}")
        return values

    def step(self, ids: ArrayLike, grads: ArrayLike) -> None:
        """One optimizer step from the sparse gradient ``(ids, grads)``, as the local optimizer's
        ``step(ids, grads)``: the gradients of a repeated id are summed (in their original order)
        and each distinct row is updated once, by its shard. Every shard advances its step count.

        Raises
        ------
        IndexError
            A bad id: nothing is sent, no shard is updated.
        TypeError, ValueError
            ``grads`` of another dtype or shape (``ids.shape + (dim,)``), non-integer ids.
        RuntimeError
            The table has no optimizer.
        ShardLost, TimeoutError
            A shard was lost / did not answer (see :class:`ShardLost` for what was applied).
        """
        self._require_optimizer()
        ids = _own(ids)
        grads = self._check_dtype("grads", grads)
        shape = np.shape(ids) + (self._dim,)
        if grads.shape != shape:
            raise ValueError(f"grads must have shape ids.shape + (dim,) = {shape} for ids of shape {np.shape(ids)}, "
                             f"got {grads.shape}")
        embtab.gather(self._probe, ids)
        self._apply(*embtab.coalesce(ids, grads))

    def step_bags(self, grad_out: NDArray[np.floating], ids: ArrayLike, offsets: Optional[ArrayLike] = None, *,
                  mode: PoolMode = "sum", weights: Optional[ArrayLike] = None,
                  argmax: Optional[NDArray[np.int64]] = None) -> None:
        """One optimizer step from the gradient of ``gather_bags(ids, offsets, mode=mode,
        weights=weights)``, as the local optimizer's ``step_bags``: every row updated bitwise as
        the local fused step updates it.

        ``argmax`` (``mode="max"``): the winners from ``gather_bags(..., return_argmax=True)``;
        when omitted they are found again with a sharded lookup (the table must not have changed
        since the forward pass).

        Raises
        ------
        IndexError, TypeError, ValueError
            As the local ``step_bags``, before anything is sent.
        RuntimeError
            The table has no optimizer.
        ShardLost, TimeoutError
            A shard was lost / did not answer.
        """
        self._require_optimizer()
        ids, offsets = _own(ids), _own(offsets)
        weights = as_values(weights, self._probe)
        num_bags = embtab.gather_bags(self._probe, ids, offsets, mode=mode, weights=weights).shape[0]
        grad_out = self._check_dtype("grad_out", grad_out)
        if grad_out.ndim != 2 or grad_out.shape[1] != self._dim:  # gather_bags_grad checks the number of rows
            raise ValueError(f"grad_out must have the table's row length: shape ({num_bags}, {self._dim}), "
                             f"got {grad_out.shape}")
        if mode == "max" and argmax is None:
            _, argmax = self.gather_bags(ids, offsets, mode="max", return_argmax=True)
        self._apply(*embtab.gather_bags_grad(grad_out, ids, offsets, mode=mode, weights=weights, argmax=argmax))

    def _apply(self, rows: NDArray[np.int64], grads: NDArray[np.floating]) -> None:
        """Send each shard its rows' coalesced gradients (every shard, even with none: it counts the step)."""
        self._call("step_rows", self._split_rows(rows, grads))

    # -- checkpoints -----------------------------------------------------------------------------

    def _path(self, path: Optional[Union[str, os.PathLike[str]]]) -> str:
        if path is None:
            if self._checkpoint_dir is None:
                raise ValueError("no path given and the table has no checkpoint_dir")
            return self._checkpoint_dir
        return os.path.abspath(os.fspath(path))

    def save(self, path: Optional[Union[str, os.PathLike[str]]] = None) -> str:
        """Write a checkpoint of every shard, in parallel, and switch to it atomically.

        Each shard actor writes its rows and optimizer state with :func:`embtab.save` into a
        directory of a new generation; the manifest (layout, optimizer, each shard's step and
        digest) replaces the previous one last, so a crash at any moment leaves the previous or the
        new checkpoint. Only a save into ``checkpoint_dir`` changes what restarted shards reload.

        Parameters
        ----------
        path : str or path-like, optional
            Default ``checkpoint_dir``. Shards and client must all see it (shared file system).

        Returns
        -------
        str
            The checkpoint's directory.
        """
        path = self._path(path)
        os.makedirs(path, exist_ok=True)
        generation = _store.new_generation()
        try:
            saved = self._call("save", {s: os.path.join(path, _store.shard_dir(generation, s))
                                        for s in range(self.num_shards)})
        except BaseException:
            _store.discard_generations(path, keep="")
            raise
        shards = [{"dir": _store.shard_dir(generation, s), "rows": saved[s]["rows"], "step": saved[s]["step"],
                   "sha256": saved[s]["sha256"]} for s in range(self.num_shards)]
        manifest = {**self._layout.to_dict(), "dim": self._dim, "dtype": self._dtype.str, "init": self._init,
                    "optimizer": self._optimizer, "generation": generation, "shards": shards,
                    "step_count": [e["step"] for e in shards], "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _store.write_manifest(path, manifest)
        return path

    def load(self, path: Any = None) -> None:
        """Bring every shard to the checkpoint at ``path`` (default ``checkpoint_dir``), in place.

        The checkpoint may have another ``num_shards`` or ``route``: each shard then gathers its
        rows from the saved shards (re-sharding). The table takes the checkpoint's optimizer and
        steps. Shards that were lost for good are started again first, so this also recovers from
        a :class:`ShardLost` whose step is None.

        Raises
        ------
        FileNotFoundError
            No checkpoint at ``path``.
        ValueError
            The checkpoint holds a table of another shape or dtype (a CheckpointError, a
            ValueError, if it is corrupt).
        """
        path = self._path(path)
        manifest = _store.read_manifest(path)
        if (manifest["num_rows"], manifest["dim"], manifest["dtype"]) != (self.num_rows, self._dim, self._dtype.str):
            raise ValueError(f"the checkpoint in {path!r} holds a ({manifest['num_rows']}, {manifest['dim']}) "
                             f"{np.dtype(manifest['dtype'])} table, this one is ({self.num_rows}, {self._dim}) "
                             f"{self._dtype}")
        self._check_open()
        self._revive()
        # Two phases: every shard reads and checks its rows first; only when all have, they switch.
        try:
            self._collect({s: a.prepare_load.remote(path, manifest) for s, a in enumerate(self._actors)})
        except BaseException:
            ray.wait([a.commit_load.remote(False) for a in self._actors], num_returns=self.num_shards,
                     timeout=self._timeout)
            raise
        infos = self._collect({s: a.commit_load.remote(True) for s, a in enumerate(self._actors)})
        self._tokens = [infos[s]["token"] for s in range(self.num_shards)]
        missed = {s: info for s, info in infos.items() if not info["loaded"]}
        if missed:  # restarted between the two phases
            raise ShardLost({s: i["step"] for s, i in missed.items()}, {s: i["source"] for s, i in missed.items()},
                            self.num_shards)
        spec = manifest["optimizer"]
        self._optimizer = None if spec is None else (spec[0], dict(spec[1]))

    def _revive(self) -> None:
        """Start a new actor for every shard that Ray will not restart (``max_restarts`` spent)."""
        for s, actor in enumerate(self._actors):
            try:
                ray.get(actor.hello.remote(), timeout=self._timeout)
            except ActorUnavailableError:  # noqa: PERF203 -- one remote call per shard dwarfs the try
                continue  # restarting: Ray brings it back and load() then runs on it
            except RayActorError:
                self._actors[s] = self._new_actor(s)

    def to_numpy(self) -> NDArray[np.floating]:
        """The whole table as one local array (every row comes to this process)."""
        return self._export()[0]

    def _export(self) -> Tuple[NDArray[np.floating], Dict[str, NDArray[Any]], List[int]]:
        results = self._call("export", {s: None for s in range(self.num_shards)})
        table = aligned_empty((self.num_rows, self._dim), self._dtype)
        state: Dict[str, NDArray[Any]] = {}
        for s, ids in enumerate(self._layout.owned_all()):
            rows, shard_state, _ = results[s]
            table[ids] = rows
            for key, value in shard_state.items():
                if key not in state:
                    state[key] = aligned_empty((self.num_rows,) + value.shape[1:], value.dtype)
                state[key][ids] = value
        return table, state, [int(results[s][2]) for s in range(self.num_shards)]

    def _assign(self, table: NDArray[Any], state: Dict[str, NDArray[Any]], steps: List[int]) -> None:
        payloads = {}
        for s, ids in enumerate(self._layout.owned_all()):
            payloads[s] = (table[ids], {k: v[ids] for k, v in state.items()}, int(steps[s]), self._optimizer)
        self._call("assign", payloads)

    # embtab.save / embtab.load of the whole table (every row passes through this process; save()
    # writes shard by shard instead).
    _checkpoint_name = "distributed.ShardedTable"  # load() imports embtab.distributed for it
    _checkpoint_order = 0

    def _config(self) -> Dict[str, Any]:
        return {**self._layout.to_dict(), "dim": self._dim, "dtype": self._dtype.str, "init": self._init,
                "optimizer": self._optimizer, "checkpoint_dir": self._checkpoint_dir, "timeout": self._timeout}

    def _checkpoint_state(self) -> Tuple[Dict[str, Any], Dict[str, NDArray[Any]]]:
        table, state, steps = self._export()
        arrays = {"table": table, **{f"state.{k}": v for k, v in state.items()}}
        return dict(self._config(), step_count=steps), arrays

    @classmethod
    def _from_checkpoint(cls, config: Dict[str, Any], arrays: Dict[str, NDArray[Any]]) -> ShardedTable:
        self = cls.__new__(cls)
        self._configure(Layout(config["num_rows"], config["num_shards"], config["route"]), config["dim"],
                        np.dtype(config["dtype"]), config["init"], config["optimizer"], config["checkpoint_dir"],
                        None, config["timeout"])
        self._start()
        state = {k[len("state."):]: v for k, v in arrays.items() if k.startswith("state.")}
        self._assign(arrays["table"], state, config["step_count"])
        return self


register_checkpointable(ShardedTable)
