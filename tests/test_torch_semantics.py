"""What users of PyTorch expect (issue 12): gradients that accumulate, several forwards per step,
per-thread forward/backward pairing (issue 17 item 9), torch's offsets convention, padding_idx,
max_norm and per-sample-weight gradients, against torch autograd where torch has the feature and
against numpy otherwise; plus the layer edge cases (empty last bags, zero-width and zero-row
tables, dropout and 2-D ids in errors) and the optimizer's learning-rate handling."""

from __future__ import annotations

import copy
import pydoc
import threading
from typing import Any, List, Tuple

import numpy as np
import pytest

import embtab
from embtab import Embedding, EmbeddingBag, HashEmbedding, SubwordEmbedding


def dense(layer: Any, grad: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    rows, grads = grad
    assert np.all(np.diff(rows) > 0)  # sorted, distinct
    full = np.zeros_like(layer.weight)
    full[rows] = grads
    return full


def scatter(shape: Tuple[int, int], ids: np.ndarray, grads: np.ndarray) -> np.ndarray:
    full = np.zeros(shape, grads.dtype)
    np.add.at(full, ids.reshape(-1), grads.reshape(-1, shape[1]))
    return full


def bag_rows_grad(shape: Tuple[int, int], ids: np.ndarray, offsets: np.ndarray, grad_out: np.ndarray, mode: str) -> np.ndarray:
    """numpy reference of the table gradient of sum / mean bags (CSR)."""
    full = np.zeros(shape, grad_out.dtype)
    for b in range(len(offsets) - 1):
        bag = ids[offsets[b] : offsets[b + 1]]
        for i in bag:
            full[i] += grad_out[b] / (len(bag) if mode == "mean" else 1)
    return full


# ------------------------------------------------------------------------------------------------
# Gradients accumulate, as in torch.


def test_gradients_accumulate_until_zero_grad_as_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    layer = Embedding(30, 4, seed=1)
    ref = torch.nn.Embedding(30, 4)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.weight))
    for _ in range(3):
        ids = rng.integers(0, 30, (5, 3))
        g = rng.standard_normal((5, 3, 4)).astype(np.float32)
        layer.forward(ids)
        own = layer.backward(g)
        np.testing.assert_allclose(dense(layer, own), scatter((30, 4), ids, g), rtol=1e-6, atol=1e-6)
        ref(torch.from_numpy(ids)).backward(torch.from_numpy(g))
    np.testing.assert_allclose(dense(layer, layer.grad), ref.weight.grad.numpy(), rtol=1e-5, atol=1e-6)
    layer.zero_grad()
    assert layer.grad is None


def test_bag_gradients_accumulate() -> None:
    rng = np.random.default_rng(1)
    layer = EmbeddingBag(20, 3, mode="mean", dtype=np.float64, seed=2)
    expected = np.zeros((20, 3))
    for _ in range(4):
        ids = rng.integers(0, 20, 9)
        offsets = np.array([0, 4, 4, 9])
        g = rng.standard_normal((3, 3))
        layer.forward(ids, offsets)
        layer.backward(g)
        expected += bag_rows_grad((20, 3), ids, offsets, g, "mean")
    np.testing.assert_allclose(dense(layer, layer.grad), expected, rtol=1e-12)


def test_optimizer_step_keeps_grad_and_zero_grad_clears_it() -> None:
    layer = Embedding(10, 2, dtype=np.float64, seed=3)
    opt = embtab.optim.SGD(layer, lr=0.5)
    start = layer.weight.copy()
    layer.forward(np.array([1, 2, 1]))
    layer.backward(np.ones((3, 2)))
    opt.step()
    opt.step()  # as torch: the same gradient, applied again
    expected = start.copy()
    expected[1] -= 2 * 0.5 * 2.0
    expected[2] -= 2 * 0.5 * 1.0
    np.testing.assert_array_equal(layer.weight, expected)
    opt.zero_grad()
    assert layer.grad is None
    with pytest.raises(RuntimeError, match="backward"):
        opt.step()
    embtab.optim.SGD(np.zeros((3, 2)), lr=0.1).zero_grad()  # a table has no grad: nothing to clear


