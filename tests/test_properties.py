"""Property-based tests: every kernel family against an independent numpy or pure-Python reference,
on random dtypes, shapes (empty ones included), bag layouts, duplicate ids, thread counts and SIMD
paths; and bitwise-identical results for every (SIMD path, thread count) on inputs large enough to
be split between threads.

The references are written here from the public docstrings and the algorithms' published
descriptions; they share no code with embtab or with the other test files.
"""

from __future__ import annotations

import math
import struct
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import embtab
from embtab import optim

PATHS = embtab.available_simd_paths()
THREADS = (1, 2, 3, 4)
FLOAT_DTYPES = (np.float32, np.float64)
INDEX_DTYPES = (np.int32, np.int64)

float_dtypes = st.sampled_from(FLOAT_DTYPES)
index_dtypes = st.sampled_from(INDEX_DTYPES)
configs = st.tuples(st.sampled_from(PATHS), st.integers(1, 4))
# Small dims, and the lengths around the SIMD widths (4 / 8 / 16 lanes) where the tails are.
dims = st.one_of(st.integers(0, 9), st.sampled_from([15, 16, 17, 31, 32, 33, 64, 65, 127, 128, 129]))

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Each example runs every (path, thread count) on inputs of ~10^5 elements.
SETTINGS_ALL_CONFIGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def running_with(path: str, threads: int) -> Iterator[None]:
    """Run the block with this SIMD path and thread count, then restore both."""
    previous_path, previous_threads = embtab.simd_path(), embtab.get_num_threads()
    embtab.set_simd_path(path)
    embtab.set_num_threads(threads)
    try:
        yield
    finally:
        embtab.set_simd_path(previous_path)
        embtab.set_num_threads(previous_threads)


def finite(dtype: Any, bound: float) -> st.SearchStrategy[float]:
    return st.floats(-bound, bound, width=np.dtype(dtype).itemsize * 8, allow_subnormal=False)


def bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(bits(actual), bits(expected))


def assert_same(actual: Any, expected: Any) -> None:
    """Bitwise equality of (nested tuples of) arrays and ints."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same(a, e)
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray)
        if expected.dtype.kind == "f":
            assert_same_bits(actual, expected)
        else:
            assert actual.dtype == expected.dtype and actual.shape == expected.shape
            np.testing.assert_array_equal(actual, expected)
    else:
        assert actual == expected


def ids_array(draw: Any, dtype: Any, lo: int, hi: int, shape: Any) -> np.ndarray:
    """Ids of `shape` in [lo, hi] (`shape` forced empty when the range is)."""
    if lo > hi:
        if math.prod(shape) != 0 or len(shape) == 0:
            shape = (0,) + tuple(shape[1:])
        return np.zeros(shape, dtype)
    return draw(hnp.arrays(dtype, shape, elements=st.integers(lo, hi)))


id_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)


@st.composite
def bag_layouts(draw: Any, index_dtype: Any, lo: int, hi: int) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """(ids, offsets or None, CSR offsets as int64): 1-D ids with CSR offsets (empty and long bags
    mixed) or 2-D fixed-length ids."""
    if draw(st.booleans()):
        lengths = draw(st.lists(st.one_of(st.integers(0, 4), st.integers(20, 70)), max_size=8))
        if lo > hi:
            lengths = [0] * len(lengths)
        csr = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
        ids = ids_array(draw, index_dtype, lo, hi, (int(csr[-1]),))
        return ids, csr.astype(draw(index_dtypes)), csr
    num_bags = draw(st.integers(0, 8))
    bag_len = draw(st.integers(0, 6)) if lo <= hi else 0
    ids = ids_array(draw, index_dtype, lo, hi, (num_bags, bag_len))
    return ids, None, np.arange(num_bags + 1, dtype=np.int64) * bag_len


@st.composite
def tables(draw: Any, dtype: Any = None, min_rows: int = 0, max_rows: int = 8, bound: float = 100.0) -> np.ndarray:
    dtype = draw(float_dtypes) if dtype is None else dtype
    shape = (draw(st.integers(min_rows, max_rows)), draw(dims))
    return draw(hnp.arrays(dtype, shape, elements=finite(dtype, bound)))


def with_layout(table: np.ndarray, layout: str) -> np.ndarray:
    """The same values in another memory layout (inputs only: embtab copies or reads them)."""
    if layout == "fortran":
        return np.asfortranarray(table)
    if layout == "strided":
        wide = np.zeros((table.shape[0], 2 * table.shape[1] + 1), table.dtype)
        wide[:, 1::2] = table
        return wide[:, 1::2]
    if layout == "readonly":
        table = table.copy()
        table.setflags(write=False)
    return table


layouts = st.sampled_from(["c", "fortran", "strided", "readonly"])
input_layouts = st.sampled_from(["c", "reversed", "fortran", "readonly"])


def relayout(a: Optional[np.ndarray], layout: str) -> Optional[np.ndarray]:
    """The same values as another kind of input array: a negative-stride view, Fortran order or
    read-only (embtab accepts each for the arrays it only reads)."""
    if a is None or a.ndim == 0:
        return a
    if layout == "reversed":
        return np.flip(np.flip(a, 0).copy(), 0)
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "readonly":
        a = a.copy()
        a.setflags(write=False)
    return a


def as_input(data: Any, a: Optional[np.ndarray]) -> Any:
    return relayout(a, data.draw(input_layouts))


# ------------------------------------------------------------------------------------------------
# gather


@SETTINGS
@given(st.data(), float_dtypes, index_dtypes, configs, layouts)
def test_gather_is_fancy_indexing(data: Any, dtype: Any, index_dtype: Any, config: Tuple[str, int], layout: str) -> None:
    # Any bit pattern (NaN payloads, infinities, -0.0, subnormals) must come back unchanged.
    shape = (data.draw(st.integers(0, 8)), data.draw(dims))
    table = data.draw(hnp.arrays(dtype, shape, elements=st.floats(width=np.dtype(dtype).itemsize * 8)))
    ids = ids_array(data.draw, index_dtype, 0, shape[0] - 1, data.draw(id_shapes))
    with running_with(*config):
        result = embtab.gather(with_layout(table, layout), as_input(data, ids))
    assert_same_bits(result, table[ids])


@SETTINGS
@given(st.data(), tables(max_rows=6), index_dtypes, configs)
def test_gather_bounds_zero_is_padded_table(data: Any, table: np.ndarray, index_dtype: Any, config: Tuple[str, int]) -> None:
    n = table.shape[0]
    ids = ids_array(data.draw, index_dtype, -3, n + 2, data.draw(id_shapes))
    valid = (ids >= 0) & (ids < n)
    padded = np.vstack([table, np.zeros((1, table.shape[1]), table.dtype)])
    with running_with(*config):
        result, num_invalid = embtab.gather(table, as_input(data, ids), bounds="zero")
    assert num_invalid == int((~valid).sum())
    assert_same_bits(result, padded[np.where(valid, ids, n)])


# ------------------------------------------------------------------------------------------------
# gather_bags


def bags_reference(
    table: np.ndarray, ids: np.ndarray, csr: np.ndarray, mode: str, weights: Optional[np.ndarray]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pooled in float64, error bound per element, argmax) by a loop over bags. Ids outside the
    table read as zero rows (that "win" a max with argmax -1)."""
    n, dim = table.shape
    flat = ids.reshape(-1).astype(np.int64)
    w = None if weights is None else weights.reshape(-1).astype(np.float64)
    padded = np.vstack([table.astype(np.float64), np.zeros((1, dim))])
    valid = (flat >= 0) & (flat < n)
    rows_of = np.where(valid, flat, n)
    num_bags = csr.size - 1
    out = np.zeros((num_bags, dim))
    bound = np.zeros((num_bags, dim))
    argmax = np.full((num_bags, dim), -1, np.int64)
    eps = float(np.finfo(table.dtype).eps)
    for b in range(num_bags):
        s, e = int(csr[b]), int(csr[b + 1])
        if s == e:
            continue
        rows = padded[rows_of[s:e]]
        if mode == "max":
            out[b] = rows.max(axis=0)
            first = np.argmax(rows == out[b], axis=0)  # the first maximum
            argmax[b] = np.where(valid[s + first], flat[s + first], -1)
            continue
        terms = rows if w is None else rows * w[s:e, None]
        out[b] = terms.sum(axis=0)
        bound[b] = 2 * (e - s + 2) * eps * np.abs(terms).sum(axis=0)
        if mode == "mean":
            out[b] /= e - s
            bound[b] /= e - s
    return out, bound, argmax


