"""embtab's kernels beside torch's OpenMP threads in one process (issue 12, "Threads beside torch").

A background thread runs ``torch.mm`` in a loop on ``--torch-threads`` threads (as the dense part of
a training step would) while the main thread times embtab's ``gather_bags`` and ``Adam.step_bags``
on 1 and on 2 threads, with and without the torch load, and for each pool spin time given. The
configurations are timed in alternation, round after round, with fresh ids for every call; the
report gives medians and quartiles in ms per call, and the torch matmuls per second beside each.

    python bench/threads_beside_torch.py                 # about a minute
    python bench/threads_beside_torch.py --rounds 20 --spin 200 0

Before the fix, two embtab threads were slower than one beside torch on a 2-core machine: a worker
that the OS had not yet scheduled held up every parallel region. Run it on an otherwise idle machine
(`taskset -c 0,1 python bench/threads_beside_torch.py` reproduces a 2-core one).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

import embtab


def quartiles(samples: List[float]) -> Tuple[float, float, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
    return q[0], statistics.median(samples), q[2]


class TorchLoad:
    """torch.mm in a loop on a thread of its own, counting the products done."""

    def __init__(self, threads: int, size: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.a = torch.randn(size, size)
        self.b = torch.randn(size, size)
        self.count = 0
        self.running = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            if not self.running.wait(0.05):
                continue
            self.torch.mm(self.a, self.b)
            self.count += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds of all configurations (default 8)")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per configuration and round")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--matmul", type=int, default=256, help="size of torch's square matrices")
    parser.add_argument("--spin", type=int, nargs="*", default=None,
                        help="pool spin times to compare in microseconds (needs embtab.set_spin_time)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rows, dim, bags, bag_len = 1_000_000, 64, 16384, 20
    table = rng.standard_normal((rows, dim), dtype=np.float32)
    id_sets = [rng.integers(0, rows, (bags, bag_len)) for _ in range(16)]
    grad_out = np.ones((bags, dim), np.float32)
    opt = embtab.optim.Adam(table, lr=1e-3)
    ops: Dict[str, Callable[[np.ndarray], object]] = {
        "gather_bags": lambda ids: embtab.gather_bags(table, ids),
        "Adam.step_bags": lambda ids: opt.step_bags(grad_out, ids),
    }
    spins = args.spin if args.spin else [None]
    if spins != [None] and not hasattr(embtab, "set_spin_time"):
        parser.error("this embtab has no set_spin_time")
    load = TorchLoad(args.torch_threads, args.matmul)
    configs = [(op, threads, torch_on, spin) for op in ops for torch_on in (False, True) for threads in (1, 2)
               for spin in spins]
    times: Dict[tuple, List[float]] = {c: [] for c in configs}
    rates: Dict[tuple, List[float]] = {c: [] for c in configs}
    k = 0
    try:
        for _ in range(args.rounds):
            for config in configs:
                op, threads, torch_on, spin = config
                embtab.set_num_threads(threads)
                if spin is not None:
                    embtab.set_spin_time(spin)
                if torch_on:
                    load.running.set()
                    time.sleep(0.02)
                done, start = load.count, time.perf_counter()
                for _ in range(args.calls):
                    ids = id_sets[k % len(id_sets)]
                    k += 1
                    t0 = time.perf_counter()
                    ops[op](ids)
                    times[config].append((time.perf_counter() - t0) * 1e3)
                if torch_on:
                    rates[config].append((load.count - done) / (time.perf_counter() - start))
                load.running.clear()
    finally:
        load.close()
        embtab.set_num_threads(0)

    print(f"embtab {embtab.__version__}, {embtab._core.default_num_threads()} CPUs, torch on {args.torch_threads} threads "
          f"({args.matmul}x{args.matmul} mm), {args.rounds} rounds x {args.calls} calls, fresh ids per call")
    print(f"{'op':16} {'torch':6} {'spin us':>7} {'threads':>7} {'ms/call q1 / median / q3':>28} {'torch mm/s':>11}")
    for config in configs:
        op, threads, torch_on, spin = config
        q1, med, q3 = quartiles(times[config])
        rate = f"{statistics.median(rates[config]):11.0f}" if rates[config] else f"{'-':>11}"
        spin_text = "default" if spin is None else str(spin)
        print(f"{op:16} {'yes' if torch_on else 'no':6} {spin_text:>7} {threads:7d} "
              f"{q1:9.2f} / {med:7.2f} / {q3:7.2f}   {rate}")


if __name__ == "__main__":
    main()
