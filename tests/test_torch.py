"""embtab.torch's Embedding and EmbeddingBag against torch.nn.Embedding / torch.nn.EmbeddingBag:
forward and backward values, the three ways to train, gradcheck, checkpoints and bad input."""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

# torch's own sparse optimizers build sparse tensors without saying whether to check them.
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled:UserWarning")

import embtab  # noqa: E402
import embtab.torch as et  # noqa: E402
from embtab import optim  # noqa: E402

DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}


def pair_bag(num, dim, mode, dtype=torch.float32, seed=0, **kwargs):
    """An embtab.torch.EmbeddingBag and an nn.EmbeddingBag with the same rows."""
    torch.manual_seed(seed)
    ours = et.EmbeddingBag(num, dim, mode, dtype=dtype, **kwargs)
    kwargs.pop("optimizer", None), kwargs.pop("optimizer_kwargs", None)
    ref = nn.EmbeddingBag(num, dim, mode=mode, dtype=dtype, **kwargs)
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
    return ours, ref


def csr_batch(rng, num, num_bags, max_len, dtype=torch.int64, empty_every=4):
    lengths = rng.integers(0, max_len + 1, num_bags)
    lengths[::empty_every] = 0  # empty bags
    ids = torch.from_numpy(rng.integers(0, num, int(lengths.sum()))).to(dtype)
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]])).to(dtype)
    return ids, offsets


# ---------------------------------------------------------------------------------------------
# The module itself


def test_import_embtab_does_not_import_torch():
    code = "import sys, embtab, embtab.optim, embtab.layers; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_weight_is_an_aligned_table_shared_with_embtab():
    emb = et.EmbeddingBag(100, 32, "sum")
    assert isinstance(emb.weight, nn.Parameter)
    assert emb.weight.data_ptr() % 128 == 0 and emb.weight.is_contiguous()
    # embtab's numpy API reads the same memory (DLPack, no copy): a change shows through.
    with torch.no_grad():
        emb.weight[3].fill_(2.5)
    np.testing.assert_array_equal(embtab.gather(emb.weight.detach(), np.array([3]))[0], np.full(32, 2.5, np.float32))


def test_initialisation_follows_torch():
    torch.manual_seed(3)
    ours = et.EmbeddingBag(50, 8, "sum", padding_idx=4)
    torch.manual_seed(3)
    ref = nn.EmbeddingBag(50, 8, mode="sum", padding_idx=4)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    assert ours.weight.dtype == torch.get_default_dtype()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 3])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_bag_forward_backward_match_torch(dtype, index_dtype, mode, padding_idx, include_last_offset):
    rng = np.random.default_rng(0)
    ours, ref = pair_bag(20, 7, mode, dtype, padding_idx=padding_idx, include_last_offset=include_last_offset)
    ids, offsets = csr_batch(rng, 20, 12, 6, index_dtype)
    ids[::5] = 3  # padding entries, and repeated ids
    if include_last_offset:
        offsets = torch.cat([offsets, torch.tensor([len(ids)], dtype=index_dtype)])
    psw = None
    if mode == "sum":
        psw = torch.from_numpy(rng.standard_normal(len(ids))).to(dtype)
    out, expected = ours(ids, offsets, psw), ref(ids, offsets, psw)
    torch.testing.assert_close(out, expected, **tol(dtype))
    grad_out = torch.from_numpy(rng.standard_normal(tuple(out.shape))).to(dtype)
    out.backward(grad_out)
    expected.backward(grad_out)
    assert ours.weight.grad.layout == torch.strided
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **tol(dtype))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bag_2d_input(mode):
    rng = np.random.default_rng(1)
    ours, ref = pair_bag(30, 5, mode, padding_idx=0)
    ids = torch.from_numpy(rng.integers(0, 30, (8, 4)))
    ids[0] = 0  # a bag of padding only: zeros
    out, expected = ours(ids), ref(ids)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)


