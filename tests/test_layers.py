"""Layers against numpy, gradients by finite differences, training, checkpoints of layers+optimizers."""

from __future__ import annotations

import numpy as np
import pytest

import embtab
from embtab import Embedding, EmbeddingBag, HashEmbedding, SubwordEmbedding


def dense_grad(layer, rows_grads):
    rows, grads = rows_grads
    full = np.zeros_like(layer.weight)
    full[rows] = grads
    return full


@pytest.mark.parametrize("init", ["normal", "uniform", "xavier_uniform", "zeros"])
def test_init_is_seeded_and_reproducible(init):
    a = Embedding(100, 8, init=init, seed=3)
    b = Embedding(100, 8, init=init, seed=3)
    c = Embedding(100, 8, init=init, seed=4)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.weight.dtype == np.float32 and a.weight.shape == (100, 8)
    assert a.weight.ctypes.data % 128 == 0  # rows on pairs of cache lines
    if init != "zeros":
        assert not np.array_equal(a.weight, c.weight)
    if init == "xavier_uniform":
        assert np.abs(a.weight).max() <= np.sqrt(6 / 108)
    if init == "uniform":
        assert np.abs(a.weight).max() <= 1 / 8


def test_embedding_forward_backward_match_numpy():
    layer = Embedding(20, 4, dtype=np.float64, seed=1)
    ids = np.array([[1, 5, 1], [7, 5, 19]])
    out = layer.forward(ids)
    np.testing.assert_array_equal(out, layer.weight[ids])
    grad_out = np.random.default_rng(0).standard_normal(out.shape)
    rows, grads = layer.backward(grad_out)
    expected = np.zeros_like(layer.weight)
    np.add.at(expected, ids, grad_out)
    np.testing.assert_array_equal(rows, np.unique(ids))
    np.testing.assert_allclose(grads, expected[rows])


def test_padding_idx_stays_zero_and_gets_no_gradient():
    layer = Embedding(10, 3, padding_idx=0, seed=2)
    assert not layer.weight[0].any()
    ids = np.array([0, 2, 0, 3])
    layer.forward(ids)
    rows, _ = layer.backward(np.ones((4, 3), np.float32))
    assert 0 not in rows
    opt = embtab.optim.SGD(layer, lr=0.1)
    opt.step()
    assert not layer.weight[0].any()


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_finite_differences(mode):
    rng = np.random.default_rng(3)
    layer = EmbeddingBag(12, 5, mode=mode, dtype=np.float64, seed=3)
    ids = np.array([1, 4, 4, 7, 2, 9, 1])
    offsets = np.array([0, 3, 3, 7])
    proj = rng.standard_normal((3, 5))

    def loss():
        return float((embtab.gather_bags(layer.weight, ids, offsets, mode=mode) * proj).sum())

    layer.forward(ids, offsets)
    analytic = dense_grad(layer, layer.backward(proj))
    numeric = np.zeros_like(layer.weight)
    eps = 1e-6
    for r in np.unique(ids):
        for j in range(5):
            layer.weight[r, j] += eps
            up = loss()
            layer.weight[r, j] -= 2 * eps
            down = loss()
            layer.weight[r, j] += eps
            numeric[r, j] = (up - down) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, atol=1e-6)


def test_embedding_bag_weights_and_padding_follow_torch():
    torch = pytest.importorskip("torch")
    layer = EmbeddingBag(10, 4, mode="mean", padding_idx=2, dtype=np.float32, seed=4)
    ids = np.array([[1, 2, 3], [2, 2, 2], [4, 5, 2]])
    ref = torch.nn.EmbeddingBag(10, 4, mode="mean", padding_idx=2)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.weight))
    np.testing.assert_allclose(layer.forward(ids), ref(torch.from_numpy(ids)).detach().numpy(), rtol=1e-6, atol=1e-6)
    weighted = EmbeddingBag(10, 4, mode="sum", seed=5)
    ref = torch.nn.EmbeddingBag(10, 4, mode="sum")
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(weighted.weight))
    w = np.random.default_rng(0).random(ids.shape).astype(np.float32)
    out = weighted.forward(ids, per_sample_weights=w)
    np.testing.assert_allclose(out, ref(torch.from_numpy(ids), per_sample_weights=torch.from_numpy(w)).detach().numpy(),
                               rtol=1e-6, atol=1e-6)


