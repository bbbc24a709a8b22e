"""The benchmark report (`python -m embtab bench`): how it times, and what its JSON holds."""

from __future__ import annotations

import json

import pytest

import embtab
from embtab.__main__ import main
from embtab._bench.runner import measure_interleaved


def test_measure_interleaved_times_in_rounds() -> None:
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = measure_interleaved(fns, 4, warmup=3)
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}
    assert all(t >= 0 for v in times.values() for t in v)
    # Warm-up calls and one timed call each, then one call of each per round: never two rounds of
    # one implementation in a row.
    assert calls == ["a"] * 4 + ["b"] * 4 + ["a", "b"] * 3


def test_json_report_has_one_row_per_thread_count(tmp_path, capsys) -> None:
    before = embtab.get_num_threads()
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--repeats", "2", "--threads", "1", "2", "--cases", "bags_sum_f16",
                 "--json", str(path)]) == 0
    assert embtab.get_num_threads() == before
    report = json.loads(path.read_text())
    assert report["machine"]["repeats"] == 2 and report["machine"]["copy_bandwidth_gbs"] > 0
    rows = report["rows"]
    assert [(r["case"], r["threads"]) for r in rows] == [("bags_sum_f16", 1), ("bags_sum_f16", 2)]
    for row in rows:
        assert 0 < row["embtab_s"]["min"] <= row["embtab_s"]["median"]
        # The baseline is embtab's own float32 kernel: it is timed at the row's thread count.
        assert row["baseline"] == "embtab f32" and 0 < row["baseline_s"]["min"] <= row["baseline_s"]["median"]
        assert row["speedup"] == pytest.approx(row["baseline_s"]["median"] / row["embtab_s"]["median"])
    out = capsys.readouterr().out
    assert out.count("| bags_sum_f16 |") == 2