def assert_pooled(actual: np.ndarray, table: np.ndarray, expected: np.ndarray, bound: np.ndarray, mode: str) -> None:
    assert actual.dtype == table.dtype and actual.shape == expected.shape
    if mode == "max":  # exact: a max involves no rounding
        np.testing.assert_array_equal(actual.astype(np.float64), expected)
    else:
        err = np.abs(actual.astype(np.float64) - expected)
        assert np.all(err <= bound + np.finfo(table.dtype).tiny), f"max error {err.max()} over bound"


@SETTINGS
@given(
    st.data(),
    tables(max_rows=8),
    index_dtypes,
    st.sampled_from(["sum", "mean", "max"]),
    st.booleans(),
    st.booleans(),
    configs,
    layouts,
)
def test_gather_bags_matches_loop_over_bags(
    data: Any, table: np.ndarray, index_dtype: Any, mode: str, weighted: bool, use_out: bool,
    config: Tuple[str, int], layout: str,
) -> None:
    ids, offsets, csr = data.draw(bag_layouts(index_dtype, 0, table.shape[0] - 1))
    weights = None
    if weighted and mode != "max":
        weights = data.draw(hnp.arrays(table.dtype, ids.shape, elements=finite(table.dtype, 4.0)))
    num_bags = csr.size - 1
    out = np.full((num_bags, table.shape[1]), np.nan, table.dtype) if use_out else None
    with running_with(*config):
        result = embtab.gather_bags(with_layout(table, layout), as_input(data, ids), as_input(data, offsets), mode=mode,
                                    weights=as_input(data, weights), out=out)
        if mode == "max":
            pooled, argmax = embtab.gather_bags(table, ids, offsets, mode="max", return_argmax=True)
    if use_out:
        assert result is out
    expected, bound, expected_argmax = bags_reference(table, ids, csr, mode, weights)
    assert_pooled(result, table, expected, bound, mode)
    empty = csr[1:] == csr[:-1]
    assert_same_bits(result[empty], np.zeros_like(result[empty]))  # +0.0 in every mode
    if mode == "max":
        assert_same_bits(pooled, result)
        assert argmax.dtype == np.int64
        np.testing.assert_array_equal(argmax, expected_argmax)


@SETTINGS
@given(
    st.data(),
    tables(max_rows=6),
    index_dtypes,
    st.sampled_from(["sum", "mean", "max"]),
    st.booleans(),
    configs,
)
def test_gather_bags_bounds_zero_is_padded_table(
    data: Any, table: np.ndarray, index_dtype: Any, mode: str, weighted: bool, config: Tuple[str, int]
) -> None:
    n = table.shape[0]
    ids, offsets, csr = data.draw(bag_layouts(index_dtype, -3, n + 2))
    weights = None
    if weighted and mode != "max":
        weights = data.draw(hnp.arrays(table.dtype, ids.shape, elements=finite(table.dtype, 4.0)))
    num_invalid = int(((ids < 0) | (ids >= n)).sum())
    with running_with(*config):
        result, count = embtab.gather_bags(table, as_input(data, ids), as_input(data, offsets), mode=mode,
                                           weights=as_input(data, weights), bounds="zero")
        if mode == "max":
            pooled, argmax, count_max = embtab.gather_bags(table, ids, offsets, mode="max", return_argmax=True, bounds="zero")
    assert count == num_invalid
    expected, bound, expected_argmax = bags_reference(table, ids, csr, mode, weights)
    assert_pooled(result, table, expected, bound, mode)
    if mode == "max":
        assert count_max == num_invalid
        assert_same_bits(pooled, result)
        np.testing.assert_array_equal(argmax, expected_argmax)


# ------------------------------------------------------------------------------------------------
# scatter_add and coalesce


@SETTINGS
@given(st.data(), tables(max_rows=6, bound=1e3), index_dtypes, configs)
def test_scatter_add_is_np_add_at(data: Any, target: np.ndarray, index_dtype: Any, config: Tuple[str, int]) -> None:
    ids = ids_array(data.draw, index_dtype, 0, target.shape[0] - 1, data.draw(id_shapes))
    values = data.draw(hnp.arrays(target.dtype, ids.shape + target.shape[1:], elements=finite(target.dtype, 1e3)))
    expected = target.copy()
    np.add.at(expected, ids, values)
    with running_with(*config):
        embtab.scatter_add(target, as_input(data, ids), as_input(data, values))
    assert_same_bits(target, expected)


