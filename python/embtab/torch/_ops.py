"""embtab's kernels as torch operators (``torch.ops.embtab.*``).

Each operator is a ``torch.library.custom_op`` with a fake (meta) implementation, and the two
lookups have an autograd formula, so ``torch.compile`` traces through them without a graph break
and ``torch.library.opcheck`` can test them. Inside, tensors are viewed as numpy arrays (no copy)
and handed to embtab's public functions, which validate them.

Bags reach the operators as torch's ``embedding_bag`` takes them (1-D ids with ``offsets``, or 2-D
ids) plus ``include_last_offset`` and ``padding_idx`` (-1 for none); they are turned into embtab's
CSR form here, in one place, for the forward and every backward.

The three ways to train (see :mod:`embtab.torch`) differ only in the backward: ``gradient`` is
"dense" (a table-sized gradient, as torch's default), "sparse" (a coalesced sparse COO gradient) or
"fused" (the table and its optimizer state, passed as ``state``, are updated in place by the
optimizer registered under ``handle``; the weight gets no gradient).
"""

import itertools
import weakref
from typing import Any, List, Optional, Tuple, cast

import numpy as np
import torch
from torch import Tensor

from .. import _core
from .._lookup import PoolMode, gather, gather_bags, gather_bags_multi
from ._convert import sync_threads, tensor, view

_NO_ARGMAX = np.zeros(0, np.int64)

# Fused optimizers by handle: the operators are traced with plain ints, the optimizer objects (their
# hyperparameters, step counts and learning rate schedule) stay Python objects read at run time.
_FUSED: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()
_handles = itertools.count(1)


def register_fused(owner: Any) -> int:
    """A handle for the fused optimizer of ``owner`` (an object with ``apply_fused_step``); the
    registry holds it weakly."""
    handle = next(_handles)
    _FUSED[handle] = owner
    return handle


def fused_owner(handle: int) -> Any:
    owner = _FUSED.get(handle)
    if owner is None:
        raise RuntimeError(f"no fused optimizer with handle {handle} (its module was deleted)")
    return owner


def _csr(ids: Tensor, offsets: Optional[Tensor], weights: Optional[Tensor], padding_idx: int,
         include_last_offset: bool) -> Tuple[Any, Any, Any]:
    """(ids, offsets, weights) as embtab's gather_bags takes them, with the positions holding
    ``padding_idx`` left out of their bags (as torch does: a mean counts only the others)."""
    ids_np, offsets_np, weights_np = view(ids, "input"), view(offsets, "offsets"), view(weights, "per_sample_weights")
    if offsets_np is not None and not include_last_offset and offsets_np.ndim == 1 and ids_np.ndim == 1:
        # torch gives the start of each bag; embtab also takes the end of the last one.
        offsets_np = np.concatenate([offsets_np, np.asarray([ids_np.shape[0]], offsets_np.dtype)])
    if padding_idx < 0 or ids_np.dtype.kind not in "iu":
        return ids_np, offsets_np, weights_np
    if ids_np.ndim == 2 and offsets_np is None:
        num_bags, bag_len = ids_np.shape
        offsets_np = np.arange(num_bags + 1, dtype=np.int64) * bag_len
        ids_np = ids_np.reshape(-1)
        weights_np = None if weights_np is None else weights_np.reshape(-1)
    if ids_np.ndim != 1 or offsets_np is None or offsets_np.ndim != 1 or offsets_np.dtype.kind not in "iu":
        return ids_np, offsets_np, weights_np  # malformed: the compiled layer says how
    if offsets_np.size and (offsets_np.min() < 0 or offsets_np.max() > ids_np.shape[0]):
        return ids_np, offsets_np, weights_np
    keep = ids_np != padding_idx
    if keep.all():
        return ids_np, offsets_np, weights_np
    kept_before = np.concatenate([np.zeros(1, np.int64), np.cumsum(keep, dtype=np.int64)])
    weights_np = None if weights_np is None or weights_np.shape != ids_np.shape else weights_np[keep]
    return ids_np[keep], kept_before[offsets_np], weights_np


def _num_bags(ids: Tensor, offsets: Optional[Tensor], include_last_offset: bool) -> int:
    if ids.dim() == 2 or offsets is None:
        return ids.shape[0]
    return offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]


