"""Sparse optimizers that update an embedding table in place, one fused pass per step.

Each optimizer holds the table it updates (the caller's array, never a copy) and its state as
numpy arrays in ``opt.state``. A step touches only the rows of the batch:

- ``opt.step(ids, grads)``: ``grads[i]`` is the gradient for row ``ids[i]``; repeated ids are
  summed first (in their original order), then each distinct row is updated once ("exact"
  semantics, as torch does with a coalesced sparse gradient).
- ``opt.step_bags(grad_out, ids, offsets=None, *, mode="sum", weights=None)``: the same with the
  gradient of :func:`embtab.gather_bags` (``grad_out`` is the gradient of the loss with respect to
  its output), computed and applied in one pass without materialising the per-row gradient.

The numerics follow the torch optimizer each class names (same operations in the same order, in
the table's dtype), so one step or many agree with torch to float rounding. Every id is checked
before anything is written: a bad id raises IndexError and leaves the table and state unchanged.
Gradients that share memory with the table or its state are copied first; a table and state arrays
that share memory with each other raise ValueError. One optimizer takes one step at a time, and the
step count advances together with the update it counts (whatever interrupts the call).

Weight decay: none of the torch counterparts supports it with a sparse gradient (``torch.optim.SGD``
and ``Adagrad`` raise, ``SparseAdam`` has no such option), so :class:`SGD`, :class:`Adagrad` and
:class:`Adam` have none either. :class:`RowWiseAdagrad` has FBGEMM's L2 mode (``weight_decay * row``
added to the gradient of each row in the batch).
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import weakref
from typing import Any, Dict, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core
from ._arrays import aligned_empty, aligned_zeros, as_ids, as_values
from ._checkpoint import register_checkpointable
from ._lookup import PoolMode, gather_bags

__all__ = ["SGD", "Adagrad", "RowWiseAdagrad", "Adam"]


def _check_table(table: Any) -> NDArray[np.floating]:
    if not isinstance(table, np.ndarray):
        raise TypeError(f"table must be a numpy array, got {type(table).__name__}")
    if table.dtype not in (np.float32, np.float64) or not table.dtype.isnative:
        raise TypeError(f"table must have dtype float32 or float64, got {table.dtype}")
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D (num_rows, dim), got shape {table.shape}")
    if not table.flags.c_contiguous:
        raise ValueError("table must be C-contiguous (it is updated in place, never copied)")
    if not table.flags.writeable:
        raise ValueError("table is read-only (it is updated in place)")
    return table


# Every optimizer's step lock, renewed in a forked child: a thread of the parent may have held one
# at the fork, and that thread does not exist in the child (logging does the same for its handlers).
_STEP_LOCKED: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _new_step_lock(opt: Any) -> None:
    opt._lock = threading.Lock()
    _STEP_LOCKED.add(opt)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: [_new_step_lock(opt) for opt in list(_STEP_LOCKED)])


def _hyper(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or v < 0 or (positive and v == 0) or math.isinf(v):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {value!r}")
    return v


class _SparseOptimizer:
    """Shared driver: validation of the arguments, the step count, the calls into the kernels."""

    _kind = ""
    _checkpoint_order = 1  # saved after the layers whose tables it updates

    def __init__(self, table: Any, lr: float) -> None:
        # A layer (embtab.layers) may stand for its table: step() then applies layer.grad.
        self.layer: Any = None
        if not isinstance(table, np.ndarray) and hasattr(table, "weight") and hasattr(table, "backward"):
            self.layer, table = table, table.weight
        self.table: NDArray[np.floating] = _check_table(table)
        self.lr = _hyper("lr", lr)
        self.state: Dict[str, Any] = {}
        _new_step_lock(self)

    # Checkpoints (embtab.save / embtab.load): hyperparameters and scalar state in the manifest,
    # state arrays as files, the table shared with the layer or array saved beside it.
    def _checkpoint_state(self) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
        hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()
                 if k not in ("table", "layer", "state") and isinstance(v, (int, float, tuple))}
        scalars = {k: v for k, v in self.state.items() if not isinstance(v, np.ndarray)}
        arrays = {f"state.{k}": v for k, v in self.state.items() if isinstance(v, np.ndarray)}
        arrays["table"] = self.layer.weight if self.layer is not None else self.table
        return {"hyper": hyper, "scalars": scalars}, arrays

    @classmethod
    def _from_checkpoint(cls, config: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> "_SparseOptimizer":
        opt = cls.__new__(cls)
        opt.layer = None
        _new_step_lock(opt)
        opt.table = arrays["table"]
        for key, value in config["hyper"].items():
            setattr(opt, key, tuple(value) if isinstance(value, list) else value)
        opt.state = dict(config["scalars"])
        for key, value in arrays.items():
            if key.startswith("state."):
                opt.state[key[len("state."):]] = value
        return opt

    def _bind_owner(self, owner: Any) -> None:
        """After loading: the layer whose weight is this optimizer's table, if any."""
        if owner is not None and hasattr(owner, "backward"):
            self.layer = owner

    # Subclasses: the two state arrays the kernel updates, and the hyperparameters of step number
    # `step` (1-based, the step about to be taken).
    def _state_arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        return None, None

    def _params(self, step: int) -> Dict[str, float]:
        return {"lr": _hyper("lr", self.lr)}

    def _step_count(self) -> Optional[np.ndarray]:
        """The step count, a 0-d int64 array that the compiled step advances together with its
        update (None for optimizers that keep none). A count set as an int, or a read-only one from
        a mapped checkpoint, is first replaced by a writeable array of the same value."""
        count = self.state.get("step")
        if count is None:
            return None
        if not (isinstance(count, np.ndarray) and count.dtype == np.int64 and count.ndim == 0
                and count.flags.writeable and count.flags.aligned):
            count = self.state["step"] = np.array(int(count), np.int64)
        return count

    def _next_step(self, count: Optional[np.ndarray]) -> int:
        return 1 if count is None else int(count) + 1

    def step(self, ids: Optional[ArrayLike] = None, grads: Optional[ArrayLike] = None) -> None:
        """Apply one update from the sparse gradient ``(ids, grads)``.

        Without arguments, applies the gradient that the layer given to the constructor stored in
        ``layer.grad`` during its ``backward()`` (RuntimeError if there is none).

        Parameters
        ----------
        ids : array_like of int32 or int64, any shape
            Rows of the table (``0 <= id < num_rows``); they may repeat.
        grads : ndarray, shape ``ids.shape + (dim,)``, the table's dtype
            ``grads[i]`` is the gradient for row ``ids[i]``; the gradients of a repeated row are
            summed before its single update.

        Raises
        ------
        IndexError
            A bad id (nothing is updated).
        TypeError
            ``grads`` of another dtype than the table (it is never cast), non-integer ids.
        ValueError
            ``grads`` of the wrong shape; the table became read-only.
        """
        if ids is None and grads is None:
            if self.layer is None:
                raise TypeError("step() needs ids and grads (or build the optimizer from a layer)")
            if self.layer.grad is None:
                raise RuntimeError(f"step() without a gradient: call {type(self.layer).__name__}.backward() first")
            ids, grads = self.layer.grad
        elif ids is None or grads is None:
            raise TypeError("step() takes both ids and grads, or neither")
        ids, grads = as_ids(ids), as_values(grads, self.table)
        # One step at a time: each computes its hyperparameters for the count it will advance.
        with self._lock:
            count = self._step_count()
            s1, s2 = self._state_arrays()
            _core.optim_step(self._kind, self.table, s1, s2, ids, grads, step=count,
                             **self._params(self._next_step(count)))

    def step_bags(
        self,
        grad_out: NDArray[np.floating],
        ids: ArrayLike,
        offsets: Optional[ArrayLike] = None,
        *,
        mode: PoolMode = "sum",
        weights: Optional[ArrayLike] = None,
        argmax: Optional[NDArray[np.int64]] = None,
    ) -> None:
        """One update from the gradient of ``gather_bags(self.table, ids, offsets, mode=mode, weights=weights)``.

        Equivalent to ``self.step(*embtab.gather_bags_grad(grad_out, ids, offsets, mode=mode,
        weights=weights, table=self.table))`` in one fused pass.

        Parameters
        ----------
        grad_out : ndarray, shape (num_bags, dim), the table's dtype
            Gradient of the loss with respect to the pooled output.
        ids, offsets, mode, weights :
            The arguments of the forward :func:`embtab.gather_bags` call.
        argmax : ndarray of int64, optional
            ``mode="max"``: the winners from ``gather_bags(..., return_argmax=True)``. When
            omitted they are recomputed from the table (which must not have changed since the
            forward pass).
        """
        ids = as_ids(ids)
        if offsets is not None:
            offsets = as_ids(offsets)
        with self._lock:
            if mode == "max" and argmax is None:
                _, argmax = gather_bags(self.table, ids, offsets, mode="max", return_argmax=True)
            count = self._step_count()
            s1, s2 = self._state_arrays()
            _core.optim_step_bags(
                self._kind,
                self.table,
                s1,
                s2,
                grad_out,
                ids,
                offsets,
                mode,
                as_values(weights, grad_out),
                argmax,
                step=count,
                **self._params(self._next_step(count)),
            )

    def __repr__(self) -> str:
        table = self.table
        return f"{type(self).__name__}(table of shape {table.shape} {table.dtype}, lr={self.lr})"