def test_readme_training_loop_with_zero_grad_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    layer = EmbeddingBag(50, 4, mode="mean", seed=0)
    ref = torch.nn.EmbeddingBag(50, 4, mode="mean", sparse=True)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.weight))
    opt, ref_opt = embtab.optim.Adam(layer, lr=1e-2), torch.optim.SparseAdam(ref.parameters(), lr=1e-2)
    w = rng.standard_normal(4).astype(np.float32)
    for _ in range(5):
        ids, y = rng.integers(0, 50, (16, 5)), rng.random(16).astype(np.float32)
        opt.zero_grad()
        pred = layer.forward(ids) @ w
        layer.backward(np.outer(2 * (pred - y) / len(y), w).astype(np.float32))
        opt.step()
        ref_opt.zero_grad()
        loss = ((ref(torch.from_numpy(ids)) @ torch.from_numpy(w) - torch.from_numpy(y)) ** 2).mean()
        loss.backward()
        ref_opt.step()
    np.testing.assert_allclose(layer.weight, ref.weight.detach().numpy(), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Several forwards per step: explicit contexts.


def test_skip_gram_context_and_negatives_through_one_layer() -> None:
    """word2vec with negative sampling: the output layer looks up the context words and the negative
    samples in two forwards; their gradients add up and equal numpy's."""
    rng = np.random.default_rng(5)
    vocab, dim, batch, negatives = 40, 6, 8, 5
    center = Embedding(vocab, dim, dtype=np.float64, seed=1)
    output = Embedding(vocab, dim, dtype=np.float64, seed=2)
    c_ids = rng.integers(0, vocab, batch)
    ctx_ids = rng.integers(0, vocab, batch)
    neg_ids = rng.integers(0, vocab, (batch, negatives))
    h = center.forward(c_ids)
    pos, pos_ctx = output.forward(ctx_ids, return_context=True)
    neg, neg_ctx = output.forward(neg_ids, return_context=True)

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-x))

    g_pos = (sigmoid(np.einsum("bd,bd->b", h, pos)) - 1)[:, None] * h
    g_neg = sigmoid(np.einsum("bd,bkd->bk", h, neg))[..., None] * h[:, None, :]
    # Backwards in any order, through the layer or through the context.
    neg_ctx.backward(g_neg)
    output.backward(g_pos, pos_ctx)
    expected = scatter((vocab, dim), ctx_ids, g_pos) + scatter((vocab, dim), neg_ids, g_neg)
    np.testing.assert_allclose(dense(output, output.grad), expected, rtol=1e-12, atol=1e-15)
    assert pos_ctx.used and neg_ctx.used


def test_contexts_are_used_once_and_survive_a_failed_backward() -> None:
    layer = EmbeddingBag(10, 2, seed=0)
    with pytest.raises(RuntimeError, match="called before forward"):
        layer.backward(np.zeros((1, 2), np.float32))
    _out, ctx = layer.forward(np.array([[1, 2]]), return_context=True)
    with pytest.raises(ValueError, match="grad_out must have shape"):
        layer.backward(np.zeros((3, 2), np.float32), ctx)
    with pytest.raises(TypeError, match="dtype"):
        ctx.backward(np.zeros((1, 2), np.float64))
    assert not ctx.used
    rows, _ = layer.backward(np.ones((1, 2), np.float32), ctx)
    assert rows.tolist() == [1, 2]
    with pytest.raises(RuntimeError, match="already differentiated"):
        layer.backward(np.ones((1, 2), np.float32), ctx)
    with pytest.raises(RuntimeError, match="already differentiated") as info:
        layer.backward(np.ones((1, 2), np.float32))  # the most recent forward is that one
    assert "before forward" not in str(info.value)
    with pytest.raises(ValueError, match="another layer"):
        EmbeddingBag(10, 2).backward(np.ones((1, 2), np.float32), ctx)
    with pytest.raises(TypeError, match="ForwardContext"):
        layer.backward(np.ones((1, 2), np.float32), "ctx")
    assert "ForwardContext" in repr(ctx)


def test_backward_pairs_with_the_most_recent_forward_of_its_thread() -> None:
    layer = Embedding(10, 2, dtype=np.float64)
    layer.forward(np.array([1]))
    layer.forward(np.array([2, 3]))
    rows, _ = layer.backward(np.ones((2, 2)))
    assert rows.tolist() == [2, 3]