# ---------------------------------------------------------------------------------------------
# Forward: embedding_bag


@torch.library.custom_op("embtab::embedding_bag", mutates_args=())
def embedding_bag(weight: Tensor, ids: Tensor, offsets: Optional[Tensor], per_sample_weights: Optional[Tensor],
                  state: List[Tensor], pooling: str, padding_idx: int, include_last_offset: bool, gradient: str,
                  handle: int) -> Tuple[Tensor, Tensor]:
    """Pooled lookup; returns (output, argmax) where argmax is empty unless pooling == "max"."""
    sync_threads()
    ids_np, offsets_np, weights_np = _csr(ids, offsets, per_sample_weights, padding_idx, include_last_offset)
    table = view(weight, "weight")
    if pooling == "max" and weights_np is None:
        out, argmax = gather_bags(table, ids_np, offsets_np, mode="max", return_argmax=True)
        return tensor(out), tensor(argmax)
    out = gather_bags(table, ids_np, offsets_np, mode=cast(PoolMode, pooling), weights=weights_np)
    return tensor(out), tensor(_NO_ARGMAX.copy())


@embedding_bag.register_fake
def _(weight: Tensor, ids: Tensor, offsets: Optional[Tensor], per_sample_weights: Optional[Tensor],
      state: List[Tensor], pooling: str, padding_idx: int, include_last_offset: bool, gradient: str,
      handle: int) -> Tuple[Tensor, Tensor]:
    num_bags = _num_bags(ids, offsets, include_last_offset)
    out = weight.new_empty((num_bags, weight.shape[1]))
    argmax = ids.new_empty((num_bags, weight.shape[1]) if pooling == "max" else (0,), dtype=torch.int64)
    return out, argmax


def _bag_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[Tensor, Tensor]) -> None:
    weight, ids, offsets, per_sample_weights, state, pooling, padding_idx, include_last_offset, gradient, handle = inputs
    ctx.options = (pooling, padding_idx, include_last_offset, gradient, handle, weight.shape[0])
    # (needs_input_grad is not final while torch.compile traces: keep the rows whenever weights are given.)
    needs_weight_values = gradient == "fused" or per_sample_weights is not None
    ctx.save_for_backward(weight if needs_weight_values else None, ids, offsets, per_sample_weights, output[1],
                          *state)


def _bag_backward(ctx: Any, grad_out: Tensor, _grad_argmax: Tensor) -> Tuple[Any, ...]:
    pooling, padding_idx, include_last_offset, gradient, handle, num_rows = ctx.options
    weight, ids, offsets, per_sample_weights, argmax, *state = ctx.saved_tensors
    grad_out = grad_out.contiguous()
    grad_weights = None
    if per_sample_weights is not None and ctx.needs_input_grad[3]:
        # Before a fused update moves the rows.
        grad_weights = torch.ops.embtab.embedding_bag_per_sample_weights_backward(
            grad_out, weight, ids, offsets, pooling, padding_idx, include_last_offset)
    grad_weight = None
    args = (grad_out, ids, offsets, per_sample_weights, argmax, pooling, padding_idx, include_last_offset)
    if gradient == "fused":
        torch.ops.embtab.embedding_bag_fused_step(weight, list(state), *args, handle)
    elif ctx.needs_input_grad[0]:
        grad_weight = _weight_grad(gradient, args, num_rows)
    return grad_weight, None, None, grad_weights, [None] * len(state), None, None, None, None, None


def mark_coalesced(param: Tensor) -> None:
    """Post-accumulate-grad hook of a sparse module's weight: keeps ``weight.grad`` marked coalesced.

    Autograd stores a sparse gradient in ``.grad`` through a copy that drops the flag, and torch's
    optimizers would then sort it again. Strictly increasing row indices are the definition of
    coalesced (one sparse dimension), so the check is exact, and it costs one comparison per row.
    """
    grad = param.grad
    if grad is None or not grad.is_sparse or grad.is_coalesced() or grad.sparse_dim() != 1:
        return
    rows = grad._indices()[0]
    if bool((rows[1:] > rows[:-1]).all()):
        grad._coalesced_(True)


