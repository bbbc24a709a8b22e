"""Prints, as JSON, a SHA-256 digest of the result of every kind of lookup (each row format, row
length, mode, option, SIMD path and thread count) on fixed random inputs. Two builds that print the
same digests give bitwise the same lookups (bench/compare_builds.py compares them). Public API only,
so that any version of embtab can run it."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict

import numpy as np

import embtab


def digest(result: Any) -> str:
    parts = result if isinstance(result, tuple) else (result,)
    h = hashlib.sha256()
    for part in parts:
        h.update(np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    return h.hexdigest()[:16]


def tables(base: np.ndarray) -> Dict[str, Any]:
    return {
        "f32": base,
        "f64": base.astype(np.float64) * (1 + 2.0**-30),
        "f16": base.astype(np.float16),
        "bf16": embtab.to_bfloat16(base),
        "int8": embtab.quantize_rows(base),
    }


def main() -> None:
    rng = np.random.default_rng(2024)
    num_rows = 3000
    out: Dict[str, str] = {}
    previous_path, previous_threads = embtab.simd_path(), embtab.get_num_threads()
    for dim in (7, 16, 64, 128, 256, 260):
        base = rng.standard_normal((num_rows, dim)).astype(np.float32)
        ids = rng.integers(0, num_rows, 5000)
        bad_ids = np.where(rng.random(5000) < 0.05, num_rows + 3, ids)
        offsets = np.concatenate([[0, 0], np.sort(rng.integers(0, 5000, 400)), [5000]])
        for name, table in tables(base).items():
            weights = rng.random(5000).astype(np.float64 if name == "f64" else np.float32)
            calls = {
                "gather": lambda: embtab.gather(table, ids),
                "gather_zero": lambda: embtab.gather(table, bad_ids, bounds="zero"),
                "sum": lambda: embtab.gather_bags(table, ids, offsets),
                "mean": lambda: embtab.gather_bags(table, ids, offsets, mode="mean"),
                "max": lambda: embtab.gather_bags(table, ids, offsets, mode="max"),
                "argmax": lambda: embtab.gather_bags(table, ids, offsets, mode="max", return_argmax=True),
                "wsum": lambda: embtab.gather_bags(table, ids, offsets, weights=weights),
                "wmean": lambda: embtab.gather_bags(table, ids, offsets, mode="mean", weights=weights),
                "sum_zero": lambda: embtab.gather_bags(table, bad_ids, offsets, bounds="zero"),
                "fixed": lambda: embtab.gather_bags(table, ids.reshape(-1, 10)),
            }
            for path in embtab.available_simd_paths():
                embtab.set_simd_path(path)
                for threads in (1, 3):
                    embtab.set_num_threads(threads)
                    for call, fn in calls.items():
                        out[f"{name}/{dim}/{call}/{path}/{threads}"] = digest(fn())
    embtab.set_simd_path(previous_path)
    embtab.set_num_threads(previous_threads)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
