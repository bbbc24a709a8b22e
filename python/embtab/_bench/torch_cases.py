"""embtab.torch against PyTorch and FBGEMM on the embedding part of a DLRM-style click model
(examples/dlrm_torch.py): many tables of different sizes, Zipf-distributed ids, sum pooling.

- ``torch_ebc_train_step``: one training step of the embedding layer (forward, backward with a
  given output gradient, row-wise Adagrad update): embtab.torch.EmbeddingBagCollection with the
  fused RowWiseAdagrad; FBGEMM's CPU table-batched embeddings (``SplitTableBatchedEmbeddingBagsCodegen``,
  ``EXACT_ROWWISE_ADAGRAD``, fused in backward) as the baseline where ``fbgemm-gpu-cpu`` is
  installed; and torch's own path as the peer: one ``nn.EmbeddingBag(sparse=True)`` per table and
  ``torch.optim.Adagrad`` on the sparse gradients.
- ``torch_ebc_forward``: the pooled lookup alone (no autograd): embtab's one multi-table call,
  FBGEMM's forward, and torch's ``embedding_bag`` per table.
- ``torch_ebc_small_call``: a training step at 256 samples and 26 features, where the cost of a
  call (Python, dispatch, thread wake-ups) dominates.

Every implementation starts from the same tables (the check compares the first call's pooled
outputs); each call takes a fresh batch of ids.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple

import numpy as np

from .common import Case, Config, IdBatches, assert_close, optional_import

LR, EPS = 0.01, 1e-8


def table_sizes(config: Config, count: int) -> List[int]:
    """`count` tables from tens of rows to the config's largest, log-spaced (as click-log features)."""
    largest = config.num_rows
    return [int(x) for x in np.unique(np.geomspace(16, largest, count).astype(np.int64))]


def zipf_ids(rng: np.random.Generator, rows: int, size: int, a: float = 1.1) -> np.ndarray:
    ranks = rng.zipf(a, size * 2)
    ranks = ranks[ranks <= rows][:size]
    while ranks.size < size:
        more = rng.zipf(a, size)
        ranks = np.concatenate([ranks, more[more <= rows]])[:size]
    return ((ranks - 1) * 2654435761 + 12345) % rows


def draw_batches(rng: np.random.Generator, sizes: List[int], batch: int, bag_len: int, count: int,
                 torch: Any) -> IdBatches:
    batches = []
    for _ in range(count):
        lengths = rng.integers(1, 2 * bag_len, len(sizes) * batch)
        values = np.concatenate([zipf_ids(rng, rows, int(lengths[f * batch:(f + 1) * batch].sum()))
                                 for f, rows in enumerate(sizes)])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        batches.append({"values": torch.from_numpy(values), "offsets": torch.from_numpy(offsets),
                        "lengths": torch.from_numpy(lengths)})
    return IdBatches(batches)