def _weight_grad(gradient: str, args: Tuple[Any, ...], num_rows: int) -> Tensor:
    if gradient == "sparse":
        rows, values = torch.ops.embtab.embedding_bag_sparse_backward(*args, num_rows)
        # embtab's rows are sorted, distinct and in range: torch need not check them again.
        return torch.sparse_coo_tensor(rows.unsqueeze(0), values, (num_rows, values.shape[1]), is_coalesced=True,
                                       check_invariants=False)
    dense: Tensor = torch.ops.embtab.embedding_bag_backward(*args, num_rows)
    return dense


embedding_bag.register_autograd(_bag_backward, setup_context=_bag_setup)


# ---------------------------------------------------------------------------------------------
# Forward: embedding (rows by id). Its backward is the bag backward with bags of one id each.


@torch.library.custom_op("embtab::embedding", mutates_args=())
def embedding(weight: Tensor, ids: Tensor, state: List[Tensor], padding_idx: int, gradient: str,
              handle: int) -> Tensor:
    """Rows of ``weight`` at ``ids``: shape ``ids.shape + (dim,)``."""
    sync_threads()
    return tensor(gather(view(weight, "weight"), view(ids, "input")))


@embedding.register_fake
def _(weight: Tensor, ids: Tensor, state: List[Tensor], padding_idx: int, gradient: str, handle: int) -> Tensor:
    return weight.new_empty(tuple(ids.shape) + (weight.shape[1],))


def _embedding_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
    weight, ids, state, padding_idx, gradient, handle = inputs
    ctx.options = (padding_idx, gradient, handle, weight.shape[0], weight.shape[1])
    ctx.save_for_backward(weight if gradient == "fused" else None, ids, *state)


def _embedding_backward(ctx: Any, grad_out: Tensor) -> Tuple[Any, ...]:
    padding_idx, gradient, handle, num_rows, dim = ctx.options
    weight, ids, *state = ctx.saved_tensors
    args = (grad_out.contiguous().reshape(-1, dim), ids.reshape(-1, 1), None, None, ids.new_empty((0,), dtype=torch.int64),
            "sum", padding_idx, False)
    if gradient == "fused":
        torch.ops.embtab.embedding_bag_fused_step(weight, list(state), *args, handle)
    grad_weight = _weight_grad(gradient, args, num_rows) if gradient != "fused" and ctx.needs_input_grad[0] else None
    return grad_weight, None, [None] * len(state), None, None, None


embedding.register_autograd(_embedding_backward, setup_context=_embedding_setup)


# ---------------------------------------------------------------------------------------------
# Backward operators. They take the forward's bag arguments and its argmax (empty unless "max").


def _bags_grad(grad_out: Tensor, ids: Tensor, offsets: Optional[Tensor], per_sample_weights: Optional[Tensor],
               argmax: Tensor, pooling: str, padding_idx: int, include_last_offset: bool,
               num_rows: int) -> Tuple[Any, Any]:
    sync_threads()
    ids_np, offsets_np, weights_np = _csr(ids, offsets, per_sample_weights, padding_idx, include_last_offset)
    argmax_np = view(argmax, "argmax") if pooling == "max" else None
    return _core.bags_grad(view(grad_out, "grad_out"), ids_np, offsets_np, pooling, weights_np, argmax_np, num_rows)


@torch.library.custom_op("embtab::embedding_bag_backward", mutates_args=())
def embedding_bag_backward(grad_out: Tensor, ids: Tensor, offsets: Optional[Tensor],
                           per_sample_weights: Optional[Tensor], argmax: Tensor, pooling: str, padding_idx: int,
                           include_last_offset: bool, num_rows: int) -> Tensor:
    """The dense (num_rows, dim) gradient of embedding_bag with respect to its weight."""
    rows, grads = _bags_grad(grad_out, ids, offsets, per_sample_weights, argmax, pooling, padding_idx,
                             include_last_offset, num_rows)
    dense = torch.zeros((num_rows, grads.shape[1]), dtype=grad_out.dtype)
    dense.index_copy_(0, tensor(rows), tensor(grads))
    return dense


@embedding_bag_backward.register_fake
def _(grad_out: Tensor, ids: Tensor, offsets: Optional[Tensor], per_sample_weights: Optional[Tensor], argmax: Tensor,
      pooling: str, padding_idx: int, include_last_offset: bool, num_rows: int) -> Tensor:
    return grad_out.new_empty((num_rows, grad_out.shape[1]))


