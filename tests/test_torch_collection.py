"""Many tables in one call: embtab.gather_bags_multi / embtab.optim.step_bags_multi against one
call per table, and embtab.torch.EmbeddingBagCollection against one module per table (and against
TorchRec's KeyedJaggedTensor where torchrec is installed)."""

from __future__ import annotations

import io

import numpy as np
import pytest

import embtab
from embtab import optim

DIMS = [(30, 8), (50, 16), (7, 5)]


def make_batch(rng, tables, feature_tables, batch, max_len=4, dtype=np.int64):
    """Feature-major CSR ids over the features' tables, with empty bags."""
    ids, lengths = [], []
    for t in feature_tables:
        n = rng.integers(0, max_len + 1, batch)
        n[::3] = 0
        lengths.append(n)
        ids.append(rng.integers(0, tables[t].shape[0], int(n.sum())))
    lengths = np.concatenate(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(dtype)
    return np.concatenate(ids).astype(dtype), offsets


def make_tables(rng, dtype=np.float32, dims=DIMS):
    return [rng.standard_normal(shape).astype(dtype) for shape in dims]


def reference_forward(tables, ids, offsets, feature_tables, modes, weights=None):
    batch = (len(offsets) - 1) // len(feature_tables)
    blocks = []
    for f, t in enumerate(feature_tables):
        seg = offsets[f * batch:(f + 1) * batch + 1]
        w = None if weights is None else weights[seg[0]:seg[-1]]
        blocks.append(embtab.gather_bags(tables[t], ids[seg[0]:seg[-1]], seg - seg[0], mode=modes[f], weights=w))
    return np.concatenate(blocks, axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("weighted", [False, True])
def test_gather_bags_multi_matches_per_table(each_path_and_threads, dtype, index_dtype, weighted):
    rng = np.random.default_rng(0)
    tables = make_tables(rng, dtype)
    feature_tables = [0, 1, 2, 1]  # table 1 serves two features
    modes = ["sum", "mean", "sum", "mean"]
    ids, offsets = make_batch(rng, tables, feature_tables, 33, dtype=index_dtype)
    weights = rng.standard_normal(len(ids)).astype(dtype) if weighted else None
    out = embtab.gather_bags_multi(tables, ids, offsets, feature_tables=feature_tables, mode=modes, weights=weights)
    assert out.shape == (33, 8 + 16 + 5 + 16)
    np.testing.assert_array_equal(out, reference_forward(tables, ids, offsets, feature_tables, modes, weights))


def test_gather_bags_multi_defaults_and_out():
    rng = np.random.default_rng(1)
    tables = make_tables(rng)
    ids, offsets = make_batch(rng, tables, [0, 1, 2], 5)
    out = np.full((5, 29), np.nan, np.float32)
    result = embtab.gather_bags_multi(tables, ids, offsets, out=out)
    assert result is out
    np.testing.assert_array_equal(out, reference_forward(tables, ids, offsets, [0, 1, 2], ["sum"] * 3))


def test_gather_bags_multi_large_batch_multithreaded(each_path_and_threads):
    rng = np.random.default_rng(2)
    tables = make_tables(rng, dims=[(1000, 32), (200, 64)])
    ids, offsets = make_batch(rng, tables, [0, 1], 3000, max_len=20)
    out = embtab.gather_bags_multi(tables, ids, offsets, mode="mean")
    np.testing.assert_array_equal(out, reference_forward(tables, ids, offsets, [0, 1], ["mean"] * 2))


def test_gather_bags_multi_errors():
    rng = np.random.default_rng(3)
    tables = make_tables(rng)
    ids, offsets = make_batch(rng, tables, [0, 1, 2], 4)
    bad = ids.copy()
    pos = int(offsets[8])  # the first id of feature 2 (table 2, 7 rows)
    bad[pos] = 7
    with pytest.raises(IndexError, match=rf"ids\[{pos}\] = 7 is out of bounds for a table with 7 rows .*feature 2, table 2"):
        embtab.gather_bags_multi(tables, bad, offsets)
    with pytest.raises(ValueError, match=r"multiple|num_features"):
        embtab.gather_bags_multi(tables, ids, offsets[:-1] if len(offsets) % 3 == 1 else offsets, feature_tables=[0, 1])
    with pytest.raises(ValueError, match="'max'"):
        embtab.gather_bags_multi(tables, ids, offsets, mode="max")
    with pytest.raises(TypeError, match=r"tables\[1\] must have the dtype of tables\[0\]"):
        embtab.gather_bags_multi([tables[0], tables[1].astype(np.float64), tables[2]], ids, offsets)
    with pytest.raises(ValueError, match="is not a table index"):
        embtab.gather_bags_multi(tables, ids, offsets, feature_tables=[0, 1, 3])
    with pytest.raises(ValueError, match="one entry per feature"):
        embtab.gather_bags_multi(tables, ids, offsets, mode=["sum", "mean"])
    with pytest.raises(TypeError, match="ids must be an integer array"):
        embtab.gather_bags_multi(tables, ids.astype(np.float32), offsets)


OPTIMIZERS = [
    ("sgd", lambda t: optim.SGD(t, 0.1)),
    ("adagrad", lambda t: optim.Adagrad(t, 0.1)),
    ("rowwise", lambda t: optim.RowWiseAdagrad(t, 0.1, weight_decay=0.01)),
    ("adam", lambda t: optim.Adam(t, 0.05)),
    ("adamw", lambda t: optim.AdamW(t, 0.05, weight_decay=0.1)),
]


@pytest.mark.parametrize("name, make", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_bags_multi_matches_per_table(each_path_and_threads, name, make, dtype):
    """One multi-table step equals, per table, one step_bags over all of its features' bags
    (stacked in feature order): bitwise, rows summed in the same order."""
    rng = np.random.default_rng(4)
    tables = make_tables(rng, dtype)
    refs = [t.copy() for t in tables]
    opts, ref_opts = [make(t) for t in tables], [make(t) for t in refs]
    feature_tables, modes = [0, 1, 2, 1], ["sum", "sum", "mean", "sum"]
    for _ in range(3):
        ids, offsets = make_batch(rng, tables, feature_tables, 40)
        weights = rng.standard_normal(len(ids)).astype(dtype)
        grad_out = rng.standard_normal((40, 8 + 16 + 5 + 16)).astype(dtype)
        optim.step_bags_multi(opts, grad_out, ids, offsets, feature_tables=feature_tables, mode=modes, weights=weights)
        cols = np.cumsum([0, 8, 16, 5, 16])
        for t, ref_opt in enumerate(ref_opts):
            feats = [f for f, ft in enumerate(feature_tables) if ft == t]
            seg_ids, seg_w, seg_off, grads = [], [], [np.zeros(1, np.int64)], []
            for f in feats:
                seg = offsets[f * 40:(f + 1) * 40 + 1]
                seg_ids.append(ids[seg[0]:seg[-1]])
                seg_w.append(weights[seg[0]:seg[-1]])
                seg_off.append(seg[1:] - seg[0] + seg_off[-1][-1])
                grads.append(grad_out[:, cols[f]:cols[f + 1]])
            ref_opt.step_bags(np.ascontiguousarray(np.concatenate(grads)), np.concatenate(seg_ids),
                              np.concatenate(seg_off), mode=modes[feats[0]], weights=np.concatenate(seg_w))
    for t in range(3):
        np.testing.assert_array_equal(tables[t], refs[t])
        for key, value in ref_opts[t].state.items():
            np.testing.assert_array_equal(opts[t].state[key], value)


def test_step_bags_multi_bad_id_changes_nothing():
    rng = np.random.default_rng(5)
    tables = make_tables(rng)
    before = [t.copy() for t in tables]
    opts = [optim.Adam(t, 0.1) for t in tables]
    ids, offsets = make_batch(rng, tables, [0, 1, 2], 6)
    ids[-1] = 7  # table 2 has 7 rows
    with pytest.raises(IndexError, match="table 2"):
        optim.step_bags_multi(opts, np.ones((6, 29), np.float32), ids, offsets)
    for t, b, o in zip(tables, before, opts):
        np.testing.assert_array_equal(t, b)
        assert o.state["step"] == 0
    with pytest.raises(ValueError, match="shares memory"):
        optim.step_bags_multi([optim.SGD(tables[0], 0.1), optim.SGD(tables[0], 0.1)], np.ones((6, 16), np.float32),
                              ids[:0], np.zeros(13, np.int64))
    with pytest.raises(TypeError, match="one class"):
        optim.step_bags_multi([optim.SGD(tables[0], 0.1), optim.Adam(tables[1], 0.1)], np.ones((6, 24), np.float32),
                              ids[:0], np.zeros(13, np.int64))
    with pytest.raises(ValueError, match="grad_out must have the shape"):
        optim.step_bags_multi(opts, np.ones((6, 28), np.float32), ids[:0], np.zeros(19, np.int64))


# ---------------------------------------------------------------------------------------------
# embtab.torch.EmbeddingBagCollection

def test_gather_bags_multi_out_untouched_on_error_and_may_overlap():
    """out= is written only when every id is good (issue 17: no partial writes), and may overlap
    a table (the result is as if the tables were read first)."""
    rng = np.random.default_rng(11)
    tables = make_tables(rng)
    ids, offsets = make_batch(rng, tables, [0, 1, 2], 6)
    out = np.full((6, 29), 7.0, np.float32)
    bad = ids.copy()
    bad[-1] = 7  # table 2 has 7 rows
    with pytest.raises(IndexError, match="table 2"):
        embtab.gather_bags_multi(tables, bad, offsets, out=out)
    assert (out == 7.0).all()
    expected = embtab.gather_bags_multi([t.copy() for t in tables], ids, offsets)
    out_view = tables[1].reshape(-1)[: 6 * 29].reshape(6, 29)  # the memory table 1 is read from
    got = embtab.gather_bags_multi(tables, ids, offsets, feature_tables=[0, 1, 2], out=out_view)
    assert got is out_view
    np.testing.assert_array_equal(got, expected)


def test_step_bags_multi_counts_every_step_across_threads():
    """Concurrent multi-table steps on the same optimizers: every step is counted once (issue 17:
    the count and the update are one atomic step), and the tables end as the sequential run's."""
    import threading

    rng = np.random.default_rng(12)
    tables = make_tables(rng)
    opts = [optim.Adagrad(t, 0.1) for t in tables]
    ids, offsets = make_batch(rng, tables, [0, 1, 2], 32)
    grad_out = rng.standard_normal((32, 29)).astype(np.float32)

    def work():
        for _ in range(25):
            optim.step_bags_multi(opts, grad_out, ids, offsets)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [int(o.state["step"]) for o in opts] == [100, 100, 100]


torch = pytest.importorskip("torch")
import embtab.torch as et  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled:UserWarning")

CONFIGS = [et.TableConfig("users", 40, 8, ["user"], "sum"),
           et.TableConfig("products", 60, 16, ["item", "seen"], "mean"),
           et.TableConfig("tags", 9, 4, ["tag"], "sum")]


def jagged(rng, batch, keys=("user", "item", "seen", "tag"), sizes=(40, 60, 60, 9), weighted=False):
    lengths = rng.integers(0, 4, len(keys) * batch)
    lengths[::5] = 0
    values = np.concatenate([rng.integers(0, sizes[f], int(lengths[f * batch:(f + 1) * batch].sum()))
                             for f in range(len(keys))])
    weights = torch.from_numpy(rng.standard_normal(len(values))) .float() if weighted else None
    return et.JaggedBatch(list(keys), torch.from_numpy(values), lengths=torch.from_numpy(lengths), weights=weights)


def per_table_modules(ebc, **kwargs):
    """One embtab.torch.EmbeddingBag per feature (sharing weights with the collection's tables)."""
    mods = {}
    for config in ebc.tables:
        weight = ebc.embedding_bags[config.name].weight.detach()
        for feature in config.feature_names:
            mods[feature] = et.EmbeddingBag.from_pretrained(weight, mode=config.pooling, freeze=False,
                                                            include_last_offset=True, **kwargs)
    return mods


def per_feature_forward(mods, batch):
    b = batch.stride()
    offsets = batch.offsets()
    outs = []
    for f, key in enumerate(batch.keys()):
        seg = offsets[f * b:(f + 1) * b + 1]
        w = batch.weights_or_none()
        outs.append(mods[key](batch.values()[seg[0]:seg[-1]], seg - seg[0],
                              None if w is None else w[seg[0]:seg[-1]]))
    return outs


@pytest.mark.parametrize("weighted", [False, True])
def test_collection_forward_and_dense_backward_match_modules(weighted):
    rng = np.random.default_rng(6)
    ebc = et.EmbeddingBagCollection(CONFIGS)
    mods = per_table_modules(ebc)
    batch = jagged(rng, 10, weighted=weighted)
    kt = ebc(batch)
    assert kt.keys() == ["user", "item", "seen", "tag"] and kt.length_per_key() == [8, 16, 16, 4]
    expected = per_feature_forward(mods, batch)
    torch.testing.assert_close(kt.values(), torch.cat(expected, dim=1))
    torch.testing.assert_close(kt["seen"], expected[2])
    grad = torch.from_numpy(rng.standard_normal(tuple(kt.values().shape))).float()
    kt.values().backward(grad)
    torch.cat(expected, dim=1).backward(grad)
    torch.testing.assert_close(ebc.embedding_bags["users"].weight.grad, mods["user"].weight.grad)
    torch.testing.assert_close(ebc.embedding_bags["products"].weight.grad,
                               mods["item"].weight.grad + mods["seen"].weight.grad)


def test_collection_sparse_backward():
    rng = np.random.default_rng(7)
    ebc = et.EmbeddingBagCollection(CONFIGS, sparse=True)
    dense = et.EmbeddingBagCollection(CONFIGS)
    dense.load_state_dict(ebc.state_dict())
    batch = jagged(rng, 12)
    ebc(batch).values().sum().backward()
    dense(batch).values().sum().backward()
    for name in ("users", "products", "tags"):
        grad = ebc.embedding_bags[name].weight.grad
        assert grad.is_sparse and grad.is_coalesced()
        torch.testing.assert_close(grad.to_dense(), dense.embedding_bags[name].weight.grad)


@pytest.mark.parametrize("opt_cls, kwargs", [(optim.RowWiseAdagrad, {"lr": 0.1}), (optim.Adam, {"lr": 0.02}),
                                             (optim.AdamW, {"lr": 0.02}), (optim.SGD, {"lr": 0.3})])
def test_collection_fused_matches_per_table_fused_modules(opt_cls, kwargs):
    """Tables with one feature each: the collection's one fused step equals each table's own
    fused EmbeddingBag."""
    configs = [et.TableConfig("a", 30, 8, ["a"]), et.TableConfig("b", 20, 16, ["b"], "mean")]
    rng = np.random.default_rng(8)
    ebc = et.EmbeddingBagCollection(configs, optimizer=opt_cls, optimizer_kwargs=kwargs)
    mods = per_table_modules(ebc, optimizer=opt_cls, optimizer_kwargs=kwargs)
    for _ in range(3):
        batch = jagged(rng, 8, keys=("a", "b"), sizes=(30, 20))
        target = torch.from_numpy(rng.standard_normal((8, 24))).float()
        ((ebc(batch).values() - target) ** 2).sum().backward()
        ((torch.cat(per_feature_forward(mods, batch), 1) - target) ** 2).sum().backward()
    torch.testing.assert_close(ebc.embedding_bags["a"].weight, mods["a"].weight, rtol=0, atol=0)
    torch.testing.assert_close(ebc.embedding_bags["b"].weight, mods["b"].weight, rtol=0, atol=0)
    assert ebc.embedding_bags["a"].weight.grad is None
    assert ebc.fused_optimizer.optimizers[1].state.get("step", 3) == 3


def test_collection_permuted_keys_and_bad_batches():
    rng = np.random.default_rng(9)
    ebc = et.EmbeddingBagCollection(CONFIGS)
    batch = jagged(rng, 6)
    keys = batch.keys()
    order = [3, 1, 0, 2]
    b = batch.stride()
    lengths = batch.lengths().reshape(4, b)[order].reshape(-1)
    offsets = batch.offsets()
    values = torch.cat([batch.values()[offsets[f * b]:offsets[(f + 1) * b]] for f in order])
    permuted = et.JaggedBatch([keys[f] for f in order], values, lengths=lengths)
    torch.testing.assert_close(ebc(permuted).values(), ebc(batch).values())
    with pytest.raises(ValueError, match=r"features \['genre'\]"):
        ebc(et.JaggedBatch(keys + ["genre"], batch.values(), lengths=torch.cat([batch.lengths(), torch.zeros(b, dtype=torch.int64)])))
    with pytest.raises(ValueError, match="lacks"):
        ebc(et.JaggedBatch(keys[:3], batch.values()[: int(offsets[3 * b])], lengths=batch.lengths()[: 3 * b]))
    with pytest.raises(IndexError, match="table 2"):
        bad = batch.values().clone()
        bad[-1] = 9
        ebc(et.JaggedBatch(keys, bad, offsets=offsets))
    with pytest.raises(ValueError, match="cannot name a module"):
        et.EmbeddingBagCollection([et.TableConfig("items", 3, 2, ["x"])])
    with pytest.raises(ValueError, match="distinct"):
        et.EmbeddingBagCollection([CONFIGS[0], CONFIGS[0]])
    with pytest.raises(ValueError, match="pooling"):
        et.TableConfig("x", 3, 2, ["x"], "max")


def test_collection_state_dict_and_checkpoint(tmp_path):
    rng = np.random.default_rng(10)
    ebc = et.EmbeddingBagCollection(CONFIGS, optimizer=optim.RowWiseAdagrad, optimizer_kwargs={"lr": 0.1})
    for _ in range(2):
        ebc(jagged(rng, 5)).values().sum().backward()
    assert {"embedding_bags.products.weight", "embedding_bags.products.optimizer_state.sum"} <= set(ebc.state_dict())
    buffer = io.BytesIO()
    torch.save(ebc.state_dict(), buffer)
    twin = et.EmbeddingBagCollection(CONFIGS, optimizer=optim.RowWiseAdagrad, optimizer_kwargs={"lr": 0.5})
    buffer.seek(0)
    twin.load_state_dict(torch.load(buffer))
    embtab.save(tmp_path / "ck", ebc=ebc)
    loaded = embtab.load(tmp_path / "ck")["ebc"]
    batch = jagged(rng, 5)
    for m in (ebc, twin, loaded):
        m(batch).values().sum().backward()
    for name in ("users", "products", "tags"):
        torch.testing.assert_close(twin.embedding_bags[name].weight, ebc.embedding_bags[name].weight, rtol=0, atol=0)
        torch.testing.assert_close(loaded.embedding_bags[name].weight, ebc.embedding_bags[name].weight, rtol=0, atol=0)


def test_collection_with_torchrec_keyed_jagged_tensor():
    pytest.importorskip("torchrec")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchrec import EmbeddingBagCollection as TorchRecEBC
        from torchrec import EmbeddingBagConfig, PoolingType
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

    rng = np.random.default_rng(11)
    tr_configs = [EmbeddingBagConfig(name=c.name, num_embeddings=c.num_embeddings, embedding_dim=c.embedding_dim,
                                     feature_names=list(c.feature_names),
                                     pooling=PoolingType.SUM if c.pooling == "sum" else PoolingType.MEAN)
                  for c in CONFIGS]
    ebc = et.EmbeddingBagCollection(tr_configs)
    ref = TorchRecEBC(tables=tr_configs)
    ref.load_state_dict({k: v for k, v in ebc.state_dict().items()})
    batch = jagged(rng, 7)
    kjt = KeyedJaggedTensor(keys=batch.keys(), values=batch.values(), lengths=batch.lengths())
    out, expected = ebc(kjt), ref(kjt)
    assert isinstance(out, KeyedTensor) and out.keys() == expected.keys()
    torch.testing.assert_close(out.values(), expected.values())
    out.values().sum().backward()
    expected.values().sum().backward()
    torch.testing.assert_close(ebc.embedding_bags["products"].weight.grad, ref.embedding_bags["products"].weight.grad)


def test_collection_int32_batch():
    rng = np.random.default_rng(12)
    ebc = et.EmbeddingBagCollection(CONFIGS)
    batch = jagged(rng, 6)
    narrow = et.JaggedBatch(batch.keys(), batch.values().int(), lengths=batch.lengths().int())
    torch.testing.assert_close(ebc(narrow).values(), ebc(batch).values(), rtol=0, atol=0)
