"""Forward lookups: gather rows by id and pooled bag lookups."""

from __future__ import annotations

import operator
from typing import Any, Literal, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core, _lowp
from ._arrays import as_array, as_ids, as_values

PoolMode = Literal["sum", "mean", "max"]
BoundsMode = Literal["raise", "zero"]
Table = Union[NDArray[Any], _lowp.BFloat16Table, _lowp.QuantizedTable]


def gather(
    table: Table,
    ids: ArrayLike,
    *,
    out: Optional[NDArray[np.floating]] = None,
    bounds: BoundsMode = "raise",
    dtype: Optional[str] = None,
) -> Any:
    """Rows of ``table`` at ``ids``: the same result as ``table[ids]``.

    Parameters
    ----------
    table : ndarray of shape (num_rows, dim), BFloat16Table or QuantizedTable
        The embedding table: float32, float64 or float16 values, or a reduced-precision table
        (:func:`to_bfloat16`, :func:`quantize_rows`). Read-only tables are fine; a
        non-C-contiguous one is copied first.
    ids : array_like of int32 or int64, any shape
        Row ids. Negative ids are an error (numpy would wrap them around; embtab does not).
    out : ndarray, optional
        Where to write the result: shape ``ids.shape + (dim,)``, the result dtype (below),
        C-contiguous and writeable. It is never copied or cast. It may overlap the table or the
        ids (the result is then as if they had been read first, as with ``np.take(..., out=)``),
        and a call that raises leaves it untouched.
    bounds : {"raise", "zero"}
        What an id that is negative or >= num_rows does: "raise" an IndexError (default), or
        "zero": read as a row of zeros (as FBGEMM's bounds-check modes do for production traffic);
        the function then returns ``(result, num_invalid)``.
    dtype : {None, "float16", "bfloat16", "int8"}
        The storage format, needed only for a raw uint16 array of bfloat16 bits
        (``dtype="bfloat16"``); float16 arrays, :class:`BFloat16Table` and :class:`QuantizedTable`
        are recognized. Reduced-precision rows are widened to float32 as they are read.

    Returns
    -------
    ndarray of shape ``ids.shape + (dim,)``: float64 for a float64 table, float32 for every other
    format; with ``bounds="zero"`` the tuple ``(ndarray, num_invalid)``.

    Raises
    ------
    IndexError
        An id is negative or >= num_rows (the message names its position and value).
    TypeError
        ``table`` is not one of the formats above, ``ids`` is not an integer array (float, bool and
        uint64 ids are refused), or ``out`` has another dtype.
    ValueError
        ``table`` is not 2-D, ``dtype`` is unknown or contradicts the table, or ``out`` has the
        wrong shape, is not C-contiguous or is read-only.
    """
    table, out = as_array(table, "table"), as_array(out, "out")
    storage, table_format = _lowp.storage(table)
    return _core.gather(storage, as_ids(ids), out, bounds, dtype, table_format)


def _num_rows(table: Any) -> Optional[int]:
    shape = getattr(table, "shape", None)
    return int(shape[0]) if isinstance(shape, tuple) and len(shape) == 2 else None


def _padding_row(padding_idx: Any, num_rows: Optional[int]) -> int:
    """padding_idx as a row, torch's rule: an int in [-num_rows, num_rows), negative counts from the end."""
    try:
        row = operator.index(padding_idx)
    except TypeError:
        raise TypeError(f"padding_idx must be an integer or None, got {type(padding_idx).__name__}") from None
    if num_rows is None:
        if row < 0:
            raise ValueError(f"a negative padding_idx ({row}) needs the table, to count from its end")
        return row
    if not -num_rows <= row < num_rows:
        raise ValueError(f"padding_idx must be within [-{num_rows}, {num_rows}) for a table with {num_rows} rows, got {row}")
    return row + num_rows if row < 0 else row


