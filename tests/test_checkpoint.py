"""save / load: round trips of every kind of value, corruption detection, crash safety under
SIGKILL, copy-on-write maps, and resumed training that continues bitwise."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import embtab
from embtab.layers import Embedding, EmbeddingBag

BIT_GENERATORS = ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"]


def snapshot_dir(path):
    (snap,) = [p for p in path.iterdir() if p.name.startswith("snap-")]
    return snap


def file_of(path, name):
    """The array file of entry ``name`` (from the manifest)."""
    snap = snapshot_dir(path)
    return snap / json.loads((snap / "manifest.json").read_text())["entries"][name]["file"]


def test_round_trip_is_bitwise(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 7)).astype(np.float32)
    b = rng.integers(0, 10, 5)
    embtab.save(tmp_path / "ck", table=a, ids=b)
    loaded = embtab.load(tmp_path / "ck")
    assert list(loaded) == ["table", "ids"]
    np.testing.assert_array_equal(loaded["table"], a)
    assert loaded["table"].dtype == a.dtype
    np.testing.assert_array_equal(loaded["ids"], b)


@pytest.mark.parametrize("shape", [(0, 4), (3,), (), (1000, 128), (5, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint16, np.uint8, ">f8", np.bool_, "<U3",
                                   "datetime64[ms]", np.complex64])
def test_loaded_arrays_are_aligned_copies(tmp_path, shape, dtype):
    a = (np.arange(int(np.prod(shape)), dtype=np.int64) * 7 % 251).astype(dtype).reshape(shape)
    embtab.save(tmp_path / "ck", a=a, f=np.asfortranarray(np.ones((3, 2)) * np.arange(2)))
    loaded = embtab.load(tmp_path / "ck")
    np.testing.assert_array_equal(loaded["a"], a)
    assert loaded["a"].dtype == a.dtype and loaded["a"].shape == a.shape
    assert loaded["a"].flags.writeable and (a.size == 0 or loaded["a"].ctypes.data % 128 == 0)
    np.testing.assert_array_equal(loaded["f"], np.ones((3, 2)) * np.arange(2))
    # The files are plain .npy files: numpy reads them as it reads its own.
    np.testing.assert_array_equal(np.load(file_of(tmp_path / "ck", "a"), allow_pickle=False), a)
    np.testing.assert_array_equal(np.load(file_of(tmp_path / "ck", "a"), mmap_mode="r"), a)


def test_values_generators_and_scalars_round_trip(tmp_path):
    gens = {}
    for i, name in enumerate(BIT_GENERATORS):
        gens[name] = np.random.Generator(getattr(np.random, name)(i))
        gens[name].random(3 + i)
        gens[name].integers(0, 100, 1, dtype=np.uint32)  # leaves a buffered half word
    values = {
        "step": 123, "lr": 0.25, "done": False, "tag": "run-7", "nothing": None, "big": 2**80, "inf": float("inf"),
        "meta": {"epoch": 3, "loss": [1.5, 0.75], "nested": {"ok": True, "names": ["a", "b"]}, "empty": {}},
        "pair": (1, "x"), "f32": np.float32(1.25), "i8": np.int8(-3), "u64": np.uint64(2**64 - 1),
        "bot.0.weight": np.eye(3, dtype=np.float32), "héllo wörld ✓": np.arange(3), "path": 1,
    }
    embtab.save(tmp_path / "ck", **values, **gens)
    loaded = embtab.load(tmp_path / "ck")
    assert list(loaded) == list(values) + list(gens)
    for key in ("step", "lr", "done", "tag", "nothing", "big", "inf", "meta", "path"):
        assert loaded[key] == values[key] and type(loaded[key]) is type(values[key])
    assert loaded["pair"] == [1, "x"]  # JSON: tuples come back as lists
    for key in ("f32", "i8", "u64"):
        assert type(loaded[key]) is type(values[key]) and loaded[key] == values[key]
    np.testing.assert_array_equal(loaded["bot.0.weight"], np.eye(3))
    np.testing.assert_array_equal(loaded["héllo wörld ✓"], np.arange(3))
    for name, gen in gens.items():
        assert type(loaded[name].bit_generator).__name__ == name
        np.testing.assert_array_equal(loaded[name].random(7), gen.random(7))
        np.testing.assert_array_equal(loaded[name].integers(0, 2**32, 5, dtype=np.uint32),
                                      gen.integers(0, 2**32, 5, dtype=np.uint32))


def test_nan_value_round_trips(tmp_path):
    embtab.save(tmp_path / "ck", x=float("nan"), y=[float("-inf")])
    loaded = embtab.load(tmp_path / "ck")
    assert np.isnan(loaded["x"]) and loaded["y"] == [float("-inf")]


@pytest.mark.parametrize(
    "named, error, match",
    [
        ({"": 1}, ValueError, "non-empty"),
        ({"a\nb": 1}, ValueError, "control characters"),
        ({"a\x00b": 1}, ValueError, "control characters"),
        ({"\ud800": 1}, ValueError, "surrogate"),
        ({"x" * 257: 1}, ValueError, "at most 256"),
        ({"x": object()}, TypeError, "cannot save x"),
        ({"x": {1: 2}}, TypeError, "key 1 of type int"),
        ({"x": {"loss": np.float32(1)}}, TypeError, r"x\['loss'\] is a numpy.float32.*float\(\)"),
        ({"x": [1, {2, 3}]}, TypeError, r"x\[1\] is a builtins.set"),
        ({"x": np.array([object()])}, TypeError, "object or structured"),
        ({"x": np.zeros(2, "f4,i4")}, TypeError, "object or structured"),
        ({"x": np.random.RandomState(0)}, TypeError, "cannot save x"),
        ({"x": np.ma.masked_array([1, 2], mask=[0, 1])}, TypeError, "lose its mask"),
        ({"a": np.zeros(3), "x": lambda: 0}, TypeError, "cannot save x"),
    ],
)
def test_bad_values_write_nothing(tmp_path, named, error, match):
    with pytest.raises(error, match=match):
        embtab.save(tmp_path / "new", **named)
    assert not (tmp_path / "new").exists()
    embtab.save(tmp_path / "ck", keep=np.arange(3))
    before = sorted(p.name for p in (tmp_path / "ck").rglob("*"))
    with pytest.raises(error, match=match):
        embtab.save(tmp_path / "ck", **named)
    assert sorted(p.name for p in (tmp_path / "ck").rglob("*")) == before
    np.testing.assert_array_equal(embtab.load(tmp_path / "ck")["keep"], np.arange(3))


def test_self_referencing_value_is_refused(tmp_path):
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested more than"):
        embtab.save(tmp_path / "ck", x=loop)
    with pytest.raises(ValueError, match="at least one"):
        embtab.save(tmp_path / "ck")


def test_values_too_large_for_the_manifest_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(embtab._checkpoint, "_MAX_MANIFEST_BYTES", 10_000)
    embtab.save(tmp_path / "ck", **{f"a{i}": np.zeros((2, 3)) for i in range(20)}, words=["w"] * 300)
    with pytest.raises(ValueError, match="more than the 10000 load"):
        embtab.save(tmp_path / "ck", words=["w"] * 3000)
    with pytest.raises(ValueError, match="more than the 10000 load"):
        embtab.save(tmp_path / "ck", **{f"a{i}": np.zeros((2, 3)) for i in range(50)})
    assert embtab.load(tmp_path / "ck")["words"] == ["w"] * 300


def test_truncated_data_is_an_error(tmp_path):
    embtab.save(tmp_path / "ck", a=np.arange(1000.0))
    path = file_of(tmp_path / "ck", "a")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 8)
    with pytest.raises(embtab.CheckpointError, match="bytes, the manifest says"):
        embtab.load(tmp_path / "ck", verify=False)


def test_overwrite_keeps_one_snapshot(tmp_path):
    path = tmp_path / "ck"
    embtab.save(path, x=np.zeros(3))
    embtab.save(path, x=np.ones(3))
    np.testing.assert_array_equal(embtab.load(path)["x"], np.ones(3))
    assert sorted(n for n in os.listdir(path) if not n.startswith("snap-")) == [".embtab-lock", "CURRENT"]
    assert sum(n.startswith("snap-") for n in os.listdir(path)) == 1


def test_shared_arrays_stay_shared(tmp_path):
    table = np.zeros((10, 4), np.float32)
    opt = embtab.optim.SGD(table, lr=0.5)
    layer = Embedding(6, 2)
    opt2 = embtab.optim.Adagrad(layer, lr=0.1)
    embtab.save(tmp_path / "ck", opt=opt, table=table, opt2=opt2, layer=layer, again=table)
    loaded = embtab.load(tmp_path / "ck")
    assert loaded["opt"].table is loaded["table"] is loaded["again"] and loaded["opt"].layer is None
    assert loaded["opt2"].table is loaded["layer"].weight and loaded["opt2"].layer is loaded["layer"]
    assert len(list(snapshot_dir(tmp_path / "ck").glob("*.npy"))) == 3  # table, weight, Adagrad's sum


def test_mmap_is_copy_on_write_and_trains(tmp_path):
    rng = np.random.default_rng(3)
    layer = EmbeddingBag(300, 16, mode="mean", seed=1)
    opt = embtab.optim.Adam(layer, lr=0.01)
    a = np.arange(1000, dtype=np.float64).reshape(100, 10)
    embtab.save(tmp_path / "ck", layer=layer, opt=opt, table=a)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in snapshot_dir(tmp_path / "ck").iterdir()}

    mapped = embtab.load(tmp_path / "ck", mmap=True)
    read = embtab.load(tmp_path / "ck")
    assert isinstance(mapped["table"], np.memmap) and mapped["table"].flags.writeable
    assert mapped["table"].ctypes.data % 128 == 0
    np.testing.assert_array_equal(mapped["table"], a)
    np.testing.assert_array_equal(embtab.gather(mapped["table"], np.array([5])), a[[5]])
    mapped["table"][0] = -1  # in memory only
    for loaded in (mapped, read):
        lay, o = loaded["layer"], loaded["opt"]
        for _ in range(3):
            ids = rng.integers(0, 300, (8, 4))
            lay.forward(ids)
            lay.backward(np.ones((8, 16), np.float32))
            o.step()
        rng = np.random.default_rng(3)
    assert isinstance(mapped["layer"].weight, np.memmap) and isinstance(mapped["opt"].state["exp_avg"], np.memmap)
    np.testing.assert_array_equal(mapped["layer"].weight, read["layer"].weight)
    np.testing.assert_array_equal(mapped["opt"].state["exp_avg_sq"], read["opt"].state["exp_avg_sq"])
    assert mapped["opt"].state["step"] == read["opt"].state["step"] == 3
    del mapped, read
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in snapshot_dir(tmp_path / "ck").iterdir()} == digests
    np.testing.assert_array_equal(embtab.load(tmp_path / "ck")["table"], a)


def test_corruption_is_detected(tmp_path):
    path = tmp_path / "ck"
    embtab.save(path, table=np.arange(100, dtype=np.float32))
    table = file_of(path, "table")
    data = bytearray(table.read_bytes())
    data[-3] ^= 0xFF
    table.write_bytes(bytes(data))
    with pytest.raises(embtab.CheckpointError, match="checksum"):
        embtab.load(path)
    with pytest.raises(embtab.CheckpointError, match="checksum"):
        embtab.load(path, mmap=True)
    np.testing.assert_array_equal(embtab.load(path, verify=False)["table"][:-1], np.arange(99))
    table.unlink()
    with pytest.raises(embtab.CheckpointError, match="missing"):
        embtab.load(path)
    (snapshot_dir(path) / "manifest.json").write_text("{not json")
    with pytest.raises(embtab.CheckpointError):
        embtab.load(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        embtab.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        embtab.load(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError):
        embtab.load(tmp_path / "file")


def test_torch_state_dict_in_the_same_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    layer = EmbeddingBag(50, 8, mode="sum", seed=4)
    opt = embtab.optim.Adagrad(layer, lr=0.1)
    embtab.save(tmp_path / "ck", **mlp.state_dict(), emb=layer, opt=opt, step=7)
    loaded = embtab.load(tmp_path / "ck")
    assert set(loaded) == set(mlp.state_dict()) | {"emb", "opt", "step"}
    assert "0.weight" in loaded
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    fresh.load_state_dict({k: torch.from_numpy(loaded[k]) for k in mlp.state_dict()})
    with pytest.raises(TypeError, match="does not convert to a numpy array"):
        embtab.save(tmp_path / "bad", w=torch.ones(2, requires_grad=True))
    with pytest.raises(TypeError, match="does not convert to a numpy array"):
        embtab.save(tmp_path / "bad", w=torch.ones(2, dtype=torch.bfloat16))
    assert not (tmp_path / "bad").exists()
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    x = torch.from_numpy(layer.forward(ids))
    with torch.no_grad():
        assert torch.equal(fresh(torch.from_numpy(loaded["emb"].forward(ids))), mlp(x))


def train(layer, opt, rng, steps):
    for _ in range(steps):
        ids = rng.integers(0, layer.num_embeddings, (16, 5))
        out = layer.forward(ids)
        opt.zero_grad()
        layer.backward((out * 0.5 + 1).astype(out.dtype))
        opt.step()


@pytest.mark.parametrize("cls", [Embedding, EmbeddingBag])
@pytest.mark.parametrize("opt_cls", [embtab.optim.Adam, embtab.optim.Adagrad])
def test_resumed_training_with_dropout_continues_bitwise(tmp_path, cls, opt_cls):
    def make():
        layer = cls(200, 8, dropout=0.3, seed=11, **({"mode": "mean"} if cls is EmbeddingBag else {}))
        return layer, opt_cls(layer, lr=0.05)

    layer, opt = make()
    train(layer, opt, np.random.default_rng(0), 6)

    layer2, opt2 = make()
    data_rng = np.random.default_rng(0)
    train(layer2, opt2, data_rng, 3)
    embtab.save(tmp_path / "ck", layer=layer2, opt=opt2, data_rng=data_rng)
    del layer2, opt2
    loaded = embtab.load(tmp_path / "ck")
    train(loaded["layer"], loaded["opt"], loaded["data_rng"], 3)

    np.testing.assert_array_equal(loaded["layer"].weight, layer.weight)
    for key, value in opt.state.items():
        np.testing.assert_array_equal(loaded["opt"].state[key], value)
    # The masks are drawn from the restored stream: the next forward drops the same rows.
    ids = np.arange(40).reshape(8, 5)
    np.testing.assert_array_equal(loaded["layer"].forward(ids), layer.forward(ids))


def test_step_saved_as_a_0d_array_is_accepted(tmp_path):
    layer = Embedding(20, 4, seed=0)
    opt = embtab.optim.Adam(layer, lr=0.1)
    train(layer, opt, np.random.default_rng(1), 2)
    opt.state["step"] = np.array(opt.state["step"], np.int64)  # the representation may change
    embtab.save(tmp_path / "ck", layer=layer, opt=opt)
    loaded = embtab.load(tmp_path / "ck")
    assert int(loaded["opt"].state["step"]) == 2
    opt.state["step"] = 2
    train(layer, opt, np.random.default_rng(2), 1)
    train(loaded["layer"], loaded["opt"], np.random.default_rng(2), 1)
    np.testing.assert_array_equal(loaded["layer"].weight, layer.weight)


CHILD = textwrap.dedent(
    """
    import sys, numpy as np, embtab
    path = sys.argv[1]
    i = 0
    while True:
        i += 1
        value = np.full((256, 64), float(i), np.float32)
        embtab.save(path, table=value, step=i)
        print(i, flush=True)
    """
)


def test_crash_during_save_leaves_a_complete_checkpoint(tmp_path):
    path = str(tmp_path / "ck")
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "snap-notes.txt").write_text("mine")
    rng = np.random.default_rng(0)
    for _attempt in range(25):
        child = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        child.stdout.readline()  # at least one save completed
        time.sleep(float(rng.uniform(0, 0.05)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        loaded = embtab.load(path)
        assert loaded["step"] >= 1
        np.testing.assert_array_equal(loaded["table"], np.full((256, 64), float(loaded["step"]), np.float32))
    # The next save removes what killed saves left behind, and nothing else.
    embtab.save(path, x=1)
    names = sorted(os.listdir(path))
    assert len(names) == 4 and names[:2] == [".embtab-lock", "CURRENT"] and names[3] == "snap-notes.txt"
