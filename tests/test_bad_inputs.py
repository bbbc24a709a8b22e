"""The bad-input contract, as a matrix: for every public entry point, hostile inputs and the
exception each must raise (IndexError for bad ids, TypeError for bad dtypes/types, ValueError for
bad shapes/sizes/offsets; never a crash, never a silent wrong answer).

Non-finite values (NaN, inf) in tables, weights and gradients are allowed: they propagate through
the arithmetic as in numpy. Those cases are checked for propagation at the end.
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import numpy as np
import pytest

import embtab
from embtab import optim

T32 = np.arange(40, dtype=np.float32).reshape(10, 4)
IDS = np.array([0, 3, 9], np.int64)
OFFS = np.array([0, 1, 3], np.int64)
GRADS = np.ones((3, 4), np.float32)


def read_only(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.flags.writeable = False
    return a


def target() -> np.ndarray:
    return np.zeros((10, 4), np.float32)


BAD_IDS: List[Tuple[str, Any, type]] = [
    ("negative", np.array([0, -1]), IndexError),
    ("too_large", np.array([0, 10]), IndexError),
    ("2**31", np.array([2**31]), IndexError),
    ("2**63-1", np.array([2**63 - 1]), IndexError),
    ("int32_min", np.array([-(2**31)], np.int32), IndexError),
    ("float", np.array([0.0, 1.0]), TypeError),
    ("bool", np.array([True, False]), TypeError),
    ("complex", np.array([1 + 0j]), TypeError),
    ("object", np.array([1, 2], dtype=object), TypeError),
    ("uint64", np.array([1], np.uint64), TypeError),
    ("string", np.array(["1"]), TypeError),
    ("float_list", [0.5], TypeError),
    ("none", None, TypeError),
]

# Entry points that take ids, each called with the given ids (1-D where possible).
ID_TAKERS: List[Tuple[str, Callable[[Any], Any]]] = [
    ("gather", lambda ids: embtab.gather(T32, ids)),
    ("gather_bags", lambda ids: embtab.gather_bags(T32, ids, np.array([0, np.size(ids)]))),
    ("scatter_add", lambda ids: embtab.scatter_add(target(), ids, np.ones(np.shape(ids) + (4,), np.float32))),
    ("gather_bags_grad", lambda ids: embtab.gather_bags_grad(np.ones((1, 4), np.float32), ids, np.array([0, np.size(ids)]), table=T32)),
    ("sgd_step", lambda ids: optim.SGD(target(), 0.1).step(ids, np.ones(np.shape(ids) + (4,), np.float32))),
    ("adagrad_step", lambda ids: optim.Adagrad(target(), 0.1).step(ids, np.ones(np.shape(ids) + (4,), np.float32))),
    ("rowwise_step", lambda ids: optim.RowWiseAdagrad(target(), 0.1).step(ids, np.ones(np.shape(ids) + (4,), np.float32))),
    ("adam_step", lambda ids: optim.Adam(target(), 0.1).step(ids, np.ones(np.shape(ids) + (4,), np.float32))),
    ("adam_step_bags", lambda ids: optim.Adam(target(), 0.1).step_bags(np.ones((1, 4), np.float32), ids, np.array([0, np.size(ids)]))),
    ("embedding_layer", lambda ids: embtab.Embedding(10, 4).forward(ids)),
    ("embedding_bag_layer", lambda ids: embtab.EmbeddingBag(10, 4).forward(ids, np.array([0, np.size(ids)]))),
    ("most_similar", lambda ids: embtab.most_similar(T32, ids)),
]


@pytest.mark.parametrize("case, ids, error", BAD_IDS, ids=[c[0] for c in BAD_IDS])
@pytest.mark.parametrize("taker, call", ID_TAKERS, ids=[t[0] for t in ID_TAKERS])
def test_bad_ids(taker, call, case, ids, error):
    if taker == "most_similar" and case in ("float", "float_list"):
        error = ValueError  # float queries are vectors: these have the wrong dimension
    if taker == "most_similar" and case == "uint64":
        pytest.skip("uint64 row ids are fine for most_similar (no kernel takes them)")
    with pytest.raises(error):
        call(ids)


def test_coalesce_bad_ids():
    for ids, error in [(np.array([-1]), IndexError), (np.array([1.0]), TypeError), (np.array([True]), TypeError),
                       (np.array([1], np.uint64), TypeError)]:
        with pytest.raises(error):
            embtab.coalesce(ids, np.ones((1, 4), np.float32))


def test_ids_errors_leave_targets_untouched():
    t = target()
    with pytest.raises(IndexError, match=r"ids\[2\] = 10"):
        embtab.scatter_add(t, np.array([0, 1, 10]), np.ones((3, 4), np.float32))
    assert not t.any()
    opt = optim.Adam(t, 0.1)
    with pytest.raises(IndexError):
        opt.step(np.array([0, -3]), np.ones((2, 4), np.float32))
    assert not t.any() and not opt.state["exp_avg"].any()


BAD_TABLES = [
    ("int_table", T32.astype(np.int64), TypeError),
    ("float16_table", T32.astype(np.float16), TypeError),
    ("bigendian_table", T32.astype(">f4"), TypeError),
    ("complex_table", T32.astype(np.complex64), TypeError),
    ("list_table", T32.tolist(), TypeError),
    ("1d_table", T32.ravel(), ValueError),
    ("3d_table", T32.reshape(2, 5, 4), ValueError),
    ("0d_table", np.float32(1.0), (TypeError, ValueError)),
]
TABLE_TAKERS = [
    ("gather", lambda t: embtab.gather(t, IDS[:1])),
    ("gather_bags", lambda t: embtab.gather_bags(t, IDS[:1], np.array([0, 1]))),
    ("scatter_add", lambda t: embtab.scatter_add(t, IDS[:1], np.ones((1, 4), np.float32))),
    ("sgd", lambda t: optim.SGD(t, 0.1)),
    ("adam", lambda t: optim.Adam(t, 0.1)),
    ("most_similar", lambda t: embtab.most_similar(t, np.zeros(4, np.float32))),
]


@pytest.mark.parametrize("case, table, error", BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
@pytest.mark.parametrize("taker, call", TABLE_TAKERS, ids=[t[0] for t in TABLE_TAKERS])
def test_bad_tables(taker, call, case, table, error):
    if case == "float16_table" and taker in ("gather", "gather_bags"):
        pytest.skip("float16 is a reduced-precision table format for lookups (tests/test_lowp.py)")
    with pytest.raises(error):
        call(table)


UPDATERS = [
    ("scatter_add", lambda t: embtab.scatter_add(t, IDS, GRADS)),
    ("sgd", lambda t: optim.SGD(t, 0.1).step(IDS, GRADS)),
    ("adagrad", lambda t: optim.Adagrad(t, 0.1).step(IDS, GRADS)),
    ("rowwise", lambda t: optim.RowWiseAdagrad(t, 0.1).step(IDS, GRADS)),
    ("adam", lambda t: optim.Adam(t, 0.1).step(IDS, GRADS)),
    ("adam_bags", lambda t: optim.Adam(t, 0.1).step_bags(np.ones((2, 4), np.float32), IDS, OFFS)),
]
WRITTEN_TABLES = [
    ("read_only", lambda: read_only(target()), ValueError),
    ("fortran", lambda: np.asfortranarray(np.zeros((10, 4), np.float32)), ValueError),
    ("strided", lambda: np.zeros((10, 8), np.float32)[:, ::2], ValueError),
    ("float64_table_float32_grads", lambda: np.zeros((10, 4), np.float64), TypeError),
]


@pytest.mark.parametrize("case, make, error", WRITTEN_TABLES, ids=[c[0] for c in WRITTEN_TABLES])
@pytest.mark.parametrize("updater, call", UPDATERS, ids=[u[0] for u in UPDATERS])
def test_written_tables_are_never_copied_or_cast(updater, call, case, make, error):
    table = make()
    before = np.array(table)
    with pytest.raises(error):
        call(table)
    np.testing.assert_array_equal(table, before)


def test_read_only_fortran_and_strided_inputs_are_accepted():
    base = np.arange(80, dtype=np.float32).reshape(10, 8)
    for table in (read_only(T32), np.asfortranarray(T32), base[:, ::2]):
        np.testing.assert_array_equal(embtab.gather(table, IDS), np.asarray(table)[IDS])
        np.testing.assert_allclose(embtab.gather_bags(table, IDS, OFFS), [np.asarray(table)[0], np.asarray(table)[[3, 9]].sum(0)])
    strided_ids = np.array([0, 5, 3, 5, 9, 1])[::2]
    np.testing.assert_array_equal(embtab.gather(T32, strided_ids), T32[strided_ids])
    t = target()
    embtab.scatter_add(t, read_only(IDS), read_only(GRADS))
    np.testing.assert_array_equal(t[IDS], GRADS)
    rows, _sums = embtab.coalesce(read_only(IDS), np.asfortranarray(GRADS))
    np.testing.assert_array_equal(rows, IDS)


BAD_OFFSETS = [
    ("decreasing", np.array([0, 2, 1, 3]), ValueError),
    ("short", np.array([0, 2]), ValueError),
    ("long", np.array([0, 2, 3, 4]), ValueError),
    ("negative", np.array([-1, 1, 3]), ValueError),
    ("not_from_zero", np.array([1, 2, 3]), ValueError),
    ("float", np.array([0.0, 1.0, 3.0]), TypeError),
    ("empty", np.array([], np.int64), ValueError),
    ("2d", np.array([[0, 1, 3]]), ValueError),
    ("0d", np.array(3), ValueError),
]
OFFSET_TAKERS = [
    ("gather_bags", lambda o: embtab.gather_bags(T32, IDS, o)),
    ("gather_bags_grad", lambda o: embtab.gather_bags_grad(np.ones((2, 4), np.float32), IDS, o)),
    ("adagrad_step_bags", lambda o: optim.Adagrad(target(), 0.1).step_bags(np.ones((2, 4), np.float32), IDS, o)),
    ("embedding_bag_layer", lambda o: embtab.EmbeddingBag(10, 4).forward(IDS, o)),
]


@pytest.mark.parametrize("case, offsets, error", BAD_OFFSETS, ids=[c[0] for c in BAD_OFFSETS])
@pytest.mark.parametrize("taker, call", OFFSET_TAKERS, ids=[t[0] for t in OFFSET_TAKERS])
def test_bad_offsets(taker, call, case, offsets, error):
    with pytest.raises(error):
        call(offsets)


SHAPE_ERRORS = [
    ("gather_out_shape", lambda: embtab.gather(T32, IDS, out=np.zeros((2, 4), np.float32)), ValueError),
    ("gather_out_dtype", lambda: embtab.gather(T32, IDS, out=np.zeros((3, 4), np.float64)), TypeError),
    ("gather_out_read_only", lambda: embtab.gather(T32, IDS, out=read_only(np.zeros((3, 4), np.float32))), ValueError),
    ("gather_out_strided", lambda: embtab.gather(T32, IDS, out=np.zeros((3, 8), np.float32)[:, ::2]), ValueError),
    ("bags_weights_shape", lambda: embtab.gather_bags(T32, IDS, OFFS, weights=np.ones(2, np.float32)), ValueError),
    ("bags_weights_dtype", lambda: embtab.gather_bags(T32, IDS, OFFS, weights=np.ones(3, np.float64)), TypeError),
    ("bags_weights_max", lambda: embtab.gather_bags(T32, IDS, OFFS, mode="max", weights=np.ones(3, np.float32)), ValueError),
    ("bags_mode", lambda: embtab.gather_bags(T32, IDS, OFFS, mode="min"), ValueError),
    ("bags_0d_ids", lambda: embtab.gather_bags(T32, np.array(1)), ValueError),
    ("bags_3d_ids", lambda: embtab.gather_bags(T32, np.zeros((1, 1, 1), np.int64)), ValueError),
    ("scatter_values_shape", lambda: embtab.scatter_add(target(), IDS, np.ones((3, 5), np.float32)), ValueError),
    ("scatter_values_int", lambda: embtab.scatter_add(target(), IDS, np.ones((3, 4), np.int64)), TypeError),
    ("coalesce_values_shape", lambda: embtab.coalesce(IDS, np.ones((2, 4), np.float32)), ValueError),
    ("grad_out_rows", lambda: embtab.gather_bags_grad(np.ones((3, 4), np.float32), IDS, OFFS), ValueError),
    ("grad_out_dtype", lambda: embtab.gather_bags_grad(np.ones((2, 4), np.int32), IDS, OFFS), TypeError),
    ("grad_max_without_table", lambda: embtab.gather_bags_grad(np.ones((2, 4), np.float32), IDS, OFFS, mode="max"), ValueError),
    ("step_grads_shape", lambda: optim.SGD(target(), 0.1).step(IDS, np.ones((3, 5), np.float32)), ValueError),
    ("step_grads_dtype", lambda: optim.SGD(target(), 0.1).step(IDS, np.ones((3, 4), np.float64)), TypeError),
    ("negative_lr", lambda: optim.SGD(target(), -0.1), ValueError),
    ("nan_lr", lambda: optim.Adagrad(target(), float("nan")), ValueError),
    ("negative_eps", lambda: optim.Adagrad(target(), 0.1, eps=-1.0), ValueError),
    ("zero_eps_adam", lambda: optim.Adam(target(), 0.1, eps=0.0), ValueError),
    ("bad_betas", lambda: optim.Adam(target(), 0.1, betas=(1.0, 0.9)), ValueError),
    ("string_lr", lambda: optim.SGD(target(), "0.1"), TypeError),
    ("threads_negative", lambda: embtab.set_num_threads(-1), ValueError),
    ("simd_unknown", lambda: embtab.set_simd_path("neon"), ValueError),
    ("similar_k", lambda: embtab.most_similar(T32, 0, k=0), ValueError),
    ("similar_metric", lambda: embtab.most_similar(T32, 0, metric="jaccard"), ValueError),
    ("similar_bad_row", lambda: embtab.most_similar(T32, 10), IndexError),
]


@pytest.mark.parametrize("call, error", [(c[1], c[2]) for c in SHAPE_ERRORS], ids=[c[0] for c in SHAPE_ERRORS])
def test_shapes_sizes_and_arguments(call, error):
    with pytest.raises(error):
        call()


LOWP_ERRORS = [
    ("bf16_from_strings", lambda: embtab.to_bfloat16(np.array(["a"])), TypeError),
    ("bf16_from_ints", lambda: embtab.to_bfloat16(np.array([1, 2])), TypeError),
    ("quantize_bits", lambda: embtab.quantize_rows(T32, bits=4), ValueError),
    ("quantize_nan_row", lambda: embtab.quantize_rows(np.array([[1.0, np.nan]], np.float32)), ValueError),
    ("quantize_1d", lambda: embtab.quantize_rows(T32.ravel()), ValueError),
    ("quantized_bad_id", lambda: embtab.gather(embtab.quantize_rows(T32), np.array([10])), IndexError),
    ("quantized_float_ids", lambda: embtab.gather(embtab.quantize_rows(T32), np.array([1.0])), TypeError),
    ("f16_bad_offsets", lambda: embtab.gather_bags(T32.astype(np.float16), IDS, np.array([0, 2, 1, 3])), ValueError),
    ("f16_weights_dtype", lambda: embtab.gather_bags(T32.astype(np.float16), IDS, OFFS, weights=np.ones(3, np.float64)), TypeError),
    ("bf16_out_dtype", lambda: embtab.gather(embtab.to_bfloat16(T32), IDS, out=np.zeros((3, 4), np.float64)), TypeError),
    ("raw_uint16_needs_dtype", lambda: embtab.gather(T32.astype(np.uint16), IDS), TypeError),
    ("unknown_dtype", lambda: embtab.gather(T32.astype(np.uint16), IDS, dtype="float8"), ValueError),
    ("lowp_bounds_unknown", lambda: embtab.gather(T32.astype(np.float16), IDS, bounds="clip"), ValueError),
]


@pytest.mark.parametrize("call, error", [(c[1], c[2]) for c in LOWP_ERRORS], ids=[c[0] for c in LOWP_ERRORS])
def test_reduced_precision_errors(call, error):
    with pytest.raises(error):
        call()


HASH_ERRORS = [
    ("surrogate_str", lambda: embtab.murmur3_32(["ok", "\ud800"]), (UnicodeEncodeError, ValueError)),
    ("surrogate_u_array", lambda: embtab.murmur3_32(np.array(["ok", "\ud800"])), (UnicodeEncodeError, ValueError)),
    ("surrogate_128", lambda: embtab.murmur3_128(["\udfff"]), (UnicodeEncodeError, ValueError)),
    ("surrogate_buckets", lambda: embtab.hash_buckets(["\ud800x"], 10), (UnicodeEncodeError, ValueError)),
    ("surrogate_feature_hash", lambda: embtab.feature_hash(["\ud800"]), (UnicodeEncodeError, ValueError)),
    ("surrogate_fasttext", lambda: embtab.fasttext_hash(["\ud800"]), (UnicodeEncodeError, ValueError)),
    ("surrogate_subwords", lambda: embtab.subword_ngrams(["\ud800abc"]), (UnicodeEncodeError, ValueError)),
    ("mixed_list", lambda: embtab.murmur3_32(["a", 1]), TypeError),
    ("none_in_list", lambda: embtab.hash_buckets(["a", None], 10), TypeError),
    ("float_array", lambda: embtab.murmur3_32(np.array([1.5])), TypeError),
    ("bool_array", lambda: embtab.murmur3_32(np.array([True])), TypeError),
    ("float_key", lambda: embtab.murmur3_32(1.5), TypeError),
    ("seed_negative", lambda: embtab.murmur3_32(["a"], seed=-1), ValueError),
    ("seed_too_big", lambda: embtab.murmur3_32(["a"], seed=2**32), ValueError),
    ("seed_128", lambda: embtab.murmur3_128(["a"], seed=2**32), ValueError),
    ("buckets_zero", lambda: embtab.hash_buckets(["a"], 0), ValueError),
    ("buckets_negative", lambda: embtab.hash_buckets(["a"], -5), ValueError),
    ("n_features_zero", lambda: embtab.feature_hash(["a"], n_features=0), ValueError),
    ("feature_hash_mixed", lambda: embtab.feature_hash(["a", 3]), TypeError),
    ("fasttext_int", lambda: embtab.fasttext_hash([1, 2]), TypeError),
    ("subwords_minn_gt_maxn", lambda: embtab.subword_ngrams(["abc"], minn=5, maxn=3), ValueError),
    ("subwords_bucket_negative", lambda: embtab.subword_ngrams(["abc"], bucket=-1), ValueError),
    ("subwords_offset_absurd", lambda: embtab.subword_ngrams(["abc"], offset=2**63), (ValueError, OverflowError)),
    ("subwords_not_str", lambda: embtab.subword_ngrams(["abc", 5]), TypeError),
]


@pytest.mark.parametrize("call, error", [(c[1], c[2]) for c in HASH_ERRORS], ids=[c[0] for c in HASH_ERRORS])
def test_hashing_errors(call, error):
    with pytest.raises(error):
        call()


def test_empty_inputs_give_empty_outputs():
    assert embtab.gather(T32, np.array([], np.int64)).shape == (0, 4)
    assert embtab.gather_bags(T32, np.array([], np.int64), np.array([0])).shape == (0, 4)
    embtab.scatter_add(target(), np.array([], np.int64), np.zeros((0, 4), np.float32))
    rows, sums = embtab.coalesce(np.array([], np.int64), np.zeros((0, 4), np.float32))
    assert rows.shape == (0,) and sums.shape == (0, 4)
    assert embtab.murmur3_32([]).shape == (0,)
    assert embtab.murmur3_32(np.array([], np.int32)).shape == (0,)
    assert embtab.hash_buckets([], 10).shape == (0,)
    ids, offsets = embtab.subword_ngrams([])
    assert ids.shape == (0,) and list(offsets) == [0]
    assert embtab.fasttext_hash([]).shape == (0,)


def test_zero_dim_and_zero_row_tables():
    empty_rows = np.zeros((0, 4), np.float32)
    with pytest.raises(IndexError):
        embtab.gather(empty_rows, np.array([0]))
    no_dim = np.zeros((5, 0), np.float32)
    assert embtab.gather(no_dim, np.array([1, 4])).shape == (2, 0)
    assert embtab.gather_bags(no_dim, np.array([[1, 4]])).shape == (1, 0)
    with pytest.raises(IndexError):
        embtab.gather(no_dim, np.array([5]))
    t = np.zeros((5, 0), np.float32)
    embtab.scatter_add(t, np.array([1]), np.zeros((1, 0), np.float32))
    with pytest.raises(IndexError):
        embtab.scatter_add(t, np.array([5]), np.zeros((1, 0), np.float32))


def test_zero_d_ids():
    np.testing.assert_array_equal(embtab.gather(T32, np.int64(3)), T32[3])
    np.testing.assert_array_equal(embtab.gather(T32, np.array(3)), T32[3])
    with pytest.raises(IndexError, match="ids = 11"):
        embtab.gather(T32, np.array(11))


@pytest.mark.parametrize("make", [
    lambda: embtab.Embedding(2**40, 2**40),
    lambda: embtab.EmbeddingBag(2**62, 8),
    lambda: embtab.SubwordEmbedding(2**40, bucket=2**40),
], ids=["embedding", "embedding_bag", "subword"])
def test_absurd_sizes_fail_cleanly(make):
    with pytest.raises((ValueError, MemoryError, OverflowError)):
        make()


def test_non_finite_values_propagate():
    table = T32.copy()
    table[3, 1] = np.nan
    table[9, 2] = np.inf
    out = embtab.gather_bags(table, IDS, OFFS)
    assert np.isnan(out[1, 1]) and np.isinf(out[1, 2]) and np.isfinite(out[0]).all()
    assert np.isnan(embtab.gather_bags(table, IDS, OFFS, mode="max")[1, 1])
    w = np.array([1.0, np.nan, 1.0], np.float32)
    assert np.isnan(embtab.gather_bags(T32, IDS, OFFS, weights=w)[1]).all()
    t = target()
    g = GRADS.copy()
    g[0, 0] = np.inf
    embtab.scatter_add(t, IDS, g)
    ref = target()
    np.add.at(ref, IDS, g)
    np.testing.assert_array_equal(t, ref)
    opt_table = target()
    optim.SGD(opt_table, 0.1).step(IDS, g)
    assert np.isinf(opt_table[0, 0]) and np.isfinite(opt_table[3]).all()