def bag_arguments(
    ids: ArrayLike,
    offsets: Optional[ArrayLike],
    weights: Optional[ArrayLike],
    *,
    num_rows: Optional[int],
    weights_like: Any,
    include_last_offset: bool,
    padding_idx: Optional[int],
    check_ids: bool,
) -> Tuple[Any, Any, Any, Optional[NDArray[np.bool_]]]:
    """``(ids, offsets, weights, kept)`` for the compiled layer: torch-style offsets completed to
    CSR, and with ``padding_idx`` the padding entries left out of their bags (``kept`` is then the
    mask of the flat positions that remain, else None). ``weights_like`` gives list weights their
    dtype.

    When the bags are rewritten, the compiled layer first checks every argument as the caller gave
    it (with ``check_ids`` and a known ``num_rows``, every id against the table too), so that errors
    name the caller's positions (``ids[1, 2]``), not those of the rewritten bags.
    """
    ids = as_ids(ids)
    if offsets is not None:
        offsets = as_ids(offsets)
    if include_last_offset and padding_idx is None:
        return ids, offsets, weights, None
    padding = None if padding_idx is None else _padding_row(padding_idx, num_rows)
    check_rows = num_rows if check_ids and num_rows is not None else -1
    csr = _core.bag_offsets(ids, offsets, bool(include_last_offset), check_rows)
    ids = np.asarray(ids)
    if padding is None:
        return ids, (None if ids.ndim == 2 else csr), weights, None
    if weights is not None:
        weights = as_values(weights, weights_like)
        if np.shape(weights) != ids.shape:  # the compiled layer names the mismatch
            return ids, (None if ids.ndim == 2 else csr), weights, None
        weights = np.asarray(weights).reshape(-1)
    flat = ids.reshape(-1)
    kept = flat != padding
    kept_before = np.concatenate(([0], np.cumsum(kept, dtype=np.int64)))
    return flat[kept], kept_before[csr], (None if weights is None else weights[kept]), kept


def gather_bags(
    table: Table,
    ids: ArrayLike,
    offsets: Optional[ArrayLike] = None,
    *,
    mode: PoolMode = "sum",
    weights: Optional[ArrayLike] = None,
    padding_idx: Optional[int] = None,
    include_last_offset: bool = True,
    out: Optional[NDArray[np.floating]] = None,
    return_argmax: bool = False,
    bounds: BoundsMode = "raise",
    dtype: Optional[str] = None,
) -> Any:
    """Pooled lookup ("embedding bag"): one output row per bag of ids.

    Bag ``b`` holds ``ids[offsets[b]:offsets[b + 1]]`` when ``ids`` is 1-D and ``offsets`` a CSR
    index pointer, or ``ids[b]`` when ``ids`` is 2-D ``(num_bags, bag_len)`` and ``offsets`` is None.
    Per bag the result equals ``table[bag].sum(0)``, ``.mean(0)`` or ``.max(0)`` (within float
    rounding; rows are added in their original order). An empty bag gives a zero row in every mode.
    Every table format, mode and option combines with every other.

    Parameters
    ----------
    table : ndarray of shape (num_rows, dim), BFloat16Table or QuantizedTable
        As in :func:`gather`. 8-bit rows are summed by FBGEMM's rule (see :class:`QuantizedTable`).
    ids : array_like of int32 or int64, 1-D (with ``offsets``) or 2-D (without)
    offsets : array_like of int32 or int64, optional
        CSR form (the default, ``include_last_offset=True``): ``num_bags + 1`` entries,
        ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == len(ids)``. With
        ``include_last_offset=False``: ``num_bags`` entries, the start of each bag, as
        ``torch.nn.functional.embedding_bag`` takes them by default.
    mode : {"sum", "mean", "max"}
    weights : ndarray, same shape as ``ids`` and the table's dtype, optional
        Multiplies each row before pooling ("sum" and "mean" only). With "mean", embtab divides
        the weighted sum by the number of ids in the bag: ``sum(w_i * row_i) / len(bag)``. torch
        refuses this combination (its ``per_sample_weights`` work with ``mode="sum"`` only).
    padding_idx : int, optional
        As torch's ``padding_idx``: entries equal to it are left out of their bag (and of a mean's
        count; a bag of padding only gives zeros). An int in ``[-num_rows, num_rows)``; negative
        values count from the end.
    include_last_offset : bool
        True (default): ``offsets`` is the CSR index pointer, ending with ``len(ids)`` (the same
        meaning as torch's argument of that name). False: torch's default convention, one start
        per bag.
    out : ndarray of shape (num_bags, dim), optional
        Written in place; must have the result dtype, be C-contiguous and writeable. As in
        :func:`gather`, it may overlap the inputs, and a call that raises leaves it untouched.
    return_argmax : bool
        With ``mode="max"``, also return an int64 ``(num_bags, dim)`` array holding, for each output
        element, the id of the row that won (the first one on ties; -1 for empty bags).
    bounds : {"raise", "zero"}
        "raise" (default): an invalid id raises IndexError. "zero": it reads as a row of zeros
        (it still counts in a mean's denominator and can win a max, with argmax -1), and the
        number of invalid ids is returned as the last element of a tuple.
    dtype : {None, "float16", "bfloat16", "int8"}
        As in :func:`gather`.

    Returns
    -------
    ndarray of shape (num_bags, dim) and the result dtype (float64 for a float64 table, float32
    for every other format; accumulated in it); ``(out, argmax)`` with ``return_argmax=True``;
    ``num_invalid`` appended with ``bounds="zero"``.

    Raises
    ------
    IndexError
        An id is negative or out of range (position and value named).
    TypeError
        A table of no supported format, non-integer ids or offsets, ``weights``/``out`` of
        another dtype.
    ValueError
        Bad shapes, offsets that do not start at 0, decrease or do not end at ``len(ids)`` (a
        short one says to pass ``include_last_offset=False`` for torch-style offsets), 1-D ids
        without offsets or 2-D ids with them, an unknown mode, weights with ``mode="max"``, a
        ``padding_idx`` outside the table.
    """
    table, out = as_array(table, "table"), as_array(out, "out")
    storage, table_format = _lowp.storage(table)
    weights = _lowp.as_weights(as_array(weights, "weights"), table)
    ids, offsets, weights, _ = bag_arguments(ids, offsets, weights, num_rows=_num_rows(table),
                                             weights_like=table if weights is None else weights,
                                             include_last_offset=include_last_offset, padding_idx=padding_idx,
                                             check_ids=bounds == "raise")
    return _core.gather_bags(storage, ids, offsets, mode, weights, out, return_argmax, bounds, dtype, table_format)


