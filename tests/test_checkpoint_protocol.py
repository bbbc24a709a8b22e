"""The checkpoint directory protocol (issue 17, item 10): concurrent saves from threads and
processes, loads during saves, failed saves (full disk) that clean up after themselves, and a
directory whose other files embtab never touches."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import embtab

HEX = "0123456789abcdef" * 2


def own_entries(path):
    """What embtab keeps in a checkpoint directory after a successful save."""
    return sorted(n for n in os.listdir(path) if n in (".embtab-lock", "CURRENT") or n.startswith(("snap-", ".tmp-")))


def tree(path):
    """Every entry below ``path`` (links not followed) with its content, for before/after checks."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir",)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", f.read())
    return out


def check_clean(path, extra=()):
    names = sorted(set(os.listdir(path)) - set(extra))
    assert len(names) == 3 and names[:2] == [".embtab-lock", "CURRENT"] and names[2].startswith("snap-"), names


def test_files_embtab_did_not_write_survive(tmp_path):
    path = tmp_path / "ck"
    path.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".embtab-snapshot").write_text("5" * 32 + "\n")
    (elsewhere / "0.npy").write_text("precious")
    (path / "snap-notes.txt").write_text("my notes")
    (path / ".tmp-x").write_text("scratch")
    (path / ("snap-" + "a" * 31)).mkdir()
    (path / ("snap-" + "a" * 32 + "x")).mkdir()
    (path / ("SNAP-" + "a" * 32)).mkdir()
    (path / ("snap-" + "0" * 32)).mkdir()  # the right name, but no marker
    (path / ("snap-" + "0" * 32) / "0.npy").write_text("mine")
    (path / (".tmp-snap-" + "1" * 32)).mkdir()
    (path / (".tmp-snap-" + "1" * 32) / "manifest.json").write_text("{}")
    (path / (".tmp-CURRENT-" + "2" * 32)).write_text("hello")
    (path / ("snap-" + "3" * 32)).mkdir()  # a marker that is not its own uuid
    (path / ("snap-" + "3" * 32) / ".embtab-snapshot").write_text("wrong\n")
    (path / ("snap-" + "3" * 32) / "manifest.json").write_text("{}")
    (path / ("snap-" + "5" * 32)).symlink_to(elsewhere)  # never followed
    (path / (".tmp-snap-" + "6" * 32)).symlink_to(elsewhere)
    (path / ("snap-" + "7" * 32)).write_text("a file, not a directory")
    before, outside = tree(path), tree(elsewhere)
    for i in range(3):
        embtab.save(path, x=np.full(10, i), note=f"save {i}")
    assert embtab.load(path)["note"] == "save 2"
    after = tree(path)
    for name, content in before.items():
        assert after.get(name) == content, name
    assert tree(elsewhere) == outside
    assert len(after) == len(before) + 6  # the lock, CURRENT, a snapshot with its marker, manifest and array


def test_user_files_inside_a_snapshot_survive(tmp_path):
    path = tmp_path / "ck"
    embtab.save(path, x=np.zeros(3))
    (snap,) = [p for p in path.iterdir() if p.name.startswith("snap-")]
    (snap / "README.txt").write_text("kept")
    embtab.save(path, x=np.ones(3))
    # The superseded snapshot lost what embtab wrote there and keeps the user's file.
    left = [p for p in path.iterdir() if p.name.startswith((".tmp-snap-", "snap-")) and (p / "README.txt").exists()]
    assert len(left) == 1 and sorted(q.name for q in left[0].iterdir()) == ["README.txt"]
    np.testing.assert_array_equal(embtab.load(path)["x"], np.ones(3))


def test_remains_of_killed_saves_are_removed(tmp_path):
    path = tmp_path / "ck"
    embtab.save(path, x=np.zeros(3))
    (snap,) = [p for p in path.iterdir() if p.name.startswith("snap-")]
    for name in ("snap-" + "1" * 32, ".tmp-snap-" + "2" * 32):  # complete but never current / unfinished
        d = path / name
        d.mkdir()
        (d / ".embtab-snapshot").write_text(name[-32:] + "\n")
        (d / "manifest.json").write_text("{")
        (d / "0.npy").write_bytes(b"\x93NUMPY")
    (path / (".tmp-snap-" + "3" * 32)).mkdir()  # killed before its marker
    (path / (".tmp-snap-" + "4" * 32)).mkdir()  # killed while creating its marker
    (path / (".tmp-snap-" + "4" * 32) / ".embtab-snapshot").write_text("")
    (path / (".tmp-CURRENT-" + "5" * 32)).write_text(snap.name + "\n")
    (path / (".tmp-CURRENT-" + "6" * 32)).write_text("")
    embtab.save(path, x=np.ones(3))
    check_clean(path)
    np.testing.assert_array_equal(embtab.load(path)["x"], np.ones(3))


SAVER = textwrap.dedent(
    """
    import sys, numpy as np, embtab
    path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for tag in range(first, first + count):
        embtab.save(path, x=np.full((64, 16), tag, np.int64), tag=tag)
    """
)