@register_checkpointable
class SGD(_SparseOptimizer):
    """Plain SGD on sparse gradients: ``row += (-lr) * g`` for each row of the batch.

    Matches ``torch.optim.SGD`` applied to a sparse gradient (without momentum or weight decay,
    which torch does not support for sparse gradients either).

    Parameters
    ----------
    table : ndarray, shape (num_rows, dim), float32 or float64
        Updated in place; must be C-contiguous and writeable.
    lr : float
        Learning rate, >= 0.
    """

    _kind = "sgd"


@register_checkpointable
class Adagrad(_SparseOptimizer):
    """Adagrad on sparse gradients, as ``torch.optim.Adagrad`` with a sparse gradient.

    For each row of the batch: ``sum += g * g``, ``row += (-clr) * (g / (sqrt(sum) + eps))`` with
    ``clr = lr / (1 + (step - 1) * lr_decay)``.

    Parameters
    ----------
    table : ndarray, shape (num_rows, dim), float32 or float64
    lr : float
    eps : float, default 1e-10
    initial_accumulator_value : float, default 0
    lr_decay : float, default 0

    Attributes
    ----------
    state : dict
        ``"sum"``: ndarray (num_rows, dim), the accumulated squared gradients; ``"step"``: 0-d int64
        ndarray, the number of steps taken (it advances on every call, even with an empty batch, as
        torch's; the compiled step advances it together with its update, so concurrent steps and an
        interrupted one never lose or repeat a count).
    """

    _kind = "adagrad"

    def __init__(
        self,
        table: NDArray[np.floating],
        lr: float,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        lr_decay: float = 0.0,
    ) -> None:
        super().__init__(table, lr)
        self.eps = _hyper("eps", eps)
        self.lr_decay = _hyper("lr_decay", lr_decay)
        init = _hyper("initial_accumulator_value", initial_accumulator_value)
        if init == 0.0:
            acc = aligned_zeros(self.table.shape, self.table.dtype)  # untouched pages cost nothing
        else:
            acc = aligned_empty(self.table.shape, self.table.dtype)
            acc.fill(init)
        self.state = {"sum": acc, "step": np.zeros((), np.int64)}

    def _state_arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        return self.state["sum"], None

    def _params(self, step: int) -> Dict[str, float]:
        lr = _hyper("lr", self.lr)
        return {"lr": lr / (1 + (step - 1) * _hyper("lr_decay", self.lr_decay)), "eps": _hyper("eps", self.eps)}


