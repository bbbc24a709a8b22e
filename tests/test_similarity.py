"""most_similar against the numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest

import embtab


def brute_force(table, vectors, k, metric, exclude=None):
    if metric == "cosine":
        t = table / np.linalg.norm(table, axis=1, keepdims=True)
        v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = v @ t.T
    elif metric == "dot":
        scores = vectors @ table.T
    else:
        scores = -np.linalg.norm(vectors[:, None, :] - table[None, :, :], axis=2)
    if exclude is not None:
        scores[np.arange(len(exclude)), exclude] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(scores, order, axis=1)
    return order, (-best if metric == "l2" else best)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectors_match_brute_force(metric, dtype):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((300, 16)).astype(dtype)
    queries = rng.standard_normal((7, 16)).astype(dtype)
    ids, scores = embtab.most_similar(table, queries, k=5, metric=metric)
    ref_ids, ref_scores = brute_force(table.astype(np.float64), queries.astype(np.float64), 5, metric)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    assert scores.dtype == dtype and ids.dtype == np.int64


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_row_queries_and_exclude_self(metric):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((100, 8))
    rows = np.array([3, 50, 99])
    ids, scores = embtab.most_similar(table, rows, k=4, metric=metric, exclude_self=True)
    ref_ids, ref_scores = brute_force(table, table[rows], 4, metric, exclude=rows)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-10)
    assert not np.any(ids == rows[:, None])
    # Without exclude_self, a row is its own best cosine / l2 match.
    if metric != "dot":
        ids, _ = embtab.most_similar(table, rows, k=1, metric=metric)
        np.testing.assert_array_equal(ids[:, 0], rows)


def test_cat_is_close_to_dog():
    vocab = ["cat", "dog", "car", "truck", "apple"]
    table = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.1], [0.0, 0.1, 1.0], [0.1, 0.0, 0.9], [-1.0, 0.2, 0.1]])
    ids, _ = embtab.most_similar(table, vocab.index("cat"), k=1, exclude_self=True)
    assert vocab[ids[0]] == "dog"


def test_single_vector_query_and_k_larger_than_table():
    table = np.eye(3)
    ids, scores = embtab.most_similar(table, np.array([0.0, 1.0, 0.0]), k=10)
    assert ids.shape == (3,) and ids[0] == 1
    np.testing.assert_allclose(scores, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(ids, [1, 0, 2])  # equal scores in id order


def test_zero_vectors_have_cosine_zero():
    table = np.array([[0.0, 0.0], [1.0, 0.0]])
    _, scores = embtab.most_similar(table, np.array([1.0, 0.0]), k=2)
    np.testing.assert_array_equal(scores, [1.0, 0.0])
    assert np.all(np.isfinite(scores))


def test_many_queries_use_blocks():
    rng = np.random.default_rng(2)
    table = rng.standard_normal((3000, 4)).astype(np.float32)
    queries = rng.standard_normal((6000, 4)).astype(np.float32)
    ids, _ = embtab.most_similar(table, queries, k=3, metric="dot")
    ref_ids, _ = brute_force(table, queries, 3, "dot")
    agree = np.mean(ids == ref_ids)
    assert agree > 0.999  # float32 matmul order may swap near-ties


def test_errors():
    table = np.zeros((5, 2))
    with pytest.raises(ValueError, match="metric"):
        embtab.most_similar(table, 0, metric="manhattan")
    with pytest.raises(ValueError, match="k must be"):
        embtab.most_similar(table, 0, k=0)
    with pytest.raises(IndexError, match=r"queries\[1\] = 5"):
        embtab.most_similar(table, np.array([0, 5]))
    with pytest.raises(IndexError):
        embtab.most_similar(table, -1)
    with pytest.raises(ValueError, match="dim=2"):
        embtab.most_similar(table, np.zeros(3))
    with pytest.raises(ValueError, match="exclude_self"):
        embtab.most_similar(table, np.zeros(2), exclude_self=True)
    with pytest.raises(TypeError):
        embtab.most_similar(table.astype(np.int64), 0)
    with pytest.raises(TypeError):
        embtab.most_similar(table, np.array(["a"]))
