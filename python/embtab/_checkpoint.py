"""Crash-safe checkpoints: ``save(path, **named)`` / ``load(path)``.

Layout of a checkpoint directory::

    path/
      CURRENT             name of the complete snapshot to load (replaced atomically)
      snap-<id>/          one snapshot: manifest.json + one .npy file per array

``save`` writes a new snapshot into a temporary directory beside the others, fsyncs every file
and the directory, renames it into place, then atomically replaces ``CURRENT`` (write a temporary
file, fsync, ``os.replace``, fsync the directory) and only then deletes the previous snapshot. A
crash at any moment therefore leaves ``CURRENT`` naming either the old or the new complete
snapshot. ``load`` verifies every array's SHA-256 against the manifest.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import uuid
from typing import Any, Dict, Type

import numpy as np

from ._arrays import aligned_empty

FORMAT = "embtab-checkpoint"
FORMAT_VERSION = 1
_CURRENT = "CURRENT"
_MANIFEST = "manifest.json"

# Classes that can be saved: name -> class with `_checkpoint_state()` and `_from_checkpoint(...)`.
_REGISTRY: Dict[str, Type[Any]] = {}


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or of an unknown format."""


def register_checkpointable(cls: Type[Any]) -> Type[Any]:
    """Class decorator: instances provide ``_checkpoint_state() -> (config: dict, arrays: dict)``
    and the class ``_from_checkpoint(config, arrays)``."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _fsync_path(path: str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover (platforms that cannot open directories)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_array(directory: str, filename: str, array: np.ndarray) -> Dict[str, Any]:
    if array.dtype.hasobject:
        raise TypeError(f"cannot save an object array ({filename})")
    path = os.path.join(directory, filename)
    with open(path, "wb") as f:
        np.save(f, np.asarray(array, order="C"), allow_pickle=False)  # ascontiguousarray makes 0-d 1-d
        f.flush()
        os.fsync(f.fileno())
    return {"file": filename, "shape": list(array.shape), "dtype": array.dtype.str, "sha256": _sha256_file(path)}


def _save_order(value: Any) -> int:
    """Arrays first, then layers, then optimizers (which refer to their layers' tables)."""
    return 0 if isinstance(value, np.ndarray) else int(getattr(value, "_checkpoint_order", 1))


def _snapshot_dirs(path: str) -> list:
    return [n for n in os.listdir(path) if n.startswith("snap-") or n.startswith(".tmp-")]


def save(path: "os.PathLike[str] | str", **named: Any) -> None:
    """Save arrays, layers and optimizers together, crash-safely.

    Parameters
    ----------
    path : str or path-like
        A checkpoint directory (created if missing). An existing checkpoint there is replaced
        atomically: a crash leaves either the old or the new one.
    **named
        ``name=value`` pairs: numpy arrays, embtab layers or optimizers.

    Raises
    ------
    TypeError
        A value is neither an array nor a saveable embtab object.
    ValueError
        No values, or a name that is not an identifier.
    """
    if not named:
        raise ValueError("save() needs at least one name=value to save")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    snap = f"snap-{uuid.uuid4().hex}"
    tmp = os.path.join(path, ".tmp-" + snap)
    os.mkdir(tmp)
    try:
        entries: Dict[str, Any] = {}
        # An array shared by several values (an optimizer's table is its layer's weight) is written
        # once; later uses refer to it, and load() shares it again.
        written: Dict[int, str] = {}
        for name, value in sorted(named.items(), key=lambda item: _save_order(item[1])):
            if not name.isidentifier():
                raise ValueError(f"names must be identifiers, got {name!r}")
            if isinstance(value, np.ndarray):
                entries[name] = {"kind": "array", **_write_array(tmp, f"{name}.npy", value)}
                written[id(value)] = name
            elif type(value).__name__ in _REGISTRY and hasattr(value, "_checkpoint_state"):
                config, arrays = value._checkpoint_state()
                files: Dict[str, Any] = {}
                for key, arr in arrays.items():
                    if id(arr) in written:
                        files[key] = {"ref": written[id(arr)]}
                    else:
                        files[key] = _write_array(tmp, f"{name}.{key}.npy", np.asarray(arr))
                        written[id(arr)] = f"{name}.{key}"
                entries[name] = {"kind": "object", "class": type(value).__name__, "module": type(value).__module__,
                                 "config": config, "arrays": files, "order": _save_order(value)}
            else:
                raise TypeError(f"cannot save {name}: expected a numpy array or an embtab layer or optimizer, "
                                f"got {type(value).__name__}")
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "entries": entries}
        with open(os.path.join(tmp, _MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp, directory=True)
        os.rename(tmp, os.path.join(path, snap))
        _fsync_path(path, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    # Switch CURRENT to the new snapshot atomically.
    current_tmp = os.path.join(path, f".tmp-CURRENT-{uuid.uuid4().hex}")
    with open(current_tmp, "w", encoding="utf-8") as f:
        f.write(snap + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(current_tmp, os.path.join(path, _CURRENT))
    _fsync_path(path, directory=True)

    # Only now remove older snapshots and leftovers of interrupted saves.
    for name in _snapshot_dirs(path):
        if name != snap:
            full = os.path.join(path, name)
            if os.path.isdir(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                try:
                    os.remove(full)
                except OSError:
                    pass


def _load_aligned(path: str) -> np.ndarray:
    """np.load into a 128-byte aligned array (as embtab allocates tables and optimizer state), read
    straight from the file without an intermediate copy."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = fmt.read_array_header_2_0(f)
        else:
            shape, fortran_order, dtype = None, True, None
        if fortran_order or dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        array = aligned_empty(shape, dtype)
        view = memoryview(array.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise EOFError(f"{os.path.basename(path)} ends after {done} of {len(view)} data bytes")
            done += n
        return array


def _read_array(directory: str, info: Dict[str, Any], mmap: bool, verify: bool) -> np.ndarray:
    path = os.path.join(directory, info["file"])
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint is missing {info['file']}")
    if verify and _sha256_file(path) != info["sha256"]:
        raise CheckpointError(f"checksum mismatch in {info['file']}: the checkpoint is corrupt")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False) if mmap else _load_aligned(path)
    except (ValueError, OSError, EOFError) as exc:
        raise CheckpointError(f"cannot read {info['file']}: {exc}") from exc
    if list(array.shape) != info["shape"] or array.dtype.str != info["dtype"]:
        raise CheckpointError(f"{info['file']} has shape {array.shape} / dtype {array.dtype.str}, "
                              f"the manifest says {tuple(info['shape'])} / {info['dtype']}")
    return array


def _registered_class(entry: Dict[str, Any]) -> Any:
    """The class of a saved object. One defined in an optional part of embtab (embtab.distributed)
    registers itself when its module is imported, so that module is imported first (only embtab's
    own modules: a checkpoint never makes load() import anything else)."""
    module = entry.get("module")
    if entry["class"] not in _REGISTRY and isinstance(module, str) and module.startswith("embtab."):
        importlib.import_module(module)
    return _REGISTRY.get(entry["class"])


def load(path: "os.PathLike[str] | str", *, mmap: bool = False, verify: bool = True) -> Dict[str, Any]:
    """Load what :func:`save` wrote, as a dict ``name -> array / layer / optimizer``.

    Parameters
    ----------
    path : str or path-like
        The checkpoint directory.
    mmap : bool
        Memory-map arrays read-only instead of reading them (tables larger than RAM); objects
        built from them (layers) get writable copies only where they need them.
    verify : bool
        Check every file's SHA-256 against the manifest (reads each file once).

    Raises
    ------
    FileNotFoundError
        ``path`` or its ``CURRENT`` file does not exist.
    CheckpointError (a ValueError)
        Missing files, checksum mismatches, or an unknown format.
    """
    path = os.fspath(path)
    current_path = os.path.join(path, _CURRENT)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    if not os.path.isfile(current_path):
        raise FileNotFoundError(f"{path!r} is not an embtab checkpoint (no {_CURRENT} file)")
    with open(current_path, encoding="utf-8") as f:
        snap = f.read().strip()
    directory = os.path.join(path, snap)
    manifest_path = os.path.join(directory, _MANIFEST)
    if not snap.startswith("snap-") or not os.path.isfile(manifest_path):
        raise CheckpointError(f"checkpoint {path!r} names a missing snapshot {snap!r}")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"corrupt manifest in {path!r}: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"unknown checkpoint format {manifest.get('format')!r} "
                              f"version {manifest.get('version')!r}")
    result: Dict[str, Any] = {}
    loaded: Dict[str, np.ndarray] = {}  # "name" or "name.key" -> array, for shared arrays
    owners: Dict[int, Any] = {}  # id(array) -> the loaded object holding it (a layer)
    entries = manifest["entries"]
    order = sorted(entries, key=lambda n: 0 if entries[n]["kind"] == "array" else 1 + int(entries[n].get("order", 1)))
    for name in order:
        entry = entries[name]
        if entry["kind"] == "array":
            result[name] = loaded[name] = _read_array(directory, entry, mmap, verify)
        elif entry["kind"] == "object":
            cls = _registered_class(entry)
            if cls is None:
                raise CheckpointError(f"{name}: unknown class {entry['class']!r}")
            arrays = {}
            for key, info in entry["arrays"].items():
                if "ref" in info:
                    if info["ref"] not in loaded:
                        raise CheckpointError(f"{name}.{key} refers to a missing array {info['ref']!r}")
                    arrays[key] = loaded[info["ref"]]
                else:
                    arrays[key] = loaded[f"{name}.{key}"] = _read_array(directory, info, mmap, verify)
            result[name] = obj = cls._from_checkpoint(entry["config"], arrays)
            if hasattr(obj, "_bind_owner"):
                obj._bind_owner(owners.get(id(arrays.get("table"))))
            # What the object holds (a layer's weight) is what later references must share.
            for key, arr in obj._checkpoint_state()[1].items():
                loaded[f"{name}.{key}"] = arr
                owners.setdefault(id(arr), obj)
        else:
            raise CheckpointError(f"{name}: unknown entry kind {entry['kind']!r}")
    return {name: result[name] for name in entries}
