"""embtab's threads beside torch's: the DLRM example's training step (embtab.torch tables, torch
MLPs) under several thread settings, each in its own process, in alternating rounds.

    python bench/torch_threads.py [--rounds 3] [--steps 60] [--batch 2048] [--scale 0.05]

Prints steps/s per setting (median and range over the rounds). The settings: torch on 1 and on
all threads; embtab following torch (embtab.torch's default) or pinned to 1 thread; torch's OpenMP
workers waiting actively (libgomp's default spin) or passively (OMP_WAIT_POLICY=PASSIVE). Run it
on an otherwise idle machine: other processes change the balance it measures.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dlrm_torch.py"


def settings(cpus: int):
    yield "torch 1, embtab follows (1)", ["--threads", "1"], {}
    yield f"torch {cpus}, embtab follows ({cpus})", ["--threads", str(cpus)], {}
    yield f"torch {cpus}, embtab 1", ["--threads", str(cpus), "--embtab-threads", "1"], {}
    yield f"torch {cpus}, embtab follows, OMP passive", ["--threads", str(cpus)], {"OMP_WAIT_POLICY": "PASSIVE"}
    yield f"torch {cpus}, embtab 1, OMP passive", ["--threads", str(cpus), "--embtab-threads", "1"], \
        {"OMP_WAIT_POLICY": "PASSIVE"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--scale", type=float, default=0.05)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    runs = list(settings(cpus))
    results = {name: [] for name, _, _ in runs}
    for _ in range(args.rounds):
        for name, flags, env in runs:
            cmd = [sys.executable, str(EXAMPLE), "--steps", str(args.steps), "--batch", str(args.batch),
                   "--scale", str(args.scale), "--log-every", str(args.steps), *flags]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout
            results[name].append(float(re.search(r"steps/s: ([\d.]+)", out).group(1)))
    print(f"DLRM training step, batch {args.batch}, scale {args.scale}, {cpus} CPUs, {args.rounds} rounds")
    print("| setting | steps/s (median) | min | max |")
    print("|---|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