def test_dropout_scales_survivors_and_is_off_in_eval():
    layer = Embedding(50, 8, dropout=0.5, seed=6)
    ids = np.arange(50).repeat(20)
    out = layer.forward(ids)
    dropped = ~out.any(axis=1)
    assert 0.4 < dropped.mean() < 0.6
    np.testing.assert_allclose(out[~dropped], 2.0 * layer.weight[ids[~dropped]], rtol=1e-6)
    rows, grads = layer.backward(np.ones_like(out))
    kept_counts = np.bincount(ids[~dropped], minlength=50)
    np.testing.assert_allclose(grads, 2.0 * kept_counts[rows][:, None] * np.ones((1, 8)), rtol=1e-6)
    layer.eval()
    np.testing.assert_array_equal(layer.forward(ids), layer.weight[ids])
    bag = EmbeddingBag(30, 4, mode="mean", dropout=0.3, seed=7).eval()
    bag_ids = np.arange(30).reshape(10, 3)
    np.testing.assert_allclose(bag.forward(bag_ids), bag.weight[bag_ids].mean(axis=1), rtol=1e-6)


def test_hash_embedding_multi_hash():
    layer = HashEmbedding(1000, 6, num_hashes=3, seed=9)
    keys = ["cat", "dog", "cat", 12345]
    out = layer.forward(keys[:3])
    rows = np.stack([embtab.hash_buckets(keys[:3], 1000, seed=9 + k) for k in range(3)], axis=1)
    np.testing.assert_allclose(out, layer.weight[rows].sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(out[0], out[2])
    docs = [["cat", "dog"], [], ["dog"]]
    mean_layer = HashEmbedding(1000, 6, num_hashes=2, seed=9, mode="mean")
    doc_out = mean_layer.forward(docs)
    cat = mean_layer.forward(["cat"])[0]
    dog = mean_layer.forward(["dog"])[0]
    np.testing.assert_allclose(doc_out[0], (cat + dog) / 2, rtol=1e-6)
    assert not doc_out[1].any()
    np.testing.assert_allclose(doc_out[2], dog, rtol=1e-6)
    int_layer = HashEmbedding(100, 2, seed=1)
    ints = int_layer.forward(np.array([5, 6], np.int64))
    np.testing.assert_array_equal(int_layer.forward([5, 6]), ints)
    np.testing.assert_array_equal(ints, int_layer.weight[embtab.hash_buckets(np.array([5, 6], np.int64), 100, seed=1)])


def test_subword_embedding_matches_manual_mean():
    vocab = ["where", "here"]
    layer = SubwordEmbedding(4, vocab=vocab, minn=3, maxn=4, bucket=1000, seed=3, dtype=np.float64)
    out = layer.forward(["where", "unseen"])
    ids, offsets = embtab.subword_ngrams(["where", "unseen"], minn=3, maxn=4, bucket=1000, offset=2)
    where_rows = np.concatenate([[0], ids[offsets[0]:offsets[1]]])
    np.testing.assert_allclose(out[0], layer.weight[where_rows].mean(axis=0))
    np.testing.assert_allclose(out[1], layer.weight[ids[offsets[1]:offsets[2]]].mean(axis=0))
    doc = layer.forward([["where", "unseen"]])
    all_rows = np.concatenate([where_rows, ids[offsets[1]:offsets[2]]])
    np.testing.assert_allclose(doc[0], layer.weight[all_rows].mean(axis=0))
    layer.backward(np.ones((1, 4)))
    rows, _grads = layer.grad
    np.testing.assert_array_equal(rows, np.unique(all_rows))


def test_errors():
    layer = Embedding(5, 2)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((1, 2), np.float32))
    opt = embtab.optim.Adam(layer, lr=0.1)
    with pytest.raises(RuntimeError, match="backward"):
        opt.step()
    with pytest.raises(IndexError):
        layer.forward(np.array([5]))
    layer.forward(np.array([1]))
    with pytest.raises(ValueError, match="grad_out"):
        layer.backward(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="init"):
        Embedding(5, 2, init="ones")
    with pytest.raises(ValueError, match="dropout"):
        Embedding(5, 2, dropout=1.0)
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(5, 2, padding_idx=5)
    with pytest.raises(ValueError):
        Embedding(-1, 2)
    with pytest.raises(TypeError):
        Embedding(5, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="mode"):
        EmbeddingBag(5, 2, mode="median")
    with pytest.raises(TypeError):
        SubwordEmbedding(2, bucket=10).forward(["ok", 3])
    with pytest.raises(TypeError):
        embtab.optim.SGD(layer, lr=0.1).step(np.array([1]))


