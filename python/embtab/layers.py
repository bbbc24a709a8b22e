"""Embedding layers with a forward pass, a sparse backward pass, and checkpoints.

A layer owns its table (``layer.weight``). ``forward`` returns the looked-up rows and remembers
what ``backward`` needs; ``backward(grad_out)`` stores the coalesced sparse gradient in
``layer.grad`` as ``(rows, row_grads)`` (sorted distinct rows, summed gradients). Any optimizer of
:mod:`embtab.optim` takes a layer, and its ``step()`` applies ``layer.grad``.

Row dropout (``dropout=p``): in training mode each id of a batch is dropped with probability
``p`` (it reads as a zero row and gets no gradient) and the survivors are scaled by
``1 / (1 - p)``; ``layer.eval()`` turns it off.
"""

from __future__ import annotations

import operator
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._arrays import aligned_empty, as_ids
from ._checkpoint import register_checkpointable
from ._dynamic import DynamicEmbeddingBag
from ._hashing import hash_buckets, subword_ngrams
from ._lookup import BoundsMode, PoolMode, gather, gather_bags
from ._sparse import coalesce, gather_bags_grad

__all__ = ["DynamicEmbeddingBag", "Embedding", "EmbeddingBag", "HashEmbedding", "SubwordEmbedding"]

_INITS = ("normal", "uniform", "xavier_uniform", "zeros")


def _init_table(rng: np.random.Generator, num_rows: int, dim: int, init: str, std: Optional[float], dtype: Any) -> NDArray[np.floating]:
    if init == "normal":
        table = rng.standard_normal((num_rows, dim)) * (1.0 if std is None else std)
    elif init == "uniform":
        bound = np.sqrt(3.0) * std if std is not None else 1.0 / max(dim, 1)  # fastText's default
        table = rng.uniform(-bound, bound, (num_rows, dim))
    elif init == "xavier_uniform":
        bound = np.sqrt(6.0 / (num_rows + dim)) if num_rows + dim > 0 else 0.0
        table = rng.uniform(-bound, bound, (num_rows, dim))
    elif init == "zeros":
        table = np.zeros((num_rows, dim))
    else:
        raise ValueError(f"init must be one of {', '.join(map(repr, _INITS))}, got {init!r}")
    # 128-byte aligned, so that each row of the table touches as few cache lines as possible.
    aligned = aligned_empty((num_rows, dim), dtype)
    aligned[...] = table
    return aligned


def _check_size(value: Any, name: str, minimum: int = 0) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _csr_filter(ids: NDArray[np.integer], offsets: NDArray[np.int64], keep: NDArray[np.bool_]) -> Tuple[NDArray[np.integer], NDArray[np.int64]]:
    """The CSR bags with the positions where ``keep`` is False removed."""
    kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    return ids[keep], kept_before[offsets]


def _bags_csr(ids: Any, offsets: Any) -> Tuple[NDArray[np.integer], NDArray[np.int64]]:
    """Flat ids and int64 CSR offsets, from 2-D ids (fixed-length bags) or 1-D ids + offsets."""
    ids = np.asarray(as_ids(ids))
    if ids.dtype not in (np.int32, np.int64):
        raise TypeError(f"ids must be an integer array of dtype int32 or int64, got {ids.dtype}")
    if offsets is None:
        if ids.ndim != 2:
            raise ValueError(f"ids must be 2-D (num_bags, bag_len) without offsets, got shape {ids.shape}")
        num_bags, bag_len = ids.shape
        return ids.reshape(-1), np.arange(0, (num_bags + 1) * bag_len, max(bag_len, 1), dtype=np.int64)[: num_bags + 1] if bag_len else np.zeros(num_bags + 1, np.int64)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D with offsets, got shape {ids.shape}")
    offsets = np.asarray(as_ids(offsets))
    if offsets.dtype not in (np.int32, np.int64):
        raise TypeError(f"offsets must be an integer array of dtype int32 or int64, got {offsets.dtype}")
    return ids, offsets.astype(np.int64, copy=False)


