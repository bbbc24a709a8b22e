"""Optimizer specs: ``(name, hyperparameters)`` pairs that every shard turns into the same
:mod:`embtab.optim` optimizer over its own rows."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from embtab import optim

_CLASSES = (optim.SGD, optim.Adagrad, optim.RowWiseAdagrad, optim.Adam)
# "rowwise_adagrad" (the kernel's name, as FBGEMM spells its optimizers) or "RowWiseAdagrad".
_BY_NAME = {**{cls._kind: cls for cls in _CLASSES}, **{cls.__name__: cls for cls in _CLASSES}}

OptimizerSpec = Tuple[str, Dict[str, Any]]


def check_optimizer(spec: Any, dtype: Any) -> Optional[OptimizerSpec]:
    """``(kind, hyperparameters)``, validated by building the optimizer over a one-row table, so
    that a bad learning rate fails here, with embtab's own message, before any actor starts."""
    if spec is None:
        return None
    if not (isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], dict)):
        raise TypeError("optimizer must be None or a pair (name, {hyperparameters}) such as "
                        f"('rowwise_adagrad', {{'lr': 0.01}}), got {spec!r}")
    name, hyper = spec
    cls = _BY_NAME.get(name) if isinstance(name, str) else (name if name in _CLASSES else None)
    if cls is None:
        names = ", ".join(repr(c._kind) for c in _CLASSES)
        raise ValueError(f"unknown optimizer {name!r}: expected one of {names} (or an embtab.optim class)")
    hyper = dict(hyper)
    make_optimizer((cls._kind, hyper), np.zeros((1, 1), dtype))
    return cls._kind, hyper


def make_optimizer(spec: OptimizerSpec, table: np.ndarray) -> Any:
    kind, hyper = spec
    cls = _BY_NAME[kind]
    kwargs = dict(hyper)
    if "betas" in kwargs:  # a JSON manifest gives back a list
        kwargs["betas"] = tuple(kwargs["betas"])
    return cls(table, **kwargs)


def state_arrays(opt: Any) -> Dict[str, np.ndarray]:
    """The per-row state arrays of an optimizer (every embtab optimizer's arrays are per row)."""
    if opt is None:
        return {}
    return dict(sorted(opt._row_state().items()))
