"""gather / gather_bags with ``out=``: an out that overlaps the table, the ids or the weights gives
the answer of reading them first (as ``np.take(..., out=)`` does), a call that raises writes
nothing to out, and the outputs embtab allocates are aligned numpy arrays. Every row format."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import embtab

SENTINEL = np.float32(-7.25)


def bags_reference(table: np.ndarray, ids: np.ndarray, offsets: np.ndarray, mode: str = "sum",
                   weights: Any = None) -> np.ndarray:
    """Pooled numpy reference, rows added in order as embtab does."""
    out = np.zeros((offsets.size - 1, table.shape[1]), table.dtype)
    for b in range(offsets.size - 1):
        rows = table[ids[offsets[b]:offsets[b + 1]]]
        if weights is not None:
            rows = rows * weights[offsets[b]:offsets[b + 1], None]
        if rows.shape[0]:
            acc = rows[0].copy()
            for row in rows[1:]:
                acc = np.maximum(acc, row) if mode == "max" else acc + row
            out[b] = acc / table.dtype.type(rows.shape[0]) if mode == "mean" else acc
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gather_into_the_table_it_reads(each_path_and_threads, dtype):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((50, 16)).astype(dtype)
    original = table.copy()
    # Row 0 is written first and then read back: a kernel that wrote in place would copy row 7 twice.
    ids = np.array([7, 0, 1, 2])
    expected = np.take(original, ids, axis=0)
    result = embtab.gather(table, ids, out=table[:4])
    assert result.base is table
    np.testing.assert_array_equal(table[:4], expected)
    np.testing.assert_array_equal(table[4:], original[4:])
    # numpy agrees on the semantics.
    again = original.copy()
    np.take(again, ids, axis=0, out=again[:4])
    np.testing.assert_array_equal(again, table)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_gather_bags_into_the_table_it_reads(each_path_and_threads, mode):
    rng = np.random.default_rng(2)
    table = rng.standard_normal((40, 32)).astype(np.float32)
    original = table.copy()
    ids = np.array([[3, 0, 1], [1, 0, 9]])
    expected = bags_reference(original, ids.ravel(), np.array([0, 3, 6]), mode)
    embtab.gather_bags(table, ids, mode=mode, out=table[:2])
    np.testing.assert_array_equal(table[:2], expected)
    np.testing.assert_array_equal(table[2:], original[2:])


def test_out_overlapping_weights_and_ids():
    rng = np.random.default_rng(3)
    table = rng.standard_normal((30, 8)).astype(np.float32)
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    # Weights in the first elements of the buffer that out also covers.
    buffer = rng.random(16).astype(np.float32)
    weights, out = buffer[:8].reshape(2, 4), buffer.reshape(2, 8)
    expected = bags_reference(table, ids.ravel(), np.array([0, 4, 8]), weights=weights.ravel().copy())
    embtab.gather_bags(table, ids, weights=weights, out=out)
    np.testing.assert_array_equal(out, expected)
    # ids stored in the bytes of out.
    raw = np.zeros(4 * 8 * 4, np.uint8)
    id_view = raw[:32].view(np.int64)
    id_view[:] = [9, 3, 0, 29]
    out = raw.view(np.float32).reshape(4, 8)
    expected = table[[9, 3, 0, 29]]
    embtab.gather(table, id_view, out=out)
    np.testing.assert_array_equal(out, expected)


def reduced_precision_tables(base: np.ndarray):
    f16 = base.astype(np.float16)
    return [
        ("float16", f16, {}, f16.astype(np.float32)),
        ("bfloat16", embtab.to_bfloat16(base), {}, embtab.to_bfloat16(base).to_float32()),
        ("int8", embtab.quantize_rows(base), {}, embtab.quantize_rows(base).dequantize()),
    ]


def test_out_overlapping_a_reduced_precision_table(each_path_and_threads):
    rng = np.random.default_rng(4)
    base = rng.standard_normal((64, 8)).astype(np.float32)
    ids = np.array([40, 0, 1, 2, 3, 63])
    for name, table, kw, upcast in reduced_precision_tables(base):
        storage = table if isinstance(table, np.ndarray) else table.data
        if isinstance(table, embtab.QuantizedTable):
            # out over the scales and biases: rows 0-5 read from the (scale, bias) pairs it covers.
            out = table.params.reshape(-1)[:48].reshape(6, 8)
        else:
            out = storage.reshape(-1).view(np.float32)[:48].reshape(6, 8)
        expected = upcast[ids]
        embtab.gather(table, ids, out=out, **kw)
        np.testing.assert_array_equal(out, expected, err_msg=name)


def failing_calls(table: Any, n: int, dim: int) -> list:
    """(name, call(out), out shape) of lookups whose last id is invalid."""
    ids = np.zeros(n, np.int64)
    ids[::7] = np.arange(ids[::7].size) % 50
    ids[-1] = 50  # one past the last row
    bag_ids = ids.reshape(-1, 10)
    return [
        ("gather", lambda out: embtab.gather(table, ids, out=out), (n, dim)),
        ("bags_sum", lambda out: embtab.gather_bags(table, bag_ids, out=out), (n // 10, dim)),
        ("bags_max", lambda out: embtab.gather_bags(table, bag_ids, mode="max", out=out), (n // 10, dim)),
        ("bags_csr_mean", lambda out: embtab.gather_bags(table, ids, np.array([0, 5, n]), mode="mean", out=out),
         (2, dim)),
    ]


@pytest.mark.parametrize("dim", [16, 37])
def test_a_bad_id_at_the_end_writes_nothing_to_out(each_path_and_threads, dim):
    rng = np.random.default_rng(5)
    base = rng.standard_normal((50, dim)).astype(np.float32)
    tables = [("float32", base), ("float64", base.astype(np.float64))]
    tables += [(name, table) for name, table, _, _ in reduced_precision_tables(base)]
    for name, table in tables:
        result_dtype = np.float64 if name == "float64" else np.float32
        for call_name, call, shape in failing_calls(table, 20_000, dim):
            out = np.full(shape, SENTINEL, result_dtype)
            with pytest.raises(IndexError, match=r"= 50 is out of bounds"):
                call(out)
            assert (out == SENTINEL).all(), f"{name} {call_name} wrote to out before raising"


def test_a_bad_id_in_an_overlapping_call_writes_nothing():
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    original = table.copy()
    with pytest.raises(IndexError):
        embtab.gather(table, np.array([5, 6, 10]), out=table[:3])
    np.testing.assert_array_equal(table, original)


def test_small_outputs_are_aligned_writable_views_of_one_buffer():
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    for result in (embtab.gather(table, [1, 2]), embtab.gather_bags(table, [[1, 2]]),
                   embtab.gather(embtab.to_bfloat16(table), [3]), embtab.gather(table, np.zeros((0, 3), np.int64))):
        assert result.ctypes.data % 64 == 0
        assert result.flags.c_contiguous and result.flags.writeable and not result.flags.owndata
        assert result.base.dtype == np.uint8 and result.base.ndim == 1 and result.base.flags.owndata
    np.testing.assert_array_equal(embtab.gather(table, [[1], [2]]), table[[[1], [2]]])


def large_stream_cases(rng: np.random.Generator) -> list:
    """Tables of every format whose outputs are big enough to be written with non-temporal stores."""
    base = rng.standard_normal((1000, 64)).astype(np.float32)
    cases: list = [("float32", base, base), ("float64", base.astype(np.float64), base.astype(np.float64))]
    cases += [(name, table, upcast) for name, table, _, upcast in reduced_precision_tables(base)]
    return cases


def test_large_outputs_of_every_format(simd_path):
    # 40,000 ids x 64 floats: a 10 MB gather output and 2.5 MB of sum bags, both streamed to memory.
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 1000, 40_000)
    bag_ids = ids.reshape(-1, 4)
    for name, table, upcast in large_stream_cases(rng):
        np.testing.assert_array_equal(embtab.gather(table, ids), upcast[ids], err_msg=name)
        got = embtab.gather_bags(table, bag_ids, mode="max")
        np.testing.assert_array_equal(got, upcast[bag_ids].max(axis=1), err_msg=name)
        if name != "int8":  # 8-bit sums follow FBGEMM's rule (tests/test_lowp.py)
            got = embtab.gather_bags(table, bag_ids)
            rows = upcast[bag_ids]
            np.testing.assert_array_equal(got, ((rows[:, 0] + rows[:, 1]) + rows[:, 2]) + rows[:, 3], err_msg=name)
