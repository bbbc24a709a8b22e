"""DynamicTable: keys, fused lookups against gather / gather_bags on the rows, the row
initialisation, bad input, threads, training against a fixed table, and checkpoints."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

import embtab

from test_concurrency import run_threads  # tests/ is on sys.path (pytest rootdir imports)

FLOAT_DTYPES = [np.float32, np.float64]


def random_keys(rng, n, pool=None):
    if pool is None:
        return rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)
    return rng.choice(pool, n)


# --- keys ---------------------------------------------------------------------------------------


def test_lookup_gives_each_key_one_row_in_first_occurrence_order():
    t = embtab.DynamicTable(4)
    keys = np.array([[7, -2**63, 7], [2**63 - 1, 0, -2**63]])
    rows = t.lookup(keys)
    assert rows.dtype == np.int64 and rows.shape == keys.shape
    assert rows.tolist() == [[0, 1, 0], [2, 3, 1]]
    assert len(t) == 4 and t.weight.shape == (4, 4)
    assert t.keys().tolist() == [7, -2**63, 2**63 - 1, 0]
    keys_out, rows_out = t.export()
    assert keys_out.tolist() == [7, -2**63, 2**63 - 1, 0] and rows_out.tolist() == [0, 1, 2, 3]
    assert t.lookup(0) == 3 and isinstance(t.lookup(0), np.integer)
    assert t.lookup([], insert=False).shape == (0,)


def test_insert_false_changes_nothing():
    t = embtab.DynamicTable(2, admit_after=2)
    t.lookup([1, 1, 2])
    before = (t.export(), t.stats()["pending"], t.weight.copy())
    assert t.lookup([1, 2, 3], insert=False).tolist() == [0, -1, -1]
    assert t.lookup([2], insert=False).tolist() == [-1]  # still one sighting: not admitted
    after = (t.export(), t.stats()["pending"], t.weight.copy())
    np.testing.assert_array_equal(before[0][0], after[0][0])
    assert before[1] == after[1] == 1
    assert t.lookup([2]).tolist() == [1]  # the second sighting admits it


def test_str_and_bytes_keys_are_their_murmur3_128_hashes():
    t = embtab.DynamicTable(3)
    words = ["apple", "pear", "apple", "", "ünïcode"]
    rows = t.lookup(words)
    assert rows.tolist() == [0, 1, 0, 2, 3]
    expected = [np.uint64(embtab.murmur3_128(w)[0]).astype(np.int64) for w in ["apple", "pear", "", "ünïcode"]]
    assert t.keys().tolist() == [int(np.int64(np.uint64(e))) for e in expected]
    assert t.lookup(b"pear", insert=False) == 1  # bytes hash as their bytes, like the UTF-8 of str
    assert t.lookup(np.array(["pear", "apple"]), insert=False).tolist() == [1, 0]
    assert t.lookup(np.array([b"pear"], dtype="S"), insert=False).tolist() == [1]
    mmh3 = pytest.importorskip("mmh3")
    assert t.keys()[0] == np.uint64(mmh3.hash64("apple", 0, signed=False)[0]).astype(np.int64)


def test_integer_key_dtypes():
    t = embtab.DynamicTable(2)
    t.lookup(np.array([5, 2**62], dtype=np.uint64))
    assert t.lookup(np.array([5], np.int32), insert=False).tolist() == [0]
    assert t.lookup(np.array([5], np.uint8), insert=False).tolist() == [0]
    assert t.lookup(np.array([2**62], np.int64), insert=False).tolist() == [1]
    assert t.lookup(np.arange(10)[::3], insert=False).tolist() == [-1, -1, -1, -1]  # strided input


# --- fused lookups ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gather_and_bags_equal_the_fixed_kernels_on_the_rows(each_path_and_threads, dtype):
    rng = np.random.default_rng(0)
    t = embtab.DynamicTable(32, dtype=dtype, admit_after=2, seed=3)
    pool = random_keys(rng, 3000)
    t.lookup(random_keys(rng, 20000, pool))
    keys = random_keys(rng, (500, 20), np.concatenate([pool, [1, 2, 3]]))  # some never seen: zero rows
    rows = t.lookup(keys, insert=False)
    assert (rows == -1).any() and (rows >= 0).any()
    weight = t.weight
    expected = np.where((rows >= 0)[..., None], weight[np.maximum(rows, 0)], 0)
    np.testing.assert_array_equal(t.gather(keys, insert=False), expected)
    w = rng.random(keys.shape).astype(dtype)
    offsets = np.array([0, 3, 3, 10000])
    for mode in ("sum", "mean", "max"):
        got = t.gather_bags(keys, mode=mode, insert=False)
        want, _ = embtab.gather_bags(weight, rows, mode=mode, bounds="zero")
        np.testing.assert_array_equal(got, want)
        got = t.gather_bags(keys.reshape(-1), offsets, mode=mode, insert=False)
        want, _ = embtab.gather_bags(weight, rows.reshape(-1), offsets, mode=mode, bounds="zero")
        np.testing.assert_array_equal(got, want)
    got = t.gather_bags(keys, mode="sum", weights=w, insert=False)
    want, _ = embtab.gather_bags(weight, rows, mode="sum", weights=w, bounds="zero")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("admit_after,max_rows", [(1, None), (2, 1500), (3, 400)])
def test_results_are_the_same_for_every_path_and_thread_count(each_path_and_threads, admit_after, max_rows):
    """Rows, values, evictions and pooled outputs of a sequence of large calls (several chunks per
    call) match a run with one thread on the scalar path."""

    def run():
        rng = np.random.default_rng(11)
        t = embtab.DynamicTable(16, admit_after=admit_after, max_rows=max_rows, evict="lfu", ttl=2, seed=5)
        opt = embtab.optim.Adagrad(t, lr=0.1)
        pool = random_keys(rng, 5000)
        out = []
        for _ in range(4):
            keys = random_keys(rng, 30000, pool)
            out.append(t.lookup(keys))
            out.append(t.last_evicted())
            bags = t.gather_bags(keys.reshape(-1, 10), mode="mean")
            out.append(bags)
            opt.step_bags(np.ones_like(bags), keys.reshape(-1, 10), mode="mean")
        out.extend(t.export())
        out.append(t.weight.copy())
        out.append(opt.state["sum"].copy())
        return out

    got = run()
    previous = embtab.simd_path(), embtab.get_num_threads()
    embtab.set_simd_path("scalar")
    embtab.set_num_threads(1)
    try:
        expected = run()
    finally:
        embtab.set_simd_path(previous[0])
        embtab.set_num_threads(previous[1])
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


# --- initial values -----------------------------------------------------------------------------


def mix64(x):
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def reference_init(key, dim, seed, init, scale):
    """The documented generator, written independently in float64 numpy: per pair of elements one
    64-bit hash of (seed, key, pair) gives two 24-bit uniforms, then Box-Muller (or a uniform)."""
    with np.errstate(over="ignore"):
        golden = np.uint64(0x9E3779B97F4A7C15)
        base = mix64(np.uint64(key % 2**64) ^ mix64(np.uint64(seed) ^ golden))
        pairs = np.arange(1, (dim + 1) // 2 + 1, dtype=np.uint64)
        h = mix64(base + pairs * golden)
    u1 = (h >> np.uint64(40)).astype(np.float64) / 2**24
    u2 = ((h >> np.uint64(16)) & np.uint64(0xFFFFFF)).astype(np.float64) / 2**24
    if init == "uniform":
        first, second = (2 * u1 - 1) * scale, (2 * u2 - 1) * scale
    else:
        r = np.sqrt(-2 * np.log(1 - u1)) * scale
        first, second = r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)
    return np.stack([first, second], axis=1).reshape(-1)[:dim]


@pytest.mark.parametrize("init,std,scale", [("normal", None, 1.0), ("normal", 0.05, 0.05), ("uniform", None, 1 / 7),
                                            ("uniform", 0.2, 0.2 * math.sqrt(3))])
def test_initial_values_follow_the_documented_generator(init, std, scale):
    keys = np.array([0, 1, -1, 2**63 - 1, -(2**63), 123456789])
    t = embtab.DynamicTable(7, init=init, std=std, seed=42)
    got = t.gather(keys)
    for key, row in zip(keys.tolist(), got):
        np.testing.assert_allclose(row, reference_init(key, 7, 42, init, scale), rtol=2e-6, atol=2e-6 * scale)


def test_normal_rows_are_standard_normal():
    t = embtab.DynamicTable(64, seed=1)
    values = t.gather(np.arange(4000)).astype(np.float64).reshape(-1)
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    # Kolmogorov-Smirnov distance to N(0, 1) (critical value at 1e-3 for n = 256000: 0.0038)
    values.sort()
    cdf = 0.5 * (1 + np.vectorize(math.erf)(values / math.sqrt(2)))
    n = values.size
    distance = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert distance < 0.0038
    assert np.abs(values).max() < 6
    assert np.all(embtab.DynamicTable(5, init="zeros").gather([1, 2]) == 0)


def test_starting_values_depend_on_the_key_only():
    a = embtab.DynamicTable(8, seed=9)
    b = embtab.DynamicTable(8, seed=9, max_rows=2)
    c = embtab.DynamicTable(8, seed=10)
    a.lookup([1, 2, 3])
    b.lookup([3, 2])
    np.testing.assert_array_equal(a.gather([3, 2], insert=False), b.gather([3, 2], insert=False))
    assert not np.array_equal(a.gather([3]), c.gather([3]))
    # A reused row starts afresh: key 1 takes key 3's row (the oldest) with key 1's own values.
    b.weight[:] = 100.0
    assert b.lookup([1]) == 0 and b.last_evicted().tolist() == [3]
    np.testing.assert_array_equal(b.weight[0], a.weight[0])
    assert np.all(b.weight[1] == 100.0)


def test_optimizer_state_of_a_reused_row_starts_fresh():
    t = embtab.DynamicTable(2, max_rows=1, init="zeros")
    opt = embtab.optim.Adagrad(t, lr=1.0, initial_accumulator_value=0.5)
    t.lookup([10])
    opt.step([10], np.ones((1, 2), np.float32))
    assert opt.state["sum"].tolist() == [[1.5, 1.5]]
    t.lookup([11])  # evicts 10 and reuses its row
    assert t.last_evicted().tolist() == [10]
    assert opt.state["sum"].tolist() == [[0.5, 0.5]] and t.weight.tolist() == [[0.0, 0.0]]


# --- eviction, ttl, stats -----------------------------------------------------------------------


def test_ttl_counts_steps():
    t = embtab.DynamicTable(2, ttl=1, admit_after=2)
    t.lookup([1, 2, 2])  # 1 waits, 2 gets row 0
    t.advance()  # step 1: both seen 1 step ago: kept
    assert len(t) == 1 and t.stats()["pending"] == 1
    t.lookup([2])
    t.advance()  # step 2: key 1 (pending, last seen at step 0) is forgotten, 2 stays
    assert t.stats()["pending"] == 0 and t.last_evicted().tolist() == []
    t.advance()  # step 3: 2 last seen at step 1
    assert len(t) == 0 and t.last_evicted().tolist() == [2]
    assert t.lookup([1]).tolist() == [-1]  # its count started again


def test_explicit_evict_and_stats():
    t = embtab.DynamicTable(4, capacity=10)
    t.lookup(np.arange(6))
    assert t.evict([4, 2, 4, 99]) == 2 and t.last_evicted().tolist() == [4, 2]
    assert t.lookup([7, 8]).tolist() == [2, 4]  # freed rows are reused smallest first
    s = t.stats()
    assert s["rows"] == len(t) == 6 and s["admitted"] == 8 and s["evicted"] == 2
    assert s["hits"] == 0 and s["misses"] == 8 and s["capacity"] >= 10
    assert s["bytes"] >= s["capacity"] * 4 * 4 + s["slots"] * 24
    t.lookup([0, 0, 123], insert=False)
    s2 = t.stats()
    assert (s2["hits"], s2["misses"]) == (2, 9)


def test_a_call_never_evicts_its_own_keys():
    t = embtab.DynamicTable(2, max_rows=2)
    assert t.lookup([1, 2, 3, 4]).tolist() == [0, 1, -1, -1]  # 3 and 4 wait: rows hold this call's keys
    assert t.stats()["pending"] == 2
    assert t.lookup([3]).tolist() == [0]  # now 1 (least recently used) makes room
    assert t.last_evicted().tolist() == [1]


def test_growth_keeps_every_row():
    t = embtab.DynamicTable(8, seed=2)
    rng = np.random.default_rng(2)
    keys = random_keys(rng, 50000)
    first = t.gather(keys[:1000])
    for chunk in np.array_split(keys, 17):
        t.lookup(chunk)
    assert len(t) == len(np.unique(keys))
    np.testing.assert_array_equal(t.gather(keys[:1000], insert=False), first)
    rows = t.lookup(keys, insert=False)
    assert (rows >= 0).all() and len(np.unique(rows)) == len(t)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [np.array([1.0]), np.array([True]), np.array([2**63], dtype=np.uint64),
                                  np.array(["a", 1], dtype=object), [1.5], np.array([1 + 2j])])
def test_bad_keys_are_type_errors_and_insert_nothing(keys):
    t = embtab.DynamicTable(2)
    for call in (t.lookup, t.gather, t.evict, lambda k: t.gather_bags(k, [0, 1])):
        with pytest.raises(TypeError):
            call(keys)
    assert len(t) == 0 and t.stats()["pending"] == 0


def test_uint64_key_error_names_the_position():
    t = embtab.DynamicTable(2)
    with pytest.raises(TypeError, match=r"keys\[1, 0\] = 18446744073709551615 does not fit in int64"):
        t.lookup(np.array([[1], [2**64 - 1]], dtype=np.uint64))
    assert len(t) == 0


def test_failed_bag_lookups_insert_nothing():
    t = embtab.DynamicTable(2)
    with pytest.raises(ValueError, match="offsets"):
        t.gather_bags([1, 2, 3], [0, 4])
    with pytest.raises(ValueError, match="mode"):
        t.gather_bags([[1, 2]], mode="median")
    with pytest.raises(TypeError, match="weights"):
        t.gather_bags([[1, 2]], weights=np.ones((1, 2), np.float64))
    assert len(t) == 0 and t.stats()["pending"] == 0


@pytest.mark.parametrize("kwargs,error,match", [
    ({"max_rows": 0}, ValueError, "max_rows must be >= 1"),
    ({"admit_after": 0}, ValueError, "admit_after must be >= 1"),
    ({"ttl": -1}, ValueError, "ttl must be >= 0"),
    ({"capacity": -1}, ValueError, "capacity must be >= 0"),
    ({"evict": "fifo"}, ValueError, "evict must be"),
    ({"init": "xavier_uniform"}, ValueError, "init must be"),
    ({"std": -1.0}, ValueError, "std must be"),
    ({"dtype": np.int32}, TypeError, "dtype must be float32 or float64"),
    ({"max_rows": 2.5}, TypeError, "max_rows must be an integer"),
    ({"ttl": True}, TypeError, "ttl must be an integer"),
])
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        embtab.DynamicTable(4, **kwargs)


def test_bad_dim():
    with pytest.raises(ValueError, match="dim must be >= 1"):
        embtab.DynamicTable(0)
    with pytest.raises(TypeError, match="dim must be an integer"):
        embtab.DynamicTable(4.0)


def test_a_closed_table_refuses_every_call():
    t = embtab.DynamicTable(3)
    t.lookup([1, 2])
    view = t.weight
    t.close()
    t.close()  # closing twice is fine
    assert t.closed and "closed" in repr(t)
    for call in (lambda: t.lookup([1]), lambda: t.gather([1]), lambda: t.gather_bags([[1]]), t.advance,
                 lambda: t.evict([1]), t.last_evicted, t.keys, t.export, lambda: len(t), t.stats, lambda: t.weight):
        with pytest.raises(ValueError, match="closed"):
            call()
    assert view.shape == (2, 3) and np.isfinite(view).all()  # a view keeps its memory
    with embtab.DynamicTable(2) as t2:
        t2.lookup([1])
    assert t2.closed


# --- threads ------------------------------------------------------------------------------------


def test_threads_inserting_overlapping_keys_lose_none():
    rng = np.random.default_rng(3)
    pool = random_keys(rng, 20000)
    batches = [[random_keys(rng, 3000, pool) for _ in range(10)] for _ in range(4)]
    t = embtab.DynamicTable(4, admit_after=1)
    seen = [dict() for _ in range(4)]

    def worker(i):
        for keys in batches[i]:
            rows = t.lookup(keys)
            seen[i].update(zip(keys.tolist(), rows.tolist()))

    run_threads(worker)
    keys, rows = t.export()
    final = dict(zip(keys.tolist(), rows.tolist()))
    inserted = set().union(*(b.tolist() for bs in batches for b in bs))
    assert set(final) == inserted and len(set(rows.tolist())) == len(rows) == len(t)
    for s in seen:  # every thread saw the one row each key has
        assert all(final[k] == r for k, r in s.items())


def test_readers_never_see_a_torn_or_reused_row():
    """Readers (insert=False) run while a writer inserts, evicts and reuses rows all the time: a key's
    row, when found, always holds exactly that key's starting values."""
    dim = 64
    t = embtab.DynamicTable(dim, max_rows=300, seed=4)
    oracle = embtab.DynamicTable(dim, seed=4)
    keys = np.arange(2000, dtype=np.int64)
    expected = oracle.gather(keys)
    stop = threading.Event()

    def writer():
        rng = np.random.default_rng(5)
        for _ in range(300):
            t.lookup(rng.choice(keys, 200))
        stop.set()

    def reader(seed):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            ks = rng.choice(keys, 500)
            got = t.gather(ks, insert=False)
            found = np.any(got != 0, axis=1)
            np.testing.assert_array_equal(got[found], expected[ks[found]])

    run_threads(lambda i: writer() if i == 0 else reader(i), n=3)
    assert t.stats()["evicted"] > 1000


