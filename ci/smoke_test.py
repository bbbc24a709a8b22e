"""Smoke test of an installed embtab wheel: imports it outside the source tree and checks each
compiled SIMD path this CPU supports against numpy (lookups, bags, a sparse update, a hash)."""

from __future__ import annotations

import sys

import numpy as np

import embtab


def main() -> int:
    assert "site-packages" in embtab.__file__ or "dist-packages" in embtab.__file__, embtab.__file__
    rng = np.random.default_rng(0)
    table = rng.standard_normal((1000, 33)).astype(np.float32)
    ids = rng.integers(0, 1000, (64, 5))
    for path in embtab.available_simd_paths():
        embtab.set_simd_path(path)
        np.testing.assert_array_equal(embtab.gather(table, ids), table[ids])
        np.testing.assert_allclose(embtab.gather_bags(table, ids, mode="sum"), table[ids].sum(1), rtol=1e-5, atol=1e-5)
        target = np.zeros_like(table)
        values = rng.standard_normal((64, 5, 33)).astype(np.float32)
        embtab.scatter_add(target, ids, values)
        expected = np.zeros_like(table)
        np.add.at(expected, ids, values)
        np.testing.assert_array_equal(target, expected)
    # MurmurHash3 x86_32 known answers (Austin Appleby's SMHasher; also mmh3's tests).
    assert embtab.murmur3_32([b""], seed=0).tolist() == [0]
    assert embtab.murmur3_32([b""], seed=1).tolist() == [0x514E28B7]
    print(f"embtab {embtab.__version__} OK: SIMD paths {embtab.available_simd_paths()} from {embtab.__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
