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

Learning rates: ``opt.lr`` may be set between steps (it is checked when set), or be a callable
``lr(step) -> float`` called before each step with the 1-based number of the step about to be
taken (a schedule; its value is checked on every call). A checkpoint keeps the last learning rate
used, as a number: give the schedule again after :func:`embtab.load`.

A layer of :mod:`embtab.layers` may be passed instead of a table: the optimizer updates its
``weight``, ``step()`` applies its accumulated ``layer.grad``, and ``opt.zero_grad()`` clears it
(``step()`` does not, as in torch).

Dense parameters: any float32 / float64 C-contiguous array is a table. Treat the parameter as
one row (``p.reshape(1, -1)``, a view) or as rows (a matrix), and step with all of them:
``opt.step(np.arange(len(table)), grad)``; with full-batch ids the sparse optimizers are the dense
ones (Adam's "lazy" update then touches every row each step).

Every optimizer also takes an :class:`embtab.DynamicTable` (or a :class:`embtab.DynamicEmbeddingBag`):
``ids`` are then keys, resolved to their rows without inserting (keys without a row get no update,
and still count in a bag's mean); the table keeps the state arrays, so a row's state starts afresh
when the row is reused; and each ``step`` / ``step_bags`` ends one of the table's steps (its TTL).

Weight decay: none of the torch counterparts supports it with a sparse gradient (``torch.optim.SGD``
and ``Adagrad`` raise, ``SparseAdam`` has no such option), so :class:`SGD`, :class:`Adagrad` and
:class:`Adam` have none either. :class:`RowWiseAdagrad` has FBGEMM's L2 mode (``weight_decay * row``
added to the gradient of each row in the batch); :class:`AdamW` decays the rows of the batch
(decoupled, as ``torch.optim.AdamW``).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import os
import threading
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core
from ._arrays import aligned_empty, aligned_zeros, as_array, as_ids, as_values
from ._checkpoint import register_checkpointable
from ._lookup import PoolMode, bag_arguments, gather_bags

__all__ = ["SGD", "Adagrad", "RowWiseAdagrad", "Adam", "AdamW", "step_bags_multi"]


def _check_table(table: Any) -> NDArray[np.floating]:
    """The table, checked by the compiled layer (which checks it again at each step)."""
    table = as_array(table, "table")  # a torch tensor's (or other DLPack array's) memory, shared
    return _core.check_optim_table(table)


# Every optimizer's step lock, renewed in a forked child: a thread of the parent may have held one
# at the fork, and that thread does not exist in the child (logging does the same for its handlers).
_STEP_LOCKED: weakref.WeakSet[Any] = weakref.WeakSet()


def _new_step_lock(opt: Any) -> None:
    opt._lock = threading.Lock()
    _STEP_LOCKED.add(opt)


def _renew_step_locks() -> None:
    for opt in list(_STEP_LOCKED):
        _new_step_lock(opt)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_step_locks)


