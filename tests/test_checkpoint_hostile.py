"""Hostile and broken checkpoints (issue 17, items 11-13): load() reads nothing outside the
snapshot, opens only regular files, validates every setting with the class being restored, and
turns every malformation into CheckpointError."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import embtab
from embtab import CheckpointError
from embtab.layers import EmbeddingBag, HashEmbedding, SubwordEmbedding


def make_checkpoint(path):
    layer = EmbeddingBag(30, 4, mode="mean", seed=1, dropout=0.25, padding_idx=2)
    opt = embtab.optim.Adam(layer, lr=0.01)
    layer.forward(np.array([[1, 2, 3]]))
    layer.backward(np.ones((1, 4), np.float32))
    opt.step()
    embtab.save(path, layer=layer, opt=opt, table=np.arange(12.0).reshape(3, 4), meta={"epoch": 1},
                ids=np.arange(5), ints=np.arange(30 * 4).reshape(30, 4),
                rng=np.random.default_rng(0), hashed=HashEmbedding(16, 2, num_hashes=2),
                words=SubwordEmbedding(2, vocab=["a"], bucket=8, minn=1, maxn=2))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("pristine") / "ck"
    make_checkpoint(path)
    return path


@pytest.fixture
def ck(tmp_path, pristine):
    path = tmp_path / "ck"
    shutil.copytree(pristine, path, symlinks=True)
    return path


def snap(path):
    return path / (path / "CURRENT").read_text().strip()


def manifest(path):
    return json.loads((snap(path) / "manifest.json").read_text())


def write_manifest(path, m):
    (snap(path) / "manifest.json").write_text(json.dumps(m))


def edit(path, fn):
    m = manifest(path)
    fn(m)
    write_manifest(path, m)


def test_the_fixture_loads(ck):
    loaded = embtab.load(ck)
    assert loaded["opt"].layer is loaded["layer"] and loaded["meta"] == {"epoch": 1}
    (ck / ".embtab-lock").unlink()  # a copy without the lock file (nothing saves there) loads too
    assert embtab.load(ck)["meta"] == {"epoch": 1}


# --- Item 11: nothing outside the snapshot, regular files only. -----------------------------

OUTSIDE_NAMES = ["/etc/passwd", "/nonexistent/x.npy", "../0.npy", "../../x.npy", "a/0.npy", "0.npy\x00",
                 "", ".", "..", "manifest.json", ".embtab-snapshot", "/proc/self/pagemap", "0.npy/", " 0.npy",
                 "0.NPY", "0.npy.lnk", "CON"]


@pytest.mark.parametrize("name", OUTSIDE_NAMES)
def test_manifest_file_names_stay_inside_the_snapshot(ck, name):
    def rename(m):
        m["files"][name] = m["files"].pop("0.npy")
        for entry in m["entries"].values():
            if entry.get("file") == "0.npy":
                entry["file"] = name
            for key, value in entry.get("arrays", {}).items():
                if value == "0.npy":
                    entry["arrays"][key] = name

    edit(ck, rename)
    with pytest.raises(CheckpointError, match=r"only names like 0\.npy"):
        embtab.load(ck)


def test_errors_do_not_reveal_outside_paths(ck, tmp_path):
    (tmp_path / "exists.npy").write_bytes(b"x")
    messages = []
    for outside in (str(tmp_path / "exists.npy"), str(tmp_path / "missing.npy"), "../exists.npy", "../missing.npy"):
        edit(ck, lambda m: m["entries"]["table"].update(file=outside))  # noqa: B023 -- called right here
        with pytest.raises(CheckpointError) as info:
            embtab.load(ck)
        messages.append(str(info.value).replace(outside, "NAME"))
    assert len(set(messages)) == 1, messages


def test_symlinked_array_file_is_refused(ck, tmp_path):
    file = snap(ck) / manifest(ck)["entries"]["table"]["file"]
    shutil.copy(file, tmp_path / "copy.npy")  # identical bytes: only the link is wrong
    file.unlink()
    file.symlink_to(tmp_path / "copy.npy")
    with pytest.raises(CheckpointError, match="symbolic link"):
        embtab.load(ck)
    with pytest.raises(CheckpointError, match="symbolic link"):
        embtab.load(ck, mmap=True, verify=False)


def test_hard_to_reach_snapshots_are_refused(ck, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(snap(ck), elsewhere)
    for current in ("snap-/../elsewhere", "../elsewhere", "/" + str(elsewhere), "snap-" + "0" * 31, "snap-" + "G" * 32,
                    snap(ck).name + "/", snap(ck).name + "\n\n", " " + snap(ck).name, "", "\x00" * 10):
        (ck / "CURRENT").write_text(current)
        with pytest.raises(CheckpointError, match=r"does not name a snapshot|more than the 64"):
            embtab.load(ck)
    # A name of the right form that is a link to a complete snapshot elsewhere.
    (ck / ("snap-" + "e" * 32)).symlink_to(elsewhere)
    (ck / "CURRENT").write_text("snap-" + "e" * 32 + "\n")
    with pytest.raises(CheckpointError, match="symbolic link"):
        embtab.load(ck)
    (ck / "CURRENT").write_text("snap-" + "f" * 32 + "\n")
    with pytest.raises(CheckpointError, match="missing snapshot"):
        embtab.load(ck)


def test_linked_current_and_manifest_are_refused(ck, tmp_path):
    real = snap(ck) / "manifest.json"
    (tmp_path / "m.json").write_bytes(real.read_bytes())
    real.unlink()
    real.symlink_to(tmp_path / "m.json")
    with pytest.raises(CheckpointError, match=r"manifest\.json is a symbolic link"):
        embtab.load(ck)
    (tmp_path / "current").write_text((ck / "CURRENT").read_text())
    (ck / "CURRENT").unlink()
    (ck / "CURRENT").symlink_to(tmp_path / "current")
    with pytest.raises(CheckpointError, match="CURRENT is a symbolic link"):
        embtab.load(ck)


SPECIAL = textwrap.dedent(
    """
    import os, sys, embtab
    try:
        embtab.load(sys.argv[1], mmap=sys.argv[2] == "1")
    except embtab.CheckpointError as exc:
        print("CheckpointError:", exc)
    """
)


@pytest.mark.parametrize("which", ["array", "manifest", "CURRENT", "lock"])
def test_fifos_and_directories_fail_fast(ck, which):
    file = {"array": snap(ck) / manifest(ck)["entries"]["table"]["file"], "manifest": snap(ck) / "manifest.json",
            "CURRENT": ck / "CURRENT", "lock": ck / ".embtab-lock"}[which]
    file.unlink()
    os.mkfifo(file)  # opening it without O_NONBLOCK would wait forever for a writer
    for mmap in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", SPECIAL, str(ck), mmap], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("CheckpointError:") and "not a regular file" in out.stdout
    file.unlink()
    file.mkdir()
    with pytest.raises(CheckpointError):
        embtab.load(ck)


def test_size_and_header_must_match_the_manifest(ck):
    file = snap(ck) / manifest(ck)["entries"]["table"]["file"]
    data = file.read_bytes()
    file.write_bytes(data + b"\0" * 8)
    with pytest.raises(CheckpointError, match="bytes, the manifest says"):
        embtab.load(ck, verify=False)
    # Same size, another shape in the header: (4, 3) instead of (3, 4).
    file.write_bytes(data.replace(b"(3, 4)", b"(4, 3)"))
    with pytest.raises(CheckpointError, match="header does not match"):
        embtab.load(ck, verify=False)
    file.write_bytes(data.replace(b"'<f8'", b"'<i8'"))
    with pytest.raises(CheckpointError, match="header does not match"):
        embtab.load(ck, verify=False)
    file.write_bytes(data)
    embtab.load(ck)


# --- Item 12: every setting validated by the class being restored. --------------------------


def entry(m, name):
    return m["entries"][name]


BAD_SETTINGS = [
    ("swap Adam for SGD", lambda m: entry(m, "opt").update({"class": "SGD"})),
    ("unknown class", lambda m: entry(m, "opt").update({"class": "os.system"})),
    ("_kind injected", lambda m: entry(m, "opt")["config"]["hyper"].update({"_kind": "sgd"})),
    ("table injected", lambda m: entry(m, "opt")["config"]["hyper"].update({"table": 1})),
    ("step -1", lambda m: entry(m, "opt")["config"]["scalars"].update({"step": -1})),
    ("step 1.5", lambda m: entry(m, "opt")["config"]["scalars"].update({"step": 1.5})),
    ("step str", lambda m: entry(m, "opt")["config"]["scalars"].update({"step": "3"})),
    ("step bool", lambda m: entry(m, "opt")["config"]["scalars"].update({"step": True})),
    ("step huge", lambda m: entry(m, "opt")["config"]["scalars"].update({"step": 2**70})),
    ("step missing", lambda m: entry(m, "opt")["config"]["scalars"].pop("step")),
    ("extra scalar", lambda m: entry(m, "opt")["config"]["scalars"].update({"sum": 1})),
    ("lr < 0", lambda m: entry(m, "opt")["config"]["hyper"].update({"lr": -1.0})),
    ("lr_steps < 0", lambda m: entry(m, "opt")["config"].update({"lr_steps": -1})),
    ("lr_steps bool", lambda m: entry(m, "opt")["config"].update({"lr_steps": True})),
    ("lr_steps missing", lambda m: entry(m, "opt")["config"].pop("lr_steps")),
    ("lr str", lambda m: entry(m, "opt")["config"]["hyper"].update({"lr": "0.1"})),
    ("eps 0", lambda m: entry(m, "opt")["config"]["hyper"].update({"eps": 0.0})),
    ("beta 1", lambda m: entry(m, "opt")["config"]["hyper"].update({"betas": [1.0, 0.9]})),
    ("3 betas", lambda m: entry(m, "opt")["config"]["hyper"].update({"betas": [0.1, 0.2, 0.3]})),
    ("opt state missing", lambda m: entry(m, "opt")["arrays"].pop("state.exp_avg")),
    ("opt state shape", lambda m: entry(m, "opt")["arrays"].update({"state.exp_avg": entry(m, "table")["file"]})),
    ("opt extra array", lambda m: entry(m, "opt")["arrays"].update({"state.sum": entry(m, "table")["file"]})),
    ("opt config not a dict", lambda m: entry(m, "opt").update({"config": [1]})),
    ("opt table int", lambda m: entry(m, "opt")["arrays"].update({"table": entry(m, "ints")["file"]})),
    ("dropout 1.5", lambda m: entry(m, "layer")["config"]["settings"].update({"dropout": 1.5})),
    ("padding_idx huge", lambda m: entry(m, "layer")["config"]["settings"].update({"padding_idx": 10**9})),
    ("padding_idx -31", lambda m: entry(m, "layer")["config"]["settings"].update({"padding_idx": -31})),
    ("mode bogus", lambda m: entry(m, "layer")["config"]["settings"].update({"mode": "bogus"})),
    ("bounds bogus", lambda m: entry(m, "layer")["config"]["settings"].update({"bounds": "wrap"})),
    ("init bogus", lambda m: entry(m, "layer")["config"]["settings"].update({"init": "ones"})),
    ("std < 0", lambda m: entry(m, "layer")["config"]["settings"].update({"std": -1.0})),
    ("seed 1.5", lambda m: entry(m, "layer")["config"]["settings"].update({"seed": 1.5})),
    ("seed < 0", lambda m: entry(m, "layer")["config"]["settings"].update({"seed": -1})),
    ("dtype int", lambda m: entry(m, "layer")["config"]["settings"].update({"dtype": "<i8"})),
    ("dtype object", lambda m: entry(m, "layer")["config"]["settings"].update({"dtype": "O"})),
    ("unknown setting", lambda m: entry(m, "layer")["config"]["settings"].update({"colour": "red"})),
    ("missing setting", lambda m: entry(m, "layer")["config"]["settings"].pop("bounds")),
    ("settings list", lambda m: entry(m, "layer")["config"].update({"settings": []})),
    ("rng of another kind", lambda m: entry(m, "layer")["config"]["rng"].update({"bit_generator": "MT19937"})),
    ("rng state str", lambda m: entry(m, "layer")["config"]["rng"]["state"].update({"state": "0"})),
    ("rng missing", lambda m: entry(m, "layer")["config"].pop("rng")),
    ("weight 1-D", lambda m: entry(m, "layer")["arrays"].update({"weight": entry(m, "ids")["file"]})),
    ("weight int", lambda m: entry(m, "layer")["arrays"].update({"weight": entry(m, "ints")["file"]})),
    ("weight of 3 rows", lambda m: entry(m, "layer")["arrays"].update({"weight": entry(m, "table")["file"]})),
    ("hash with padding", lambda m: entry(m, "hashed")["config"]["settings"].update({"padding_idx": 1})),
    ("hash mode max", lambda m: entry(m, "hashed")["config"]["settings"].update({"mode": "max"})),
    ("hash 0 hashes", lambda m: entry(m, "hashed")["config"]["settings"].update({"num_hashes": 0})),
    ("vocab grows", lambda m: entry(m, "words")["config"]["settings"].update({"vocab": ["a", "b"]})),
    ("vocab str", lambda m: entry(m, "words")["config"]["settings"].update({"vocab": "a"})),
    ("vocab repeats", lambda m: entry(m, "words")["config"]["settings"].update({"vocab": ["a", "a"], "bucket": 7})),
    ("minn > maxn", lambda m: entry(m, "words")["config"]["settings"].update({"minn": 3})),
    ("generator unknown", lambda m: entry(m, "rng")["state"].update({"bit_generator": "RandomState"})),
    ("generator state", lambda m: entry(m, "rng")["state"].update({"state": {"state": 1}})),
    ("generator not a dict", lambda m: entry(m, "rng").update({"state": 1})),
    ("scalar of shape (3, 4)", lambda m: entry(m, "table").update({"scalar": True})),
    ("scalar false", lambda m: entry(m, "table").update({"scalar": False})),
]


@pytest.mark.parametrize("change", [c for _, c in BAD_SETTINGS], ids=[name for name, _ in BAD_SETTINGS])
def test_settings_are_validated_against_the_class(ck, change):
    edit(ck, change)
    with pytest.raises(CheckpointError):
        embtab.load(ck)


def test_validation_uses_the_constructors_messages(ck):
    edit(ck, lambda m: entry(m, "opt")["config"]["hyper"].update({"eps": 0.0}))
    with pytest.raises(CheckpointError, match=r"entry 'opt': not a valid Adam: ValueError: eps must be > 0"):
        embtab.load(ck)


def test_step_after_a_valid_load_is_finite(ck):
    loaded = embtab.load(ck)
    loaded["layer"].forward(np.array([[4, 5]]))
    loaded["layer"].backward(np.ones((1, 4), np.float32))
    loaded["opt"].step()
    assert np.isfinite(loaded["layer"].weight).all() and loaded["opt"].state["step"] == 2


# --- Item 13: every malformation is a CheckpointError, read with bounds. ------------------------


def test_huge_current_is_refused_unread(ck):
    with open(ck / "CURRENT", "r+b") as f:
        f.truncate(3 << 30)  # sparse: nothing is written, reading it whole would take 3 GB
    with pytest.raises(CheckpointError, match="CURRENT has 3221225472 bytes, more than the 64"):
        embtab.load(ck)


def test_huge_manifest_is_refused_unread(ck):
    with open(snap(ck) / "manifest.json", "r+b") as f:
        f.truncate(3 << 30)
    with pytest.raises(CheckpointError, match=r"manifest\.json has 3221225472 bytes, more than"):
        embtab.load(ck)


@pytest.mark.parametrize("shape", [[2**40, 2**40], [2**36], [8 << 30, 1], [2**62, 2**62, 2**62]])
def test_huge_claimed_shapes_allocate_nothing(ck, shape):
    def grow(m):
        info = m["files"][entry(m, "table")["file"]]
        info["shape"] = shape
    edit(ck, grow)
    with pytest.raises(CheckpointError, match="size"):
        embtab.load(ck, verify=False)


def test_npy_header_claiming_64_gib(ck):
    file = snap(ck) / manifest(ck)["entries"]["table"]["file"]
    with open(file, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (2**33,)})
        f.write(b"\0" * 96)
    header = len(file.read_bytes()) - 96

    def claim(size):
        edit(ck, lambda m: m["files"][entry(m, "table")["file"]].update(shape=[2**33], size=size))

    claim(header + 2**36)  # the manifest agrees with the header, the file does not
    with pytest.raises(CheckpointError, match="bytes, the manifest says"):
        embtab.load(ck)
    claim(header + 96)  # the manifest agrees with the file, not with the shape
    with pytest.raises(CheckpointError, match="is not that of shape"):
        embtab.load(ck)


MALFORMED = [
    b"", b"{not json", b"[]", b"null", b"1", b'"x"', b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe\x00",
    b'{"format": "embtab-checkpoint"}', b'{"format": "embtab-checkpoint", "version": 1, "files": {}, "entries": {}}',
    b'{"format": "embtab-checkpoint", "version": 2}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": [], "entries": {}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": []}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {}, "extra": 1}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": 1}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"": {"kind": "value", "value": 1}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"\\u0000": {"kind": "value", "value": 1}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "array"}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "array", "file": "0.npy"}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": [], "file": "0.npy"}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "value", "value": 1, "y": 2}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "object", "class": {}, '
    b'"config": {}, "arrays": {}}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "object", "class": "Adam", '
    b'"config": {}, "arrays": {}}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "object", "class": "Adam", '
    b'"config": {}, "arrays": []}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "object", "class": "Adam", '
    b'"config": {}, "arrays": {"table": 0}}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "generator", "state": {}}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "generator", "state": []}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "generator", "state": '
    b'{"bit_generator": "PCG64", "state": {"state": 1, "inc": 1}, "has_uint32": 0, "uinteger": "0"}}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {}, "entries": {"x": {"kind": "generator", "state": '
    b'{"bit_generator": "MT19937", "state": {"key": [-1], "pos": 0}}}}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {"0.npy": 1}, "entries": {}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {"x.npy": {}}, "entries": {}}',
    b'{"format": "embtab-checkpoint", "version": 2, "files": {"0.npy": {"shape": [], "dtype": "<f8", "size": 136}}, '
    b'"entries": {}}',
]


@pytest.mark.parametrize("text", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_manifests(ck, text):
    (snap(ck) / "manifest.json").write_bytes(text)
    with pytest.raises(CheckpointError):
        embtab.load(ck)


BAD_FILE_INFO = [
    ("shape", "3"), ("shape", [3, "4"]), ("shape", [3, -4]), ("shape", [3, 4.0]), ("shape", [True, 4]),
    ("shape", [1] * 40), ("shape", None), ("shape", [2**64, 1]), ("shape", [4, 3]),
    ("dtype", "O"), ("dtype", "|O"), ("dtype", "|V8"), ("dtype", "<f4,<f4"), ("dtype", "<f3"), ("dtype", "f8"),
    ("dtype", "<f8 "), ("dtype", "<M8[xx]"), ("dtype", 8), ("dtype", "<U99999"), ("dtype", "<i8"),
    ("size", "136"), ("size", -1), ("size", 2**70), ("size", 1.5), ("size", 0),
    ("sha256", "x"), ("sha256", "0" * 64), ("sha256", None), ("sha256", "A" * 64),
]


@pytest.mark.parametrize("key, value", BAD_FILE_INFO)
def test_bad_file_descriptions(ck, key, value):
    edit(ck, lambda m: m["files"][entry(m, "table")["file"]].update({key: value}))
    with pytest.raises(CheckpointError):
        embtab.load(ck)
    if key != "sha256":
        with pytest.raises(CheckpointError):
            embtab.load(ck, verify=False, mmap=True)


def paths_in(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_in(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from paths_in(item, prefix + (i,))


REPLACEMENTS = [None, True, -1, 2**70, 1.5, "../x", [], {"kind": "array"}]


def test_every_field_replaced_by_every_kind_of_value(ck):
    """A deterministic sweep over the manifest: any field replaced by any JSON value loads or
    raises CheckpointError, nothing else (the atheris target fuzz/fuzz_checkpoint.py goes further)."""
    original = manifest(ck)
    paths = [p for p in paths_in(original) if p and not (len(p) > 4 and p[3] == "vocab")]
    outcomes = {"loaded": 0, "refused": 0}
    for path in paths:
        for replacement in REPLACEMENTS:
            m = copy.deepcopy(original)
            target = m
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = replacement
            write_manifest(ck, m)
            try:
                embtab.load(ck, verify=False)
                outcomes["loaded"] += 1
            except CheckpointError:
                outcomes["refused"] += 1
    assert outcomes["refused"] > 0.9 * len(paths) * len(REPLACEMENTS) and outcomes["loaded"] > 0
