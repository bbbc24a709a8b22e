"""Is the prefetch tuner worth keeping? Times pooled lookups under the tuner ("auto") and under each
fixed prefetch policy it chooses between ("row": every cache line of a row, a fixed distance ahead;
"line": the first half of a row's lines, 16 rows ahead), in alternation: every round calls each
policy once, in a new order, each call on a fresh batch of ids. Prints per case the median and the
spread (min, quartiles, max) of each policy and its ratio to the tuner's median, then a verdict.

The cases are the ones of ``python -m embtab bench`` (python/embtab/_bench/*_cases.py): the pooled
lookups that the tuner applies to (multi-threaded, at least 4 MB of rows read).

The tuner exists only in builds from before the single lookup engine (bench/compare_builds.py
leaves such a build in .bench-venvs/base):

    .bench-venvs/base/bin/python bench/compare_prefetch.py [--rounds 21] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

import numpy as np

import embtab
from embtab._bench.common import Config
from embtab._bench.runner import iter_cases

POLICIES = ["auto", "row", "line"]
DEFAULT_CASES = ["bags_sum", "bags_mean", "bags_max", "bags_sum_weighted", "bags_sum_f16", "bags_sum_bf16",
                 "bags_sum_int8"]


def quartiles(times: List[float]) -> List[float]:
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return [min(times), q[0], q[1], q[2], max(times)]


def time_policies(run: Callable[[], Any], advance: Callable[[], None], rounds: int, warmup: int,
                  seed: int) -> Dict[str, List[float]]:
    """Seconds per call of `run` under each policy, measured in `rounds` rounds of one call each."""
    core = embtab._core
    order = list(POLICIES)
    shuffle = random.Random(seed).shuffle
    times: Dict[str, List[float]] = {p: [] for p in POLICIES}
    for r in range(warmup + rounds):
        shuffle(order)
        for policy in order:
            core.set_prefetch_policy(policy)
            advance()
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[policy].append(elapsed)
    core.set_prefetch_policy("auto")
    return times


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="timed rounds (one call per policy each)")
    parser.add_argument("--warmup", type=int, default=6, help="untimed rounds first (the tuner's warm-up included)")
    parser.add_argument("--threads", type=int, default=None, help="embtab threads (default: all CPUs)")
    parser.add_argument("--quick", action="store_true", help="the small sizes of `bench --quick`")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated exact case names")
    args = parser.parse_args(argv)
    if not hasattr(embtab._core, "set_prefetch_policy"):
        print("this embtab build has no prefetch tuner (one fixed policy); run this script with a build from "
              "before the single lookup engine, e.g. .bench-venvs/base/bin/python (see bench/compare_builds.py)")
        return 2
    if args.threads:
        embtab.set_num_threads(args.threads)
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    config = Config.make(args.quick)
    print(f"embtab {embtab.__version__}, SIMD {embtab.simd_path()}, {embtab.get_num_threads()} threads, "
          f"{args.rounds} rounds after {args.warmup} warm-up rounds; ms per call")
    header = ["case"] + [f"{p} median [min q1 q3 max]" for p in POLICIES] + ["row/auto", "line/auto"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    verdict = []
    for case in iter_cases(config, wanted):
        if case.name not in wanted:
            continue
        advance = case.batches.advance if case.batches is not None else (lambda: None)
        times = time_policies(case.run, advance, args.rounds, args.warmup, seed=hash(case.name) & 0xFFFF)
        med = {p: statistics.median(v) for p, v in times.items()}
        cells = [case.name]
        for p in POLICIES:
            q = quartiles(times[p])
            cells.append(f"{med[p] * 1e3:.2f} [{q[0] * 1e3:.2f} {q[1] * 1e3:.2f} {q[3] * 1e3:.2f} {q[4] * 1e3:.2f}]")
        cells += [f"{med['row'] / med['auto']:.3f}", f"{med['line'] / med['auto']:.3f}"]
        print("| " + " | ".join(cells) + " |")
        sys.stdout.flush()
        verdict.append((case.name, med))
    if not verdict:
        print("no case matched --cases")
        return 1
    # The tuner earns its keep if it beats the better fixed policy of each case by more than a
    # few percent somewhere (the fixed policy cannot adapt, the tuner can).
    print()
    for fixed in ("row", "line"):
        ratios = np.array([m[fixed] / m["auto"] for _, m in verdict])
        print(f"fixed '{fixed}' vs tuner: geometric mean ratio {np.exp(np.log(ratios).mean()):.3f} "
              f"(> 1: the tuner is faster), worst case {ratios.max():.3f}, best {ratios.min():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