def test_concurrent_optimizer_steps_and_lookups_lose_no_update():
    t = embtab.DynamicTable(8, init="zeros")
    keys = np.arange(100)
    t.lookup(keys)
    opt = embtab.optim.SGD(t, lr=1.0)
    calls = 20

    def worker(i):
        for _ in range(calls):
            opt.step(keys, np.ones((100, 8), np.float32))
            t.lookup(np.arange(1000 + 50 * i, 1050 + 50 * i))  # grows the table meanwhile

    run_threads(worker)
    np.testing.assert_array_equal(t.gather(keys, insert=False), np.full((100, 8), -4.0 * calls, np.float32))
    assert t.stats()["step"] == 4 * calls


# --- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer,kwargs", [("SGD", {}), ("Adagrad", {"initial_accumulator_value": 0.1}),
                                              ("RowWiseAdagrad", {"weight_decay": 0.01}), ("Adam", {})])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_training_equals_a_fixed_table_of_the_same_keys(optimizer, kwargs, mode):
    """A small model trained on a DynamicTable and on a fixed table holding the same keys' rows
    (nothing is evicted) ends with identical weights, bit for bit."""
    rng = np.random.default_rng(7)
    vocab = rng.integers(-(2**40), 2**40, 300)
    dim = 16
    layer = embtab.DynamicEmbeddingBag(dim, mode=mode, seed=8)
    opt = getattr(embtab.optim, optimizer)(layer, lr=0.05, **kwargs)
    head = rng.standard_normal(dim).astype(np.float32)
    # The fixed table: the same starting rows, row i for the i-th key to appear.
    index = {}
    batches = []
    for _ in range(30):
        keys = rng.choice(vocab, (32, 5))
        batches.append((keys, rng.random(32).astype(np.float32)))
        for k in keys.reshape(-1).tolist():
            index.setdefault(k, len(index))
    ordered = np.array(sorted(index, key=index.get))
    fixed = embtab.EmbeddingBag(len(index), dim, mode=mode)
    fixed.weight[:] = embtab.DynamicTable(dim, seed=8).gather(ordered)
    fixed_opt = getattr(embtab.optim, optimizer)(fixed, lr=0.05, **kwargs)
    for keys, y in batches:
        for model, o, ids in ((layer, opt, keys), (fixed, fixed_opt, np.vectorize(index.get)(keys))):
            pred = model.forward(ids) @ head
            model.backward(np.outer(2 * (pred - y) / len(y), head).astype(np.float32))
            o.step()
            o.zero_grad()
    keys, rows = layer.table.export()
    np.testing.assert_array_equal(keys, ordered)
    np.testing.assert_array_equal(layer.weight[rows], fixed.weight)
    for name, state in fixed_opt.state.items():
        if isinstance(state, np.ndarray) and state.ndim > 0:
            np.testing.assert_array_equal(opt.state[name][rows], state)
    assert layer.table.stats()["step"] == len(batches)


