"""Nearest rows of an embedding table: brute force on BLAS, exact, in blocks of queries."""

from __future__ import annotations

import operator
from typing import Literal, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

Metric = Literal["cosine", "dot", "l2"]

# Scores computed at once: blocks of queries x num_rows stay near this many elements (memory bound).
_BLOCK_ELEMENTS = 1 << 24


def _unit_rows(x: NDArray[np.floating]) -> NDArray[np.floating]:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    # A zero vector has no direction: its cosine with anything is defined as 0.
    unit: NDArray[np.floating] = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return unit


def most_similar(
    table: NDArray[np.floating],
    queries: ArrayLike,
    k: int = 10,
    *,
    metric: Metric = "cosine",
    exclude_self: bool = False,
) -> Tuple[NDArray[np.int64], NDArray[np.floating]]:
    """The ``k`` rows of ``table`` most similar to each query.

    Parameters
    ----------
    table : ndarray, shape (num_rows, dim), float32 or float64
    queries : int, array of ints, or array of vectors
        Row ids of ``table`` (an int or an integer array of shape ``(q,)``), or query vectors
        (shape ``(dim,)`` or ``(q, dim)``).
    k : int
        Neighbours per query (at most ``num_rows``, fewer when ``exclude_self`` leaves fewer).
    metric : {"cosine", "dot", "l2"}
        "cosine" and "dot" return the highest scores first; "l2" returns Euclidean distances,
        smallest first. A zero vector has cosine 0 with everything.
    exclude_self : bool
        With row-id queries, leave each query's own row out of its neighbours.

    Returns
    -------
    ids : int64 array, shape (q, k) (or (k,) for a single query)
    scores : array of the table's dtype, same shape, best first (equal scores in id order).

    The result equals the numpy brute force: normalise (cosine), ``queries @ table.T``, then
    ``argpartition`` and a sort.
    """
    if not isinstance(table, np.ndarray):
        raise TypeError(f"table must be a numpy array, got {type(table).__name__}")
    if table.dtype not in (np.float32, np.float64):
        raise TypeError(f"table must have dtype float32 or float64, got {table.dtype}")
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D, got shape {table.shape}")
    if metric not in ("cosine", "dot", "l2"):
        raise ValueError(f"metric must be 'cosine', 'dot' or 'l2', got {metric!r}")
    k = operator.index(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_rows, dim = table.shape

    q = np.asarray(queries)
    single = q.ndim == 0 or (q.ndim == 1 and q.dtype.kind == "f")
    self_ids = None
    if q.dtype.kind in "iu":
        if q.ndim > 1:
            raise ValueError(f"row-id queries must be an int or 1-D, got shape {q.shape}")
        ids = np.atleast_1d(q).astype(np.int64)
        bad = np.flatnonzero((ids < 0) | (ids >= num_rows))
        if bad.size:
            raise IndexError(f"queries[{bad[0]}] = {ids[bad[0]]} is out of bounds for a table with {num_rows} rows")
        vectors = table[ids]
        self_ids = ids
    elif q.dtype.kind == "f":
        vectors = np.atleast_2d(q).astype(table.dtype, copy=False)
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise ValueError(f"query vectors must have shape (dim,) or (q, dim) with dim={dim}, got {q.shape}")
    else:
        raise TypeError(f"queries must be row ids (integers) or vectors (floats), got dtype {q.dtype}")
    if exclude_self and self_ids is None:
        raise ValueError("exclude_self=True needs row-id queries")

    k_eff = min(k, num_rows - (1 if exclude_self else 0))
    n_q = vectors.shape[0]
    out_ids = np.zeros((n_q, max(k_eff, 0)), np.int64)
    out_scores = np.zeros((n_q, max(k_eff, 0)), table.dtype)
    if k_eff <= 0 or n_q == 0:
        return (out_ids[0], out_scores[0]) if single else (out_ids, out_scores)

    if metric == "cosine":
        keys, vectors = _unit_rows(table), _unit_rows(vectors)
    else:
        keys = table
    sq_norms = np.einsum("ij,ij->i", table, table) if metric == "l2" else None

    block = max(1, _BLOCK_ELEMENTS // max(num_rows, 1))
    for start in range(0, n_q, block):
        stop = min(n_q, start + block)
        scores = vectors[start:stop] @ keys.T
        if metric == "l2":
            # |q - t|^2 = |q|^2 - 2 q.t + |t|^2; ranked by the negated squared distance.
            q_sq = np.einsum("ij,ij->i", vectors[start:stop], vectors[start:stop])
            assert sq_norms is not None  # computed above for "l2"
            scores = -np.maximum(q_sq[:, None] - 2 * scores + sq_norms[None, :], 0)
        if exclude_self:
            assert self_ids is not None  # checked above
            scores[np.arange(stop - start), self_ids[start:stop]] = -np.inf
        if k_eff < num_rows:
            part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
        else:
            part = np.broadcast_to(np.arange(num_rows), (stop - start, num_rows))
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        top = np.take_along_axis(part, order, axis=1)
        top_scores = np.take_along_axis(part_scores, order, axis=1)
        out_ids[start:stop] = top
        out_scores[start:stop] = np.sqrt(-top_scores) if metric == "l2" else top_scores
    return (out_ids[0], out_scores[0]) if single else (out_ids, out_scores)
