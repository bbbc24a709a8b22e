"""``python -m embtab bench``: one table of embtab against its baselines, measured in one run."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import pkgutil
import platform
import statistics
import sys
import time
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

import embtab

from . import __name__ as _package_name
from . import __path__ as _package_path
from .common import Case, Config, optional_import, time_call


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small sizes; runs in seconds")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts to sweep (default: the CPUs available)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 7, quick 3)")
    parser.add_argument("--cases", default=None, help="comma-separated substrings: run only matching cases")
    parser.add_argument("--json", dest="json_path", default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--plot", dest="plot_path", default=None, help="also draw a PNG bar chart (needs matplotlib)")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def copy_bandwidth(quick: bool, repeats: int) -> float:
    """GB/s of a large single-threaded ``np.copyto`` (bytes read + bytes written)."""
    n = (16 if quick else 256) * 2**20 // 8
    src = np.ones(n)
    dst = np.empty_like(src)
    times = time_call(lambda: np.copyto(dst, src), repeats)
    return 2 * src.nbytes / statistics.median(times) / 1e9


def iter_cases(config: Config, wanted: List[str]) -> Iterator[Case]:
    """The cases of each ``*_cases`` module in turn (those whose names contain one of `wanted`, if
    any), built only when their turn comes, so that one module's tables (gigabytes at the default
    sizes) can be freed before the next module allocates its own: the caller drops each case it
    has run before asking for the next one."""
    for info in sorted(pkgutil.iter_modules(_package_path), key=lambda m: m.name):
        if info.name.endswith("_cases"):
            module = importlib.import_module(f"{_package_name}.{info.name}")
            group = [c for c in module.cases(config) if not wanted or any(w in c.name for w in wanted)]
            group.reverse()
            while group:
                yield group.pop()
            gc.collect()


# Peers that run on several threads: measured at each thread count of the sweep, with as many
# threads as embtab. The others (numpy, mmh3, scikit-learn) use one thread and are measured once.
THREADED_PEERS = frozenset({"torch"})


WARMUP_CALLS = 4


def measure_interleaved(fns: Dict[str, Any], repeats: int, warmup: int = WARMUP_CALLS,
                        before: Optional[Any] = None) -> Dict[str, List[float]]:
    """Times each function `repeats` times after `warmup` untimed calls (the steady state: buffers
    allocated, caches and page tables warm), in rounds (one call of each per round), so that a
    change in the machine's speed during the run (a noisy neighbour on a VM, a frequency step)
    weighs on every implementation alike instead of on whichever ran then. Functions that take over
    a second a call get one warm-up call and stop after 3 repeats, to keep the run short. `before`,
    if given, runs untimed before every call (a case's ``batches.advance``)."""
    times: Dict[str, List[float]] = {}
    for key, fn in fns.items():
        first = time_call(fn, 1, warmup=0, before=before)[0]  # the first warm-up call, timed to see if fn is slow
        times[key] = time_call(fn, 1, warmup=max(0, warmup - 1) if first <= 1.0 else 0, before=before)
    for r in range(1, repeats):
        for key, fn in fns.items():
            if times[key][0] > 1.0 and r >= 3:
                continue
            times[key] += time_call(fn, 1, warmup=0, before=before)
    return times


def set_peer_threads(torch: Any, threads: int) -> None:
    if torch is not None:
        torch.set_num_threads(threads)


def fmt_ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_rate(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def run(args: argparse.Namespace) -> int:
    config = Config.make(args.quick)
    repeats = args.repeats or (3 if args.quick else 7)
    thread_counts = args.threads or [embtab.get_num_threads()]
    # torch's OpenMP workers spin for a while after each call by default and would steal the CPUs
    # from whatever runs next; passive waiting keeps the measurements independent.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # torch runs on as many threads as embtab in each row of the sweep (set_peer_threads).
    torch = optional_import("torch")

    wanted = [w.strip() for w in args.cases.split(",") if w.strip()] if args.cases else []

    bandwidth = copy_bandwidth(args.quick, repeats)
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads_available": embtab._core.default_num_threads(),
        "simd_path": embtab.simd_path(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None),
        "embtab": embtab.__version__,
        "copy_bandwidth_gbs": bandwidth,
        "repeats": repeats,
        "quick": args.quick,
    }
    print(f"embtab {embtab.__version__} bench | {machine['cpu']} | {machine['cores']} CPUs | "
          f"SIMD {machine['simd_path']} | numpy {np.__version__}"
          + (f" | torch {torch.__version__}" if torch is not None else " | torch not installed"))
    print(f"memory-copy bandwidth (np.copyto, 1 thread, read+write): {bandwidth:.1f} GB/s; "
          f"times are medians of {repeats} repeats after {WARMUP_CALLS} warm-up calls, in ms; embtab, its baseline and torch "
          f"are timed in alternation, torch on as many threads as embtab; each lookup call reads the next of "
          f"{config.id_batches} batches of random ids")
    print()

    rows: List[Dict[str, Any]] = []
    # The table's columns are fixed before the cases are built: torch is the one peer.
    peer_names = ["torch"] if torch is not None else []
    header = ["case", "sizes", "threads", "baseline", "baseline ms", "embtab ms", "speedup"]
    for p in peer_names:
        header += [f"{p} ms", f"vs {p}"]
    header += ["GB/s", "% copy bw", "rate"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    sys.stdout.flush()

    original_threads = embtab.get_num_threads()
    original_peer_threads = torch.get_num_threads() if torch is not None else 0
    try:
        cases = iter_cases(config, wanted)
        while (case := next(cases, None)) is not None:
            unknown = set(case.peers) - set(peer_names)
            if unknown:
                raise RuntimeError(f"case {case.name} has peers without a column: {sorted(unknown)}")
            reps = case.repeats or repeats
            if case.batches is not None:
                case.batches.select(0)  # every check compares results on the same batch
            base_res = case.baseline() if case.baseline is not None else None
            if case.check is not None and case.baseline is not None:
                case.check(case.run(), base_res)
            for name, check in case.peer_checks.items():
                check(case.run(), case.peers[name]())
            # Per thread count: embtab, a baseline that itself runs on embtab's threads, and the
            # threaded peers, at that count; numpy-style baselines and single-threaded peers once.
            embtab_times: Dict[int, List[float]] = {}
            base_times_at: Dict[int, Optional[List[float]]] = {}
            peer_times_at: Dict[int, Dict[str, List[float]]] = {}
            once: Dict[str, List[float]] = {}
            for i, threads in enumerate(thread_counts):
                embtab.set_num_threads(threads)
                set_peer_threads(torch, threads)
                fns: Dict[str, Any] = {"embtab": case.run}
                if case.baseline is not None and (case.baseline_threaded or i == 0):
                    fns["baseline"] = case.baseline
                for name, fn in case.peers.items():
                    if name in THREADED_PEERS or i == 0:
                        fns["peer:" + name] = fn
                measured = measure_interleaved(fns, reps, before=case.batches.advance if case.batches else None)
                if i == 0:
                    once = measured
                embtab_times[threads] = measured["embtab"]
                base_times_at[threads] = measured.get("baseline", once.get("baseline"))
                peer_times_at[threads] = {
                    name: measured.get("peer:" + name, once.get("peer:" + name, [])) for name in case.peers}
            for threads in thread_counts:
                times = embtab_times[threads]
                base_times, peer_times = base_times_at[threads], peer_times_at[threads]
                t = statistics.median(times)
                base_t = statistics.median(base_times) if base_times else None
                row: Dict[str, Any] = {
                    "case": case.name, "sizes": case.sizes, "threads": threads,
                    "baseline": case.baseline_name if case.baseline else None,
                    "baseline_s": {"min": min(base_times), "median": base_t} if base_times else None,
                    "embtab_s": {"min": min(times), "median": t},
                    "speedup": base_t / t if base_t else None,
                    "peers": {n: {"min": min(v), "median": statistics.median(v),
                                  "embtab_speedup": statistics.median(v) / t} for n, v in peer_times.items()},
                }
                cells = [case.name, case.sizes, str(threads), row["baseline"] or "-", fmt_ms(base_t), fmt_ms(t),
                         f"{row['speedup']:.1f}x" if row["speedup"] else "-"]
                for p in peer_names:
                    info = row["peers"].get(p)
                    cells += [fmt_ms(info["median"]) if info else "-", f"{info['embtab_speedup']:.1f}x" if info else "-"]
                if case.bytes_moved:
                    gbs = case.bytes_moved / t / 1e9
                    row["gbs"] = gbs
                    row["pct_copy_bw"] = 100 * gbs / bandwidth
                    cells += [f"{gbs:.1f}", f"{row['pct_copy_bw']:.0f}%"]
                else:
                    cells += ["-", "-"]
                if case.items:
                    row["rate"] = case.items / t
                    row["rate_unit"] = f"{case.item_unit}/s"
                    cells.append(f"{fmt_rate(row['rate'])} {case.item_unit}/s")
                else:
                    cells.append("-")
                rows.append(row)
                print("| " + " | ".join(cells) + " |")
                sys.stdout.flush()
            # Let go of this case (its closures hold the tables) before the next one is built.
            case = base_res = None
            fns = {}
    finally:
        embtab.set_num_threads(original_threads)
        set_peer_threads(torch, original_peer_threads)

    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump({"machine": machine, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}, f, indent=2)
        print(f"\nwrote {args.json_path}")
    if args.plot_path:
        from .plot import plot

        plot(rows, machine, args.plot_path)
        print(f"wrote {args.plot_path}")
    return 0
