"""Sparse gradients: scatter-add, coalescing, and the gradient of pooled bag lookups."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core
from ._arrays import as_array, as_ids, as_values
from ._lookup import PoolMode, bag_arguments, gather, gather_bags


def scatter_add(target: NDArray[np.floating], ids: ArrayLike, values: NDArray[np.floating]) -> None:
    """In place, ``target[ids[i]] += values[i]`` for every i, accumulating repeated ids.

    The result is bitwise identical to ``np.add.at(target, ids, values)`` for any thread count
    and SIMD path: each row receives its values in their original order.

    Parameters
    ----------
    target : ndarray, shape (num_rows, dim), float32 or float64
        Updated in place: it must be C-contiguous, writeable and have the dtype of ``values``
        (it is never copied or cast, so an update can never be lost).
    ids : array_like of int32 or int64, any shape
        Row ids, ``0 <= id < num_rows``; they may repeat.
    values : ndarray, shape ``ids.shape + (dim,)``, float32 or float64
        It may share memory with ``target`` (``scatter_add(t, ids, t[:4])``): it is then copied
        first, so the result is that of ``np.add.at`` (so are ids that share memory with it).

    Raises
    ------
    IndexError
        An id is negative or >= num_rows (its position and value are named). Every id is checked
        before anything is written, so ``target`` is then unchanged.
    TypeError
        ``values`` is not float32/float64, ``target`` has another dtype, ``ids`` is not an integer
        array.
    ValueError
        ``target`` is not 2-D, read-only or not C-contiguous; ``values`` has the wrong shape.
    """
    target = as_array(target, "target")
    _core.scatter_add(target, as_ids(ids), as_values(values, target))


def coalesce(ids: ArrayLike, values: NDArray[np.floating]) -> Tuple[NDArray[np.int64], NDArray[np.floating]]:
    """The sparse gradient ``(ids, values)`` in canonical form: one row per distinct id.

    Parameters
    ----------
    ids : array_like of int32 or int64, any shape
        Non-negative row ids; they may repeat.
    values : ndarray, shape ``ids.shape + (dim,)``, float32 or float64

    Returns
    -------
    rows : ndarray of int64, shape (k,)
        The distinct ids in increasing order (``np.unique(ids)``).
    sums : ndarray, shape (k, dim), the dtype of ``values``
        ``sums[i]`` is the sum of ``values[j]`` over all ``j`` with ``ids[j] == rows[i]``, added
        in their original order: bitwise equal to ``np.add.at`` into a zero array.

    Notes
    -----
    Runs a stable radix sort of the ids: the scratch memory is proportional to ``ids.size``,
    never to the largest id.

    Raises
    ------
    IndexError
        A negative id. TypeError / ValueError as :func:`scatter_add`.
    """
    rows, sums = _core.coalesce(as_ids(ids), as_array(values, "values"))
    return rows, sums


def gather_bags_grad(
    grad_out: NDArray[np.floating],
    ids: ArrayLike,
    offsets: Optional[ArrayLike] = None,
    *,
    mode: PoolMode = "sum",
    weights: Optional[ArrayLike] = None,
    padding_idx: Optional[int] = None,
    include_last_offset: bool = True,
    table: Optional[NDArray[np.floating]] = None,
    argmax: Optional[NDArray[np.int64]] = None,
    return_weights_grad: bool = False,
) -> Any:
    """Coalesced gradient of :func:`gather_bags` with respect to the table (and the weights).

    Given ``grad_out``, the gradient of a loss with respect to
    ``out = gather_bags(table, ids, offsets, mode=mode, weights=weights, ...)``, returns the gradient
    with respect to ``table`` as ``(rows, row_grads)``: only the rows the batch used, each once.

    - ``"sum"``: every position i of bag b adds ``weights[i] * grad_out[b]`` (or ``grad_out[b]``).
    - ``"mean"``: ``(grad_out[b] / len(bag b)) * weights[i]``: embtab's weighted mean divides by the
      number of ids (torch has no weighted mean: it refuses ``per_sample_weights`` with "mean");
      empty bags contribute nothing.
    - ``"max"``: each element ``grad_out[b, j]`` goes to the row that won it in the forward pass
      (``argmax[b, j]``; the first maximum on ties), once per bag even if that row repeats.

    Parameters
    ----------
    grad_out : ndarray, shape (num_bags, dim), float32 or float64
    ids, offsets, weights, padding_idx, include_last_offset :
        The arguments of the forward :func:`gather_bags` call (``weights`` must have the dtype of
        ``grad_out``). Padding entries get no gradient (their row is not in ``rows``).
    mode : {"sum", "mean", "max"}
    table : ndarray, optional
        The table of the forward pass. Needed with ``mode="max"`` and no ``argmax`` (to find the
        winners) and with ``return_weights_grad``; otherwise, when given, ids are also checked
        against ``len(table)``.
    argmax : ndarray of int64, shape (num_bags, dim), optional
        ``mode="max"`` only: the winners returned by ``gather_bags(..., return_argmax=True)``.
    return_weights_grad : bool
        Also return the gradient with respect to ``weights`` (which must be given): for position
        i of bag b, ``grad_out[b] . table[ids[i]]`` ("sum"), divided by ``len(bag b)`` ("mean");
        0 for padding entries. torch's ``per_sample_weights.grad`` for "sum".

    Returns
    -------
    rows : ndarray of int64, shape (k,)
        ``np.unique(ids)`` (without ``padding_idx``): every row the batch touched (in ``"max"``
        mode a row that won no element has a zero gradient).
    row_grads : ndarray, shape (k, dim), the dtype of ``grad_out``
        The contributions of each row summed in the original order of ``ids``.
    weights_grad : ndarray with the shape of ``ids`` and the dtype of ``grad_out``
        Only with ``return_weights_grad=True``.

    Raises
    ------
    IndexError
        A negative id (or one >= len(table) when ``table`` is given).
    TypeError
        Non-float ``grad_out``, integer arrays of the wrong kind, ``weights`` of another dtype,
        ``argmax`` that is not int64.
    ValueError
        Bad shapes or offsets (as :func:`gather_bags`), ``grad_out`` with a number of rows other
        than the number of bags, ``mode="max"`` without ``table`` or ``argmax``, ``argmax`` with
        another mode, ``return_weights_grad`` without ``weights`` or ``table``.
    """
    grad_out, weights = as_array(grad_out, "grad_out"), as_array(weights, "weights")
    table, argmax = as_array(table, "table"), as_array(argmax, "argmax")
    if return_weights_grad and (weights is None or table is None):
        raise ValueError("return_weights_grad=True needs the forward pass's weights and table")
    shape = np.shape(ids)
    num_rows = None if table is None else int(np.shape(table)[0])
    ids, offsets, weights, kept = bag_arguments(ids, offsets, weights, num_rows=num_rows, weights_like=grad_out,
                                                include_last_offset=include_last_offset, padding_idx=padding_idx,
                                                check_ids=True)
    if mode == "max" and argmax is None and table is not None:
        _, argmax = gather_bags(table, ids, offsets, mode="max", return_argmax=True)
    weights = as_values(weights, grad_out)
    rows, grads = _core.bags_grad(grad_out, ids, offsets, mode, weights, argmax, -1 if num_rows is None else num_rows)
    if not return_weights_grad:
        return rows, grads
    assert table is not None
    kept_grad = _weights_grad(grad_out, table, ids, offsets, mode)
    if kept is None:
        return rows, grads, kept_grad.reshape(shape)
    full = np.zeros(kept.shape, grad_out.dtype)
    full[kept] = kept_grad
    return rows, grads, full.reshape(shape)


def _weights_grad(grad_out: NDArray[np.floating], table: NDArray[np.floating], ids: Any, offsets: Any, mode: str) -> NDArray[np.floating]:
    """d out / d weights[i] for the (checked) bags: grad_out[b] . table[ids[i]], / len(bag) for a mean."""
    ids = np.asarray(ids)
    if offsets is None:  # 2-D ids: fixed-length bags
        offsets = np.arange(ids.shape[0] + 1, dtype=np.int64) * (ids.shape[1] if ids.ndim == 2 else 0)
    flat = ids.reshape(-1)
    # numpy's stubs type np.diff of an int64 array as timedelta64
    lengths: NDArray[np.int64] = np.diff(np.asarray(offsets, np.int64))  # type: ignore[assignment]
    bag_of = np.repeat(np.arange(len(lengths)), lengths)
    grad: NDArray[np.floating] = np.einsum("ij,ij->i", gather(table, flat), np.asarray(grad_out)[bag_of])
    if mode == "mean":
        grad /= lengths[bag_of].astype(grad.dtype)
    return grad.astype(grad_out.dtype, copy=False)
