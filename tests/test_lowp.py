"""Reduced-precision tables (float16, bfloat16, row-wise 8-bit): lookups against numpy on the
upcast / dequantized table under every SIMD path and several thread counts, the bfloat16 rounding
and the 8-bit quantization against independent numpy implementations (and torch when installed),
and every bad input."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embtab

FORMATS = ["float16", "bfloat16", "bfloat16-raw", "int8"]
DIMS = [1, 7, 16, 32, 37, 64, 128, 256, 260]
INDEX = [np.int32, np.int64]


# ---- independent references ----


def bf16_reference(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even, NaN kept NaN (quiet, sign and top payload)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = np.where(nan, (bits >> 16) | 0x40, rounded)
    return rounded.astype(np.uint16)


def quantize_reference(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The documented 8-bit row-wise rule, in numpy: (codes, scale, bias)."""
    x = np.asarray(x, np.float32)
    if x.shape[1] == 0:
        zeros = np.zeros(x.shape[0], np.float32)
        return np.zeros(x.shape, np.uint8), zeros, zeros
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    scale = ((hi.astype(np.float64) - lo) / 255.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1).astype(np.float64)
    t = (x.astype(np.float64) - lo[:, None].astype(np.float64)) / safe[:, None]
    t = np.where(scale[:, None] > 0, t, 0.0)
    codes = np.rint(np.clip(t, 0, 255)).astype(np.uint8)
    return codes, scale, lo


