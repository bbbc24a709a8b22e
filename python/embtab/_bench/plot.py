"""``--plot``: speedups and % of memory bandwidth per case as a PNG (matplotlib, optional)."""

from __future__ import annotations

from typing import Any, Dict, List


def plot(rows: List[Dict[str, Any]], machine: Dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover (depends on the environment)
        raise SystemExit("--plot needs matplotlib: pip install 'embtab[plot]'") from exc

    labels = [f"{r['case']} ({r['threads']}t)" for r in rows]
    speedups = [r["speedup"] or 0.0 for r in rows]
    bandwidth = [r.get("pct_copy_bw") or 0.0 for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.55 * len(rows)), 9), constrained_layout=True)
    ax1.bar(labels, speedups, color="tab:blue")
    ax1.set_yscale("log")
    ax1.set_ylabel("speedup vs baseline (log)")
    ax1.axhline(1.0, color="black", linewidth=0.8)
    ax2.bar(labels, bandwidth, color="tab:green")
    ax2.set_ylabel("% of memory-copy bandwidth")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=70, labelsize=8)
    fig.suptitle(f"embtab {machine['embtab']} on {machine['cpu']} ({machine['cores']} CPUs, {machine['simd_path']})")
    fig.savefig(path, dpi=110)
    plt.close(fig)
