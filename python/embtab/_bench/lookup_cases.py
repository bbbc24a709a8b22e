"""Forward lookups: gather and pooled bags against numpy (take, take + reduceat) and torch; and the
lookup against the product it replaces, a batch of one-hot rows times the table."""

from __future__ import annotations

from typing import Any, List

import numpy as np
from numpy.typing import NDArray

import embtab
from embtab._arrays import aligned_empty

from .common import Case, Config, assert_close, assert_equal, draw_id_batches, optional_import


def cases(config: Config) -> List[Case]:
    rng = np.random.default_rng(config.seed)
    # A 128-byte aligned table (as embtab's layers allocate them); numpy and torch get the same one.
    table = aligned_empty((config.num_rows, config.dim), np.float32)
    table[...] = rng.standard_normal((config.num_rows, config.dim), dtype=np.float32)
    row_bytes = config.dim * table.itemsize
    torch = optional_import("torch")
    b = draw_id_batches(config, rng, torch)  # each call reads the next batch's ids
    n_ids, n_flat = b.ids.size, b.flat.size
    starts = np.arange(0, n_flat, config.bag_len)

    gather_out = np.empty((n_ids, config.dim), np.float32)
    gather_sizes = f"{config.num_rows:,}x{config.dim} f32, {n_ids:,} ids"
    gather_bytes = n_ids * (2 * row_bytes + 8)
    out: List[Case] = [
        # Both allocate their output (and pay for the fresh pages), as a user's call does.
        Case(
            name="gather",
            sizes=gather_sizes,
            run=lambda: embtab.gather(table, b.ids),
            baseline=lambda: np.take(table, b.ids, axis=0),
            baseline_name="np.take",
            check=assert_equal,
            bytes_moved=gather_bytes,
        ),
        # Both write into a preallocated array.
        Case(
            name="gather_out",
            sizes=gather_sizes,
            run=lambda: embtab.gather(table, b.ids, out=gather_out),
            baseline=lambda: np.take(table, b.ids, axis=0, out=gather_out),
            baseline_name="np.take(out=)",
            check=assert_equal,
            bytes_moved=gather_bytes,
        ),
    ]
    bag_bytes = n_flat * (row_bytes + 8) + config.num_bags * row_bytes
    sizes = f"{config.num_bags:,} bags x {config.bag_len}"

    def reduceat(ufunc: Any, scale: float = 1.0, w: bool = False) -> Any:
        def fn() -> Any:
            rows = np.take(table, b.flat, axis=0)
            if w:
                rows *= b.weights.reshape(-1, 1)
            res = ufunc.reduceat(rows, starts, axis=0)
            return res / scale if scale != 1.0 else res

        return fn

    for mode, ufunc, scale in (("sum", np.add, 1.0), ("mean", np.add, float(config.bag_len)), ("max", np.maximum, 1.0)):
        case = Case(
            name=f"bags_{mode}",
            sizes=sizes,
            run=(lambda mode=mode: embtab.gather_bags(table, b.bag_ids, mode=mode)),
            baseline=reduceat(ufunc, scale),
            baseline_name="np.take+reduceat",
            check=assert_close,
            bytes_moved=bag_bytes,
        )
        out.append(case)
    out.append(
        Case(
            name="bags_sum_weighted",
            sizes=sizes,
            run=lambda: embtab.gather_bags(table, b.bag_ids, weights=b.weights),
            baseline=reduceat(np.add, 1.0, True),
            baseline_name="np.take+reduceat",
            check=assert_close,
            bytes_moved=bag_bytes + n_flat * 4,
        )
    )

    if torch is not None:
        t_table = torch.from_numpy(table)
        F = torch.nn.functional

        def peer(fn: Any) -> Any:
            def run() -> Any:
                with torch.no_grad():
                    return fn().numpy()

            return run

        out[0].peers["torch"] = peer(lambda: F.embedding(b.t_ids, t_table))
        out[0].peer_checks["torch"] = assert_equal
        for case in out[2:]:
            mode = case.name.split("_")[1]
            if case.name.endswith("weighted"):
                case.peers["torch"] = peer(lambda: F.embedding_bag(b.t_bag_ids, t_table, mode="sum", per_sample_weights=b.t_weights))
            else:
                case.peers["torch"] = peer(lambda mode=mode: F.embedding_bag(b.t_bag_ids, t_table, mode=mode))
            case.peer_checks["torch"] = assert_close
    for case in out:
        case.batches = b
    return out + onehot_cases(config, rng)


# Vocabularies of the one-hot cases.
ONEHOT_VOCABULARIES = (10_000, 100_000)


def onehot_cases(config: Config, rng: np.random.Generator) -> List[Case]:
    """Why a lookup replaces the product: the textbook embedding of a word is its one-hot row vector
    times the table, ``onehot(ids) @ table`` (every row of the product but one is multiplied by 0).
    The same rows by ``gather``, against numpy's BLAS matmul on the dense one-hot matrix and, with
    scipy, against a CSR one-hot matrix times the table. The one-hot matrices are built once, outside
    the timing; the products equal the gathered rows exactly (checked before timing)."""
    sparse = optional_import("scipy.sparse")
    out: List[Case] = []
    n = config.onehot_ids
    for vocab in ONEHOT_VOCABULARIES:
        table = rng.standard_normal((vocab, config.dim), dtype=np.float32)
        ids = rng.integers(0, vocab, n)
        dense = np.zeros((n, vocab), np.float32)
        dense[np.arange(n), ids] = 1.0
        label = f"{vocab // 1000}k"
        sizes = f"{n} ids, vocabulary {vocab:,} x {config.dim} f32"

        def gather(table: NDArray[np.float32] = table, ids: NDArray[np.int64] = ids) -> Any:
            return embtab.gather(table, ids)

        out.append(Case(name=f"onehot_matmul_{label}", sizes=sizes + f", dense one-hot {dense.nbytes / 2**20:.0f} MB",
                        run=gather, baseline=(lambda dense=dense, table=table: dense @ table),
                        baseline_name="onehot @ table (BLAS)", check=assert_equal,
                        items=n, item_unit="ids"))
        if sparse is not None:
            csr = sparse.csr_matrix((np.ones(n, np.float32), ids, np.arange(n + 1)), shape=(n, vocab))
            out.append(Case(name=f"onehot_csr_{label}", sizes=sizes + ", CSR one-hot",
                            run=gather, baseline=(lambda csr=csr, table=table: csr @ table),
                            baseline_name="scipy CSR onehot @ table", check=assert_equal,
                            items=n, item_unit="ids"))
    return out