def test_two_threads_on_one_layer_get_their_own_gradients() -> None:
    """Issue 17 item 9: each thread's backward differentiates its own forward, whatever the other
    thread did in between; layer.grad is the sum of both."""
    for layer in (Embedding(100, 4, dtype=np.float64), EmbeddingBag(100, 4, mode="mean", dtype=np.float64)):
        barrier = threading.Barrier(2)
        results: List[Any] = [None, None]
        inputs = [np.arange(0, 10).reshape(2, 5), np.arange(50, 60).reshape(2, 5)]
        grads = [np.full((2, 5, 4) if isinstance(layer, Embedding) else (2, 4), v) for v in (1.0, 3.0)]

        def work(i: int) -> None:  # its threads are joined within this iteration (hence the noqa: B023)
            layer.forward(inputs[i])  # noqa: B023
            barrier.wait()  # noqa: B023 -- both forwards ran before either backward
            results[i] = layer.backward(grads[i])  # noqa: B023

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(2):
            assert results[i][0].tolist() == np.unique(inputs[i]).tolist()
        total = dense(layer, results[0]) + dense(layer, results[1])
        np.testing.assert_array_equal(dense(layer, layer.grad), total)


def test_backward_is_documented() -> None:
    for cls in (Embedding, EmbeddingBag):
        doc = cls.backward.__doc__ or ""
        assert "Parameters" in doc and "ctx" in doc and "grad" in doc
    assert "return_context" in (embtab.layers.__doc__ or "")


def test_layers_can_be_copied() -> None:
    layer = EmbeddingBag(10, 2, seed=1)
    layer.forward(np.array([[1, 2]]))
    clone = copy.deepcopy(layer)
    np.testing.assert_array_equal(clone.weight, layer.weight)
    with pytest.raises(RuntimeError, match="before forward"):  # contexts are not copied
        clone.backward(np.ones((1, 2), np.float32))


# ------------------------------------------------------------------------------------------------
# torch's offsets convention.


def test_include_last_offset_false_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    table = rng.standard_normal((30, 5)).astype(np.float32)
    ids = rng.integers(0, 30, 12)
    starts = np.array([0, 3, 3, 7])  # torch's default: one start per bag; the last bag runs to the end
    t_table = torch.from_numpy(table).requires_grad_()
    for mode in ("sum", "mean", "max"):
        ref = F.embedding_bag(torch.from_numpy(ids), t_table, torch.from_numpy(starts), mode=mode)
        out = embtab.gather_bags(table, ids, starts, mode=mode, include_last_offset=False)
        np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-6, atol=1e-6)
        g = rng.standard_normal(out.shape).astype(np.float32)
        (ref_grad,) = torch.autograd.grad(ref, t_table, torch.from_numpy(g))
        grad = embtab.gather_bags_grad(g, ids, starts, mode=mode, include_last_offset=False, table=table)
        np.testing.assert_allclose(dense(type("T", (), {"weight": table}), grad), ref_grad.numpy(), rtol=1e-5, atol=1e-6)
    csr = np.append(starts, len(ids))
    np.testing.assert_array_equal(embtab.gather_bags(table, ids, starts, include_last_offset=False),
                                  embtab.gather_bags(table, ids, csr))
    layer = EmbeddingBag(30, 5, mode="mean")
    ref_layer = torch.nn.EmbeddingBag(30, 5, mode="mean", include_last_offset=False)
    with torch.no_grad():
        ref_layer.weight.copy_(torch.from_numpy(layer.weight))
    np.testing.assert_allclose(layer.forward(ids, starts, include_last_offset=False),
                               ref_layer(torch.from_numpy(ids), torch.from_numpy(starts)).detach().numpy(), rtol=1e-6)


def test_include_last_offset_in_optimizer_steps() -> None:
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 20, 10)
    starts = np.array([0, 4, 4])
    g = rng.standard_normal((3, 3))
    a, b = (rng.standard_normal((20, 3)),) * 2
    a, b = a.copy(), b.copy()
    embtab.optim.Adagrad(a, lr=0.1).step_bags(g, ids, starts, mode="mean", include_last_offset=False)
    embtab.optim.Adagrad(b, lr=0.1).step_bags(g, ids, np.append(starts, 10), mode="mean")
    np.testing.assert_array_equal(a, b)


