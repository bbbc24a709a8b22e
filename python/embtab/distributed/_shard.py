"""The shard actor: one Ray actor per shard holds an embtab table of its rows and the state of
their optimizer, and runs embtab's kernels on them.

Every data call carries the token of the incarnation the client knows. A shard that Ray restarted
after its process died has a new token: it refuses such calls (returns :class:`Restarted`
without doing anything) until the client has acknowledged the restart by raising ``ShardLost``,
so no call can silently land on rows that went back to a checkpoint.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import ray

import embtab
from embtab._arrays import aligned_empty

from . import _store
from ._layout import Layout, init_rows, local_rows
from ._optimizer import make_optimizer, state_arrays


@dataclass(frozen=True)
class Restarted:
    """What a restarted (or emptied) shard answers instead of running a call."""

    token: str
    step: Optional[int]  # the step its rows went back to; None: it has no rows at all
    source: str  # where they came from, for the message


class ShardActor:
    """One shard. ``spec``: the table (num_rows, dim, dtype, num_shards, route, init, optimizer,
    checkpoint_dir); ``shard``: which one this is."""

    def __init__(self, spec: Dict[str, Any], shard: int) -> None:
        self.spec = spec
        self.shard = shard
        self.layout = Layout(spec["num_rows"], spec["num_shards"], spec["route"])
        self.dtype = np.dtype(spec["dtype"])
        self.dim = int(spec["dim"])
        self.owned: Optional[np.ndarray] = (
            self.layout.owned(shard) if self.layout.route == "hash" and self.layout.num_shards > 1 else None)
        self.num_rows = int(self.owned.size if self.owned is not None else
                            self.layout.starts[shard + 1] - self.layout.starts[shard])
        self.token = uuid.uuid4().hex
        self.calls: Counter[str] = Counter()
        self.table: Optional[np.ndarray] = None
        self.opt: Any = None
        self.step = 0
        self.pending: Any = None
        self.source = "nothing (its rows are lost)"
        context = ray.get_runtime_context()
        cpus = context.get_assigned_resources().get("CPU", 0)
        if cpus >= 1:  # as many kernel threads as the CPUs Ray reserved for this actor
            embtab.set_num_threads(int(cpus))
        with warnings.catch_warnings():  # Ray's own property reads its deprecated actor_id
            warnings.simplefilter("ignore", DeprecationWarning)
            self.restarted = bool(context.was_current_actor_reconstructed)
        checkpoint = spec.get("checkpoint_dir")
        if self.restarted and checkpoint and os.path.isfile(os.path.join(checkpoint, _store.MANIFEST)):
            manifest = _store.read_manifest(checkpoint)
            self._adopt(*self._read(checkpoint, manifest))
            self.source = f"the checkpoint in {checkpoint}"
        elif spec.get("init") is not None:
            self._fresh()
            self.source = "its initial rows (no checkpoint)" if self.restarted else "its initial rows"
        # Otherwise the client fills the shard (assign / load); a restart then has nothing to go
        # back to, and every call answers Restarted(step=None) until the client loads a checkpoint.

    # -- state -----------------------------------------------------------------------------------

    def _global_ids(self, local: np.ndarray) -> np.ndarray:
        ids: np.ndarray = self.owned[local] if self.owned is not None else local + self.layout.starts[self.shard]
        return ids

    def _local(self, ids: np.ndarray) -> np.ndarray:
        return local_rows(self.layout, self.shard, self.owned, np.asarray(ids, np.int64))

    def _adopt(self, table: np.ndarray, opt: Any, step: int) -> None:
        """Make ``table`` (aligned, writable) and ``opt`` (its optimizer, or None) the shard's."""
        self.table, self.opt, self.step = table, opt, int(step)
        if opt is not None and "step" in opt.state:
            opt.state["step"] = self.step

    def _optimizer_for(self, table: np.ndarray, opt_spec: Any, state: Dict[str, np.ndarray]) -> Any:
        """A new optimizer over ``table`` whose state arrays are copies of ``state``'s."""
        opt = make_optimizer(opt_spec, table) if opt_spec is not None else None
        for key, array in state_arrays(opt).items():
            if key in state:
                np.copyto(array, state[key])
        return opt

    def _fresh(self) -> None:
        init = self.spec["init"]
        ids = self._global_ids(np.arange(self.num_rows, dtype=np.int64))
        table = init_rows(ids, self.dim, self.layout.num_rows, init["init"], init["std"], init["seed"], self.dtype)
        self._adopt(table, self._optimizer_for(table, self.spec["optimizer"], {}), 0)

    def _arrays(self) -> Dict[str, np.ndarray]:
        assert self.table is not None
        arrays = {"table": self.table}
        arrays.update({f"state.{k}": v for k, v in state_arrays(self.opt).items()})
        return arrays

    def _read_source(self, path: str, manifest: Dict[str, Any], source: int, mmap: bool) -> Tuple[Dict[str, np.ndarray], Any]:
        """The arrays of shard ``source`` of a checkpoint, checked against the manifest's digest,
        and the optimizer embtab.load rebuilt over them."""
        entry = manifest["shards"][source]
        loaded = embtab.load(os.path.join(path, entry["dir"]), mmap=mmap, verify=False)
        arrays = {"table": loaded["table"]}
        arrays.update({f"state.{k}": v for k, v in state_arrays(loaded.get("optimizer")).items()})
        if _store.digest(arrays) != entry["sha256"]:
            raise embtab.CheckpointError(f"shard {source} of the checkpoint in {path!r} does not match its "
                                         "manifest (digest mismatch): the checkpoint is corrupt")
        return arrays, loaded.get("optimizer")

    def _read(self, path: str, manifest: Dict[str, Any]) -> Tuple[np.ndarray, Any, int]:
        """This shard's rows, optimizer and step from a sharded checkpoint of any layout (nothing
        of the shard's own state is touched: a failed load leaves it as it was)."""
        source = Layout(manifest["num_rows"], manifest["num_shards"], manifest["route"])
        if (source.num_rows, manifest["dim"], manifest["dtype"]) != (self.layout.num_rows, self.dim, self.dtype.str):
            raise ValueError(f"the checkpoint in {path!r} holds a ({manifest['num_rows']}, {manifest['dim']}) "
                             f"{manifest['dtype']} table, this one is ({self.layout.num_rows}, {self.dim}) {self.dtype.str}")
        opt_spec = manifest["optimizer"]
        if source == self.layout:
            # embtab.load gives an aligned, writable table and the optimizer over it: the shard's.
            arrays, opt = self._read_source(path, manifest, self.shard, mmap=False)
            return arrays["table"], opt, manifest["shards"][self.shard]["step"]
        # Another layout: take this shard's rows out of every source shard that holds some.
        table = aligned_empty((self.num_rows, self.dim), self.dtype)
        opt = self._optimizer_for(table, opt_spec, {})
        targets = state_arrays(opt)
        for s in range(source.num_shards):
            ids = source.owned(s)
            mine = self.layout.shard_of(ids) == self.shard
            if not mine.any():
                continue
            arrays, _ = self._read_source(path, manifest, s, mmap=True)
            dst = self._local(ids[mine])
            table[dst] = arrays["table"][mine]
            for key, target in targets.items():
                target[dst] = arrays[f"state.{key}"][mine]
        return table, opt, max(e["step"] for e in manifest["shards"])

    # -- calls -----------------------------------------------------------------------------------

    def _refuse(self, token: Optional[str], name: str) -> Optional[Restarted]:
        """A Restarted answer when ``token`` is not this incarnation's, or the shard has no rows."""
        if token is not None and token != self.token:
            return Restarted(self.token, self.step if self.table is not None else None, self.source)
        if self.table is None:
            return Restarted(self.token, None, self.source)
        self.calls[name] += 1
        return None

    def hello(self) -> Dict[str, Any]:
        return {"token": self.token, "step": self.step if self.table is not None else None, "source": self.source,
                "restarted": self.restarted, "pid": os.getpid()}

    def gather(self, token: str, ids: np.ndarray) -> Any:
        # _refuse answers whenever no table is loaded: the gather never sees None.
        return self._refuse(token, "gather") or embtab.gather(self.table, self._local(ids))  # type: ignore[arg-type]

    def bags(self, token: str, payload: Tuple[Any, ...]) -> Any:
        """Partial pooled sums (or maxima) of this shard's part of every bag that has one.

        ``payload``: the shard's distinct ids, the index into them of each of its positions (in
        the batch's order), CSR offsets over its non-empty bags, the weights of its positions,
        the pooling ("sum" or "max") and whether to return the winners of a max (as global ids).
        """
        refused = self._refuse(token, "bags")
        if refused:
            return refused
        assert self.table is not None  # _refuse answered otherwise
        unique, index, offsets, weights, mode, want_argmax = payload
        ids = self._local(unique)[index]
        if mode != "max":
            return embtab.gather_bags(self.table, ids, offsets, mode="sum", weights=weights)
        if not want_argmax:
            return embtab.gather_bags(self.table, ids, offsets, mode="max")
        out, argmax = embtab.gather_bags(self.table, ids, offsets, mode="max", return_argmax=True)
        return out, self._global_ids(argmax)

    def step_rows(self, token: str, payload: Tuple[np.ndarray, np.ndarray]) -> Any:
        """One optimizer step with distinct rows and their coalesced gradients (possibly none:
        the step count advances on every step of the table, as a local optimizer's does)."""
        refused = self._refuse(token, "step")
        if refused:
            return refused
        rows, grads = payload
        self.opt.step(self._local(rows), grads)
        self.step += 1
        return self.step

    def save(self, token: str, directory: str) -> Any:
        refused = self._refuse(token, "save")
        if refused:
            return refused
        named: Dict[str, Any] = {"table": self.table, "step_count": np.array([self.step], np.int64)}
        if self.opt is not None:
            named["optimizer"] = self.opt
        embtab.save(directory, **named)
        return {"rows": self.num_rows, "step": self.step, "sha256": _store.digest(self._arrays())}

    def prepare_load(self, path: str, manifest: Dict[str, Any]) -> bool:
        """Read this shard's part of a checkpoint and keep it aside until :meth:`commit_load`, so
        that a load that fails on any shard changes no shard. Whatever incarnation the client
        knew: this is also how a client brings a lost shard back."""
        self.pending = (path, self._read(path, manifest))
        return True

    def commit_load(self, commit: bool) -> Dict[str, Any]:
        pending, self.pending = self.pending, None
        if commit and pending is not None:
            path, (table, opt, step) = pending
            self._adopt(table, opt, step)
            self.source = f"the checkpoint in {path}"
            self.calls["load"] += 1
        return dict(self.hello(), loaded=commit and pending is not None)

    def assign(self, token: str, payload: Tuple[np.ndarray, Dict[str, np.ndarray], int, Any]) -> Any:
        """Take rows (and optimizer state) from the client: ShardedTable.from_array, embtab.load."""
        if token != self.token:
            return Restarted(self.token, None, self.source)
        rows, state, step, opt_spec = payload
        table = aligned_empty((self.num_rows, self.dim), self.dtype)
        np.copyto(table, rows)
        self._adopt(table, self._optimizer_for(table, opt_spec, state), step)
        self.source = "the arrays the client sent"
        self.calls["assign"] += 1
        return self.step

    def export(self, token: str, _: Any = None) -> Any:
        """Its rows, optimizer state and step, for embtab.save of the whole table."""
        return self._refuse(token, "export") or (self.table, state_arrays(self.opt), self.step)

    def stats(self) -> Dict[str, Any]:
        nbytes = sum(a.nbytes for a in self._arrays().values()) if self.table is not None else 0
        return {"shard": self.shard, "rows": self.num_rows, "bytes": nbytes, "calls": dict(self.calls),
                "step_count": self.step if self.table is not None else None, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(), "threads": embtab.get_num_threads(),
                "restarted": self.restarted, "rows_from": self.source}
