"""The sharded checkpoint format.

::

    path/
      manifest.json        the layout, the optimizer, each shard's step and digest, and which
                           generation holds the shards (replaced atomically, always last)
      gen-<id>/shard-00000/ one embtab checkpoint (embtab.save) per shard, written by its actor
      gen-<id>/shard-00001/ ...

A save writes a whole new generation beside the old one, then switches ``manifest.json`` to it
(write a temporary file, fsync, ``os.replace``, fsync the directory), then deletes older
generations: a crash at any moment leaves the manifest naming one complete generation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np

from embtab import CheckpointError

FORMAT = "embtab-sharded-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a shard's arrays: binds each shard's
    files to the manifest that names them (a shard directory from another save does not match)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        # Large arrays in 64 MB slices: no second copy of a table-sized buffer.
        flat = array.reshape(-1).view(np.uint8)
        for begin in range(0, flat.size, 1 << 26):
            h.update(flat[begin:begin + (1 << 26)].data)
    return h.hexdigest()


def new_generation() -> str:
    return f"gen-{uuid.uuid4().hex}"


def shard_dir(generation: str, shard: int) -> str:
    return f"{generation}/shard-{shard:05d}"


def _sync_dir(path: str) -> None:
    # Directories cannot be opened for fsync everywhere (Windows); there the rename is all we have.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(path: str, manifest: Dict[str, Any]) -> None:
    """Atomically make ``manifest`` the checkpoint at ``path``, then remove older generations."""
    text = json.dumps({"format": FORMAT, "version": VERSION, **manifest}, indent=1, sort_keys=True)
    temporary = os.path.join(path, f".{MANIFEST}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, os.path.join(path, MANIFEST))
    _sync_dir(path)
    discard_generations(path, keep=manifest["generation"])


def discard_generations(path: str, keep: str) -> None:
    """Delete every generation and leftover temporary file but ``keep`` (after an interrupted save
    too: only what the manifest names is ever read)."""
    for name in os.listdir(path):
        if name != keep and (name.startswith("gen-") or name.startswith(f".{MANIFEST}.")):
            _remove(os.path.join(path, name))


def _remove(path: str) -> None:
    """A directory tree or a file; a failure leaves garbage that the next save removes, never an error."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        os.remove(path)


def read_manifest(path: str) -> Dict[str, Any]:
    """The manifest of the sharded checkpoint at ``path``.

    Raises FileNotFoundError when there is none, CheckpointError when it is not one.
    """
    full = Path(path, MANIFEST)
    if not full.is_file():
        raise FileNotFoundError(f"no sharded checkpoint at {path!r} (no {MANIFEST})")
    try:
        manifest = json.loads(full.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"corrupt manifest in {path!r}: {exc}") from exc
    if not isinstance(manifest, dict) or (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
        raise CheckpointError(f"{full} is not an embtab sharded checkpoint (format {FORMAT!r} version {VERSION})")
    return manifest