def test_bag_include_last_offset_must_end_at_len_input():
    """torch documents offsets[-1] == len(input) with include_last_offset and is inconsistent
    otherwise (float32 bags drop the ids after offsets[-1], float64 or weighted ones keep them):
    embtab refuses such offsets."""
    bag = et.EmbeddingBag(10, 3, "sum", include_last_offset=True)
    with pytest.raises(ValueError, match=r"offsets\[-1\] must equal len\(ids\) = 4, got 3"):
        bag(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 3]))


def test_per_sample_weights_gradient():
    rng = np.random.default_rng(2)
    ours, ref = pair_bag(15, 4, "sum", torch.float64, padding_idx=2)
    ids, offsets = csr_batch(rng, 15, 6, 5)
    ids[::3] = 2
    psw = torch.from_numpy(rng.standard_normal(len(ids))).requires_grad_()
    psw_ref = psw.detach().clone().requires_grad_()
    ours(ids, offsets, psw).sum().backward()
    ref(ids, offsets, psw_ref).sum().backward()
    torch.testing.assert_close(psw.grad, psw_ref.grad)


def test_per_sample_weights_with_mean():
    """torch has no weighted mean; embtab's is the weighted sum over the bag's (non-padding) count."""
    bag = et.EmbeddingBag(6, 3, "mean", dtype=torch.float64, padding_idx=0)
    ids, offsets = torch.tensor([1, 4, 0, 4, 5]), torch.tensor([0, 4])
    psw = torch.tensor([0.5, 2.0, 7.0, -1.0, 3.0], dtype=torch.float64, requires_grad=True)
    out = bag(ids, offsets, psw)
    rows = bag.weight.detach()
    torch.testing.assert_close(out[0], (0.5 * rows[1] + 2.0 * rows[4] - rows[4]) / 3)
    out.sum().backward()
    expected = torch.stack([rows[1].sum() / 3, rows[4].sum() / 3, torch.tensor(0.0, dtype=torch.float64),
                            rows[4].sum() / 3, rows[5].sum()])
    torch.testing.assert_close(psw.grad, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("padding_idx", [None, 1])
def test_embedding_matches_torch(dtype, index_dtype, padding_idx):
    rng = np.random.default_rng(3)
    torch.manual_seed(0)
    ours = et.Embedding(25, 6, padding_idx, dtype=dtype)
    torch.manual_seed(0)
    ref = nn.Embedding(25, 6, padding_idx, dtype=dtype)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    ids = torch.from_numpy(rng.integers(0, 25, (4, 5))).to(index_dtype)
    ids[0, :2] = 1
    out, expected = ours(ids), ref(ids)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad_out = torch.from_numpy(rng.standard_normal(tuple(out.shape))).to(dtype)
    out.backward(grad_out)
    expected.backward(grad_out)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **tol(dtype))


def test_gradcheck_float64():
    rng = np.random.default_rng(4)
    ids, offsets = csr_batch(rng, 9, 5, 4)
    psw = torch.from_numpy(rng.standard_normal(len(ids))).requires_grad_()
    for mode in ("sum", "mean", "max"):
        emb = et.EmbeddingBag(9, 3, mode, dtype=torch.float64, padding_idx=2)
        weights = psw if mode == "sum" else None
        assert torch.autograd.gradcheck(lambda w, p: torch.ops.embtab.embedding_bag(
            w, ids, offsets, p, [], mode, 2, False, "dense", -1)[0], (emb.weight, weights))  # noqa: B023 -- called right here
    emb = et.Embedding(9, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w: torch.ops.embtab.embedding(w, ids.reshape(-1, 1), [], -1, "dense", -1),
                                    (emb.weight,))


def test_from_pretrained():
    rows = torch.randn(6, 4)
    emb = et.EmbeddingBag.from_pretrained(rows, mode="sum")
    torch.testing.assert_close(emb.weight, rows, rtol=0, atol=0)
    assert not emb.weight.requires_grad and emb.weight.data_ptr() % 128 == 0
    emb2 = et.Embedding.from_pretrained(rows, freeze=False, padding_idx=0)
    assert emb2.weight.requires_grad and emb2.padding_idx == 0
    torch.testing.assert_close(emb2(torch.tensor([0, 5])), rows[[0, 5]])