def gather_bags_multi(
    tables: Sequence[ArrayLike],
    ids: ArrayLike,
    offsets: ArrayLike,
    *,
    feature_tables: Optional[Sequence[int]] = None,
    mode: Union[PoolMode, Sequence[PoolMode]] = "sum",
    weights: Optional[ArrayLike] = None,
    out: Optional[NDArray[np.floating]] = None,
) -> NDArray[np.floating]:
    """Pooled lookups in many tables with one call: the forward pass of a TorchRec
    ``EmbeddingBagCollection`` or an FBGEMM table-batched embedding.

    A batch holds ``F`` features of ``B`` bags each, feature-major, as a TorchRec
    ``KeyedJaggedTensor`` lays them out: bag ``b`` of feature ``f`` is
    ``ids[offsets[f * B + b]:offsets[f * B + b + 1]]`` and pools rows of
    ``tables[feature_tables[f]]``. Row ``b`` of the result holds the features' pooled rows side by
    side (feature ``f`` at columns ``sum(dims of features < f)`` onwards), as a TorchRec
    ``KeyedTensor``; each equals ``gather_bags`` of that feature's bags. One parallel region covers
    every (feature, bag) pair.

    Parameters
    ----------
    tables : sequence of ndarray, each (num_rows_t, dim_t), all float32 or all float64
    ids : array_like of int32 or int64, 1-D
        The ids of every bag of every feature, one after the other.
    offsets : array_like of int32 or int64, shape (F * B + 1,)
        CSR bag boundaries (``offsets[0] == 0``, non-decreasing, ``offsets[-1] == len(ids)``).
    feature_tables : sequence of int, optional
        The table of each feature (several features may share one); by default feature ``t``
        uses table ``t``.
    mode : {"sum", "mean"} or a sequence of them (one per feature)
    weights : ndarray, optional
        One per id, of the tables' dtype.
    out : ndarray of shape (B, sum of the features' dims), optional
        Written in place; the tables' dtype, C-contiguous, writeable.

    Returns
    -------
    ndarray of shape (B, sum of the features' dims)

    Raises
    ------
    IndexError
        An id out of range for its feature's table (position, value, feature and table named).
    TypeError
        Tables of different or non-float dtypes, non-integer ids or offsets, weights/out of another
        dtype.
    ValueError
        Bad shapes, offsets whose number of bags is not a multiple of the number of features, a
        feature naming no table, mode "max" (TorchRec pools with sum or mean).
    """
    tables = [as_array(t, f"tables[{i}]") for i, t in enumerate(tables)] if isinstance(tables, (list, tuple)) else tables
    return _core.gather_bags_multi(tables, as_ids(ids), as_ids(offsets, "offsets"), feature_tables, mode,
                                   as_values(weights, tables[0] if isinstance(tables, list) and tables else None,
                                             "weights"), as_array(out, "out"))
