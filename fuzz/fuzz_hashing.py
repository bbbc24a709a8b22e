"""atheris target: MurmurHash3, buckets, FeatureHasher mapping and fastText hashes on hostile
keys (arbitrary unicode incl. lone surrogates, bytes, bytearray, memoryview (strided or released
too), mixed lists, documents, integer arrays)."""

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import embtab

    from _common import ALLOWED, int_array, pick


def buffer_key(fdp):
    raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))
    view = memoryview(raw)[:: fdp.ConsumeIntInRange(1, 2)]
    if fdp.ConsumeBool():
        view.release()
    return pick(fdp, [bytearray(raw), view, memoryview(bytearray(raw))])


def keys_from(fdp):
    kind = fdp.ConsumeIntInRange(0, 6)
    if kind == 5:
        return [buffer_key(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    if kind == 6:
        return [[fdp.ConsumeUnicode(5), buffer_key(fdp)] for _ in range(fdp.ConsumeIntInRange(1, 4))]
    if kind == 0:
        return [fdp.ConsumeUnicode(12) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    if kind == 1:
        return [fdp.ConsumeBytes(12) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    if kind == 2:
        return [pick(fdp, [fdp.ConsumeUnicode(5), fdp.ConsumeBytes(5), 3, None, 1.5]) for _ in range(4)]
    if kind == 3:
        return np.array([fdp.ConsumeUnicodeNoSurrogates(6) for _ in range(fdp.ConsumeIntInRange(0, 5))])
    return int_array(fdp, low=-(2**31), high=2**31)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    keys = keys_from(fdp)
    seed = fdp.ConsumeIntInRange(-2, 2**32 + 2)
    try:
        which = fdp.ConsumeIntInRange(0, 4)
        if which == 0:
            h = embtab.murmur3_32(keys, seed)
            # (numpy would read a list of bytes-like keys as a 2-D array)
            assert np.shape(h) == ((len(keys),) if isinstance(keys, list) else np.shape(keys))
        elif which == 1:
            embtab.murmur3_128(keys, seed, x64arch=fdp.ConsumeBool())
        elif which == 2:
            b = embtab.hash_buckets(keys, fdp.ConsumeIntInRange(-1, 1000), seed=seed)
            assert np.all(np.asarray(b) >= 0)
        elif which == 3:
            embtab.feature_hash(keys, n_features=fdp.ConsumeIntInRange(-1, 2**21), seed=seed)
        else:
            embtab.fasttext_hash(keys)
    except ALLOWED:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
