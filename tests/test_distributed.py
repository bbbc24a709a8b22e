"""embtab.distributed on a real local Ray (GCS, raylet and one worker process per shard; no mocks),
checked against a local embtab table and optimizer: lookups for 1-4 shards and both routes, training
runs with every optimizer that must update every row bitwise as the local run, the local contract
for bad input, checkpoints (save, load, re-shard) and lost shards (ray.kill, SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest

import embtab

ray = pytest.importorskip("ray")

from embtab.distributed import Shard, ShardedEmbeddingBag, ShardedTable, ShardLost  # noqa: E402
from embtab.distributed._layout import Layout, init_rows  # noqa: E402

NUM_ROWS, DIM = 257, 8
LAYOUTS = [(n, route) for n in (1, 2, 3, 4) for route in ("hash", "range")]
LAYOUT_IDS = [f"{n}-{route}" for n, route in LAYOUTS]
OPTIMIZERS = {
    "sgd": (embtab.optim.SGD, {"lr": 0.1}),
    "adagrad": (embtab.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01}),  # the step count matters
    "rowwise_adagrad": (embtab.optim.RowWiseAdagrad, {"lr": 0.1, "weight_decay": 0.01}),
    "adam": (embtab.optim.Adam, {"lr": 0.05}),  # so does it here (bias correction)
}


# --------------------------------------------------------------------------------------------
# Without Ray: the package boundary, routing and initial rows


def run_python(code: str, env: Optional[Dict[str, str]] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_embtab_does_not_import_ray_and_the_package_names_the_extra() -> None:
    done = run_python("import sys, embtab; assert 'ray' not in sys.modules, 'embtab imported ray'")
    assert done.returncode == 0, done.stderr
    # As if Ray were not installed: sys.modules[name] = None makes `import name` raise ImportError.
    done = run_python("import sys; sys.modules['ray'] = None\nimport embtab.distributed")
    assert done.returncode != 0
    assert "ImportError: embtab.distributed needs Ray: pip install \"embtab[ray]\"" in done.stderr


def test_hash_route_is_murmur3_of_the_int64_id() -> None:
    mmh3 = pytest.importorskip("mmh3")
    ids = np.concatenate([np.arange(300), [2**31, 2**40 + 7, 10**12]]).astype(np.int64)
    for num_shards in (2, 3, 7):
        expected = [mmh3.hash(struct.pack("<q", int(i)), 0, signed=False) % num_shards for i in ids]
        np.testing.assert_array_equal(Layout(10**13, num_shards, "hash").shard_of(ids), expected)


@pytest.mark.parametrize("route", ["hash", "range"])
@pytest.mark.parametrize(("num_rows", "num_shards"), [(257, 1), (257, 3), (10, 4), (3, 5), (0, 2)])
def test_layout_partitions_every_row_once(route: str, num_rows: int, num_shards: int) -> None:
    layout = Layout(num_rows, num_shards, route)
    owned = [layout.owned(s) for s in range(num_shards)]
    np.testing.assert_array_equal(np.sort(np.concatenate(owned)), np.arange(num_rows))
    for s, ids in enumerate(owned):
        assert np.all(np.diff(ids) > 0)
        np.testing.assert_array_equal(layout.shard_of(ids), np.full(ids.size, s))
        if route == "range":  # np.array_split's blocks
            np.testing.assert_array_equal(ids, np.array_split(np.arange(num_rows), num_shards)[s])
    np.testing.assert_array_equal(layout.shard_sizes(), [ids.size for ids in owned])


def test_layout_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_shards must be >= 1, got 0"):
        Layout(10, 0, "hash")
    with pytest.raises(ValueError, match="route must be 'hash' or 'range', got 'modulo'"):
        Layout(10, 2, "modulo")
    with pytest.raises(TypeError, match="num_rows must be an integer, got float"):
        Layout(10.0, 2, "hash")


def test_initial_rows_depend_on_the_row_not_the_layout() -> None:
    ids = np.arange(5000, dtype=np.int64)
    whole = init_rows(ids, 16, 5000, "normal", 0.5, 7, np.float32)
    for route, num_shards in (("hash", 3), ("range", 4)):
        layout = Layout(5000, num_shards, route)
        parts = np.empty_like(whole)
        for s in range(num_shards):
            owned = layout.owned(s)
            parts[owned] = init_rows(owned, 16, 5000, "normal", 0.5, 7, np.float32)
        np.testing.assert_array_equal(parts, whole)
    # The distributions of embtab.Embedding's inits (80,000 draws: 4-sigma bounds on the moments).
    assert abs(whole.mean()) < 4 * 0.5 / np.sqrt(whole.size) and abs(whole.std() - 0.5) < 0.01
    assert not np.array_equal(whole, init_rows(ids, 16, 5000, "normal", 0.5, 8, np.float32))  # the seed matters
    uniform = init_rows(ids, 16, 5000, "uniform", None, 0, np.float64)
    assert uniform.min() >= -1 / 16 and uniform.max() < 1 / 16 and abs(uniform.mean()) < 0.002
    xavier = init_rows(ids, 16, 5000, "xavier_uniform", None, 0, np.float32)
    bound = np.sqrt(6 / (5000 + 16))
    assert xavier.min() >= -bound and xavier.max() < bound and xavier.max() > 0.99 * bound
    assert not init_rows(ids, 16, 5000, "zeros", None, 0, np.float32).any()


# --------------------------------------------------------------------------------------------
# Lookups against the local table


@pytest.fixture(scope="module")
def lookup_table(ray_local: Any) -> Iterator[Callable[[int, str], Tuple[ShardedTable, np.ndarray]]]:
    """``(sharded table, the same rows as a local array)`` per layout, built once for the module."""
    made: Dict[Tuple[int, str], Tuple[ShardedTable, np.ndarray]] = {}

    def get(num_shards: int, route: str) -> Tuple[ShardedTable, np.ndarray]:
        if (num_shards, route) not in made:
            table = ShardedTable(NUM_ROWS, DIM, num_shards=num_shards, route=route, seed=11, std=1.0)
            made[num_shards, route] = (table, table.to_numpy())
        return made[num_shards, route]

    yield get
    for table, _ in made.values():
        table.close()


def test_initial_table_is_the_same_for_every_layout(lookup_table: Any) -> None:
    reference = init_rows(np.arange(NUM_ROWS, dtype=np.int64), DIM, NUM_ROWS, "normal", 1.0, 11, np.float32)
    for num_shards, route in [(1, "hash"), (3, "hash"), (4, "range")]:
        np.testing.assert_array_equal(lookup_table(num_shards, route)[1], reference)


@pytest.mark.parametrize(("num_shards", "route"), LAYOUTS, ids=LAYOUT_IDS)
def test_gather_is_exact(lookup_table: Any, num_shards: int, route: str) -> None:
    table, local = lookup_table(num_shards, route)
    rng = np.random.default_rng(num_shards)
    for ids in (rng.integers(0, NUM_ROWS, (40, 3)), rng.integers(0, 5, 50).astype(np.int32), [NUM_ROWS - 1, 0],
                np.zeros((0, 4), np.int64)):
        out = table.gather(ids)
        assert out.dtype == np.float32 and out.shape == np.shape(ids) + (DIM,)
        np.testing.assert_array_equal(out, local[np.asarray(ids, np.int64)])


def test_each_shard_receives_its_distinct_ids_once(lookup_table: Any) -> None:
    table, _ = lookup_table(3, "hash")
    ids = np.repeat(np.array([5, 17, 200, 3, 99], np.int64), 40)  # 200 ids, 5 distinct
    before = [e["bytes_sent"] for e in table.stats()]
    table.gather(ids)
    sent = np.subtract([e["bytes_sent"] for e in table.stats()], before)
    shard_of = Layout(NUM_ROWS, 3, "hash").shard_of(np.unique(ids))
    np.testing.assert_array_equal(sent, 8 * np.bincount(shard_of, minlength=3))  # int64 arrays, nothing else


def bags_batch(rng: np.random.Generator, num_bags: int = 60, max_len: int = 9) -> Tuple[np.ndarray, np.ndarray]:
    lengths = rng.integers(0, max_len, num_bags)  # empty bags included
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng.integers(0, NUM_ROWS, int(offsets[-1])), offsets


def sum_tolerance(local: np.ndarray, ids: np.ndarray, offsets: np.ndarray, weights: Optional[np.ndarray]) -> np.ndarray:
    """Bound on the difference between two summation orders of each bag's terms: (n - 1) eps sum |terms|."""
    terms = np.abs(local[ids] * (1 if weights is None else weights[:, None]))
    magnitude = np.add.reduceat(terms, offsets[:-1], axis=0) if ids.size else np.zeros((len(offsets) - 1, DIM))
    lengths = np.diff(offsets)[:, None]
    magnitude = np.where(lengths > 0, magnitude, 0)
    return np.maximum(lengths - 1, 0) * np.finfo(local.dtype).eps * magnitude


