"""Embedding and EmbeddingBag: drop-in torch.nn modules over embtab's tables and kernels."""

import inspect
import operator
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import numpy as np
import torch
from torch import Tensor, nn

from .. import optim as _optim
from .._arrays import aligned_empty
from .._checkpoint import register_checkpointable
from ._convert import tensor, view
from ._ops import mark_coalesced, register_fused

_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def check_device(device: Any) -> None:
    if device is not None and torch.device(device).type != "cpu":
        raise TypeError(f"device {torch.device(device)} is not supported: embtab's tables live in CPU memory")


def table_dtype(dtype: Any) -> torch.dtype:
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return cast(torch.dtype, dtype)


def aligned_parameter(num_rows: int, dim: int, dtype: torch.dtype) -> nn.Parameter:
    """A Parameter whose storage is a 128-byte aligned numpy table (embtab's row alignment)."""
    return nn.Parameter(tensor(aligned_empty((num_rows, dim), _DTYPES[dtype])))


def _size(value: Any, name: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return cast(int, value)


def _padding(padding_idx: Optional[int], num_embeddings: int) -> int:
    """torch's rule: a negative padding_idx counts from the end; -1 here means none."""
    if padding_idx is None:
        return -1
    padding_idx = operator.index(padding_idx)
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"padding_idx must be within num_embeddings={num_embeddings}, got {padding_idx}")
    return padding_idx % num_embeddings


class FusedOptimizer(torch.optim.Optimizer):
    """The optimizer that a module in fused mode applies inside ``backward()``, seen as a
    ``torch.optim.Optimizer`` so that learning rate schedulers work unchanged.

    Its one parameter group holds the module's weights (one per table) and the hyperparameters of
    the embtab optimizers (``lr``, ``eps``, ...); each fused update reads them from
    ``param_groups[0]``, so a change (by hand or by a scheduler) applies from the next backward on.
    :meth:`step` and :meth:`zero_grad` do nothing: the update already happened, and no gradient is
    kept. The state (accumulators, moments, the step count) lives in the module and its
    ``state_dict()``.
    """

    def __init__(self, weights: List[nn.Parameter], optimizers: List[Any]) -> None:
        self.optimizers = optimizers  # one embtab optimizer per table: update rule, hyperparameters, step count
        super().__init__(list(weights), self.hyperparameters())

    @property
    def optimizer(self) -> Any:
        """The embtab optimizer of the first (for Embedding and EmbeddingBag: the only) table."""
        return self.optimizers[0]

    def hyperparameters(self) -> Dict[str, Any]:
        return {k: v for k, v in vars(self.optimizers[0]).items()
                if not k.startswith("_") and isinstance(v, (int, float, tuple)) and not isinstance(v, bool)}

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def _sync(self) -> None:
        group = self.param_groups[0]
        for opt in self.optimizers:
            for key in self.defaults:
                setattr(opt, key, group[key])

    def apply_fused_step(self, table: Any, state: List[Any], grad_out: Any, ids: Any, offsets: Any, mode: str,
                         weights: Any, argmax: Any) -> None:
        self._sync()
        arrays = (list(state) + [None, None])[:2]
        self.optimizer._step_bags_into(table, tuple(arrays), grad_out, ids, offsets, mode, weights, argmax)

    def apply_fused_multi_step(self, tables: List[Any], states: List[List[Any]], grad_out: Any, ids: Any,
                               offsets: Any, feature_tables: List[int], modes: List[str], weights: Any) -> None:
        self._sync()
        arrays = [tuple((list(s) + [None, None])[:2]) for s in states]
        _optim._step_bags_multi_into(self.optimizers, tables, arrays, grad_out, ids, offsets, feature_tables, modes,
                                     weights)


def make_optimizer(table: Any, optimizer: Any, optimizer_kwargs: Optional[Dict[str, Any]]) -> Any:
    """The embtab optimizer for ``table`` from a class (or factory) and its keyword arguments."""
    if not callable(optimizer):
        raise TypeError("optimizer must be an embtab.optim class (or a callable taking the table), "
                        f"got {type(optimizer).__name__}")
    opt = optimizer(table, **(optimizer_kwargs or {}))
    if not isinstance(opt, _optim._SparseOptimizer):
        raise TypeError(f"optimizer must build an embtab.optim optimizer, got {type(opt).__name__}")
    return opt