@register_checkpointable
class RowWiseAdagrad(_SparseOptimizer):
    """Row-wise Adagrad (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``): one accumulator per row.

    For each row of the batch, with its summed gradient ``g``: ``g += weight_decay * row`` (if
    nonzero), ``sum[r] += mean(g * g)``, ``row -= (lr / (sqrt(sum[r]) + eps)) * g``. The state is
    ``num_rows`` numbers instead of a second table.

    Parameters
    ----------
    table : ndarray, shape (num_rows, dim), float32 or float64
    lr : float
    eps : float, default 1e-8
    initial_accumulator_value : float, default 0
    weight_decay : float, default 0
        FBGEMM's L2 mode: added to the gradient of the rows in the batch.

    Attributes
    ----------
    state : dict
        ``"sum"``: ndarray (num_rows,), the per-row accumulators.
    """

    _kind = "rowwise_adagrad"

    def __init__(
        self,
        table: NDArray[np.floating],
        lr: float,
        eps: float = 1e-8,
        initial_accumulator_value: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(table, lr)
        self.eps = _hyper("eps", eps)
        self.weight_decay = _hyper("weight_decay", weight_decay)
        init = _hyper("initial_accumulator_value", initial_accumulator_value)
        self.state = {"sum": np.full(self.table.shape[0], init, self.table.dtype)}

    def _state_arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        return self.state["sum"], None

    def _params(self, step: int) -> Dict[str, float]:
        return {
            "lr": _hyper("lr", self.lr),
            "eps": _hyper("eps", self.eps),
            "weight_decay": _hyper("weight_decay", self.weight_decay),
        }


@register_checkpointable
class Adam(_SparseOptimizer):
    """Lazy Adam with the semantics of ``torch.optim.SparseAdam``.

    Only the rows of the batch are touched: their first and second moments are updated (rows not
    in the batch keep theirs, undecayed) and the row moves by
    ``-lr * sqrt(1 - beta2**step) / (1 - beta1**step) * m / (sqrt(v) + eps)``. ``step`` counts the
    calls for the whole table, as torch keeps it: it advances on every call, also when the batch is
    empty (which then changes nothing else).

    Parameters
    ----------
    table : ndarray, shape (num_rows, dim), float32 or float64
    lr : float
    betas : (float, float), default (0.9, 0.999)
        Each in [0, 1).
    eps : float, default 1e-8
        Must be > 0 (as in torch).

    Attributes
    ----------
    state : dict
        ``"exp_avg"``, ``"exp_avg_sq"``: ndarrays (num_rows, dim); ``"step"``: 0-d int64 ndarray
        (torch keeps a tensor), advanced together with the update it counts: concurrent steps and
        an interrupted one (KeyboardInterrupt) never lose a count or reuse a bias correction.
    """

    _kind = "adam"

    def __init__(
        self,
        table: NDArray[np.floating],
        lr: float,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(table, lr)
        self.eps = _hyper("eps", eps, positive=True)
        self.betas = self._check_betas(betas)
        self.state = {
            "exp_avg": aligned_zeros(self.table.shape, self.table.dtype),
            "exp_avg_sq": aligned_zeros(self.table.shape, self.table.dtype),
            "step": np.zeros((), np.int64),
        }

    @staticmethod
    def _check_betas(betas: Any) -> Tuple[float, float]:
        beta1, beta2 = betas
        for i, b in enumerate((beta1, beta2)):
            v = _hyper(f"betas[{i}]", b)
            if not v < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b!r}")
        return float(beta1), float(beta2)

    def _state_arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        return self.state["exp_avg"], self.state["exp_avg_sq"]

    def _params(self, step: int) -> Dict[str, float]:
        beta1, beta2 = self._check_betas(self.betas)
        lr = _hyper("lr", self.lr)
        step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        return {"lr": step_size, "eps": _hyper("eps", self.eps, positive=True), "beta1": beta1, "beta2": beta2}