def test_short_offsets_error_says_how_to_fix_it() -> None:
    table = np.zeros((10, 2), np.float32)
    with pytest.raises(ValueError, match=r"offsets\[-1\] must equal len\(ids\) = 5, got 3.*include_last_offset=False"):
        embtab.gather_bags(table, np.arange(5), np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="include_last_offset=False"):
        EmbeddingBag(10, 2).forward(np.arange(5), np.array([0, 1, 3]))
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0"):
        embtab.gather_bags(table, np.arange(5), np.array([1, 3]), include_last_offset=False)
    with pytest.raises(ValueError, match="past the end of ids"):
        embtab.gather_bags(table, np.arange(5), np.array([0, 6]), include_last_offset=False)
    with pytest.raises(ValueError, match="no bags"):
        embtab.gather_bags(table, np.arange(5), np.array([], np.int64), include_last_offset=False)
    assert embtab.gather_bags(table, np.arange(0), np.array([], np.int64), include_last_offset=False).shape == (0, 2)


# ------------------------------------------------------------------------------------------------
# padding_idx in the functional API.


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_functional_padding_idx_matches_torch(mode: str) -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(8)
    table = rng.standard_normal((12, 4)).astype(np.float32)
    ids = np.array([1, 3, 3, 3, 5, 3, 7, 3])
    offsets = np.array([0, 2, 4, 4, 8])  # bag 1 is all padding, bag 2 empty
    t_table = torch.from_numpy(table).requires_grad_()
    ref = F.embedding_bag(torch.from_numpy(ids), t_table, torch.from_numpy(offsets), mode=mode, padding_idx=3,
                          include_last_offset=True)
    for padding in (3, 3 - 12):
        out = embtab.gather_bags(table, ids, offsets, mode=mode, padding_idx=padding)
        np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-6, atol=1e-7)
    assert not out[1].any() and not out[2].any()
    g = rng.standard_normal(out.shape).astype(np.float32)
    (ref_grad,) = torch.autograd.grad(ref, t_table, torch.from_numpy(g))
    rows, grads = embtab.gather_bags_grad(g, ids, offsets, mode=mode, padding_idx=3, table=table)
    assert 3 not in rows.tolist()
    full = np.zeros_like(table)
    full[rows] = grads
    np.testing.assert_allclose(full, ref_grad.numpy(), rtol=1e-5, atol=1e-6)
    before = table.copy()
    opt = embtab.optim.SGD(table, lr=1.0)
    opt.step_bags(g, ids, offsets, mode=mode, padding_idx=3)
    np.testing.assert_allclose(table, before - ref_grad.numpy(), rtol=1e-5, atol=1e-6)


def test_functional_padding_idx_errors_name_the_callers_positions() -> None:
    table = np.zeros((10, 2), np.float32)
    ids = np.array([[0, 0, 1], [0, 12, 0]])
    with pytest.raises(IndexError, match=r"ids\[1, 1\] = 12"):
        embtab.gather_bags(table, ids, padding_idx=0)
    with pytest.raises(IndexError, match=r"ids\[4\] = -1"):
        embtab.gather_bags(table, np.array([0, 0, 0, 1, -1]), np.array([0, 5]), padding_idx=0)
    good = np.array([[0, 0, 1], [0, 9, 0]])
    with pytest.raises(ValueError, match="padding_idx must be within"):
        embtab.gather_bags(table, good, padding_idx=10)
    with pytest.raises(TypeError, match="padding_idx must be an integer"):
        embtab.gather_bags(table, good, padding_idx=1.5)
    with pytest.raises(ValueError, match="weights must have the shape of ids"):
        embtab.gather_bags(table, good, weights=np.ones(6, np.float32), padding_idx=0)
    out, invalid = embtab.gather_bags(table, np.array([[0, 12, 1]]), padding_idx=0, bounds="zero")
    assert invalid == 1 and out.shape == (1, 2)


# ------------------------------------------------------------------------------------------------
# max_norm.


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_max_norm_renormalises_looked_up_rows_as_torch(norm_type: float) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    ids = np.array([[1, 4, 4], [7, 1, 0]])
    for cls, ref_cls in ((Embedding, torch.nn.Embedding), (EmbeddingBag, torch.nn.EmbeddingBag)):
        layer = cls(10, 5, max_norm=1.5, norm_type=norm_type, seed=3)
        kwargs = {"mode": "sum"} if cls is EmbeddingBag else {}
        layer.weight[...] = rng.standard_normal((10, 5)).astype(np.float32) * 2
        untouched = layer.weight[[2, 3]].copy()
        ref = ref_cls(10, 5, max_norm=1.5, norm_type=norm_type, **kwargs)
        with torch.no_grad():
            ref.weight.copy_(torch.from_numpy(layer.weight))
        out = layer.forward(ids)
        with torch.no_grad():
            ref_out = ref(torch.from_numpy(ids)).numpy()
        np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.weight, ref.weight.detach().numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(layer.weight[[2, 3]], untouched)  # rows not looked up keep their norm
        norms = np.linalg.norm(layer.weight[np.unique(ids)].astype(np.float64), ord=norm_type, axis=1)
        assert np.all(norms <= 1.5 + 1e-5)


