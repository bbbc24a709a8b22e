"""Every bad input to gather / gather_bags raises the documented exception, never crashes."""

from __future__ import annotations

import numpy as np
import pytest

import embtab

TABLE = np.arange(20, dtype=np.float32).reshape(10, 2)


@pytest.mark.parametrize("bad", [-1, 10, 2**31, 2**63 - 1, -(2**63)])
def test_out_of_range_ids_raise_index_error_naming_position_and_value(bad):
    ids = np.array([[0, 1], [2, bad]], np.int64)
    with pytest.raises(IndexError, match=rf"ids\[1, 1\] = {bad}"):
        embtab.gather(TABLE, ids)
    with pytest.raises(IndexError, match=rf"ids\[1, 1\] = {bad}"):
        embtab.gather_bags(TABLE, ids)
    with pytest.raises(IndexError, match=rf"ids\[3\] = {bad}"):
        embtab.gather_bags(TABLE, ids.ravel(), np.array([0, 1, 4]), mode="max")


def test_first_bad_position_is_reported_for_any_thread_count(num_threads):
    ids = np.zeros(100_000, np.int64)
    ids[[70_000, 30_000, 99_999]] = [-5, 11, 12]
    with pytest.raises(IndexError, match=r"ids\[30000\] = 11 "):
        embtab.gather(np.zeros((10, 64), np.float32), ids)
    with pytest.raises(IndexError, match=r"ids\[300, 0\] = 11 "):
        embtab.gather_bags(np.zeros((10, 64), np.float32), ids.reshape(1000, 100))


def test_int32_negative_ids():
    with pytest.raises(IndexError, match=r"ids\[0\] = -3 is negative"):
        embtab.gather(TABLE, np.array([-3], np.int32))


def test_zero_row_table_rejects_every_id():
    with pytest.raises(IndexError):
        embtab.gather(np.zeros((0, 4), np.float32), np.array([0]))
    assert embtab.gather(np.zeros((0, 4), np.float32), np.array([], np.int64)).shape == (0, 4)


@pytest.mark.parametrize("ids", [np.array([1.0]), np.array([True]), np.array([1], np.uint64), np.array([1 + 0j]),
                                 np.array([1], object), np.array(["1"])])
def test_non_integer_ids_raise_type_error(ids):
    with pytest.raises(TypeError, match="ids"):
        embtab.gather(TABLE, ids)
    with pytest.raises(TypeError, match="ids"):
        embtab.gather_bags(TABLE, ids.reshape(1, 1))


@pytest.mark.parametrize("table", [TABLE.astype(np.int64), TABLE.astype(np.int8), TABLE.astype(bool), TABLE.astype(">f4")])
def test_non_float_tables_raise_type_error(table):
    with pytest.raises(TypeError, match="table"):
        embtab.gather(table, np.array([0]))
    with pytest.raises(TypeError, match="table"):
        embtab.gather_bags(table, np.array([[0]]))


def test_table_must_be_an_array_and_2d():
    with pytest.raises(TypeError, match="table"):
        embtab.gather([[1.0, 2.0]], np.array([0]))
    with pytest.raises(ValueError, match="table must be 2-D"):
        embtab.gather(np.zeros(3, np.float32), np.array([0]))


def test_out_errors():
    ids = np.array([1, 2])
    with pytest.raises(TypeError, match="out"):
        embtab.gather(TABLE, ids, out=np.empty((2, 2), np.float64))
    with pytest.raises(ValueError, match="out must have shape"):
        embtab.gather(TABLE, ids, out=np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        embtab.gather(TABLE, ids, out=np.empty((2, 4), np.float32)[:, ::2])
    read_only = np.empty((2, 2), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        embtab.gather(TABLE, ids, out=read_only)
    with pytest.raises(ValueError, match="read-only"):
        embtab.gather_bags(TABLE, ids.reshape(1, 2), out=read_only[:1])
    with pytest.raises(TypeError, match="out"):
        embtab.gather(TABLE, ids, out=[[0.0, 0.0]])


@pytest.mark.parametrize(
    "offsets, message",
    [
        (np.array([1, 2, 4]), r"offsets\[0\] must be 0"),
        (np.array([0, 3, 2, 4]), "non-decreasing"),
        (np.array([0, 2]), r"offsets\[-1\] must equal len\(ids\) = 4"),
        (np.array([0, 2, 5]), r"offsets\[-1\] must equal len\(ids\) = 4"),
        (np.array([], np.int64), "empty"),
        (np.array([[0, 4]]), "offsets must be 1-D"),
        (np.array([0, -1, 4]), "non-decreasing"),
    ],
)
def test_bad_offsets_raise_value_error(offsets, message):
    with pytest.raises(ValueError, match=message):
        embtab.gather_bags(TABLE, np.array([0, 1, 2, 3]), offsets)


def test_float_offsets_raise_type_error():
    with pytest.raises(TypeError, match="offsets"):
        embtab.gather_bags(TABLE, np.array([0, 1]), np.array([0.0, 2.0]))


def test_ids_offsets_combinations():
    with pytest.raises(ValueError, match="offsets is required"):
        embtab.gather_bags(TABLE, np.array([0, 1]))
    with pytest.raises(ValueError, match="offsets must be None"):
        embtab.gather_bags(TABLE, np.array([[0, 1]]), np.array([0, 2]))
    with pytest.raises(ValueError, match="ids must be 1-D"):
        embtab.gather_bags(TABLE, np.zeros((1, 1, 1), np.int64))


def test_mode_and_weights_errors():
    ids = np.array([[0, 1]])
    with pytest.raises(ValueError, match="mode"):
        embtab.gather_bags(TABLE, ids, mode="median")
    with pytest.raises(ValueError, match="weights"):
        embtab.gather_bags(TABLE, ids, mode="max", weights=np.ones((1, 2), np.float32))
    with pytest.raises(TypeError, match="weights"):
        embtab.gather_bags(TABLE, ids, weights=np.ones((1, 2), np.float64))
    with pytest.raises(ValueError, match="weights must have the shape of ids"):
        embtab.gather_bags(TABLE, ids, weights=np.ones((2, 1), np.float32))
    with pytest.raises(ValueError, match="return_argmax"):
        embtab.gather_bags(TABLE, ids, mode="sum", return_argmax=True)


def test_threads_and_simd_path_errors():
    with pytest.raises(ValueError, match="SIMD path"):
        embtab.set_simd_path("sse9")
    with pytest.raises(ValueError, match="num_threads"):
        embtab.set_num_threads(-2)
    with pytest.raises(TypeError):
        embtab.set_num_threads(1.5)  # type: ignore[arg-type]
