"""EmbeddingBagCollection: many tables, one call per batch of jagged features (TorchRec's shape)."""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np
import torch
from torch import Tensor, nn

from .._checkpoint import register_checkpointable
from ._convert import view
from ._modules import (
    FusedOptimizer,
    OptimizerState,
    _aligned_tensor,
    _size,
    aligned_parameter,
    check_device,
    make_optimizer,
    optimizer_arguments,
    table_dtype,
)
from ._ops import register_fused

_POOLINGS = ("sum", "mean")


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """One table of an :class:`EmbeddingBagCollection` (TorchRec's ``EmbeddingBagConfig``).

    Parameters
    ----------
    name : str
        The table's name (its parameters are ``embedding_bags.<name>.weight`` in ``state_dict()``).
    num_embeddings, embedding_dim : int
    feature_names : sequence of str
        The features looked up in this table (several features may share a table).
    pooling : {"sum", "mean"}
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: Sequence[str]
    pooling: str = "sum"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a table's name must be a non-empty str, got {self.name!r}")
        _size(self.num_embeddings, "num_embeddings")
        _size(self.embedding_dim, "embedding_dim")
        names = [self.feature_names] if isinstance(self.feature_names, str) else list(self.feature_names)
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"table {self.name!r}: feature_names must be a non-empty list of str")
        object.__setattr__(self, "feature_names", tuple(names))
        pooling = str(getattr(self.pooling, "name", self.pooling)).lower()  # TorchRec's PoolingType.SUM too
        if pooling not in _POOLINGS:
            raise ValueError(f"table {self.name!r}: pooling must be 'sum' or 'mean', got {self.pooling!r}")
        object.__setattr__(self, "pooling", pooling)

    @classmethod
    def of(cls, config: Any) -> "TableConfig":
        """A TableConfig from itself or from anything with its fields (TorchRec's EmbeddingBagConfig)."""
        if isinstance(config, cls):
            return config
        return cls(config.name, config.num_embeddings, config.embedding_dim, list(config.feature_names),
                   getattr(config, "pooling", "sum"))


class JaggedBatch:
    """A batch of jagged features, as TorchRec's ``KeyedJaggedTensor`` holds one (use either).

    Feature ``keys[f]`` of sample ``b`` is ``values[offsets[f * B + b]:offsets[f * B + b + 1]]``
    (feature-major). Give ``lengths`` (``F * B`` bag lengths) or ``offsets`` (``F * B + 1`` CSR
    boundaries); ``weights`` (optional) has one weight per value.
    """

    def __init__(self, keys: Sequence[str], values: Tensor, lengths: Optional[Tensor] = None,
                 offsets: Optional[Tensor] = None, weights: Optional[Tensor] = None) -> None:
        if (lengths is None) == (offsets is None):
            raise ValueError("give the bags as exactly one of lengths or offsets")
        self._keys = list(keys)
        self._values, self._weights = values, weights
        if offsets is None:
            assert lengths is not None
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths.reshape(-1), 0)])
        self._offsets = offsets
        self._lengths = lengths
        num_bags = offsets.numel() - 1
        if not self._keys or num_bags % len(self._keys):
            raise ValueError(f"{num_bags} bags for {len(self._keys)} keys: need batch size x number of keys")

    def keys(self) -> List[str]:
        return self._keys

    def values(self) -> Tensor:
        return self._values

    def offsets(self) -> Tensor:
        return self._offsets

    def lengths(self) -> Tensor:
        return self._offsets[1:] - self._offsets[:-1] if self._lengths is None else self._lengths

    def weights_or_none(self) -> Optional[Tensor]:
        return self._weights

    def stride(self) -> int:
        """The batch size."""
        return (self._offsets.numel() - 1) // len(self._keys)

    def __repr__(self) -> str:
        return f"JaggedBatch(keys={self._keys}, batch={self.stride()}, values={self._values.numel()})"


class KeyedTensor:
    """Pooled features side by side, as TorchRec's ``KeyedTensor``: ``values()`` is
    ``(batch, sum of dims)``, feature ``keys()[i]`` at columns ``offset_per_key()[i]`` onwards."""

    def __init__(self, keys: List[str], length_per_key: List[int], values: Tensor) -> None:
        self._keys, self._length_per_key, self._values = keys, length_per_key, values
        self._offset_per_key = [0]
        for n in length_per_key:
            self._offset_per_key.append(self._offset_per_key[-1] + n)

    def keys(self) -> List[str]:
        return self._keys

    def values(self) -> Tensor:
        return self._values

    def length_per_key(self) -> List[int]:
        return self._length_per_key

    def offset_per_key(self) -> List[int]:
        return self._offset_per_key

    def key_dim(self) -> int:
        return 1

    def __getitem__(self, key: str) -> Tensor:
        i = self._keys.index(key)
        return self._values[:, self._offset_per_key[i]:self._offset_per_key[i + 1]]

    def to_dict(self) -> Dict[str, Tensor]:
        return {key: self[key] for key in self._keys}