def test_unknown_keys_get_no_update_and_bags_keep_their_length():
    t = embtab.DynamicTable(2, admit_after=2, init="zeros")
    t.lookup([1, 1, 2])  # 1 admitted, 2 pending
    opt = embtab.optim.SGD(t, lr=1.0)
    grad = np.ones((1, 2), np.float32)
    opt.step_bags(grad, [[1, 2, 3]], mode="mean")  # d(mean)/d(row of 1) = 1/3
    np.testing.assert_allclose(t.weight, [[-1 / 3, -1 / 3]])
    opt.step_bags(grad, [[2, 1]], mode="max")  # 2 reads as zeros and wins the max: 1 gets nothing
    np.testing.assert_allclose(t.weight, [[-1 / 3, -1 / 3]])
    opt.step([3, 1], np.ones((2, 2), np.float32))
    np.testing.assert_allclose(t.weight, [[-4 / 3, -4 / 3]])
    assert len(t) == 1 and t.stats()["pending"] == 1


def test_layer_eval_mode_does_not_insert():
    layer = embtab.DynamicEmbeddingBag(4)
    layer.forward([["a", "b"], ["c"]])
    layer.eval()
    out = layer.forward([["a", "zzz"]])
    assert len(layer.table) == 3
    np.testing.assert_array_equal(out[0], layer.table.gather(["a"], insert=False)[0])
    with pytest.raises(RuntimeError, match="before forward"):
        embtab.DynamicEmbeddingBag(2).backward(np.zeros((1, 2), np.float32))


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_resumes_training_exactly(tmp_path):
    rng = np.random.default_rng(9)

    def batches():
        for _ in range(6):
            yield rng.integers(0, 400, (16, 4)), rng.standard_normal((16, 8)).astype(np.float32)

    layer = embtab.DynamicEmbeddingBag(8, mode="mean", max_rows=150, admit_after=2, ttl=3, evict="lfu")
    opt = embtab.optim.Adam(layer, lr=0.01)
    data = list(batches()) + list(batches())

    def train(layer, opt, part):
        for keys, g in part:
            layer.forward(keys)
            layer.backward(g)
            opt.step()
            opt.zero_grad()

    train(layer, opt, data[:6])
    embtab.save(tmp_path / "ck", layer=layer, opt=opt)
    loaded = embtab.load(tmp_path / "ck")
    train(layer, opt, data[6:])
    layer2, opt2 = loaded["layer"], loaded["opt"]
    assert opt2.layer is layer2 and opt2._dynamic is layer2.table
    train(layer2, opt2, data[6:])
    for a, b in zip(layer.table.export(), layer2.table.export()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(layer.weight, layer2.weight)
    np.testing.assert_array_equal(opt.state["exp_avg_sq"], opt2.state["exp_avg_sq"])
    semantic = ("rows", "hits", "misses", "admitted", "evicted", "pending", "step")
    assert [layer.table.stats()[k] for k in semantic] == [layer2.table.stats()[k] for k in semantic]


def test_corrupt_checkpoint_arrays_are_refused(tmp_path):
    t = embtab.DynamicTable(2)
    t.lookup([1, 2, 3])
    config, arrays = t._checkpoint_state()
    arrays = dict(arrays, rows=np.array([0, 0, 2]))
    with pytest.raises(embtab.CheckpointError, match="row 0 is used twice"):
        embtab.DynamicTable._from_checkpoint(config, arrays)