def exact_f64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b in float64, checked to be exact (TwoSum error 0), so that one rounding to float32
    afterwards is a correctly rounded float32 fma."""
    t = a + b
    bb = t - a
    err = (a - (t - bb)) + (b - bb)
    assert not np.any(err), "test data too wide for the exact float64 reference"
    return t


def dequant_reference(codes: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """fma(q, scale, bias) rounded once, from float64 (q * scale is exact there)."""
    product = codes.astype(np.float64) * scale.astype(np.float64)[:, None]
    return exact_f64(product, np.broadcast_to(bias.astype(np.float64)[:, None], product.shape)).astype(np.float32)


class I8Reference(np.ndarray):
    """Dequantized 8-bit rows that also carry their codes, scales and biases, so that a bag
    reference can sum them with the 8-bit rule: acc = fma(q, scale, acc + bias) from acc = +0,
    a weight folded into scale and bias (FBGEMM's rule)."""

    parts: Any = None

    @classmethod
    def of(cls, codes: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> I8Reference:
        ref = dequant_reference(codes, scale, bias).view(cls)
        ref.parts = (codes, np.asarray(scale, np.float32), np.asarray(bias, np.float32))
        return ref

    def __getitem__(self, index: Any) -> Any:
        if self.parts is not None and isinstance(index, (np.ndarray, list)) and np.ndim(index) == 1:
            codes, scale, bias = self.parts
            return I8Reference.of(codes[index], scale[index], bias[index])
        return np.asarray(self)[index]

    def padded(self) -> I8Reference:
        """With one more row: a stored row of zero bytes (codes, scale and bias 0)."""
        codes, scale, bias = self.parts
        zero = np.zeros(1, np.float32)
        return I8Reference.of(np.vstack([codes, np.zeros((1, codes.shape[1]), codes.dtype)]),
                              np.concatenate([scale, zero]), np.concatenate([bias, zero]))


def fused_sum_reference(rows: I8Reference, mode: str, weights: Any = None) -> np.ndarray:
    codes, scale, bias = rows.parts
    acc = np.zeros(codes.shape[1], np.float32)
    for i in range(codes.shape[0]):
        s, b = scale[i], bias[i]
        if weights is not None:
            s, b = np.float32(weights[i]) * s, np.float32(weights[i]) * b
        shifted = (acc + b).astype(np.float32)
        acc = exact_f64(codes[i].astype(np.float64) * np.float64(s), shifted.astype(np.float64)).astype(np.float32)
    return acc / np.float32(codes.shape[0]) if mode == "mean" and codes.shape[0] else acc


def pooled_reference(rows: np.ndarray, mode: str, weights: Any = None) -> np.ndarray:
    """One bag, rows (n, dim) float32, accumulated in order in float32 like the kernels (8-bit
    rows with their own rule)."""
    if isinstance(rows, I8Reference) and rows.parts is not None and mode != "max":
        return fused_sum_reference(rows, mode, weights)
    if rows.shape[0] == 0:
        return np.zeros(rows.shape[1], np.float32)
    if mode == "max":
        return rows.max(axis=0)
    acc = np.zeros(rows.shape[1], np.float32)
    for i, row in enumerate(rows):
        term = row if weights is None else np.float32(weights[i]) * row
        acc = term.copy() if i == 0 else acc + term
    return acc / np.float32(rows.shape[0]) if mode == "mean" else acc


def bags_reference(ref: np.ndarray, ids: np.ndarray, offsets: np.ndarray, mode: str, weights: Any = None) -> np.ndarray:
    out = np.zeros((len(offsets) - 1, ref.shape[1]), np.float32)
    for b in range(len(offsets) - 1):
        s, e = int(offsets[b]), int(offsets[b + 1])
        out[b] = pooled_reference(ref[ids[s:e]], mode, None if weights is None else weights[s:e])
    return out


# ---- tables ----


def make_table(fmt: str, base: np.ndarray) -> Tuple[Any, dict, np.ndarray]:
    """(table, extra kwargs, float32 reference table) for a format."""
    if fmt == "float16":
        table = base.astype(np.float16)
        return table, {}, table.astype(np.float32)
    if fmt == "bfloat16":
        table = embtab.to_bfloat16(base)
        return table, {}, table.to_float32()
    if fmt == "bfloat16-raw":
        bits = bf16_reference(base)
        return bits, {"dtype": "bfloat16"}, (bits.astype(np.uint32) << 16).view(np.float32)
    table = embtab.quantize_rows(base)
    return table, {}, I8Reference.of(table.data, table.scale, table.bias)


def random_csr(rng: np.random.Generator, num_bags: int, max_len: int, num_rows: int, index_dtype: Any):
    lengths = rng.integers(0, max_len + 1, num_bags)
    lengths[::7] = 0  # some empty bags
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(index_dtype)
    ids = rng.integers(0, num_rows, int(offsets[-1])).astype(index_dtype)
    return ids, offsets


# ---- lookups ----


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dim", DIMS)
def test_gather_equals_upcast_table(each_path_and_threads, fmt, dim):
    rng = np.random.default_rng(dim)
    table, kw, ref = make_table(fmt, rng.standard_normal((97, dim)).astype(np.float32))
    for index_dtype in INDEX:
        ids = rng.integers(0, 97, (13, 11)).astype(index_dtype)
        result = embtab.gather(table, ids, **kw)
        assert result.dtype == np.float32 and result.shape == (13, 11, dim)
        np.testing.assert_array_equal(result, ref[ids])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dim", DIMS)
def test_bags_every_mode_equal_reference(each_path_and_threads, fmt, dim):
    rng = np.random.default_rng(100 + dim)
    table, kw, ref = make_table(fmt, rng.standard_normal((61, dim)).astype(np.float32))
    ids, offsets = random_csr(rng, 23, 9, 61, np.int64)
    weights = rng.random(ids.shape, dtype=np.float32)
    for mode in ("sum", "mean", "max"):
        expected = bags_reference(ref, ids, offsets, mode)
        result = embtab.gather_bags(table, ids, offsets, mode=mode, **kw)
        assert result.dtype == np.float32 and result.shape == (23, dim)
        np.testing.assert_array_equal(result, expected)
        # ... and numpy's own pooling on the upcast table, to rounding.
        for b in range(23):
            rows = ref[ids[offsets[b] : offsets[b + 1]]]
            if len(rows):
                want = {"sum": rows.sum, "mean": rows.mean, "max": rows.max}[mode](axis=0)
                np.testing.assert_allclose(result[b], want, rtol=1e-5, atol=1e-5)
    for mode in ("sum", "mean"):
        result = embtab.gather_bags(table, ids, offsets, mode=mode, weights=weights, **kw)
        np.testing.assert_array_equal(result, bags_reference(ref, ids, offsets, mode, weights))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dim", [7, 32, 128, 256])
def test_bounds_zero_reads_invalid_ids_as_zero_rows(each_path_and_threads, fmt, dim):
    rng = np.random.default_rng(300 + dim)
    table, kw, ref = make_table(fmt, rng.standard_normal((40, dim)).astype(np.float32))
    # row 40: the zero row
    padded = ref.padded() if isinstance(ref, I8Reference) else np.vstack([ref, np.zeros((1, dim), np.float32)])
    for index_dtype in INDEX:
        ids = rng.integers(-6, 46, 600).astype(index_dtype)
        valid = (ids >= 0) & (ids < 40)
        mapped = np.where(valid, ids, 40)
        result, num_invalid = embtab.gather(table, ids, bounds="zero", **kw)
        assert num_invalid == int((~valid).sum()) > 0
        np.testing.assert_array_equal(result, padded[mapped])
        offsets = np.concatenate([[0, 0], np.sort(rng.integers(0, 600, 30)), [600]]).astype(index_dtype)
        weights = rng.random(ids.shape, dtype=np.float32)
        for mode in ("sum", "mean", "max"):
            pooled, count = embtab.gather_bags(table, ids, offsets, mode=mode, bounds="zero", **kw)
            assert count == num_invalid
            np.testing.assert_array_equal(pooled, bags_reference(padded, mapped, offsets, mode))
        for mode in ("sum", "mean"):
            pooled, count = embtab.gather_bags(table, ids, offsets, mode=mode, weights=weights, bounds="zero", **kw)
            assert count == num_invalid
            np.testing.assert_array_equal(pooled, bags_reference(padded, mapped, offsets, mode, weights))
        pooled, argmax, count = embtab.gather_bags(table, ids, offsets, mode="max", return_argmax=True,
                                                   bounds="zero", **kw)
        assert count == num_invalid
        np.testing.assert_array_equal(pooled, bags_reference(padded, mapped, offsets, "max"))
        # argmax names valid rows only, or -1 where a zero row (or an empty bag) won.
        assert np.all((argmax == -1) | ((argmax >= 0) & (argmax < 40)))
        won = argmax >= 0
        np.testing.assert_array_equal(pooled[won], ref[argmax[won], np.nonzero(won)[1]])
    # Valid ids count nothing; "raise" still raises; anything else is a ValueError.
    assert embtab.gather(table, [0, 39], bounds="zero", **kw)[1] == 0
    with pytest.raises(IndexError, match="40"):
        embtab.gather_bags(table, [[0, 40]], **kw)
    with pytest.raises(ValueError, match="bounds"):
        embtab.gather(table, [0], bounds="clip", **kw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fixed_length_bags_int32(each_path_and_threads, fmt):
    rng = np.random.default_rng(5)
    table, kw, ref = make_table(fmt, rng.standard_normal((50, 24)).astype(np.float32))
    ids = rng.integers(0, 50, (17, 6)).astype(np.int32)
    offsets = np.arange(0, ids.size + 1, 6)
    for mode in ("sum", "mean", "max"):
        np.testing.assert_array_equal(
            embtab.gather_bags(table, ids, mode=mode, **kw), bags_reference(ref, ids.ravel(), offsets, mode)
        )


@pytest.mark.parametrize("fmt", FORMATS)
def test_large_parallel_is_identical_for_every_thread_count(each_path_and_threads, fmt):
    # Big enough that every thread count really splits the work into several chunks.
    rng = np.random.default_rng(9)
    table, kw, ref = make_table(fmt, rng.standard_normal((3000, 64)).astype(np.float32))
    ids = rng.integers(0, 3000, (2500, 12))
    np.testing.assert_array_equal(embtab.gather(table, ids.ravel(), **kw), ref[ids.ravel()])
    offsets = np.arange(0, ids.size + 1, 12)
    expected = bags_reference(ref, ids.ravel(), offsets, "sum")
    np.testing.assert_array_equal(embtab.gather_bags(table, ids, **kw), expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_max_argmax_and_empty_bags(each_path_and_threads, fmt):
    rng = np.random.default_rng(11)
    # Few distinct values, so that ties are common (the first winner must be reported).
    base = rng.integers(-3, 4, (40, 19)).astype(np.float32)
    table, kw, ref = make_table(fmt, base)
    ids, offsets = random_csr(rng, 30, 8, 40, np.int64)
    result, argmax = embtab.gather_bags(table, ids, offsets, mode="max", return_argmax=True, **kw)
    assert argmax.dtype == np.int64 and argmax.shape == (30, 19)
    np.testing.assert_array_equal(result, bags_reference(ref, ids, offsets, "max"))
    for b in range(30):
        s, e = offsets[b], offsets[b + 1]
        if s == e:
            assert (argmax[b] == -1).all() and (result[b] == 0).all()
        else:
            np.testing.assert_array_equal(argmax[b], ids[s:e][ref[ids[s:e]].argmax(axis=0)])


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_special_values_pass_through(each_path_and_threads, fmt):
    base = np.array(
        [[np.nan, 1.0, -np.inf, 6.0e-8, -0.0, 2.0], [3.0, np.nan, np.inf, -1.0e-7, 0.0, -2.0]], np.float32
    )
    if fmt == "float16":
        base = np.concatenate([base, np.array([[6.0e-5, 1e-6, -5.9e-8, 65504, -65504, 3.0e-5]], np.float32)])
    table, kw, ref = make_table(fmt, base)
    ids = np.arange(len(base))
    np.testing.assert_array_equal(embtab.gather(table, ids, **kw), ref)
    result, argmax = embtab.gather_bags(table, ids, np.array([0, len(ids)]), mode="max", return_argmax=True, **kw)
    np.testing.assert_array_equal(result[0], ref.max(axis=0))  # NaN propagates like numpy's max
    np.testing.assert_array_equal(argmax[0], ref.argmax(axis=0))
    with np.errstate(invalid="ignore"):  # inf + -inf is NaN, here as in numpy
        expected = pooled_reference(ref, "sum")
    np.testing.assert_array_equal(embtab.gather_bags(table, ids[None], mode="sum", **kw)[0], expected)


def test_every_float16_bit_pattern_widens_exactly(simd_path):
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16).reshape(-1, 64)
    table = bits.view(np.float16)
    result = embtab.gather(table, np.arange(table.shape[0]))
    expected = table.astype(np.float32)
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(result.view(np.uint32)[finite], expected.view(np.uint32)[finite])
    assert np.isnan(result[~finite]).all()


def test_out_is_written_in_place(simd_path):
    rng = np.random.default_rng(3)
    for fmt in FORMATS:
        table, kw, ref = make_table(fmt, rng.standard_normal((10, 5)).astype(np.float32))
        out = np.full((3, 5), -1.0, np.float32)
        assert embtab.gather(table, np.array([4, 0, 9]), out=out, **kw) is out
        np.testing.assert_array_equal(out, ref[[4, 0, 9]])
        bag_out = np.full((2, 5), -1.0, np.float32)
        result, _ = embtab.gather_bags(
            table, np.array([[1, 2], [3, 3]]), mode="max", out=bag_out, return_argmax=True, **kw
        )
        assert result is bag_out
        np.testing.assert_array_equal(bag_out, np.maximum(ref[[1, 3]], ref[[2, 3]]))


def test_read_only_and_non_contiguous_inputs():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((20, 32)).astype(np.float16)
    view = base[:, ::2]
    ids = (np.arange(40, dtype=np.int64)[::-4] % 20)
    ids.flags.writeable = False
    np.testing.assert_array_equal(embtab.gather(view, ids), view.astype(np.float32)[ids])
    q = embtab.quantize_rows(rng.standard_normal((20, 8)))
    q.data.flags.writeable = False
    q.params.flags.writeable = False
    np.testing.assert_array_equal(embtab.gather(q, ids), q.dequantize()[ids])
    weights = np.ones(40, np.float32)[::4]
    np.testing.assert_array_equal(
        embtab.gather_bags(view, ids, np.array([0, 10]), weights=weights)[0],
        pooled_reference(view.astype(np.float32)[ids], "sum", weights),
    )


def test_weights_from_a_list_and_empty_inputs():
    table = np.arange(12, dtype=np.float16).reshape(4, 3)
    np.testing.assert_array_equal(
        embtab.gather_bags(table, [[0, 1]], weights=[[0.5, 2.0]])[0], 0.5 * table[0].astype(np.float32) + 2 * table[1]
    )
    assert embtab.gather(table, []).shape == (0, 3)
    assert embtab.gather_bags(table, [], [0]).shape == (0, 3)
    np.testing.assert_array_equal(embtab.gather_bags(table, [], [0, 0, 0]), np.zeros((2, 3), np.float32))
    q = embtab.quantize_rows(np.zeros((0, 4), np.float32))
    assert q.shape == (0, 4) and embtab.gather(q, []).shape == (0, 4)


@settings(max_examples=50, deadline=None)
@given(
    fmt=st.sampled_from(FORMATS),
    dim=st.integers(1, 40),
    num_rows=st.integers(1, 30),
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=12),
    mode=st.sampled_from(["sum", "mean", "max"]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_bags_property(fmt, dim, num_rows, lengths, mode, weighted, seed):
    rng = np.random.default_rng(seed)
    table, kw, ref = make_table(fmt, (rng.standard_normal((num_rows, dim)) * 10).astype(np.float32))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(0, num_rows, int(offsets[-1]))
    weights = rng.standard_normal(ids.shape).astype(np.float32) if weighted and mode != "max" else None
    result = embtab.gather_bags(table, ids, offsets, mode=mode, weights=weights, **kw)
    np.testing.assert_array_equal(result, bags_reference(ref, ids, offsets, mode, weights))


# ---- bfloat16 rounding ----


def test_to_bfloat16_matches_reference_on_random_bit_patterns(simd_path, num_threads):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, (300, 257), dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)  # every class: normals, subnormals, zeros, infinities, NaNs
    table = embtab.to_bfloat16(x)
    assert isinstance(table, embtab.BFloat16Table) and table.shape == x.shape
    assert table.data.dtype == np.uint16
    np.testing.assert_array_equal(table.data, bf16_reference(x))


def test_to_bfloat16_known_cases():
    cases = {
        0x3F800000: 0x3F80,  # 1.0
        0x3F808000: 0x3F80,  # tie, even below
        0x3F818000: 0x3F82,  # tie, even above
        0x3F808001: 0x3F81,  # just above the tie
        0x3F807FFF: 0x3F80,  # just below the tie
        0x7F7FFFFF: 0x7F80,  # largest float32 rounds to infinity
        0x7F7F7FFF: 0x7F7F,  # stays the largest bfloat16
        0x7F800000: 0x7F80,  # +inf
        0xFF800000: 0xFF80,  # -inf
        0x7F800001: 0x7FC0,  # signaling NaN stays NaN (truncation would give inf)
        0xFFC00000: 0xFFC0,  # negative quiet NaN
        0x7FFFFFFF: 0x7FFF,  # NaN with a full payload does not overflow
        0x00000001: 0x0000,  # smallest subnormal rounds to zero
        0x80008000: 0x8000,  # tie to even zero keeps the sign
        0x00018000: 0x0002,  # subnormal tie, even above
    }
    x = np.array(list(cases), np.uint32).view(np.float32).reshape(1, -1)
    np.testing.assert_array_equal(embtab.to_bfloat16(x).data[0], np.array(list(cases.values()), np.uint16))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True), min_size=1, max_size=64))
