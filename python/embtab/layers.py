"""Embedding layers with a forward pass, a sparse backward pass, and checkpoints.

A layer owns its table (``layer.weight``). ``forward`` returns the looked-up rows; ``backward``
differentiates a forward call and *adds* its coalesced sparse gradient to ``layer.grad``, as torch
accumulates ``.grad``: ``layer.grad`` is ``(rows, row_grads)`` with sorted distinct rows and the
sums of every backward since the last ``zero_grad()``. Any optimizer of :mod:`embtab.optim` takes
a layer: its ``step()`` applies ``layer.grad`` and leaves it as it is (as torch's ``step()``), so a
training loop calls ``opt.zero_grad()`` (or ``layer.zero_grad()``) once per step.

Which forward a backward differentiates: ``backward(grad_out)`` pairs with the most recent
``forward`` of the calling thread (each thread has its own, so threads that share a layer each
differentiate their own batch). For several forwards before their backwards (tied tables,
skip-gram's context and negative words), ask each forward for its context,
``out, ctx = layer.forward(ids, return_context=True)``, and differentiate exactly that call with
``layer.backward(grad_out, ctx)`` (or ``ctx.backward(grad_out)``); the gradients add up in
``layer.grad``. A context is differentiated once (RuntimeError after that); a backward that fails
on bad input (a ``grad_out`` of the wrong shape or dtype) leaves it usable.

Row dropout (``dropout=p``): in training mode each id of a batch is dropped with probability
``p`` (it reads as a zero row and gets no gradient) and the survivors are scaled by
``1 / (1 - p)``; ``layer.eval()`` turns it off. Every id is checked, dropped or not.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core
from ._arrays import aligned_empty, as_ids, as_values
from ._checkpoint import bit_generator_state, register_checkpointable, restore_bit_generator
from ._dynamic import DynamicEmbeddingBag
from ._forward import Differentiable, ForwardContext, Grad
from ._hashing import hash_buckets, subword_ngrams
from ._lookup import BoundsMode, PoolMode, gather, gather_bags
from ._sparse import coalesce, gather_bags_grad

__all__ = ["DynamicEmbeddingBag", "Embedding", "EmbeddingBag", "ForwardContext", "HashEmbedding", "SubwordEmbedding"]

_INITS = ("normal", "uniform", "xavier_uniform", "zeros")

def _init_table(rng: np.random.Generator, num_rows: int, dim: int, init: str, std: Optional[float],
                bound: Optional[float], dtype: Any) -> NDArray[np.floating]:
    if bound is not None and init != "uniform":
        raise ValueError(f"bound is the half-width of init='uniform', got init={init!r}")
    if init == "normal":
        table = rng.standard_normal((num_rows, dim)) * (1.0 if std is None else std)
    elif init == "uniform":
        if bound is not None and std is not None:
            raise ValueError("init='uniform' takes bound or std, not both")
        if bound is None:
            bound = np.sqrt(3.0) * std if std is not None else 1.0 / max(dim, 1)  # fastText's default
        table = rng.uniform(-bound, bound, (num_rows, dim))
    elif init == "xavier_uniform":
        limit = np.sqrt(6.0 / (num_rows + dim)) if num_rows + dim > 0 else 0.0
        table = rng.uniform(-limit, limit, (num_rows, dim))
    elif init == "zeros":
        table = np.zeros((num_rows, dim))
    else:
        raise ValueError(f"init must be one of {', '.join(map(repr, _INITS))}, got {init!r}")
    # 128-byte aligned, so that each row of the table touches as few cache lines as possible.
    aligned: NDArray[np.floating] = aligned_empty((num_rows, dim), dtype)
    aligned[...] = table
    return aligned


def _check_size(value: Any, name: str, minimum: int = 0) -> int:
    try:
        size: int = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if size < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {size}")
    return size


def _check_positive(value: Any, name: str, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not v > 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be > 0{'' if allow_inf else ' and finite'}, got {value!r}")
    return v


def _csr_filter(ids: NDArray[np.integer], offsets: NDArray[np.int64], keep: NDArray[np.bool_]) -> Tuple[NDArray[np.integer], NDArray[np.int64]]:
    """The CSR bags with the positions where ``keep`` is False removed."""
    kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    return ids[keep], kept_before[offsets]


def _per_bag(mask: NDArray[np.bool_], offsets: NDArray[np.int64]) -> NDArray[np.int64]:
    """How many positions of each CSR bag are set in ``mask`` (empty bags, last one too, give 0)."""
    before: NDArray[np.int64] = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return before[offsets[1:]] - before[offsets[:-1]]


class _TableLayer(Differentiable):
    """Shared state: the table, dropout, bounds mode, max_norm (the gradient, train/eval mode and
    the forward contexts are Differentiable's)."""

    weight: NDArray[np.floating]
    _checkpoint_order = 0  # saved before the optimizers that refer to the weight

    def __init__(self, num_embeddings: int, dim: int, *, init: str, std: Optional[float], seed: int, dtype: Any,
                 padding_idx: Optional[int], dropout: float, bounds: BoundsMode, bound: Optional[float] = None,
                 max_norm: Optional[float] = None, norm_type: float = 2.0) -> None:
        num_embeddings = _check_size(num_embeddings, "num_embeddings")
        dim = _check_size(dim, "dim")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        if std is not None and not std >= 0:
            raise ValueError(f"std must be >= 0, got {std}")
        if bound is not None and not (bound >= 0 and math.isfinite(bound)):
            raise ValueError(f"bound must be >= 0 and finite, got {bound}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if bounds not in ("raise", "zero"):
            raise ValueError(f"bounds must be 'raise' or 'zero', got {bounds!r}")
        if padding_idx is not None:
            padding_idx = operator.index(padding_idx)
            if padding_idx < 0:
                padding_idx += num_embeddings
            if not 0 <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be within num_embeddings={num_embeddings}, got {padding_idx}")
        self.max_norm = None if max_norm is None else _check_positive(max_norm, "max_norm")
        self.norm_type = _check_positive(norm_type, "norm_type", allow_inf=True)
        self.init, self.std, self.bound, self.seed = init, std, bound, int(seed)
        self.padding_idx = padding_idx
        self.dropout = float(dropout)
        self.bounds: BoundsMode = bounds
        self.num_invalid_ids = 0  # running count of ids read as zero rows (bounds="zero")
        self._rng = np.random.default_rng(self.seed)
        self.weight = _init_table(self._rng, num_embeddings, dim, init, std, bound, dtype)
        if padding_idx is not None:
            self.weight[padding_idx] = 0
        self._init_differentiable()

    @property
    def num_embeddings(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def _dropout_keep(self, shape: Tuple[int, ...]) -> Optional[NDArray[np.bool_]]:
        if self.training and self.dropout > 0:
            return self._rng.random(shape) >= self.dropout
        return None

    def _valid(self, ids: NDArray[np.integer]) -> NDArray[np.bool_]:
        return (ids >= 0) & (ids < self.num_embeddings)

    def _count_invalid(self, count: int) -> None:
        if count:
            with self._lock:
                self.num_invalid_ids += int(count)

    def _renorm(self, ids: NDArray[np.integer]) -> bool:
        """torch's embedding_renorm_: each distinct (valid) row of ``ids`` whose ``norm_type``-norm
        exceeds ``max_norm`` is scaled in place by ``max_norm / (norm + 1e-7)``. True if any was."""
        rows = np.unique(ids)
        if self.bounds == "zero":
            rows = rows[self._valid(rows)]
        if rows.size == 0 or self.dim == 0:
            return False
        current = self.weight[rows]
        norms = np.linalg.norm(current.astype(np.float64), ord=self.norm_type, axis=1)
        over = norms > self.max_norm
        if not over.any():
            return False
        scale = (self.max_norm / (norms[over] + 1e-7)).astype(self.weight.dtype)
        self.weight[rows[over]] = current[over] * scale[:, None]
        return True

    def _accumulate(self, rows: NDArray[np.int64], grads: NDArray[np.floating]) -> Grad:
        if self.padding_idx is not None:  # the padding row never gets a gradient
            keep = rows != self.padding_idx
            rows, grads = rows[keep], grads[keep]
        return super()._accumulate(rows, grads)

    # Checkpoints: the constructor's arguments (other than the table's size), the dropout stream's
    # position, and the weight (shared, not copied).
    def _config(self) -> Dict[str, Any]:
        return {"init": self.init, "std": self.std, "bound": self.bound, "seed": self.seed,
                "dtype": self.weight.dtype.str, "padding_idx": self.padding_idx, "dropout": self.dropout,
                "bounds": self.bounds, "max_norm": self.max_norm, "norm_type": self.norm_type}

    def _checkpoint_state(self) -> Tuple[Dict[str, Any], Dict[str, NDArray[Any]]]:
        return {"settings": self._config(), "rng": bit_generator_state(self._rng.bit_generator)}, {"weight": self.weight}

    @classmethod
    def _from_checkpoint(cls, config: Dict[str, Any], arrays: Dict[str, NDArray[Any]]) -> Any:
        if set(config) != {"settings", "rng"} or set(arrays) != {"weight"}:
            raise ValueError(f"expected settings, rng and a weight, got {sorted(config)} and {sorted(arrays)}")
        settings, weight = config["settings"], arrays["weight"]
        if not isinstance(settings, dict) or weight.ndim != 2:
            raise ValueError(f"expected a dict of settings and a 2-D weight, got shape {weight.shape}")
        # The constructor validates every setting; a table of width 0 costs nothing (the weight
        # replaces it), and what the built layer reports must be exactly what was saved.
        layer = cls._build_empty(settings, weight)
        if layer._config() != settings or layer.weight.shape[0] != weight.shape[0] or layer.weight.dtype != weight.dtype:
            raise ValueError(f"the settings {settings} do not describe a {cls.__name__} with a weight of shape "
                             f"{weight.shape} and dtype {weight.dtype}")
        layer.weight = weight
        restore_bit_generator(layer._rng.bit_generator, config["rng"], "the dropout stream")
        return layer

    @classmethod
    def _build_empty(cls, config: Dict[str, Any], weight: NDArray[Any]) -> Any:
        return cls(weight.shape[0], 0, **config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_embeddings}, {self.dim}, dtype={self.weight.dtype})"


_LAYER_PARAMETERS = """
    Parameters
    ----------
    num_embeddings, dim : int
        Table size (either may be 0).
    init : {"normal", "uniform", "xavier_uniform", "zeros"}
        "normal": N(0, std) with std 1 by default (as torch.nn.Embedding); "uniform":
        U(-bound, bound) (Keras' ``RandomUniform(-0.05, 0.05)`` is ``bound=0.05``), or
        U(-sqrt(3) std, sqrt(3) std), or U(-1/dim, 1/dim) without either (as fastText);
        "xavier_uniform": U(-a, a) with a = sqrt(6 / (num_embeddings + dim)).
    std : float, optional
    bound : float, optional
        The half-width of ``init="uniform"``.
    seed : int
        Seeds the initialisation and the dropout stream: the same seed gives the same layer.
    dtype : float32 or float64
    padding_idx : int, optional
        This row starts at zero and never receives a gradient.
    dropout : float
        Row dropout probability during training (see the module docs).
    bounds : {"raise", "zero"}
        Out-of-range ids raise IndexError, or read as zero rows, get no gradient and are counted in
        ``num_invalid_ids``.
    max_norm : float, optional
        As torch's ``max_norm``: before each lookup, every distinct looked-up row whose
        ``norm_type``-norm exceeds ``max_norm`` is scaled in place (in ``weight``) by
        ``max_norm / (norm + 1e-7)``.
    norm_type : float
        The p of the p-norm for ``max_norm`` (default 2; ``inf`` for the largest magnitude).
"""


@register_checkpointable
class Embedding(_TableLayer):
    __doc__ = """A lookup table: ``forward(ids)`` returns ``weight[ids]`` (shape ``ids.shape + (dim,)``),
    as ``torch.nn.Embedding``.
    """ + _LAYER_PARAMETERS

    def __init__(self, num_embeddings: int, dim: int, *, init: str = "normal", std: Optional[float] = None,
                 bound: Optional[float] = None, seed: int = 0, dtype: Any = np.float32,
                 padding_idx: Optional[int] = None, dropout: float = 0.0, bounds: BoundsMode = "raise",
                 max_norm: Optional[float] = None, norm_type: float = 2.0) -> None:
        super().__init__(num_embeddings, dim, init=init, std=std, seed=seed, dtype=dtype, padding_idx=padding_idx,
                         dropout=dropout, bounds=bounds, bound=bound, max_norm=max_norm, norm_type=norm_type)

    def _lookup(self, ids: Any, count: bool) -> NDArray[np.floating]:
        if self.bounds == "raise":
            return gather(self.weight, ids)  # type: ignore[no-any-return]
        out, invalid = gather(self.weight, ids, bounds="zero")
        if count:
            self._count_invalid(invalid)
        return out  # type: ignore[no-any-return]

    def forward(self, ids: ArrayLike, *, return_context: bool = False) -> Any:
        """The rows of ``ids`` (every id checked first): an array of shape ``ids.shape + (dim,)``,
        or ``(out, ctx)`` with ``return_context=True`` (see the module docs)."""
        ids = as_ids(ids)
        out = self._lookup(ids, count=True)
        ids = np.asarray(ids)
        if self.max_norm is not None and self._renorm(ids.reshape(-1)):
            out = self._lookup(ids, count=False)
        keep = self._dropout_keep(ids.shape)
        if keep is not None:
            out *= (keep / (1.0 - self.dropout)).astype(out.dtype)[..., None]
        return self._remember({"ids": ids, "keep": keep}, out, return_context)

    def backward(self, grad_out: ArrayLike, ctx: Optional[ForwardContext] = None) -> Grad:
        """Differentiates a forward call and adds its gradient to ``grad``.

        Parameters
        ----------
        grad_out : ndarray, shape ``ids.shape + (dim,)``, the table's dtype
            The gradient of the loss with respect to that forward's output.
        ctx : ForwardContext, optional
            The forward call to differentiate (from ``forward(..., return_context=True)``); by
            default the most recent forward of the calling thread.

        Returns
        -------
        (rows, row_grads) : this call's own coalesced gradient (sorted distinct rows without
            ``padding_idx``, their summed gradients); ``grad`` holds the sum over backward calls.

        Raises
        ------
        RuntimeError
            No forward to differentiate on this thread, or the context was already differentiated.
        ValueError, TypeError
            ``grad_out`` of another shape or dtype (the context stays usable).
        """
        ctx = self._context(ctx)
        ids = ctx._saved["ids"]
        grad_out = self._check_grad_out(grad_out, ids.shape + (self.dim,))
        with self._using(ctx) as saved:
            keep = saved["keep"]
            flat_ids = ids.reshape(-1)
            flat_grads = grad_out.reshape(flat_ids.size, self.dim)
            mask = self._valid(flat_ids) if self.bounds == "zero" else None
            if keep is not None:
                flat_grads = flat_grads * flat_grads.dtype.type(1.0 / (1.0 - self.dropout))
                k = keep.reshape(-1)
                mask = k if mask is None else (mask & k)
            if mask is not None:
                flat_ids, flat_grads = flat_ids[mask], flat_grads[mask]
            rows, grads = coalesce(flat_ids, np.ascontiguousarray(flat_grads, dtype=self.weight.dtype))
            return self._accumulate(rows, grads)


@register_checkpointable
class EmbeddingBag(_TableLayer):
    __doc__ = """Pooled lookups: ``forward(ids, offsets=None, per_sample_weights=None)`` returns one row per
    bag (sum, mean or max of its rows), as ``torch.nn.EmbeddingBag``.

    Takes the arguments of :class:`Embedding` plus ``mode``. With ``padding_idx`` the padding
    entries are left out of each bag (also from a mean's count), as torch does. An empty bag gives
    a zero row. ``per_sample_weights`` multiply the rows before pooling, with ``mode="sum"`` (as
    torch) and also with ``"mean"``, where embtab divides the weighted sum by the number of ids in
    the bag (torch refuses per_sample_weights with "mean").
    """ + _LAYER_PARAMETERS + """    mode : {"sum", "mean", "max"}
"""

    def __init__(self, num_embeddings: int, dim: int, *, mode: PoolMode = "sum", init: str = "normal",
                 std: Optional[float] = None, bound: Optional[float] = None, seed: int = 0, dtype: Any = np.float32,
                 padding_idx: Optional[int] = None, dropout: float = 0.0, bounds: BoundsMode = "raise",
                 max_norm: Optional[float] = None, norm_type: float = 2.0) -> None:
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        self.mode: PoolMode = mode
        super().__init__(num_embeddings, dim, init=init, std=std, seed=seed, dtype=dtype, padding_idx=padding_idx,
                         dropout=dropout, bounds=bounds, bound=bound, max_norm=max_norm, norm_type=norm_type)

    def forward(self, ids: ArrayLike, offsets: Optional[ArrayLike] = None, per_sample_weights: Optional[ArrayLike] = None,
                *, include_last_offset: bool = True, return_context: bool = False) -> Any:
        """One pooled row per bag: an array of shape ``(num_bags, dim)``, or ``(out, ctx)`` with
        ``return_context=True`` (see the module docs).

        Parameters
        ----------
        ids, offsets :
            2-D ids ``(num_bags, bag_len)`` without offsets, or 1-D ids with CSR offsets
            (``num_bags + 1`` entries ending at ``len(ids)``), or with
            ``include_last_offset=False`` torch's default offsets (the start of each bag).
        per_sample_weights : ndarray with the shape of ids and the table's dtype, optional
            "sum" and "mean" only.
        include_last_offset : bool
            As torch's argument of that name (default True here: embtab's CSR offsets).
        return_context : bool
            Also return the :class:`ForwardContext` of this call.
        """
        if per_sample_weights is not None:
            per_sample_weights = as_values(per_sample_weights, self.weight)
            if np.shape(per_sample_weights) != np.shape(ids):
                raise ValueError(f"per_sample_weights must have the shape of ids {np.shape(ids)}, got {np.shape(per_sample_weights)}")
            if np.asarray(per_sample_weights).dtype != self.weight.dtype:
                raise TypeError(f"per_sample_weights must have dtype {self.weight.dtype}, got {np.asarray(per_sample_weights).dtype}")
            if self.mode == "max":
                raise ValueError("per_sample_weights are only supported with mode 'sum' or 'mean'")
        return self._forward_bags(ids, offsets, per_sample_weights, include_last_offset, return_context)

    def _forward_bags(self, ids: Any, offsets: Any, weights: Any, include_last_offset: bool, return_context: bool) -> Any:
        ids = as_ids(ids)
        if offsets is not None:
            offsets = as_ids(offsets)
        dropout = self.training and self.dropout > 0
        if not dropout and self.padding_idx is None and self.bounds == "raise" and include_last_offset:
            out, saved = self._plain_bags(ids, offsets, weights)
        else:
            out, saved = self._rewritten_bags(ids, offsets, weights, include_last_offset)
        return self._remember(saved, out, return_context)

    def _plain_bags(self, ids: Any, offsets: Any, weights: Any) -> Tuple[NDArray[np.floating], Dict[str, Any]]:
        """The bags as given: the compiled layer checks them (positions as given, e.g. ids[1, 1])."""
        argmax = None
        for attempt in range(2):
            if self.mode == "max":
                out, argmax = gather_bags(self.weight, ids, offsets, mode="max", return_argmax=True)
            else:
                out = gather_bags(self.weight, ids, offsets, mode=self.mode, weights=weights)
            if attempt or self.max_norm is None or not self._renorm(np.asarray(ids).reshape(-1)):
                break
        num_bags = out.shape[0]
        return out, {"ids": ids, "offsets": offsets, "mode": self.mode, "weights": weights, "argmax": argmax,
                     "scale": 1.0, "num_bags": num_bags, "kept": None, "mult": None, "shape": np.shape(ids)}

    def _rewritten_bags(self, ids: Any, offsets: Any, weights: Any, include_last_offset: bool) -> Tuple[NDArray[np.floating], Dict[str, Any]]:
        """Padding, dropped and (bounds="zero") invalid ids are left out of the bags, and the mean's
        1/count and the dropout scale folded into per-id weights; every id is checked first."""
        check_rows = -1 if self.bounds == "zero" else self.num_embeddings
        offs = _core.bag_offsets(ids, offsets, bool(include_last_offset), check_rows)
        shape = np.shape(ids)
        flat = np.asarray(ids).reshape(-1)
        valid = self._valid(flat) if self.bounds == "zero" else None
        if valid is not None:
            self._count_invalid(int(flat.size - np.count_nonzero(valid)))
        if self.max_norm is not None:
            self._renorm(flat if valid is None else flat[valid])
        keep = self._dropout_keep(flat.shape)
        present = np.ones(flat.shape, bool) if self.padding_idx is None else flat != self.padding_idx
        drop_keep = present if keep is None else (present & keep)
        scale = 1.0 / (1.0 - self.dropout) if keep is not None else 1.0
        base = {"num_bags": len(offs) - 1, "shape": shape}
        if self.mode == "max":
            kept_ids, kept_offs = _csr_filter(flat, offs, drop_keep)
            result = gather_bags(self.weight, kept_ids, kept_offs, mode="max", return_argmax=True, bounds=self.bounds)
            out, argmax = result[0], result[1]
            if scale != 1.0:
                out *= out.dtype.type(scale)
            return out, dict(base, ids=kept_ids, offsets=kept_offs, mode="max", weights=None, argmax=argmax,
                             scale=scale, kept=None, mult=None)
        mult = np.full(flat.shape, scale)
        if self.mode == "mean":
            counts = _per_bag(present, offs)
            per_bag = np.divide(1.0, counts, out=np.zeros(counts.shape), where=counts > 0)
            mult *= np.repeat(per_bag, np.diff(offs))
        mult = mult.astype(self.weight.dtype)
        w = mult if weights is None else np.asarray(weights).reshape(-1) * mult
        use = drop_keep if valid is None else (drop_keep & valid)
        kept_ids, kept_offs = _csr_filter(flat, offs, use)
        kept_w = np.ascontiguousarray(w[use], dtype=self.weight.dtype)
        out = gather_bags(self.weight, kept_ids, kept_offs, mode="sum", weights=kept_w)
        return out, dict(base, ids=kept_ids, offsets=kept_offs, mode="sum", weights=kept_w, argmax=None, scale=1.0,
                         kept=use, mult=mult[use] if weights is not None else None)

    def backward(self, grad_out: ArrayLike, ctx: Optional[ForwardContext] = None, *,
                 return_weights_grad: bool = False) -> Any:
        """Differentiates a forward call and adds its gradient to ``grad``.

        Parameters
        ----------
        grad_out : ndarray, shape (num_bags, dim), the table's dtype
            The gradient of the loss with respect to that forward's output.
        ctx : ForwardContext, optional
            The forward call to differentiate (from ``forward(..., return_context=True)``); by
            default the most recent forward of the calling thread.
        return_weights_grad : bool
            Also return the gradient with respect to that forward's ``per_sample_weights`` (as
            torch's ``per_sample_weights.grad``); 0 for padding, dropped and invalid entries.

        Returns
        -------
        (rows, row_grads) : this call's own coalesced gradient (sorted distinct rows without
            ``padding_idx``, their summed gradients); ``grad`` holds the sum over backward calls.
            With ``return_weights_grad=True``, ``(rows, row_grads, weights_grad)``, the last with
            the shape of ``per_sample_weights``.

        Raises
        ------
        RuntimeError
            No forward to differentiate on this thread, or the context was already differentiated.
        ValueError, TypeError
            ``grad_out`` of another shape or dtype (the context stays usable);
            ``return_weights_grad`` for a forward without ``per_sample_weights``.
        """
        ctx = self._context(ctx)
        grad_out = self._check_grad_out(grad_out, (ctx._saved["num_bags"], self.dim))
        per_sample = ctx._saved["mult"] is not None or (ctx._saved["kept"] is None and ctx._saved["weights"] is not None)
        if return_weights_grad and not per_sample:
            raise ValueError("return_weights_grad=True needs a forward() with per_sample_weights")
        with self._using(ctx) as saved:
            if saved["scale"] != 1.0:
                grad_out = grad_out * grad_out.dtype.type(saved["scale"])
            ids, offsets, argmax = saved["ids"], saved["offsets"], saved["argmax"]
            if argmax is not None and self.bounds == "zero" and np.size(ids):
                # Invalid ids read as zero rows: they win nothing (argmax -1) and take no gradient.
                keep = self._valid(ids)
                if not keep.all():
                    ids, offsets = _csr_filter(ids, offsets, keep)
            result = gather_bags_grad(np.ascontiguousarray(grad_out), ids, offsets, mode=saved["mode"],
                                      weights=saved["weights"], argmax=argmax,
                                      table=self.weight if return_weights_grad else None,
                                      return_weights_grad=return_weights_grad)
            rows, grads = self._accumulate(result[0], result[1])
            if not return_weights_grad:
                return rows, grads
            return rows, grads, self._per_sample_grad(saved, result[2])

    @staticmethod
    def _per_sample_grad(saved: Dict[str, Any], weights_grad: NDArray[np.floating]) -> NDArray[np.floating]:
        """d out / d per_sample_weights from the gradient with respect to the weights the lookup used."""
        if saved["kept"] is None:
            return weights_grad
        full: NDArray[np.floating] = np.zeros(saved["kept"].shape, weights_grad.dtype)
        full[saved["kept"]] = weights_grad * saved["mult"]
        shaped: NDArray[np.floating] = full.reshape(saved["shape"])
        return shaped

    def _config(self) -> Dict[str, Any]:
        return dict(super()._config(), mode=self.mode)


def _is_documents(keys: Any) -> bool:
    return isinstance(keys, (list, tuple)) and len(keys) > 0 and all(isinstance(k, (list, tuple, np.ndarray)) for k in keys)


def _documents_csr(docs: Sequence[Sequence[Any]]) -> Tuple[List[Any], NDArray[np.int64]]:
    flat: List[Any] = []
    offsets = np.zeros(len(docs) + 1, np.int64)
    for i, doc in enumerate(docs):
        flat.extend(doc.tolist() if isinstance(doc, np.ndarray) else doc)
        offsets[i + 1] = len(flat)
    return flat, offsets


@register_checkpointable
class HashEmbedding(EmbeddingBag):
    """An embedding of raw keys (ints, str or bytes) through the hashing trick: no vocabulary.

    Each key maps to ``num_hashes`` rows, ``hash_buckets(key, num_buckets, seed=seed + k)`` for
    k in 0..num_hashes-1, whose sum is the key's vector (several independent hashes make
    collisions less damaging). ``forward(keys)`` takes a flat list/array of keys (one vector per
    key) or a list of documents (lists of keys), pooled over each document's keys with ``mode``
    ("sum" or "mean"; a mean divides by the number of keys). ``backward`` is that of
    :class:`EmbeddingBag`.
    """

    def __init__(self, num_buckets: int, dim: int, *, num_hashes: int = 1, seed: int = 0, mode: PoolMode = "sum",
                 init: str = "normal", std: Optional[float] = None, bound: Optional[float] = None,
                 dtype: Any = np.float32, dropout: float = 0.0) -> None:
        self.num_hashes = _check_size(num_hashes, "num_hashes", 1)
        _check_size(num_buckets, "num_buckets", 1)
        if mode == "max":
            raise ValueError("HashEmbedding pools with mode 'sum' or 'mean'")
        super().__init__(num_buckets, dim, mode="sum", init=init, std=std, bound=bound, seed=seed, dtype=dtype,
                         dropout=dropout)
        self.doc_mode: PoolMode = mode

    def bucket_ids(self, keys: Any) -> NDArray[np.int64]:
        """Row ids of each key, shape ``(len(keys), num_hashes)``."""
        if isinstance(keys, (list, tuple)) and keys and all(
                isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) for k in keys):
            keys = np.asarray(keys, dtype=np.int64)  # int keys hash as their 8 little-endian bytes
        columns = [np.asarray(hash_buckets(keys, self.num_embeddings, seed=(self.seed + k) % 2**32)).reshape(-1)
                   for k in range(self.num_hashes)]
        return np.stack(columns, axis=1) if columns[0].size else np.zeros((0, self.num_hashes), np.int64)

    def forward(self, keys: Any, *, return_context: bool = False) -> Any:  # type: ignore[override]
        """One row per key, or per document (a list of keys) pooled with ``mode``; ``(out, ctx)``
        with ``return_context=True``."""
        if _is_documents(keys):
            flat, doc_offsets = _documents_csr(keys)
            ids = self.bucket_ids(flat).reshape(-1)
            offs = doc_offsets * self.num_hashes
            w = None
            if self.doc_mode == "mean":
                counts = np.diff(doc_offsets)
                per_key = np.divide(1.0, counts, out=np.zeros(counts.shape), where=counts > 0)
                w = np.repeat(per_key, counts * self.num_hashes).astype(self.weight.dtype)
            return self._forward_bags(ids, offs, w, True, return_context)
        if isinstance(keys, (str, bytes, int, np.integer)):
            raise TypeError("HashEmbedding.forward takes a list/array of keys or of documents, not a single key")
        return self._forward_bags(self.bucket_ids(keys), None, None, True, return_context)

    def _config(self) -> Dict[str, Any]:
        return {"num_hashes": self.num_hashes, "seed": self.seed, "mode": self.doc_mode, "init": self.init,
                "std": self.std, "bound": self.bound, "dtype": self.weight.dtype.str, "dropout": self.dropout}


@register_checkpointable
class SubwordEmbedding(EmbeddingBag):
    """fastText-style word vectors: a word's vector is the mean of its own row (when it is in
    ``vocab``) and the rows of its character n-grams (``subword_ngrams``), so that unseen words
    still get vectors.

    The table has ``len(vocab) + bucket`` rows: the vocabulary first, then the n-gram buckets.
    ``forward(words)`` takes a list of words (one vector each) or a list of documents (lists of
    words), each pooled, as fastText's sentence vectors, over all its word and subword rows.
    fastText's rules hold: ``maxn=0`` or ``bucket=0`` means no n-grams (a word is its own row,
    fastText's ``-minn 0 -maxn 0``), and the end-of-sentence word ``"</s>"`` has no n-grams; a
    word with no rows at all gets a zero vector (as ``get_word_vector``).
    """

    def __init__(self, dim: int, *, vocab: Optional[Sequence[str]] = None, minn: int = 3, maxn: int = 6,
                 bucket: int = 2_000_000, init: str = "uniform", std: Optional[float] = None,
                 bound: Optional[float] = None, seed: int = 0, dtype: Any = np.float32, dropout: float = 0.0) -> None:
        self.vocab: List[str] = list(vocab) if vocab is not None else []
        self.word_ids: Dict[str, int] = {w: i for i, w in enumerate(self.vocab)}
        if len(self.word_ids) != len(self.vocab):
            raise ValueError("vocab has repeated words")
        self.minn, self.maxn = _check_size(minn, "minn", 0), _check_size(maxn, "maxn", 0)
        if minn > maxn and maxn != 0:
            raise ValueError(f"minn must be <= maxn (or maxn 0 for no n-grams), got minn={minn}, maxn={maxn}")
        self.bucket = _check_size(bucket, "bucket", 0)
        super().__init__(len(self.vocab) + self.bucket, dim, mode="mean", init=init, std=std, bound=bound, seed=seed,
                         dtype=dtype, dropout=dropout)

    def word_rows(self, words: Sequence[str]) -> Tuple[NDArray[np.int64], NDArray[np.int64]]:
        """CSR rows of each word: its vocabulary row (if any) then its n-gram rows."""
        words = list(words)
        for i, w in enumerate(words):
            if not isinstance(w, str):
                raise TypeError(f"words[{i}] must be str, got {type(w).__name__}")
        sub_ids, sub_offs = subword_ngrams(words, minn=self.minn, maxn=self.maxn, bucket=self.bucket,
                                           offset=len(self.vocab))
        own = np.array([self.word_ids.get(w, -1) for w in words], np.int64)
        has_own = own >= 0
        lengths = np.diff(sub_offs) + has_own
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.empty(int(offsets[-1]), np.int64)
        starts = offsets[:-1]
        ids[starts[has_own]] = own[has_own]
        mask = np.ones(ids.size, bool)
        mask[starts[has_own]] = False
        ids[mask] = sub_ids
        return ids, offsets

    def forward(self, words: Any, *, return_context: bool = False) -> Any:  # type: ignore[override]
        """One vector per word, or per document (a list of words); ``(out, ctx)`` with
        ``return_context=True``."""
        if isinstance(words, str):
            raise TypeError("SubwordEmbedding.forward takes a list of words (or of documents), not a single str")
        if _is_documents(words):
            flat, doc_offsets = _documents_csr(words)
            ids, word_offs = self.word_rows(flat)
            return self._forward_bags(ids, word_offs[doc_offsets], None, True, return_context)
        ids, offs = self.word_rows(words)
        return self._forward_bags(ids, offs, None, True, return_context)

    def _config(self) -> Dict[str, Any]:
        return {"vocab": self.vocab, "minn": self.minn, "maxn": self.maxn, "bucket": self.bucket, "init": self.init,
                "std": self.std, "bound": self.bound, "seed": self.seed, "dtype": self.weight.dtype.str,
                "dropout": self.dropout}

    @classmethod
    def _build_empty(cls, config: Dict[str, Any], weight: NDArray[Any]) -> SubwordEmbedding:
        return cls(0, **config)
