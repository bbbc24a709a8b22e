"""Reduced-precision tables: gather and sum bags over float16, bfloat16 and row-wise 8-bit tables,
against embtab's own float32 lookups on the float32 table (what the smaller rows buy) and torch.

Each result is checked against numpy on the upcast / dequantized rows; the float32 baseline
answers a slightly different question (the unrounded table), so it is timed, not compared.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np

import embtab
from embtab._arrays import aligned_empty

from .common import Case, Config, IdBatches, assert_close, assert_equal, draw_id_batches, optional_import


def _upcast_rows(table: Any, rows: np.ndarray) -> Any:
    """float32 values of the given rows of a reduced-precision table (numpy only)."""
    if isinstance(table, np.ndarray):
        return table[rows].astype(np.float32)
    if isinstance(table, embtab.BFloat16Table):
        return (table.data[rows].astype(np.uint32) << np.uint32(16)).view(np.float32)
    # fma(q, scale, bias), rounded once: q * scale is exact in float64, and so is the sum for
    # rows whose bias is not vastly larger than their range (as here).
    codes = table.data[rows].astype(np.float64)
    return (codes * table.scale[rows, None].astype(np.float64) + table.bias[rows, None]).astype(np.float32)


def cases(config: Config) -> List[Case]:
    rng = np.random.default_rng(config.seed)
    # 128-byte aligned tables, as embtab's layers allocate them (torch reads the same memory).
    table = aligned_empty((config.num_rows, config.dim), np.float32)
    table[...] = rng.standard_normal((config.num_rows, config.dim), dtype=np.float32)
    f16 = aligned_empty(table.shape, np.float16)
    f16[...] = table
    torch = optional_import("torch")
    b = draw_id_batches(config, rng, torch)  # each call reads the next batch's ids
    n_ids, n_flat = b.ids.size, b.flat.size
    starts = np.arange(0, n_flat, config.bag_len)
    dim = config.dim

    tables: Dict[str, Any] = {
        "f16": f16,
        "bf16": embtab.to_bfloat16(table),
        "int8": embtab.quantize_rows(table),
    }
    stored_row_bytes = {"f16": 2 * dim, "bf16": 2 * dim, "int8": dim + 8}
    gather_out = np.empty((n_ids, dim), np.float32)
    f32_gather_out = np.empty((n_ids, dim), np.float32)

    out: List[Case] = []
    for fmt, low in tables.items():
        row_bytes = stored_row_bytes[fmt]

        def gather_check(got: Any, _baseline: Any, low: Any = low) -> None:
            assert_equal(got, _upcast_rows(low, b.ids))

        def bags_check(got: Any, _baseline: Any, low: Any = low) -> None:
            assert_close(got, np.add.reduceat(_upcast_rows(low, b.flat), starts, axis=0), rtol=1e-5, atol=1e-5)

        out.append(
            Case(
                name=f"gather_{fmt}",
                sizes=f"{config.num_rows:,}x{dim} {fmt}, {n_ids:,} ids, out=",
                run=(lambda low=low: embtab.gather(low, b.ids, out=gather_out)),
                baseline=lambda: embtab.gather(table, b.ids, out=f32_gather_out),
                baseline_name="embtab f32",
                baseline_threaded=True,
                check=gather_check,
                # rows read, float32 rows written, ids read
                bytes_moved=n_ids * (row_bytes + 4 * dim + 8),
            )
        )
        out.append(
            Case(
                name=f"bags_sum_{fmt}",
                sizes=f"{config.num_bags:,} bags x {config.bag_len}, {fmt}",
                run=(lambda low=low: embtab.gather_bags(low, b.bag_ids)),
                baseline=lambda: embtab.gather_bags(table, b.bag_ids),
                baseline_name="embtab f32",
                baseline_threaded=True,
                check=bags_check,
                bytes_moved=n_flat * (row_bytes + 8) + config.num_bags * 4 * dim,
            )
        )

    if torch is not None:
        _add_torch_peers(torch, out, tables, b)
    for case in out:
        case.batches = b
    return out


def _add_torch_peers(torch: Any, out: List[Case], tables: Dict[str, Any], b: IdBatches) -> None:
    """torch on the same stored values: embedding / embedding_bag on a float16 or bfloat16 tensor
    (which return that dtype), and FBGEMM's 8-bit kernel on the same codes, scales and biases in
    its fused layout (``QuantizedTable.packed``, copied once to a 128-byte boundary; it has no 8-bit
    gather, so bags of one id stand in for it)."""
    F = torch.nn.functional
    t_starts = torch.arange(0, b.bag_ids.size, b.bag_ids.shape[1])
    t_singles = torch.arange(0, b.ids.size)
    t_tables = {
        "f16": torch.from_numpy(tables["f16"]),
        "bf16": torch.from_numpy(tables["bf16"].data.view(np.int16)).view(torch.bfloat16),
    }
    byte_bag: Any = getattr(getattr(torch.ops, "quantized", None), "embedding_bag_byte_rowwise_offsets", None)
    packed = None
    if byte_bag is not None:
        fused = tables["int8"].packed
        packed = torch.from_numpy(aligned_empty(fused.shape, np.uint8))
        packed.numpy()[...] = fused
        del fused

    def peer(fn: Callable[..., Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return fn()

        return run

    def close_to(tol: float) -> Callable[[Any, Any], None]:
        # torch rounds its float16 / bfloat16 result to the table's dtype; embtab returns float32.
        def check(ours: Any, theirs: Any) -> None:
            assert_close(ours, theirs.float().numpy(), rtol=tol, atol=4 * tol)

        return check

    for case in out:
        kind, fmt = case.name.rsplit("_", 1)
        if fmt in t_tables:
            t_table = t_tables[fmt]
            tol = 2.0**-10 if fmt == "f16" else 2.0**-7
            if kind == "gather":
                case.peers["torch"] = peer(lambda t_table=t_table: F.embedding(b.t_ids, t_table))
                case.peer_checks["torch"] = close_to(0.0)
            else:
                case.peers["torch"] = peer(lambda t_table=t_table: F.embedding_bag(b.t_bag_ids, t_table, mode="sum"))
                case.peer_checks["torch"] = close_to(tol)
        elif fmt == "int8" and packed is not None:
            if kind == "gather":
                case.peers["torch"] = peer(lambda: byte_bag(packed, b.t_ids, t_singles, False, 0, False, None, None, False))
            else:
                case.peers["torch"] = peer(lambda: byte_bag(packed, b.t_flat, t_starts, False, 0, False, None, None, False))
            case.peer_checks["torch"] = close_to(1e-5)