def test_to_bfloat16_property(values):
    x = np.array(values, np.float32).reshape(1, -1)
    bf = embtab.to_bfloat16(x)
    np.testing.assert_array_equal(bf.data, bf16_reference(x))
    back = bf.to_float32()
    finite = np.isfinite(x) & np.isfinite(back)
    # Round to nearest: within half a bfloat16 ulp (2**-8 relative) of the input.
    assert np.all(np.abs(back[finite] - x[finite]) <= np.abs(x[finite]) * 2.0**-8 + 2.0**-134)
    assert np.array_equal(np.isnan(back), np.isnan(x))


def test_to_bfloat16_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            (rng.standard_normal((50, 64)) * 10.0 ** rng.integers(-40, 37, (50, 1))).astype(np.float32),
            rng.integers(0, 2**32, (50, 64), dtype=np.uint64).astype(np.uint32).view(np.float32),
        ]
    )
    ours = embtab.to_bfloat16(x).data
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])
    assert (((theirs[nan] & 0x7F80) == 0x7F80) & ((theirs[nan] & 0x7F) != 0)).all()
    assert (((ours[nan] & 0x7F80) == 0x7F80) & ((ours[nan] & 0x7F) != 0)).all()


def test_to_bfloat16_converts_other_floats_and_checks_input():
    x64 = np.array([[1.0 + 2.0**-30, -3.5]])
    np.testing.assert_array_equal(embtab.to_bfloat16(x64).data, bf16_reference(x64.astype(np.float32)))
    np.testing.assert_array_equal(embtab.to_bfloat16([[0.5, 2.0]]).to_float32(), [[0.5, 2.0]])
    with pytest.raises(TypeError, match="float"):
        embtab.to_bfloat16(np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="2-D"):
        embtab.to_bfloat16(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="uint16"):
        embtab.BFloat16Table(np.ones((2, 2), np.int16))
    with pytest.raises(ValueError, match="2-D"):
        embtab.BFloat16Table(np.ones(2, np.uint16))


