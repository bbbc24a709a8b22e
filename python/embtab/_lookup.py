"""Forward lookups: gather rows by id and pooled bag lookups."""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence, Union

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
    table : ndarray, shape (num_rows, dim), float32 or float64
        The embedding table. Read-only tables are fine; a non-C-contiguous one is copied first.
    ids : array_like of int32 or int64, any shape
        Row ids. Negative ids are an error (numpy would wrap them around; embtab does not).
    out : ndarray, optional
        Where to write the result: shape ``ids.shape + (dim,)``, the table's dtype, C-contiguous
        and writeable. It is never copied or cast.
    bounds : {"raise", "zero"}
        What an id that is negative or >= num_rows does: "raise" an IndexError (default), or
        "zero": read as a row of zeros (as FBGEMM's bounds-check modes do for production traffic);
        the function then returns ``(result, num_invalid)``.

    dtype : {None, "float16", "bfloat16", "int8"}
        The storage format of a reduced-precision table (float16 arrays, :class:`BFloat16Table`
        from :func:`to_bfloat16` and :class:`QuantizedTable` from :func:`quantize_rows` are
        recognized; only a raw uint16 array of bfloat16 bits needs ``dtype="bfloat16"``). Those
        tables give float32 results, accumulated in float32, and take float32 ``weights``/``out``.

    Returns
    -------
    ndarray of shape ``ids.shape + (dim,)`` and the table's dtype; with ``bounds="zero"`` the
    tuple ``(ndarray, num_invalid)``.

    Raises
    ------
    IndexError
        An id is negative or >= num_rows (the message names its position and value).
    TypeError
        ``table`` is not float32/float64, ``ids`` is not an integer array (float, bool and uint64
        ids are refused), or ``out`` has another dtype.
    ValueError
        ``table`` is not 2-D, or ``out`` has the wrong shape, is not C-contiguous or is read-only.
    """
    table, out = as_array(table, "table"), as_array(out, "out")
    if _lowp.handles(table, dtype):
        return _lowp.gather(table, ids, out=out, dtype=dtype, bounds=bounds)
    return _core.gather(table, as_ids(ids), out, bounds)


def gather_bags(
    table: Table,
    ids: ArrayLike,
    offsets: Optional[ArrayLike] = None,
    *,
    mode: PoolMode = "sum",
    weights: Optional[ArrayLike] = None,
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

    Parameters
    ----------
    table : ndarray, shape (num_rows, dim), float32 or float64
    ids : array_like of int32 or int64, 1-D (with ``offsets``) or 2-D (without)
    offsets : array_like of int32 or int64, shape (num_bags + 1,), optional
        ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == len(ids)``.
    mode : {"sum", "mean", "max"}
    weights : ndarray, same shape as ``ids`` and the table's dtype, optional
        Multiplies each row before pooling ("sum" and "mean" only): the mean of a bag is
        ``sum(w_i * row_i) / len(bag)``, as in ``torch.nn.functional.embedding_bag``.
    out : ndarray of shape (num_bags, dim), optional
        Written in place; must have the table's dtype, be C-contiguous and writeable.
    return_argmax : bool
        With ``mode="max"``, also return an int64 ``(num_bags, dim)`` array holding, for each output
        element, the id of the row that won (the first one on ties; -1 for empty bags).
    bounds : {"raise", "zero"}
        "raise" (default): an invalid id raises IndexError. "zero": it reads as a row of zeros
        (it still counts in a mean's denominator and can win a max, with argmax -1), and the
        number of invalid ids is returned as the last element of a tuple.

    dtype : {None, "float16", "bfloat16", "int8"}
        The storage format of a reduced-precision table (float16 arrays, :class:`BFloat16Table`
        from :func:`to_bfloat16` and :class:`QuantizedTable` from :func:`quantize_rows` are
        recognized; only a raw uint16 array of bfloat16 bits needs ``dtype="bfloat16"``). Those
        tables give float32 results, accumulated in float32, and take float32 ``weights``/``out``.

    Returns
    -------
    ndarray of shape (num_bags, dim) and the table's dtype; ``(out, argmax)`` with
    ``return_argmax=True``; ``num_invalid`` appended with ``bounds="zero"``.

    Raises
    ------
    IndexError
        An id is negative or out of range (position and value named).
    TypeError
        Non-float table, non-integer ids or offsets, ``weights``/``out`` of another dtype.
    ValueError
        Bad shapes, offsets that do not start at 0, decrease or do not end at ``len(ids)``, 1-D ids
        without offsets or 2-D ids with them, an unknown mode, weights with ``mode="max"``.
    """
    table, out = as_array(table, "table"), as_array(out, "out")
    if _lowp.handles(table, dtype):
        return _lowp.gather_bags(table, ids, offsets, mode=mode, weights=weights, out=out,
                                 return_argmax=return_argmax, dtype=dtype, bounds=bounds)
    if offsets is not None:
        offsets = as_ids(offsets, "offsets")
    return _core.gather_bags(
        table, as_ids(ids), offsets, mode, as_values(weights, table, "weights"), out, return_argmax, bounds
    )



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
