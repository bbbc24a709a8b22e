"""Sparse gradients: scatter-add, coalescing, and the gradient of pooled bag lookups."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core
from ._arrays import as_ids, as_values
from ._lookup import PoolMode, gather_bags


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
    rows, sums = _core.coalesce(as_ids(ids), values)
    return rows, sums


def gather_bags_grad(
    grad_out: NDArray[np.floating],
    ids: ArrayLike,
    offsets: Optional[ArrayLike] = None,
    *,
    mode: PoolMode = "sum",
    weights: Optional[ArrayLike] = None,
    table: Optional[NDArray[np.floating]] = None,
    argmax: Optional[NDArray[np.int64]] = None,
) -> Tuple[NDArray[np.int64], NDArray[np.floating]]:
    """Coalesced gradient of :func:`gather_bags` with respect to the table.

    Given ``grad_out``, the gradient of a loss with respect to
    ``out = gather_bags(table, ids, offsets, mode=mode, weights=weights)``, returns the gradient
    with respect to ``table`` as ``(rows, row_grads)``: only the rows the batch used, each once.

    - ``"sum"``: every position i of bag b adds ``weights[i] * grad_out[b]`` (or ``grad_out[b]``).
    - ``"mean"``: ``(grad_out[b] / len(bag b)) * weights[i]``, as torch's ``embedding_bag``;
      empty bags contribute nothing.
    - ``"max"``: each element ``grad_out[b, j]`` goes to the row that won it in the forward pass
      (``argmax[b, j]``; the first maximum on ties), once per bag even if that row repeats.

    Parameters
    ----------
    grad_out : ndarray, shape (num_bags, dim), float32 or float64
    ids, offsets, weights :
        The arguments of the forward :func:`gather_bags` call (``weights`` must have the dtype of
        ``grad_out``).
    mode : {"sum", "mean", "max"}
    table : ndarray, optional
        With ``mode="max"`` and no ``argmax``: the table of the forward pass, used to find the
        winners (``gather_bags(table, ids, offsets, mode="max", return_argmax=True)``). For the
        other modes, when given, ids are also checked against ``len(table)``.
    argmax : ndarray of int64, shape (num_bags, dim), optional
        ``mode="max"`` only: the winners returned by ``gather_bags(..., return_argmax=True)``.

    Returns
    -------
    rows : ndarray of int64, shape (k,)
        ``np.unique(ids)``: every row the batch touched (in ``"max"`` mode a row that won no
        element has a zero gradient).
    row_grads : ndarray, shape (k, dim), the dtype of ``grad_out``
        The contributions of each row summed in the original order of ``ids``.

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
        another mode.
    """
    ids = as_ids(ids)
    if offsets is not None:
        offsets = as_ids(offsets)
    if mode == "max" and argmax is None and table is not None:
        _, argmax = gather_bags(table, ids, offsets, mode="max", return_argmax=True)
    num_rows = -1 if table is None else int(np.shape(table)[0])
    rows, grads = _core.bags_grad(grad_out, ids, offsets, mode, as_values(weights, grad_out), argmax, num_rows)
    return rows, grads