# ---- 8-bit quantization ----


@pytest.mark.parametrize("dim", [1, 2, 7, 64, 129])
def test_quantize_rows_matches_reference(simd_path, num_threads, dim):
    rng = np.random.default_rng(dim)
    x = (rng.standard_normal((300, dim)) * 10.0 ** rng.integers(-30, 30, (300, 1))).astype(np.float32)
    x[5] = 3.25  # a constant row
    q = embtab.quantize_rows(x)
    assert isinstance(q, embtab.QuantizedTable) and q.shape == (300, dim) and q.bits == 8
    assert q.packed.shape == (300, dim + 8) and q.packed.dtype == np.uint8
    codes, scale, bias = quantize_reference(x)
    np.testing.assert_array_equal(q.data, codes)
    np.testing.assert_array_equal(q.scale, scale)
    np.testing.assert_array_equal(q.bias, bias)
    deq = q.dequantize()
    np.testing.assert_array_equal(deq, dequant_reference(codes, scale, bias))  # fma(q, scale, bias)
    # Each value decodes to within half a step (plus float32 rounding) of itself.
    err = np.abs(deq.astype(np.float64) - x)
    bound = scale[:, None].astype(np.float64) * 0.5 + np.abs(x).astype(np.float64) * 2.0**-22
    assert (err <= bound).all()
    assert (q.data.min(axis=1)[scale > 0] == 0).all() and (q.data.max(axis=1)[scale > 0] == 255).all()
    assert q.scale[5] == 0 and (q.data[5] == 0).all() and (deq[5] == 3.25).all()