def test_max_norm_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_norm"):
        Embedding(5, 2, max_norm=0)
    with pytest.raises(ValueError, match="norm_type"):
        EmbeddingBag(5, 2, max_norm=1.0, norm_type=-1)
    with pytest.raises(TypeError, match="max_norm"):
        Embedding(5, 2, max_norm="1")
    layer = Embedding(5, 2, max_norm=0.5, bounds="zero")
    layer.weight[...] = 10
    layer.forward(np.array([1, 9, -1]))  # invalid ids are skipped
    np.testing.assert_allclose(np.linalg.norm(layer.weight[1]), 0.5, rtol=1e-6)
    assert np.all(layer.weight[[0, 2, 3, 4]] == 10)


# ------------------------------------------------------------------------------------------------
# Gradient with respect to per-sample weights.


def test_weights_grad_matches_torch_autograd() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(10)
    table = rng.standard_normal((15, 4)).astype(np.float32)
    ids = rng.integers(0, 15, 11)
    offsets = np.array([0, 3, 3, 8, 11])
    w = rng.standard_normal(11).astype(np.float32)
    g = rng.standard_normal((4, 4)).astype(np.float32)
    t_w = torch.from_numpy(w).requires_grad_()
    for padding in (None, int(ids[1])):
        ref = F.embedding_bag(torch.from_numpy(ids), torch.from_numpy(table), torch.from_numpy(offsets), mode="sum",
                              per_sample_weights=t_w, include_last_offset=True, padding_idx=padding)
        (ref_grad,) = torch.autograd.grad(ref, t_w, torch.from_numpy(g))
        _rows, _grads, w_grad = embtab.gather_bags_grad(g, ids, offsets, weights=w, table=table, padding_idx=padding,
                                                      return_weights_grad=True)
        np.testing.assert_allclose(w_grad, ref_grad.numpy(), rtol=1e-5, atol=1e-6)
    # The weighted mean (embtab only): d out_b / d w_i = grad_out[b] . row_i / len(bag b).
    _, _, w_grad = embtab.gather_bags_grad(g, ids, offsets, mode="mean", weights=w, table=table, return_weights_grad=True)
    lengths = np.diff(offsets)
    bag_of = np.repeat(np.arange(4), lengths)
    expected = np.einsum("ij,ij->i", table[ids].astype(np.float64), g[bag_of]) / lengths[bag_of]
    np.testing.assert_allclose(w_grad, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="return_weights_grad"):
        embtab.gather_bags_grad(g, ids, offsets, table=table, return_weights_grad=True)


def test_embedding_bag_backward_returns_per_sample_weights_grad_as_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 20, (6, 4))
    w = rng.standard_normal((6, 4)).astype(np.float32)
    g = rng.standard_normal((6, 3)).astype(np.float32)
    for padding in (None, int(ids[0, 0])):
        layer = EmbeddingBag(20, 3, mode="sum", padding_idx=padding, seed=5)
        ref = torch.nn.EmbeddingBag(20, 3, mode="sum", padding_idx=padding)
        with torch.no_grad():
            ref.weight.copy_(torch.from_numpy(layer.weight))
        t_w = torch.from_numpy(w).requires_grad_()
        ref(torch.from_numpy(ids), per_sample_weights=t_w).backward(torch.from_numpy(g))
        layer.forward(ids, per_sample_weights=w)
        rows, grads, w_grad = layer.backward(g, return_weights_grad=True)
        np.testing.assert_allclose(w_grad, t_w.grad.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dense(layer, (rows, grads)), ref.weight.grad.numpy(), rtol=1e-5, atol=1e-6)
    layer = EmbeddingBag(20, 3, mode="mean", dropout=0.5, seed=1)
    _, ctx = layer.forward(ids, per_sample_weights=w, return_context=True)
    keep_rows = layer.weight[ids].sum(-1)  # any nonzero row
    _, _, w_grad = layer.backward(g, ctx, return_weights_grad=True)
    assert w_grad.shape == ids.shape and (w_grad == 0).any() and (w_grad != 0).any() and keep_rows.all()
    layer.forward(ids)
    with pytest.raises(ValueError, match="per_sample_weights"):
        layer.backward(g, return_weights_grad=True)
    with pytest.raises(TypeError, match="per_sample_weights must have dtype float32"):
        layer.forward(ids, per_sample_weights=w.astype(np.float64))


