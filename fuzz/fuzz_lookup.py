"""atheris target: gather / gather_bags with hostile tables, ids, offsets, weights, outputs."""

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import embtab

    from _common import ALLOWED, float_table, int_array, offsets_for, pick


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    table = float_table(fdp)
    ids = int_array(fdp, high=int(table.shape[0]) + 3)
    embtab.set_num_threads(fdp.ConsumeIntInRange(1, 4))
    try:
        if fdp.ConsumeBool():
            bounds = pick(fdp, ["raise", "zero"])
            result = embtab.gather(table, ids, bounds=bounds)
            if bounds == "raise":
                np.testing.assert_array_equal(result, table[ids])
        else:
            mode = pick(fdp, ["sum", "mean", "max", "median"])
            if fdp.ConsumeBool():
                ids = ids.reshape(-1, 2) if ids.size % 2 == 0 else ids
                offsets = None
            else:
                offsets = offsets_for(fdp, ids.size)
            weights = np.ones(ids.shape, table.dtype) if fdp.ConsumeBool() else None
            out = embtab.gather_bags(table, ids, offsets, mode=mode, weights=weights)
            if offsets is None:
                ref = [table[row] for row in ids]
            else:
                ref = [table[ids[s:e]] for s, e in zip(offsets[:-1], offsets[1:])]
            for got, rows in zip(out, ref):
                # float16 tables accumulate in float32: the reference works on the exact upcast.
                rows = rows.astype(np.float64)
                expected = getattr(rows, mode)(axis=0) if len(rows) else np.zeros(table.shape[1])
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    except ALLOWED:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
