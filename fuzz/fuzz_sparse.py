"""atheris target: scatter_add, coalesce, gather_bags_grad and optimizer steps."""

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import embtab

    from _common import ALLOWED, float_table, int_array, offsets_for, pick


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    table = float_table(fdp)
    ids = int_array(fdp, high=int(table.shape[0]) + 2)
    dim = table.shape[1] if table.ndim == 2 else 1
    values = np.ones(ids.shape + (dim,), pick(fdp, [np.float32, np.float64]))
    embtab.set_num_threads(fdp.ConsumeIntInRange(1, 4))
    action = fdp.ConsumeIntInRange(0, 3)
    try:
        if action == 0:
            before = np.array(table)
            expected = np.array(table)
            embtab.scatter_add(table, ids, values)
            np.add.at(expected, ids, values)
            np.testing.assert_array_equal(table, expected)
            del before
        elif action == 1:
            rows, _sums = embtab.coalesce(ids, values)
            np.testing.assert_array_equal(rows, np.unique(ids))
        elif action == 2:
            offsets = offsets_for(fdp, ids.size)
            n_bags = 1 if offsets is None or np.ndim(offsets) != 1 else max(len(offsets) - 1, 0)
            grad_out = np.ones((n_bags, dim), values.dtype)
            embtab.gather_bags_grad(grad_out, ids, offsets, mode=pick(fdp, ["sum", "mean", "max"]), table=table)
        else:
            cls = pick(fdp, [embtab.optim.SGD, embtab.optim.Adagrad, embtab.optim.RowWiseAdagrad, embtab.optim.Adam])
            opt = cls(table, lr=fdp.ConsumeFloat())
            opt.step(ids, values)
    except ALLOWED:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
