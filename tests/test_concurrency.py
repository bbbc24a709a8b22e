"""Several Python threads on one table: lookups are correct, and concurrent in-place updates lose
nothing (each update of a table runs exclusively; disjoint tables run in parallel)."""

from __future__ import annotations

import threading

import numpy as np

import embtab

THREADS = 4


def run_threads(worker, n=THREADS):
    errors = []

    def wrapped(i):
        try:
            worker(i)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_concurrent_lookups_are_correct():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((5000, 64)).astype(np.float32)
    ids = [rng.integers(0, 5000, (2000, 10)) for _ in range(THREADS)]
    expected = [table[i].sum(axis=1) for i in ids]

    def worker(k):
        for _ in range(20):
            np.testing.assert_allclose(embtab.gather_bags(table, ids[k]), expected[k], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(embtab.gather(table, ids[k]), table[ids[k]])

    run_threads(worker)


def test_concurrent_scatter_add_loses_no_update():
    rng = np.random.default_rng(1)
    table = np.zeros((1000, 32), np.float32)
    batches = [rng.integers(0, 1000, 20_000) for _ in range(THREADS)]
    calls = 25

    def worker(k):
        ones = np.ones((batches[k].size, 32), np.float32)
        for _ in range(calls):
            embtab.scatter_add(table, batches[k], ones)

    run_threads(worker)
    counts = sum(np.bincount(b, minlength=1000) for b in batches) * calls
    # Integer-valued float32 sums below 2**24 are exact: any lost update would show.
    np.testing.assert_array_equal(table, np.repeat(counts[:, None], 32, axis=1).astype(np.float32))


def test_concurrent_optimizer_steps_lose_no_update():
    rng = np.random.default_rng(2)
    table = np.zeros((500, 16), np.float32)
    opt = embtab.optim.SGD(table, lr=1.0)
    batches = [rng.integers(0, 500, (300, 8)) for _ in range(THREADS)]
    calls = 30

    def worker(k):
        grad_out = np.ones((300, 16), np.float32)
        for _ in range(calls):
            opt.step_bags(grad_out, batches[k])

    run_threads(worker)
    counts = sum(np.bincount(b.ravel(), minlength=500) for b in batches) * calls
    np.testing.assert_array_equal(table, -np.repeat(counts[:, None], 16, axis=1).astype(np.float32))


def test_updates_of_different_tables_run_side_by_side():
    tables = [np.zeros((100, 8), np.float64) for _ in range(THREADS)]
    ids = np.arange(100).repeat(50)

    def worker(k):
        for _ in range(10):
            embtab.scatter_add(tables[k], ids, np.full((ids.size, 8), float(k + 1)))

    run_threads(worker)
    for k, t in enumerate(tables):
        np.testing.assert_array_equal(t, np.full((100, 8), 500.0 * (k + 1)))
