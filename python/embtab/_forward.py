"""What every differentiable layer shares (embtab.layers and embtab.DynamicEmbeddingBag): the
train/eval switch, the sparse gradient that ``backward`` adds to (as torch accumulates ``.grad``),
and the forward contexts that pair each ``backward`` with its ``forward``: the calling thread's most
recent one, or an explicit :class:`ForwardContext`."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, Optional, Tuple, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._sparse import coalesce

Grad = Tuple[NDArray[np.int64], NDArray[np.floating]]


class ForwardContext:
    """What ``backward`` needs from one ``forward`` call, returned by
    ``layer.forward(..., return_context=True)``.

    ``layer.backward(grad_out, ctx)`` or ``ctx.backward(grad_out)`` differentiates exactly that
    call, once; ``used`` says whether it has been.
    """

    __slots__ = ("layer", "_saved", "_used")

    def __init__(self, layer: Differentiable, saved: Dict[str, Any]) -> None:
        self.layer = layer
        self._saved = saved
        self._used = False

    @property
    def used(self) -> bool:
        return self._used

    def backward(self, grad_out: ArrayLike, **kwargs: Any) -> Any:
        """``self.layer.backward(grad_out, self, **kwargs)``."""
        return self.layer.backward(grad_out, self, **kwargs)

    def __repr__(self) -> str:
        return f"<ForwardContext of {type(self.layer).__name__}, {'used' if self._used else 'not yet differentiated'}>"


class Differentiable:
    """Train/eval mode, ``grad`` (what backward() adds to) and the forward contexts. Subclasses
    call ``_init_differentiable()`` in their constructor and have a ``weight``."""

    weight: NDArray[np.floating]
    grad: Optional[Grad]
    training: bool

    def _init_differentiable(self) -> None:
        self.training = True
        self.grad = None
        self._init_threading()

    def _init_threading(self) -> None:
        self._lock = threading.Lock()  # guards grad, counters and the use of contexts
        self._local = threading.local()  # .last: this thread's most recent forward context

    # Locks and per-thread contexts are not copied (copy.deepcopy, pickle): a copy starts afresh.
    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"], state["_local"]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_threading()

    def train(self, mode: bool = True) -> Any:
        self.training = bool(mode)
        return self

    def eval(self) -> Any:
        return self.train(False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def backward(self, grad_out: ArrayLike, ctx: Optional[ForwardContext] = None) -> Any:
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Clears ``grad`` (backward() adds to it)."""
        with self._lock:
            self.grad = None

    def _remember(self, saved: Dict[str, Any], out: Any, return_context: bool) -> Any:
        ctx = ForwardContext(self, saved)
        self._local.last = ctx
        return (out, ctx) if return_context else out

    def _context(self, ctx: Optional[ForwardContext]) -> ForwardContext:
        name = type(self).__name__
        if ctx is None:
            ctx = cast(Optional[ForwardContext], getattr(self._local, "last", None))
            if ctx is None:
                raise RuntimeError(f"{name}.backward() called before forward() on this thread: nothing to differentiate")
            if ctx.used:
                raise RuntimeError(
                    f"{name}.backward(): the most recent forward() of this thread was already differentiated "
                    "(each forward is differentiated once; for several forwards per step use "
                    "forward(..., return_context=True) and backward(grad_out, ctx))")
            return ctx
        if not isinstance(ctx, ForwardContext):
            raise TypeError(f"ctx must be a ForwardContext from forward(..., return_context=True), got {type(ctx).__name__}")
        if ctx.layer is not self:
            raise ValueError(f"ctx comes from the forward() of another layer ({type(ctx.layer).__name__})")
        if ctx.used:
            raise RuntimeError(f"{name}.backward(): this forward's context was already differentiated (each context once)")
        return ctx

    @contextlib.contextmanager
    def _using(self, ctx: ForwardContext) -> Iterator[Dict[str, Any]]:
        """Marks ``ctx`` used for the body (the arguments were checked); an error inside undoes it."""
        with self._lock:
            if ctx._used:
                raise RuntimeError(f"{type(self).__name__}.backward(): this forward's context was already differentiated")
            ctx._used = True
        try:
            yield ctx._saved
        except BaseException:
            ctx._used = False
            raise

    def _check_grad_out(self, grad_out: ArrayLike, shape: Tuple[int, ...]) -> NDArray[np.floating]:
        grad_out = np.asarray(grad_out)
        if grad_out.shape != shape:
            raise ValueError(f"grad_out must have shape {shape}, got {grad_out.shape}")
        if grad_out.dtype != self.weight.dtype:
            raise TypeError(f"grad_out must have dtype {self.weight.dtype}, got {grad_out.dtype}")
        return grad_out

    def _accumulate(self, rows: NDArray[np.int64], grads: NDArray[np.floating]) -> Grad:
        """Adds one backward's gradient to ``grad`` and returns it: rows stay sorted and distinct,
        and each row's sum is the old one plus the new one (the same order whatever the thread
        count)."""
        with self._lock:
            if self.grad is None:
                self.grad = (rows, grads)
            else:
                self.grad = self._merge_grads(self.grad, (rows, grads))
        return rows, grads

    def _merge_grads(self, old: Grad, new: Grad) -> Grad:
        return coalesce(np.concatenate([old[0], new[0]]), np.concatenate([old[1], new[1]]))