def test_repr():
    assert repr(et.EmbeddingBag(10, 4, "sum", padding_idx=1)) == "EmbeddingBag(10, 4, mode='sum', padding_idx=1)"
    assert "optimizer=RowWiseAdagrad" in repr(et.Embedding(3, 2, optimizer=optim.RowWiseAdagrad,
                                                           optimizer_kwargs={"lr": 0.1}))


# ---------------------------------------------------------------------------------------------
# sparse=True: torch's sparse optimizers on the coalesced gradient


@pytest.mark.parametrize("name, lr", [("SGD", 0.1), ("Adagrad", 0.1), ("SparseAdam", 0.05)])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_sparse_grad_with_torch_optimizers(name, lr, mode):
    """Against nn.EmbeddingBag(sparse=True); torch has no sparse max, so there against its dense
    gradient (SGD and Adagrad leave rows with a zero gradient alone, as with a sparse one)."""
    if mode == "max" and name == "SparseAdam":
        pytest.skip("torch has no sparse gradient for mode='max' (SparseAdam needs one)")
    make_opt = lambda params: getattr(torch.optim, name)(params, lr=lr)  # noqa: E731
    rng = np.random.default_rng(5)
    ours, ref = pair_bag(40, 8, mode, sparse=True)
    ref.sparse = mode != "max"
    opt, ref_opt = make_opt(ours.parameters()), make_opt(ref.parameters())
    for _ in range(4):
        ids, offsets = csr_batch(rng, 40, 16, 5)
        target = torch.from_numpy(rng.standard_normal((16, 8)).astype(np.float32))
        for module, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            ((module(ids, offsets) - target) ** 2).sum().backward()
        assert ours.weight.grad.is_sparse and ours.weight.grad.is_coalesced()
        expected = ref.weight.grad.to_dense() if ref.weight.grad.is_sparse else ref.weight.grad
        torch.testing.assert_close(ours.weight.grad.to_dense(), expected, rtol=1e-5, atol=1e-6)
        opt.step()
        ref_opt.step()
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-5, atol=1e-5)


def test_sparse_embedding_grad():
    rng = np.random.default_rng(6)
    torch.manual_seed(0)
    ours = et.Embedding(30, 4, padding_idx=0, sparse=True)
    ref = nn.Embedding(30, 4, padding_idx=0, sparse=True)
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
    ids = torch.from_numpy(rng.integers(0, 30, (6, 3)))
    ids[0] = 0
    ours(ids).sum().backward()
    ref(ids).sum().backward()
    torch.testing.assert_close(ours.weight.grad.to_dense(), ref.weight.grad.to_dense())


# ---------------------------------------------------------------------------------------------
# Fused optimizers


