"""Sparse gradients and training steps: scatter_add against np.add.at, coalesce against np.unique +
np.add.at, and a full embedding-bag training step (forward, bag gradient, optimizer update) against
the same step in pure numpy and with torch's EmbeddingBag(sparse=True) + Adagrad / SparseAdam."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import embtab
from embtab import optim
from embtab._arrays import aligned_empty

from .common import Case, Config, assert_equal, optional_import

# Hyperparameters of the training step (torch's defaults for Adagrad's eps and SparseAdam).
HYPER: Dict[str, Dict[str, Any]] = {
    "adagrad": {"lr": 0.01, "eps": 1e-10},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
    "rowwise_adagrad": {"lr": 0.01, "eps": 1e-8},
}


def coalesce_numpy(ids: np.ndarray, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The textbook numpy coalesce: np.unique, then np.add.at into a zero array."""
    rows, inverse = np.unique(ids, return_inverse=True)
    sums = np.zeros((rows.size, values.shape[1]), values.dtype)
    np.add.at(sums, inverse, values)
    return rows, sums


def assert_coalesced_equal(actual: Any, expected: Any) -> None:
    assert_equal(actual[0], expected[0])
    assert_equal(actual[1], expected[1])


def assert_coalesced_close(actual: Any, expected: Any) -> None:
    assert_equal(actual[0], expected[0])
    np.testing.assert_allclose(actual[1], expected[1], rtol=1e-5, atol=1e-5)


class TrainingStep:
    """One table per implementation (embtab, numpy, torch), each reset from the same initial
    table whenever the benchmark switches optimizer, so that the first step of each can be
    compared. One step: ``out = bags(table)``; ``grad_out = out - target`` (the gradient of
    ``0.5 * ||out - target||^2``); the bag gradient; the optimizer update."""

    def __init__(self, init: np.ndarray, bag_ids: np.ndarray, target: np.ndarray, torch: Any) -> None:
        self.init, self.bag_ids, self.target, self.torch = init, bag_ids, target, torch
        self.flat = bag_ids.ravel()
        self.touched = np.unique(self.flat)
        self.kind: Optional[str] = None
        self.tables: Dict[str, np.ndarray] = {}
        self.out = np.empty(target.shape, init.dtype)
        self.opt: Any = None
        self.np_state: Dict[str, Any] = {}
        self.torch_bag: Any = None
        self.torch_opt: Any = None

    def _table(self, name: str) -> np.ndarray:
        if name not in self.tables:
            self.tables[name] = aligned_empty(self.init.shape, self.init.dtype)  # as embtab's layers allocate
        return self.tables[name]

    def ensure(self, kind: str) -> None:
        if self.kind == kind:
            return
        self.kind = kind
        self.opt = self.torch_bag = self.torch_opt = None  # free the previous optimizer's state first
        self.np_state = {}
        h = HYPER[kind]
        names = ["embtab", "numpy"] + (["torch"] if self.torch is not None else [])
        for name in names:
            np.copyto(self._table(name), self.init)
        table = self.tables["embtab"]
        if kind == "adagrad":
            self.opt = optim.Adagrad(table, h["lr"], eps=h["eps"])
            self.np_state = {"sum": np.zeros_like(table)}
        elif kind == "adam":
            self.opt = optim.Adam(table, h["lr"], betas=h["betas"], eps=h["eps"])
            self.np_state = {"m": np.zeros_like(table), "v": np.zeros_like(table), "step": 0}
        else:
            self.opt = optim.RowWiseAdagrad(table, h["lr"], eps=h["eps"])
            self.np_state = {"sum": np.zeros(table.shape[0], table.dtype)}
        if self.torch is not None and kind in ("adagrad", "adam"):
            torch = self.torch
            weight = torch.from_numpy(self.tables["torch"])  # shares memory
            self.torch_bag = torch.nn.EmbeddingBag.from_pretrained(weight, freeze=False, mode="sum", sparse=True)
            params = self.torch_bag.parameters()
            if kind == "adagrad":
                self.torch_opt = torch.optim.Adagrad(params, lr=h["lr"], eps=h["eps"])
            else:
                self.torch_opt = torch.optim.SparseAdam(params, lr=h["lr"], betas=h["betas"], eps=h["eps"])

    def embtab_step(self, kind: str) -> None:
        self.ensure(kind)
        out = embtab.gather_bags(self.tables["embtab"], self.bag_ids, out=self.out)
        np.subtract(out, self.target, out=out)
        self.opt.step_bags(out, self.bag_ids)

    def numpy_step(self, kind: str) -> None:
        self.ensure(kind)
        table, flat, s = self.tables["numpy"], self.flat, self.np_state
        num_bags, bag_len = self.bag_ids.shape
        out = np.take(table, flat, axis=0).reshape(num_bags, bag_len, -1).sum(axis=1)
        grad_out = out - self.target
        rows, inverse = np.unique(flat, return_inverse=True)
        g = np.zeros((rows.size, table.shape[1]), table.dtype)
        np.add.at(g, inverse, np.repeat(grad_out, bag_len, axis=0))
        h = HYPER[kind]
        T = table.dtype.type
        if kind == "adagrad":
            acc = s["sum"][rows] + g * g
            s["sum"][rows] = acc
            table[rows] += T(-h["lr"]) * (g / (np.sqrt(acc) + T(h["eps"])))
        elif kind == "adam":
            s["step"] += 1
            b1, b2 = h["betas"]
            m_old, v_old = s["m"][rows], s["v"][rows]
            dm = (g - m_old) * T(1 - b1)
            dv = (g * g - v_old) * T(1 - b2)
            s["m"][rows] = m_old + dm
            s["v"][rows] = v_old + dv
            step_size = h["lr"] * math.sqrt(1 - b2 ** s["step"]) / (1 - b1 ** s["step"])
            table[rows] += T(-step_size) * ((m_old + dm) / (np.sqrt(v_old + dv) + T(h["eps"])))
        else:
            acc = s["sum"][rows] + (g * g).mean(axis=1)
            s["sum"][rows] = acc
            table[rows] -= (T(h["lr"]) / (np.sqrt(acc) + T(h["eps"])))[:, None] * g

    def torch_step(self, kind: str) -> None:
        self.ensure(kind)
        torch = self.torch
        # Explicitly without sparse invariant checks (torch's default, minus its warning).
        with torch.sparse.check_sparse_tensor_invariants(False):
            out = self.torch_bag(torch.from_numpy(self.bag_ids))
            out.backward(out.detach() - torch.from_numpy(self.target))
            self.torch_opt.step()
            self.torch_opt.zero_grad(set_to_none=True)

    def check_against_numpy(self, name: str) -> None:
        rows = self.touched
        np.testing.assert_allclose(self.tables[name][rows], self.tables["numpy"][rows], rtol=1e-4, atol=1e-5)


