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
from ._lookup import gather, gather_bags
from ._lowp import BFloat16Table, QuantizedTable, quantize_rows, to_bfloat16
from ._runtime import available_simd_paths, get_num_threads, set_num_threads, set_simd_path, simd_path
from ._similarity import most_similar
from ._sparse import coalesce, gather_bags_grad, scatter_add
from .layers import Embedding, EmbeddingBag, HashEmbedding, SubwordEmbedding

__version__: str = _core.__version__

# EMBTAB_SIMD=scalar|avx2|avx512 forces a path; asking for one this CPU cannot run is an error.
if _os.environ.get("EMBTAB_SIMD"):
    set_simd_path(_os.environ["EMBTAB_SIMD"])

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
    "gather_bags_grad",
    "get_num_threads",
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
    "save",
    "scatter_add",
    "set_num_threads",
    "set_simd_path",
    "simd_path",
    "subword_ngrams",
    "SubwordEmbedding",
    "to_bfloat16",
]