def run_fused_vs_torch(make_fused, make_torch, mode, steps=4, dtype=torch.float32, num=40, dim=8, seed=7,
                       grad_fn=None):
    """Trains an embtab.torch bag in fused mode and an nn.EmbeddingBag with a torch optimizer
    (dense gradient) on the same batches; returns both modules and the rows touched."""
    rng = np.random.default_rng(seed)
    ours, ref = pair_bag(num, dim, mode, dtype, optimizer=make_fused[0], optimizer_kwargs=make_fused[1])
    ref_opt = make_torch(ref.parameters())
    touched = set()
    for _ in range(steps):
        ids, offsets = csr_batch(rng, num, 16, 5)
        touched.update(ids.tolist())
        target = torch.from_numpy(rng.standard_normal((16, dim))).to(dtype)
        ((ours(ids, offsets) - target) ** 2).sum().backward()
        ref_opt.zero_grad()
        ((ref(ids, offsets) - target) ** 2).sum().backward()
        ref_opt.step()
        assert ours.weight.grad is None
    return ours, ref, sorted(touched)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_fused_matches_torch_optimizer(mode, name):
    fused = (getattr(optim, name), {"lr": 0.1})
    ours, ref, _ = run_fused_vs_torch(fused, lambda p: getattr(torch.optim, name)(p, lr=0.1), mode)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_fused_adam_matches_sparse_adam(mode):
    rng = np.random.default_rng(8)
    ours, ref = pair_bag(40, 8, mode, optimizer=optim.Adam, optimizer_kwargs={"lr": 0.05}, sparse=False)
    ref_sparse = nn.EmbeddingBag(40, 8, mode=mode, sparse=True)
    with torch.no_grad():
        ref_sparse.weight.copy_(ref.weight)
    ref_opt = torch.optim.SparseAdam(ref_sparse.parameters(), lr=0.05)
    for _ in range(4):
        ids, offsets = csr_batch(rng, 40, 16, 5)
        ours(ids, offsets).square().sum().backward()
        ref_opt.zero_grad()
        ref_sparse(ids, offsets).square().sum().backward()
        ref_opt.step()
    torch.testing.assert_close(ours.weight, ref_sparse.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.optimizer_state.exp_avg, ref_opt.state[ref_sparse.weight]["exp_avg"])
    assert ours.fused_optimizer.optimizer.state["step"] == 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_adamw_matches_torch_adamw_on_touched_rows(dtype):
    """One step of AdamW from zero moments moves exactly the rows with a gradient (dense AdamW
    also decays the others; the lazy one leaves them): compare the touched rows step by step,
    each step from the same starting table."""
    rng = np.random.default_rng(9)
    ours, ref = pair_bag(30, 8, "sum", dtype, optimizer=optim.AdamW,
                         optimizer_kwargs={"lr": 0.01, "weight_decay": 0.1, "betas": (0.8, 0.99)})
    for step in range(1, 4):
        ids, offsets = csr_batch(rng, 30, 10, 4)
        rows = torch.unique(ids)
        before = ours.weight.detach().clone()
        # torch's AdamW on the touched rows alone, with the module's moments as its state.
        param = nn.Parameter(before[rows].clone())
        topt = torch.optim.AdamW([param], lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))
        topt.state[param] = {"step": torch.tensor(float(step - 1)),
                             "exp_avg": ours.optimizer_state.exp_avg[rows].clone(),
                             "exp_avg_sq": ours.optimizer_state.exp_avg_sq[rows].clone()}
        out = ours(ids, offsets)
        grad_out = torch.from_numpy(rng.standard_normal(tuple(out.shape))).to(dtype)
        out.backward(grad_out)
        ref.weight.grad = None
        ref(ids, offsets).backward(grad_out)
        param.grad = ref.weight.grad[rows]
        topt.step()
        torch.testing.assert_close(ours.weight[rows], param.detach(), **tol(dtype))
        untouched = torch.ones(30, dtype=torch.bool)
        untouched[rows] = False
        torch.testing.assert_close(ours.weight[untouched], before[untouched], rtol=0, atol=0)


def test_fused_embedding_matches_torch_sgd():
    rng = np.random.default_rng(10)
    torch.manual_seed(0)
    ours = et.Embedding(20, 4, padding_idx=0, optimizer=optim.Adagrad, optimizer_kwargs={"lr": 0.2})
    ref = nn.Embedding(20, 4, padding_idx=0)
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
    ref_opt = torch.optim.Adagrad(ref.parameters(), lr=0.2)
    for _ in range(3):
        ids = torch.from_numpy(rng.integers(0, 20, (5, 3)))
        ours(ids).square().sum().backward()
        ref_opt.zero_grad()
        ref(ids).square().sum().backward()
        ref_opt.step()
    torch.testing.assert_close(ours.weight, ref.weight)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fbgemm_gpu warns about its optional SSD modules
def test_fused_rowwise_adagrad_matches_fbgemm():
    pytest.importorskip("fbgemm_gpu")
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    rng = np.random.default_rng(11)
    num, dim = 50, 16
    ours = et.EmbeddingBag(num, dim, "sum", optimizer=optim.RowWiseAdagrad,
                           optimizer_kwargs={"lr": 0.05, "eps": 1e-8})
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(num, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.05, eps=1e-8, pooling_mode=PoolingMode.SUM)
    with torch.no_grad():
        tbe.split_embedding_weights()[0].copy_(ours.weight)
    for _ in range(4):
        ids, offsets = csr_batch(rng, num, 12, 5)
        target = torch.from_numpy(rng.standard_normal((12, dim)).astype(np.float32))
        ((ours(ids, offsets) - target) ** 2).sum().backward()
        full_offsets = torch.cat([offsets, torch.tensor([len(ids)])])
        ((tbe(ids, full_offsets) - target) ** 2).sum().backward()
    torch.testing.assert_close(ours.weight, tbe.split_embedding_weights()[0], rtol=1e-5, atol=1e-6)