class _Table(nn.Module):
    """One table's parameters (``weight``, and in fused mode ``optimizer_state``)."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight
        self.optimizer_state: Optional[OptimizerState] = None


@register_checkpointable
class EmbeddingBagCollection(nn.Module):
    """Many pooled tables looked up (and, fused, updated) in one kernel call per batch, as
    TorchRec's ``EmbeddingBagCollection`` over FBGEMM's table-batched embeddings.

    ``forward(features)`` takes a :class:`JaggedBatch` or a TorchRec ``KeyedJaggedTensor`` whose
    keys are this collection's feature names (in any order) and returns the pooled features side
    by side, in the order of :attr:`feature_names` (each table's features, table by table): a TorchRec
    ``KeyedTensor`` for a ``KeyedJaggedTensor``, else a :class:`KeyedTensor`. Underneath, one call
    of :func:`embtab.gather_bags_multi` covers every (feature, bag) pair, and the fused backward one
    call of :func:`embtab.optim.step_bags_multi`.

    Parameters
    ----------
    tables : sequence of TableConfig (or TorchRec EmbeddingBagConfig)
        Names must be distinct, and so must the feature names across tables.
    optimizer : embtab.optim class or callable, optional
        Fused training (as :class:`Embedding`): every table gets
        ``optimizer(table, **optimizer_kwargs)``; ``fused_optimizer`` holds their one parameter
        group. Without it, the weights get dense gradients, or sparse ones with ``sparse=True``.
    optimizer_kwargs : dict, optional
    sparse : bool, default False
    dtype : torch.float32 or torch.float64, optional
    device : "cpu" or None

    Raises (in forward)
    -------------------
    ValueError
        A batch key that is no feature of this collection, or a feature the batch lacks.
    IndexError, TypeError
        As :class:`EmbeddingBag` (ids out of range for their table, non-integer ids, ...).
    """

    _checkpoint_name = "torch.EmbeddingBagCollection"
    _checkpoint_order = 0

    def __init__(self, tables: Sequence[Any], *, optimizer: Any = None,
                 optimizer_kwargs: Optional[Dict[str, Any]] = None, sparse: bool = False, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        check_device(device)
        if sparse and optimizer is not None:
            raise ValueError("choose one way to train: sparse=True (sparse gradients) or optimizer= (fused)")
        configs = [TableConfig.of(t) for t in tables]
        if not configs:
            raise ValueError("an EmbeddingBagCollection needs at least one table")
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"table names must be distinct, got {names}")
        taken = [n for n in names if hasattr(nn.ModuleDict, n) or "." in n]
        if taken:
            raise ValueError(f"table names {taken} cannot name a module in embedding_bags (an nn.ModuleDict)")
        self.feature_names: List[str] = [f for c in configs for f in c.feature_names]
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"a feature may belong to one table only, got {self.feature_names}")
        self._configs = configs
        self.sparse = bool(sparse)
        self._dtype = table_dtype(dtype)
        self.embedding_bags = nn.ModuleDict()
        for c in configs:
            table = _Table(aligned_parameter(c.num_embeddings, c.embedding_dim, self._dtype))
            nn.init.uniform_(table.weight, -(1.0 / c.num_embeddings) ** 0.5, (1.0 / c.num_embeddings) ** 0.5)
            self.embedding_bags[c.name] = table
        self._feature_tables = [t for t, c in enumerate(configs) for _ in c.feature_names]
        self._mean_pooling = [c.pooling == "mean" for c in configs for _ in c.feature_names]
        self._dims = [configs[t].embedding_dim for t in self._feature_tables]
        self.fused_optimizer: Optional[FusedOptimizer] = None
        self._handle = -1
        self._gradient = "sparse" if self.sparse else "dense"
        if optimizer is not None:
            weights = [self._table(c.name).weight for c in configs]
            optimizers = [make_optimizer(view(w, "weight"), optimizer, optimizer_kwargs) for w in weights]
            self.fused_optimizer = FusedOptimizer(weights, optimizers)
            for t, c in enumerate(configs):
                self._table(c.name).optimizer_state = OptimizerState(self.fused_optimizer, t)
            self._handle = register_fused(self.fused_optimizer)
            self._gradient = "fused"
        if self.sparse:
            from ._ops import mark_coalesced

            for c in configs:
                self._table(c.name).weight.register_post_accumulate_grad_hook(mark_coalesced)  # type: ignore[no-untyped-call]  # unannotated in torch

    @property
    def tables(self) -> List[TableConfig]:
        return list(self._configs)

    def _table(self, name: str) -> _Table:
        return cast(_Table, self.embedding_bags[name])

    def _optimizer_states(self) -> List[OptimizerState]:
        """Each table's fused optimizer state, table by table (none unless fused)."""
        tables = [self._table(c.name) for c in self._configs]
        return [t.optimizer_state for t in tables if t.optimizer_state is not None]

    def _weights(self) -> List[Tensor]:
        return [self._table(c.name).weight for c in self._configs]

    def _state(self) -> List[Tensor]:
        if self._gradient != "fused":
            return []
        return [s for state in self._optimizer_states() for s in state.tensors()]

    def forward(self, features: Any) -> Any:
        ids, offsets, weights = self._in_feature_order(features)
        values = torch.ops.embtab.embedding_bag_collection(
            self._weights(), ids, offsets, weights, self._state(), self._feature_tables, self._mean_pooling,
            self._gradient, self._handle)
        keyed = _torchrec_keyed_tensor(features)
        if keyed is not None:
            return keyed(keys=self.feature_names, length_per_key=self._dims, values=values, key_dim=1)
        return KeyedTensor(self.feature_names, self._dims, values)

    def _in_feature_order(self, features: Any) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        keys = list(features.keys())
        ids, offsets, weights = features.values(), features.offsets(), features.weights_or_none()
        if keys == self.feature_names:
            return ids, offsets, weights
        unknown = [k for k in keys if k not in self.feature_names]
        if unknown:
            raise ValueError(f"the batch has features {unknown} that no table of this collection looks up "
                             f"(its features: {self.feature_names})")
        missing = [k for k in self.feature_names if k not in keys]
        if missing:
            raise ValueError(f"the batch lacks the features {missing}")
        # Reorder the features' segments (a copy, as TorchRec's permute).
        batch = (offsets.numel() - 1) // len(keys)
        bounds = offsets.reshape(-1)[::batch].tolist() if batch else [0] * (len(keys) + 1)
        order = [keys.index(k) for k in self.feature_names]
        segments = [torch.arange(bounds[f], bounds[f + 1]) for f in order]
        index = torch.cat(segments) if segments else torch.zeros(0, dtype=torch.int64)
        lengths = (offsets[1:] - offsets[:-1]).reshape(len(keys), batch)[order].reshape(-1)
        new_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
        return ids[index], new_offsets, None if weights is None else weights[index]

    def extra_repr(self) -> str:
        tables = ", ".join(f"{c.name}: {c.num_embeddings}x{c.embedding_dim} {c.pooling} {list(c.feature_names)}"
                           for c in self._configs)
        fused = f", optimizer={type(self.fused_optimizer.optimizer).__name__}" if self.fused_optimizer else ""
        return f"[{tables}]{fused}"

    # embtab.save / embtab.load
    def _checkpoint_state(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        config: Dict[str, Any] = {"tables": [dataclasses.asdict(c) for c in self._configs], "sparse": self.sparse,
                                  "requires_grad": [bool(w.requires_grad) for w in self._weights()]}
        arrays = {}
        for c in self._configs:
            table = self._table(c.name)
            arrays[f"{c.name}.weight"] = view(table.weight, "weight")
            if table.optimizer_state is not None:
                config["optimizer"] = table.optimizer_state.get_extra_state()
                for name, buf in zip(table.optimizer_state.names, table.optimizer_state.tensors()):
                    arrays[f"{c.name}.state.{name}"] = view(buf, name)
        if self.fused_optimizer is not None:
            config["optimizer_states"] = [state.get_extra_state() for state in self._optimizer_states()]
        return config, arrays

    @classmethod
    def _from_checkpoint(cls, config: Dict[str, Any], arrays: Dict[str, Any]) -> "EmbeddingBagCollection":
        tables = [TableConfig(t["name"], t["num_embeddings"], t["embedding_dim"], t["feature_names"], t["pooling"])
                  for t in config["tables"]]
        kwargs = dict(optimizer_arguments(config.get("optimizer")), sparse=config["sparse"])
        first = arrays[f"{tables[0].name}.weight"]
        module = cls(tables, dtype=torch.float64 if first.dtype == np.float64 else torch.float32, **kwargs)
        with torch.no_grad():
            for t, c in enumerate(tables):
                table = module._table(c.name)
                table.weight.copy_(_aligned_tensor(arrays[f"{c.name}.weight"]))
                table.weight.requires_grad_(bool(config["requires_grad"][t]))
                if table.optimizer_state is not None:
                    for name, buf in zip(table.optimizer_state.names, table.optimizer_state.tensors()):
                        buf.copy_(_aligned_tensor(arrays[f"{c.name}.state.{name}"]))
                    table.optimizer_state.set_extra_state(config["optimizer_states"][t])
        return module


def _torchrec_keyed_tensor(features: Any) -> Any:
    """TorchRec's KeyedTensor class when ``features`` is TorchRec's KeyedJaggedTensor."""
    module = type(features).__module__
    if not module.startswith("torchrec."):
        return None
    from torchrec.sparse.jagged_tensor import KeyedTensor as TorchRecKeyedTensor

    return TorchRecKeyedTensor