def test_weighted_mean_docstrings_say_what_embtab_does() -> None:
    for fn in (embtab.gather_bags, embtab.gather_bags_grad):
        doc = " ".join((fn.__doc__ or "").split())
        assert "torch refuses" in doc or "torch has no weighted mean" in doc
    assert "as in ``torch.nn.functional.embedding_bag``" not in (embtab.gather_bags.__doc__ or "")


# ------------------------------------------------------------------------------------------------
# Layer edge cases.


@pytest.mark.parametrize("kwargs", [{"padding_idx": 0}, {"dropout": 0.5}, {"bounds": "zero"}, {}])
def test_empty_last_bag_gives_a_zero_row(kwargs: dict) -> None:
    for mode in ("sum", "mean", "max"):
        layer = EmbeddingBag(10, 4, mode=mode, **kwargs)
        out = layer.forward(np.array([1, 2]), np.array([0, 2, 2]))
        assert out.shape == (2, 4) and not out[1].any()
        rows, _ = layer.backward(np.ones((2, 4), np.float32))
        assert set(rows.tolist()) <= {1, 2}
    words = SubwordEmbedding(4, bucket=100, dropout=0.1)
    assert words.forward(["hello", ""]).shape == (2, 4)
    assert HashEmbedding(50, 3, mode="mean", dropout=0.3).forward([["a"], []]).shape == (2, 3)


def test_zero_width_and_zero_row_tables() -> None:
    for num, dim in ((10, 0), (0, 0), (0, 4)):
        ids = np.array([[1, 2], [3, 1]]) if num else np.zeros((0, 2), np.int64)
        for kwargs in ({}, {"dropout": 0.5}, {"bounds": "zero"}, {"max_norm": 1.0}):
            layer = Embedding(num, dim, **kwargs)
            out = layer.forward(ids)
            assert out.shape == ids.shape + (dim,)
            rows, grads = layer.backward(np.zeros(out.shape, np.float32))
            assert grads.shape == (rows.size, dim)
            for mode in ("sum", "mean", "max"):
                bag = EmbeddingBag(num, dim, mode=mode, **kwargs)
                pooled = bag.forward(ids)
                assert pooled.shape == (ids.shape[0], dim)
                bag.backward(np.zeros(pooled.shape, np.float32))
                embtab.optim.Adam(bag, lr=0.1).step()
        table = np.zeros((num, dim), np.float32)
        flat = ids.reshape(-1)
        offs = np.arange(0, flat.size + 1, 2)
        assert embtab.gather_bags(table, flat, offs, padding_idx=0 if num else None).shape == (len(offs) - 1, dim)
        g = np.zeros((len(offs) - 1, dim), np.float32)
        res = embtab.gather_bags_grad(g, flat, offs, weights=np.ones(flat.size, np.float32), table=table,
                                      return_weights_grad=True)
        assert res[2].shape == flat.shape
    empty_vocab = SubwordEmbedding(0, bucket=0)
    assert empty_vocab.weight.shape == (0, 0) and empty_vocab.forward(["a"]).shape == (1, 0)


def test_dropout_checks_every_id() -> None:
    """Before: 5 of 20 seeds accepted id 200 for a 100-row table when dropout dropped it."""
    for seed in range(20):
        layer = EmbeddingBag(100, 4, dropout=0.5, seed=seed)
        with pytest.raises(IndexError, match=r"ids\[0, 1\] = 200"):
            layer.forward(np.array([[1, 200], [3, 4]]))
        flat = EmbeddingBag(100, 4, mode="mean", dropout=0.9, seed=seed)
        with pytest.raises(IndexError, match=r"ids\[2\] = -3"):
            flat.forward(np.array([1, 2, -3]), np.array([0, 1, 3]))