def test_fused_lr_schedule():
    """The learning rate is read at every backward: a scheduler on fused_optimizer changes it."""
    rng = np.random.default_rng(12)
    ours, ref = pair_bag(20, 4, "sum", optimizer=optim.SGD, optimizer_kwargs={"lr": 0.5})
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(ours.fused_optimizer, step_size=1, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=0.5)
    for _ in range(3):
        ids, offsets = csr_batch(rng, 20, 6, 3)
        ours(ids, offsets).sum().backward()
        ours.fused_optimizer.step()
        ref_opt.zero_grad()
        ref(ids, offsets).sum().backward()
        ref_opt.step()
        sched.step()
        ref_sched.step()
    assert ours.fused_optimizer.param_groups[0]["lr"] == pytest.approx(0.0625)
    torch.testing.assert_close(ours.weight, ref.weight)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_state_dict_round_trip_with_torch_save():
    rng = np.random.default_rng(13)
    a = et.EmbeddingBag(30, 4, "sum", optimizer=optim.Adam, optimizer_kwargs={"lr": 0.1})
    for _ in range(2):
        ids, offsets = csr_batch(rng, 30, 5, 3)
        a(ids, offsets).sum().backward()
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    assert {"weight", "optimizer_state.exp_avg", "optimizer_state.exp_avg_sq"} <= set(a.state_dict())
    b = et.EmbeddingBag(30, 4, "sum", optimizer=optim.Adam, optimizer_kwargs={"lr": 0.7})
    ptr = b.weight.data_ptr()
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer))
    assert b.weight.data_ptr() == ptr  # loaded into the aligned table in place
    assert b.fused_optimizer.param_groups[0]["lr"] == 0.1 and b.fused_optimizer.optimizer.state["step"] == 2
    ids, offsets = csr_batch(rng, 30, 5, 3)
    for m in (a, b):
        m(ids, offsets).sum().backward()
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


def test_embtab_save_load_modules(tmp_path):
    rng = np.random.default_rng(14)
    bag = et.EmbeddingBag(30, 4, "mean", padding_idx=3, optimizer=optim.RowWiseAdagrad,
                          optimizer_kwargs={"lr": 0.1})
    emb = et.Embedding(10, 2, sparse=True)
    layer = embtab.EmbeddingBag(5, 2)  # a numpy layer of the same class name, saved beside them
    ids, offsets = csr_batch(rng, 30, 5, 3)
    bag(ids, offsets).sum().backward()
    embtab.save(tmp_path / "ck", bag=bag, emb=emb, layer=layer)
    loaded = embtab.load(tmp_path / "ck")
    assert type(loaded["bag"]) is et.EmbeddingBag and type(loaded["emb"]) is et.Embedding
    assert type(loaded["layer"]) is embtab.EmbeddingBag
    new = loaded["bag"]
    assert new.padding_idx == 3 and new.mode == "mean" and new.weight.data_ptr() % 128 == 0
    torch.testing.assert_close(new.weight, bag.weight, rtol=0, atol=0)
    torch.testing.assert_close(new.optimizer_state.sum, bag.optimizer_state.sum, rtol=0, atol=0)
    assert loaded["emb"].sparse
    for m in (bag, new):
        m(ids, offsets).sum().backward()
    torch.testing.assert_close(new.weight, bag.weight, rtol=0, atol=0)