def _hyper(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or v < 0 or (positive and v == 0) or math.isinf(v):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {value!r}")
    return v


def _restored_state(key: str, fresh: Any, saved: Any, num_rows: int) -> Any:
    """A loaded state entry, in the form the constructor made ``fresh``: per-row arrays of the
    right shape and dtype, and a step count (saved as an int or a 0-d integer array) in [0, 2**63)."""
    if isinstance(fresh, np.ndarray) and fresh.ndim > 0:
        shape = (num_rows,) + fresh.shape[1:]
        if not isinstance(saved, np.ndarray) or saved.shape != shape or saved.dtype != fresh.dtype:
            got = f"{saved.shape} {saved.dtype}" if isinstance(saved, np.ndarray) else type(saved).__name__
            raise ValueError(f"state[{key!r}] must be an array of shape {shape} and dtype {fresh.dtype}, got {got}")
        return saved
    if isinstance(saved, np.ndarray) and saved.ndim == 0 and saved.dtype.kind in "iu":
        saved = int(saved)
    if type(saved) is not int or not 0 <= saved < 2**63:
        raise ValueError(f"state[{key!r}] must be an integer in [0, 2**63), got {saved!r}")
    if isinstance(fresh, np.ndarray):
        fresh[()] = saved
        return fresh
    return saved


class _SparseOptimizer:
    """Shared driver: validation of the arguments, the step count, the calls into the kernels."""

    _kind = ""
    _checkpoint_order = 1  # saved after the layers whose tables it updates
    # An embtab.DynamicTable whose rows this optimizer updates: ids are then its keys, and the table
    # owns the state arrays (see DynamicTable._new_state / _update).
    _dynamic: Any = None
    _dynamic_id: int  # set when the optimizer is attached to a DynamicTable
    _lock: threading.Lock  # set by _new_step_lock (renewed in a forked child)

    def __init__(self, table: Any, lr: float) -> None:
        # A layer (embtab.layers) may stand for its table: step() then applies layer.grad.
        self.layer: Any = None
        owner = table
        if not isinstance(table, np.ndarray) and hasattr(table, "weight") and hasattr(table, "backward"):
            self.layer, table = table, table.weight
        self._dynamic = getattr(owner, "_dynamic_table", None)
        if self._dynamic is not None:
            table = self._dynamic.weight
        self.table: NDArray[np.floating] = _check_table(table)
        self.lr = lr
        self.state: Dict[str, Any] = {}
        _new_step_lock(self)

    # Checkpoints (embtab.save / embtab.load): the constructor's hyperparameters and the scalar
    # state (the step count) in the manifest, state arrays as files, the table shared with the layer
    # or array saved beside it.
    @classmethod
    def _hyperparameter_names(cls) -> Tuple[str, ...]:
        return tuple(inspect.signature(cls.__init__).parameters)[2:]  # after self and table

    def _checkpoint_state(self) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
        if self._dynamic is not None:
            self._dynamic._sync(self)  # the table's current arrays, shared with its own checkpoint
        hyper: Dict[str, Any] = {}
        for name in self._hyperparameter_names():
            if hasattr(self, name):  # not those only used to initialise the state
                # A schedule cannot be saved: the learning rate it gave last is (as torch's
                # state_dict keeps param_groups' lr), with the number of steps it has counted.
                value = self.__dict__.get("lr") if name == "lr" else getattr(self, name)
                hyper[name] = list(value) if isinstance(value, tuple) else value
        # The step count is a scalar of the manifest; the per-row state arrays are files.
        scalars = self._scalar_state()
        arrays = {f"state.{k}": v for k, v in self._row_state().items()}
        arrays["table"] = self.layer.weight if self.layer is not None else self.table
        config = {"hyper": hyper, "scalars": scalars, "lr_steps": self._lr_steps}
        if hasattr(self, "_dynamic_id"):  # which of the DynamicTable's state columns are this optimizer's
            config["dynamic_id"] = self._dynamic_id
        return config, arrays

    @classmethod
    def _from_checkpoint(cls, config: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> _SparseOptimizer:
        if (set(config) - {"dynamic_id"} != {"hyper", "scalars", "lr_steps"} or not isinstance(config["hyper"], dict)
                or not isinstance(config["scalars"], dict)):
            raise ValueError(f"expected hyper, scalars and lr_steps, got {sorted(config)}")
        dynamic_id = config.get("dynamic_id", 0)
        if isinstance(dynamic_id, bool) or not isinstance(dynamic_id, int) or not 0 <= dynamic_id < 2**31:
            raise ValueError(f"dynamic_id must be an integer in [0, 2**31), got {dynamic_id!r}")
        lr_steps = config["lr_steps"]
        if isinstance(lr_steps, bool) or not isinstance(lr_steps, int) or not 0 <= lr_steps < 2**63:
            raise ValueError(f"lr_steps must be an integer in [0, 2**63), got {lr_steps!r}")
        table = _check_table(arrays.get("table"))
        # The constructor validates the hyperparameters; on a 0-row view of the table its fresh
        # state costs nothing and says what the loaded state must hold.
        opt = cls(table[:0], **config["hyper"])
        opt.table, opt._lr_steps = table, lr_steps
        if "dynamic_id" in config:
            opt._dynamic_id = dynamic_id
        # A scalar (the step count) may have been saved as an int or as a 0-d array.
        saved = {k[len("state."):]: v for k, v in arrays.items() if k.startswith("state.")}
        if len(saved) + 1 != len(arrays) or set(saved) & set(config["scalars"]):
            raise ValueError(f"unexpected arrays {sorted(arrays)} beside the scalars {sorted(config['scalars'])}")
        saved.update(config["scalars"])
        if set(saved) != set(opt.state):
            raise ValueError(f"{cls.__name__} has the state {sorted(opt.state)}, the checkpoint {sorted(saved)}")
        for key, fresh in opt.state.items():
            opt.state[key] = _restored_state(key, fresh, saved[key], table.shape[0])
        return opt

    # The learning rate. The number lives in the instance's __dict__ under "lr" (the property below
    # takes precedence over it), so checkpoints save and restore it as the plain hyperparameter "lr"
    # (restoring goes through the setter, which checks it); a schedule is kept beside it, and "lr"
    # then holds the last value it gave. `_lr_steps` counts the steps taken, for the schedule.
    _lr_schedule: Optional[Callable[[int], float]] = None
    _lr_steps = 0

    @property
    def lr(self) -> Any:
        """The learning rate: a number >= 0, or a callable ``lr(step) -> float`` (a schedule) called
        before each step with the 1-based number of that step. Settable between steps."""
        if self._lr_schedule is not None:
            return self._lr_schedule
        return self.__dict__.get("lr")

    @lr.setter
    def lr(self, value: Union[float, Callable[[int], float]]) -> None:
        if callable(value):
            self._lr_schedule = value
        else:
            self.__dict__["lr"], self._lr_schedule = _hyper("lr", value), None

    def _step_lr(self) -> float:
        """The learning rate of the step about to be taken (a schedule's value is checked)."""
        if self._lr_schedule is not None:
            step = self._lr_steps + 1
            self.__dict__["lr"] = _hyper(f"lr({step}), the value of the learning-rate schedule,", self._lr_schedule(step))
        lr = self.__dict__.get("lr")
        if lr is None:
            raise RuntimeError("no learning rate: the optimizer was saved with a schedule before its first step; set opt.lr")
        return float(lr)

    def _row_state(self) -> Dict[str, np.ndarray]:
        """The per-row state arrays: every entry of ``state`` but the step count."""
        return {k: v for k, v in self.state.items() if isinstance(v, np.ndarray) and v.ndim > 0}

    def _scalar_state(self) -> Dict[str, Any]:
        """The other entries of ``state`` (the step count, a 0-d array the compiled step advances), as
        plain Python numbers."""
        rows = self._row_state()
        return {k: (v.item() if isinstance(v, np.ndarray) else v) for k, v in self.state.items() if k not in rows}

    def zero_grad(self) -> None:
        """Clears ``layer.grad`` of the layer given to the constructor (no-op for a table): call it
        each step, since a layer's backward() adds to its gradient and step() leaves it."""
        if self.layer is not None:
            self.layer.zero_grad()

    def _bind_owner(self, owner: Any) -> None:
        """After loading: the layer whose weight is this optimizer's table, if any."""
        if owner is not None and hasattr(owner, "backward"):
            self.layer = owner
        self._dynamic = getattr(owner, "_dynamic_table", None)

    # Subclasses: the two state arrays the kernel updates, and the hyperparameters of step number
    # `step` (1-based, the step about to be taken).
    def _state_arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        return None, None

    def _params(self, step: int) -> Dict[str, float]:
        return {"lr": self._step_lr()}

    def _new_state(self, name: str, fill: float, per_row: bool = False) -> np.ndarray:
        """State array `name`: one row (per_row: one value) per table row, starting at `fill`."""
        if self._dynamic is not None:
            state: np.ndarray = self._dynamic._new_state(self, name, fill, per_row)
            return state
        shape = self.table.shape[:1] if per_row else self.table.shape
        if fill == 0.0:
            return aligned_zeros(shape, self.table.dtype)  # untouched pages cost nothing
        state = aligned_empty(shape, self.table.dtype)
        state.fill(fill)
        return state

    @contextlib.contextmanager
    def _rows(self, ids: Any) -> Iterator[Any]:
        """The rows to update for `ids`: the ids themselves, or a DynamicTable's rows of these keys
        (the table held meanwhile; the step then counts as one of its steps)."""
        if self._dynamic is None:
            yield as_ids(ids)
        else:
            with self._dynamic._update(self) as rows_of:
                yield rows_of(ids)

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
        grads = as_values(grads, self.table, "grads")
        # One step at a time: each computes its hyperparameters for the count it will advance.
        with self._lock, self._rows(ids) as rows:
            count = self._step_count()
            s1, s2 = self._state_arrays()
            _core.optim_step(self._kind, self.table, s1, s2, rows, grads, step=count,
                             **self._params(self._next_step(count)))
            self._lr_steps += 1

    def step_bags(
        self,
        grad_out: NDArray[np.floating],
        ids: ArrayLike,
        offsets: Optional[ArrayLike] = None,
        *,
        mode: PoolMode = "sum",
        weights: Optional[ArrayLike] = None,
        argmax: Optional[NDArray[np.int64]] = None,
        padding_idx: Optional[int] = None,
        include_last_offset: bool = True,
    ) -> None:
        """One update from the gradient of ``gather_bags(self.table, ids, offsets, mode=mode, weights=weights)``.

        Equivalent to ``self.step(*embtab.gather_bags_grad(grad_out, ids, offsets, mode=mode,
        weights=weights, table=self.table))`` in one fused pass.

        Parameters
        ----------
        grad_out : ndarray, shape (num_bags, dim), the table's dtype
            Gradient of the loss with respect to the pooled output.
        ids, offsets, mode, weights, padding_idx, include_last_offset :
            The arguments of the forward :func:`embtab.gather_bags` call (padding entries get no
            update; ``include_last_offset=False`` takes torch-style offsets, one start per bag).
        argmax : ndarray of int64, optional
            ``mode="max"``: the winners from ``gather_bags(..., return_argmax=True)``. When
            omitted they are recomputed from the table (which must not have changed since the
            forward pass).
        """
        grad_out, weights, argmax = as_array(grad_out, "grad_out"), as_array(weights, "weights"), as_array(argmax, "argmax")
        with self._lock, self._rows(ids) as ids:
            ids, offsets, weights, _ = bag_arguments(ids, offsets, weights, num_rows=len(self.table), weights_like=grad_out,
                                                     include_last_offset=include_last_offset, padding_idx=padding_idx,
                                                     check_ids=True)
            self._step_bags_locked(self.table, self._state_arrays(), grad_out, ids, offsets, mode, weights, argmax)

    def _step_bags_into(self, table: Any, state: Tuple[Optional[np.ndarray], Optional[np.ndarray]],
                        grad_out: Any, ids: Any, offsets: Any, mode: PoolMode, weights: Any, argmax: Any) -> None:
        """:meth:`step_bags` on ``table`` and ``state`` (the arrays of :meth:`_state_arrays`) in place
        of this optimizer's own: embtab.torch's fused backward updates the tensors torch hands it."""
        ids = as_ids(ids)
        if offsets is not None:
            offsets = as_ids(offsets, "offsets")
        with self._lock:
            self._step_bags_locked(as_array(table, "table"), state, as_array(grad_out, "grad_out"), ids, offsets, mode,
                                   as_array(weights, "weights"), as_array(argmax, "argmax"))

    def _step_bags_locked(self, table: Any, state: Tuple[Optional[np.ndarray], Optional[np.ndarray]], grad_out: Any,
                          ids: Any, offsets: Any, mode: PoolMode, weights: Any, argmax: Any) -> None:
        """The compiled fused step, with this optimizer's lock held: its count advances with it."""
        if mode == "max" and argmax is None:
            _, argmax = gather_bags(table, ids, offsets, mode="max", return_argmax=True)
        count = self._step_count()
        s1, s2 = state
        _core.optim_step_bags(
            self._kind,
            table,
            s1,
            s2,
            grad_out,
            ids,
            offsets,
            mode,
            as_values(weights, grad_out, "weights"),
            argmax,
            step=count,
            **self._params(self._next_step(count)),
        )
        self._lr_steps += 1

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
    table : ndarray, shape (num_rows, dim), float32 or float64, or a layer
        Updated in place; must be C-contiguous and writeable. A layer (``embtab.Embedding`` ...)
        stands for its ``weight``, and ``step()`` then applies its ``grad`` (see the module docs).
    lr : float or callable
        Learning rate, >= 0, or a schedule ``lr(step)`` (see the module docs).
    """

    _kind = "sgd"


@register_checkpointable
class Adagrad(_SparseOptimizer):
    """Adagrad on sparse gradients, as ``torch.optim.Adagrad`` with a sparse gradient.

    For each row of the batch: ``sum += g * g``, ``row += (-clr) * (g / (sqrt(sum) + eps))`` with
    ``clr = lr / (1 + (step - 1) * lr_decay)``.

    Parameters
    ----------
    table : ndarray, shape (num_rows, dim), float32 or float64, or a layer
        Updated in place. A layer stands for its ``weight``; ``step()`` then applies its ``grad``.
    lr : float or callable
        Learning rate, or a schedule ``lr(step)`` (see the module docs).
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
        self.state = {"sum": self._new_state("sum", init), "step": np.zeros((), np.int64)}

    def _state_arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        return self.state["sum"], None

    def _params(self, step: int) -> Dict[str, float]:
        lr = self._step_lr()
        return {"lr": lr / (1 + (step - 1) * _hyper("lr_decay", self.lr_decay)), "eps": _hyper("eps", self.eps)}


@register_checkpointable
class RowWiseAdagrad(_SparseOptimizer):
    """Row-wise Adagrad (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``): one accumulator per row.

    For each row of the batch, with its summed gradient ``g``: ``g += weight_decay * row`` (if
    nonzero), ``sum[r] += mean(g * g)``, ``row -= (lr / (sqrt(sum[r]) + eps)) * g``. The state is
    ``num_rows`` numbers instead of a second table.

    Parameters
    ----------
    table : ndarray, shape (num_rows, dim), float32 or float64, or a layer
        Updated in place. A layer stands for its ``weight``; ``step()`` then applies its ``grad``.
    lr : float or callable
        Learning rate, or a schedule ``lr(step)`` (see the module docs).
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
        self.state = {"sum": self._new_state("sum", init, per_row=True)}

    def _state_arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        return self.state["sum"], None

    def _params(self, step: int) -> Dict[str, float]:
        return {
            "lr": self._step_lr(),
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
    table : ndarray, shape (num_rows, dim), float32 or float64, or a layer
        Updated in place. A layer stands for its ``weight``; ``step()`` then applies its ``grad``.
    lr : float or callable
        Learning rate, or a schedule ``lr(step)`` (see the module docs).
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
        self.state = {"exp_avg": self._new_state("exp_avg", 0.0), "exp_avg_sq": self._new_state("exp_avg_sq", 0.0),
                      "step": np.zeros((), np.int64)}

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
        lr = self._step_lr()
        step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        return {"lr": step_size, "eps": _hyper("eps", self.eps, positive=True), "beta1": beta1, "beta2": beta2}


@register_checkpointable
class AdamW(Adam):
    """Lazy AdamW: ``torch.optim.AdamW`` restricted to the rows of the batch.

    For each row of the batch, with its summed gradient ``g`` (``t`` is ``step``, counted for the
    whole table as in :class:`Adam`)::

        row *= 1 - lr * weight_decay                      # decoupled weight decay
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        row -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    in torch's order of operations. Rows outside the batch keep their values and moments: they are
    neither decayed nor moved (dense AdamW would decay every row and keep moving rows whose moments
    are nonzero), which is what makes the step cost proportional to the batch.

    Takes the arguments of :class:`Adam` (its ``state`` too) and ``weight_decay`` (default 0.01,
    torch.optim.AdamW's): the decoupled decay coefficient.
    """

    _kind = "adamw"

    def __init__(self, table: NDArray[np.floating], lr: float, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(table, lr, betas, eps)
        self.weight_decay = _hyper("weight_decay", weight_decay)

    def _params(self, step: int) -> Dict[str, float]:
        beta1, beta2 = self._check_betas(self.betas)
        lr = self._step_lr()
        return {
            "lr": lr / (1 - beta1**step),
            "eps": _hyper("eps", self.eps, positive=True),
            "beta1": beta1,
            "beta2": beta2,
            "weight_decay": lr * _hyper("weight_decay", self.weight_decay),
            "bias_correction2": (1 - beta2**step) ** 0.5,  # as torch computes it
        }


def step_bags_multi(
    optimizers: Sequence[_SparseOptimizer],
    grad_out: NDArray[np.floating],
    ids: ArrayLike,
    offsets: ArrayLike,
    *,
    feature_tables: Optional[Sequence[int]] = None,
    mode: Union[PoolMode, Sequence[PoolMode]] = "sum",
    weights: Optional[ArrayLike] = None,
) -> None:
    """One fused step of many tables: the backward pass of :func:`embtab.gather_bags_multi` and
    the update of every table, in one call (as FBGEMM's table-batched embeddings fuse them).

    ``optimizers[t]`` holds table ``t`` (they must all be of one class; each keeps its own state,
    hyperparameters and step count, and each takes exactly one step). A row used by several bags or
    by several features of its table is updated once, with its summed gradient, as
    ``optimizers[t].step_bags`` would do with all of its table's bags. Every id is checked against
    its table before anything is written.

    Parameters
    ----------
    optimizers : sequence of embtab.optim optimizers, one per table, all of one class
    grad_out : ndarray, shape (B, sum of the features' dims), the tables' dtype
        The gradient of the loss with respect to the output of ``gather_bags_multi``.
    ids, offsets, feature_tables, mode, weights :
        The arguments of the forward :func:`embtab.gather_bags_multi` call (mode "sum" or "mean").

    Raises
    ------
    IndexError
        An id out of range for its table (nothing is updated).
    TypeError
        Optimizers of different classes; dtypes as :func:`embtab.gather_bags_multi`.
    ValueError
        Shapes as :func:`embtab.gather_bags_multi`; ``grad_out`` not of the output's shape; two
        optimizers over the same table.
    """
    tables = [opt.table for opt in optimizers]
    _step_bags_multi_into(optimizers, tables, [opt._state_arrays() for opt in optimizers], grad_out, ids, offsets,
                          feature_tables, mode, weights)


def _step_bags_multi_into(optimizers: Sequence[_SparseOptimizer], tables: List[Any], states: List[Any],
                          grad_out: Any, ids: Any, offsets: Any, feature_tables: Any, mode: Any, weights: Any) -> None:
    """:func:`step_bags_multi` on the given tables and state arrays (embtab.torch passes the tensors
    torch hands its fused backward). Every optimizer's lock is held (taken in one global order) while
    its count and table advance together."""
    kinds = {type(opt) for opt in optimizers}
    if len(kinds) > 1:
        raise TypeError(f"optimizers must all be of one class, got {sorted(k.__name__ for k in kinds)}")
    if not optimizers:
        raise ValueError("optimizers must not be empty")
    if any(opt._dynamic is not None for opt in optimizers):
        raise TypeError("step_bags_multi takes optimizers of arrays, not of DynamicTables")
    grad_out, weights = as_array(grad_out, "grad_out"), as_values(weights, grad_out, "weights")
    ids, offsets = as_ids(ids), as_ids(offsets, "offsets")
    with contextlib.ExitStack() as held:
        for opt in sorted({id(o): o for o in optimizers}.values(), key=id):
            held.enter_context(opt._lock)
        counts = [opt._step_count() for opt in optimizers]
        params = [opt._params(opt._next_step(count)) for opt, count in zip(optimizers, counts)]
        _core.optim_step_bags_multi(optimizers[0]._kind, tables, [s[0] for s in states], [s[1] for s in states], counts,
                                    grad_out, ids, offsets, feature_tables, mode, weights, params)
        for opt in optimizers:
            opt._lr_steps += 1