@torch.library.custom_op("embtab::embedding_bag_sparse_backward", mutates_args=())
def embedding_bag_sparse_backward(grad_out: Tensor, ids: Tensor, offsets: Optional[Tensor],
                                  per_sample_weights: Optional[Tensor], argmax: Tensor, pooling: str,
                                  padding_idx: int, include_last_offset: bool,
                                  num_rows: int) -> Tuple[Tensor, Tensor]:
    """The coalesced sparse gradient as (rows, row gradients): rows sorted and distinct."""
    rows, grads = _bags_grad(grad_out, ids, offsets, per_sample_weights, argmax, pooling, padding_idx,
                             include_last_offset, num_rows)
    return tensor(rows), tensor(grads)


@embedding_bag_sparse_backward.register_fake
def _(grad_out: Tensor, ids: Tensor, offsets: Optional[Tensor], per_sample_weights: Optional[Tensor], argmax: Tensor,
      pooling: str, padding_idx: int, include_last_offset: bool, num_rows: int) -> Tuple[Tensor, Tensor]:
    k = torch.library.get_ctx().new_dynamic_size()
    return ids.new_empty((k,), dtype=torch.int64), grad_out.new_empty((k, grad_out.shape[1]))


@torch.library.custom_op("embtab::embedding_bag_per_sample_weights_backward", mutates_args=())
def embedding_bag_per_sample_weights_backward(grad_out: Tensor, weight: Tensor, ids: Tensor,
                                              offsets: Optional[Tensor], pooling: str, padding_idx: int,
                                              include_last_offset: bool) -> Tensor:
    """d(output)/d(per_sample_weights[i]) . grad_out: the dot product of grad_out[bag of i] with
    weight[ids[i]] (divided by the bag's length for "mean"); 0 at padding positions."""
    sync_threads()
    ids_np = view(ids, "input")
    # The bags' positions (padding kept: it gets a zero gradient).
    flat, offsets_csr, _ = _csr(ids, offsets, None, -1, include_last_offset)
    if offsets_csr is None:
        offsets_csr = np.arange(ids_np.shape[0] + 1) * ids_np.shape[1]
    flat = flat.reshape(-1)
    lengths = np.diff(offsets_csr)
    bag_of = np.repeat(np.arange(lengths.shape[0]), lengths)
    grad = view(grad_out, "grad_out")
    keep = flat != padding_idx if padding_idx >= 0 else np.ones(flat.shape, bool)
    if pooling == "mean":
        kept_before = np.concatenate([np.zeros(1, np.int64), np.cumsum(keep, dtype=np.int64)])
        counts = kept_before[offsets_csr[1:]] - kept_before[offsets_csr[:-1]]
        scale = (1.0 / np.maximum(counts, 1)).astype(grad.dtype)[bag_of]
    else:
        scale = np.ones(flat.shape, grad.dtype)
    rows = gather(view(weight, "weight"), np.where(keep, flat, 0))
    dots = np.einsum("nd,nd->n", rows, grad[bag_of]) * scale
    return tensor(np.where(keep, dots, 0).astype(grad.dtype).reshape(ids_np.shape))


@embedding_bag_per_sample_weights_backward.register_fake
def _(grad_out: Tensor, weight: Tensor, ids: Tensor, offsets: Optional[Tensor], pooling: str, padding_idx: int,
      include_last_offset: bool) -> Tensor:
    return grad_out.new_empty(ids.shape)


@torch.library.custom_op("embtab::embedding_bag_fused_step", mutates_args=("weight", "state"))
def embedding_bag_fused_step(weight: Tensor, state: List[Tensor], grad_out: Tensor, ids: Tensor,
                             offsets: Optional[Tensor], per_sample_weights: Optional[Tensor], argmax: Tensor,
                             pooling: str, padding_idx: int, include_last_offset: bool, handle: int) -> None:
    """One step of the fused optimizer ``handle`` on ``weight`` and its ``state``, in place."""
    sync_threads()
    ids_np, offsets_np, weights_np = _csr(ids, offsets, per_sample_weights, padding_idx, include_last_offset)
    argmax_np = view(argmax, "argmax") if pooling == "max" else None
    fused_owner(handle).apply_fused_step(view(weight, "weight"), [view(s, "state") for s in state],
                                         view(grad_out, "grad_out"), ids_np, offsets_np, pooling, weights_np,
                                         argmax_np)