class _TableLayer:
    """Shared state: the table, the sparse gradient, train/eval mode, dropout, bounds mode."""

    weight: NDArray[np.floating]
    _checkpoint_order = 0  # saved before the optimizers that refer to the weight

    def __init__(self, num_embeddings: int, dim: int, *, init: str, std: Optional[float], seed: int, dtype: Any,
                 padding_idx: Optional[int], dropout: float, bounds: BoundsMode) -> None:
        num_embeddings = _check_size(num_embeddings, "num_embeddings")
        dim = _check_size(dim, "dim")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        if std is not None and not std >= 0:
            raise ValueError(f"std must be >= 0, got {std}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if bounds not in ("raise", "zero"):
            raise ValueError(f"bounds must be 'raise' or 'zero', got {bounds!r}")
        if padding_idx is not None:
            padding_idx = operator.index(padding_idx)
            if padding_idx < 0:
                padding_idx += num_embeddings
            if not 0 <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be within num_embeddings={num_embeddings}, got {padding_idx}")
        self.init, self.std, self.seed = init, std, int(seed)
        self.padding_idx = padding_idx
        self.dropout = float(dropout)
        self.bounds: BoundsMode = bounds
        self.training = True
        self.num_invalid_ids = 0  # running count of ids read as zero rows (bounds="zero")
        self.grad: Optional[Tuple[NDArray[np.int64], NDArray[np.floating]]] = None
        self._rng = np.random.default_rng(self.seed)
        self.weight = _init_table(self._rng, num_embeddings, dim, init, std, dtype)
        if padding_idx is not None:
            self.weight[padding_idx] = 0
        self._saved: Optional[Dict[str, Any]] = None

    @property
    def num_embeddings(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def train(self, mode: bool = True) -> "_TableLayer":
        self.training = bool(mode)
        return self

    def eval(self) -> "_TableLayer":
        return self.train(False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def zero_grad(self) -> None:
        self.grad = None

    def _dropout_keep(self, shape: Tuple[int, ...]) -> Optional[NDArray[np.bool_]]:
        if self.training and self.dropout > 0:
            return self._rng.random(shape) >= self.dropout
        return None

    def _valid(self, ids: NDArray[np.integer]) -> NDArray[np.bool_]:
        return (ids >= 0) & (ids < self.num_embeddings)

    def _require_saved(self) -> Dict[str, Any]:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward(): nothing to differentiate")
        saved, self._saved = self._saved, None
        return saved

    def _finish_grad(self, rows: NDArray[np.int64], grads: NDArray[np.floating]) -> None:
        if self.padding_idx is not None:
            keep = rows != self.padding_idx
            rows, grads = rows[keep], grads[keep]
        self.grad = (rows, grads)

    # Checkpoints: config + arrays; the weight is shared, not copied.
    def _config(self) -> Dict[str, Any]:
        return {"init": self.init, "std": self.std, "seed": self.seed, "padding_idx": self.padding_idx,
                "dropout": self.dropout, "bounds": self.bounds, "dtype": self.weight.dtype.str}

    def _checkpoint_state(self) -> Tuple[Dict[str, Any], Dict[str, NDArray[Any]]]:
        return self._config(), {"weight": self.weight}

    @classmethod
    def _from_checkpoint(cls, config: Dict[str, Any], arrays: Dict[str, NDArray[Any]]) -> Any:
        layer = cls._build_empty(config, arrays["weight"])
        layer.weight = arrays["weight"]
        return layer

    @classmethod
    def _build_empty(cls, config: Dict[str, Any], weight: NDArray[Any]) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_embeddings}, {self.dim}, dtype={self.weight.dtype})"


@register_checkpointable
class Embedding(_TableLayer):
    """A lookup table: ``forward(ids)`` returns ``weight[ids]`` (shape ``ids.shape + (dim,)``).

    Parameters
    ----------
    num_embeddings, dim : int
        Table size.
    init : {"normal", "uniform", "xavier_uniform", "zeros"}
        "normal": N(0, std) with std 1 by default (as torch.nn.Embedding); "uniform":
        U(-sqrt(3) std, sqrt(3) std), or U(-1/dim, 1/dim) without std (as fastText);
        "xavier_uniform": U(-a, a) with a = sqrt(6 / (num_embeddings + dim)).
    std : float, optional
    seed : int
        Seeds the initialisation and the dropout stream: the same seed gives the same layer.
    dtype : float32 or float64
    padding_idx : int, optional
        This row starts at zero and never receives a gradient.
    dropout : float
        Row dropout probability during training (see the module docs).
    bounds : {"raise", "zero"}
        Out-of-range ids raise IndexError, or read as zero rows, get no gradient and are counted in
        ``num_invalid_ids``.
    """

    def __init__(self, num_embeddings: int, dim: int, *, init: str = "normal", std: Optional[float] = None,
                 seed: int = 0, dtype: Any = np.float32, padding_idx: Optional[int] = None, dropout: float = 0.0,
                 bounds: BoundsMode = "raise") -> None:
        super().__init__(num_embeddings, dim, init=init, std=std, seed=seed, dtype=dtype, padding_idx=padding_idx,
                         dropout=dropout, bounds=bounds)

    def forward(self, ids: ArrayLike) -> NDArray[np.floating]:
        ids = as_ids(ids)
        if self.bounds == "zero":
            out, invalid = gather(self.weight, ids, bounds="zero")
            self.num_invalid_ids += invalid
        else:
            out = gather(self.weight, ids)
        ids = np.asarray(ids)
        keep = self._dropout_keep(ids.shape)
        if keep is not None:
            out *= (keep / (1.0 - self.dropout)).astype(out.dtype)[..., None]
        self._saved = {"ids": ids, "keep": keep}
        return out

    def backward(self, grad_out: NDArray[np.floating]) -> Tuple[NDArray[np.int64], NDArray[np.floating]]:
        saved = self._require_saved()
        ids, keep = saved["ids"], saved["keep"]
        grad_out = np.asarray(grad_out)
        if grad_out.shape != ids.shape + (self.dim,):
            raise ValueError(f"grad_out must have shape {ids.shape + (self.dim,)}, got {grad_out.shape}")
        if grad_out.dtype != self.weight.dtype:
            raise TypeError(f"grad_out must have dtype {self.weight.dtype}, got {grad_out.dtype}")
        flat_ids = ids.reshape(-1)
        flat_grads = grad_out.reshape(-1, self.dim)
        mask = self._valid(flat_ids) if self.bounds == "zero" else None
        if keep is not None:
            flat_grads = flat_grads * (1.0 / (1.0 - self.dropout))
            k = keep.reshape(-1)
            mask = k if mask is None else (mask & k)
        if mask is not None:
            flat_ids, flat_grads = flat_ids[mask], flat_grads[mask]
        rows, grads = coalesce(flat_ids, np.ascontiguousarray(flat_grads, dtype=self.weight.dtype))
        self._finish_grad(rows, grads)
        assert self.grad is not None
        return self.grad

    @classmethod
    def _build_empty(cls, config: Dict[str, Any], weight: NDArray[Any]) -> "Embedding":
        layer = cls(0, weight.shape[1], init="zeros", seed=config["seed"], dtype=weight.dtype,
                    dropout=config["dropout"], bounds=config["bounds"])
        layer.init, layer.std, layer.padding_idx = config["init"], config["std"], config["padding_idx"]
        return layer


@register_checkpointable
class EmbeddingBag(_TableLayer):
    """Pooled lookups: ``forward(ids, offsets=None, per_sample_weights=None)`` returns one row per
    bag (sum, mean or max of its rows), as ``torch.nn.EmbeddingBag``.

    Takes the arguments of :class:`Embedding` plus ``mode``. With ``padding_idx`` the padding
    entries are left out of each bag (also from a mean's count), as torch does.
    """

    def __init__(self, num_embeddings: int, dim: int, *, mode: PoolMode = "sum", init: str = "normal",
                 std: Optional[float] = None, seed: int = 0, dtype: Any = np.float32,
                 padding_idx: Optional[int] = None, dropout: float = 0.0, bounds: BoundsMode = "raise") -> None:
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        self.mode: PoolMode = mode
        super().__init__(num_embeddings, dim, init=init, std=std, seed=seed, dtype=dtype, padding_idx=padding_idx,
                         dropout=dropout, bounds=bounds)

    def forward(self, ids: ArrayLike, offsets: Optional[ArrayLike] = None, per_sample_weights: Optional[ArrayLike] = None) -> NDArray[np.floating]:
        flat, offs = _bags_csr(ids, offsets)
        weights = None
        if per_sample_weights is not None:
            weights = np.asarray(per_sample_weights)
            if weights.shape != np.shape(ids):
                raise ValueError(f"per_sample_weights must have the shape of ids {np.shape(ids)}, got {weights.shape}")
            if weights.dtype != self.weight.dtype:
                raise TypeError(f"per_sample_weights must have dtype {self.weight.dtype}, got {weights.dtype}")
            if self.mode == "max":
                raise ValueError("per_sample_weights are only supported with mode 'sum' or 'mean'")
            weights = weights.reshape(-1)
        keep = self._dropout_keep(flat.shape)
        simple = keep is None and self.padding_idx is None and self.bounds == "raise"
        if simple:
            if self.mode == "max":
                out, argmax = gather_bags(self.weight, flat, offs, mode="max", return_argmax=True)
                self._saved = {"ids": flat, "offsets": offs, "mode": "max", "weights": None, "argmax": argmax, "scale": 1.0}
            else:
                out = gather_bags(self.weight, flat, offs, mode=self.mode, weights=weights)
                self._saved = {"ids": flat, "offsets": offs, "mode": self.mode, "weights": weights, "argmax": None, "scale": 1.0}
            return out

        # General path: leave padding (and dropped ids) out of the bags, and fold the mean's 1/count
        # and the dropout scale into per-id weights.
        not_padding = np.ones(flat.shape, bool) if self.padding_idx is None else flat != self.padding_idx
        drop_keep = not_padding if keep is None else (not_padding & keep)
        scale = 1.0 / (1.0 - self.dropout) if keep is not None else 1.0
        if self.mode == "max":
            kept_ids, kept_offs = _csr_filter(flat, offs, drop_keep)
            result = gather_bags(self.weight, kept_ids, kept_offs, mode="max", return_argmax=True, bounds=self.bounds)
            out, argmax = result[0], result[1]
            if self.bounds == "zero":
                self.num_invalid_ids += result[2]
            if scale != 1.0:
                out *= out.dtype.type(scale)
            self._saved = {"ids": kept_ids, "offsets": kept_offs, "mode": "max", "weights": None, "argmax": argmax, "scale": scale}
            return out
        w = np.full(flat.shape, scale, dtype=self.weight.dtype) if weights is None else weights * self.weight.dtype.type(scale)
        if self.mode == "mean":
            counts = np.add.reduceat(not_padding.astype(np.int64), offs[:-1]) if flat.size else np.zeros(len(offs) - 1, np.int64)
            counts = np.where(np.diff(offs) > 0, counts, 0)
            per_bag = np.divide(1.0, counts, out=np.zeros(counts.shape), where=counts > 0)
            w = w * np.repeat(per_bag, np.diff(offs)).astype(self.weight.dtype)
        valid = self._valid(flat) if self.bounds == "zero" else np.ones(flat.shape, bool)
        if self.bounds == "zero":
            self.num_invalid_ids += int((~valid & not_padding).sum())
        use = drop_keep & valid
        kept_ids, kept_offs = _csr_filter(flat, offs, use)
        kept_w = np.ascontiguousarray(w[use], dtype=self.weight.dtype)
        out = gather_bags(self.weight, kept_ids, kept_offs, mode="sum", weights=kept_w)
        self._saved = {"ids": kept_ids, "offsets": kept_offs, "mode": "sum", "weights": kept_w, "argmax": None, "scale": 1.0}
        return out

    def backward(self, grad_out: NDArray[np.floating]) -> Tuple[NDArray[np.int64], NDArray[np.floating]]:
        saved = self._require_saved()
        grad_out = np.asarray(grad_out)
        num_bags = len(saved["offsets"]) - 1
        if grad_out.shape != (num_bags, self.dim):
            raise ValueError(f"grad_out must have shape {(num_bags, self.dim)}, got {grad_out.shape}")
        if grad_out.dtype != self.weight.dtype:
            raise TypeError(f"grad_out must have dtype {self.weight.dtype}, got {grad_out.dtype}")
        if saved["scale"] != 1.0:
            grad_out = grad_out * grad_out.dtype.type(saved["scale"])
        argmax = saved["argmax"]
        ids = saved["ids"]
        if argmax is not None and self.bounds == "zero" and ids.size:
            # Invalid ids read as zero rows: they win nothing (argmax -1) and take no gradient.
            keep = self._valid(ids)
            if not keep.all():
                ids, offs = _csr_filter(ids, saved["offsets"], keep)
                saved = dict(saved, offsets=offs)
        rows, grads = gather_bags_grad(np.ascontiguousarray(grad_out), ids, saved["offsets"], mode=saved["mode"],
                                       weights=saved["weights"], argmax=argmax)
        self._finish_grad(rows, grads)
        assert self.grad is not None
        return self.grad

    def _config(self) -> Dict[str, Any]:
        return dict(super()._config(), mode=self.mode)

    @classmethod
    def _build_empty(cls, config: Dict[str, Any], weight: NDArray[Any]) -> "EmbeddingBag":
        layer = cls(0, weight.shape[1], mode=config["mode"], init="zeros", seed=config["seed"], dtype=weight.dtype,
                    dropout=config["dropout"], bounds=config["bounds"])
        layer.init, layer.std, layer.padding_idx = config["init"], config["std"], config["padding_idx"]
        return layer


def _is_documents(keys: Any) -> bool:
    return isinstance(keys, (list, tuple)) and len(keys) > 0 and all(isinstance(k, (list, tuple, np.ndarray)) for k in keys)


def _documents_csr(docs: Sequence[Sequence[Any]]) -> Tuple[List[Any], NDArray[np.int64]]:
    flat: List[Any] = []
    offsets = np.zeros(len(docs) + 1, np.int64)
    for i, doc in enumerate(docs):
        flat.extend(doc.tolist() if isinstance(doc, np.ndarray) else doc)
        offsets[i + 1] = len(flat)
    return flat, offsets


@register_checkpointable
class HashEmbedding(EmbeddingBag):
    """An embedding of raw keys (ints, str or bytes) through the hashing trick: no vocabulary.

    Each key maps to ``num_hashes`` rows, ``hash_buckets(key, num_buckets, seed=seed + k)`` for
    k in 0..num_hashes-1, whose sum is the key's vector (several independent hashes make
    collisions less damaging). ``forward(keys)`` takes a flat list/array of keys (one vector per
    key) or a list of documents (lists of keys), pooled over each document's keys with ``mode``
    ("sum" or "mean"; a mean divides by the number of keys).
    """

    def __init__(self, num_buckets: int, dim: int, *, num_hashes: int = 1, seed: int = 0, mode: PoolMode = "sum",
                 init: str = "normal", std: Optional[float] = None, dtype: Any = np.float32, dropout: float = 0.0) -> None:
        self.num_hashes = _check_size(num_hashes, "num_hashes", 1)
        _check_size(num_buckets, "num_buckets", 1)
        if mode == "max":
            raise ValueError("HashEmbedding pools with mode 'sum' or 'mean'")
        super().__init__(num_buckets, dim, mode="sum", init=init, std=std, seed=seed, dtype=dtype, dropout=dropout)
        self.doc_mode: PoolMode = mode

    def bucket_ids(self, keys: Any) -> NDArray[np.int64]:
        """Row ids of each key, shape ``(len(keys), num_hashes)``."""
        if isinstance(keys, (list, tuple)) and keys and all(
                isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) for k in keys):
            keys = np.asarray(keys, dtype=np.int64)  # int keys hash as their 8 little-endian bytes
        columns = [np.asarray(hash_buckets(keys, self.num_embeddings, seed=(self.seed + k) % 2**32)).reshape(-1)
                   for k in range(self.num_hashes)]
        return np.stack(columns, axis=1) if columns[0].size else np.zeros((0, self.num_hashes), np.int64)

    def forward(self, keys: Any, offsets: Optional[ArrayLike] = None, per_sample_weights: Optional[ArrayLike] = None) -> NDArray[np.floating]:  # type: ignore[override]
        if offsets is not None or per_sample_weights is not None:
            raise TypeError("HashEmbedding.forward takes keys or documents only")
        if _is_documents(keys):
            flat, doc_offsets = _documents_csr(keys)
            ids = self.bucket_ids(flat).reshape(-1)
            offs = doc_offsets * self.num_hashes
            if self.doc_mode == "mean":
                counts = np.diff(doc_offsets)
                per_key = np.divide(1.0, counts, out=np.zeros(counts.shape), where=counts > 0)
                w = np.repeat(per_key, counts * self.num_hashes).astype(self.weight.dtype)
                return EmbeddingBag.forward(self, ids, offs, w)
            return EmbeddingBag.forward(self, ids, offs)
        if isinstance(keys, (str, bytes, int, np.integer)):
            raise TypeError("HashEmbedding.forward takes a list/array of keys or of documents, not a single key")
        ids = self.bucket_ids(keys)
        return EmbeddingBag.forward(self, ids)

    def _config(self) -> Dict[str, Any]:
        return dict(super()._config(), num_hashes=self.num_hashes, doc_mode=self.doc_mode)

    @classmethod
    def _build_empty(cls, config: Dict[str, Any], weight: NDArray[Any]) -> "HashEmbedding":
        layer = cls(1, weight.shape[1], num_hashes=config["num_hashes"], seed=config["seed"], mode=config["doc_mode"],
                    init="zeros", dtype=weight.dtype, dropout=config["dropout"])
        layer.init, layer.std = config["init"], config["std"]
        return layer


