"""gather and gather_bags against numpy, under every SIMD path and several thread counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embtab

FLOATS = [np.float32, np.float64]
INDEX = [np.int32, np.int64]
DIMS = [1, 3, 16, 32, 64, 100, 128, 256, 300]


def numpy_bags(table, ids, offsets, mode, weights=None):
    """Per-bag numpy reference: table[ids[s:e]] (times weights) pooled; empty bags give zeros."""
    out = np.zeros((len(offsets) - 1, table.shape[1]), table.dtype)
    for b in range(len(offsets) - 1):
        s, e = offsets[b], offsets[b + 1]
        if s == e:
            continue
        rows = table[ids[s:e]]
        if weights is not None:
            rows = rows * weights[s:e, None]
        out[b] = {"sum": rows.sum, "mean": rows.mean, "max": rows.max}[mode](axis=0)
    return out


def random_csr(rng, num_bags, max_len, num_rows, index_dtype):
    lengths = rng.integers(0, max_len + 1, num_bags)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(index_dtype)
    ids = rng.integers(0, num_rows, int(offsets[-1])).astype(index_dtype)
    return ids, offsets


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("index_dtype", INDEX)
@pytest.mark.parametrize("dim", DIMS)
def test_gather_matches_numpy(each_path_and_threads, dtype, index_dtype, dim):
    rng = np.random.default_rng(dim)
    table = rng.standard_normal((97, dim)).astype(dtype)
    ids = rng.integers(0, 97, (13, 11)).astype(index_dtype)
    result = embtab.gather(table, ids)
    assert result.dtype == dtype and result.shape == (13, 11, dim)
    np.testing.assert_array_equal(result, table[ids])


@pytest.mark.parametrize("shape", [(), (0,), (5,), (0, 3), (2, 3, 4)])
def test_gather_any_ids_shape(shape):
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    ids = np.full(shape, 7, dtype=np.int64)
    np.testing.assert_array_equal(embtab.gather(table, ids), table[ids])


def test_gather_large_parallel(each_path_and_threads):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((5000, 64)).astype(np.float32)
    ids = rng.integers(0, 5000, 40_000)
    np.testing.assert_array_equal(embtab.gather(table, ids), table[ids])


def test_gather_out_is_written_in_place():
    table = np.arange(12, dtype=np.float64).reshape(4, 3)
    out = np.full((2, 3), -1.0)
    result = embtab.gather(table, np.array([3, 1]), out=out)
    assert result is out
    np.testing.assert_array_equal(out, table[[3, 1]])


def test_gather_accepts_read_only_and_non_contiguous_inputs():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((20, 16)).astype(np.float32)
    table = base[:, ::2]  # not contiguous: copied, never misread
    ids = np.arange(40, dtype=np.int64)[::-4] % 20
    table_ro = np.array(base)
    table_ro.flags.writeable = False
    ids.flags.writeable = False
    np.testing.assert_array_equal(embtab.gather(table, ids), table[ids])
    np.testing.assert_array_equal(embtab.gather(table_ro, ids), table_ro[ids])
    fortran = np.asfortranarray(base)
    np.testing.assert_array_equal(embtab.gather(fortran, ids), base[ids])


def test_gather_accepts_lists_and_narrow_ints():
    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.testing.assert_array_equal(embtab.gather(table, [5, 0]), table[[5, 0]])
    np.testing.assert_array_equal(embtab.gather(table, np.array([5, 0], np.uint8)), table[[5, 0]])
    assert embtab.gather(table, []).shape == (0, 2)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("index_dtype", INDEX)
@pytest.mark.parametrize("dim", [1, 7, 32, 128, 130])
def test_bags_csr_match_numpy(each_path_and_threads, mode, dtype, index_dtype, dim):
    rng = np.random.default_rng(dim)
    table = rng.standard_normal((50, dim)).astype(dtype)
    ids, offsets = random_csr(rng, 40, 9, 50, index_dtype)
    result = embtab.gather_bags(table, ids, offsets, mode=mode)
    expected = numpy_bags(table, ids, offsets, mode)
    assert result.dtype == dtype and result.shape == (40, dim)
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(result, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_weighted_bags_match_numpy(each_path_and_threads, mode, dtype):
    rng = np.random.default_rng(3)
    table = rng.standard_normal((30, 24)).astype(dtype)
    ids, offsets = random_csr(rng, 25, 6, 30, np.int64)
    weights = rng.standard_normal(ids.size).astype(dtype)
    result = embtab.gather_bags(table, ids, offsets, mode=mode, weights=weights)
    expected = numpy_bags(table, ids, offsets, mode, weights)
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_fixed_length_bags(each_path_and_threads, mode):
    rng = np.random.default_rng(4)
    table = rng.standard_normal((100, 64)).astype(np.float32)
    ids = rng.integers(0, 100, (300, 20))
    expected = getattr(table[ids], mode)(axis=1)
    np.testing.assert_allclose(embtab.gather_bags(table, ids, mode=mode), expected, rtol=1e-6, atol=1e-6)
    weights = rng.random(ids.shape).astype(np.float32)
    if mode != "max":
        expected = getattr(table[ids] * weights[..., None], mode)(axis=1)
        np.testing.assert_allclose(embtab.gather_bags(table, ids, mode=mode, weights=weights), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_empty_bags_give_zero_rows(mode):
    table = np.ones((4, 3), np.float32)
    ids = np.array([1, 2], np.int64)
    offsets = np.array([0, 0, 2, 2, 2], np.int64)
    result = embtab.gather_bags(table, ids, offsets, mode=mode)
    expected = np.zeros((4, 3), np.float32)
    expected[1] = {"sum": 2.0, "mean": 1.0, "max": 1.0}[mode]
    np.testing.assert_array_equal(result, expected)
    # No ids at all, and zero bags.
    assert not embtab.gather_bags(table, np.zeros(0, np.int64), np.zeros(3, np.int64), mode=mode).any()
    assert embtab.gather_bags(table, np.zeros(0, np.int64), np.zeros(1, np.int64), mode=mode).shape == (0, 3)
    assert embtab.gather_bags(table, np.zeros((0, 5), np.int64), mode=mode).shape == (0, 3)
    assert not embtab.gather_bags(table, np.zeros((2, 0), np.int64), mode=mode).any()


def test_very_long_bag(each_path_and_threads):
    rng = np.random.default_rng(5)
    table = rng.standard_normal((1000, 16))
    ids = rng.integers(0, 1000, 200_000)
    offsets = np.array([0, 3, 199_990, 200_000])
    expected = numpy_bags(table, ids, offsets, "sum")
    np.testing.assert_allclose(embtab.gather_bags(table, ids, offsets), expected, rtol=1e-10)


def test_results_identical_across_paths_and_threads():
    rng = np.random.default_rng(6)
    table = rng.standard_normal((2000, 100)).astype(np.float32)
    ids, offsets = random_csr(rng, 3000, 30, 2000, np.int64)
    weights = rng.standard_normal(ids.size).astype(np.float32)
    results = []
    for path in embtab.available_simd_paths():
        embtab.set_simd_path(path)
        for threads in (1, 2, 5):
            embtab.set_num_threads(threads)
            results.append(embtab.gather_bags(table, ids, offsets, mode="mean", weights=weights))
    embtab.set_num_threads(0)
    embtab.set_simd_path(embtab.available_simd_paths()[-1])
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_max_argmax_and_ties():
    table = np.array([[1.0, 5.0], [3.0, 5.0], [3.0, -1.0]], np.float32)
    ids = np.array([0, 1, 2, 2, 0], np.int64)
    offsets = np.array([0, 3, 3, 5])
    out, argmax = embtab.gather_bags(table, ids, offsets, mode="max", return_argmax=True)
    np.testing.assert_array_equal(out, [[3.0, 5.0], [0.0, 0.0], [3.0, 5.0]])
    # Ties: the first row in the bag wins (numpy argmax semantics).
    np.testing.assert_array_equal(argmax, [[1, 0], [-1, -1], [2, 0]])


def test_max_propagates_nan_like_numpy():
    table = np.array([[1.0, np.nan], [2.0, 0.0]])
    result = embtab.gather_bags(table, np.array([[0, 1], [1, 0]]), mode="max")
    np.testing.assert_array_equal(result, table[[[0, 1], [1, 0]]].max(axis=1))


def test_bags_out_and_ids_32bit_offsets():
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    out = np.empty((2, 2), np.float32)
    res = embtab.gather_bags(table, np.array([0, 1, 4], np.int32), np.array([0, 2, 3], np.int32), out=out)
    assert res is out
    np.testing.assert_array_equal(out, [[2.0, 4.0], [8.0, 9.0]])


@settings(max_examples=60, deadline=None)
@given(
    num_rows=st.integers(1, 40),
    dim=st.integers(0, 40),
    lengths=st.lists(st.integers(0, 12), max_size=30),
    mode=st.sampled_from(["sum", "mean", "max"]),
    weighted=st.booleans(),
    dtype=st.sampled_from(FLOATS),
    threads=st.sampled_from([1, 2, 4]),
    path=st.sampled_from(embtab.available_simd_paths()),
    seed=st.integers(0, 2**32 - 1),
)
def test_bags_property(num_rows, dim, lengths, mode, weighted, dtype, threads, path, seed):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((num_rows, dim)).astype(dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    ids = rng.integers(0, num_rows, int(offsets[-1]))
    weights = rng.standard_normal(ids.size).astype(dtype) if weighted and mode != "max" else None
    embtab.set_simd_path(path)
    embtab.set_num_threads(threads)
    try:
        result = embtab.gather_bags(table, ids, offsets, mode=mode, weights=weights)
        gathered = embtab.gather(table, ids)
    finally:
        embtab.set_num_threads(0)
        embtab.set_simd_path(embtab.available_simd_paths()[-1])
    np.testing.assert_allclose(result, numpy_bags(table, ids, offsets, mode, weights), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(gathered, table[ids])


def test_matches_torch_embedding_bag():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    table = rng.standard_normal((200, 32)).astype(np.float32)
    ids, offsets = random_csr(rng, 50, 10, 200, np.int64)
    weights = rng.random(ids.size).astype(np.float32)
    F = torch.nn.functional
    for mode in ("sum", "mean", "max"):
        expected = F.embedding_bag(torch.from_numpy(ids), torch.from_numpy(table), torch.from_numpy(offsets[:-1]), mode=mode)
        np.testing.assert_allclose(embtab.gather_bags(table, ids, offsets, mode=mode), expected.numpy(), rtol=1e-5, atol=1e-6)
    expected = F.embedding_bag(torch.from_numpy(ids), torch.from_numpy(table), torch.from_numpy(offsets[:-1]),
                               mode="sum", per_sample_weights=torch.from_numpy(weights))
    np.testing.assert_allclose(embtab.gather_bags(table, ids, offsets, weights=weights), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_bounds_zero_reads_invalid_ids_as_zero_rows(each_path_and_threads):
    rng = np.random.default_rng(8)
    table = rng.standard_normal((50, 32)).astype(np.float32)
    ids = rng.integers(-10, 60, 3000)
    valid = (ids >= 0) & (ids < 50)
    padded = np.vstack([table, np.zeros((1, 32), np.float32)])
    mapped = np.where(valid, ids, 50)  # index of the zero row
    result, num_invalid = embtab.gather(table, ids, bounds="zero")
    assert num_invalid == int((~valid).sum()) > 0
    np.testing.assert_array_equal(result, padded[mapped])
    offsets = np.arange(0, 3001, 30)
    for mode in ("sum", "mean", "max"):
        pooled, count = embtab.gather_bags(table, ids, offsets, mode=mode, bounds="zero")
        assert count == num_invalid
        np.testing.assert_allclose(pooled, numpy_bags(padded, mapped, offsets, mode), rtol=1e-5, atol=1e-5)
    pooled, argmax, count = embtab.gather_bags(table, ids, offsets, mode="max", return_argmax=True, bounds="zero")
    assert count == num_invalid
    # argmax names only valid rows (or -1 where a zero row won)
    assert np.all((argmax == -1) | ((argmax >= 0) & (argmax < 50)))
    won = argmax >= 0
    np.testing.assert_array_equal(pooled[won], table[argmax[won], np.nonzero(won)[1]])


def test_bounds_zero_with_valid_ids_counts_nothing():
    table = np.ones((4, 2))
    result, count = embtab.gather(table, np.array([0, 3]), bounds="zero")
    assert count == 0
    np.testing.assert_array_equal(result, table[[0, 3]])
    with pytest.raises(ValueError, match="bounds"):
        embtab.gather(table, np.array([0]), bounds="clip")


def test_large_outputs_reuse_pooled_memory_correctly():
    # Outputs of 1 MB and more come from a pool of reused blocks (not zeroed): every byte must
    # still be written, also for empty bags, invalid ids read as zero rows, and argmax.
    rng = np.random.default_rng(9)
    table = rng.standard_normal((3000, 256)).astype(np.float32)
    for _ in range(3):
        junk = embtab.gather(table, rng.integers(0, 3000, 4000))  # fills a pooled block
        junk[...] = np.nan
        del junk
        ids = rng.integers(-5, 3005, 4000)
        valid = (ids >= 0) & (ids < 3000)
        got, invalid = embtab.gather(table, ids, bounds="zero")
        assert invalid == int((~valid).sum())
        np.testing.assert_array_equal(got[valid], table[ids[valid]])
        assert not got[~valid].any()
        junk = embtab.gather_bags(table, rng.integers(0, 3000, (1100, 3)))
        junk[...] = np.nan
        del junk
        offsets = np.sort(rng.integers(0, 2000, 1101))
        offsets[0], offsets[-1] = 0, 2000
        bag_ids = rng.integers(0, 3000, 2000)
        pooled, _argmax = embtab.gather_bags(table, bag_ids, offsets, mode="max", return_argmax=True)
        np.testing.assert_allclose(pooled, numpy_bags(table, bag_ids, offsets, "max"))
        assert not np.isnan(pooled).any()
