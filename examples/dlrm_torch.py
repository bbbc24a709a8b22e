"""A DLRM-style click model in PyTorch with embtab's EmbeddingBagCollection as its embedding layer.

The model (Naumov et al., "Deep Learning Recommendation Model for Personalization and
Recommendation Systems", 2019): dense features go through a bottom MLP; each categorical feature
looks up and sum-pools its ids in its own table (tables of very different sizes, as click logs
have); the pairwise dot products of all these vectors, with the bottom MLP's output, feed a top MLP
that predicts the click. Ids follow a Zipf distribution, as the values of real categorical features
do (a few are very common, most are rare), and clicks come from a hidden logistic model of the
same features, so there is something to learn.

The embedding tables train with a fused row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD): each
table is updated inside ``loss.backward()``, only at the rows of the batch; the MLPs train with
torch's Adagrad. ``--backend torch`` trains the same model with ``torch.nn.EmbeddingBag(sparse=True)``
tables and ``torch.optim.Adagrad`` on their sparse gradients, for comparison.

Usage::

    python examples/dlrm_torch.py                       # embtab, default sizes
    python examples/dlrm_torch.py --backend torch       # torch.nn.EmbeddingBag(sparse=True)
    python examples/dlrm_torch.py --steps 50 --batch 256 --scale 0.01   # a quick run

Prints the training loss every ``--log-every`` steps, then ``steps/s`` (the training loop only)
and the final loss on a held-out batch.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

# (name, rows) of the categorical features: sizes in the spirit of the Criteo display-ads data set,
# from a few categories to millions of ids.
FEATURES: List[Tuple[str, int]] = [
    ("site", 1_000), ("app", 50_000), ("device", 2_000_000), ("user", 1_000_000), ("ad", 200_000),
    ("advertiser", 20_000), ("campaign", 100_000), ("hour", 24), ("weekday", 7), ("country", 200),
    ("region", 5_000), ("os", 50), ("browser", 100), ("query", 500_000), ("category", 2_000),
    ("position", 10),
]
DENSE = 13


def zipf_ids(rng: np.random.Generator, rows: int, size: int, a: float) -> np.ndarray:
    """Ids in [0, rows) with P(rank k) proportional to 1 / k**a, ranks scattered over the table."""
    ranks = rng.zipf(a, size) - 1
    ranks = ranks[ranks < rows] if rows < 2**62 else ranks
    while ranks.size < size:  # redraw the ones past the table's end
        more = rng.zipf(a, size) - 1
        ranks = np.concatenate([ranks, more[more < rows]])[:size]
    return (ranks * 2654435761 + 12345) % rows  # a fixed scatter: popular ids are not rows 0, 1, 2...


class ClickData:
    """Batches of (dense features, categorical ids, clicks) from a hidden logistic model."""

    def __init__(self, features: List[Tuple[str, int]], seed: int, zipf: float, ids_per_feature: int) -> None:
        self.features, self.zipf, self.ids_per_feature = features, zipf, ids_per_feature
        self.rng = np.random.default_rng(seed)
        hidden = np.random.default_rng(seed + 1)
        # A hidden click propensity per id (hashed, so no table of millions is needed) and per dense feature.
        self.id_salt = hidden.integers(1, 2**31, len(features))
        self.dense_weight = hidden.normal(0, 0.5, DENSE)

    def _propensity(self, f: int, ids: np.ndarray) -> np.ndarray:
        h = (ids.astype(np.uint64) * np.uint64(self.id_salt[f])) % np.uint64(1_000_003)
        return (h.astype(np.float64) / 1_000_003 - 0.5) * 2.0

    def batch(self, size: int) -> Tuple[torch.Tensor, List[np.ndarray], List[np.ndarray], torch.Tensor]:
        dense = self.rng.standard_normal((size, DENSE)).astype(np.float32)
        logit = dense @ self.dense_weight
        ids, lengths = [], []
        for f, (_, rows) in enumerate(self.features):
            n = self.rng.integers(1, 2 * self.ids_per_feature, size)  # 1 .. 2k-1 ids per bag
            values = zipf_ids(self.rng, rows, int(n.sum()), self.zipf)
            ids.append(values)
            lengths.append(n)
            bag_of = np.repeat(np.arange(size), n)
            logit += np.bincount(bag_of, self._propensity(f, values), size) / n
        clicks = self.rng.random(size) < 1 / (1 + np.exp(-logit))
        return torch.from_numpy(dense), ids, lengths, torch.from_numpy(clicks.astype(np.float32))


def mlp(sizes: List[int], last_activation: bool) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    def __init__(self, features: List[Tuple[str, int]], dim: int, backend: str, lr: float) -> None:
        super().__init__()
        self.backend, self.names = backend, [name for name, _ in features]
        self.bottom = mlp([DENSE, 64, dim], last_activation=True)
        n = len(features) + 1
        self.top = mlp([dim + n * (n - 1) // 2, 128, 64, 1], last_activation=False)
        if backend == "embtab":
            import embtab.optim
            import embtab.torch

            tables = [embtab.torch.TableConfig(name, rows, dim, [name], pooling="sum") for name, rows in features]
            self.embeddings = embtab.torch.EmbeddingBagCollection(
                tables, optimizer=embtab.optim.RowWiseAdagrad, optimizer_kwargs={"lr": lr})
        else:
            self.tables = nn.ModuleDict({name: nn.EmbeddingBag(rows, dim, mode="sum", sparse=True)
                                         for name, rows in features})
            for table in self.tables.values():  # TorchRec's initialisation, as the embtab tables get
                nn.init.uniform_(table.weight, -(1 / table.num_embeddings) ** 0.5, (1 / table.num_embeddings) ** 0.5)

    def embed(self, ids: List[torch.Tensor], lengths: List[torch.Tensor]) -> List[torch.Tensor]:
        if self.backend == "embtab":
            import embtab.torch

            batch = embtab.torch.JaggedBatch(self.names, torch.cat(ids), lengths=torch.cat(lengths))
            pooled = self.embeddings(batch)
            return [pooled[name] for name in self.names]
        out = []
        for name, values, n in zip(self.names, ids, lengths):
            offsets = torch.zeros(n.numel(), dtype=torch.int64)
            torch.cumsum(n[:-1], 0, out=offsets[1:])
            out.append(self.tables[name](values, offsets))
        return out

    def forward(self, dense: torch.Tensor, ids: List[torch.Tensor], lengths: List[torch.Tensor]) -> torch.Tensor:
        x = self.bottom(dense)
        vectors = torch.stack([x] + self.embed(ids, lengths), dim=1)  # (batch, features + 1, dim)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))
        i, j = torch.triu_indices(vectors.shape[1], vectors.shape[1], offset=1)
        return self.top(torch.cat([x, dots[:, i, j]], dim=1)).squeeze(1)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["embtab", "torch"], default="embtab")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ids-per-feature", type=int, default=4, help="mean ids per bag (1 .. 2k-1)")
    parser.add_argument("--zipf", type=float, default=1.2, help="Zipf exponent of the ids (> 1)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every table's number of rows")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--embtab-threads", type=int, default=0,
                        help="embtab's kernels' threads (0: as many as torch's, embtab.torch's default)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.embtab_threads and args.backend == "embtab":
        import embtab
        import embtab.torch

        embtab.torch.follow_torch_threads(False)
        embtab.set_num_threads(args.embtab_threads)
    features = [(name, max(2, int(rows * args.scale))) for name, rows in FEATURES]
    data = ClickData(features, args.seed, args.zipf, args.ids_per_feature)
    model = DLRM(features, args.dim, args.backend, args.lr)
    mlp_params = list(model.bottom.parameters()) + list(model.top.parameters())
    optimizers = [torch.optim.Adagrad(mlp_params, lr=args.lr)]
    if args.backend == "torch":
        optimizers.append(torch.optim.Adagrad(model.tables.parameters(), lr=args.lr))
    loss_fn = nn.BCEWithLogitsLoss()
    rows = sum(r for _, r in features)
    print(f"DLRM, {len(features)} categorical features ({rows:,} rows of dim {args.dim}), backend {args.backend}, "
          f"batch {args.batch}, {torch.get_num_threads()} torch threads")

    held_out = data.batch(4 * args.batch)
    elapsed, running = 0.0, []
    for step in range(1, args.steps + 1):
        dense, ids, lengths, clicks = data.batch(args.batch)  # drawn outside the timed part
        t_ids = [torch.from_numpy(v) for v in ids]
        t_lengths = [torch.from_numpy(n) for n in lengths]
        start = time.perf_counter()
        for opt in optimizers:
            opt.zero_grad()
        loss = loss_fn(model(dense, t_ids, t_lengths), clicks)
        loss.backward()  # embtab: the tables are updated here
        for opt in optimizers:
            opt.step()
        elapsed += time.perf_counter() - start
        running.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step:5d}  loss {np.mean(running):.4f}")
            running = []
    with torch.no_grad():
        dense, ids, lengths, clicks = held_out
        test_loss = loss_fn(model(dense, [torch.from_numpy(v) for v in ids], [torch.from_numpy(n) for n in lengths]),
                            clicks).item()
    print(f"steps/s: {args.steps / elapsed:.1f}")
    print(f"held-out loss: {test_loss:.4f} (a constant guess of the click rate: "
          f"{float(nn.functional.binary_cross_entropy(torch.full_like(clicks, clicks.mean().item()), clicks)):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