def coalesce_reference(ids: np.ndarray, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    flat = ids.reshape(-1).astype(np.int64)
    rows = np.unique(flat)
    sums = np.zeros((rows.size, values.shape[-1]), values.dtype)
    np.add.at(sums, np.searchsorted(rows, flat), values.reshape(flat.size, values.shape[-1]))
    return rows, sums


@SETTINGS
@given(st.data(), float_dtypes, index_dtypes, dims, configs)
def test_coalesce_is_unique_and_add_at(data: Any, dtype: Any, index_dtype: Any, dim: int, config: Tuple[str, int]) -> None:
    # Few distinct ids (duplicates), placed anywhere in the index range (the sort's key span).
    top = int(np.iinfo(index_dtype).max)
    base = data.draw(st.sampled_from([0, 1000, top // 2, top - 5]))
    spread = data.draw(st.sampled_from([5, 100, top - base]))
    ids = ids_array(data.draw, index_dtype, base, min(top, base + spread), data.draw(id_shapes))
    # No -0.0: see test_coalesce_of_negative_zero_is_add_at_into_zeros.
    values = data.draw(hnp.arrays(dtype, ids.shape + (dim,), elements=finite(dtype, 1e3).map(lambda x: x + 0.0)))
    with running_with(*config):
        rows, sums = embtab.coalesce(as_input(data, ids), as_input(data, values))
    expected_rows, expected_sums = coalesce_reference(ids, values)
    assert rows.dtype == np.int64
    np.testing.assert_array_equal(rows, expected_rows)
    assert_same_bits(sums, expected_sums)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_coalesce_of_negative_zero_is_add_at_into_zeros(dtype: Any) -> None:
    ids = np.array([3], np.int64)
    values = np.array([[-0.0]], dtype)
    _, sums = embtab.coalesce(ids, values)
    assert_same_bits(sums, coalesce_reference(ids, values)[1])


# ------------------------------------------------------------------------------------------------
# gather_bags_grad


def first_max_winners(table: np.ndarray, ids: np.ndarray, csr: np.ndarray) -> np.ndarray:
    flat = ids.reshape(-1)
    winners = np.full((csr.size - 1, table.shape[1]), -1, np.int64)
    for b in range(csr.size - 1):
        for j in range(table.shape[1]):
            best = None
            for i in range(int(csr[b]), int(csr[b + 1])):
                v = table[flat[i], j]
                if best is None or v > best:
                    best, winners[b, j] = v, flat[i]
    return winners


def bags_grad_reference(
    grad_out: np.ndarray, ids: np.ndarray, csr: np.ndarray, mode: str, weights: Optional[np.ndarray],
    winners: Optional[np.ndarray],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per the docstring: the contributions to each row summed in the order of the ids, in
    grad_out's dtype. Also a bound on the rounding error of another order of roundings."""
    T = grad_out.dtype.type
    flat = ids.reshape(-1).astype(np.int64)
    w = None if weights is None else weights.reshape(-1)
    rows = np.unique(flat)
    where = {int(r): k for k, r in enumerate(rows)}
    grads = np.zeros((rows.size, grad_out.shape[1]), grad_out.dtype)
    magnitude = np.zeros(grads.shape)
    count = np.zeros(rows.size)
    for b in range(csr.size - 1):
        s, e = int(csr[b]), int(csr[b + 1])
        if mode == "max":
            assert winners is not None
            for j in range(grad_out.shape[1]):
                if winners[b, j] >= 0:
                    grads[where[int(winners[b, j])], j] += grad_out[b, j]
            continue
        for i in range(s, e):
            g = grad_out[b] / T(e - s) if mode == "mean" else grad_out[b]
            c = g if w is None else g * w[i]
            k = where[int(flat[i])]
            grads[k] += c
            magnitude[k] += np.abs(c)
            count[k] += 1
    eps = float(np.finfo(grad_out.dtype).eps)
    return rows, grads, 2 * (count[:, None] + 2) * eps * magnitude


def without_negative_zero(a: np.ndarray) -> np.ndarray:
    return a + a.dtype.type(0)  # -0.0 + 0.0 = +0.0; every other value unchanged


@SETTINGS
@given(
    st.data(),
    tables(min_rows=1, max_rows=6, bound=8.0),
    index_dtypes,
    st.sampled_from(["sum", "mean", "max"]),
    st.booleans(),
    configs,
)
def test_gather_bags_grad_matches_loop(
    data: Any, table: np.ndarray, index_dtype: Any, mode: str, weighted: bool, config: Tuple[str, int]
) -> None:
    dtype = table.dtype
    ids, offsets, csr = data.draw(bag_layouts(index_dtype, 0, table.shape[0] - 1))
    weights = None
    if weighted and mode != "max":
        weights = data.draw(hnp.arrays(dtype, ids.shape, elements=finite(dtype, 4.0)))
    grad_out = data.draw(hnp.arrays(dtype, (csr.size - 1, table.shape[1]), elements=finite(dtype, 100.0)))
    winners = first_max_winners(table, ids, csr) if mode == "max" else None
    with running_with(*config):
        if mode == "max":
            rows, grads = embtab.gather_bags_grad(as_input(data, grad_out), as_input(data, ids), offsets, mode="max", table=table)
            _, argmax = embtab.gather_bags(table, ids, offsets, mode="max", return_argmax=True)
            np.testing.assert_array_equal(argmax, winners)
            rows2, grads2 = embtab.gather_bags_grad(grad_out, ids, offsets, mode="max", argmax=argmax)
            np.testing.assert_array_equal(rows2, rows)
            assert_same_bits(grads2, grads)
        else:
            rows, grads = embtab.gather_bags_grad(as_input(data, grad_out), as_input(data, ids), as_input(data, offsets),
                                                  mode=mode, weights=as_input(data, weights))
    expected_rows, expected, bound = bags_grad_reference(grad_out, ids, csr, mode, weights, winners)
    assert rows.dtype == np.int64
    np.testing.assert_array_equal(rows, expected_rows)
    if mode == "max" or (mode == "sum" and weights is None):
        # Only additions, in the documented order: exact, up to the sign of a zero sum (a row's
        # first contribution may be copied or added to +0.0; the docstring does not say).
        assert_same_bits(without_negative_zero(grads), without_negative_zero(expected))
    else:
        # A product may be fused into the addition (FMA): a few roundings apart.
        assert grads.dtype == expected.dtype and grads.shape == expected.shape
        err = np.abs(grads.astype(np.float64) - expected)
        assert np.all(err <= bound + np.finfo(dtype).tiny), f"max error {err.max()} over bound"


# ------------------------------------------------------------------------------------------------
# Optimizers: small references of the documented update rules, in the documented order of
# operations and the table's dtype (compared to a few roundings: numpy may fuse or reorder).


class RefSGD:
    def __init__(self, table: np.ndarray, lr: float) -> None:
        self.table, self.lr = table, lr
        self.state: Dict[str, Any] = {}

    def update(self, rows: np.ndarray, g: np.ndarray) -> None:
        T = self.table.dtype.type
        self.table[rows] += T(-self.lr) * g  # row += (-lr) * g


class RefAdagrad:
    def __init__(self, table: np.ndarray, lr: float, eps: float, initial_accumulator_value: float, lr_decay: float) -> None:
        self.table, self.lr, self.eps, self.lr_decay = table, lr, eps, lr_decay
        self.state = {"sum": np.full(table.shape, initial_accumulator_value, table.dtype), "step": 0}

    def update(self, rows: np.ndarray, g: np.ndarray) -> None:
        T = self.table.dtype.type
        clr = self.lr / (1 + (self.state["step"] - 1) * self.lr_decay)
        acc = self.state["sum"]
        acc[rows] += g * g  # sum += g * g
        self.table[rows] += T(-clr) * (g / (np.sqrt(acc[rows]) + T(self.eps)))  # row += (-clr) * (g / (sqrt(sum) + eps))


class RefRowWiseAdagrad:
    def __init__(self, table: np.ndarray, lr: float, eps: float, initial_accumulator_value: float, weight_decay: float) -> None:
        self.table, self.lr, self.eps, self.wd = table, lr, eps, weight_decay
        self.state = {"sum": np.full(table.shape[0], initial_accumulator_value, table.dtype)}

    def update(self, rows: np.ndarray, g: np.ndarray) -> None:
        T = self.table.dtype.type
        if self.wd:
            g = g + T(self.wd) * self.table[rows]  # g += weight_decay * row
        mean_sq = (g * g).mean(axis=1) if g.shape[1] else np.zeros(rows.size, g.dtype)
        acc = self.state["sum"]
        acc[rows] += mean_sq  # sum[r] += mean(g * g)
        self.table[rows] -= (T(self.lr) / (np.sqrt(acc[rows]) + T(self.eps)))[:, None] * g


class RefAdam:
    """torch.optim.SparseAdam's order of operations (the docstring: "same operations in the same
    order"): the moments move by (g - m) * (1 - beta1) and (g * g - v) * (1 - beta2)."""

    def __init__(self, table: np.ndarray, lr: float, betas: Tuple[float, float], eps: float) -> None:
        self.table, self.lr, self.betas, self.eps = table, lr, betas, eps
        self.state = {"exp_avg": np.zeros_like(table), "exp_avg_sq": np.zeros_like(table), "step": 0}

    def update(self, rows: np.ndarray, g: np.ndarray) -> None:
        T = self.table.dtype.type
        b1, b2 = self.betas
        step = self.state["step"]
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        m_old, v_old = m[rows], v[rows]
        dm = (g - m_old) * T(1 - b1)
        dv = (g * g - v_old) * T(1 - b2)
        m[rows] = m_old + dm
        v[rows] = v_old + dv
        step_size = self.lr * math.sqrt(1 - b2**step) / (1 - b1**step)
        self.table[rows] += T(-step_size) * ((dm + m_old) / (np.sqrt(dv + v_old) + T(self.eps)))


def reference_step(ref: Any, ids: np.ndarray, grads: np.ndarray) -> None:
    """Sum the gradients of repeated ids, then update each distinct row once."""
    if "step" in ref.state:
        ref.state["step"] += 1
    rows, g = coalesce_reference(ids, grads)
    ref.update(rows, g)


@st.composite
def optimizers(draw: Any) -> Tuple[str, Callable[[np.ndarray], Any], Callable[[np.ndarray], Any]]:
    """(name, embtab optimizer factory, reference factory) with random hyperparameters."""
    name = draw(st.sampled_from(["sgd", "adagrad", "rowwise", "adam"]))
    lr = draw(st.floats(1e-3, 0.5))
    if name == "sgd":
        return name, lambda t: optim.SGD(t, lr), lambda t: RefSGD(t, lr)
    if name == "adagrad":
        eps = draw(st.sampled_from([1e-10, 1e-6, 1e-3]))
        init = draw(st.sampled_from([0.0, 0.1, 1.0]))
        decay = draw(st.sampled_from([0.0, 0.01, 0.5]))
        return name, lambda t: optim.Adagrad(t, lr, eps, init, decay), lambda t: RefAdagrad(t, lr, eps, init, decay)
    if name == "rowwise":
        eps = draw(st.sampled_from([1e-8, 1e-4]))
        init = draw(st.sampled_from([0.0, 0.1]))
        wd = draw(st.sampled_from([0.0, 0.002, 0.01]))
        return (name, lambda t: optim.RowWiseAdagrad(t, lr, eps, init, wd),
                lambda t: RefRowWiseAdagrad(t, lr, eps, init, wd))
    betas = (draw(st.floats(0.0, 0.99)), draw(st.floats(0.0, 0.999)))
    eps = draw(st.sampled_from([1e-8, 1e-3]))
    note(f"Adam(lr={lr!r}, betas={betas!r}, eps={eps!r})")
    return name, lambda t: optim.Adam(t, lr, betas, eps), lambda t: RefAdam(t, lr, betas, eps)


@SETTINGS
@given(st.data(), tables(min_rows=1, max_rows=8, bound=4.0), index_dtypes, configs)
def test_optimizer_step_matches_update_rule(data: Any, table: np.ndarray, index_dtype: Any, config: Tuple[str, int]) -> None:
    dtype = table.dtype
    name, make, make_ref = data.draw(optimizers())
    opt, ref = make(table), make_ref(table.copy())
    if name == "rowwise" and ref.wd:
        # Gradients on a 1/4 grid: nonzero ones outweigh weight_decay * row (|.| <= 0.16 here),
        # so that g + wd * row never cancels (where rounding differences would blow up).
        grad_values = st.integers(-32, 32).map(lambda k: k / 4)
    else:
        grad_values = finite(dtype, 8.0)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for _ in range(data.draw(st.integers(1, 3))):
        ids = ids_array(data.draw, index_dtype, 0, table.shape[0] - 1, data.draw(id_shapes))
        grads = data.draw(hnp.arrays(dtype, ids.shape + (table.shape[1],), elements=grad_values))
        with running_with(*config):
            opt.step(as_input(data, ids), as_input(data, grads))
        reference_step(ref, ids, grads)
        np.testing.assert_allclose(opt.table, ref.table, rtol=rtol, atol=rtol)
        assert opt.state.keys() == ref.state.keys()
        for key, value in ref.state.items():
            if isinstance(value, np.ndarray):
                assert opt.state[key].dtype == dtype
                np.testing.assert_allclose(opt.state[key], value, rtol=rtol, atol=rtol * 1e-2, err_msg=key)
            else:
                assert opt.state[key] == value, key


@SETTINGS
@given(
    st.data(),
    tables(min_rows=1, max_rows=8, bound=4.0),
    index_dtypes,
    st.sampled_from(["sum", "mean", "max"]),
    st.booleans(),
    configs,
)
def test_step_bags_is_step_of_bags_grad(
    data: Any, table: np.ndarray, index_dtype: Any, mode: str, weighted: bool, config: Tuple[str, int]
) -> None:
    dtype = table.dtype
    _, make, _ = data.draw(optimizers())
    fused, split = make(table), make(table.copy())
    for _ in range(data.draw(st.integers(1, 2))):
        ids, offsets, csr = data.draw(bag_layouts(index_dtype, 0, table.shape[0] - 1))
        weights = None
        if weighted and mode != "max":
            weights = data.draw(hnp.arrays(dtype, ids.shape, elements=finite(dtype, 2.0)))
        grad_out = data.draw(hnp.arrays(dtype, (csr.size - 1, table.shape[1]), elements=finite(dtype, 8.0)))
        with running_with(*config):
            split.step(*embtab.gather_bags_grad(grad_out, ids, offsets, mode=mode, weights=weights, table=split.table))
            fused.step_bags(as_input(data, grad_out), as_input(data, ids), as_input(data, offsets), mode=mode,
                            weights=as_input(data, weights))
        assert_same_bits(fused.table, split.table)
        for key, value in split.state.items():
            if isinstance(value, np.ndarray):
                assert_same_bits(fused.state[key], value)
            else:
                assert fused.state[key] == value


# ------------------------------------------------------------------------------------------------
# Hashing: pure-Python references from the published algorithms.

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF


def rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & M32


def rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def murmur3_x86_32(data: bytes, seed: int) -> int:
    """MurmurHash3_x86_32 (aappleby/smhasher)."""
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed
    end = len(data) // 4 * 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = rotl32((k * c1) & M32, 15) * c2 & M32
        h = (rotl32(h ^ k, 13) * 5 + 0xE6546B64) & M32
    tail = data[end:]
    if tail:
        k = int.from_bytes(tail, "little")
        h ^= rotl32((k * c1) & M32, 15) * c2 & M32
    h ^= len(data) & M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    return k ^ (k >> 33)


def murmur3_x64_128(data: bytes, seed: int) -> Tuple[int, int]:
    """MurmurHash3_x64_128 (aappleby/smhasher): (h1, h2)."""
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F
    h1 = h2 = seed
    end = len(data) // 16 * 16
    for i in range(0, end, 16):
        k1 = int.from_bytes(data[i:i + 8], "little")
        k2 = int.from_bytes(data[i + 8:i + 16], "little")
        h1 ^= rotl64((k1 * c1) & M64, 31) * c2 & M64
        h1 = (rotl64(h1, 27) + h2) & M64
        h1 = (h1 * 5 + 0x52DCE729) & M64
        h2 ^= rotl64((k2 * c2) & M64, 33) * c1 & M64
        h2 = (rotl64(h2, 31) + h1) & M64
        h2 = (h2 * 5 + 0x38495AB5) & M64
    tail = data[end:]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= rotl64((k2 * c2) & M64, 33) * c1 & M64
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= rotl64((k1 * c1) & M64, 31) * c2 & M64
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & M64
    h2 = (h2 + h1) & M64
    h1, h2 = fmix64(h1), fmix64(h2)
    h1 = (h1 + h2) & M64
    h2 = (h2 + h1) & M64
    return h1, h2


def fnv1a_int8(data: bytes) -> int:
    """fastText's Dictionary::hash: FNV-1a 32 with each byte sign-extended as int8."""
    h = 2166136261
    for byte in data:
        h ^= (byte | 0xFFFFFF00) if byte & 0x80 else byte
        h = (h * 16777619) & M32
    return h


def subwords_of_text(word: str, minn: int, maxn: int) -> List[str]:
    """fastText's computeSubwords on characters: the n-grams of "<word>" with minn <= n <= maxn,
    by start then by length, without a 1-character n-gram at either end ("<" and ">")."""
    w = "<" + word + ">"
    grams = []
    for i in range(len(w)):
        for n in range(1, maxn + 1):
            if i + n > len(w):
                break
            if n >= minn and not (n == 1 and (i == 0 or i + n == len(w))):
                grams.append(w[i:i + n])
    return grams


def subwords_of_bytes(word: bytes, minn: int, maxn: int) -> List[bytes]:
    """The same on raw bytes, as fastText does it: a character is a byte that is not a UTF-8
    continuation byte (10xxxxxx) plus the continuation bytes after it."""
    w = b"<" + word + b">"
    starts = [i for i in range(len(w)) if w[i] & 0xC0 != 0x80]
    grams = []
    for i in starts:
        j = i
        for n in range(1, maxn + 1):
            if j >= len(w):
                break
            j += 1
            while j < len(w) and w[j] & 0xC0 == 0x80:
                j += 1
            if n >= minn and not (n == 1 and (i == 0 or j == len(w))):
                grams.append(w[i:j])
    return grams


def subword_ids(grams_per_word: Sequence[Sequence[bytes]], bucket: int, offset: int) -> Tuple[np.ndarray, np.ndarray]:
    ids = [offset + fnv1a_int8(g) % bucket for grams in grams_per_word for g in grams]
    offsets = np.concatenate([[0], np.cumsum([len(g) for g in grams_per_word], dtype=np.int64)]).astype(np.int64)
    return np.array(ids, dtype=np.int64), offsets


def test_references_reproduce_published_vectors() -> None:
    """The pure-Python references above agree with the published known answers (so a property
    failure below points at embtab, not at the reference)."""
    assert murmur3_x86_32(b"", 1) == 0x514E28B7
    assert murmur3_x86_32(b"", 0xFFFFFFFF) == 0x81F16F39
    assert murmur3_x86_32(b"foo", 42) == 0xB12F489E
    assert murmur3_x86_32(b"Hello, world!", 0x9747B28C) == 0x24884CBA
    assert murmur3_x86_32("日本語".encode(), 0) == 0xA5A47297
    assert murmur3_x86_32(b"aaaiTBFZ", 0) == 0x80000000
    # SMHasher's verification value for x86_32.
    digests = b"".join(struct.pack("<I", murmur3_x86_32(bytes(range(i)), 256 - i)) for i in range(256))
    assert murmur3_x86_32(digests, 0) == 0xB0F57EE3
    for key, seed, digest in [(b"hello", 0, "029bbd41b3a7d8cb191dae486a901e5b"), (b"hello", 42, "086faf60c9b3b8c47abcefb075b83423"),
                              (b"The quick brown fox jumps over the lazy dog", 0, "6c1b07bc7bbc4be347939ac4a93c437a")]:
        assert struct.pack("<QQ", *murmur3_x64_128(key, seed)).hex() == digest
    digests = b"".join(struct.pack("<QQ", *murmur3_x64_128(bytes(range(i)), 256 - i)) for i in range(256))
    assert struct.unpack("<I", struct.pack("<QQ", *murmur3_x64_128(digests, 0))[:4])[0] == 0x6384BA69
    assert fnv1a_int8(b"a") == 0xE40C292C
    assert fnv1a_int8("<中文>".encode()) == 0xDF242753
    assert fnv1a_int8("<café".encode()) % 2_000_000 == 794639
    assert subwords_of_text("中文", 3, 6) == ["<中文", "<中文>", "中文>"]
    assert subwords_of_text("ab", 1, 2) == ["<a", "a", "ab", "b", "b>"]
    assert subwords_of_bytes("中文".encode(), 3, 6) == [g.encode() for g in ["<中文", "<中文>", "中文>"]]
    assert subwords_of_bytes(b"ab", 1, 2) == [b"<a", b"a", b"ab", b"b", b"b>"]


# Text with non-ASCII characters (accents, CJK, emoji: 2, 3 and 4 UTF-8 bytes) and NULs.
words = st.text(alphabet=st.one_of(st.characters(max_codepoint=0x7F), st.characters(codec="utf-8")), max_size=24)
keys = st.one_of(words, st.binary(max_size=40), st.binary(min_size=40, max_size=200))
seeds = st.one_of(st.just(0), st.integers(0, 2**32 - 1))


def as_bytes(key: Any) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


@SETTINGS
@given(st.lists(keys, max_size=30), seeds, st.booleans(), configs)
def test_murmur3_32_matches_reference_on_strings_and_bytes(key_list: List[Any], seed: int, as_array: bool,
                                                          config: Tuple[str, int]) -> None:
    if as_array and key_list and all(isinstance(k, str) for k in key_list):
        given_keys: Any = np.array(key_list)  # 'U' array: numpy drops trailing NULs itself
        key_list = [str(k) for k in given_keys]
    elif as_array and key_list and all(isinstance(k, bytes) for k in key_list):
        given_keys = np.array(key_list)  # 'S' array: likewise
        key_list = [bytes(k) for k in given_keys]
    else:
        given_keys = key_list
    expected = np.array([murmur3_x86_32(as_bytes(k), seed) for k in key_list], dtype=np.uint32)
    with running_with(*config):
        result = embtab.murmur3_32(given_keys, seed)
        signed = embtab.murmur3_32(given_keys, seed, signed=True)
        pairs = embtab.murmur3_128(given_keys, seed)
    assert result.dtype == np.uint32 and signed.dtype == np.int32
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(signed, expected.view(np.int32))
    expected_128 = np.array([murmur3_x64_128(as_bytes(k), seed) for k in key_list], dtype=np.uint64).reshape(-1, 2)
    assert pairs.dtype == np.uint64
    np.testing.assert_array_equal(pairs, expected_128)
    for k in key_list[:3]:
        assert embtab.murmur3_32(k, seed) == murmur3_x86_32(as_bytes(k), seed)


@SETTINGS
@given(
    st.sampled_from([np.int8, np.int16, np.int32, np.uint32, np.int64, np.uint64]).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=8))
    ),
    seeds,
    configs,
)
def test_murmur3_of_integer_arrays_hashes_little_endian_bytes(keys_array: np.ndarray, seed: int,
                                                              config: Tuple[str, int]) -> None:
    width = keys_array.dtype.itemsize
    raw = keys_array.astype(keys_array.dtype.newbyteorder("<")).tobytes()
    chunks = [raw[i:i + width] for i in range(0, len(raw), width)]
    expected = np.array([murmur3_x86_32(c, seed) for c in chunks], dtype=np.uint32).reshape(keys_array.shape)
    expected_128 = np.array([murmur3_x64_128(c, seed) for c in chunks], dtype=np.uint64).reshape(keys_array.shape + (2,))
    with running_with(*config):
        result = embtab.murmur3_32(keys_array, seed)
        pairs = embtab.murmur3_128(keys_array, seed)
    assert result.shape == keys_array.shape
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(pairs, expected_128)
    if keys_array.dtype == np.int32 and keys_array.size:
        # A Python int is hashed as its 4 little-endian bytes too.
        value = int(keys_array.reshape(-1)[0])
        assert embtab.murmur3_32(value, seed) == murmur3_x86_32(struct.pack("<i", value), seed)


@SETTINGS
@given(
    st.one_of(st.lists(keys, max_size=20), hnp.arrays(np.int32, st.integers(0, 20))),
    st.one_of(st.integers(1, 50), st.integers(1, 2**34)),
    seeds,
    configs,
)
def test_hash_buckets_is_murmur_modulo(key_list: Any, num_buckets: int, seed: int, config: Tuple[str, int]) -> None:
    if isinstance(key_list, np.ndarray):
        raw = [struct.pack("<i", int(v)) for v in key_list]
    else:
        raw = [as_bytes(k) for k in key_list]
    expected = np.array([murmur3_x86_32(r, seed) % num_buckets for r in raw], dtype=np.int64)
    with running_with(*config):
        result = embtab.hash_buckets(key_list, num_buckets, seed=seed)
    assert result.dtype == np.int64
    np.testing.assert_array_equal(result, expected)


@SETTINGS
@given(
    st.one_of(st.lists(keys, max_size=20), st.lists(st.lists(keys, max_size=5), min_size=1, max_size=5)),
    st.one_of(st.integers(1, 50), st.integers(1, 2**32)),
    st.booleans(),
    configs,
)
def test_feature_hash_follows_documented_rule(tokens: Any, n_features: int, alternate_sign: bool,
                                              config: Tuple[str, int]) -> None:
    documents = bool(tokens) and isinstance(tokens[0], list)
    flat = [t for doc in tokens for t in doc] if documents else tokens
    signed = [murmur3_x86_32(as_bytes(t), 0) for t in flat]
    signed = [h - 2**32 if h >= 2**31 else h for h in signed]
    expected_cols = np.array([abs(h) % n_features for h in signed], dtype=np.int64)
    expected_signs = np.array([-1.0 if (h < 0 and alternate_sign) else 1.0 for h in signed], dtype=np.float32)
    with running_with(*config):
        result = embtab.feature_hash(tokens, n_features, alternate_sign=alternate_sign)
    np.testing.assert_array_equal(result[0], expected_cols)
    assert result[1].dtype == np.float32
    np.testing.assert_array_equal(result[1], expected_signs)
    if documents:
        assert len(result) == 3
        np.testing.assert_array_equal(result[2], np.concatenate([[0], np.cumsum([len(d) for d in tokens])]))
    else:
        assert len(result) == 2


@SETTINGS
@given(st.lists(keys, max_size=30), configs)
def test_fasttext_hash_is_fnv1a_with_int8_bytes(key_list: List[Any], config: Tuple[str, int]) -> None:
    expected = np.array([fnv1a_int8(as_bytes(k)) for k in key_list], dtype=np.uint32)
    with running_with(*config):
        result = embtab.fasttext_hash(key_list)
    assert result.dtype == np.uint32
    np.testing.assert_array_equal(result, expected)
    for k in key_list[:3]:
        assert embtab.fasttext_hash(k) == fnv1a_int8(as_bytes(k))


@SETTINGS
@given(
    st.lists(words, max_size=12),
    st.integers(1, 5),
    st.integers(0, 4),
    st.one_of(st.integers(1, 100), st.integers(1, 2**33)),
    st.one_of(st.just(0), st.integers(0, 2**40)),
    configs,
)
def test_subword_ngrams_match_compute_subwords(word_list: List[str], minn: int, extra: int, bucket: int, offset: int,
                                               config: Tuple[str, int]) -> None:
    maxn = minn + extra
    expected_ids, expected_offsets = subword_ids(
        [[g.encode() for g in subwords_of_text(w, minn, maxn)] for w in word_list], bucket, offset
    )
    with running_with(*config):
        ids, offsets = embtab.subword_ngrams(word_list, minn=minn, maxn=maxn, bucket=bucket, offset=offset)
    assert ids.dtype == np.int64 and offsets.dtype == np.int64
    np.testing.assert_array_equal(offsets, expected_offsets)
    np.testing.assert_array_equal(ids, expected_ids)


@SETTINGS
@given(st.lists(st.binary(max_size=16), max_size=12), st.integers(1, 4), st.integers(0, 3), configs)
def test_subword_ngrams_of_raw_bytes_match_compute_subwords(word_list: List[bytes], minn: int, extra: int,
                                                            config: Tuple[str, int]) -> None:
    maxn = minn + extra
    expected_ids, expected_offsets = subword_ids([subwords_of_bytes(w, minn, maxn) for w in word_list], 1009, 7)
    with running_with(*config):
        ids, offsets = embtab.subword_ngrams(word_list, minn=minn, maxn=maxn, bucket=1009, offset=7)
    np.testing.assert_array_equal(offsets, expected_offsets)
    np.testing.assert_array_equal(ids, expected_ids)


# ------------------------------------------------------------------------------------------------
# most_similar


@SETTINGS
@given(
    st.data(),
    float_dtypes,
    st.integers(1, 24),
    st.integers(1, 12),
    st.sampled_from(["cosine", "dot", "l2"]),
    st.integers(1, 30),
    st.booleans(),
)
def test_most_similar_is_brute_force(data: Any, dtype: Any, num_rows: int, dim: int, metric: str, k: int,
                                     by_id: bool) -> None:
    # Every element drawn on its own (no fill value), away from zero so no row is a zero vector.
    magnitudes = st.floats(0.0625, 1.0, width=np.dtype(dtype).itemsize * 8)
    elements = st.tuples(magnitudes, st.booleans()).map(lambda t: -t[0] if t[1] else t[0])
    table = data.draw(hnp.arrays(dtype, (num_rows, dim), elements=elements, fill=st.nothing()))
    t64 = table.astype(np.float64)
    exclude_self = by_id and data.draw(st.booleans())
    if by_id:
        query_ids = data.draw(hnp.arrays(np.int64, st.integers(1, 4), elements=st.integers(0, num_rows - 1)))
        queries: Any = query_ids
        q64 = t64[query_ids]
    else:
        queries = data.draw(hnp.arrays(dtype, (data.draw(st.integers(1, 4)), dim), elements=elements, fill=st.nothing()))
        q64 = queries.astype(np.float64)
    if metric == "cosine":
        unit = t64 / np.linalg.norm(t64, axis=1, keepdims=True)
        key = -(q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ unit.T  # smaller is better
    elif metric == "dot":
        key = -(q64 @ t64.T)
    else:
        key = ((q64[:, None, :] - t64[None, :, :]) ** 2).sum(axis=2)
    if exclude_self:
        key[np.arange(len(query_ids)), query_ids] = np.inf
    k_eff = min(k, num_rows - (1 if exclude_self else 0))
    order = np.argsort(key, axis=1, kind="stable")
    # No near-ties among the first k_eff + 1 candidates (their order would be rounding's choice).
    ranked = np.take_along_axis(key, order, axis=1)[:, : k_eff + 1]
    finite_ranked = np.where(np.isfinite(ranked), ranked, 1e300)
    scale = 1.0 + np.abs(np.where(np.isfinite(key), key, 0)).max()
    assume(k_eff == 0 or np.all(np.diff(finite_ranked, axis=1) > 1e-3 * scale))
    ids, scores = embtab.most_similar(table, queries, k, metric=metric, exclude_self=exclude_self)
    # One query (an int, or a vector of shape (dim,)) gives 1-D results.
    one_ids, one_scores = embtab.most_similar(table, queries[0], k, metric=metric, exclude_self=exclude_self)
    expected_ids = order[:, :k_eff]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(one_ids, expected_ids[0])
    assert scores.dtype == one_scores.dtype == dtype
    expected_scores = np.take_along_axis(key, expected_ids, axis=1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    if metric == "l2":
        # Distances from |q|^2 - 2 q.t + |t|^2: compare squares, relative to the norms.
        norms = (q64 ** 2).sum(axis=1)[:, None] + (t64 ** 2).sum(axis=1)[expected_ids]
        assert np.all(np.abs(scores.astype(np.float64) ** 2 - expected_scores) <= tol * norms)
        assert np.all(np.abs(one_scores.astype(np.float64) ** 2 - expected_scores[0]) <= tol * norms[0])
    else:
        np.testing.assert_allclose(scores, -expected_scores, rtol=tol, atol=tol * scale)
        np.testing.assert_allclose(one_scores, -expected_scores[0], rtol=tol, atol=tol * scale)


# ------------------------------------------------------------------------------------------------
# Same bits for every SIMD path and thread count, on inputs big enough to be split between threads
# (the kernels split ~64k ids or ~32k-64k elements per thread).


def same_for_every_config(compute: Callable[[], Any]) -> None:
    """Runs `compute` under every (SIMD path, thread count); all results must be bitwise equal."""
    with running_with(PATHS[0], 1):
        first = compute()
    for path in PATHS:
        for threads in THREADS:
            with running_with(path, threads):
                assert_same(compute(), first)


def random_csr(rng: np.random.Generator, num_bags: int, max_len: int, index_dtype: Any) -> np.ndarray:
    lengths = rng.integers(0, max_len + 1, num_bags)
    lengths[rng.random(num_bags) < 0.01] = 4 * max_len  # a few long bags
    return np.concatenate([[0], np.cumsum(lengths)]).astype(index_dtype)


big_inputs = st.tuples(st.integers(0, 2**32 - 1), float_dtypes, index_dtypes, st.sampled_from([1, 7, 16, 33]))


@SETTINGS_ALL_CONFIGS
@given(big_inputs, st.sampled_from(["sum", "mean", "max"]), st.booleans(), st.booleans())
def test_lookups_same_bits_for_every_config(params: Tuple[int, Any, Any, int], mode: str, weighted: bool,
                                            zero_bounds: bool) -> None:
    seed, dtype, index_dtype, dim = params
    rng = np.random.default_rng(seed)
    num_rows = 3000
    table = rng.standard_normal((num_rows, dim)).astype(dtype)
    offsets = random_csr(rng, 20_000, 12, index_dtype)
    total = int(offsets[-1])
    lo, hi = (-5, num_rows + 5) if zero_bounds else (0, num_rows)
    ids = rng.integers(lo, hi, total).astype(index_dtype)
    weights = rng.standard_normal(total).astype(dtype) if weighted and mode != "max" else None
    bounds = "zero" if zero_bounds else "raise"

    def compute() -> Any:
        rows = embtab.gather(table, ids, bounds=bounds)
        pooled = embtab.gather_bags(table, ids, offsets, mode=mode, weights=weights, bounds=bounds,
                                    return_argmax=mode == "max")
        fixed = embtab.gather_bags(table, ids[: total // 8 * 8].reshape(-1, 8), mode=mode, bounds=bounds,
                                   weights=None if weights is None else weights[: total // 8 * 8].reshape(-1, 8))
        return rows, pooled, fixed

    same_for_every_config(compute)


@SETTINGS_ALL_CONFIGS
@given(big_inputs, st.sampled_from([50, 5000, 2**31 - 1, 2**62]))
def test_sparse_same_bits_for_every_config(params: Tuple[int, Any, Any, int], id_range: int) -> None:
    seed, dtype, index_dtype, dim = params
    rng = np.random.default_rng(seed)
    n = 140_000 if dim < 16 else 40_000  # the sort splits ~32k ids per thread, the sums ~32k elements
    ids = rng.integers(0, min(id_range, np.iinfo(index_dtype).max), n).astype(index_dtype)
    values = rng.standard_normal((n, dim)).astype(dtype)
    small_ids = ids % 5000
    target = rng.standard_normal((5000, dim)).astype(dtype)

    def compute() -> Any:
        updated = target.copy()
        embtab.scatter_add(updated, small_ids, values)
        return updated, embtab.coalesce(ids, values)

    same_for_every_config(compute)


@SETTINGS_ALL_CONFIGS
@given(big_inputs, st.sampled_from(["sum", "mean", "max"]), st.booleans(),
       st.sampled_from(["sgd", "adagrad", "rowwise", "adam"]))
def test_training_same_bits_for_every_config(params: Tuple[int, Any, Any, int], mode: str, weighted: bool,
                                             name: str) -> None:
    seed, dtype, index_dtype, dim = params
    rng = np.random.default_rng(seed)
    num_rows = 2000
    table = rng.standard_normal((num_rows, dim)).astype(dtype)
    offsets = random_csr(rng, 20_000, 12, index_dtype)
    ids = rng.integers(0, num_rows, int(offsets[-1])).astype(index_dtype)
    weights = rng.standard_normal(ids.size).astype(dtype) if weighted and mode != "max" else None
    grad_out = rng.standard_normal((offsets.size - 1, dim)).astype(dtype)
    make: Dict[str, Callable[[np.ndarray], Any]] = {
        "sgd": lambda t: optim.SGD(t, 0.1),
        "adagrad": lambda t: optim.Adagrad(t, 0.1, lr_decay=0.01),
        "rowwise": lambda t: optim.RowWiseAdagrad(t, 0.1, weight_decay=0.01),
        "adam": lambda t: optim.Adam(t, 0.01),
    }

    def compute() -> Any:
        grad = embtab.gather_bags_grad(grad_out, ids, offsets, mode=mode, weights=weights, table=table)
        fused_table, split_table = table.copy(), table.copy()
        fused, split = make[name](fused_table), make[name](split_table)
        fused.step_bags(grad_out, ids, offsets, mode=mode, weights=weights)
        split.step(*grad)
        state = tuple(v for _, v in sorted(fused.state.items()) if isinstance(v, np.ndarray))
        return grad, fused_table, split_table, state

    same_for_every_config(compute)


@SETTINGS_ALL_CONFIGS
@given(st.integers(0, 2**32 - 1), seeds)
def test_hashes_same_bits_for_every_config(seed: int, hash_seed: int) -> None:
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("abcdefgh xyz-éüñ中文日本語😀"))
    word_list = ["".join(alphabet[rng.integers(0, alphabet.size, k)]) for k in rng.integers(0, 20, 16_000)]
    ints = rng.integers(-(2**31), 2**31, 270_000).astype(np.int32)

    def compute() -> Any:
        return (
            embtab.murmur3_32(word_list, hash_seed),
            embtab.murmur3_32(ints, hash_seed),
            embtab.murmur3_128(word_list, hash_seed),
            embtab.hash_buckets(ints.astype(np.int64), 1_000_003, seed=hash_seed),
            embtab.feature_hash(word_list, 2**18),
            embtab.fasttext_hash(word_list),
            embtab.subword_ngrams(word_list, minn=2, maxn=5, bucket=100_000),
        )

    same_for_every_config(compute)


def test_thread_and_path_settings_restored() -> None:
    """The helper used by every property leaves the process as it found it."""
    before = (embtab.simd_path(), embtab.get_num_threads())
    with pytest.raises(RuntimeError):
        with running_with(PATHS[0], 3):
            assert (embtab.simd_path(), embtab.get_num_threads()) == (PATHS[0], 3)
            raise RuntimeError
    assert (embtab.simd_path(), embtab.get_num_threads()) == before
