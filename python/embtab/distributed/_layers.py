"""ShardedEmbeddingBag: the pooled embedding layer over a ShardedTable."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

import embtab
from embtab._checkpoint import register_checkpointable
from embtab._lookup import PoolMode

from ._table import ShardedTable


@register_checkpointable
class ShardedEmbeddingBag:
    """Pooled lookups over a table sharded on Ray: :class:`embtab.EmbeddingBag`'s ``forward`` /
    ``backward`` with the rows and the optimizer in shard actors.

    ``forward(ids, offsets=None, per_sample_weights=None)`` returns one row per bag (sum, mean or
    max), ``backward(grad_out)`` returns the coalesced sparse gradient ``(rows, row_grads)`` of
    that forward and adds it to ``layer.grad`` (as torch and embtab's local layers do: call
    ``zero_grad()`` each step), and ``step()`` applies ``layer.grad`` with the table's optimizer on
    the shards (the local layers leave that to an optimizer object; here the optimizer lives with
    the rows). ``embtab.save`` / ``embtab.load`` accept the layer (every row passes through this
    process: for large tables use ``layer.table.save`` / ``ShardedTable.from_checkpoint``).

    Parameters
    ----------
    num_embeddings, dim : int
    num_shards : int
    mode : {"sum", "mean", "max"}
    route, init, std, seed, dtype, optimizer, checkpoint_dir, actor_options, timeout :
        As :class:`ShardedTable`.

    Attributes
    ----------
    table : ShardedTable
        The rows (``layer.table.save()``, ``layer.table.stats()``, ...).
    grad : (ndarray of int64, ndarray) or None
        The sum of the gradients of the ``backward`` calls since the last ``zero_grad()``.
    """

    _checkpoint_name = "distributed.ShardedEmbeddingBag"  # load() imports embtab.distributed for it
    _checkpoint_order = 0

    def __init__(self, num_embeddings: int, dim: int, *, num_shards: int, mode: PoolMode = "sum",
                 route: str = "hash", init: str = "normal", std: Optional[float] = None, seed: int = 0,
                 dtype: Any = np.float32, optimizer: Any = None, checkpoint_dir: Any = None,
                 actor_options: Optional[Dict[str, Any]] = None, timeout: float = 300.0) -> None:
        self.mode: PoolMode = self._check_mode(mode)
        self.table = ShardedTable(num_embeddings, dim, num_shards=num_shards, route=route, dtype=dtype, init=init,
                                  std=std, seed=seed, optimizer=optimizer, checkpoint_dir=checkpoint_dir,
                                  actor_options=actor_options, timeout=timeout)
        self.grad: Optional[Tuple[NDArray[np.int64], NDArray[np.floating]]] = None
        self._saved: Optional[Dict[str, Any]] = None

    @staticmethod
    def _check_mode(mode: Any) -> PoolMode:
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        return cast(PoolMode, mode)

    @classmethod
    def from_table(cls, table: ShardedTable, *, mode: PoolMode = "sum") -> ShardedEmbeddingBag:
        """A layer over an existing sharded table (e.g. ``ShardedTable.from_checkpoint(path)``)."""
        if not isinstance(table, ShardedTable):
            raise TypeError(f"table must be a ShardedTable, got {type(table).__name__}")
        layer = cls.__new__(cls)
        layer.mode = cls._check_mode(mode)
        layer.table, layer.grad, layer._saved = table, None, None
        return layer

    num_embeddings = property(lambda self: self.table.num_rows, doc="The number of rows of the table.")
    dim = property(lambda self: self.table.dim, doc="The length of a row.")

    def __call__(self, *args: Any, **kwargs: Any) -> NDArray[np.floating]:
        return self.forward(*args, **kwargs)

    def forward(self, ids: ArrayLike, offsets: Optional[ArrayLike] = None,
                per_sample_weights: Optional[ArrayLike] = None) -> NDArray[np.floating]:
        """Pooled rows of each bag: ``ids`` 2-D (one bag per row) or 1-D with CSR ``offsets``;
        ``per_sample_weights`` (same shape as ids, "sum" / "mean" only) multiply the rows."""
        argmax = None
        out: NDArray[np.floating]
        if self.mode == "max":
            out, argmax = self.table.gather_bags(ids, offsets, mode="max", weights=per_sample_weights,
                                                 return_argmax=True)
        else:
            out = self.table.gather_bags(ids, offsets, mode=self.mode, weights=per_sample_weights)
        self._saved = {"ids": ids, "offsets": offsets, "weights": per_sample_weights, "argmax": argmax}
        return out

    def backward(self, grad_out: NDArray[np.floating]) -> Tuple[NDArray[np.int64], NDArray[np.floating]]:
        """The gradient of the last forward's output with respect to the table, as
        ``(rows, row_grads)`` (sorted distinct rows, each row's contributions summed in order)."""
        if self._saved is None:
            raise RuntimeError("ShardedEmbeddingBag.backward() called before forward(): nothing to differentiate")
        saved, self._saved = self._saved, None
        grad_out = np.asarray(grad_out)
        if grad_out.dtype != self.table.dtype:
            raise TypeError(f"grad_out must have dtype {self.table.dtype}, got {grad_out.dtype}")
        if grad_out.ndim != 2 or grad_out.shape[1] != self.dim:
            raise ValueError(f"grad_out must have shape (num_bags, {self.dim}), got {grad_out.shape}")
        rows, grads = embtab.gather_bags_grad(grad_out, saved["ids"], saved["offsets"], mode=self.mode,
                                              weights=saved["weights"], argmax=saved["argmax"])
        if self.grad is None:
            self.grad = (rows, grads)
        else:  # gradients add up until zero_grad(), as in torch and embtab's local layers
            self.grad = embtab.coalesce(np.concatenate([self.grad[0], rows]), np.concatenate([self.grad[1], grads]))
        return rows, grads

    def step(self) -> None:
        """Apply ``self.grad`` with the table's optimizer (every shard counts the step); the
        gradient stays until ``zero_grad()``."""
        if self.grad is None:
            raise RuntimeError("step() without a gradient: call ShardedEmbeddingBag.backward() first")
        self.table._require_optimizer()
        self.table._apply(*self.grad)

    def zero_grad(self) -> None:
        self.grad = None

    def __repr__(self) -> str:
        return f"ShardedEmbeddingBag({self.num_embeddings}, {self.dim}, mode={self.mode!r}, table={self.table!r})"

    def _checkpoint_state(self) -> Tuple[Dict[str, Any], Dict[str, NDArray[Any]]]:
        config, arrays = self.table._checkpoint_state()
        return dict(config, mode=self.mode), arrays

    @classmethod
    def _from_checkpoint(cls, config: Dict[str, Any], arrays: Dict[str, NDArray[Any]]) -> ShardedEmbeddingBag:
        return cls.from_table(ShardedTable._from_checkpoint(config, arrays), mode=config["mode"])
