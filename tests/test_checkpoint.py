"""save / load: round trips, corruption detection, and crash safety under SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import embtab


def test_round_trip_is_bitwise(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 7)).astype(np.float32)
    b = rng.integers(0, 10, 5)
    embtab.save(tmp_path / "ck", table=a, ids=b)
    loaded = embtab.load(tmp_path / "ck")
    assert set(loaded) == {"table", "ids"}
    np.testing.assert_array_equal(loaded["table"], a)
    assert loaded["table"].dtype == a.dtype
    np.testing.assert_array_equal(loaded["ids"], b)


@pytest.mark.parametrize("shape", [(0, 4), (3,), (), (1000, 128), (5, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint16, np.uint8])
def test_loaded_arrays_are_aligned_copies(tmp_path, shape, dtype):
    a = (np.arange(int(np.prod(shape)), dtype=np.int64) * 7 % 251).astype(dtype).reshape(shape)
    embtab.save(tmp_path / "ck", a=a, f=np.asfortranarray(np.ones((3, 2)) * np.arange(2)))
    loaded = embtab.load(tmp_path / "ck")
    np.testing.assert_array_equal(loaded["a"], a)
    assert loaded["a"].dtype == a.dtype and loaded["a"].shape == a.shape
    assert loaded["a"].flags.writeable and (a.size == 0 or loaded["a"].ctypes.data % 128 == 0)
    np.testing.assert_array_equal(loaded["f"], np.ones((3, 2)) * np.arange(2))


def test_truncated_data_is_an_error(tmp_path):
    embtab.save(tmp_path / "ck", a=np.arange(1000.0))
    (path,) = [p for p in (tmp_path / "ck").rglob("*.npy")]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 8)
    with pytest.raises(embtab.CheckpointError):
        embtab.load(tmp_path / "ck", verify=False)


def test_overwrite_keeps_one_snapshot(tmp_path):
    path = tmp_path / "ck"
    embtab.save(path, x=np.zeros(3))
    embtab.save(path, x=np.ones(3))
    np.testing.assert_array_equal(embtab.load(path)["x"], np.ones(3))
    assert sum(n.startswith("snap-") for n in os.listdir(path)) == 1


def test_mmap(tmp_path):
    a = np.arange(1000, dtype=np.float64).reshape(100, 10)
    embtab.save(tmp_path / "ck", table=a)
    loaded = embtab.load(tmp_path / "ck", mmap=True)["table"]
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, a)
    np.testing.assert_array_equal(embtab.gather(loaded, np.array([5])), a[[5]])


def test_corruption_is_detected(tmp_path):
    path = tmp_path / "ck"
    embtab.save(path, table=np.arange(100, dtype=np.float32))
    snap = next(p for p in path.iterdir() if p.name.startswith("snap-"))
    data = bytearray((snap / "table.npy").read_bytes())
    data[-3] ^= 0xFF
    (snap / "table.npy").write_bytes(bytes(data))
    with pytest.raises(embtab.CheckpointError, match="checksum"):
        embtab.load(path)
    (snap / "table.npy").unlink()
    with pytest.raises(embtab.CheckpointError, match="missing"):
        embtab.load(path)
    (snap / "manifest.json").write_text("{not json")
    with pytest.raises(embtab.CheckpointError):
        embtab.load(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        embtab.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        embtab.load(tmp_path / "empty")


def test_bad_values(tmp_path):
    with pytest.raises(TypeError, match="cannot save x"):
        embtab.save(tmp_path / "ck", x=[1, 2, 3])
    with pytest.raises(ValueError):
        embtab.save(tmp_path / "ck")
    with pytest.raises(TypeError):
        embtab.save(tmp_path / "ck", x=np.array([object()]))


CHILD = textwrap.dedent(
    """
    import sys, numpy as np, embtab
    path = sys.argv[1]
    i = 0
    while True:
        i += 1
        value = np.full((256, 64), float(i), np.float32)
        embtab.save(path, table=value, step=np.array([i]))
        print(i, flush=True)
    """
)


def test_crash_during_save_leaves_a_complete_checkpoint(tmp_path):
    path = str(tmp_path / "ck")
    rng = np.random.default_rng(0)
    survived = 0
    for attempt in range(25):
        child = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        child.stdout.readline()  # at least one save completed
        time.sleep(float(rng.uniform(0, 0.05)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        loaded = embtab.load(path)
        step = int(loaded["step"][0])
        assert step >= 1
        np.testing.assert_array_equal(loaded["table"], np.full((256, 64), float(step), np.float32))
        survived += 1
    assert survived == 25
