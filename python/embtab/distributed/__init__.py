"""Row-sharded embedding tables on Ray (``pip install "embtab[ray]"``).

A :class:`ShardedTable` partitions its rows over Ray actors, one per shard; each actor holds an
embtab table of its rows and their optimizer state and runs embtab's kernels on them. The client
(this process) validates every call with embtab's own checks, de-duplicates the ids, sends each
shard only its distinct ids through Ray's object store, and combines the partial results in a
fixed shard order. :class:`ShardedEmbeddingBag` is the pooled layer over such a table.

``import embtab`` never imports Ray; this module needs it.
"""

from __future__ import annotations

try:
    import ray as _ray  # noqa: F401
except ImportError as exc:  # pragma: no cover (the test environment has Ray)
    raise ImportError('embtab.distributed needs Ray: pip install "embtab[ray]"') from exc

from ._layers import ShardedEmbeddingBag
from ._table import Shard, ShardedTable, ShardLost

__all__ = ["Shard", "ShardedEmbeddingBag", "ShardedTable", "ShardLost"]
