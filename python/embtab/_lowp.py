"""Reduced-precision tables: float16, bfloat16 and row-wise 8-bit.

Lookups over these tables (``embtab.gather`` / ``embtab.gather_bags``) widen each row to float32 as
it is read, accumulate in float32 and return float32: the same result as the float32 lookup on the
upcast table (``table.astype(np.float32)``, ``BFloat16Table.to_float32()`` or
``QuantizedTable.dequantize()``), with half (float16, bfloat16) or about a quarter (8-bit) of the
table's bytes read.
"""

from __future__ import annotations

import operator
from typing import Any, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core
from ._arrays import aligned_empty

__all__ = ["BFloat16Table", "QuantizedTable", "quantize_rows", "to_bfloat16"]

class BFloat16Table:
    """A table of bfloat16 values, stored as their uint16 bit patterns (numpy has no bfloat16).

    A bfloat16 is the upper half of a float32: same sign and 8-bit exponent, 7 mantissa bits.
    Build one with :func:`to_bfloat16`, or wrap existing bits (e.g. from
    ``torch_tensor.view(torch.int16).numpy().view(np.uint16)``) with ``BFloat16Table(bits)``.

    Parameters
    ----------
    data : ndarray of uint16, shape (num_rows, dim)
        The bit patterns. Wrapped, not copied.
    """

    dtype = "bfloat16"

    def __init__(self, data: NDArray[np.uint16]) -> None:
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data must be a numpy array of uint16, got {type(data).__name__}")
        if data.dtype != np.uint16:
            raise TypeError(f"data must have dtype uint16 (bfloat16 bit patterns), got {data.dtype}")
        if data.ndim != 2:
            raise ValueError(f"data must be 2-D (num_rows, dim), got shape {data.shape}")
        self.data = data

    @property
    def shape(self) -> Tuple[int, int]:
        """(num_rows, dim)."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def to_float32(self) -> NDArray[np.float32]:
        """The exact float32 values (each bfloat16 widened by 16 zero bits)."""
        widened: NDArray[np.float32] = (self.data.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return widened

    def __repr__(self) -> str:
        return f"BFloat16Table(shape={self.shape})"


class QuantizedTable:
    """A row-wise 8-bit quantized table: one uint8 code per value plus a float32 scale and bias
    per row; code ``q`` of row ``r`` stands for ``fma(q, scale[r], bias[r])`` (in float32, rounded
    once after the product and the sum). Sums over bags add a row into the accumulator as
    ``fma(q, scale, acc + bias)`` starting from ``acc = 0``, a weight ``w`` folded into the scale and
    bias (``w * scale``, ``w * bias``): FBGEMM's rule, so that ``gather_bags`` on such a table gives
    bit for bit what torch's ``quantized.embedding_bag_byte_rowwise_offsets`` gives on
    :attr:`packed` (mode "mean" then divides by the bag length). They equal sums of
    :meth:`dequantize` rows to float rounding.

    The codes are stored apart from the scales and biases: ``data`` is a ``(num_rows, dim)`` uint8
    array starting on a 128-byte boundary, ``params`` a ``(num_rows, 2)`` float32 array of (scale,
    bias) per row. A random row of 128 codes then reads one 128-byte pair of cache lines (FBGEMM's
    fused rows of ``dim + 8`` bytes span two), and the 8 bytes of scale and bias per row, 8 MB for a
    million rows, mostly stay in the last-level cache. :attr:`packed` gives the fused layout (a
    copy) for FBGEMM / torch, and :meth:`from_packed` reads it.

    Build one with :func:`quantize_rows`, from parts with ``QuantizedTable(data, scale, bias)``
    (copied), or from fused rows with :meth:`from_packed` (copied).
    """

    dtype = "int8"
    bits = 8

    def __init__(self, data: NDArray[np.uint8], scale: ArrayLike, bias: ArrayLike) -> None:
        data = np.asarray(data)
        if data.dtype != np.uint8:
            raise TypeError(f"data must have dtype uint8, got {data.dtype}")
        if data.ndim != 2:
            raise ValueError(f"data must be 2-D (num_rows, dim), got shape {data.shape}")
        num_rows = data.shape[0]
        self._allocate(num_rows, data.shape[1])
        for name, values, col in (("scale", scale, 0), ("bias", bias, 1)):
            arr = np.asarray(values)
            if arr.dtype.kind != "f":
                raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
            if arr.shape != (num_rows,):
                raise ValueError(f"{name} must have shape ({num_rows},), one per row, got {arr.shape}")
            self.params[:, col] = arr
        self.data[...] = data

    def _allocate(self, num_rows: int, dim: int) -> None:
        self.data: NDArray[np.uint8] = aligned_empty((num_rows, dim), np.uint8)
        self.params: NDArray[np.float32] = aligned_empty((num_rows, 2), np.float32)

    @classmethod
    def from_packed(cls, packed: NDArray[np.uint8]) -> QuantizedTable:
        """Read fused rows of shape ``(num_rows, dim + 8)`` (``dim`` codes, then the float32 scale
        and bias in native byte order: FBGEMM's layout, e.g. from
        ``torch.ops.quantized.embedding_bag_byte_prepack``) into a new table."""
        if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8:
            raise TypeError("packed must be a numpy array of dtype uint8")
        if packed.ndim != 2 or packed.shape[1] < 8:
            raise ValueError(f"packed must be 2-D with dim + 8 >= 8 columns, got shape {packed.shape}")
        dim = packed.shape[1] - 8
        params = np.ascontiguousarray(packed[:, dim:]).view(np.float32)
        return cls(packed[:, :dim], params[:, 0], params[:, 1])

    @property
    def packed(self) -> NDArray[np.uint8]:
        """The rows in FBGEMM's fused layout, ``(num_rows, dim + 8)``: codes, scale, bias (a copy)."""
        num_rows, dim = self.shape
        out = np.empty((num_rows, dim + 8), np.uint8)
        out[:, :dim] = self.data
        out[:, dim:] = self.params.view(np.uint8).reshape(num_rows, 8)
        return out

    @property
    def shape(self) -> Tuple[int, int]:
        """(num_rows, dim) of the table it stands for."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.params.nbytes)

    @property
    def scale(self) -> NDArray[np.float32]:
        """Per-row float32 scale (a view of ``params``)."""
        return self.params[:, 0]

    @property
    def bias(self) -> NDArray[np.float32]:
        """Per-row float32 bias, the row's minimum (a view of ``params``)."""
        return self.params[:, 1]

    def dequantize(self) -> NDArray[np.float32]:
        """The float32 table the codes stand for: ``fma(data, scale[:, None], bias[:, None])``,
        rounded once (what :func:`embtab.gather` returns for every row)."""
        num_rows = self.shape[0]
        table: NDArray[np.float32] = _core.gather((self.data, self.params), np.arange(num_rows, dtype=np.int64), None,
                                                  "raise", None, self.dtype)
        return table

    def __repr__(self) -> str:
        return f"QuantizedTable(shape={self.shape}, bits={self.bits})"