class OptimizerState(nn.Module):
    """Buffers of one table's fused optimizer state arrays (sharing their memory), and its step
    count and hyperparameters as extra state, so that ``state_dict()`` carries all of it."""

    def __init__(self, fused: FusedOptimizer, index: int) -> None:
        super().__init__()
        self._fused, self._index = fused, index
        opt = fused.optimizers[index]
        self.names: List[str] = []
        for array in opt._state_arrays():
            if array is None:
                continue
            name = next(k for k, v in opt.state.items() if v is array)
            self.register_buffer(name, tensor(array))
            self.names.append(name)

    def tensors(self) -> List[Tensor]:
        return [getattr(self, name) for name in self.names]

    def get_extra_state(self) -> Dict[str, Any]:
        opt = self._fused.optimizers[self._index]
        scalars = opt._scalar_state()
        return {"optimizer": type(opt).__name__, "scalars": scalars, "param_group": dict(
            (k, self._fused.param_groups[0][k]) for k in self._fused.defaults)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        opt = self._fused.optimizers[self._index]
        if state.get("optimizer") != type(opt).__name__:
            raise ValueError(f"the state_dict holds the state of a {state.get('optimizer')} optimizer, "
                             f"this module fuses {type(opt).__name__}")
        opt.state.update(state["scalars"])
        self._fused.param_groups[0].update(state["param_group"])


class TableModule(nn.Module):
    """What Embedding and EmbeddingBag share: the aligned weight, the training mode, the fused
    optimizer, and checkpoints."""

    _checkpoint_order = 0

    def _init_table(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int], sparse: bool,
                    optimizer: Any, optimizer_kwargs: Optional[Dict[str, Any]], max_norm: Optional[float],
                    scale_grad_by_freq: bool, _weight: Optional[Tensor], _freeze: bool, device: Any,
                    dtype: Any) -> None:
        check_device(device)
        if max_norm is not None:
            raise NotImplementedError("max_norm is not supported by embtab.torch (it rewrites rows during forward)")
        if scale_grad_by_freq:
            raise NotImplementedError("scale_grad_by_freq is not supported by embtab.torch")
        if sparse and optimizer is not None:
            raise ValueError("choose one way to train: sparse=True (a sparse weight.grad) or optimizer= (fused)")
        self.num_embeddings = _size(num_embeddings, "num_embeddings")
        self.embedding_dim = _size(embedding_dim, "embedding_dim")
        self._padding = _padding(padding_idx, self.num_embeddings)
        self.padding_idx = None if self._padding < 0 else self._padding
        self.sparse = bool(sparse)
        self.max_norm, self.norm_type, self.scale_grad_by_freq = None, 2.0, False
        dtype = table_dtype(dtype if _weight is None else _weight.dtype)
        self.weight = aligned_parameter(self.num_embeddings, self.embedding_dim, dtype)
        if _weight is None:
            self.reset_parameters()
        else:
            if tuple(_weight.shape) != (self.num_embeddings, self.embedding_dim):
                raise ValueError(f"_weight must have shape ({self.num_embeddings}, {self.embedding_dim}), "
                                 f"got {tuple(_weight.shape)}")
            check_device(_weight.device)
            with torch.no_grad():
                self.weight.copy_(_weight)
        self.weight.requires_grad_(not _freeze)
        self.fused_optimizer: Optional[FusedOptimizer] = None
        self.optimizer_state: Optional[OptimizerState] = None
        self._handle = -1
        self._gradient = "sparse" if self.sparse else "dense"
        if self.sparse:
            self.weight.register_post_accumulate_grad_hook(mark_coalesced)  # type: ignore[no-untyped-call]  # unannotated in torch
        if optimizer is not None:
            table = view(self.weight, "weight")
            self.fused_optimizer = FusedOptimizer([self.weight], [make_optimizer(table, optimizer, optimizer_kwargs)])
            self.optimizer_state = OptimizerState(self.fused_optimizer, 0)
            self._handle = register_fused(self.fused_optimizer)
            self._gradient = "fused"

    def reset_parameters(self) -> None:
        """N(0, 1) rows, the padding row zero: torch's initialisation (and random stream)."""
        nn.init.normal_(self.weight)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def _state(self) -> List[Tensor]:
        return self.optimizer_state.tensors() if self.optimizer_state is not None else []

    # embtab.save / embtab.load: the table and the optimizer state as arrays, shared with the
    # tensors (no copy); the constructor arguments and the optimizer's hyperparameters as config.
    def _checkpoint_state(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        config = dict(self._config(), requires_grad=bool(self.weight.requires_grad))
        arrays = {"weight": view(self.weight, "weight")}
        if self.optimizer_state is not None:
            extra = self.optimizer_state.get_extra_state()
            config["optimizer"] = extra
            for name, buf in zip(self.optimizer_state.names, self.optimizer_state.tensors()):
                arrays[f"state.{name}"] = view(buf, name)
        return config, arrays

    @classmethod
    def _from_checkpoint(cls, config: Dict[str, Any], arrays: Dict[str, Any]) -> Any:
        kwargs = dict(config["init"], **optimizer_arguments(config.get("optimizer")))
        extra = config.get("optimizer")
        module = cls._build(kwargs, _aligned_tensor(arrays["weight"]))
        module.weight.requires_grad_(bool(config["requires_grad"]))
        if extra is not None:
            assert module.optimizer_state is not None
            with torch.no_grad():
                for name, buf in zip(module.optimizer_state.names, module.optimizer_state.tensors()):
                    buf.copy_(torch.from_numpy(np.ascontiguousarray(arrays[f"state.{name}"])))
            module.optimizer_state.set_extra_state(extra)
        return module

    @classmethod
    def _build(cls, kwargs: Dict[str, Any], weight: Tensor) -> Any:
        return cls(weight.shape[0], weight.shape[1], _weight=weight, **kwargs)

    def _config(self) -> Dict[str, Any]:
        raise NotImplementedError

    def _repr_options(self) -> str:
        s = ""
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.sparse:
            s += ", sparse=True"
        if self.fused_optimizer is not None:
            s += f", optimizer={type(self.fused_optimizer.optimizer).__name__}"
        return s


def optimizer_arguments(extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The ``optimizer`` / ``optimizer_kwargs`` that rebuild a saved fused optimizer (its class by
    name, its hyperparameters from the saved parameter group); none without one."""
    if extra is None:
        return {}
    opt_cls = getattr(_optim, extra["optimizer"], None)
    if not (isinstance(opt_cls, type) and issubclass(opt_cls, _optim._SparseOptimizer)):
        raise ValueError(f"unknown embtab optimizer {extra['optimizer']!r}")
    accepted = inspect.signature(opt_cls.__init__).parameters
    hyper = {k: (tuple(v) if isinstance(v, list) else v) for k, v in extra["param_group"].items() if k in accepted}
    return {"optimizer": opt_cls, "optimizer_kwargs": hyper}


def _aligned_tensor(array: Any) -> Tensor:
    # A memory-mapped (read-only) array is copied: torch cannot wrap read-only memory.
    return torch.from_numpy(array if array.flags.writeable else np.array(array))


@register_checkpointable
class Embedding(TableModule):
    """A drop-in ``torch.nn.Embedding`` whose table is embtab's and whose kernels are embtab's.

    ``forward(input)`` returns ``weight[input]`` (shape ``input.shape + (embedding_dim,)``), as
    ``torch.nn.Embedding`` does, for int32 or int64 ids on the CPU. ``weight`` is a
    ``torch.nn.Parameter`` whose storage is a 128-byte aligned numpy table: embtab reads and updates
    it in place, never copying it.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
        The table's size.
    padding_idx : int, optional
        That row starts at zero and receives no gradient (negative: counted from the end).
    sparse : bool, default False
        ``False``: ``weight.grad`` is a dense tensor, as torch's default. ``True``: a coalesced
        sparse COO tensor (for ``torch.optim.SGD``, ``Adagrad`` or ``SparseAdam``).
    optimizer : embtab.optim class or callable, optional
        Fused training: ``optimizer(table, **optimizer_kwargs)`` (e.g. ``embtab.optim.RowWiseAdagrad``
        with ``optimizer_kwargs={"lr": 0.05}``) updates the table inside ``backward()``, touching
        only the rows of the batch; ``weight.grad`` stays None. Its hyperparameters are
        ``fused_optimizer.param_groups[0]`` (LR schedulers work on ``fused_optimizer``); its state
        is in ``optimizer_state`` and the module's ``state_dict()``.
    optimizer_kwargs : dict, optional
    dtype : torch.float32 or torch.float64, optional
        The default dtype when omitted.
    device : "cpu" or None
        embtab's tables live in CPU memory: another device is a TypeError.
    max_norm, norm_type, scale_grad_by_freq :
        As torch's; only the defaults are supported (NotImplementedError otherwise).

    Raises (in forward)
    -------------------
    IndexError
        An id is negative or >= num_embeddings (its position and value are named).
    TypeError
        Floating, boolean or other non-int32/int64 ids (never cast); a tensor on another device.
    """

    _checkpoint_name = "torch.Embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None, *,
                 max_norm: Optional[float] = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, optimizer: Any = None, optimizer_kwargs: Optional[Dict[str, Any]] = None,
                 _weight: Optional[Tensor] = None, _freeze: bool = False, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self._init_table(num_embeddings, embedding_dim, padding_idx, sparse, optimizer, optimizer_kwargs, max_norm,
                         scale_grad_by_freq, _weight, _freeze, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        out: Tensor = torch.ops.embtab.embedding(self.weight, input, self._state(), self._padding, self._gradient,
                                                 self._handle)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}" + self._repr_options()

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True, padding_idx: Optional[int] = None,
                        max_norm: Optional[float] = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                        sparse: bool = False, **kwargs: Any) -> "Embedding":
        """A module holding a copy of ``embeddings`` (2-D) in an aligned table, as
        ``torch.nn.Embedding.from_pretrained``; ``freeze=True`` turns its gradient off."""
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be 2-D, got shape {tuple(embeddings.shape)}")
        return cls(embeddings.shape[0], embeddings.shape[1], padding_idx, max_norm=max_norm, norm_type=norm_type,
                   scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=embeddings, _freeze=freeze,
                   **kwargs)

    def _config(self) -> Dict[str, Any]:
        return {"init": {"padding_idx": self.padding_idx, "sparse": self.sparse}}


@register_checkpointable
class EmbeddingBag(TableModule):
    """A drop-in ``torch.nn.EmbeddingBag`` on embtab's table and kernels.

    ``forward(input, offsets=None, per_sample_weights=None)`` takes what ``nn.EmbeddingBag``
    takes (1-D ``input`` with ``offsets``, or 2-D ``input`` of fixed-length bags) and returns the
    same values: one pooled row per bag; an empty bag gives zeros.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    mode : {"sum", "mean", "max"}, default "mean"
        An unknown mode is a ValueError (at the first forward, from embtab's kernels).
    include_last_offset : bool, default False
        As torch: ``offsets`` has num_bags + 1 entries, the last one ``len(input)``.
    padding_idx : int, optional
        Entries equal to it are left out of their bag (a mean counts only the others); its row
        starts at zero and receives no gradient.
    sparse, optimizer, optimizer_kwargs, dtype, device, max_norm, norm_type, scale_grad_by_freq :
        As :class:`Embedding`.

    Notes
    -----
    ``per_sample_weights`` must have the weight's dtype (never cast) and the shape of ``input``;
    torch takes them with ``mode="sum"`` only, embtab also with ``"mean"`` (the mean of the
    weighted rows), and both refuse them with ``"max"``. They get a gradient when they require one.
    """

    _checkpoint_name = "torch.EmbeddingBag"

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "mean", *,
                 include_last_offset: bool = False, padding_idx: Optional[int] = None, sparse: bool = False,
                 optimizer: Any = None, optimizer_kwargs: Optional[Dict[str, Any]] = None,
                 max_norm: Optional[float] = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 _weight: Optional[Tensor] = None, _freeze: bool = False, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)
        self._init_table(num_embeddings, embedding_dim, padding_idx, sparse, optimizer, optimizer_kwargs, max_norm,
                         scale_grad_by_freq, _weight, _freeze, device, dtype)

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        out: Tensor
        out, _ = torch.ops.embtab.embedding_bag(self.weight, input, offsets, per_sample_weights, self._state(),
                                                self.mode, self._padding, self.include_last_offset, self._gradient,
                                                self._handle)
        return out

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}"
        return s + (", include_last_offset=True" if self.include_last_offset else "") + self._repr_options()

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True, max_norm: Optional[float] = None,
                        norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                        sparse: bool = False, include_last_offset: bool = False, padding_idx: Optional[int] = None,
                        **kwargs: Any) -> "EmbeddingBag":
        """As ``torch.nn.EmbeddingBag.from_pretrained`` (the rows are copied into an aligned table)."""
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be 2-D, got shape {tuple(embeddings.shape)}")
        return cls(embeddings.shape[0], embeddings.shape[1], mode, include_last_offset=include_last_offset,
                   padding_idx=padding_idx, max_norm=max_norm, norm_type=norm_type,
                   scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=embeddings, _freeze=freeze,
                   **kwargs)

    def _config(self) -> Dict[str, Any]:
        return {"init": {"mode": self.mode, "include_last_offset": self.include_last_offset,
                         "padding_idx": self.padding_idx, "sparse": self.sparse}}
