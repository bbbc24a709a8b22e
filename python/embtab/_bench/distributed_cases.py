"""Sharded tables on Ray (embtab.distributed) against the same calls on one local table: pooled
lookups and full training steps (forward bags, gradient, row-wise Adagrad update) for 1, 2 and 4
shards, and the round trip of a one-id lookup (the fixed cost of a sharded call). The sizes column
gives the array bytes one call sends to the shards and gets back (all shards together).

Skipped without Ray. Ray is started (a local instance) only when one of these cases runs; each
case starts its own shard actors on its first call and they end with the case. On one machine the
shards share its CPUs and memory with the client: these rows measure the cost of the sharding
(routing, de-duplication, serialization, Ray's object store and actor calls), not a cluster's
throughput (docs/distributed.md estimates that from the bytes moved).
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import numpy as np

import embtab
from embtab._arrays import aligned_empty

from .common import Case, Config, IdBatches, assert_close, assert_equal, draw_id_batches, optional_import

SHARD_COUNTS = (1, 2, 4)
OPTIMIZER = ("rowwise_adagrad", {"lr": 0.01})


class ShardedBench:
    """A sharded copy of ``init`` made on first use (Ray started then if needed)."""

    def __init__(self, init: np.ndarray, num_shards: int, optimizer: Any = None) -> None:
        self.init, self.num_shards, self.optimizer = init, num_shards, optimizer
        self.table: Any = None

    def get(self) -> Any:
        if self.table is None:
            from embtab.distributed import ShardedTable

            self.table = ShardedTable.from_array(self.init, num_shards=self.num_shards, optimizer=self.optimizer)
        return self.table

    def counters(self) -> Tuple[int, int]:
        table = self.get()
        return int(table._sent.sum()), int(table._received.sum())


class LocalTraining:
    """The local table and optimizer of a training case, made on first use (tables of the default
    sizes are 512 MB: one at a time)."""

    def __init__(self, init: np.ndarray) -> None:
        self.init = init
        self.table: Any = None
        self._opt: Any = None

    def opt(self) -> Any:
        if self._opt is None:
            self.table = self.init.copy()
            self._opt = embtab.optim.RowWiseAdagrad(self.table, **OPTIMIZER[1])
        return self._opt


def sharded_case(name: str, sizes: str, bench: ShardedBench, run: Callable[..., Any], baseline: Callable[..., Any],
                 check: Callable[[Any, Any], None], batches: IdBatches, items: float, unit: str) -> Case:
    case = Case(name=name, sizes=sizes, run=lambda: None, baseline=baseline, baseline_name="embtab local",
                check=check, items=items, item_unit=unit, batches=batches)

    def first_run() -> Any:
        # The first call (the runner's check) also measures the traffic; then the plain call takes over.
        sent, received = bench.counters()
        result = run(bench.get())
        now_sent, now_received = bench.counters()
        case.sizes = f"{sizes}, {(now_sent - sent) / 1e6:.2f} MB sent, {(now_received - received) / 1e6:.2f} MB back"
        case.run = lambda: run(bench.get())
        return result

    case.run = first_run
    return case


def cases(config: Config) -> List[Case]:
    if optional_import("ray") is None:
        return []
    rng = np.random.default_rng(config.seed)
    init = aligned_empty((config.num_rows, config.dim), np.float32)
    init[...] = rng.standard_normal(init.shape, dtype=np.float32)
    b = draw_id_batches(config, rng)
    target = rng.standard_normal((config.num_bags, config.dim), dtype=np.float32)
    base = f"{config.num_rows:,}x{config.dim} f32"
    bag_sizes = f"{config.num_bags:,} bags x {config.bag_len}"
    out: List[Case] = []
    for num_shards in SHARD_COUNTS:
        # Pooled lookups (hash route: every bag has ids on every shard).
        lookup = ShardedBench(init, num_shards)
        out.append(sharded_case(
            f"distributed_bags_sum_{num_shards}sh", f"{base}, {bag_sizes}, {num_shards} shard(s)", lookup,
            lambda t: t.gather_bags(b.bag_ids), lambda: embtab.gather_bags(init, b.bag_ids),
            lambda a, e: assert_close(a, e), b, b.bag_ids.size, "ids"))

        # A training step: forward, the gradient of 0.5 ||out - target||^2, the fused update.
        local = LocalTraining(init)
        training = ShardedBench(init, num_shards, OPTIMIZER)

        def sharded_step(t: Any) -> None:
            t.step_bags(t.gather_bags(b.bag_ids) - target, b.bag_ids)

        def local_step(local: LocalTraining = local) -> None:
            local.opt().step_bags(embtab.gather_bags(local.table, b.bag_ids) - target, b.bag_ids)

        def same_rows(_: Any, __: Any, training: ShardedBench = training, local: LocalTraining = local) -> None:
            # One step each from the same table: the touched rows must be equal, bitwise (one shard)
            # or to the rounding of the forward pass's partial sums (several).
            touched = np.unique(b.bag_ids)
            got = training.get().gather(touched)
            (assert_equal if training.num_shards == 1 else assert_close)(got, local.table[touched])

        out.append(sharded_case(
            f"distributed_train_step_{num_shards}sh", f"{base}, {bag_sizes}, {num_shards} shard(s), row-wise Adagrad",
            training, sharded_step, local_step, same_rows, b, b.bag_ids.size, "ids"))

        # The fixed cost of a call: a lookup of one id (on the lookup case's shards).
        one = IdBatches([{"ids": np.array([k], np.int64)} for k in (1, config.num_rows // 2, config.num_rows - 1)])
        out.append(sharded_case(
            f"distributed_call_overhead_{num_shards}sh", f"gather of 1 id, {num_shards} shard(s)", lookup,
            lambda t, one=one: t.gather(one.ids), lambda one=one: embtab.gather(init, one.ids),
            lambda a, e: assert_equal(a, e), one, 1, "calls"))
    return out

