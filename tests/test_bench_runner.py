"""The benchmark report (`python -m embtab bench`): how it times, and what its JSON holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

import embtab
from embtab.__main__ import main
from embtab._bench.common import Config, IdBatches, draw_id_batches
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


def test_each_call_reads_the_next_batch_of_ids() -> None:
    batches = IdBatches([{"ids": np.array([k])} for k in range(3)])
    seen = []
    fns = {"a": lambda: seen.append(("a", int(batches.ids[0]))), "b": lambda: seen.append(("b", int(batches.ids[0])))}
    measure_interleaved(fns, 3, warmup=2, before=batches.advance)
    # Every call, warm-up or timed, finds a different batch from the call before it.
    assert [k for _, k in seen] == [1, 2, 0, 1, 2, 0, 1, 2, 0, 1]
    assert [name for name, _ in seen] == ["a"] * 3 + ["b"] * 3 + ["a", "b"] * 2
    batches.select(4)
    assert batches.index == 1 and len(batches) == 3
    with pytest.raises(AttributeError):
        batches.weights  # noqa: B018 -- the access itself must raise
    with pytest.raises(ValueError):
        IdBatches([])


def test_drawn_batches_differ_and_fit_the_table() -> None:
    config = Config.make(quick=True)
    batches = draw_id_batches(config, np.random.default_rng(0))
    assert len(batches) == config.id_batches >= 2
    first = batches.bag_ids.copy()
    assert first.shape == (config.num_bags, config.bag_len) and batches.flat.base is batches.bag_ids
    assert batches.ids.shape == (config.gather_ids,) and batches.weights.shape == first.shape
    batches.advance()
    assert not np.array_equal(batches.bag_ids, first)
    for k in range(len(batches)):
        batches.select(k)
        assert 0 <= batches.ids.min() and batches.ids.max() < config.num_rows
        assert 0 <= batches.bag_ids.min() and batches.bag_ids.max() < config.num_rows


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
