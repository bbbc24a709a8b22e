"""atheris target: embtab.load on a valid checkpoint that the input mutates: manifest fields
replaced, removed or added, raw manifest bytes, CURRENT, array files truncated, extended or
replaced by links, FIFOs and directories. Anything but a CheckpointError (or a load whose
layers and optimizers then fail to train) is a finding."""

import json
import os
import shutil
import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import embtab
    from embtab.layers import EmbeddingBag, HashEmbedding, SubwordEmbedding

# Beside the crash artifacts (ignored by git), reused by every run: libFuzzer's exit skips atexit.
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts", "checkpoint-work")
shutil.rmtree(ROOT, ignore_errors=True)
os.makedirs(ROOT)
WORK = os.path.join(ROOT, "ck")
OUTSIDE = os.path.join(ROOT, "outside.npy")


def _pristine():
    layer = EmbeddingBag(12, 3, mode="mean", seed=1, dropout=0.25, padding_idx=2)
    opt = embtab.optim.Adam(layer, lr=0.01)
    layer.forward(np.array([[1, 2, 3]]))
    layer.backward(np.ones((1, 3), np.float32))
    opt.step()
    words = SubwordEmbedding(2, vocab=["a"], bucket=5, minn=1, maxn=2)
    embtab.save(WORK, layer=layer, opt=opt, table=np.arange(6.0).reshape(2, 3), meta={"epoch": 1, "tags": ["x"]},
                rng=np.random.default_rng(0), hashed=HashEmbedding(8, 2, num_hashes=2),
                words=words, words_opt=embtab.optim.Adagrad(words, lr=0.1), scalar=np.float32(2))
    with open(os.path.join(WORK, "CURRENT"), "rb") as f:
        current = f.read()
    snap = os.path.join(WORK, current.decode().strip())
    files = {}
    for name in os.listdir(snap):
        with open(os.path.join(snap, name), "rb") as f:
            files[name] = f.read()
    shutil.copy(os.path.join(snap, "0.npy"), OUTSIDE)
    return current, snap, files


CURRENT, SNAP, FILES = _pristine()
MANIFEST = json.loads(FILES["manifest.json"])

INTS = [0, 1, -1, 2, 3, 7, 2**31, 2**32 - 1, 2**53 + 1, 2**63, -(2**63), 2**64, 10**30]
STRS = ["", "0.npy", "1.npy", "../0.npy", "/etc/passwd", "/proc/self/pagemap", "a/b", "0.npy\x00", ".", "..",
        "manifest.json", "snap-" + "0" * 32, "<f4", "<f8", "|b1", "<U3", "O", "|V8", ">f4", "PCG64", "MT19937",
        "Adam", "SGD", "EmbeddingBag", "array", "object", "value", "generator", "sum", "mean", "max", "raise",
        "zero", "normal", "weight", "table", "state.exp_avg", "state.step", "step", "\ud7ff" * 3]


def _value(fdp, depth=0):
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return INTS[fdp.ConsumeIntInRange(0, len(INTS) - 1)]
    if kind == 3:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
    if kind == 4:
        return STRS[fdp.ConsumeIntInRange(0, len(STRS) - 1)]
    if kind == 5:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    if kind in (6, 7):
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {str(_value(fdp, depth + 1)): _value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, prefix + (i,))


def _mutate_manifest(fdp, manifest):
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        paths = list(_paths(manifest))
        path = paths[fdp.ConsumeIntInRange(0, len(paths) - 1)]
        if not path:
            continue
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        action = fdp.ConsumeIntInRange(0, 3)
        if action == 0 or isinstance(parent, list):
            parent[path[-1]] = _value(fdp)
        elif action == 1:
            del parent[path[-1]]
        elif action == 2:
            parent[str(_value(fdp))] = _value(fdp)
        else:  # rename a key (file names, entry names)
            parent[str(_value(fdp))] = parent.pop(path[-1])
    return manifest


def _reset():
    """The pristine checkpoint again, and nothing else, in WORK."""
    for name in os.listdir(WORK):
        full = os.path.join(WORK, name)
        if name not in (".embtab-lock", os.path.basename(SNAP)):
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
    for name in os.listdir(SNAP):
        full = os.path.join(SNAP, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)
    for name, data in FILES.items():
        with open(os.path.join(SNAP, name), "wb") as f:
            f.write(data)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _exercise(loaded):
    """A checkpoint that loads must train: its layers and optimizers take a step."""
    for value in loaded.values():
        if isinstance(value, embtab.optim.Adam) and value.layer is not None and value.layer.num_embeddings > 3:
            layer = value.layer
            out = layer.forward(np.array([[0, 1, 3]]))
            layer.backward(np.ones_like(out))
            value.step()


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    _reset()
    # The choices first, so that an input that runs out of bytes keeps the files intact.
    what = fdp.ConsumeIntInRange(0, 11)
    raw = fdp.ConsumeIntInRange(0, 3) == 3
    mmap, verify = fdp.ConsumeBool(), fdp.ConsumeBool()
    names = sorted(FILES)
    victim = os.path.join(SNAP, names[fdp.ConsumeIntInRange(0, len(names) - 1)])
    manifest = _mutate_manifest(fdp, json.loads(FILES["manifest.json"]))
    text = json.dumps(manifest).encode("utf-8", "surrogatepass")
    if raw:  # a cut, or bytes overwritten
        cut = fdp.ConsumeIntInRange(0, len(text))
        text = text[:cut] + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8)) + text[cut + fdp.ConsumeIntInRange(0, 8):]
    _write(os.path.join(SNAP, "manifest.json"), text)

    current = os.path.join(WORK, "CURRENT")
    if what == 4:
        _write(current, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80)))
    elif what == 5:
        _write(current, STRS[fdp.ConsumeIntInRange(0, len(STRS) - 1)].encode("utf-8", "surrogatepass"))
    else:
        _write(current, CURRENT)
    if what == 6:
        with open(victim, "r+b") as f:
            f.truncate(fdp.ConsumeIntInRange(0, os.path.getsize(victim) + 200))
    elif what == 7:
        with open(victim, "r+b") as f:
            f.seek(fdp.ConsumeIntInRange(0, os.path.getsize(victim)))
            f.write(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16)))
    elif what == 8:
        os.unlink(victim)
        os.symlink(OUTSIDE, victim)
    elif what == 9:
        os.unlink(victim)
        os.mkfifo(victim)
    elif what == 10:
        os.unlink(victim)
        os.mkdir(victim)
    elif what == 11:
        os.unlink(victim)
    try:
        loaded = embtab.load(WORK, mmap=mmap, verify=verify)
    except embtab.CheckpointError:
        return
    _exercise(loaded)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
