"""atheris target: fastText subword n-grams on arbitrary unicode words and settings."""

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import embtab

    from _common import ALLOWED


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    words = [fdp.ConsumeUnicode(10) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    minn, maxn = fdp.ConsumeIntInRange(-1, 8), fdp.ConsumeIntInRange(-1, 8)
    bucket = fdp.ConsumeIntInRange(-1, 2_000_000)
    try:
        ids, offsets = embtab.subword_ngrams(words, minn=minn, maxn=maxn, bucket=bucket)
        assert offsets[0] == 0 and offsets[-1] == ids.size and np.all(np.diff(offsets) >= 0)
        assert np.all((ids >= 0) & (ids < bucket))
    except ALLOWED:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