@embedding_bag_fused_step.register_fake
def _(weight: Tensor, state: List[Tensor], grad_out: Tensor, ids: Tensor, offsets: Optional[Tensor],
      per_sample_weights: Optional[Tensor], argmax: Tensor, pooling: str, padding_idx: int, include_last_offset: bool,
      handle: int) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# EmbeddingBagCollection: many tables in one call (embtab.gather_bags_multi). A batch holds F
# features of B bags each, feature-major; feature f pools rows of weights[feature_tables[f]] and
# fills its columns of the (B, sum of the features' dims) output, feature after feature. The
# backward operators take each table's (num_rows, dim) as `shapes` ([n0, d0, n1, d1, ...]).


def _views(tensors: List[Tensor], name: str) -> List[Any]:
    return [view(t, f"{name}[{i}]") for i, t in enumerate(tensors)]


def _modes(mean_pooling: List[bool]) -> List[PoolMode]:
    """Operator schemas have no list of str: poolings travel as "is it a mean" flags."""
    return ["mean" if mean else "sum" for mean in mean_pooling]


@torch.library.custom_op("embtab::embedding_bag_collection", mutates_args=())
def embedding_bag_collection(weights: List[Tensor], ids: Tensor, offsets: Tensor,
                             per_sample_weights: Optional[Tensor], state: List[Tensor], feature_tables: List[int],
                             mean_pooling: List[bool], gradient: str, handle: int) -> Tensor:
    """Every feature's bags pooled, side by side: (B, sum of the features' dims)."""
    sync_threads()
    out = gather_bags_multi(_views(weights, "weights"), view(ids, "values"), view(offsets, "offsets"),
                            feature_tables=feature_tables, mode=_modes(mean_pooling),
                            weights=view(per_sample_weights, "weights"))
    return tensor(out)


@embedding_bag_collection.register_fake
def _(weights: List[Tensor], ids: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor], state: List[Tensor],
      feature_tables: List[int], mean_pooling: List[bool], gradient: str, handle: int) -> Tensor:
    batch = (offsets.shape[0] - 1) // max(len(feature_tables), 1)
    width = sum(weights[t].shape[1] for t in feature_tables)
    return weights[0].new_empty((batch, width))


def _collection_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
    weights, ids, offsets, per_sample_weights, state, feature_tables, mean_pooling, gradient, handle = inputs
    shapes = [n for w in weights for n in w.shape]
    ctx.options = (list(feature_tables), list(mean_pooling), gradient, handle, shapes, len(weights))
    ctx.keep_weights = gradient == "fused" or per_sample_weights is not None
    ctx.save_for_backward(ids, offsets, per_sample_weights, *(weights if ctx.keep_weights else ()), *state)


def _collection_backward(ctx: Any, grad_out: Tensor) -> Tuple[Any, ...]:
    feature_tables, mean_pooling, gradient, handle, shapes, num_tables = ctx.options
    ids, offsets, per_sample_weights, *rest = ctx.saved_tensors
    weights, state = (rest[:num_tables], rest[num_tables:]) if ctx.keep_weights else ([], rest)
    grad_out = grad_out.contiguous()
    grad_psw = None
    if per_sample_weights is not None and ctx.needs_input_grad[3]:
        # Before a fused update moves the rows.
        grad_psw = torch.ops.embtab.embedding_bag_collection_per_sample_weights_backward(
            grad_out, list(weights), ids, offsets, feature_tables, mean_pooling)
    args = (grad_out, ids, offsets, per_sample_weights, feature_tables, mean_pooling)
    grad_weights: List[Optional[Tensor]] = [None] * num_tables
    if gradient == "fused":
        torch.ops.embtab.embedding_bag_collection_fused_step(list(weights), list(state), *args, handle)
    elif gradient == "sparse":
        parts = torch.ops.embtab.embedding_bag_collection_sparse_backward(*args, shapes)
        grad_weights = [torch.sparse_coo_tensor(rows.unsqueeze(0), values, (shapes[2 * t], shapes[2 * t + 1]),
                                                is_coalesced=True, check_invariants=False)
                        for t, (rows, values) in enumerate(zip(parts[0::2], parts[1::2]))]
    else:
        grad_weights = list(torch.ops.embtab.embedding_bag_collection_backward(*args, shapes))
    return grad_weights, None, None, grad_psw, [None] * len(state), None, None, None, None


