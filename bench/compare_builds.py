"""Before / after: builds the wheel of a base revision (default ``main``) and of the working tree,
installs each into its own virtual environment (.bench-venvs/<name>, with numpy and scipy only),
checks that both give bitwise the same lookup results (bench/lookup_digest.py), then runs
``python -m embtab bench --json`` alternately in each, for several rounds, and prints per case the
median over rounds of each build's median time, the spread over rounds, and the ratio.

    python3 bench/compare_builds.py [--base main] [--rounds 5] [--cases gather,bags_] [--quick]

Alternating whole runs (main, this, main, this, ...; the order flips every round) keeps a slow change
in the machine's speed from favouring one build. On a busy machine, add ``--paired``: one process
loads both builds (the base one renamed ``embtab_base``), builds each case for both from the same
seeds, and calls them alternately, each call on a fresh batch of ids; it reports wall time and the
process's CPU time (which time spent waiting for a CPU does not inflate) and the median of the
per-pair ratios. The environments are kept: a second run with --no-build reuses them (and
``.bench-venvs/base/bin/python bench/compare_prefetch.py`` times the base build's prefetch tuner).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".bench-venvs"
# Cases whose code this kind of change touches: every lookup (float32, float64 and reduced-precision).
DEFAULT_CASES = "gather,bags_"


def run(cmd: List[str], **kw: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def export_revision(rev: str, dest: Path) -> None:
    """The tree of `rev` (committed files only) into dest."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tempfile.TemporaryFile() as archive:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True, stdout=archive)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(dest)


def build_env(name: str, source: Path) -> Path:
    """A fresh virtual environment with the wheel built from `source`, numpy and scipy."""
    env = VENVS / name
    wheels = VENVS / f"wheels-{name}"
    for path in (env, wheels):
        if path.exists():
            shutil.rmtree(path)
    run([sys.executable, "-m", "venv", str(env)])
    python = env / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "numpy", "scipy"])
    # A build directory of its own: never the one a development install is using.
    run([str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
         f"--config-settings=build-dir={VENVS / ('build-' + name)}", str(source)])
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", *map(str, wheels.glob("embtab-*.whl"))])
    return python


def digests(python: Path) -> Dict[str, str]:
    out = subprocess.run([str(python), str(ROOT / "bench" / "lookup_digest.py")], check=True,
                         capture_output=True, text=True, cwd="/")
    return json.loads(out.stdout)


def bench_once(python: Path, cases: str, quick: bool, repeats: int, json_path: Path) -> None:
    cmd = [str(python), "-m", "embtab", "bench", "--json", str(json_path), "--repeats", str(repeats)]
    if cases:
        cmd += ["--cases", cases]
    if quick:
        cmd.append("--quick")
    subprocess.run(cmd, check=True, cwd="/", stdout=subprocess.DEVNULL)


def paired_worker(base_parent: Path, cases: str, quick: bool, rounds: int) -> None:
    """Runs in this build's environment: each case of both builds, called alternately."""
    import time

    from embtab._bench.common import Config
    from embtab._bench.runner import iter_cases

    sys.path.insert(0, str(base_parent))
    base = importlib.import_module("embtab_base")
    wanted = [w.strip() for w in cases.split(",") if w.strip()]
    config = Config.make(quick)
    print("| case | base ms (cpu) | this ms (cpu) | this/base wall | this/base cpu |\n|---|---|---|---|---|")
    base_cases: Dict[str, object] = {}  # the base build's cases of the module being run
    for case in iter_cases(config, wanted):
        module = case.run.__module__  # embtab._bench.<name>_cases
        if base_cases.get("module") != module:
            # The base build's definition of the same cases: its module, imported while `embtab`
            # names the base build.
            base_cases.clear()
            saved = sys.modules["embtab"]
            sys.modules["embtab"] = base
            try:
                base_module = importlib.import_module(module.replace("embtab.", "embtab_base.", 1))
            except ModuleNotFoundError:  # cases the base revision does not have: nothing to compare
                base_module = None
            finally:
                sys.modules["embtab"] = saved
            base_cases.update({c.name: c for c in (base_module.cases(config) if base_module else [])}, module=module)
        twin = base_cases.get(case.name)
        if twin is None:
            continue
        runs = {"base": twin, "this": case}
        wall: Dict[str, List[float]] = {"base": [], "this": []}
        cpu: Dict[str, List[float]] = {"base": [], "this": []}
        for r in range(rounds + 3):  # 3 rounds of warm-up
            for name in (("base", "this") if r % 2 == 0 else ("this", "base")):
                c = runs[name]
                if c.batches is not None:
                    c.batches.advance()
                c0, w0 = time.process_time(), time.perf_counter()
                c.run()
                w1, c1 = time.perf_counter(), time.process_time()
                if r >= 3:
                    wall[name].append(w1 - w0)
                    cpu[name].append(c1 - c0)
        med = {k: {n: statistics.median(v[n]) for n in v} for k, v in (("wall", wall), ("cpu", cpu))}
        ratio = {k: statistics.median(t / b for t, b in zip(v["this"], v["base"])) for k, v in (("wall", wall), ("cpu", cpu))}
        print(f"| {case.name} | {med['wall']['base'] * 1e3:.2f} ({med['cpu']['base'] * 1e3:.2f}) | "
              f"{med['wall']['this'] * 1e3:.2f} ({med['cpu']['this'] * 1e3:.2f}) | {ratio['wall']:.3f} | "
              f"{ratio['cpu']:.3f} |", flush=True)
        del runs, twin


