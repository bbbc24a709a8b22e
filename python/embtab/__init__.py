"""embtab: fast, exact embedding tables for Python.

C++ kernels (multithreaded, with the SIMD path chosen at run time) behind a small numpy API:
row lookups and pooled bag lookups, sparse gradients and fused sparse optimizers (embtab.optim),
the hashing trick and fastText subwords, dynamic (hash-keyed) tables, embedding layers, similarity search and checkpoints.
"""

from __future__ import annotations

import os as _os

from . import _core, layers, optim
from ._checkpoint import CheckpointError, load, save
from ._dynamic import DynamicEmbeddingBag, DynamicTable
from ._hashing import fasttext_hash, feature_hash, hash_buckets, murmur3_32, murmur3_128, subword_ngrams
from ._lookup import gather, gather_bags, gather_bags_multi
from ._lowp import BFloat16Table, QuantizedTable, quantize_rows, to_bfloat16
from ._runtime import (
    available_simd_paths,
    get_buffer_pool_limit,
    get_num_threads,
    get_spin_time,
    release_memory,
    set_buffer_pool_limit,
    set_num_threads,
    set_simd_path,
    set_spin_time,
    simd_path,
)
from ._similarity import most_similar
from ._sparse import coalesce, gather_bags_grad, scatter_add
from .layers import Embedding, EmbeddingBag, HashEmbedding, SubwordEmbedding

__version__: str = _core.__version__

# EMBTAB_SIMD=scalar|avx2|avx512 forces a path; asking for one this CPU cannot run is an error.
if _os.environ.get("EMBTAB_SIMD"):
    set_simd_path(_os.environ["EMBTAB_SIMD"])
# EMBTAB_POOL_LIMIT=<bytes> caps the memory kept for reusing output buffers (0: none).
if _os.environ.get("EMBTAB_POOL_LIMIT"):
    try:
        _pool_limit = int(_os.environ["EMBTAB_POOL_LIMIT"])
    except ValueError:
        raise ValueError(f"EMBTAB_POOL_LIMIT must be a number of bytes, got {_os.environ['EMBTAB_POOL_LIMIT']!r}") from None
    set_buffer_pool_limit(_pool_limit)

__all__ = [
    "__version__",
    "available_simd_paths",
    "BFloat16Table",
    "CheckpointError",
    "coalesce",
    "DynamicEmbeddingBag",
    "DynamicTable",
    "Embedding",
    "EmbeddingBag",
    "fasttext_hash",
    "feature_hash",
    "gather",
    "gather_bags",
    "gather_bags_multi",
    "gather_bags_grad",
    "get_buffer_pool_limit",
    "get_num_threads",
    "get_spin_time",
    "hash_buckets",
    "HashEmbedding",
    "layers",
    "load",
    "most_similar",
    "murmur3_128",
    "murmur3_32",
    "optim",
    "quantize_rows",
    "QuantizedTable",
    "release_memory",
    "save",
    "scatter_add",
    "set_buffer_pool_limit",
    "set_num_threads",
    "set_simd_path",
    "set_spin_time",
    "simd_path",
    "subword_ngrams",
    "SubwordEmbedding",
    "to_bfloat16",
]