@pytest.mark.parametrize("kwargs", [{}, {"padding_idx": 0}, {"dropout": 0.3}, {"mode": "max"}, {"mode": "mean"}])
def test_embedding_bag_errors_name_the_2d_position(kwargs: dict) -> None:
    layer = EmbeddingBag(100, 4, **kwargs)
    with pytest.raises(IndexError, match=r"ids\[1, 1\] = 200 is out of bounds"):
        layer.forward(np.array([[1, 2], [3, 200]]))


def test_uniform_init_takes_a_bound() -> None:
    layer = Embedding(2000, 8, init="uniform", bound=0.05, seed=1)
    assert np.abs(layer.weight).max() <= 0.05 and np.abs(layer.weight).max() > 0.049
    keras_like = EmbeddingBag(100, 4, init="uniform", bound=0.05, seed=1)
    assert np.abs(keras_like.weight).max() <= 0.05
    assert np.abs(HashEmbedding(100, 4, init="uniform", bound=0.01).weight).max() <= 0.01
    with pytest.raises(ValueError, match="bound"):
        Embedding(10, 2, init="normal", bound=0.1)
    with pytest.raises(ValueError, match="bound or std"):
        Embedding(10, 2, init="uniform", bound=0.1, std=0.1)
    with pytest.raises(ValueError, match="bound"):
        Embedding(10, 2, init="uniform", bound=-1.0)


# ------------------------------------------------------------------------------------------------
# Optimizers: learning rates, dense parameters, documentation.


def test_lr_is_settable_between_steps_and_checked() -> None:
    table = np.zeros((3, 2))
    opt = embtab.optim.SGD(table, lr=1.0)
    opt.step(np.array([0]), np.ones((1, 2)))
    opt.lr = 0.25
    assert opt.lr == 0.25
    opt.step(np.array([0]), np.ones((1, 2)))
    np.testing.assert_array_equal(table[0], [-1.25, -1.25])
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    with pytest.raises(TypeError, match="lr"):
        opt.lr = "fast"
    assert opt.lr == 0.25


def test_callable_lr_is_called_with_the_step_number() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    table = rng.standard_normal((6, 3)).astype(np.float32)
    param = torch.nn.Parameter(torch.from_numpy(table.copy()))
    seen: List[int] = []

    def schedule(step: int) -> float:
        seen.append(step)
        return 0.1 * 0.5 ** (step - 1)

    opt = embtab.optim.Adam(table, lr=schedule)
    ref = torch.optim.Adam([param], lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(ref, gamma=0.5)
    rows = np.arange(6)
    for _ in range(4):
        g = rng.standard_normal((6, 3)).astype(np.float32)
        opt.step(rows, g)  # every row every step: the dense Adam
        ref.zero_grad()
        param.grad = torch.from_numpy(g.copy())
        ref.step()
        sched.step()
    assert seen == [1, 2, 3, 4]
    assert opt.lr is schedule
    np.testing.assert_allclose(table, param.detach().numpy(), rtol=1e-5, atol=1e-6)
    bad = embtab.optim.SGD(np.zeros((2, 2), np.float32), lr=lambda step: -1.0 if step == 2 else 0.1)
    bad.step(np.array([0]), np.ones((1, 2), np.float32))
    before = bad.table.copy()
    with pytest.raises(ValueError, match=r"lr\(2\)"):
        bad.step(np.array([0]), np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(bad.table, before)  # nothing was updated


def test_schedule_checkpoint_keeps_the_last_lr(tmp_path: Any) -> None:
    table = np.zeros((3, 2), np.float32)
    opt = embtab.optim.SGD(table, lr=lambda step: 0.5 / step)
    for _ in range(2):
        opt.step(np.array([1]), np.ones((1, 2), np.float32))
    embtab.save(tmp_path / "ck", opt=opt)
    loaded = embtab.load(tmp_path / "ck")["opt"]
    assert loaded.lr == 0.25
    loaded.lr = lambda step: 0.5 / step  # the schedule is given again
    loaded.step(np.array([1]), np.ones((1, 2), np.float32))
    opt.step(np.array([1]), np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(loaded.table, opt.table)


def test_optimizer_help_documents_layers_and_dense_parameters() -> None:
    text = pydoc.render_doc(embtab.optim.Adam, renderer=pydoc.plaintext)
    assert "or a layer" in text and "zero_grad" in text and "schedule" in text
    module = embtab.optim.__doc__ or ""
    assert "Dense parameters" in module and "zero_grad" in module
