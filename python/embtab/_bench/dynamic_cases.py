"""Dynamic tables: batched key lookups (80% of the keys present, Zipf-distributed as real ids are)
and inserts of new keys, against a Python dict loop and pandas (``Index.get_indexer``,
``factorize``) where pandas is installed; and pooled lookups by key (``DynamicTable.gather_bags``)
against ``gather_bags`` on the rows, found beforehand."""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np

import embtab

from .common import Case, Config, IdBatches, assert_equal, draw_id_batches, optional_import

ZIPF_EXPONENT = 1.1
PRESENT = 0.8


def lookup_batches(rng: np.random.Generator, present: np.ndarray, n: int, count: int) -> IdBatches:
    """Batches of n keys: PRESENT of them drawn from `present` by a Zipf law over a random ranking
    (hot keys anywhere in the table), the rest keys the table does not hold."""
    hot_first = rng.permutation(present)
    batches = []
    for _ in range(count):
        ranks = np.minimum(rng.zipf(ZIPF_EXPONENT, n), present.size) - 1
        keys = hot_first[ranks]
        absent = rng.random(n) >= PRESENT
        # Odd keys are never in the table (its keys are even).
        keys[absent] = rng.integers(-(2**62), 2**62, int(absent.sum())) * 2 + 1
        batches.append({"keys": keys})
    return IdBatches(batches)


def keys_case(name: str, sizes: str, run: Callable[[], Any], baseline: Callable[[], Any], baseline_name: str,
              n: int, batches: IdBatches) -> Case:
    """A case that maps n keys to rows, checked equal to its baseline's rows."""
    return Case(name=name, sizes=sizes, run=run, baseline=baseline, baseline_name=baseline_name, check=assert_equal,
                items=n, item_unit="keys", batches=batches)


def cases(config: Config) -> List[Case]:
    rng = np.random.default_rng(config.seed)
    pandas = optional_import("pandas")
    n = 100_000 if config.quick else 1_000_000
    out: List[Case] = []

    # --- lookups of present and absent keys (insert=False: the table does not change) ----------
    present = rng.integers(-(2**62), 2**62, n) * 2  # even, distinct with overwhelming probability
    present = present[np.sort(np.unique(present, return_index=True)[1])]
    table = embtab.DynamicTable(8, init="zeros", capacity=present.size)
    table.lookup(present)
    as_dict = dict(zip(present.tolist(), range(present.size)))
    batches = lookup_batches(rng, present, n, config.id_batches)
    sizes = f"{n:,} keys ({PRESENT:.0%} of them among {present.size:,} present, Zipf {ZIPF_EXPONENT})"
    lookup = lambda: table.lookup(batches.keys, insert=False)  # noqa: E731
    out.append(keys_case("dynamic_lookup", sizes, lookup, lambda: [as_dict.get(k, -1) for k in batches.keys.tolist()],
                         "[d.get(k, -1) for k in keys]", n, batches))
    if pandas is not None:
        index = pandas.Index(present)
        out.append(keys_case("dynamic_lookup_pandas", sizes, lookup, lambda: index.get_indexer(batches.keys),
                             "pandas Index.get_indexer", n, batches))

    # --- inserts of new keys into a new table (growing from empty, as a new vocabulary does) -----
    new_keys = IdBatches([{"keys": rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)}
                          for _ in range(config.id_batches)])

    def insert_dict() -> Any:
        rows: Dict[int, int] = {}
        return [rows.setdefault(k, len(rows)) for k in new_keys.keys.tolist()]

    insert_sizes = f"{n:,} new int64 keys into an empty table (dim 16, zero rows)"
    insert = lambda: embtab.DynamicTable(16, init="zeros").lookup(new_keys.keys)  # noqa: E731
    out.append(keys_case("dynamic_insert", insert_sizes, insert, insert_dict, "d.setdefault(k, len(d)) loop", n,
                         new_keys))
    if pandas is not None:
        out.append(keys_case("dynamic_insert_pandas", insert_sizes, insert,
                             lambda: pandas.factorize(new_keys.keys)[0], "pandas.factorize", n, new_keys))

    # --- pooled lookups by key against pooled lookups of the rows ---------------------------------
    rows_table = embtab.DynamicTable(config.dim, init="zeros", capacity=config.num_rows)
    key_of_row = rng.integers(-(2**62), 2**62, config.num_rows)
    key_of_row = key_of_row[np.sort(np.unique(key_of_row, return_index=True)[1])]
    rows_table.lookup(key_of_row)
    weight = rows_table.weight
    weight[:] = rng.standard_normal(weight.shape, dtype=np.float32)
    id_batches = draw_id_batches(Config(**{**config.__dict__, "num_rows": key_of_row.size}), rng)
    bag_batches = IdBatches([{"rows": b["bag_ids"], "keys": key_of_row[b["bag_ids"]]} for b in id_batches._batches])
    out.append(Case(
        name="dynamic_bags_sum",
        sizes=f"{config.num_bags:,} bags x {config.bag_len} keys, {key_of_row.size:,} x {config.dim} f32",
        run=lambda: rows_table.gather_bags(bag_batches.keys, insert=False),
        baseline=lambda: embtab.gather_bags(weight, bag_batches.rows),
        baseline_name="gather_bags on the rows",
        check=assert_equal,
        bytes_moved=float(config.num_bags * config.bag_len * config.dim * 4),
        items=config.num_bags * config.bag_len,
        item_unit="keys",
        baseline_threaded=True,
        batches=bag_batches,
    ))
    return out
