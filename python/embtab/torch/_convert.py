"""Tensors to numpy views and back, without copies, and the thread count shared with torch."""

import threading
from typing import Any, Optional

import numpy as np
import torch

from .. import _core
from .._arrays import raise_device_error


def view(tensor: Optional[torch.Tensor], name: str) -> Any:
    """The numpy array that shares ``tensor``'s memory (None stays None).

    A tensor on another device, or of a dtype numpy lacks (bfloat16), is a TypeError naming it;
    numpy dtypes, shapes and layouts are left for the compiled layer to judge. (``Tensor.numpy()``
    costs a third of ``np.from_dlpack`` per call.)
    """
    if tensor is None:
        return None
    if tensor.device.type != "cpu":
        raise_device_error(name, str(tensor.device))
    try:
        return tensor.detach().numpy()
    except TypeError:
        raise TypeError(f"{name} has dtype {tensor.dtype}, which has no numpy counterpart (embtab takes "
                        "float32 / float64 values and int32 / int64 ids)") from None


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