@register_checkpointable
class SubwordEmbedding(EmbeddingBag):
    """fastText-style word vectors: a word's vector is the mean of its own row (when it is in
    ``vocab``) and the rows of its character n-grams (``subword_ngrams``), so that unseen words
    still get vectors.

    The table has ``len(vocab) + bucket`` rows: the vocabulary first, then the n-gram buckets.
    ``forward(words)`` takes a list of words (one vector each) or a list of documents (lists of
    words), each pooled, as fastText's sentence vectors, over all its word and subword rows.
    """

    def __init__(self, dim: int, *, vocab: Optional[Sequence[str]] = None, minn: int = 3, maxn: int = 6,
                 bucket: int = 2_000_000, init: str = "uniform", std: Optional[float] = None, seed: int = 0,
                 dtype: Any = np.float32, dropout: float = 0.0) -> None:
        self.vocab: List[str] = list(vocab) if vocab is not None else []
        self.word_ids: Dict[str, int] = {w: i for i, w in enumerate(self.vocab)}
        if len(self.word_ids) != len(self.vocab):
            raise ValueError("vocab has repeated words")
        self.minn, self.maxn = _check_size(minn, "minn", 1), _check_size(maxn, "maxn", 0)
        if minn > maxn and maxn != 0:
            raise ValueError(f"minn must be <= maxn, got minn={minn}, maxn={maxn}")
        self.bucket = _check_size(bucket, "bucket", 1)
        super().__init__(len(self.vocab) + self.bucket, dim, mode="mean", init=init, std=std, seed=seed, dtype=dtype,
                         dropout=dropout)

    def word_rows(self, words: Sequence[str]) -> Tuple[NDArray[np.int64], NDArray[np.int64]]:
        """CSR rows of each word: its vocabulary row (if any) then its n-gram rows."""
        words = list(words)
        for i, w in enumerate(words):
            if not isinstance(w, str):
                raise TypeError(f"words[{i}] must be str, got {type(w).__name__}")
        if self.maxn == 0 or not words:
            sub_ids, sub_offs = np.zeros(0, np.int64), np.zeros(len(words) + 1, np.int64)
        else:
            sub_ids, sub_offs = subword_ngrams(words, minn=self.minn, maxn=self.maxn, bucket=self.bucket,
                                               offset=len(self.vocab))
        own = np.array([self.word_ids.get(w, -1) for w in words], np.int64)
        has_own = own >= 0
        lengths = np.diff(sub_offs) + has_own
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.empty(int(offsets[-1]), np.int64)
        starts = offsets[:-1]
        ids[starts[has_own]] = own[has_own]
        mask = np.ones(ids.size, bool)
        mask[starts[has_own]] = False
        ids[mask] = sub_ids
        return ids, offsets

    def forward(self, words: Any, offsets: Optional[ArrayLike] = None, per_sample_weights: Optional[ArrayLike] = None) -> NDArray[np.floating]:  # type: ignore[override]
        if offsets is not None or per_sample_weights is not None:
            raise TypeError("SubwordEmbedding.forward takes words or documents only")
        if isinstance(words, str):
            raise TypeError("SubwordEmbedding.forward takes a list of words (or of documents), not a single str")
        if _is_documents(words):
            flat, doc_offsets = _documents_csr(words)
            ids, word_offs = self.word_rows(flat)
            return EmbeddingBag.forward(self, ids, word_offs[doc_offsets])
        ids, offs = self.word_rows(words)
        return EmbeddingBag.forward(self, ids, offs)

    def _config(self) -> Dict[str, Any]:
        return dict(super()._config(), vocab=self.vocab, minn=self.minn, maxn=self.maxn, bucket=self.bucket)

    @classmethod
    def _build_empty(cls, config: Dict[str, Any], weight: NDArray[Any]) -> "SubwordEmbedding":
        layer = cls.__new__(cls)
        layer.vocab = list(config["vocab"])
        layer.word_ids = {w: i for i, w in enumerate(layer.vocab)}
        layer.minn, layer.maxn, layer.bucket = config["minn"], config["maxn"], config["bucket"]
        _TableLayer.__init__(layer, 0, weight.shape[1], init="zeros", std=None, seed=config["seed"], dtype=weight.dtype,
                             padding_idx=None, dropout=config["dropout"], bounds="raise")
        layer.mode = "mean"
        layer.init, layer.std = config["init"], config["std"]
        return layer