def cases(config: Config) -> List[Case]:
    rng = np.random.default_rng(config.seed)
    dim = config.dim
    row_bytes = dim * 4
    torch = optional_import("torch")
    out: List[Case] = []

    # scatter_add: both targets start at zero; after one call each they must be equal (bitwise).
    n = config.gather_ids
    ids = rng.integers(0, config.num_rows, n, dtype=np.int64)
    values = rng.standard_normal((n, dim), dtype=np.float32)
    targets: Dict[str, np.ndarray] = {}

    def target(name: str) -> np.ndarray:
        if name not in targets:
            targets[name] = np.zeros((config.num_rows, dim), np.float32)
        return targets[name]

    def scatter_embtab() -> np.ndarray:
        t = target("embtab")
        embtab.scatter_add(t, ids, values)
        return t

    def scatter_numpy() -> np.ndarray:
        t = target("numpy")
        np.add.at(t, ids, values)
        return t

    out.append(
        Case(
            name="scatter_add",
            sizes=f"{config.num_rows:,}x{dim} f32, {n:,} ids",
            run=scatter_embtab,
            baseline=scatter_numpy,
            baseline_name="np.add.at",
            check=lambda a, b: assert_equal(a[ids], b[ids]),
            bytes_moved=n * (3 * row_bytes + ids.itemsize),
            items=n,
            item_unit="rows",
        )
    )

    num_unique = np.unique(ids).size
    coalesce_case = Case(
        name="coalesce",
        sizes=f"{n:,} ids x {dim} f32 ({num_unique:,} unique)",
        run=lambda: embtab.coalesce(ids, values),
        baseline=lambda: coalesce_numpy(ids, values),
        baseline_name="np.unique+np.add.at",
        check=assert_coalesced_equal,
        bytes_moved=n * (row_bytes + ids.itemsize) + num_unique * (row_bytes + 8),
        items=n,
        item_unit="rows",
    )
    if torch is not None:
        t_ids, t_values = torch.from_numpy(ids)[None], torch.from_numpy(values)
        shape = (config.num_rows, dim)

        def torch_coalesce() -> Tuple[np.ndarray, np.ndarray]:
            g = torch.sparse_coo_tensor(t_ids, t_values, shape, check_invariants=False).coalesce()
            return g.indices()[0].numpy(), g.values().numpy()

        coalesce_case.peers["torch"] = torch_coalesce
        coalesce_case.peer_checks["torch"] = assert_coalesced_close
    out.append(coalesce_case)

    # Training steps. The initial table is random; it is copied into each implementation's table.
    bag_ids = rng.integers(0, config.num_rows, (config.num_bags, config.bag_len), dtype=np.int64)
    init = rng.standard_normal((config.num_rows, dim), dtype=np.float32)
    bag_target = rng.standard_normal((config.num_bags, dim), dtype=np.float32)
    bench = TrainingStep(init, bag_ids, bag_target, torch)
    sizes = f"{config.num_rows:,}x{dim} f32, {config.num_bags:,} bags x {config.bag_len}"
    for kind in ("adagrad", "adam", "rowwise_adagrad"):
        case = Case(
            name=f"train_step_{kind}",
            sizes=sizes,
            run=(lambda kind=kind: bench.embtab_step(kind)),
            baseline=(lambda kind=kind: bench.numpy_step(kind)),
            baseline_name="numpy",
            check=lambda a, b: bench.check_against_numpy("embtab"),
            items=bag_ids.size,
            item_unit="ids",
        )
        if torch is not None and kind in ("adagrad", "adam"):
            peer = "torch"
            case.peers[peer] = lambda kind=kind: bench.torch_step(kind)
            case.peer_checks[peer] = lambda a, b: bench.check_against_numpy("torch")
        out.append(case)
    return out
