"""scatter_add, coalesce and gather_bags_grad against numpy references (np.add.at, np.unique) and
finite differences; every SIMD path and several thread counts."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embtab

FLOATS = [np.float32, np.float64]
INDEX = [np.int32, np.int64]


def coalesce_reference(ids: np.ndarray, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    dim = values.shape[-1]
    rows, inverse = np.unique(ids.ravel(), return_inverse=True)
    sums = np.zeros((rows.size, dim), values.dtype)
    np.add.at(sums, inverse.ravel(), values.reshape(ids.size, dim))
    return rows.astype(np.int64), sums


def bag_layout(ids: np.ndarray, offsets: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(flat ids, offsets) for 1-D ids + offsets or 2-D ids."""
    if offsets is None:
        return ids.ravel(), np.arange(0, ids.size + 1, max(ids.shape[1], 1))[: ids.shape[0] + 1]
    return ids, np.asarray(offsets)


def bags_grad_reference(
    grad_out: np.ndarray,
    ids: np.ndarray,
    offsets: Optional[np.ndarray],
    mode: str,
    weights: Optional[np.ndarray] = None,
    argmax: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    flat, offs = bag_layout(ids, offsets)
    num_bags, dim = grad_out.shape
    lens = np.diff(offs)
    bag_of = np.repeat(np.arange(num_bags), lens)
    rows = np.unique(flat).astype(np.int64)
    if mode == "max":
        full = np.zeros((max(int(rows.max(initial=0)) + 1, 1), dim), grad_out.dtype)
        b, j = np.nonzero(argmax >= 0)  # row-major: bag order
        np.add.at(full, (argmax[b, j], j), grad_out[b, j])
        return rows, full[rows]
    contrib = grad_out[bag_of]
    if mode == "mean":
        contrib = contrib / lens[bag_of].astype(grad_out.dtype)[:, None]
    if weights is not None:
        w = weights.ravel()[:, None]
        contrib = contrib * w if mode == "mean" else w * contrib
    _, sums = coalesce_reference(flat, contrib)
    return rows, sums


# --------------------------------------------------------------------------------------------
# scatter_add


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("index_dtype", INDEX)
@pytest.mark.parametrize("dim", [1, 16, 37, 128])
def test_scatter_add_matches_add_at(each_path_and_threads: Any, dtype: Any, index_dtype: Any, dim: int) -> None:
    rng = np.random.default_rng(dim)
    num_rows = 500
    n = max(64, 300_000 // dim)  # enough work for several threads
    target = rng.standard_normal((num_rows, dim)).astype(dtype)
    ids = rng.integers(0, num_rows, n).astype(index_dtype)
    values = rng.standard_normal((n, dim)).astype(dtype)
    expected = target.copy()
    np.add.at(expected, ids, values)
    embtab.scatter_add(target, ids, values)
    np.testing.assert_array_equal(target, expected)


@pytest.mark.parametrize(
    "ids_kind", ["skewed", "one_row", "sorted", "2d"],
)
def test_scatter_add_distributions(each_path_and_threads: Any, ids_kind: str) -> None:
    rng = np.random.default_rng(1)
    num_rows, dim = 100_000, 8
    n = 60_000
    if ids_kind == "skewed":
        ids = np.minimum(rng.zipf(1.3, n) - 1, num_rows - 1)
    elif ids_kind == "one_row":
        ids = np.full(n, 77)
    elif ids_kind == "sorted":
        ids = np.sort(rng.integers(0, num_rows, n))
    else:
        ids = rng.integers(0, num_rows, (300, n // 300))
    values = rng.standard_normal(ids.shape + (dim,)).astype(np.float32)
    target = rng.standard_normal((num_rows, dim)).astype(np.float32)
    expected = target.copy()
    np.add.at(expected, ids, values)
    embtab.scatter_add(target, ids, values)
    np.testing.assert_array_equal(target, expected)


def test_scatter_add_special_values() -> None:
    target = np.zeros((3, 2), np.float64)
    ids = np.array([0, 0, 1, 2, 2])
    values = np.array([[np.inf, 1], [-np.inf, 2], [np.nan, -0.0], [1e308, 1], [1e308, -1]])
    expected = target.copy()
    with np.errstate(invalid="ignore", over="ignore"):
        np.add.at(expected, ids, values)
    embtab.scatter_add(target, ids, values)
    np.testing.assert_array_equal(target, expected)


def test_scatter_add_empty_and_lists() -> None:
    target = np.ones((4, 3), np.float32)
    embtab.scatter_add(target, np.zeros(0, np.int64), np.zeros((0, 3), np.float32))
    embtab.scatter_add(target, [], np.zeros((0, 3), np.float32))
    np.testing.assert_array_equal(target, 1)
    embtab.scatter_add(target, [1, 1], [[1, 2, 3], [1, 1, 1]])
    np.testing.assert_array_equal(target[1], [3, 4, 5])


@pytest.mark.parametrize("bad", [-1, 1000])
def test_scatter_add_bad_id_leaves_target_untouched(num_threads: int, bad: int) -> None:
    rng = np.random.default_rng(0)
    target = rng.standard_normal((1000, 32)).astype(np.float32)
    before = target.copy()
    ids = rng.integers(0, 1000, 50_000)
    ids[-3] = bad
    values = np.ones((ids.size, 32), np.float32)
    with pytest.raises(IndexError, match=rf"ids\[{ids.size - 3}\] = {bad}"):
        embtab.scatter_add(target, ids, values)
    np.testing.assert_array_equal(target, before)


def test_scatter_add_rejects() -> None:
    target = np.zeros((10, 4), np.float32)
    ids = np.array([1, 2])
    values = np.ones((2, 4), np.float32)
    with pytest.raises(TypeError, match="dtype"):
        embtab.scatter_add(target, ids, values.astype(np.float64))
    with pytest.raises(TypeError, match="dtype"):
        embtab.scatter_add(target.astype(np.float64), ids, values)
    with pytest.raises(TypeError):
        embtab.scatter_add(target, ids.astype(np.float64), values)
    with pytest.raises(TypeError):
        embtab.scatter_add(target, ids, values.astype(np.int64))
    readonly = target.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        embtab.scatter_add(readonly, ids, values)
    with pytest.raises(ValueError, match="C-contiguous"):
        embtab.scatter_add(np.zeros((4, 10), np.float32).T, ids, values)
    with pytest.raises(ValueError, match="C-contiguous"):
        embtab.scatter_add(np.zeros((10, 8), np.float32)[:, ::2], ids, values)
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 5\)"):
        embtab.scatter_add(target, ids, np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        embtab.scatter_add(target, ids, np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        embtab.scatter_add(np.zeros(10, np.float32), ids, values)
    # Read-only and non-contiguous inputs are fine.
    ro_ids, ro_values = ids.copy(), np.ones((4, 4), np.float32)[::2]
    ro_ids.flags.writeable = False
    embtab.scatter_add(target, ro_ids, ro_values)
    np.testing.assert_array_equal(target[[1, 2]], 1)


# --------------------------------------------------------------------------------------------
# coalesce


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("index_dtype", INDEX)
def test_coalesce_matches_numpy(each_path_and_threads: Any, dtype: Any, index_dtype: Any) -> None:
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 20_000, 100_000).astype(index_dtype)
    values = rng.standard_normal((ids.size, 6)).astype(dtype)
    rows, sums = embtab.coalesce(ids, values)
    exp_rows, exp_sums = coalesce_reference(ids, values)
    assert rows.dtype == np.int64 and sums.dtype == dtype
    np.testing.assert_array_equal(rows, exp_rows)
    np.testing.assert_array_equal(sums, exp_sums)


@pytest.mark.parametrize(
    "ids",
    [
        np.array([5, 5, 5, 5], np.int64),
        np.array([2**40, 3, 2**40, 7, 2**62], np.int64),  # wider than 32 bits: the wide sort
        np.array([np.iinfo(np.int64).max, 0, np.iinfo(np.int64).max]),
        np.arange(10_000, dtype=np.int32)[::-1].copy(),
        np.array([[3, 1], [1, 3], [0, 0]], np.int32),
    ],
)
def test_coalesce_id_ranges(num_threads: int, ids: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    values = rng.standard_normal(ids.shape + (3,))
    rows, sums = embtab.coalesce(ids, values)
    exp_rows, exp_sums = coalesce_reference(ids, values)
    np.testing.assert_array_equal(rows, exp_rows)
    np.testing.assert_array_equal(sums, exp_sums)


def test_coalesce_wide_ids_many_threads(each_path_and_threads: Any) -> None:
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 2**50, 69_999)
    ids[::3] = ids[1::3][: ids[::3].size]  # duplicates
    values = rng.standard_normal((ids.size, 2)).astype(np.float32)
    rows, sums = embtab.coalesce(ids, values)
    exp_rows, exp_sums = coalesce_reference(ids, values)
    np.testing.assert_array_equal(rows, exp_rows)
    np.testing.assert_array_equal(sums, exp_sums)


@settings(max_examples=50, deadline=None)
@given(
    ids=st.lists(st.integers(0, 40), max_size=60),
    dim=st.integers(0, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_coalesce_property(ids: list, dim: int, seed: int) -> None:
    ids_arr = np.array(ids, np.int64)
    values = np.random.default_rng(seed).standard_normal((ids_arr.size, dim)).astype(np.float32)
    rows, sums = embtab.coalesce(ids_arr, values)
    exp_rows, exp_sums = coalesce_reference(ids_arr, values)
    np.testing.assert_array_equal(rows, exp_rows)
    assert sums.shape == exp_sums.shape
    np.testing.assert_array_equal(sums, exp_sums)


def test_coalesce_rejects() -> None:
    values = np.ones((3, 2), np.float32)
    with pytest.raises(IndexError, match=r"ids\[1\] = -4 is negative"):
        embtab.coalesce(np.array([1, -4, 2]), values)
    with pytest.raises(TypeError):
        embtab.coalesce(np.array([1.0, 2.0, 3.0]), values)
    with pytest.raises(TypeError):
        embtab.coalesce(np.array([1, 2, 3]), values.astype(np.int32))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        embtab.coalesce(np.array([1, 2, 3]), np.ones((4, 2), np.float32))
    with pytest.raises(ValueError):
        embtab.coalesce(np.array([1, 2, 3]), np.ones(3, np.float32))
    rows, sums = embtab.coalesce(np.zeros(0, np.int64), np.zeros((0, 4)))
    assert rows.shape == (0,) and sums.shape == (0, 4)


# --------------------------------------------------------------------------------------------
# gather_bags_grad


def random_bags(rng: np.random.Generator, num_rows: int, num_bags: int, max_len: int) -> Tuple[np.ndarray, np.ndarray]:
    lens = rng.integers(0, max_len + 1, num_bags)
    lens[::7] = 0  # empty bags
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = rng.integers(0, num_rows, int(offsets[-1]))
    return ids, offsets


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_bags_grad_sum_mean(each_path_and_threads: Any, dtype: Any, mode: str, weighted: bool) -> None:
    rng = np.random.default_rng(5)
    ids, offsets = random_bags(rng, 300, 2000, 12)
    dim = 24
    grad_out = rng.standard_normal((offsets.size - 1, dim)).astype(dtype)
    weights = rng.random(ids.size).astype(dtype) if weighted else None
    rows, grads = embtab.gather_bags_grad(grad_out, ids, offsets, mode=mode, weights=weights)
    exp_rows, exp_grads = bags_grad_reference(grad_out, ids, offsets, mode, weights)
    np.testing.assert_array_equal(rows, exp_rows)
    np.testing.assert_array_equal(grads, exp_grads)
    assert np.isfinite(grads).all()


def test_bags_grad_2d_ids(num_threads: int) -> None:
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 50, (40, 5)).astype(np.int32)
    grad_out = rng.standard_normal((40, 8))
    for mode in ("sum", "mean"):
        rows, grads = embtab.gather_bags_grad(grad_out, ids, mode=mode)
        exp_rows, exp_grads = bags_grad_reference(grad_out, ids, None, mode)
        np.testing.assert_array_equal(rows, exp_rows)
        np.testing.assert_array_equal(grads, exp_grads)


@pytest.mark.parametrize("dtype", FLOATS)
def test_bags_grad_max(each_path_and_threads: Any, dtype: Any) -> None:
    rng = np.random.default_rng(7)
    # Few distinct values so that ties are common; repeated ids inside bags.
    table = rng.integers(-2, 3, (60, 19)).astype(dtype)
    ids, offsets = random_bags(rng, 60, 1500, 8)
    grad_out = rng.standard_normal((offsets.size - 1, 19)).astype(dtype)
    _, argmax = embtab.gather_bags(table, ids, offsets, mode="max", return_argmax=True)
    rows, grads = embtab.gather_bags_grad(grad_out, ids, offsets, mode="max", table=table)
    exp_rows, exp_grads = bags_grad_reference(grad_out, ids, offsets, "max", argmax=argmax)
    np.testing.assert_array_equal(rows, exp_rows)
    np.testing.assert_array_equal(grads, exp_grads)
    rows2, grads2 = embtab.gather_bags_grad(grad_out, ids, offsets, mode="max", argmax=argmax)
    np.testing.assert_array_equal(rows2, rows)
    np.testing.assert_array_equal(grads2, grads)


def test_bags_grad_max_ties_go_to_first_winner() -> None:
    table = np.array([[1.0, 5.0], [1.0, 2.0], [0.0, 5.0]])
    ids = np.array([[1, 0, 2, 1]])
    grad_out = np.array([[10.0, 20.0]])
    rows, grads = embtab.gather_bags_grad(grad_out, ids, mode="max", table=table)
    np.testing.assert_array_equal(rows, [0, 1, 2])
    # column 0: rows 1 and 0 tie at 1.0, row 1 comes first; column 1: rows 0 and 2 tie, row 0 first.
    np.testing.assert_array_equal(grads, [[0.0, 20.0], [10.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize(
    ("mode", "weighted"), [("sum", False), ("sum", True), ("mean", False), ("mean", True), ("max", False)]
)
def test_bags_grad_finite_differences(mode: str, weighted: bool) -> None:
    rng = np.random.default_rng(8)
    table = rng.standard_normal((7, 3))
    offsets = np.array([0, 3, 3, 7, 9])  # an empty bag
    ids = np.array([0, 2, 0, 5, 6, 1, 5, 3, 3])
    weights = rng.random(ids.size) + 0.5 if weighted else None
    coeff = rng.standard_normal((4, 3))

    def loss(t: np.ndarray) -> float:
        return float((embtab.gather_bags(t, ids, offsets, mode=mode, weights=weights) * coeff).sum())

    rows, grads = embtab.gather_bags_grad(coeff, ids, offsets, mode=mode, weights=weights, table=table)
    dense = np.zeros_like(table)
    dense[rows] = grads
    numeric = np.zeros_like(table)
    h = 1e-6
    for r in range(table.shape[0]):
        for j in range(table.shape[1]):
            plus, minus = table.copy(), table.copy()
            plus[r, j] += h
            minus[r, j] -= h
            numeric[r, j] = (loss(plus) - loss(minus)) / (2 * h)
    np.testing.assert_allclose(dense, numeric, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(rows, np.unique(ids))


def test_bags_grad_rejects() -> None:
    ids = np.array([0, 1, 2, 3])
    offsets = np.array([0, 2, 4])
    g = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="max"):
        embtab.gather_bags_grad(g, ids, offsets, mode="max")
    with pytest.raises(ValueError, match="argmax"):
        embtab.gather_bags_grad(g, ids, offsets, mode="sum", argmax=np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="argmax"):
        embtab.gather_bags_grad(g, ids, offsets, mode="max", argmax=np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="argmax"):
        embtab.gather_bags_grad(g, ids, offsets, mode="max", argmax=np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="grad_out"):
        embtab.gather_bags_grad(np.ones((3, 3), np.float32), ids, offsets)
    with pytest.raises(TypeError, match="weights"):
        embtab.gather_bags_grad(g, ids, offsets, weights=np.ones(4, np.float64))
    with pytest.raises(ValueError, match="weights"):
        embtab.gather_bags_grad(g, ids, offsets, weights=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="mode"):
        embtab.gather_bags_grad(g, ids, offsets, mode="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offsets"):
        embtab.gather_bags_grad(g, ids, np.array([0, 3, 2]))
    with pytest.raises(ValueError, match="offsets"):
        embtab.gather_bags_grad(g, ids)
    with pytest.raises(TypeError):
        embtab.gather_bags_grad(g.astype(np.int32), ids, offsets)
    with pytest.raises(IndexError, match="negative"):
        embtab.gather_bags_grad(g, np.array([0, -1, 2, 3]), offsets)
    with pytest.raises(IndexError, match=r"ids\[3\] = 3"):
        embtab.gather_bags_grad(g, ids, offsets, table=np.zeros((3, 3), np.float32))


def test_bags_grad_all_empty() -> None:
    rows, grads = embtab.gather_bags_grad(np.ones((3, 2)), np.zeros(0, np.int64), np.zeros(4, np.int64), mode="mean")
    assert rows.shape == (0,) and grads.shape == (0, 2)
