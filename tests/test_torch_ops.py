"""torch.library.opcheck on every embtab operator, and torch.compile(fullgraph=True) of a small
model with fused embtab modules, which must train to the weights of eager mode."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import embtab.torch as et  # noqa: E402
from embtab import optim  # noqa: E402
from embtab.torch import _ops  # noqa: E402

# opcheck's schema test runs each operator under an autograd anomaly mode that warns.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def bag_args(mode, with_weights, gradient="dense", state=(), handle=-1, padding_idx=-1):
    torch.manual_seed(0)
    weight = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([1, 3, 3, 7, 0, 11, 2])
    offsets = torch.tensor([0, 2, 2, 5])
    psw = torch.randn(7, dtype=torch.float64, requires_grad=True) if with_weights else None
    return (weight, ids, offsets, psw, list(state), mode, padding_idx, False, gradient, handle)


@pytest.mark.parametrize("mode, with_weights", [("sum", False), ("sum", True), ("mean", False), ("max", False)])
@pytest.mark.parametrize("gradient", ["dense", "sparse"])
def test_opcheck_embedding_bag(mode, with_weights, gradient):
    args = bag_args(mode, with_weights, gradient, padding_idx=3)
    # The sparse gradient is a sparse tensor, which opcheck's autograd registration test cannot
    # compare; the dense one covers the same operator.
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic") + (
        ("test_autograd_registration",) if gradient == "dense" else ())
    torch.library.opcheck(torch.ops.embtab.embedding_bag.default, args, test_utils=tests)


def test_opcheck_embedding():
    weight = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.embtab.embedding.default, (weight, torch.tensor([[1, 2], [3, 3]]), [], 2, "dense", -1))


def test_opcheck_backward_operators():
    weight, ids, offsets, psw, *_ = bag_args("sum", True)
    grad_out = torch.randn(4, 5, dtype=torch.float64)
    argmax = torch.empty(0, dtype=torch.int64)
    common = (grad_out, ids, offsets, psw.detach(), argmax, "sum", 3, False)
    torch.library.opcheck(torch.ops.embtab.embedding_bag_backward.default, common + (12,))
    torch.library.opcheck(torch.ops.embtab.embedding_bag_sparse_backward.default, common + (12,))
    torch.library.opcheck(torch.ops.embtab.embedding_bag_per_sample_weights_backward.default,
                          (grad_out, weight.detach(), ids, offsets, "sum", 3, False))


def test_opcheck_fused_step():
    bag = et.EmbeddingBag(12, 5, "sum", dtype=torch.float64, optimizer=optim.Adagrad, optimizer_kwargs={"lr": 0.1})
    args = (bag.weight.detach(), bag._state(), torch.randn(4, 5, dtype=torch.float64), torch.tensor([1, 3, 3, 7, 0, 11]),
            torch.tensor([0, 2, 2, 5]), None, torch.empty(0, dtype=torch.int64), "sum", -1, False, bag._handle)
    torch.library.opcheck(torch.ops.embtab.embedding_bag_fused_step.default, args)
    # opcheck ran the step (more than once); the forward operator in fused mode as well:
    forward = (bag.weight, torch.tensor([1, 2]), torch.tensor([0]), None, bag._state(), "sum", -1, False, "fused",
               bag._handle)
    torch.library.opcheck(torch.ops.embtab.embedding_bag.default, forward,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def collection_args(gradient="dense", state=(), handle=-1, weights_grad=True):
    torch.manual_seed(1)
    weights = [torch.randn(10, 4, dtype=torch.float64, requires_grad=True),
               torch.randn(6, 3, dtype=torch.float64, requires_grad=True)]
    ids = torch.tensor([1, 9, 2, 0, 5, 5, 3, 4])  # features (t0, t1, t0), batch 2
    offsets = torch.tensor([0, 2, 3, 5, 6, 6, 8])
    psw = torch.randn(8, dtype=torch.float64, requires_grad=weights_grad)
    return (weights, ids, offsets, psw, list(state), [0, 1, 0], [False, True, False], gradient, handle)


@pytest.mark.parametrize("gradient", ["dense", "sparse"])
def test_opcheck_embedding_bag_collection(gradient):
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic") + (
        ("test_autograd_registration",) if gradient == "dense" else ())
    torch.library.opcheck(torch.ops.embtab.embedding_bag_collection.default, collection_args(gradient),
                          test_utils=tests)


def test_opcheck_collection_backward_operators():
    weights, ids, offsets, psw, _, feature_tables, mean, *_ = collection_args()
    grad_out = torch.randn(2, 11, dtype=torch.float64)
    common = (grad_out, ids, offsets, psw.detach(), feature_tables, mean)
    shapes = [10, 4, 6, 3]
    torch.library.opcheck(torch.ops.embtab.embedding_bag_collection_backward.default, common + (shapes,))
    torch.library.opcheck(torch.ops.embtab.embedding_bag_collection_sparse_backward.default, common + (shapes,))
    torch.library.opcheck(torch.ops.embtab.embedding_bag_collection_per_sample_weights_backward.default,
                          (grad_out, [w.detach() for w in weights], ids, offsets, feature_tables, mean))


def test_opcheck_collection_fused_step():
    ebc = et.EmbeddingBagCollection([et.TableConfig("a", 10, 4, ["x", "z"]), et.TableConfig("b", 6, 3, ["y"], "mean")],
                                    optimizer=optim.Adam, optimizer_kwargs={"lr": 0.1}, dtype=torch.float64)
    _weights, ids, offsets, psw, *_ = collection_args()
    # The collection's feature order is (x, z) of table a, then y of table b.
    args = ([w.detach() for w in ebc._weights()], ebc._state(), torch.randn(2, 11, dtype=torch.float64), ids, offsets,
            psw.detach(), [0, 0, 1], [False, False, True], ebc._handle)
    torch.library.opcheck(torch.ops.embtab.embedding_bag_collection_fused_step.default, args)
    forward = (ebc._weights(), ids, offsets, None, ebc._state(), [0, 0, 1], [False, False, True], "fused", ebc._handle)
    torch.library.opcheck(torch.ops.embtab.embedding_bag_collection.default, forward,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


CHECKED = {"embedding_bag", "embedding", "embedding_bag_backward", "embedding_bag_sparse_backward",
           "embedding_bag_per_sample_weights_backward", "embedding_bag_fused_step", "embedding_bag_collection",
           "embedding_bag_collection_backward", "embedding_bag_collection_sparse_backward",
           "embedding_bag_collection_per_sample_weights_backward", "embedding_bag_collection_fused_step"}


def test_every_operator_is_checked():
    assert set(_ops.OPERATORS) == CHECKED
    for name in CHECKED:
        assert hasattr(torch.ops.embtab, name)


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.bag = et.EmbeddingBag(50, 8, "sum", optimizer=optim.RowWiseAdagrad, optimizer_kwargs={"lr": 0.1})
        self.emb = et.Embedding(20, 8, optimizer=optim.Adam, optimizer_kwargs={"lr": 0.01})
        self.ebc = et.EmbeddingBagCollection([et.TableConfig("t", 30, 4, ["x", "y"], "mean")],
                                             optimizer=optim.AdamW, optimizer_kwargs={"lr": 0.01})
        self.top = torch.nn.Linear(24, 1)

    def forward(self, ids, offsets, user):
        both = torch.cat([ids, ids.flip(0)]) % 30  # features x and y: 8 bags of 3 ids each
        pooled = self.ebc(et.JaggedBatch(["x", "y"], both, offsets=torch.arange(0, 49, 3)))
        x = torch.cat([self.bag(ids, offsets), self.emb(user), pooled.values()], dim=1)
        return self.top(torch.relu(x)).squeeze(1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inductor imports deprecated torch.jit names
def test_compile_fullgraph_trains_like_eager():
    eager, compiled_model = TinyModel(), TinyModel()
    compiled = torch.compile(compiled_model, fullgraph=True)
    rng = np.random.default_rng(0)
    for model in (eager, compiled_model):
        model.opt = torch.optim.SGD(model.top.parameters(), lr=0.05)
    for _step in range(4):
        ids = torch.from_numpy(rng.integers(0, 50, 24))
        offsets = torch.arange(0, 24, 3)
        user = torch.from_numpy(rng.integers(0, 20, 8))
        label = torch.from_numpy(rng.integers(0, 2, 8)).float()
        for model, fn in ((eager, eager), (compiled_model, compiled)):
            model.opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(fn(ids, offsets, user), label)
            loss.backward()
            model.opt.step()
    for name, value in eager.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(compiled_model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert compiled_model.emb.fused_optimizer.optimizer.state["step"] == 4
    assert not torch.equal(eager.bag.weight, TinyModel().bag.weight)  # it did train