def test_bounds_zero_layers_count_invalid_ids():
    layer = Embedding(5, 2, bounds="zero", seed=1)
    out = layer.forward(np.array([0, 9, -1, 4]))
    assert layer.num_invalid_ids == 2
    assert not out[1].any() and not out[2].any()
    rows, _ = layer.backward(np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(rows, [0, 4])
    bag = EmbeddingBag(5, 2, mode="mean", bounds="zero", seed=1)
    pooled = bag.forward(np.array([[0, 9], [4, 4]]))
    np.testing.assert_allclose(pooled[0], bag.weight[0] / 2, rtol=1e-6)
    rows, _ = bag.backward(np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(rows, [0, 4])


def test_training_reduces_loss():
    rng = np.random.default_rng(0)
    layer = EmbeddingBag(200, 8, mode="mean", std=0.1, seed=0)
    target = rng.standard_normal((200, 8)).astype(np.float32)
    opt = embtab.optim.Adagrad(layer, lr=0.5)
    losses = []
    for _ in range(200):
        ids = rng.integers(0, 200, (32, 5))
        opt.zero_grad()
        out = layer.forward(ids)
        diff = out - target[ids].mean(axis=1)
        losses.append(float((diff**2).mean()))
        layer.backward((2 * diff / diff.size).astype(np.float32))
        opt.step()
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:20])


@pytest.mark.parametrize("opt_cls", [embtab.optim.SGD, embtab.optim.Adagrad, embtab.optim.RowWiseAdagrad, embtab.optim.Adam])
def test_checkpoint_layers_and_optimizer_round_trip(tmp_path, opt_cls):
    rng = np.random.default_rng(1)
    layer = EmbeddingBag(50, 4, mode="sum", seed=2)
    hashed = HashEmbedding(64, 3, num_hashes=2, seed=5, mode="mean")
    words = SubwordEmbedding(3, vocab=["a", "b"], bucket=30, minn=1, maxn=2, seed=3)
    opt = opt_cls(layer, lr=0.1)
    for _ in range(3):
        ids = rng.integers(0, 50, (4, 3))
        opt.zero_grad()
        layer.forward(ids)
        layer.backward(rng.standard_normal((4, 4)).astype(np.float32))
        opt.step()
    embtab.save(tmp_path / "ck", layer=layer, opt=opt, hashed=hashed, words=words)
    loaded = embtab.load(tmp_path / "ck")
    l2, o2 = loaded["layer"], loaded["opt"]
    assert type(l2) is EmbeddingBag and type(o2) is opt_cls
    np.testing.assert_array_equal(l2.weight, layer.weight)
    assert o2.table is l2.weight and o2.layer is l2
    for key, value in opt.state.items():
        np.testing.assert_array_equal(o2.state[key], value)
    np.testing.assert_array_equal(loaded["hashed"].forward([["x", "y"]]), hashed.forward([["x", "y"]]))
    np.testing.assert_array_equal(loaded["words"].forward(["ab", "zz"]), words.forward(["ab", "zz"]))
    # Training continues identically from the checkpoint.
    ids = rng.integers(0, 50, (4, 3))
    g = rng.standard_normal((4, 4)).astype(np.float32)
    for lay, o in ((layer, opt), (l2, o2)):
        o.zero_grad()
        lay.forward(ids)
        lay.backward(g)
        o.step()
    np.testing.assert_array_equal(l2.weight, layer.weight)