def test_concurrent_saves_from_threads_and_processes(tmp_path):
    path = str(tmp_path / "ck")
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / ".tmp-mine").write_text("x")
    count = 20
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, path, str(first), str(count)]) for first in (1000, 2000)]
    errors = []

    def saver(first):
        try:
            for tag in range(first, first + count):
                embtab.save(path, x=np.full((64, 16), tag, np.int64), tag=tag)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(first,)) for first in (3000, 4000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert not errors
    loaded = embtab.load(path)
    assert loaded["tag"] in {first + i for first in (1000, 2000, 3000, 4000) for i in range(count)}
    np.testing.assert_array_equal(loaded["x"], np.full((64, 16), loaded["tag"]))
    check_clean(path, extra=[".tmp-mine"])


def test_loads_during_saves_always_see_a_complete_checkpoint(tmp_path):
    path = str(tmp_path / "ck")
    embtab.save(path, x=np.full((64, 16), 0, np.int64), tag=0)
    proc = subprocess.Popen([sys.executable, "-c", SAVER, path, "1", "60"])
    stop = threading.Event()
    errors = []

    def saver():
        try:
            tag = 10_000
            while not stop.is_set():
                embtab.save(path, x=np.full((64, 16), tag, np.int64), tag=tag)
                tag += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=saver)
    thread.start()
    loads = 0
    try:
        while proc.poll() is None or loads < 20:
            loaded = embtab.load(path, mmap=loads % 2 == 1)
            np.testing.assert_array_equal(loaded["x"], np.full((64, 16), loaded["tag"]))
            loads += 1
    finally:
        stop.set()
        thread.join()
        proc.wait(timeout=300)
    assert proc.returncode == 0 and not errors
    check_clean(path)


def test_arrays_written_during_a_save_still_verify(tmp_path):
    table = np.zeros((1024, 1024), np.float64)  # 8 MB: hashing a chunk takes a while
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            table[:] += 1  # releases the GIL

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(4):
            embtab.save(tmp_path / "ck", table=table)
            loaded = embtab.load(tmp_path / "ck")["table"]  # checksum of the bytes in the file
            assert np.isin(np.unique(loaded), np.arange(loaded.max() + 1)).all()
    finally:
        stop.set()
        thread.join()


class Failures:
    """Stand-ins for the os functions a save calls: count them, or fail the n-th with ENOSPC."""

    NAMES = ("open", "write", "fsync", "mkdir", "rename", "replace")

    def __init__(self, monkeypatch, fail_at=-1):
        self.calls, self.fail_at = 0, fail_at
        for name in self.NAMES:
            monkeypatch.setattr(os, name, self.wrap(getattr(os, name)))

    def wrap(self, real):
        def fake(*args, **kwargs):
            self.calls += 1
            if self.calls - 1 == self.fail_at:
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")
            return real(*args, **kwargs)

        return fake


def test_failed_saves_clean_up_after_themselves(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    path.mkdir()
    (path / "snap-notes.txt").write_text("mine")
    embtab.save(path, x=np.zeros((100, 8)), tag=0)
    with monkeypatch.context() as m:
        counter = Failures(m)
        embtab.save(path, x=np.ones((100, 8)), tag=1)
    total = counter.calls
    assert total > 20
    current = 1
    for k in range(total):
        tag = 100 + k
        with monkeypatch.context() as m:
            Failures(m, fail_at=k)
            try:
                embtab.save(path, x=np.full((100, 8), tag), tag=tag)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        loaded = embtab.load(path)
        assert loaded["tag"] in (current, tag), k
        np.testing.assert_array_equal(loaded["x"], np.full((100, 8), loaded["tag"]))
        names = sorted(set(os.listdir(path)) - {"snap-notes.txt"})
        assert not [n for n in names if n.startswith(".tmp-")], (k, names)
        # At most the superseded snapshot is left, when only the last fsync failed.
        assert names[:2] == [".embtab-lock", "CURRENT"] and len(names) <= 3 + (loaded["tag"] == tag), (k, names)
        current = loaded["tag"]
    embtab.save(path, x=np.zeros((100, 8)), tag=-1)
    check_clean(path, extra=["snap-notes.txt"])
    assert embtab.load(path)["tag"] == -1


FILE_SIZE_LIMIT = textwrap.dedent(
    """
    import os, resource, sys, numpy as np, embtab
    path = sys.argv[1]
    embtab.save(path, x=np.zeros(10), tag="small")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # files past 100 kB: EFBIG
    try:
        embtab.save(path, x=np.zeros(1_000_000), tag="big")
    except OSError as exc:
        print("failed", exc.errno)
    print(embtab.load(path)["tag"], sorted(os.listdir(path))[:2], len(os.listdir(path)))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    embtab.save(path, x=np.zeros(1_000_000), tag="big")
    print(embtab.load(path)["tag"], len(os.listdir(path)))
    """
)


@pytest.mark.skipif(not hasattr(os, "setrlimit") and sys.platform != "linux", reason="needs RLIMIT_FSIZE")
def test_file_size_limit_mid_save(tmp_path):
    path = str(tmp_path / "ck")
    out = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, path], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"failed {errno.EFBIG}", "small ['.embtab-lock', 'CURRENT'] 3", "big 3"]
    check_clean(path)
