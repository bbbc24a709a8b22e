"""Forward lookups: gather rows by id and pooled bag lookups."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core, _lowp
from ._arrays import as_ids

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
    storage, table_format = _lowp.storage(table)
    return _core.gather(storage, as_ids(ids), out, bounds, dtype, table_format)


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
    Every table format, mode and option combines with every other.

    Parameters
    ----------
    table : ndarray of shape (num_rows, dim), BFloat16Table or QuantizedTable
        As in :func:`gather`. 8-bit rows are summed by FBGEMM's rule (see :class:`QuantizedTable`).
    ids : array_like of int32 or int64, 1-D (with ``offsets``) or 2-D (without)
    offsets : array_like of int32 or int64, shape (num_bags + 1,), optional
        ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == len(ids)``.
    mode : {"sum", "mean", "max"}
    weights : ndarray, same shape as ``ids`` and the result dtype, optional
        Multiplies each row before pooling ("sum" and "mean" only): the mean of a bag is
        ``sum(w_i * row_i) / len(bag)``, as in ``torch.nn.functional.embedding_bag``.
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
        Bad shapes, offsets that do not start at 0, decrease or do not end at ``len(ids)``, 1-D ids
        without offsets or 2-D ids with them, an unknown mode, weights with ``mode="max"``.
    """
    storage, table_format = _lowp.storage(table)
    if offsets is not None:
        offsets = as_ids(offsets)
    return _core.gather_bags(storage, as_ids(ids), offsets, mode, _lowp.as_weights(weights, table), out,
                             return_argmax, bounds, dtype, table_format)