embedding_bag_collection.register_autograd(_collection_backward, setup_context=_collection_setup)


class _Features:
    """Where each feature of a collection batch is: its positions, bags and output columns."""

    def __init__(self, offsets: Any, feature_tables: List[int], dims: List[int]) -> None:
        self.offsets = offsets.astype(np.int64, copy=False)
        self.num = len(feature_tables)
        self.batch = (self.offsets.shape[0] - 1) // max(self.num, 1)
        self.start = [int(self.offsets[f * self.batch]) for f in range(self.num + 1)]
        self.cols = np.concatenate([[0], np.cumsum([dims[t] for t in feature_tables])]).astype(np.int64)

    def bags(self, f: int) -> Any:
        """Feature f's CSR offsets, from 0."""
        return self.offsets[f * self.batch:(f + 1) * self.batch + 1] - self.start[f]


def _collection_grads(grad_out: Tensor, ids: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor],
                      feature_tables: List[int], mean_pooling: List[bool], shapes: List[int]) -> List[Any]:
    """(rows, row gradients) per table: each table's features' bags together, so that a row used by
    several features of its table gets one summed gradient."""
    sync_threads()
    grad, ids_np, weights_np = view(grad_out, "grad_out"), view(ids, "values"), view(per_sample_weights, "weights")
    num_rows, dims = shapes[0::2], shapes[1::2]
    feat = _Features(view(offsets, "offsets"), feature_tables, dims)
    result = []
    for t, n in enumerate(num_rows):
        features = [f for f, ft in enumerate(feature_tables) if ft == t]
        ids_t: List[Any] = []
        grads_t: List[Any] = []
        weights_t: List[Any] = []
        offsets_t: List[Any] = [np.zeros(1, np.int64)]
        for f in features:
            span = slice(feat.start[f], feat.start[f + 1])
            ids_t.append(ids_np[span])
            weights_t.append(None if weights_np is None else weights_np[span])
            grads_t.append(grad[:, feat.cols[f]:feat.cols[f + 1]])
            offsets_t.append(feat.bags(f)[1:] + offsets_t[-1][-1])
        if not features:
            result.append((np.zeros(0, np.int64), np.zeros((0, dims[t]), grad.dtype)))
            continue
        result.append(_core.bags_grad(
            np.ascontiguousarray(np.concatenate(grads_t)), np.concatenate(ids_t), np.concatenate(offsets_t),
            _modes(mean_pooling)[features[0]], None if weights_np is None else np.concatenate(weights_t), None, n))
    return result


@torch.library.custom_op("embtab::embedding_bag_collection_backward", mutates_args=())
def embedding_bag_collection_backward(grad_out: Tensor, ids: Tensor, offsets: Tensor,
                                      per_sample_weights: Optional[Tensor], feature_tables: List[int],
                                      mean_pooling: List[bool], shapes: List[int]) -> List[Tensor]:
    """The dense gradient of every table."""
    out = []
    for (rows, grads), n, d in zip(_collection_grads(grad_out, ids, offsets, per_sample_weights, feature_tables,
                                                     mean_pooling, shapes), shapes[0::2], shapes[1::2]):
        dense = torch.zeros((n, d), dtype=grad_out.dtype)
        dense.index_copy_(0, tensor(rows), tensor(grads))
        out.append(dense)
    return out


@embedding_bag_collection_backward.register_fake
def _(grad_out: Tensor, ids: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor], feature_tables: List[int],
      mean_pooling: List[bool], shapes: List[int]) -> List[Tensor]:
    return [grad_out.new_empty((n, d)) for n, d in zip(shapes[0::2], shapes[1::2])]


