"""Inputs that share memory with what a sparse kernel writes (issue 17, item 3, sparse side).

A read-only input that overlaps the written table or optimizer state (``scatter_add(t, ids, t[:4])``,
``opt.step(ids, grads=table[:4])``, ``step_bags(grad_out=<view of the state>)``) gives the answer it
would give had it been copied first, as ``np.add.at`` does. Two written arrays that overlap (the table
and a state array, two state arrays, the step count) raise ValueError before anything is written.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict

import numpy as np
import pytest

import embtab
from embtab import optim


def table(rows: int = 64, dim: int = 8, dtype: Any = np.float64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(dtype)


@pytest.mark.parametrize("num_threads", [1, 3], indirect=True)
@pytest.mark.parametrize("rows", [8, 5000])
def test_scatter_add_values_are_a_view_of_the_target(num_threads, rows):
    t = table(rows)
    ids = np.random.default_rng(1).integers(0, 4, 3000)  # row 0 is read (values) and written
    values = np.broadcast_to(t[:1], (3000, 8))  # a read-only view of row 0, repeated
    expected = t.copy()
    np.add.at(expected, ids, np.array(values))
    numpy_inplace = t.copy()
    np.add.at(numpy_inplace, ids, np.broadcast_to(numpy_inplace[:1], (3000, 8)))
    np.testing.assert_array_equal(numpy_inplace, expected)  # numpy: as if the values were copied first
    embtab.scatter_add(t, ids, values)
    np.testing.assert_array_equal(t, expected)


@pytest.mark.parametrize("num_threads", [1, 3], indirect=True)
def test_scatter_add_of_target_rows_into_the_target(num_threads):
    t = table(4096)
    ids = np.array([1, 0, 3, 2], np.int64)
    expected = t.copy()
    np.add.at(expected, ids, t[:4].copy())
    inplace = t.copy()
    np.add.at(inplace, ids, inplace[:4])
    np.testing.assert_array_equal(inplace, expected)
    embtab.scatter_add(t, ids, t[:4])
    np.testing.assert_array_equal(t, expected)
    # A larger batch whose values are the whole target, shifted by one row.
    t = table(4096, seed=3)
    ids = np.arange(1, 4096) % 4096
    expected = t.copy()
    np.add.at(expected, ids, t[:-1].copy())
    embtab.scatter_add(t, ids, t[:-1])
    np.testing.assert_array_equal(t, expected)


def test_scatter_add_ids_are_a_view_of_the_target():
    t = np.zeros((16, 4), np.float64)
    ids = t[0].view(np.int64)  # four zeros: every id is row 0, until row 0 is written
    embtab.scatter_add(t, ids, np.ones((4, 4)))
    np.testing.assert_array_equal(t[0], [4.0, 4.0, 4.0, 4.0])
    assert not t[1:].any()


OPTIMIZERS: Dict[str, Callable[[np.ndarray], Any]] = {
    "sgd": lambda t: optim.SGD(t, lr=0.1),
    "adagrad": lambda t: optim.Adagrad(t, lr=0.1, lr_decay=0.01),
    "rowwise": lambda t: optim.RowWiseAdagrad(t, lr=0.1, weight_decay=0.01),
    "adam": lambda t: optim.Adam(t, lr=0.1),
}


def copy_of(opt: Any) -> Any:
    """The same optimizer over copies of the table and state."""
    twin = type(opt).__new__(type(opt))
    twin.__dict__.update(opt.__dict__)
    twin.table = opt.table.copy()
    twin.state = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in opt.state.items()}
    twin._lock = threading.Lock()
    return twin


def assert_same(a: Any, b: Any) -> None:
    np.testing.assert_array_equal(a.table, b.table)
    for key in a.state:
        np.testing.assert_array_equal(a.state[key], b.state[key])


@pytest.mark.parametrize("num_threads", [1, 3], indirect=True)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step_grads_are_a_view_of_the_table(num_threads, name):
    rng = np.random.default_rng(2)
    opt = OPTIMIZERS[name](table(2000))
    opt.step(rng.integers(0, 2000, 500), np.ones((500, 8)))  # nonzero state
    ref = copy_of(opt)
    # Rows are updated in increasing order: row 5 takes its gradient from row 0, updated before.
    ids = np.array([5, 4, 3, 2, 1, 0, 1999, 0], np.int64)
    ref.step(ids, opt.table[:8].copy())
    opt.step(ids, opt.table[:8])  # a view of the rows being updated
    assert_same(opt, ref)


@pytest.mark.parametrize("name", ["adagrad", "adam"])
def test_step_grads_are_a_view_of_the_state(name):
    opt = OPTIMIZERS[name](table(300))
    opt.step(np.arange(300), table(300, seed=5))  # state rows that differ
    state = opt.state["sum" if name == "adagrad" else "exp_avg"]
    ref = copy_of(opt)
    ids = np.arange(0, 300, 3)
    ref.step(ids, state[:100].copy())
    opt.step(ids, state[:100])
    assert_same(opt, ref)


@pytest.mark.parametrize("num_threads", [1, 3], indirect=True)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_step_bags_inputs_are_views_of_the_table_and_state(num_threads, name, mode):
    rng = np.random.default_rng(4)
    opt = OPTIMIZERS[name](table(1000))
    opt.step(np.arange(1000), np.ones((1000, 8)))
    ids = rng.integers(0, 1000, (100, 5))
    argmax = None
    if mode == "max":
        _, argmax = embtab.gather_bags(opt.table, ids, mode="max", return_argmax=True)
    sources = [opt.table] + ([opt.state["exp_avg_sq"]] if name == "adam" else [])
    for source in sources:
        ref = copy_of(opt)
        ref.step_bags(source[:100].copy(), ids, mode=mode, argmax=argmax)
        opt.step_bags(source[:100], ids, mode=mode, argmax=argmax)
        assert_same(opt, ref)


def test_step_bags_weights_are_a_view_of_the_table():
    opt = optim.SGD(table(1000), lr=0.5)
    ids = np.arange(0, 1000, 2)
    offsets = np.arange(0, 501, 5)
    weights = opt.table.reshape(-1)[:500]  # contiguous: the first rows of the table
    ref = copy_of(opt)
    ref.step_bags(np.ones((100, 8)), ids, offsets, weights=weights.copy())
    opt.step_bags(np.ones((100, 8)), ids, offsets, weights=weights)
    assert_same(opt, ref)


# (optimizer, state key, a written array that shares memory with it once put in its place)
SHARED_STATES = [
    ("adam", "exp_avg", lambda opt: opt.state["exp_avg_sq"]),
    ("adam", "exp_avg", lambda opt: opt.table),
    ("adam", "exp_avg_sq", lambda opt: opt.table[::-1][::-1]),  # a view of the whole table
    ("adagrad", "sum", lambda opt: opt.table),
    ("rowwise", "sum", lambda opt: opt.table.reshape(-1)[: opt.table.shape[0]]),  # the first rows, flat
    ("adam", "step", lambda opt: opt.table.view(np.int64).reshape(-1)[:1].reshape(())),
    ("adagrad", "step", lambda opt: opt.state["sum"].view(np.int64).reshape(-1)[5:6].reshape(())),
]


@pytest.mark.parametrize("name, key, shared", SHARED_STATES, ids=[f"{n}-{k}" for n, k, _ in SHARED_STATES])
def test_state_overlapping_the_table_or_other_state_is_refused(name, key, shared):
    opt = OPTIMIZERS[name](table(64))
    opt.step(np.arange(64), np.ones((64, 8)))
    replacement = shared(opt)
    if key == "step":
        replacement[...] = opt.state["step"]  # the same count, stored inside another written array
    opt.state[key] = replacement
    before = {k: np.array(v) for k, v in opt.state.items()}
    original = opt.table.copy()
    for call in (lambda: opt.step(np.array([1, 2]), np.ones((2, 8))),
                 lambda: opt.step_bags(np.ones((1, 8)), np.array([[1, 2]]))):
        with pytest.raises(ValueError, match="share memory"):
            call()
        np.testing.assert_array_equal(opt.table, original)
        for k, v in before.items():
            np.testing.assert_array_equal(opt.state[k], v)


def test_disjoint_halves_of_one_buffer_are_fine():
    # Adjacent, non-overlapping slices of one allocation are separate arrays.
    buffer = np.zeros((3, 64, 8))
    opt = optim.Adam(buffer[0], lr=0.1)
    opt.state["exp_avg"], opt.state["exp_avg_sq"] = buffer[1], buffer[2]
    ref = optim.Adam(np.zeros((64, 8)), lr=0.1)
    for o in (opt, ref):
        o.step(np.arange(64), np.ones((64, 8)))
    assert_same(opt, ref)
