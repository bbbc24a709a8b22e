"""embtab as the embedding backend of PyTorch models (``pip install "embtab[torch]"``).

Drop-in modules whose tables are embtab's (128-byte aligned, shared with the ``weight``
Parameter, never copied) and whose lookups and updates are embtab's kernels, registered as torch
operators (``torch.ops.embtab.*``) so that ``torch.compile`` traces them:

- :class:`Embedding` and :class:`EmbeddingBag`: ``torch.nn.Embedding`` / ``torch.nn.EmbeddingBag``
  with the same ``forward`` and values.
- :class:`EmbeddingBagCollection`: many tables, one call per batch of jagged features (a
  :class:`JaggedBatch`, or a torchrec ``KeyedJaggedTensor``), pooled features returned as a
  :class:`KeyedTensor`.

Three ways to train, chosen at construction:

- ``sparse=False`` (torch's default): a dense ``weight.grad``.
- ``sparse=True``: ``weight.grad`` is a coalesced ``torch.sparse_coo_tensor``, for
  ``torch.optim.SGD``, ``Adagrad`` and ``SparseAdam``.
- fused, ``optimizer=embtab.optim.X`` (``SGD``, ``Adagrad``, ``RowWiseAdagrad``, ``Adam``,
  ``AdamW``): the table is updated inside ``backward()`` in one pass over the rows of the batch,
  as FBGEMM's TBE does; ``weight.grad`` stays None; the optimizer's state is in the module's
  ``state_dict()``; ``fused_optimizer`` takes learning rate schedulers.

Tensors must be on the CPU (another device is a TypeError naming it). Importing this module
imports torch; ``import embtab`` alone never does.
"""

import torch as _torch  # noqa: F401  (a clear ImportError when torch is missing)

from . import _ops  # noqa: F401  (registers torch.ops.embtab.*)
from ._collection import EmbeddingBagCollection, JaggedBatch, KeyedTensor, TableConfig
from ._convert import follow_torch_threads
from ._modules import Embedding, EmbeddingBag, FusedOptimizer

__all__ = [
    "Embedding",
    "EmbeddingBag",
    "EmbeddingBagCollection",
    "JaggedBatch",
    "KeyedTensor",
    "TableConfig",
    "follow_torch_threads",
    "FusedOptimizer",
]