def _as_float32(x: ArrayLike) -> Any:
    """An array; float16 / float64 ones converted to float32 (the compiled layer checks the rest)."""
    arr = np.asarray(x)
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        return arr.astype(np.float32)
    return arr


def to_bfloat16(x: ArrayLike) -> BFloat16Table:
    """Round a table to bfloat16: round to nearest, ties to even.

    Parameters
    ----------
    x : array_like, shape (num_rows, dim), float32 (float16 / float64 are converted to float32 first)

    Returns
    -------
    BFloat16Table
        Its data starts on a 64-byte boundary (so rows of 32 values or multiples of it fill
        whole cache lines). Infinities stay infinite, values beyond the largest bfloat16 round to infinity, and a NaN
        stays a NaN (made quiet, sign kept), as ``torch.Tensor.to(torch.bfloat16)`` does.

    Raises
    ------
    TypeError
        ``x`` is not a float array.
    ValueError
        ``x`` is not 2-D.
    """
    arr = _as_float32(x)
    return BFloat16Table(_core.to_bfloat16_bits(arr, aligned_empty(arr.shape, np.uint16)))


def quantize_rows(table: ArrayLike, bits: int = 8) -> QuantizedTable:
    """Quantize each row to 8-bit codes with its own float32 scale and bias (asymmetric min/max).

    Per row: ``bias = min(row)``, ``scale = float32((max(row) - min(row)) / 255)`` and code
    ``q = rint((x - bias) / scale)`` (ties to even; computed in float64, clamped to [0, 255]), so
    each value decodes to within about ``scale / 2`` of itself and the row's minimum and maximum
    are codes 0 and 255. A constant row (or one whose range rounds to a zero scale) gets
    ``scale = 0`` and all codes 0: it decodes exactly to its value.

    Parameters
    ----------
    table : array_like, shape (num_rows, dim), float32 (float16 / float64 are converted to float32)
    bits : int
        Only 8 is supported.

    Returns
    -------
    QuantizedTable

    Raises
    ------
    TypeError
        ``table`` is not a float array.
    ValueError
        ``bits`` is not 8, ``table`` is not 2-D, or a row holds a NaN or an infinity (or has a
        range ``max - min`` so close to the float32 limit that it would decode to infinity).
    """
    bits = operator.index(bits)
    if bits != 8:
        raise ValueError(f"bits must be 8, got {bits}")
    arr = _as_float32(table)
    quantized = QuantizedTable.__new__(QuantizedTable)
    # (A table that is not 2-D gets outputs it never fills: the compiled layer refuses the table.)
    quantized._allocate(*(arr.shape + (0, 0))[:2])
    _core.quantize_rows_8bit(arr, quantized.data, quantized.params)
    return quantized


def storage(table: Any) -> Tuple[Any, Optional[str]]:
    """What the compiled lookups take for ``table``: the stored arrays (a BFloat16Table's bits, a
    QuantizedTable's pair (codes, params), anything else as it is) and the dtype that a table
    object declares (None for arrays: the compiled layer reads theirs, and checks everything)."""
    if isinstance(table, BFloat16Table):
        return table.data, table.dtype
    if isinstance(table, QuantizedTable):
        return (table.data, table.params), table.dtype
    return table, None


def as_weights(weights: Any, table: Any) -> Any:
    """Per-id weights as an array: lists become arrays of the lookup's result dtype (float64 for a
    float64 table, float32 for every other format); arrays pass untouched (their dtype is checked)."""
    if weights is None or isinstance(weights, np.ndarray):
        return weights
    double = isinstance(table, np.ndarray) and table.dtype == np.float64
    return np.asarray(weights, dtype=np.float64 if double else np.float32)