def paired(pythons: Dict[str, Path], cases: str, quick: bool, rounds: int) -> None:
    site = subprocess.run([str(pythons["base"]), "-c", "import embtab, os; print(os.path.dirname(embtab.__file__))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    parent = VENVS / "paired"
    if parent.exists():
        shutil.rmtree(parent)
    shutil.copytree(site, parent / "embtab_base")
    print(f"\npaired, in one process: medians of {rounds} calls of each build, alternating; cpu = process CPU time")
    run([str(pythons["this"]), str(Path(__file__).resolve()), "--paired-worker", str(parent), "--cases", cases,
         "--rounds", str(rounds)] + (["--quick"] if quick else []), cwd="/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git revision to compare with (default main)")
    parser.add_argument("--rounds", type=int, default=5, help="bench runs per build, alternating")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per case in each run")
    parser.add_argument("--cases", default=DEFAULT_CASES, help="as for `python -m embtab bench --cases` ('' = all)")
    parser.add_argument("--quick", action="store_true", help="the small sizes of `bench --quick`")
    parser.add_argument("--no-build", action="store_true", help="reuse the environments of an earlier run")
    parser.add_argument("--paired", action="store_true", help="then time both builds in one process (see above)")
    parser.add_argument("--paired-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paired_worker:
        paired_worker(Path(args.paired_worker), args.cases, args.quick, args.rounds)
        return 0

    names = ("base", "this")
    pythons = {name: VENVS / name / "bin" / "python" for name in names}
    if not args.no_build:
        source = VENVS / "src-base"
        export_revision(args.base, source)
        build_env("base", source)
        build_env("this", ROOT)

    ours, theirs = digests(pythons["this"]), digests(pythons["base"])
    differ = sorted(k for k in theirs if k in ours and ours[k] != theirs[k])
    print(f"\nresults: {len(set(ours) & set(theirs))} lookup calls compared, "
          f"{'all bitwise identical' if not differ else f'{len(differ)} differ: ' + ', '.join(differ[:10])}")

    times: Dict[Tuple[str, int], Dict[str, List[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                path = Path(tmp) / f"{name}-{r}.json"
                bench_once(pythons[name], args.cases, args.quick, args.repeats, path)
                for row in json.loads(path.read_text())["rows"]:
                    key = (row["case"], row["threads"])
                    times.setdefault(key, {}).setdefault(name, []).append(row["embtab_s"]["median"])
            print(f"round {r + 1}/{args.rounds} done", flush=True)

    print(f"\nembtab ms per call: median over {args.rounds} runs of each run's median [min-max over runs]; "
          f"{args.base} = base")
    print("| case | threads | base ms | this ms | this/base |")
    print("|---|---|---|---|---|")
    slower = []
    for (case, threads), by in sorted(times.items()):
        if set(by) != set(names):
            continue  # a case only one build has
        b, t = statistics.median(by["base"]), statistics.median(by["this"])
        span = {n: f"{statistics.median(v) * 1e3:.2f} [{min(v) * 1e3:.2f}-{max(v) * 1e3:.2f}]" for n, v in by.items()}
        print(f"| {case} | {threads} | {span['base']} | {span['this']} | {t / b:.3f} |")
        # Slower beyond noise: this build's fastest run is slower than the base's median.
        if min(by["this"]) > b:
            slower.append(case)
    print("\nslower beyond the spread of runs: " + (", ".join(slower) if slower else "none"))
    if args.paired:
        paired(pythons, args.cases, args.quick, 4 * args.rounds * args.repeats)
    return 1 if differ else 0


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    sys.exit(main())