@torch.library.custom_op("embtab::embedding_bag_collection_sparse_backward", mutates_args=())
def embedding_bag_collection_sparse_backward(grad_out: Tensor, ids: Tensor, offsets: Tensor,
                                             per_sample_weights: Optional[Tensor], feature_tables: List[int],
                                             mean_pooling: List[bool], shapes: List[int]) -> List[Tensor]:
    """Every table's coalesced gradient: [rows_0, row_grads_0, rows_1, row_grads_1, ...]."""
    return [tensor(a) for pair in _collection_grads(grad_out, ids, offsets, per_sample_weights, feature_tables,
                                                    mean_pooling, shapes) for a in pair]


@embedding_bag_collection_sparse_backward.register_fake
def _(grad_out: Tensor, ids: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor], feature_tables: List[int],
      mean_pooling: List[bool], shapes: List[int]) -> List[Tensor]:
    out = []
    for d in shapes[1::2]:
        k = torch.library.get_ctx().new_dynamic_size()
        out += [ids.new_empty((k,), dtype=torch.int64), grad_out.new_empty((k, d))]
    return out


@torch.library.custom_op("embtab::embedding_bag_collection_per_sample_weights_backward", mutates_args=())
def embedding_bag_collection_per_sample_weights_backward(grad_out: Tensor, weights: List[Tensor], ids: Tensor,
                                                         offsets: Tensor, feature_tables: List[int],
                                                         mean_pooling: List[bool]) -> Tensor:
    """The gradient of every per-id weight: its row's dot product with its bag's output gradient
    (divided by the bag's length for "mean")."""
    sync_threads()
    grad, ids_np = view(grad_out, "grad_out"), view(ids, "values")
    tables = _views(weights, "weights")
    feat = _Features(view(offsets, "offsets"), feature_tables, [t.shape[1] for t in tables])
    out = np.zeros(ids_np.shape, grad.dtype)
    for f, t in enumerate(feature_tables):
        span = slice(feat.start[f], feat.start[f + 1])
        lengths = np.diff(feat.bags(f))
        bag_of = np.repeat(np.arange(feat.batch), lengths)
        rows = gather(tables[t], ids_np[span])
        dots = np.einsum("nd,nd->n", rows, grad[bag_of, feat.cols[f]:feat.cols[f + 1]])
        out[span] = dots / np.maximum(lengths, 1)[bag_of] if mean_pooling[f] else dots
    return tensor(out)


@embedding_bag_collection_per_sample_weights_backward.register_fake
def _(grad_out: Tensor, weights: List[Tensor], ids: Tensor, offsets: Tensor, feature_tables: List[int],
      mean_pooling: List[bool]) -> Tensor:
    return grad_out.new_empty(ids.shape)


@torch.library.custom_op("embtab::embedding_bag_collection_fused_step", mutates_args=("weights", "state"))
def embedding_bag_collection_fused_step(weights: List[Tensor], state: List[Tensor], grad_out: Tensor, ids: Tensor,
                                        offsets: Tensor, per_sample_weights: Optional[Tensor],
                                        feature_tables: List[int], mean_pooling: List[bool], handle: int) -> None:
    """One fused step of every table (embtab.optim.step_bags_multi), in place."""
    sync_threads()
    per_table = len(state) // max(len(weights), 1)
    states = _views(state, "state")
    fused_owner(handle).apply_fused_multi_step(
        _views(weights, "weights"), [states[t * per_table:(t + 1) * per_table] for t in range(len(weights))],
        view(grad_out, "grad_out"), view(ids, "values"), view(offsets, "offsets"), feature_tables, _modes(mean_pooling),
        view(per_sample_weights, "weights"))


@embedding_bag_collection_fused_step.register_fake
def _(weights: List[Tensor], state: List[Tensor], grad_out: Tensor, ids: Tensor, offsets: Tensor,
      per_sample_weights: Optional[Tensor], feature_tables: List[int], mean_pooling: List[bool], handle: int) -> None:
    return None


# Every operator this module registers (tests run torch.library.opcheck on each).
OPERATORS = ("embedding_bag", "embedding", "embedding_bag_backward", "embedding_bag_sparse_backward",
             "embedding_bag_per_sample_weights_backward", "embedding_bag_fused_step", "embedding_bag_collection",
             "embedding_bag_collection_backward", "embedding_bag_collection_sparse_backward",
             "embedding_bag_collection_per_sample_weights_backward", "embedding_bag_collection_fused_step")
