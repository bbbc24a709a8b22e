"""DynamicTable against a pure-Python reference model (a dict of keys with counts and last-use
stamps, a heap of free rows, and LRU / LFU / TTL eviction written out plainly), driven by a
Hypothesis state machine: random sequences of lookups, inserts, evictions, steps, optimizer updates
and checkpoint round trips must give the same keys, rows, values and evictions."""

from __future__ import annotations

import heapq
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import embtab

DIM = 3
COUNT_MAX = 2**32 - 1
# A few small keys (so that keys repeat, get admitted and evicted) and the extremes of int64.
KEYS = st.one_of(st.integers(-3, 6), st.sampled_from([2**63 - 1, -(2**63), 2**40]))
BATCHES = st.lists(KEYS, min_size=1, max_size=10)


class ReferenceTable:
    """The semantics of embtab.DynamicTable, one key at a time."""

    def __init__(self, max_rows, admit_after, evict, ttl, init_of):
        self.max_rows, self.admit_after, self.evict_policy, self.ttl = max_rows, admit_after, evict, ttl
        self.init_of = init_of  # key -> its starting row (depends on the key only)
        self.entries = {}  # key -> [row or None (pending), count, stamp]
        self.free = []  # heap of free rows
        self.high_water = 0
        self.step = 0
        self.call = 0
        self.values = {}  # row -> expected values
        self.last_evicted = []
        self.admitted = self.evicted = 0

    def _row(self, key):
        entry = self.entries.get(key)
        return -1 if entry is None or entry[0] is None else entry[0]

    def _score(self, key):
        row, count, stamp = self.entries[key]
        return (count, stamp, row) if self.evict_policy == "lfu" else (stamp, row)

    def lookup(self, keys, insert):
        if not insert:
            return [self._row(k) for k in keys]
        self.last_evicted = []
        self.call += 1
        now = self.step << 32 | self.call
        first_seen = []
        for k in keys:
            entry = self.entries.setdefault(k, [None, 0, now])
            entry[1] = min(entry[1] + 1, COUNT_MAX)
            entry[2] = now
            if entry[0] is None and k not in first_seen:
                first_seen.append(k)
        for k in first_seen:
            if self.entries[k][1] < self.admit_after:
                continue
            if self.free:
                row = heapq.heappop(self.free)
            elif self.max_rows is None or self.high_water < self.max_rows:
                row = self.high_water
                self.high_water += 1
            else:
                candidates = [c for c, e in self.entries.items() if e[0] is not None and e[2] != now]
                if not candidates:
                    break  # every row belongs to a key of this call: the rest wait
                victim = min(candidates, key=self._score)
                row = self.entries.pop(victim)[0]
                self.last_evicted.append(victim)
                self.evicted += 1
            self.entries[k][0] = row
            self.values[row] = self.init_of(k).copy()
            self.admitted += 1
        return [self._row(k) for k in keys]

    def _free(self, keys):
        for k in keys:
            heapq.heappush(self.free, self.entries.pop(k)[0])
            self.last_evicted.append(k)
            self.evicted += 1

    def evict(self, keys):
        self.last_evicted = []
        admitted = []
        for k in dict.fromkeys(keys):
            if k in self.entries:
                if self.entries[k][0] is None:
                    del self.entries[k]
                else:
                    admitted.append(k)
        self._free(admitted)
        return len(admitted)

    def advance(self):
        self.last_evicted = []
        self.step += 1
        self.call = 0
        if self.ttl is None or self.step <= self.ttl:
            return
        oldest = self.step - self.ttl
        expired = [k for k, e in self.entries.items() if e[2] >> 32 < oldest]
        for k in [k for k in expired if self.entries[k][0] is None]:
            del self.entries[k]
        self._free(sorted((k for k in expired if k in self.entries), key=lambda k: self.entries[k][0]))

    def sgd_step(self, keys, grads, lr):
        """torch.optim.SGD on the rows of `keys` (unknown keys ignored), then a step."""
        sums = {}
        for k, g in zip(keys, grads):
            row = self._row(k)
            if row >= 0:
                sums[row] = (sums[row] if row in sums else np.zeros(DIM, np.float32)) + g
        for row, g in sums.items():
            self.values[row] = self.values[row] + np.float32(-lr) * g
        self.advance()

    def export(self):
        admitted = sorted((e[0], k) for k, e in self.entries.items() if e[0] is not None)
        return [k for _, k in admitted], [r for r, _ in admitted]


class DynamicTableMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="embtab-dynamic-")
        self.oracle = None

    def teardown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    @initialize(max_rows=st.one_of(st.none(), st.integers(1, 5)), admit_after=st.integers(1, 3),
                evict=st.sampled_from(["lru", "lfu"]), ttl=st.one_of(st.none(), st.integers(0, 3)),
                seed=st.integers(0, 2**64 - 1), capacity=st.integers(0, 4))
    def create(self, max_rows, admit_after, evict, ttl, seed, capacity):
        self.table = embtab.DynamicTable(DIM, seed=seed, max_rows=max_rows, admit_after=admit_after, evict=evict,
                                         ttl=ttl, capacity=capacity)
        self.opt = embtab.optim.SGD(self.table, lr=0.5)
        # Starting values depend on (seed, key) only: a second table with the same seed tells them.
        oracle = embtab.DynamicTable(DIM, seed=seed)
        self.model = ReferenceTable(max_rows, admit_after, evict, ttl, lambda k: oracle.gather(np.array([k]))[0])

    @rule(keys=BATCHES, insert=st.booleans())
    def lookup(self, keys, insert):
        got = self.table.lookup(np.array(keys, dtype=np.int64), insert=insert)
        assert got.tolist() == self.model.lookup(keys, insert)

    @rule(keys=BATCHES, insert=st.booleans())
    def gather(self, keys, insert):
        got = self.table.gather(np.array(keys, dtype=np.int64), insert=insert)
        rows = self.model.lookup(keys, insert)
        for i, row in enumerate(rows):
            expected = self.model.values[row] if row >= 0 else np.zeros(DIM, np.float32)
            np.testing.assert_array_equal(got[i], expected)

    @rule(keys=BATCHES)
    def evict(self, keys):
        assert self.table.evict(np.array(keys, dtype=np.int64)) == self.model.evict(keys)

    @rule()
    def advance(self):
        self.table.advance()
        self.model.advance()

    @rule(keys=BATCHES, data=st.data())
    def step(self, keys, data):
        grads = np.array(data.draw(st.lists(st.sampled_from([-1.0, 0.25, 2.0]), min_size=len(keys) * DIM,
                                            max_size=len(keys) * DIM)), np.float32).reshape(len(keys), DIM)
        self.opt.step(np.array(keys, dtype=np.int64), grads)
        self.model.sgd_step(keys, grads, 0.5)

    @rule()
    def save_and_load(self):
        embtab.save(self.folder, table=self.table, opt=self.opt)
        loaded = embtab.load(self.folder)
        self.table, self.opt = loaded["table"], loaded["opt"]
        assert self.opt._dynamic is self.table

    @invariant()
    def same_contents(self):
        if not hasattr(self, "table"):
            return
        keys, rows = self.table.export()
        expected_keys, expected_rows = self.model.export()
        assert keys.tolist() == expected_keys and rows.tolist() == expected_rows
        assert len(self.table) == len(expected_keys)
        assert self.table.last_evicted().tolist() == self.model.last_evicted
        stats = self.table.stats()
        assert (stats["admitted"], stats["evicted"], stats["step"]) == (self.model.admitted, self.model.evicted,
                                                                         self.model.step)
        assert stats["pending"] == sum(e[0] is None for e in self.model.entries.values())
        weight = self.table.weight
        assert weight.shape == (self.model.high_water, DIM)
        for row in rows:
            np.testing.assert_array_equal(weight[row], self.model.values[row])


TestDynamicTableMachine = DynamicTableMachine.TestCase
TestDynamicTableMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])


CONFIGS = [  # (max_rows, admit_after, evict, ttl)
    (None, 1, "lru", None), (3, 1, "lru", None), (3, 1, "lfu", None), (5, 2, "lru", 2), (5, 2, "lfu", 1),
    (2, 3, "lfu", None), (4, 1, "lru", 0), (1, 1, "lfu", 3), (None, 2, "lru", 1), (6, 1, "lfu", 2),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_long_random_sequences(config, tmp_path):
    """Seeded sequences of 300 operations over 20 keys, checked after every operation (the state
    machine above explores short sequences; these reach deep eviction and admission states)."""
    max_rows, admit_after, evict, ttl = config
    rng = np.random.default_rng(CONFIGS.index(config))
    machine = DynamicTableMachine()
    machine.folder = str(tmp_path)
    machine.create(max_rows=max_rows, admit_after=admit_after, evict=evict, ttl=ttl, seed=int(rng.integers(2**63)),
                   capacity=0)
    pool = np.array([-5, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2**62, -(2**62), 2**63 - 1, -(2**63), 99])

    def batch():
        # Zipf-like: low keys come back often, high ones rarely.
        return pool[np.minimum(rng.zipf(1.3, int(rng.integers(1, 9))) - 1, len(pool) - 1)].tolist()

    for _ in range(300):
        op = rng.random()
        if op < 0.45:
            machine.lookup(batch(), insert=bool(rng.random() < 0.85))
        elif op < 0.6:
            machine.gather(batch(), insert=bool(rng.random() < 0.5))
        elif op < 0.7:
            machine.evict(batch()[:2])
        elif op < 0.82:
            machine.advance()
        elif op < 0.99:
            keys = batch()
            grads = rng.choice(np.array([-1.0, 0.25, 2.0], np.float32), (len(keys), DIM))
            machine.opt.step(np.array(keys, dtype=np.int64), grads)
            machine.model.sgd_step(keys, grads, 0.5)
        else:
            machine.save_and_load()
        machine.same_contents()
    assert machine.model.evicted > 0 or (max_rows is None and ttl is None)
    assert machine.model.admitted > 0


@pytest.mark.parametrize("evict", ["lru", "lfu"])
def test_eviction_order_by_hand(evict):
    """A worked example of each policy, independent of the model."""
    t = embtab.DynamicTable(2, max_rows=3, evict=evict)
    t.lookup([1, 1, 1, 2, 3])  # counts 3, 1, 1; all in call 1 (rows 0, 1, 2)
    t.lookup([2, 3])  # call 2: 2 and 3 become more recent than 1
    t.lookup([4])  # LRU evicts 1 (oldest); LFU evicts 2 (count 2 < 3, and older than 3's tie... 2 and 3 tie on
    #               count 2 and stamp, so the smaller row, 2's, goes)
    assert t.last_evicted().tolist() == ([1] if evict == "lru" else [2])
    assert t.lookup(4, insert=False) == (0 if evict == "lru" else 1)