def test_quantize_rows_edge_cases():
    x = np.array([[0.0, 0.0], [-1.0, 1.0], [1.5e38, -1.5e38], [1e-45, 0.0]], np.float32)
    q = embtab.quantize_rows(x)
    codes, scale, _bias = quantize_reference(x)
    np.testing.assert_array_equal(q.data, codes)
    np.testing.assert_array_equal(q.scale, scale)
    deq = q.dequantize()
    assert np.isfinite(deq).all()
    np.testing.assert_array_equal(deq[0], x[0])
    # fma(255, fl(2 / 255), -1) is 1 + 2**-23: within half a step of 1, not 1 exactly.
    assert deq[1, 0] == -1.0 and abs(float(deq[1, 1]) - 1.0) <= float(scale[1]) / 2
    # float64 and float16 input are converted to float32 first; a list is fine too.
    np.testing.assert_array_equal(embtab.quantize_rows(x[:2].astype(np.float64)).packed, q.packed[:2])
    np.testing.assert_array_equal(embtab.quantize_rows(x[:2].tolist()).packed, q.packed[:2])
    assert embtab.quantize_rows(np.ones((3, 0), np.float16)).shape == (3, 0)


def test_quantize_rows_errors():
    with pytest.raises(ValueError, match="bits must be 8"):
        embtab.quantize_rows(np.ones((2, 2), np.float32), bits=4)
    with pytest.raises(ValueError, match="bits"):
        embtab.quantize_rows(np.ones((2, 2), np.float32), bits=16)
    with pytest.raises(TypeError):
        embtab.quantize_rows(np.ones((2, 2), np.float32), bits=8.0)
    with pytest.raises(TypeError, match="float"):
        embtab.quantize_rows(np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="2-D"):
        embtab.quantize_rows(np.ones(4, np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((5, 3), np.float32)
        x[3, 1] = bad
        with pytest.raises(ValueError, match="row 3 cannot be quantized: it holds a NaN or an infinity"):
            embtab.quantize_rows(x)
    x = np.zeros((3, 2), np.float32)
    x[1] = [np.finfo(np.float32).max, -1.0e38]  # finite, but code 255 would decode to infinity
    with pytest.raises(ValueError, match="row 1 cannot be quantized"):
        embtab.quantize_rows(x)
    # A range of 6e38 is fine: fma(255, scale, -3e38) never forms the overflowing 255 * scale.
    x[1] = [3.0e38, -3.0e38]
    deq = embtab.quantize_rows(x).dequantize()
    assert np.isfinite(deq).all() and np.allclose(deq[1], x[1], rtol=1e-6)


def test_quantized_table_from_parts_and_packed():
    rng = np.random.default_rng(7)
    q = embtab.quantize_rows(rng.standard_normal((12, 5)).astype(np.float32))
    rebuilt = embtab.QuantizedTable(q.data, q.scale, q.bias)
    np.testing.assert_array_equal(rebuilt.packed, q.packed)
    # The fused layout: codes, then scale and bias as float32 bytes; from_packed reads it back.
    packed = q.packed
    assert packed.shape == (12, 5 + 8)
    np.testing.assert_array_equal(packed[:, :5], q.data)
    np.testing.assert_array_equal(np.ascontiguousarray(packed[:, 5:]).view(np.float32), np.stack([q.scale, q.bias], 1))
    wrapped = embtab.QuantizedTable.from_packed(packed)
    packed[:] = 0  # a copy: the table does not change
    np.testing.assert_array_equal(embtab.gather(wrapped, [3, 1]), q.dequantize()[[3, 1]])
    assert wrapped.data.ctypes.data % 128 == 0 and wrapped.params.shape == (12, 2)
    with pytest.raises(TypeError):
        embtab.QuantizedTable(q.data.astype(np.int16), q.scale, q.bias)
    with pytest.raises(ValueError, match="scale"):
        embtab.QuantizedTable(q.data, q.scale[:3], q.bias)
    with pytest.raises(TypeError, match="bias"):
        embtab.QuantizedTable(q.data, q.scale, np.zeros(12, np.int32))
    with pytest.raises(ValueError, match="dim \\+ 8"):
        embtab.QuantizedTable.from_packed(np.zeros((3, 7), np.uint8))
    # The compiled layer takes an 8-bit table as the pair (codes, params) and checks both.
    ids = np.array([0, 2])
    with pytest.raises(TypeError, match="pair"):
        embtab._core.gather(q.data, ids, dtype="int8")
    with pytest.raises(TypeError, match="float32"):
        embtab._core.gather((q.data, q.params.astype(np.float64)), ids, dtype="int8")
    with pytest.raises(TypeError, match="uint8"):
        embtab._core.gather((q.data.view(np.int8), q.params), ids, dtype="int8")
    with pytest.raises(ValueError, match="shape"):
        embtab._core.gather((q.data, q.params[:5]), ids, dtype="int8")
    with pytest.raises(ValueError, match="codes"):
        embtab._core.quantize_rows_8bit(np.zeros((12, 5), np.float32), np.empty((12, 4), np.uint8), q.params.copy())
    with pytest.raises(TypeError):
        embtab.QuantizedTable.from_packed(np.zeros((3, 9), np.int8))


def test_int8_bags_match_torch_fused_8bit_kernel(simd_path, num_threads):
    torch = pytest.importorskip("torch")
    try:
        op = torch.ops.quantized.embedding_bag_byte_rowwise_offsets
    except (AttributeError, RuntimeError):
        pytest.skip("torch has no quantized embedding_bag_byte_rowwise_offsets")
    rng = np.random.default_rng(8)
    q = embtab.quantize_rows(rng.standard_normal((200, 64)).astype(np.float32))
    ids, offsets = random_csr(rng, 40, 10, 200, np.int64)
    weights = rng.random(ids.shape, dtype=np.float32)
    # The packed rows are FBGEMM's layout and the sums follow its rule, so torch gives the same
    # bits (it pools by sum; mean multiplies by 1 / len there and divides here).
    ours = embtab.gather_bags(q, ids, offsets)
    theirs = op(torch.from_numpy(q.packed), torch.from_numpy(ids), torch.from_numpy(offsets[:-1]), False, 0,
                False, None, None, False).numpy()
    np.testing.assert_array_equal(ours, theirs)
    ours = embtab.gather_bags(q, ids, offsets, weights=weights)
    theirs = op(torch.from_numpy(q.packed), torch.from_numpy(ids), torch.from_numpy(offsets[:-1]), False, 0,
                False, torch.from_numpy(weights), None, False).numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_half_bags_match_torch_embedding_bag(fmt):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    base = rng.standard_normal((100, 32)).astype(np.float32)
    table, kw, ref = make_table(fmt, base)
    t_table = torch.from_numpy(ref).to(torch.float16 if fmt == "float16" else torch.bfloat16)
    ids = rng.integers(0, 100, (25, 4))
    for mode in ("sum", "mean", "max"):
        ours = embtab.gather_bags(table, ids, mode=mode, **kw)
        theirs = torch.nn.functional.embedding_bag(torch.from_numpy(ids), t_table, mode=mode).float().numpy()
        # torch rounds its result to the table's dtype; embtab returns float32.
        tol = 2.0**-10 if fmt == "float16" else 2.0**-7
        np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * 4)


# ---- bad input ----


@pytest.fixture(params=FORMATS)
def small(request):
    base = np.arange(20, dtype=np.float32).reshape(10, 2)
    return make_table(request.param, base)


@pytest.mark.parametrize("bad", [-1, 10, 2**31, 2**63 - 1, -(2**63)])
def test_out_of_range_ids_raise_index_error(small, bad):
    table, kw, _ = small
    ids = np.array([[0, 1], [2, bad]], np.int64)
    with pytest.raises(IndexError, match=rf"ids\[1, 1\] = {bad}"):
        embtab.gather(table, ids, **kw)
    with pytest.raises(IndexError, match=rf"ids\[1, 1\] = {bad}"):
        embtab.gather_bags(table, ids, **kw)
    with pytest.raises(IndexError, match=rf"ids\[3\] = {bad}"):
        embtab.gather_bags(table, ids.ravel(), np.array([0, 1, 4]), mode="max", **kw)


def test_first_bad_position_for_any_thread_count(num_threads):
    q = embtab.quantize_rows(np.zeros((10, 64), np.float32))
    ids = np.zeros(100_000, np.int64)
    ids[[70_000, 30_000, 99_999]] = [-5, 11, 12]
    with pytest.raises(IndexError, match=r"ids\[30000\] = 11 "):
        embtab.gather(q, ids)
    with pytest.raises(IndexError, match=r"ids\[300, 0\] = 11 "):
        embtab.gather_bags(q, ids.reshape(1000, 100))


def test_bad_argument_types_and_shapes(small):
    table, kw, _ = small
    ids = np.array([[1, 2]])
    with pytest.raises(TypeError, match="ids"):
        embtab.gather(table, np.array([1.0]), **kw)
    with pytest.raises(TypeError, match="offsets"):
        embtab.gather_bags(table, np.array([1, 2]), np.array([0.0, 2.0]), **kw)
    with pytest.raises(ValueError, match="offsets"):
        embtab.gather_bags(table, np.array([1, 2]), np.array([0, 3]), **kw)
    with pytest.raises(ValueError, match="offsets is required"):
        embtab.gather_bags(table, np.array([1, 2]), **kw)
    with pytest.raises(ValueError, match="mode"):
        embtab.gather_bags(table, ids, mode="min", **kw)
    with pytest.raises(ValueError, match="weights"):
        embtab.gather_bags(table, ids, mode="max", weights=np.ones((1, 2), np.float32), **kw)
    with pytest.raises(TypeError, match="float32"):
        embtab.gather_bags(table, ids, weights=np.ones((1, 2), np.float64), **kw)
    with pytest.raises(ValueError, match="shape of ids"):
        embtab.gather_bags(table, ids, weights=np.ones(2, np.float32), **kw)
    with pytest.raises(ValueError, match="return_argmax"):
        embtab.gather_bags(table, ids, return_argmax=True, **kw)
    for out in (np.zeros((1, 2, 2), np.float16), np.zeros((1, 2, 2), np.float64)):
        with pytest.raises(TypeError, match="out"):
            embtab.gather(table, ids, out=out, **kw)
    with pytest.raises(ValueError, match="out must have shape"):
        embtab.gather(table, ids, out=np.zeros((2, 2), np.float32), **kw)
    read_only = np.zeros((1, 2), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        embtab.gather_bags(table, ids, out=read_only, **kw)
    with pytest.raises(ValueError, match="C-contiguous"):
        embtab.gather_bags(table, ids, out=np.zeros((1, 4), np.float32)[:, ::2], **kw)


def test_dtype_argument_errors():
    f16 = np.zeros((4, 2), np.float16)
    bits = np.zeros((4, 2), np.uint16)
    with pytest.raises(TypeError, match="dtype='bfloat16'"):
        embtab.gather(bits, [0])
    with pytest.raises(TypeError, match="dtype='bfloat16'"):
        embtab.gather_bags(bits, [[0]])
    with pytest.raises(ValueError, match="dtype must be"):
        embtab.gather(f16, [0], dtype="float8")
    with pytest.raises(TypeError, match="float16"):
        embtab.gather(np.zeros((4, 2), np.float32), [0], dtype="float16")
    with pytest.raises(TypeError, match="uint16"):
        embtab.gather(f16, [0], dtype="bfloat16")
    with pytest.raises(TypeError, match="QuantizedTable"):
        embtab.gather(np.zeros((4, 10), np.uint8), [0], dtype="int8")
    with pytest.raises(ValueError, match="does not match"):
        embtab.gather(embtab.to_bfloat16(np.zeros((4, 2), np.float32)), [0], dtype="float16")
    with pytest.raises(ValueError, match="does not match"):
        embtab.gather_bags(embtab.quantize_rows(np.zeros((4, 2))), [[0]], dtype="bfloat16")
    with pytest.raises(TypeError, match="numpy array"):
        embtab.gather([[1.0, 2.0]], [0], dtype="float16")
    with pytest.raises(ValueError, match="2-D"):
        embtab.gather(np.zeros(4, np.float16), [0])
    with pytest.raises(ValueError, match="2-D"):
        embtab.gather(np.zeros((2, 2, 2), np.uint16), [0], dtype="bfloat16")
    # Explicit, matching dtypes are fine.
    assert embtab.gather(f16, [1], dtype="float16").dtype == np.float32
    assert embtab.gather(embtab.quantize_rows(np.ones((4, 2))), [1], dtype="int8").shape == (1, 2)
