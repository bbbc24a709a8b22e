"""embtab.optim against pure-numpy reference implementations and torch's optimizers, on every
SIMD path and several thread counts."""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

import embtab
from embtab import optim

FLOATS = [np.float32, np.float64]


# --------------------------------------------------------------------------------------------
# Pure-numpy references: coalesce with np.unique + np.add.at, then the update of each row in the
# table's dtype, in the order of operations of the torch optimizer.


def coalesced(ids: np.ndarray, grads: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    dim = grads.shape[-1]
    rows, inverse = np.unique(ids.ravel(), return_inverse=True)
    sums = np.zeros((rows.size, dim), grads.dtype)
    np.add.at(sums, inverse.ravel(), grads.reshape(ids.size, dim))
    return rows, sums


class RefSGD:
    def __init__(self, table: np.ndarray, lr: float) -> None:
        self.table, self.lr = table, lr

    def step(self, ids: np.ndarray, grads: np.ndarray) -> None:
        t = self.table
        rows, g = coalesced(ids, grads)
        t[rows] = t[rows] + t.dtype.type(-self.lr) * g


class RefAdagrad:
    def __init__(self, table: np.ndarray, lr: float, eps: float = 1e-10, initial_accumulator_value: float = 0.0,
                 lr_decay: float = 0.0) -> None:
        self.table, self.lr, self.eps, self.lr_decay = table, lr, eps, lr_decay
        self.sum = np.full(table.shape, initial_accumulator_value, table.dtype)
        self.steps = 0

    def step(self, ids: np.ndarray, grads: np.ndarray) -> None:
        self.steps += 1
        t = self.table
        T = t.dtype.type
        clr = self.lr / (1 + (self.steps - 1) * self.lr_decay)
        rows, g = coalesced(ids, grads)
        s = self.sum[rows] + g * g
        self.sum[rows] = s
        std = np.sqrt(s) + T(self.eps)
        t[rows] = t[rows] + T(-clr) * (g / std)


class RefRowWiseAdagrad:
    def __init__(self, table: np.ndarray, lr: float, eps: float = 1e-8, initial_accumulator_value: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.table, self.lr, self.eps, self.wd = table, lr, eps, weight_decay
        self.sum = np.full(table.shape[0], initial_accumulator_value, table.dtype)

    def step(self, ids: np.ndarray, grads: np.ndarray) -> None:
        t = self.table
        T = t.dtype.type
        rows, g = coalesced(ids, grads)
        if self.wd:
            g = g + T(self.wd) * t[rows]
        acc = self.sum[rows] + (g * g).mean(axis=1, dtype=t.dtype)
        self.sum[rows] = acc
        multiplier = T(self.lr) / (np.sqrt(acc) + T(self.eps))
        t[rows] = t[rows] - multiplier[:, None] * g


class RefAdam:
    def __init__(self, table: np.ndarray, lr: float, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.table, self.lr, self.betas, self.eps = table, lr, betas, eps
        self.m = np.zeros_like(table)
        self.v = np.zeros_like(table)
        self.steps = 0

    def step(self, ids: np.ndarray, grads: np.ndarray) -> None:
        self.steps += 1
        t = self.table
        T = t.dtype.type
        b1, b2 = self.betas
        rows, g = coalesced(ids, grads)
        m_old, v_old = self.m[rows], self.v[rows]
        dm = (g - m_old) * T(1 - b1)
        dv = (g * g - v_old) * T(1 - b2)
        self.m[rows] = m_old + dm
        self.v[rows] = v_old + dv
        step_size = self.lr * math.sqrt(1 - b2**self.steps) / (1 - b1**self.steps)
        t[rows] = t[rows] + T(-step_size) * ((dm + m_old) / (np.sqrt(dv + v_old) + T(self.eps)))


# (name, embtab factory, reference factory, bitwise): the references use the same operations in
# the same order, except that the row-wise mean of squares is summed in another order by numpy.
OPTIMIZERS: List[Tuple[str, Callable[[np.ndarray], Any], Callable[[np.ndarray], Any], bool]] = [
    ("sgd", lambda t: optim.SGD(t, 0.1), lambda t: RefSGD(t, 0.1), True),
    (
        "adagrad",
        lambda t: optim.Adagrad(t, 0.1, initial_accumulator_value=0.05, lr_decay=0.01),
        lambda t: RefAdagrad(t, 0.1, initial_accumulator_value=0.05, lr_decay=0.01),
        True,
    ),
    ("rowwise", lambda t: optim.RowWiseAdagrad(t, 0.1), lambda t: RefRowWiseAdagrad(t, 0.1), False),
    (
        "rowwise_wd",
        lambda t: optim.RowWiseAdagrad(t, 0.1, eps=1e-6, initial_accumulator_value=0.1, weight_decay=0.02),
        lambda t: RefRowWiseAdagrad(t, 0.1, eps=1e-6, initial_accumulator_value=0.1, weight_decay=0.02),
        False,
    ),
    ("adam", lambda t: optim.Adam(t, 0.01), lambda t: RefAdam(t, 0.01), True),
    ("adam_betas", lambda t: optim.Adam(t, 0.05, betas=(0.5, 0.9), eps=1e-3),
     lambda t: RefAdam(t, 0.05, betas=(0.5, 0.9), eps=1e-3), True),
]
OPT_IDS = [o[0] for o in OPTIMIZERS]


def assert_matches(actual: np.ndarray, expected: np.ndarray, bitwise: bool) -> None:
    if bitwise:
        np.testing.assert_array_equal(actual, expected)
    else:
        rtol = 2e-6 if actual.dtype == np.float32 else 1e-13
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol)


def batches(seed: int, num_rows: int, dim: int, dtype: Any, steps: int, size: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        ids = rng.integers(0, num_rows, size)
        out.append((ids, rng.standard_normal((size, dim)).astype(dtype)))
    return out


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("name", "make", "make_ref", "bitwise"), OPTIMIZERS, ids=OPT_IDS)
def test_matches_numpy_reference(each_path_and_threads: Any, dtype: Any, name: str, make: Any, make_ref: Any,
                                 bitwise: bool) -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((3000, 16)).astype(dtype)
    ref_table = table.copy()
    opt, ref = make(table), make_ref(ref_table)
    for ids, grads in batches(1, 3000, 16, dtype, 5, 8000):
        opt.step(ids, grads)
        ref.step(ids, grads)
    assert_matches(table, ref_table, bitwise)
    assert np.isfinite(table).all()


@pytest.mark.parametrize(("name", "make", "make_ref", "bitwise"), OPTIMIZERS, ids=OPT_IDS)
def test_same_bits_for_every_path_and_thread_count(each_path_and_threads: Any, name: str, make: Any, make_ref: Any,
                                                   bitwise: bool) -> None:
    def run() -> Dict[str, Any]:
        table = np.random.default_rng(2).standard_normal((500, 37)).astype(np.float32)
        opt = make(table)
        for ids, grads in batches(3, 500, 37, np.float32, 3, 9000):
            opt.step(ids, grads)
        return {"table": table, **{k: v for k, v in opt.state.items() if isinstance(v, np.ndarray)}}

    here = run()
    path, threads = embtab.simd_path(), embtab.get_num_threads()
    try:
        embtab.set_simd_path("scalar")
        embtab.set_num_threads(1)
        baseline = run()
    finally:
        embtab.set_simd_path(path)
        embtab.set_num_threads(threads)
    for key in baseline:
        np.testing.assert_array_equal(here[key], baseline[key], err_msg=key)


# --------------------------------------------------------------------------------------------
# torch


def torch_optimizer(torch: Any, name: str, param: Any) -> Any:
    if name == "sgd":
        return torch.optim.SGD([param], lr=0.1)
    if name == "adagrad":
        return torch.optim.Adagrad([param], lr=0.1, initial_accumulator_value=0.05, lr_decay=0.01)
    return torch.optim.SparseAdam([param], lr=0.01)


TORCH_OPTIMIZERS = [o for o in OPTIMIZERS if o[0] in ("sgd", "adagrad", "adam")]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("steps", [1, 100])
@pytest.mark.parametrize(("name", "make", "make_ref", "bitwise"), TORCH_OPTIMIZERS,
                         ids=[o[0] for o in TORCH_OPTIMIZERS])
def test_matches_torch(dtype: Any, steps: int, name: str, make: Any, make_ref: Any, bitwise: bool) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    num_rows, dim = 300, 8
    table = rng.standard_normal((num_rows, dim)).astype(dtype)
    param = torch.nn.Parameter(torch.from_numpy(table.copy()))
    opt, topt = make(table), torch_optimizer(torch, name, param)
    for ids, grads in batches(5, num_rows, dim, dtype, steps, 200):  # with repeated ids
        opt.step(ids, grads)
        with torch.sparse.check_sparse_tensor_invariants():
            param.grad = torch.sparse_coo_tensor(torch.from_numpy(ids)[None], torch.from_numpy(grads), (num_rows, dim))
            topt.step()
    expected = param.detach().numpy()
    if dtype == np.float32:
        np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(table, expected, rtol=1e-12, atol=1e-12)
    if name == "adam":
        state = topt.state[param]
        np.testing.assert_allclose(opt.state["exp_avg_sq"], state["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-7)
        assert opt.state["step"] == state["step"] == steps


def test_adam_matches_torch_embedding_bag_training() -> None:
    """The fused bag step against nn.EmbeddingBag(sparse=True) + SparseAdam."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    num_rows, dim = 200, 8
    table = rng.standard_normal((num_rows, dim)).astype(np.float32)
    bag = torch.nn.EmbeddingBag(num_rows, dim, mode="mean", sparse=True)
    with torch.no_grad():
        bag.weight.copy_(torch.from_numpy(table))
    opt, topt = optim.Adam(table, 0.01), torch.optim.SparseAdam(bag.parameters(), lr=0.01)
    for _ in range(20):
        ids = rng.integers(0, num_rows, (32, 5))
        target = rng.standard_normal((32, dim)).astype(np.float32)
        out = embtab.gather_bags(table, ids, mode="mean")
        opt.step_bags(2 * (out - target) / out.size, ids, mode="mean")
        topt.zero_grad()
        with torch.sparse.check_sparse_tensor_invariants():
            loss = ((bag(torch.from_numpy(ids)) - torch.from_numpy(target)) ** 2).mean()
            loss.backward()
            topt.step()
    np.testing.assert_allclose(table, bag.weight.detach().numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Fused bag steps


@pytest.mark.parametrize(("name", "make", "make_ref", "bitwise"), OPTIMIZERS, ids=OPT_IDS)
@pytest.mark.parametrize(("mode", "weighted"), [("sum", False), ("sum", True), ("mean", True), ("max", False)])
def test_step_bags_equals_step_of_bag_gradient(num_threads: int, name: str, make: Any, make_ref: Any, bitwise: bool,
                                               mode: str, weighted: bool) -> None:
    rng = np.random.default_rng(7)
    num_rows, dim = 400, 12
    table = rng.integers(-3, 4, (num_rows, dim)).astype(np.float64)  # ties for max
    lens = rng.integers(0, 9, 3000)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    ids = rng.integers(0, num_rows, int(offsets[-1]))
    weights = rng.random(ids.size) if weighted else None
    fused_table, split_table = table.copy(), table.copy()
    fused, split = make(fused_table), make(split_table)
    for _ in range(3):
        grad_out = rng.standard_normal((lens.size, dim))
        rows, grads = embtab.gather_bags_grad(grad_out, ids, offsets, mode=mode, weights=weights, table=split_table)
        split.step(rows, grads)
        fused.step_bags(grad_out, ids, offsets, mode=mode, weights=weights)
        np.testing.assert_array_equal(fused_table, split_table)


def test_step_bags_with_argmax() -> None:
    rng = np.random.default_rng(8)
    table = rng.standard_normal((50, 4)).astype(np.float32)
    other = table.copy()
    ids = rng.integers(0, 50, (10, 3))
    out, argmax = embtab.gather_bags(table, ids, mode="max", return_argmax=True)
    grad_out = rng.standard_normal(out.shape).astype(np.float32)
    optim.Adagrad(table, 0.1).step_bags(grad_out, ids, mode="max", argmax=argmax)
    optim.Adagrad(other, 0.1).step_bags(grad_out, ids, mode="max")
    np.testing.assert_array_equal(table, other)
    with pytest.raises(ValueError, match="argmax"):
        optim.SGD(table, 0.1).step_bags(grad_out, ids, mode="sum", argmax=argmax)


# --------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize(
    ("name", "make"),
    [
        # SGD's step scales with the gradient: a mean over 4 ids needs 16x the rate.
        ("sgd", lambda t, mode: optim.SGD(t, 0.5 if mode == "sum" else 8.0)),
        ("adagrad", lambda t, mode: optim.Adagrad(t, 0.3)),
        ("rowwise", lambda t, mode: optim.RowWiseAdagrad(t, 0.3)),
        ("adam", lambda t, mode: optim.Adam(t, 0.05)),
    ],
)
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_training_reduces_loss(num_threads: int, name: str, make: Any, mode: str) -> None:
    """Learn a table whose bag sums (or means) match those of a hidden table: 200 steps."""
    rng = np.random.default_rng(9)
    num_rows, dim, bag_len = 100, 8, 4
    hidden = rng.standard_normal((num_rows, dim)).astype(np.float32)
    table = (0.1 * rng.standard_normal((num_rows, dim))).astype(np.float32)
    opt = make(table, mode)
    eval_ids = rng.integers(0, num_rows, (500, bag_len))
    eval_target = embtab.gather_bags(hidden, eval_ids, mode=mode)

    def loss() -> float:
        return float(((embtab.gather_bags(table, eval_ids, mode=mode) - eval_target) ** 2).mean())

    initial = loss()
    for _ in range(200):
        ids = rng.integers(0, num_rows, (64, bag_len))
        out = embtab.gather_bags(table, ids, mode=mode)
        diff = out - embtab.gather_bags(hidden, ids, mode=mode)
        opt.step_bags((2.0 / out.shape[0]) * diff, ids, mode=mode)
    final = loss()
    assert np.isfinite(table).all()
    assert final < 0.01 * initial, (initial, final)


# --------------------------------------------------------------------------------------------
# State, empty batches, bad input


def test_state_layout() -> None:
    t = np.zeros((10, 3), np.float32)
    assert optim.SGD(t, 0.1).state == {}
    a = optim.Adagrad(t, 0.1, initial_accumulator_value=0.5)
    assert a.state["sum"].shape == (10, 3) and a.state["sum"].dtype == np.float32 and (a.state["sum"] == 0.5).all()
    assert a.state["step"] == 0
    r = optim.RowWiseAdagrad(t.astype(np.float64), 0.1)
    assert r.state["sum"].shape == (10,) and r.state["sum"].dtype == np.float64
    m = optim.Adam(t, 0.1)
    assert set(m.state) == {"exp_avg", "exp_avg_sq", "step"}
    assert "Adam" in repr(m)
    # Row state starts on a 128-byte boundary (a pair of cache lines), zeroed unless told otherwise.
    for arr in (optim.Adagrad(t, 0.1).state["sum"], a.state["sum"], m.state["exp_avg"], m.state["exp_avg_sq"]):
        assert arr.ctypes.data % 128 == 0 and arr.flags.c_contiguous and arr.flags.writeable
    assert not optim.Adagrad(t, 0.1).state["sum"].any() and not m.state["exp_avg_sq"].any()


def test_submodule_import() -> None:
    import embtab.optim as mod

    assert mod is embtab.optim is sys.modules["embtab.optim"]
    assert "optim" in embtab.__all__
    assert {"SGD", "Adagrad", "RowWiseAdagrad", "Adam"} <= set(mod.__all__)


@pytest.mark.parametrize(("name", "make", "make_ref", "bitwise"), OPTIMIZERS, ids=OPT_IDS)
def test_empty_batch_changes_nothing(name: str, make: Any, make_ref: Any, bitwise: bool) -> None:
    table = np.random.default_rng(10).standard_normal((20, 4))
    opt = make(table)
    before = table.copy()
    opt.step(np.zeros(0, np.int64), np.zeros((0, 4)))
    opt.step_bags(np.zeros((3, 4)), np.zeros(0, np.int64), np.zeros(4, np.int64), mode="mean")
    opt.step_bags(np.zeros((0, 4)), np.zeros((0, 5), np.int64))
    np.testing.assert_array_equal(table, before)
    for v in opt.state.values():
        if isinstance(v, np.ndarray):
            assert np.isfinite(v).all()
    if "step" in opt.state:
        assert opt.state["step"] == 3  # torch's count advances on empty steps too
    # Adam after empty steps: still finite once rows come in.
    opt.step(np.array([1, 1]), np.ones((2, 4)))
    assert np.isfinite(table).all()


def test_zero_gradient_rows_stay_finite() -> None:
    table = np.ones((5, 3), np.float32)
    for opt in (optim.Adagrad(table, 0.1), optim.RowWiseAdagrad(table, 0.1), optim.Adam(table, 0.1)):
        opt.step(np.array([0, 1]), np.zeros((2, 3), np.float32))
        assert np.isfinite(table).all()


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adagrad, optim.RowWiseAdagrad, optim.Adam])
def test_rejects_bad_tables_and_hyperparameters(cls: Any) -> None:
    good = np.zeros((10, 4), np.float32)
    readonly = good.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        cls(readonly, 0.1)
    with pytest.raises(ValueError, match="C-contiguous"):
        cls(np.zeros((4, 10), np.float32).T, 0.1)
    with pytest.raises(TypeError, match="dtype"):
        cls(np.zeros((10, 4), np.int64), 0.1)
    with pytest.raises(TypeError, match="numpy array"):
        cls([[0.0, 1.0]], 0.1)
    with pytest.raises(ValueError, match="2-D"):
        cls(np.zeros(10, np.float32), 0.1)
    with pytest.raises(ValueError, match="lr"):
        cls(good, -0.1)
    with pytest.raises(ValueError, match="lr"):
        cls(good, float("nan"))
    if cls is not optim.SGD:
        with pytest.raises(ValueError, match="eps"):
            cls(good, 0.1, eps=-1e-8)
    opt = cls(good, 0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0  # checked when set
    opt.lr = lambda step: -1.0  # a schedule's value is checked at each step
    with pytest.raises(ValueError, match="lr"):
        opt.step(np.array([1]), np.ones((1, 4), np.float32))


def test_adam_rejects_bad_betas() -> None:
    t = np.zeros((3, 2))
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(t, 0.1, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(t, 0.1, betas=(0.9, -0.1))
    with pytest.raises(ValueError, match="eps"):
        optim.Adam(t, 0.1, eps=0.0)


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adagrad, optim.RowWiseAdagrad, optim.Adam])
def test_rejects_bad_steps_without_touching_anything(cls: Any) -> None:
    table = np.random.default_rng(11).standard_normal((10, 4)).astype(np.float32)
    opt = cls(table, 0.1)
    opt.step(np.array([1, 2]), np.ones((2, 4), np.float32))
    before = table.copy()
    state_before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in opt.state.items()}

    def unchanged() -> None:
        np.testing.assert_array_equal(table, before)
        for k, v in state_before.items():
            np.testing.assert_array_equal(opt.state[k], v)

    with pytest.raises(IndexError, match=r"ids\[2\] = 10"):
        opt.step(np.array([1, 2, 10]), np.ones((3, 4), np.float32))
    unchanged()
    with pytest.raises(IndexError, match="negative"):
        opt.step_bags(np.ones((1, 4), np.float32), np.array([[3, -1]]))
    unchanged()
    with pytest.raises(TypeError, match="dtype"):
        opt.step(np.array([1]), np.ones((1, 4), np.float64))
    with pytest.raises(TypeError, match="dtype"):
        opt.step_bags(np.ones((1, 4), np.float64), np.array([[3, 1]]))
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 3\)"):
        opt.step(np.array([1, 2]), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="grad_out"):
        opt.step_bags(np.ones((1, 3), np.float32), np.array([[3, 1]]))
    with pytest.raises(TypeError):
        opt.step(np.array([1.0]), np.ones((1, 4), np.float32))
    unchanged()
    table.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.step(np.array([1]), np.ones((1, 4), np.float32))
    table.flags.writeable = True
    unchanged()
    # Read-only gradients and ids are fine; lists are converted to the table's dtype.
    ids = np.array([3])
    ids.flags.writeable = False
    opt.step(ids, [[1.0, 2.0, 3.0, 4.0]])
    assert not np.array_equal(table, before)


def test_state_arrays_are_checked() -> None:
    table = np.zeros((10, 4), np.float32)
    opt = optim.Adam(table, 0.1)
    opt.state["exp_avg"] = np.zeros((10, 4), np.float64)
    with pytest.raises(TypeError, match="exp_avg"):
        opt.step(np.array([1]), np.ones((1, 4), np.float32))
    opt.state["exp_avg"] = np.zeros((9, 4), np.float32)
    with pytest.raises(ValueError, match="exp_avg"):
        opt.step(np.array([1]), np.ones((1, 4), np.float32))