def test_deepcopy_keeps_training_independently():
    bag = et.EmbeddingBag(10, 3, "sum", optimizer=optim.SGD, optimizer_kwargs={"lr": 1.0})
    twin = copy.deepcopy(bag)
    bag(torch.tensor([[1]])).sum().backward()
    assert not torch.equal(bag.weight, twin.weight)
    twin(torch.tensor([[1]])).sum().backward()
    torch.testing.assert_close(bag.weight, twin.weight)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_input():
    bag = et.EmbeddingBag(10, 3, "sum")
    with pytest.raises(TypeError, match="ids must be an integer array"):
        bag(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(TypeError, match="ids must be an integer array"):
        bag(torch.tensor([[1.0, 2.0]], requires_grad=True))
    with pytest.raises(TypeError, match="weights must have"):
        bag(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"per_sample_weights has dtype torch\.bfloat16"):
        bag(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 2, dtype=torch.bfloat16))
    with pytest.raises(IndexError, match=r"ids\[3\] = 10 is out of bounds for a table with 10 rows"):
        bag(torch.tensor([1, 2, 3, 10]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="mode must be 'sum', 'mean' or 'max'"):
        et.EmbeddingBag(10, 3, "median")(torch.tensor([[1]]))
    with pytest.raises(ValueError, match="offsets is required"):
        bag(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="device cuda"):
        et.EmbeddingBag(10, 3, device="cuda")
    with pytest.raises(TypeError, match="dtype must be"):
        et.Embedding(10, 3, dtype=torch.float16)
    with pytest.raises(NotImplementedError, match="max_norm"):
        et.Embedding(10, 3, max_norm=1.0)
    with pytest.raises(ValueError, match="choose one way"):
        et.Embedding(10, 3, sparse=True, optimizer=optim.SGD, optimizer_kwargs={"lr": 0.1})
    with pytest.raises(ValueError, match="padding_idx"):
        et.Embedding(10, 3, padding_idx=10)


def test_nothing_updated_on_error():
    bag = et.EmbeddingBag(10, 3, "sum", optimizer=optim.Adagrad, optimizer_kwargs={"lr": 0.1})
    before = bag.weight.detach().clone()
    with pytest.raises(IndexError):
        bag(torch.tensor([1, -1]), torch.tensor([0])).sum().backward()
    torch.testing.assert_close(bag.weight, before, rtol=0, atol=0)
    assert bag.fused_optimizer.optimizer.state["step"] == 0


# ---------------------------------------------------------------------------------------------
# The numpy API takes CPU arrays that export __dlpack__ (here torch tensors), without copies


def test_numpy_api_takes_dlpack_tensors():
    rng = np.random.default_rng(15)
    table = torch.from_numpy(rng.standard_normal((20, 4)).astype(np.float32))
    ids, offsets = torch.tensor([1, 5, 5, 19]), torch.tensor([0, 1, 4])
    np.testing.assert_array_equal(embtab.gather(table, ids), table.numpy()[ids.numpy()])
    out = torch.empty(2, 4)
    embtab.gather_bags(table, ids, offsets, mode="mean", out=out)  # written in place
    np.testing.assert_allclose(out.numpy(), [table[1].numpy(), table[[5, 5, 19]].numpy().mean(0)], rtol=1e-6)
    target = torch.zeros(20, 4)
    embtab.scatter_add(target, ids, torch.ones(4, 4))
    assert target[5, 0] == 2 and target[1, 0] == 1
    opt = optim.SGD(table, 1.0)  # the tensor's own memory is the optimizer's table
    before = table.clone()
    opt.step(ids[:1], torch.ones(1, 4))
    torch.testing.assert_close(table[1], before[1] - 1)
    rows, _grads = embtab.gather_bags_grad(torch.ones(2, 4), ids, offsets)
    np.testing.assert_array_equal(rows, [1, 5, 19])


class _OnDevice:
    """An array in device memory, as far as DLPack tells."""

    def __init__(self, device_type, device_id=0):
        self.device = (device_type, device_id)

    def __dlpack__(self, **kwargs):
        raise AssertionError("must not be read")

    def __dlpack_device__(self):
        return self.device


def test_numpy_api_refuses_device_arrays():
    table = np.zeros((5, 2), np.float32)
    with pytest.raises(TypeError, match="ids is on device cuda:1"):
        embtab.gather(table, _OnDevice(2, 1))
    with pytest.raises(TypeError, match="table is on device rocm:0"):
        embtab.gather_bags(_OnDevice(10), np.array([[1]]))
    with pytest.raises(TypeError, match="table is on device metal:0"):
        optim.Adagrad(_OnDevice(8), 0.1)
