"""Tensors to numpy views and back, without copies, and the thread count shared with torch."""

import threading
from typing import Any, Optional

import numpy as np
import torch

from .. import _core
from .._arrays import as_array


def view(tensor: Optional[torch.Tensor], name: str) -> Any:
    """The numpy array that shares ``tensor``'s memory (None stays None).

    Goes through DLPack (:func:`embtab._arrays.as_array`), so a tensor on another device is a
    TypeError naming it; dtypes, shapes and layouts are left for the compiled layer to judge.
    """
    if tensor is None:
        return None
    return as_array(tensor.detach(), name)


def tensor(array: Any) -> torch.Tensor:
    """A tensor over a numpy array's memory (the array stays alive as long as the tensor)."""
    return torch.from_numpy(np.asarray(array))


_threads_lock = threading.Lock()
_follow_torch = True


def follow_torch_threads(enabled: bool = True) -> None:
    """Whether embtab.torch's operators run embtab's kernels on ``torch.get_num_threads()``
    threads (the default) or leave embtab's own setting (:func:`embtab.set_num_threads`) alone."""
    global _follow_torch
    _follow_torch = bool(enabled)


def sync_threads() -> None:
    """Makes embtab's pool as large as torch's intra-op pool before a kernel runs.

    Two pools larger than the machine together, both busy-waiting between regions, take the cores
    from each other (on 2 cores a torch step with embtab's kernels on 2 threads beside torch's 2
    ran slower than on 1). Following ``torch.set_num_threads`` gives one knob for both.
    """
    if not _follow_torch:
        return
    wanted = torch.get_num_threads()
    if wanted != _core.get_num_threads():
        with _threads_lock:
            if wanted != _core.get_num_threads():
                _core.set_num_threads(wanted)