class Models:
    """The three implementations of the embedding layer over the same initial tables."""

    def __init__(self, torch: Any, sizes: List[int], dim: int, batch: int, batches: IdBatches, train: bool,
                 rng: np.random.Generator) -> None:
        import embtab.optim
        import embtab.torch

        self.torch, self.sizes, self.dim, self.batch, self.batches = torch, sizes, dim, batch, batches
        self.names = [f"f{i}" for i in range(len(sizes))]
        configs = [embtab.torch.TableConfig(f"t{i}", rows, dim, [self.names[i]]) for i, rows in enumerate(sizes)]
        optimizer: Dict[str, Any] = {"optimizer": embtab.optim.RowWiseAdagrad,
                                     "optimizer_kwargs": {"lr": LR, "eps": EPS}} if train else {}
        self.ebc = embtab.torch.EmbeddingBagCollection(configs, **optimizer)
        inits = [w.detach() for w in self.ebc._weights()]
        self.bags = [torch.nn.EmbeddingBag.from_pretrained(w.clone(), freeze=not train, mode="sum", sparse=True)
                     for w in inits]
        self.torch_opt: Any = torch.optim.Adagrad([b.weight for b in self.bags], lr=LR, eps=1e-10) if train else None
        self.tbe = self._fbgemm(inits, train)
        self.grad = torch.from_numpy(rng.standard_normal((batch, dim * len(sizes))).astype(np.float32) * 1e-2)
        self.first: Dict[str, Any] = {}  # each implementation's first output (before any update): for the checks

    def recorded(self, name: str, fn: Any) -> Any:
        def call() -> Any:
            out = fn()
            self.first.setdefault(name, out)
            return out
        return call

    def check(self, name: str) -> None:
        """The first calls, from the same tables on the same batch, pooled the same values."""
        assert_close(self.first["embtab"], self.first[name], rtol=1e-5, atol=1e-6)

    def _fbgemm(self, inits: List[Any], train: bool) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns about its optional SSD modules
            if optional_import("fbgemm_gpu") is None:
                return None
            from fbgemm_gpu.split_embedding_configs import EmbOptimType
            from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
            from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
                ComputeDevice,
                SplitTableBatchedEmbeddingBagsCodegen,
            )
        specs = [(rows, self.dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for rows in self.sizes]
        tbe = SplitTableBatchedEmbeddingBagsCodegen(
            specs, optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD if train else EmbOptimType.EXACT_SGD,
            learning_rate=LR, eps=EPS, pooling_mode=PoolingMode.SUM)
        with self.torch.no_grad():
            for weight, init in zip(tbe.split_embedding_weights(), inits):
                weight.copy_(init)
        return tbe

    # One call of each implementation on the current batch; training steps return the pooled output.
    def embtab_step(self) -> Any:
        import embtab.torch

        b = self.batches
        out = self.ebc(embtab.torch.JaggedBatch(self.names, b.values, offsets=b.offsets)).values()
        out.backward(self.grad)
        return out.detach()

    def embtab_forward(self) -> Any:
        import embtab.torch

        b = self.batches
        with self.torch.no_grad():
            return self.ebc(embtab.torch.JaggedBatch(self.names, b.values, offsets=b.offsets)).values()

    def fbgemm_step(self) -> Any:
        b = self.batches
        out = self.tbe(b.values, b.offsets)
        out.backward(self.grad)
        return out.detach()

    def fbgemm_forward(self) -> Any:
        b = self.batches
        with self.torch.no_grad():
            return self.tbe(b.values, b.offsets)

    def _torch_pooled(self) -> Any:
        b, n = self.batches, self.batch
        outs = []
        for f, bag in enumerate(self.bags):
            start, end = int(b.offsets[f * n]), int(b.offsets[(f + 1) * n])
            outs.append(bag(b.values[start:end], b.offsets[f * n:(f + 1) * n] - start))
        return self.torch.cat(outs, dim=1)

    def torch_step(self) -> Any:
        self.torch_opt.zero_grad()
        out = self._torch_pooled()
        out.backward(self.grad)
        self.torch_opt.step()
        return out.detach()

    def torch_forward(self) -> Any:
        with self.torch.no_grad():
            return self._torch_pooled()


def cases(config: Config) -> List[Case]:
    torch = optional_import("torch")
    if torch is None:
        return []
    rng = np.random.default_rng(config.seed)
    dim = 64
    out: List[Case] = []
    specs: List[Tuple[str, int, int, int, bool]] = [
        # name, tables, batch, mean ids per bag, train
        ("torch_ebc_train_step", 8 if config.quick else 16, 512 if config.quick else 4096, 10, True),
        ("torch_ebc_forward", 8 if config.quick else 16, 512 if config.quick else 4096, 10, False),
        ("torch_ebc_small_call", 26, 256, 2, True),
    ]
    for name, count, batch, bag_len, train in specs:
        sizes = table_sizes(config if name != "torch_ebc_small_call" else Config(num_rows=100_000), count)
        batches = draw_batches(rng, sizes, batch, bag_len, config.id_batches, torch)
        models = Models(torch, sizes, dim, batch, batches, train, rng)
        ids_per_call = float(np.mean([int(batches._batches[i]["offsets"][-1]) for i in range(len(batches))]))
        run = models.recorded("embtab", models.embtab_step if train else models.embtab_forward)
        case = Case(
            name=name,
            sizes=f"{len(sizes)} tables {sizes[0]:,}..{sizes[-1]:,} rows x {dim} f32, batch {batch}, "
                  f"~{ids_per_call / (batch * len(sizes)):.0f} Zipf ids/bag",
            run=run,
            baseline=models.recorded("fbgemm", models.fbgemm_step if train else models.fbgemm_forward)
            if models.tbe is not None else None,
            baseline_name="fbgemm TBE",
            baseline_threaded=True,  # FBGEMM runs on torch's threads: measured at each thread count
            check=lambda a, b, models=models: models.check("fbgemm"),
            items=ids_per_call,
            item_unit="ids",
            batches=batches,
        )
        case.peers["torch"] = models.recorded("torch", models.torch_step if train else models.torch_forward)
        case.peer_checks["torch"] = lambda a, b, models=models: models.check("torch")
        out.append(case)
    return out