@pytest.mark.parametrize(("num_shards", "route"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize(("mode", "weighted"), [("sum", False), ("sum", True), ("mean", False), ("mean", True),
                                                ("max", False)])
def test_bags_match_the_local_table(lookup_table: Any, num_shards: int, route: str, mode: str, weighted: bool) -> None:
    table, local = lookup_table(num_shards, route)
    rng = np.random.default_rng(3)
    ids, offsets = bags_batch(rng)
    weights = rng.standard_normal(ids.size).astype(np.float32) if weighted else None
    out = table.gather_bags(ids, offsets, mode=mode, weights=weights)
    expected = embtab.gather_bags(local, ids, offsets, mode=mode, weights=weights)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    if mode == "max" or num_shards == 1:
        np.testing.assert_array_equal(out, expected)  # exact; one shard: the local call's own order
    else:
        bound = sum_tolerance(local, ids, offsets, weights)
        if mode == "mean":
            bound = bound / np.maximum(np.diff(offsets), 1)[:, None] + np.abs(expected) * np.finfo(np.float32).eps
        assert np.all(np.abs(out - expected) <= bound)
    # Fixed-length bags as a 2-D array, and the same call again: the same bits.
    square = rng.integers(0, NUM_ROWS, (30, 4))
    again = table.gather_bags(square, mode=mode)
    np.testing.assert_array_equal(again, table.gather_bags(square, mode=mode))
    np.testing.assert_allclose(again, embtab.gather_bags(local, square, mode=mode), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("num_shards", "route"), [(1, "hash"), (3, "hash"), (4, "range")])
def test_max_winners_are_the_local_ones_also_on_ties(ray_local: Any, lookup_table: Any, num_shards: int,
                                                     route: str) -> None:
    table, local = lookup_table(num_shards, route)
    rng = np.random.default_rng(5)
    ids, offsets = bags_batch(rng)
    out, argmax = table.gather_bags(ids, offsets, mode="max", return_argmax=True)
    expected, expected_argmax = embtab.gather_bags(local, ids, offsets, mode="max", return_argmax=True)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(argmax, expected_argmax)
    # An all-zero table: every element ties across shards; the local kernel picks the bag's first id.
    with ShardedTable(NUM_ROWS, DIM, num_shards=num_shards, route=route, init="zeros") as zeros:
        out, argmax = zeros.gather_bags(ids, offsets, mode="max", return_argmax=True)
    expected, expected_argmax = embtab.gather_bags(np.zeros((NUM_ROWS, DIM), np.float32), ids, offsets, mode="max",
                                                   return_argmax=True)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(argmax, expected_argmax)


# --------------------------------------------------------------------------------------------
# Training against the local optimizer: every row bitwise


def local_state(opt: Any) -> Dict[str, np.ndarray]:
    return {k: v for k, v in opt.state.items() if isinstance(v, np.ndarray) and v.ndim > 0}


def train_both(table: ShardedTable, local: np.ndarray, opt: Any, rng: np.random.Generator, steps: int,
               record: Optional[List[Any]] = None) -> None:
    """``steps`` identical steps on the sharded table and the local optimizer: step() with repeated
    ids, and step_bags() in each mode (weighted sum, weighted mean, max)."""
    for k in range(steps):
        kind = k % 4
        if kind == 0:
            ids = rng.integers(0, NUM_ROWS, (12, 3))
            ids[0, 0] = ids[1, 1] = ids[2, 2]  # repeated ids: summed in order before the update
            grads = rng.standard_normal((12, 3, DIM)).astype(local.dtype)
            table.step(ids, grads)
            opt.step(ids, grads)
            continue
        ids, offsets = bags_batch(rng, num_bags=16, max_len=6)
        grad_out = rng.standard_normal((16, DIM)).astype(local.dtype)
        mode = ("sum", "mean", "max")[kind - 1]
        weights = rng.random(ids.size).astype(local.dtype) if mode != "max" else None
        table.step_bags(grad_out, ids, offsets, mode=mode, weights=weights)
        opt.step_bags(grad_out, ids, offsets, mode=mode, weights=weights)


def assert_same_training_state(table: ShardedTable, local: np.ndarray, opt: Any, steps: int) -> None:
    rows, state, step_counts = table._export()
    assert rows.tobytes() == local.tobytes()  # bitwise, signs of zeros included
    expected = local_state(opt)
    assert sorted(state) == sorted(expected)
    for key in expected:
        assert state[key].tobytes() == expected[key].tobytes(), key
    assert step_counts == [steps] * table.num_shards
    if "step" in opt.state:
        assert opt.state["step"] == steps


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_updates_every_row_bitwise_as_the_local_run(ray_local: Any, name: str) -> None:
    cls, hyper = OPTIMIZERS[name]
    steps = 100

    def run(layout: Tuple[int, str]) -> None:
        num_shards, route = layout
        seed = 100 * num_shards + len(route)
        with ShardedTable(NUM_ROWS, DIM, num_shards=num_shards, route=route, seed=seed, optimizer=(name, hyper)) as table:
            local = table.to_numpy()
            opt = cls(local, **hyper)
            train_both(table, local, opt, np.random.default_rng(seed), steps)
            assert_same_training_state(table, local, opt, steps)

    # The 8 layouts side by side: each call waits on Ray most of its time.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, LAYOUTS))


def test_every_shard_counts_every_step(ray_local: Any) -> None:
    hyper = {"lr": 0.05}
    with ShardedTable(NUM_ROWS, DIM, num_shards=3, route="range", dtype=np.float64, optimizer=("adam", hyper)) as table:
        local = table.to_numpy()
        opt = embtab.optim.Adam(local, **hyper)
        assert local.dtype == np.float64
        only_first = np.array([0, 1, 2, 1])  # rows of shard 0 only; shards 1 and 2 still take the step
        grads = np.ones((4, DIM))
        for ids, g in ((only_first, grads), (np.zeros(0, np.int64), np.zeros((0, DIM))), (only_first + 200, grads)):
            table.step(ids, g)
            opt.step(ids, g)
        assert table.step_count == (3, 3, 3) and opt.state["step"] == 3
        assert_same_training_state(table, local, opt, 3)


# --------------------------------------------------------------------------------------------
# Bad input: the local contract, and nothing sent


@pytest.fixture(scope="module")
def trained(ray_local: Any) -> Iterator[Tuple[ShardedTable, np.ndarray, Any]]:
    table = ShardedTable(NUM_ROWS, DIM, num_shards=2, route="hash", optimizer=("adagrad", {"lr": 0.1}), seed=2)
    local = table.to_numpy()
    opt = embtab.optim.Adagrad(local, lr=0.1)
    yield table, local, opt
    table.close()


def error_of(call: Callable[[], Any]) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


BAD_CALLS = {
    "gather": lambda t, ids: t.gather(ids),
    "gather_bags": lambda t, ids: t.gather_bags(ids, mode="mean"),
    "step": lambda t, ids: t.step(ids, np.ones(np.shape(ids) + (DIM,), np.float32)),
    "step_bags": lambda t, ids: t.step_bags(np.ones((len(ids), DIM), np.float32), ids),
}


@pytest.mark.parametrize("call", list(BAD_CALLS))
@pytest.mark.parametrize("bad", [-1, NUM_ROWS, 2**40])
def test_bad_id_raises_the_local_error_and_changes_nothing(trained: Any, call: str, bad: int) -> None:
    table, local, opt = trained
    ids = np.array([[3, 4, 5], [6, 7, 8]])
    ids[1, 2] = bad
    before, steps, stats = table.to_numpy(), table.step_count, table.stats()
    got = error_of(lambda: BAD_CALLS[call](table, ids))
    if call == "gather":
        expected = error_of(lambda: embtab.gather(local, ids))
    elif call == "gather_bags":
        expected = error_of(lambda: embtab.gather_bags(local, ids, mode="mean"))
    else:
        expected = error_of(lambda: BAD_CALLS[call](opt, ids))
    assert type(got) is IndexError and type(expected) is IndexError
    assert str(got) == str(expected) and "ids[1, 2] = " in str(got)
    np.testing.assert_array_equal(table.to_numpy(), before)
    assert table.step_count == steps
    # Nothing reached any shard: no bytes sent for the call, no step or lookup run there.
    after = table.stats()
    assert [e["bytes_sent"] for e in after] == [e["bytes_sent"] for e in stats]
    assert [e["calls"] for e in after] == [dict(e["calls"], export=e["calls"].get("export", 0) + 1) for e in stats]


def test_bad_types_and_shapes_raise_like_the_local_calls(trained: Any) -> None:
    table, local, opt = trained
    ids = np.array([[1, 2], [3, 4]])
    cases = [
        (lambda t: t.step(ids, np.ones((2, 2, DIM))), TypeError, "grads must have the table's dtype float32, got float64"),
        (lambda t: t.step(ids, np.ones((2, 2, DIM + 1), np.float32)), ValueError,
         r"grads must have shape ids.shape \+ \(dim,\) = \(2, 2, 8\) for ids of shape \(2, 2\), got \(2, 2, 9\)"),
        (lambda t: t.step(ids.astype(np.float32), np.ones((2, 2, DIM), np.float32)), TypeError, "ids"),
        (lambda t: t.step_bags(np.ones((2, DIM + 1), np.float32), ids), ValueError,
         r"grad_out must have the table's row length: shape \(2, 8\), got \(2, 9\)"),
        (lambda t: t.step_bags(np.ones((2, DIM), np.float64), ids), TypeError, "grad_out must have the table's dtype"),
        (lambda t: t.step_bags(np.ones((3, DIM), np.float32), ids), ValueError, "one row per bag"),
        (lambda t: t.step_bags(np.ones((2, DIM), np.float32), ids, mode="max", weights=np.ones((2, 2), np.float32)),
         ValueError, "max"),
    ]
    before, steps = table.to_numpy(), table.step_count
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call(table)
        with pytest.raises(error, match=match):
            call(opt)
    flat = np.array([1, 2, 3])
    for offsets in (np.array([1, 3]), np.array([0, 2, 1, 3]), np.array([0, 2])):
        local_error = error_of(lambda: embtab.gather_bags(local, flat, offsets))  # noqa: B023 -- called right here
        assert isinstance(local_error, ValueError)
        with pytest.raises(ValueError) as info:
            table.gather_bags(flat, offsets)
        assert str(info.value) == str(local_error)
    with pytest.raises(TypeError):
        table.gather_bags(flat, np.array([0, 3]), weights=np.ones(3))  # float64 weights, float32 table
    np.testing.assert_array_equal(table.to_numpy(), before)
    assert table.step_count == steps


def test_bad_constructor_arguments_start_no_actor(ray_local: Any) -> None:
    cases = [
        (dict(num_shards=0), ValueError, "num_shards must be >= 1"),
        (dict(num_shards=2, route="modulo"), ValueError, "route must be 'hash' or 'range'"),
        (dict(num_shards=2, optimizer=("lamb", {"lr": 1.0})), ValueError, "unknown optimizer 'lamb'"),
        (dict(num_shards=2, optimizer=("adam", {"lr": -1.0})), ValueError, "lr must be >= 0"),
        (dict(num_shards=2, optimizer="adam"), TypeError, r"optimizer must be None or a pair \(name"),
        (dict(num_shards=2, dtype=np.int32), TypeError, "dtype must be float32 or float64"),
        (dict(num_shards=2, init="ones"), ValueError, "init must be one of"),
        (dict(num_shards=2, seed=-1), ValueError, r"seed must be in \[0, 2\*\*32\)"),
        (dict(num_shards=2, timeout=0), ValueError, "timeout must be a positive number"),
        (dict(num_shards=2, actor_options=[("num_cpus", 1)]), TypeError, "actor_options must be a dict"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            ShardedTable(10, 4, **kwargs)
    with pytest.raises(RuntimeError, match="has no optimizer"):
        with ShardedTable(10, 4, num_shards=1) as table:
            table.step([1], np.ones((1, 4), np.float32))


def test_a_shard_that_cannot_start_times_out_instead_of_hanging(ray_local: Any) -> None:
    with pytest.raises(TimeoutError, match="did not start within 3 s"):
        ShardedTable(10, 4, num_shards=2, actor_options={"num_cpus": 64}, timeout=3)


def test_layout_and_stats(ray_local: Any) -> None:
    with ShardedTable(NUM_ROWS, DIM, num_shards=3, route="range", optimizer=("rowwise_adagrad", {"lr": 0.1})) as table:
        assert (table.num_rows, table.dim, table.shape, table.num_shards, table.route) == (NUM_ROWS, DIM, (NUM_ROWS, DIM), 3, "range")
        assert table.shards == (Shard(0, 86, 0, 86), Shard(1, 86, 86, 172), Shard(2, 85, 172, 257))
        table.gather_bags([[1, 100, 200]])
        table.step([5], np.ones((1, DIM), np.float32))
        stats = table.stats()
        assert [e["rows"] for e in stats] == [86, 86, 85]
        assert [e["bytes"] for e in stats] == [n * (DIM * 4 + 4) for n in (86, 86, 85)]  # rows + row-wise state
        assert [e["calls"]["bags"] for e in stats] == [1, 1, 1] and [e["calls"]["step"] for e in stats] == [1, 1, 1]
        assert [e["step_count"] for e in stats] == [1, 1, 1] and all(e["alive"] for e in stats)
        assert len({e["pid"] for e in stats}) == 3 and all(e["bytes_received"] > 0 for e in stats)
        assert table.optimizer == ("rowwise_adagrad", {"lr": 0.1})
        assert "num_shards=3" in repr(table)
    with ShardedTable(NUM_ROWS, DIM, num_shards=3) as table:
        sizes = [s.num_rows for s in table.shards]
        assert sum(sizes) == NUM_ROWS and all(s.start is None for s in table.shards)
        assert sizes == [e["rows"] for e in table.stats()]


# --------------------------------------------------------------------------------------------
# The layer, and embtab.save / embtab.load


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_sharded_embedding_bag_trains_as_the_local_layer(ray_local: Any, tmp_path: Any, mode: str) -> None:
    hyper = {"lr": 0.05}
    layer = ShardedEmbeddingBag(NUM_ROWS, DIM, num_shards=3, mode=mode, optimizer=("adagrad", hyper), seed=4)
    local = embtab.EmbeddingBag(NUM_ROWS, DIM, mode=mode)
    local.weight[...] = layer.table.to_numpy()
    opt = embtab.optim.Adagrad(local, **hyper)
    rng = np.random.default_rng(9)
    for _ in range(12):
        ids, offsets = bags_batch(rng, num_bags=10, max_len=5)
        weights = rng.random(ids.size).astype(np.float32) if mode != "max" else None
        out = layer(ids, offsets, weights)
        expected = local.forward(ids, offsets, weights)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        grad_out = rng.standard_normal(out.shape).astype(np.float32)
        layer.zero_grad()
        opt.zero_grad()
        rows, grads = layer.backward(grad_out)
        local_rows, local_grads = local.backward(grad_out)
        np.testing.assert_array_equal(rows, local_rows)
        np.testing.assert_array_equal(grads, local_grads)
        layer.step()
        opt.step()
    assert layer.table.to_numpy().tobytes() == local.weight.tobytes()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(grad_out)
    # Two forwards before one step: the gradients add up, as the local layer's do.
    layer.zero_grad()
    local.zero_grad()
    for _ in range(2):
        ids, offsets = bags_batch(rng, num_bags=10, max_len=5)
        layer(ids, offsets)
        local.forward(ids, offsets)
        grad_out = rng.standard_normal((10, DIM)).astype(np.float32)
        layer.backward(grad_out)
        local.backward(grad_out)
    np.testing.assert_array_equal(layer.grad[0], local.grad[0])
    np.testing.assert_allclose(layer.grad[1], local.grad[1], rtol=1e-6, atol=1e-6)

    # embtab.save / embtab.load: the layer and a plain table, beside a local array.
    plain = ShardedTable.from_array(local.weight, num_shards=2, route="range")
    embtab.save(tmp_path / "ck", layer=layer, plain=plain, extra=np.arange(3))
    loaded = embtab.load(tmp_path / "ck")
    assert isinstance(loaded["layer"], ShardedEmbeddingBag) and loaded["layer"].mode == mode
    assert isinstance(loaded["plain"], ShardedTable) and loaded["plain"].num_shards == 2
    np.testing.assert_array_equal(loaded["extra"], np.arange(3))
    rows, state, steps = loaded["layer"].table._export()
    assert rows.tobytes() == local.weight.tobytes() and steps == [12, 12, 12]
    assert state["sum"].tobytes() == opt.state["sum"].tobytes()
    np.testing.assert_array_equal(loaded["plain"].to_numpy(), local.weight)
    # The loaded layer goes on training as the local one does.
    ids = rng.integers(0, NUM_ROWS, (5, 3))
    grad_out = rng.standard_normal((5, DIM)).astype(np.float32)
    local.zero_grad()  # the gradient is not part of a checkpoint
    for model in (loaded["layer"], local):
        model.forward(ids)
        model.backward(grad_out)
    loaded["layer"].step()
    opt.step()
    assert loaded["layer"].table.to_numpy().tobytes() == local.weight.tobytes()
    for obj in (layer.table, plain, loaded["layer"].table, loaded["plain"]):
        obj.close()


# --------------------------------------------------------------------------------------------
# Checkpoints


def read_manifest(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def snapshot(table: ShardedTable) -> Tuple[bytes, Dict[str, bytes], List[int]]:
    rows, state, steps = table._export()
    return rows.tobytes(), {k: v.tobytes() for k, v in state.items()}, steps


def test_save_load_and_reshard(ray_local: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "ck")
    hyper = {"lr": 0.05}
    rng = np.random.default_rng(21)
    with ShardedTable(NUM_ROWS, DIM, num_shards=3, optimizer=("adam", hyper), seed=5, checkpoint_dir=path) as table:
        local = table.to_numpy()
        opt = embtab.optim.Adam(local, **hyper)
        train_both(table, local, opt, rng, 6)
        assert table.save() == path
        saved = snapshot(table)
        local_saved = (local.copy(), {k: v.copy() for k, v in local_state(opt).items()})
        manifest = read_manifest(os.path.join(path, "manifest.json"))
        assert (manifest["num_rows"], manifest["dim"], manifest["num_shards"], manifest["route"]) == (NUM_ROWS, DIM, 3, "hash")
        assert manifest["step_count"] == [6, 6, 6] and manifest["optimizer"] == ["adam", hyper]
        assert [len(e["sha256"]) for e in manifest["shards"]] == [64] * 3
        assert sorted(os.listdir(path)) == sorted(["manifest.json", manifest["generation"]])
        train_both(table, local, opt, rng, 3)
        assert snapshot(table) != saved
        table.load()
        assert snapshot(table) == saved

        # Re-shard: other shard counts and routes read the same rows, state and steps.
        for num_shards, route in [(1, "hash"), (2, "range"), (4, "hash")]:
            with ShardedTable.from_checkpoint(path, num_shards=num_shards, route=route) as other:
                assert (other.num_shards, other.route, other.checkpoint_dir) == (num_shards, route, path)
                rows, state, steps = other._export()
                assert rows.tobytes() == saved[0] and {k: v.tobytes() for k, v in state.items()} == saved[1]
                assert steps == [6] * num_shards and other.optimizer == ("adam", hyper)
                if num_shards == 4:  # ... and trains on as the local run from the same checkpoint
                    np.copyto(local, local_saved[0])
                    for k, v in local_saved[1].items():
                        np.copyto(opt.state[k], v)
                    opt.state["step"] = 6
                    train_both(other, local, opt, np.random.default_rng(77), 5)
                    assert_same_training_state(other, local, opt, 11)

        # A table of another layout loads it in place; one of another shape refuses it.
        with ShardedTable(NUM_ROWS, DIM, num_shards=2, route="range") as two:
            two.load(path)
            assert snapshot(two)[:2] == saved[:2] and two.step_count == (6, 6) and two.optimizer == ("adam", hyper)
        with ShardedTable(NUM_ROWS, DIM + 1, num_shards=1) as wrong:
            with pytest.raises(ValueError, match=r"holds a \(257, 8\) float32 table, this one is \(257, 9\)"):
                wrong.load(path)
        with pytest.raises(FileNotFoundError, match="no sharded checkpoint"):
            table.load(tmp_path / "missing")

        # A second save replaces the first generation, and leftovers of interrupted saves go too.
        os.makedirs(os.path.join(path, "gen-leftover", "shard-00000"))
        open(os.path.join(path, ".manifest.json.crashed.tmp"), "w").close()
        table.save()
        manifest2 = read_manifest(os.path.join(path, "manifest.json"))
        assert manifest2["generation"] != manifest["generation"]
        assert sorted(os.listdir(path)) == sorted(["manifest.json", manifest2["generation"]])


def test_corrupt_checkpoint_is_refused_and_changes_no_shard(ray_local: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "ck")
    with ShardedTable(NUM_ROWS, DIM, num_shards=2, route="range", seed=1) as table:
        table.save(path)
        with ShardedTable(NUM_ROWS, DIM, num_shards=2, route="range", seed=2) as other:
            before = snapshot(other)
            manifest = read_manifest(os.path.join(path, "manifest.json"))
            # Swap shard 1's files for another save's: each file is intact, but not the one the manifest names.
            table.save(str(tmp_path / "other"))
            other_manifest = read_manifest(os.path.join(tmp_path, "other", "manifest.json"))
            manifest["shards"][1]["sha256"] = other_manifest["shards"][0]["sha256"]
            with open(os.path.join(path, "manifest.json"), "w") as f:
                json.dump(manifest, f)
            with pytest.raises(embtab.CheckpointError, match=r"shard 1 of the checkpoint .* does not match its manifest"):
                other.load(path)
            assert snapshot(other) == before  # shard 0 read its rows but did not switch to them


# --------------------------------------------------------------------------------------------
# Lost shards


def replay(table: ShardedTable, local: np.ndarray, opt: Any, seed: int, steps: int) -> None:
    train_both(table, local, opt, np.random.default_rng(seed), steps)


def kill_shard(table: ShardedTable, shard: int, sig: Optional[int] = None) -> None:
    """Ends a shard's actor process (ray.kill, or the signal `sig`) and waits until the process is
    gone: ray.kill only asks for it, and a call sent before the process ends would still be served."""
    pid = table.stats()[shard]["pid"]
    if sig is None:
        ray.kill(table._actors[shard], no_restart=False)
    else:
        os.kill(pid, sig)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return  # a zombie: the process has ended
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the process {pid} of shard {shard} did not end")


def test_killed_shard_raises_shard_lost_recovers_and_training_goes_on(ray_local: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "ck")
    hyper = {"lr": 0.05}
    with ShardedTable(NUM_ROWS, DIM, num_shards=3, optimizer=("adam", hyper), seed=8, checkpoint_dir=path) as table:
        local = table.to_numpy()
        opt = embtab.optim.Adam(local, **hyper)
        replay(table, local, opt, 1, 4)
        table.save()
        saved = (local.copy(), {k: v.copy() for k, v in local_state(opt).items()})
        rng = np.random.default_rng(2)
        train_both(table, local, opt, rng, 3)

        # ray.kill: the actor process ends; Ray restarts it from the checkpoint.
        kill_shard(table, 1)
        ids = np.arange(NUM_ROWS)
        with pytest.raises(ShardLost) as info:
            table.step(ids, np.ones((NUM_ROWS, DIM), np.float32))
        assert (info.value.shard, info.value.step, info.value.lost) == (1, 4, {1: 4})
        assert f"shard 1 of 3 was lost; Ray restarted it from the checkpoint in {path} at step 4" in str(info.value)
        assert table.step_count == (8, 4, 8)  # the others ran the step; nothing is hidden
        table.gather([0, 1, 2])  # the table keeps working

        # SIGKILL of a shard's process (as the OOM killer would): the next call that reaches it raises.
        kill_shard(table, 2, signal.SIGKILL)
        with pytest.raises(ShardLost) as info:
            table.gather(ids)
        assert (info.value.shard, info.value.step) == (2, 4)
        assert table.stats()[2]["restarted"] and table.stats()[2]["rows_from"] == f"the checkpoint in {path}"

        # Back to one consistent state, and on: bitwise the local run from the same checkpoint.
        table.load()
        assert table.step_count == (4, 4, 4)
        np.copyto(local, saved[0])
        for k, v in saved[1].items():
            np.copyto(opt.state[k], v)
        opt.state["step"] = 4
        replay(table, local, opt, 3, 8)
        assert_same_training_state(table, local, opt, 12)


def test_lost_shard_without_checkpoint_goes_back_to_its_initial_rows(ray_local: Any) -> None:
    with ShardedTable(NUM_ROWS, DIM, num_shards=2, route="range", optimizer=("sgd", {"lr": 1.0}), seed=3) as table:
        initial = table.to_numpy()
        table.step(np.arange(NUM_ROWS), np.ones((NUM_ROWS, DIM), np.float32))
        kill_shard(table, 0)
        with pytest.raises(ShardLost, match=r"restarted it from its initial rows .no checkpoint. at step 0") as info:
            table.gather([0])
        assert info.value.lost == {0: 0}
        rows = table.to_numpy()
        np.testing.assert_array_equal(rows[:129], initial[:129])
        np.testing.assert_array_equal(rows[129:], initial[129:] - 1)
        assert table.step_count == (0, 1)


def test_shard_that_stays_dead_or_has_no_rows_until_load(ray_local: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "ck")
    rows = np.random.default_rng(0).standard_normal((NUM_ROWS, DIM)).astype(np.float32)
    # Ray may not restart it (max_restarts=0): every call says so, until load() starts it again.
    with ShardedTable.from_array(rows, num_shards=2, actor_options={"max_restarts": 0}) as table:
        table.save(path)
        kill_shard(table, 1)
        for _ in range(2):
            with pytest.raises(ShardLost, match=r"shard 1 of 2 was lost and has no rows now .Ray will not restart it") as info:
                table.gather(np.arange(NUM_ROWS))
            assert info.value.lost == {1: None}
        assert table.stats()[1]["alive"] is False
        table.load(path)
        np.testing.assert_array_equal(table.gather(np.arange(NUM_ROWS)), rows)
    # Built from arrays and never saved into checkpoint_dir: a restarted shard has nothing to go back to.
    with ShardedTable.from_array(rows, num_shards=2) as table:
        table.save(path)  # not its checkpoint_dir (it has none): restarts do not read it
        kill_shard(table, 0)
        with pytest.raises(ShardLost, match=r"has no rows now .nothing") as info:
            table.gather([0, 1, 2])
        assert info.value.lost == {0: None} and table.step_count == (None, 0)
        with pytest.raises(ShardLost):
            table.gather([0, 1, 2])
        table.load(path)
        np.testing.assert_array_equal(table.to_numpy(), rows)


def test_embtab_load_finds_the_sharded_classes_without_an_import(ray_local: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "ck")
    with ShardedTable(10, 2, num_shards=1) as table:
        embtab.save(path, table=table)
    # A fresh process that never imported embtab.distributed: load() imports it for the entry, so
    # without Ray the error is the package's own, naming the extra to install.
    done = run_python(f"import sys; sys.modules['ray'] = None\nimport embtab\nembtab.load({path!r})")
    assert done.returncode != 0
    assert "CheckpointError: the checkpoint holds a distributed.ShardedTable, which needs embtab.distributed" in done.stderr
    assert "embtab.distributed needs Ray: pip install \"embtab[ray]\"" in done.stderr


def test_a_table_passed_to_ray_tasks_is_the_same_table(lookup_table: Any) -> None:
    table, local = lookup_table(2, "hash")

    @ray.remote
    def lookup(t: ShardedTable, ids: np.ndarray) -> np.ndarray:
        return t.gather_bags(ids, mode="max")

    ids = np.random.default_rng(0).integers(0, NUM_ROWS, (20, 4))
    np.testing.assert_array_equal(ray.get(lookup.remote(table, ids), timeout=120),
                                  embtab.gather_bags(local, ids, mode="max"))
