"""Crash-safe checkpoints: ``save(path, **named)`` / ``load(path)``.

Layout of a checkpoint directory::

    path/
      .embtab-lock        saves hold an exclusive flock on it, loads a shared one (never removed)
      CURRENT             "snap-<uuid>\\n": the complete snapshot to load (replaced atomically)
      snap-<uuid>/        one snapshot: .embtab-snapshot (its uuid), manifest.json, 0.npy, 1.npy ...

``save`` takes the exclusive lock, writes a new snapshot into ``.tmp-snap-<uuid>/`` (the marker
first, then the arrays, then the manifest, each fsynced), renames it to ``snap-<uuid>``, switches
``CURRENT`` atomically (``.tmp-CURRENT-<uuid>``, fsync, ``os.replace``, fsync of the directory), and
only then deletes what embtab wrote before: ``snap-*`` / ``.tmp-snap-*`` directories whose marker
holds their own uuid, and ``.tmp-CURRENT-*`` files holding a snapshot name or nothing. A name that
does not match these patterns exactly is never touched, nor is any file inside a snapshot that
embtab does not write. A save that fails removes what it wrote. ``load`` holds the shared lock, so
it always reads one complete snapshot, and trusts nothing in the directory: plain names only,
regular files opened without following links, sizes and ``.npy`` headers compared with the
manifest before any data is read, every setting validated by the class being restored.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib
import io
import json
import math
import os
import re
import stat
import struct
import unicodedata
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import numpy as np

from ._arrays import ROW_ALIGNMENT, aligned_empty

FORMAT = "embtab-checkpoint"
FORMAT_VERSION = 2

_LOCK = ".embtab-lock"
_CURRENT = "CURRENT"
_MANIFEST = "manifest.json"
_MARKER = ".embtab-snapshot"
_SNAP = re.compile(r"snap-([0-9a-f]{32})")
_TMP_SNAP = re.compile(r"\.tmp-snap-([0-9a-f]{32})")
_TMP_CURRENT = re.compile(r"\.tmp-CURRENT-[0-9a-f]{32}")
_CURRENT_TEXT = re.compile(rb"(snap-[0-9a-f]{32})\n?")
_ARRAY_FILE = re.compile(r"[0-9]{1,9}\.npy")
_DTYPE = re.compile(r"[<>|][biufcmMSU][0-9]{1,9}(\[[0-9]{0,4}[a-zA-Z]{1,2}\])?")
_SHA256 = re.compile(r"[0-9a-f]{64}")

_MAX_NAME_LEN = 256
_MAX_CURRENT_BYTES = 64
_MAX_MANIFEST_BYTES = 256 << 20  # a SubwordEmbedding's vocabulary lives in the manifest
_MAX_MARKER_BYTES = 64
_MAX_JSON_DEPTH = 64
_MAX_NDIM = 32
_CHUNK = 16 << 20  # bytes hashed and written (or read) per call
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")

_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO never blocks
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Classes that can be saved: name -> class with `_checkpoint_state()` and `_from_checkpoint(...)`.
_REGISTRY: Dict[str, Type[Any]] = {}


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt, malformed or of an unknown format."""


def register_checkpointable(cls: Type[Any]) -> Type[Any]:
    """Class decorator: instances provide ``_checkpoint_state() -> (config: dict, arrays: dict)``
    and the class ``_from_checkpoint(config, arrays)``, which validates ``config`` (raising
    TypeError / ValueError / KeyError for a bad one) and ``_checkpoint_order`` (0 for objects
    that own arrays, 1 for those that refer to another object's arrays)."""
    _REGISTRY[_class_name(cls)] = cls
    return cls


def _class_name(cls: Type[Any]) -> str:
    """The name a class is saved under: its own ``_checkpoint_name`` where it has one (the classes
    of embtab's optional parts, "torch.Embedding", "distributed.ShardedTable", so that they never
    clash with embtab.Embedding), else its name."""
    return str(cls.__dict__.get("_checkpoint_name", cls.__name__))


# The optional parts of embtab whose classes register themselves when imported: a checkpoint that
# holds "torch.Embedding" makes load() import embtab.torch first (and nothing else: a manifest never
# makes load() import a module outside this list).
_OPTIONAL_PARTS = {"torch": "embtab.torch", "distributed": "embtab.distributed"}


def _registered_class(name: Any) -> Optional[Type[Any]]:
    if not isinstance(name, str):
        return None
    part = name.split(".", 1)[0] if "." in name else None
    if name not in _REGISTRY and part in _OPTIONAL_PARTS:
        try:
            importlib.import_module(_OPTIONAL_PARTS[part])
        except ImportError as exc:
            raise CheckpointError(f"the checkpoint holds a {name}, which needs {_OPTIONAL_PARTS[part]}: {exc}") from None
    return _REGISTRY.get(name)


# ---------------------------------------------------------------------------------------------
# What save() accepts: names, JSON values, arrays, generators.


def _check_name(name: Any) -> Optional[str]:
    """Why ``name`` cannot name an entry, or None."""
    if not isinstance(name, str) or not name:
        return "names must be non-empty str"
    if len(name) > _MAX_NAME_LEN:
        return f"names must have at most {_MAX_NAME_LEN} characters, got {len(name)}"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        return f"names must not contain control characters or lone surrogates, got {name!r}"
    return None


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    """TypeError unless ``value`` survives a JSON round trip unchanged (tuples come back as lists)."""
    if depth > _MAX_JSON_DEPTH:
        raise ValueError(f"{where} is nested more than {_MAX_JSON_DEPTH} levels deep (or refers to itself)")
    if value is None or type(value) in (bool, int, float, str):
        return
    if type(value) in (list, tuple):
        if all(item is None or type(item) in (bool, int, float, str) for item in value):
            return  # the common case (a vocabulary) without a name for each item
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; JSON keys must be str")
            _check_json(item, f"{where}[{key!r}]", depth + 1)
        return
    hint = " (convert it with int() / float(), or save it as a numpy array)" if isinstance(value, np.generic) else ""
    raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}: only None, bool, int, "
                    f"float, str and lists / dicts of them can be saved as values{hint}")


def _check_savable_array(array: np.ndarray, where: str) -> None:
    dtype = array.dtype
    if not _DTYPE.fullmatch(dtype.str) or np.dtype(dtype.str) != dtype:  # what load() accepts
        raise TypeError(f"cannot save {where}: arrays of dtype {dtype} (object or structured) are not supported")


def _json_state(state: Any) -> Any:
    """A bit generator's state with its arrays as lists (JSON)."""
    if isinstance(state, dict):
        return {k: _json_state(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return state.tolist()
    return int(state) if isinstance(state, np.integer) else state


def _state_like(template: Any, saved: Any, where: str) -> Any:
    """``saved`` (parsed JSON) in the structure of the freshly made state ``template``."""
    if isinstance(template, dict):
        if not isinstance(saved, dict) or set(saved) != set(template):
            raise CheckpointError(f"{where} must have the keys {sorted(template)}")
        return {k: _state_like(template[k], saved[k], f"{where}[{k!r}]") for k in template}
    if isinstance(template, np.ndarray):
        if not isinstance(saved, list) or len(saved) != template.size or not all(type(v) is int for v in saved):
            raise CheckpointError(f"{where} must be a list of {template.size} integers")
        try:
            return np.array(saved, dtype=template.dtype).reshape(template.shape)
        except OverflowError:
            raise CheckpointError(f"{where} holds an integer outside {template.dtype}") from None
    if type(saved) is not type(template):
        raise CheckpointError(f"{where} must be {type(template).__name__}, got {type(saved).__name__}")
    return saved


def restore_bit_generator(bit_generator: Any, saved: Any, where: str) -> None:
    """Set ``bit_generator.state`` from what :func:`_json_state` saved, validated (CheckpointError)."""
    state = _state_like(bit_generator.state, saved, where)
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise CheckpointError(f"{where} is not a valid {type(bit_generator).__name__} state: {exc}") from None


def bit_generator_state(bit_generator: Any) -> Dict[str, Any]:
    """``bit_generator.state`` as JSON (what :func:`restore_bit_generator` takes)."""
    state: Dict[str, Any] = _json_state(bit_generator.state)
    return state


class _Plan:
    """Everything a save writes, checked before the directory is touched: the manifest's entries
    and the arrays to write (each distinct array once: an optimizer's table is its layer's weight)."""

    def __init__(self) -> None:
        self.entries: Dict[str, Any] = {}
        self.arrays: List[Tuple[str, np.ndarray]] = []
        self._file_of: Dict[int, str] = {}

    def array_file(self, array: np.ndarray, where: str) -> str:
        # The plan holds every array until the save ends, so no id() here is reused meanwhile.
        if id(array) not in self._file_of:
            _check_savable_array(array, where)
            self._file_of[id(array)] = f"{len(self.arrays)}.npy"
            self.arrays.append((self._file_of[id(array)], array))
        return self._file_of[id(array)]

    def add(self, name: str, value: Any) -> None:
        problem = _check_name(name)
        if problem:
            raise ValueError(f"{problem} (in save())")
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError(f"cannot save {name}: a masked array would lose its mask; save .data and .mask")
        if isinstance(value, (np.ndarray, np.generic)):
            entry: Dict[str, Any] = {"kind": "array", "file": self.array_file(np.asarray(value), name)}
            if isinstance(value, np.generic):
                entry["scalar"] = True
        elif isinstance(value, np.random.Generator):
            entry = {"kind": "generator", "state": bit_generator_state(value.bit_generator)}
        elif _REGISTRY.get(_class_name(type(value))) is type(value):
            config, arrays = value._checkpoint_state()
            _check_json(config, f"the settings of {name}")
            files = {key: self.array_file(arr, f"{name}.{key}") for key, arr in arrays.items()}
            entry = {"kind": "object", "class": _class_name(type(value)), "config": config, "arrays": files}
        elif value is None or isinstance(value, (bool, int, float, str, list, tuple, dict)):
            _check_json(value, name)
            entry = {"kind": "value", "value": value}
        elif hasattr(value, "__array__"):  # a torch tensor from a state_dict, a jax array, ...
            try:
                array = np.asarray(value)
            except (TypeError, ValueError, RuntimeError) as exc:  # torch: requires_grad, bfloat16, GPU
                raise TypeError(f"cannot save {name}: it does not convert to a numpy array ({exc})") from None
            entry = {"kind": "array", "file": self.array_file(array, name)}
        else:
            raise TypeError(f"cannot save {name}: expected a numpy array or scalar, an array-like, a "
                            f"np.random.Generator, a JSON value (None, bool, int, float, str, list, dict) or an "
                            f"embtab layer or optimizer, got {type(value).__name__}")
        self.entries[name] = entry


# ---------------------------------------------------------------------------------------------
# .npy files: embtab writes its own header (numpy's format 1.0 / 2.0, padded so that the data
# starts on a 128-byte boundary, which a memory map keeps) and expects exactly that header back.


def _npy_header(dtype: np.dtype, shape: Tuple[int, ...]) -> bytes:
    text = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    for version, length_format in ((1, "<H"), (2, "<I")):
        prefix = 8 + struct.calcsize(length_format)
        total = -(-(prefix + len(text) + 1) // ROW_ALIGNMENT) * ROW_ALIGNMENT
        if total - prefix < 1 << (8 * struct.calcsize(length_format)):
            padded = text + " " * (total - prefix - len(text) - 1) + "\n"
            return b"\x93NUMPY" + bytes((version, 0)) + struct.pack(length_format, total - prefix) + padded.encode("latin1")
    raise ValueError(f"array shape {shape} is too long for a .npy header")  # pragma: no cover


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _create_file(dirfd: int, name: str, chunks: Iterator[memoryview | bytes]) -> Tuple[int, str]:
    """Write a new file (fsynced); its size and SHA-256."""
    fd = os.open(name, _CREATE_FILE, 0o644, dir_fd=dirfd)
    try:
        digest, size = hashlib.sha256(), 0
        buffer = memoryview(bytearray(0))
        for chunk in chunks:
            if not isinstance(chunk, bytes):
                # Hash and write a private copy of an array's bytes: another thread may be writing
                # to the array, and the checksum must be that of the bytes in the file.
                if len(buffer) < len(chunk):
                    buffer = memoryview(bytearray(len(chunk)))
                buffer[:len(chunk)] = chunk
                chunk = buffer[:len(chunk)]
            digest.update(chunk)
            _write_all(fd, chunk)
            size += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size, digest.hexdigest()


def _array_chunks(header: bytes, array: np.ndarray) -> Iterator[memoryview | bytes]:
    yield header
    flat = array.reshape(-1).view(np.uint8).data
    for start in range(0, len(flat), _CHUNK):
        yield flat[start:start + _CHUNK]


def _write_array(dirfd: int, name: str, array: np.ndarray) -> Dict[str, Any]:
    # One copy at a time for arrays that are not C-contiguous (np.ascontiguousarray makes 0-d 1-d).
    array = array if array.flags.c_contiguous else array.copy(order="C")
    size, sha = _create_file(dirfd, name, _array_chunks(_npy_header(array.dtype, array.shape), array))
    return {"shape": list(array.shape), "dtype": array.dtype.str, "size": size, "sha256": sha}


# ---------------------------------------------------------------------------------------------
# Directory protocol.


@contextlib.contextmanager
def _locked(dirfd: int, exclusive: bool) -> Iterator[None]:
    """flock on the lock file, opened for this call only: one open file per call excludes other
    threads of this process as well as other processes. A load of a directory without a lock
    file (nothing with this protocol ever saved there) takes no lock."""
    flags = _OPEN_FILE | (os.O_CREAT if exclusive else 0)
    try:
        fd = os.open(_LOCK, flags, 0o644, dir_fd=dirfd)
    except OSError as exc:
        if exclusive:
            raise
        if exc.errno == errno.ENOENT:
            yield
            return
        raise CheckpointError(f"cannot open the lock file {_LOCK}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{_LOCK} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            # Explicit: a child forked meanwhile shares this open file and would keep the lock.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_regular(dirfd: int, name: str) -> Tuple[int, os.stat_result]:
    """Open a regular file of the directory ``dirfd`` (never a link, a FIFO or a device)."""
    try:
        fd = os.open(name, _OPEN_FILE, dir_fd=dirfd)
    except FileNotFoundError:
        raise CheckpointError(f"the checkpoint is missing {name}") from None
    except OSError as exc:
        why = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
        raise CheckpointError(f"{name} {why}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CheckpointError(f"{name} is not a regular file")
    return fd, st


def _read_exact(fd: int, view: memoryview, name: str, digest: Any = None) -> None:
    done = 0
    while done < len(view):
        n = os.readv(fd, [view[done:done + _CHUNK]])
        if n == 0:
            raise CheckpointError(f"{name} ends after {done} of {len(view)} bytes")
        if digest is not None:
            digest.update(view[done:done + n])
        done += n


def _read_small(dirfd: int, name: str, limit: int) -> bytes:
    """A whole small file, refused unread when it is larger than ``limit`` bytes."""
    fd, st = _open_regular(dirfd, name)
    try:
        if st.st_size > limit:
            raise CheckpointError(f"{name} has {st.st_size} bytes, more than the {limit} it may have")
        data = bytearray(st.st_size)
        _read_exact(fd, memoryview(data), name)
        return bytes(data)
    finally:
        os.close(fd)


def _current_snapshot(dirfd: int) -> str:
    text = _read_small(dirfd, _CURRENT, _MAX_CURRENT_BYTES)
    match = _CURRENT_TEXT.fullmatch(text)
    if match is None:
        raise CheckpointError(f"{_CURRENT} does not name a snapshot (snap- and 32 hex digits): {text[:40]!r}")
    return match.group(1).decode("ascii")


def _open_dir(dirfd: int, name: str) -> int:
    return os.open(name, _OPEN_DIR | os.O_NOFOLLOW, dir_fd=dirfd)


def _remove_snapshot(dirfd: int, name: str, key: str) -> None:
    """Remove a snapshot directory that embtab wrote (its marker holds ``key``), and there only the
    files embtab writes. A ``snap-`` directory is first renamed back to ``.tmp-snap-``, and its
    marker goes last, so a removal that is interrupted leaves a marked or an empty ``.tmp-snap-``
    directory, which the next save finishes removing (as it does what a save killed before
    writing its marker left)."""
    try:
        fd = _open_dir(dirfd, name)
    except OSError:
        return
    try:
        try:
            marker = _read_small(fd, _MARKER, _MAX_MARKER_BYTES)
        except CheckpointError:
            marker = None
        # An empty marker alone: a save killed between creating its marker and writing it.
        ours = marker == key.encode("ascii") + b"\n" or (
            marker == b"" and _TMP_SNAP.fullmatch(name) is not None and os.listdir(fd) == [_MARKER])
        if ours and _SNAP.fullmatch(name):
            try:
                os.rename(name, f".tmp-{name}", src_dir_fd=dirfd, dst_dir_fd=dirfd)
            except OSError:
                return
            name = f".tmp-{name}"
        if ours:
            for entry in os.listdir(fd):
                if entry == _MANIFEST or _ARRAY_FILE.fullmatch(entry):
                    with contextlib.suppress(OSError):
                        os.unlink(entry, dir_fd=fd)
            with contextlib.suppress(OSError):
                os.unlink(_MARKER, dir_fd=fd)
    finally:
        os.close(fd)
    if _TMP_SNAP.fullmatch(name):
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=dirfd)  # fails, harmlessly, on anything embtab did not write


def _remove_leftovers(dirfd: int, keep: str) -> None:
    """After a successful switch (under the exclusive lock, so no save is in progress): the
    superseded snapshot and the remains of saves that were killed."""
    for name in os.listdir(dirfd):
        match = _SNAP.fullmatch(name) or _TMP_SNAP.fullmatch(name)
        if match and name != keep:
            _remove_snapshot(dirfd, name, match.group(1))
        elif _TMP_CURRENT.fullmatch(name):
            with contextlib.suppress(CheckpointError, OSError):
                text = _read_small(dirfd, name, _MAX_CURRENT_BYTES)
                if not text or _CURRENT_TEXT.fullmatch(text):  # empty: killed before its write
                    os.unlink(name, dir_fd=dirfd)


def _save_locked(dirfd: int, plan: _Plan) -> None:
    key = uuid.uuid4().hex
    tmp, snap, tmp_current = f".tmp-snap-{key}", f"snap-{key}", f".tmp-CURRENT-{key}"
    written = None  # the directory to remove if this save fails
    try:
        os.mkdir(tmp, 0o755, dir_fd=dirfd)
        written = tmp
        snapfd = _open_dir(dirfd, tmp)
        try:
            _create_file(snapfd, _MARKER, iter([key.encode("ascii") + b"\n"]))
            files = {name: _write_array(snapfd, name, array) for name, array in plan.arrays}
            manifest = {"format": FORMAT, "version": FORMAT_VERSION, "files": files, "entries": plan.entries}
            _create_file(snapfd, _MANIFEST, iter([json.dumps(manifest).encode("ascii")]))
            os.fsync(snapfd)
        finally:
            os.close(snapfd)
        os.rename(tmp, snap, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        written = snap
        os.fsync(dirfd)
        _create_file(dirfd, tmp_current, iter([snap.encode("ascii") + b"\n"]))
        os.replace(tmp_current, _CURRENT, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        written = None  # CURRENT names it now: it stays, whatever happens next
        os.fsync(dirfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_current, dir_fd=dirfd)
        if written is not None:
            _remove_snapshot(dirfd, written, key)
        raise
    # Only now, with the new snapshot durable, go the old one and any remains of killed saves.
    _remove_leftovers(dirfd, keep=snap)


def save(path: os.PathLike[str] | str, /, **named: Any) -> None:
    """Save arrays, layers, optimizers and plain values together, atomically and crash-safely.

    Parameters
    ----------
    path : str or path-like
        A checkpoint directory (created if missing). An existing checkpoint there is replaced
        atomically: a crash at any moment leaves either the old or the new one, complete. Only
        what embtab wrote there is ever removed (see the module documentation); other files in
        the directory are left alone. Saves to one directory from several threads or processes
        are serialised by an exclusive ``flock`` on ``path/.embtab-lock``.
    **named
        ``name=value`` pairs. A name is any non-empty str of at most 256 characters without
        control characters, so ``save(path, **model.state_dict(), emb=layer, opt=opt)`` works.
        Values may be:

        - numpy arrays (any shape; numeric, bool, datetime or str dtypes) and numpy scalars;
        - array-likes (``__array__``: a CPU torch tensor, ...), saved as numpy arrays;
        - embtab layers (their weight, settings and dropout stream) and optimizers (their
          hyperparameters, state and step count; the table is shared with the layer or array
          it updates when that is saved too, and shared again by :func:`load`);
        - ``np.random.Generator`` (its bit generator's state);
        - None, bool, int, float, str, and lists / dicts (str keys) of them, stored in the
          manifest as JSON (tuples come back as lists).

    Raises
    ------
    TypeError
        A value of another type, an object or structured array, a dict key that is not str.
    ValueError
        No values, a bad name, a value nested too deeply, or values too large for the manifest
        (256 MiB of JSON).
    OSError
        The directory cannot be written (a full disk, ...). The save then removes what it wrote
        and the previous checkpoint stays the current one.
    """
    if not named:
        raise ValueError("save() needs at least one name=value to save")
    plan = _Plan()
    for name, value in named.items():
        plan.add(name, value)
    # Each file's description: its name, shape, dtype, size and checksum (< 200 bytes beside the shape).
    size = len(json.dumps(plan.entries)) + sum(200 + len(str(a.shape)) for _, a in plan.arrays) + 100
    if size > _MAX_MANIFEST_BYTES:
        raise ValueError(f"the manifest would have about {size} bytes, more than the {_MAX_MANIFEST_BYTES} load() "
                         "reads: save large data (a vocabulary of millions of words) as numpy arrays")
    path = os.fspath(path)
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)
        parent = os.open(os.path.dirname(os.path.abspath(path)), _OPEN_DIR)
        try:
            os.fsync(parent)
        finally:
            os.close(parent)
    dirfd = os.open(path, _OPEN_DIR)
    try:
        with _locked(dirfd, exclusive=True):
            _save_locked(dirfd, plan)
    finally:
        os.close(dirfd)


# ---------------------------------------------------------------------------------------------
# Loading: every field checked, every failure a CheckpointError.


def _as_dict(value: Any, where: str, required: Tuple[str, ...], optional: Tuple[str, ...] = ()) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{where} must be a JSON object, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    unknown = [k for k in value if k not in required and k not in optional]
    if missing or unknown:
        raise CheckpointError(f"{where}: missing {missing}, unknown {unknown[:5]}")
    return value


def _file_info(name: Any, info: Any) -> Tuple[Tuple[int, ...], np.dtype, int, str]:
    if not isinstance(name, str) or not _ARRAY_FILE.fullmatch(name):
        raise CheckpointError(f"the manifest names a file {str(name)[:80]!r}: only names like 0.npy are allowed")
    info = _as_dict(info, f"files[{name!r}]", ("shape", "dtype", "size", "sha256"))
    shape, dtype, size, sha = info["shape"], info["dtype"], info["size"], info["sha256"]
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(type(n) is int and 0 <= n < 2**63 for n in shape)):
        raise CheckpointError(f"files[{name!r}]: shape must be a list of at most {_MAX_NDIM} sizes >= 0")
    if not isinstance(dtype, str) or not _DTYPE.fullmatch(dtype):
        raise CheckpointError(f"files[{name!r}]: unsupported dtype {str(dtype)[:40]!r}")
    try:
        parsed = np.dtype(dtype)
    except (TypeError, ValueError):
        raise CheckpointError(f"files[{name!r}]: unsupported dtype {dtype!r}") from None
    if parsed.str != dtype:
        raise CheckpointError(f"files[{name!r}]: unsupported dtype {dtype!r}")
    if type(size) is not int or not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise CheckpointError(f"files[{name!r}]: size must be an int and sha256 64 hex digits")
    return tuple(shape), parsed, size, sha


def _mapped(fd: int, dtype: np.dtype, shape: Tuple[int, ...], offset: int) -> np.ndarray:
    """A copy-on-write map of the data (np.load(mmap_mode="c")): writable, the file never changes."""
    with io.FileIO(os.dup(fd), "rb") as f:
        return np.memmap(f, dtype=dtype, mode="c", offset=offset, shape=shape)


def _read_array(snapfd: int, name: str, info: Tuple[Tuple[int, ...], np.dtype, int, str], mmap: bool, verify: bool) -> np.ndarray:
    shape, dtype, size, sha = info
    header = _npy_header(dtype, shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if size != len(header) + nbytes:
        raise CheckpointError(f"{name}: the manifest's size {size} is not that of shape {shape} and dtype {dtype.str}")
    fd, st = _open_regular(snapfd, name)
    try:
        if st.st_size != size:  # before anything is read or allocated
            raise CheckpointError(f"{name} has {st.st_size} bytes, the manifest says {size}")
        found = bytearray(len(header))
        _read_exact(fd, memoryview(found), name)
        if found != header:
            raise CheckpointError(f"{name}: its .npy header does not match the manifest (shape {shape}, {dtype.str})")
        digest = hashlib.sha256(header) if verify else None
        if mmap and nbytes:
            array = _mapped(fd, dtype, shape, len(header))
            if digest is not None:
                flat = array.reshape(-1).view(np.uint8).data
                for start in range(0, nbytes, _CHUNK):
                    digest.update(flat[start:start + _CHUNK])
        else:
            array = aligned_empty(shape, dtype)
            _read_exact(fd, array.reshape(-1).view(np.uint8).data, name, digest)
    finally:
        os.close(fd)
    if digest is not None and digest.hexdigest() != sha:
        raise CheckpointError(f"checksum mismatch in {name}: the checkpoint is corrupt")
    return array


def _parse_manifest(data: bytes) -> Dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"corrupt manifest: {str(exc)[:200]}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError("not an embtab checkpoint manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {str(manifest.get('version'))[:20]} is not supported "
                              f"(this embtab reads version {FORMAT_VERSION})")
    _as_dict(manifest, "the manifest", ("format", "version", "files", "entries"))
    for key in ("files", "entries"):
        if not isinstance(manifest[key], dict):
            raise CheckpointError(f"the manifest's {key} must be a JSON object")
    return manifest


_ENTRY_FIELDS = {"array": (("kind", "file"), ("scalar",)), "value": (("kind", "value"), ()),
                 "generator": (("kind", "state"), ()), "object": (("kind", "class", "config", "arrays"), ())}


def _check_entry(name: str, entry: Any, files: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[Type[Any]]]:
    """The entry, checked field by field, and the class it restores (objects)."""
    problem = _check_name(name)
    if problem:
        raise CheckpointError(f"entry {name[:80]!r}: {problem}")
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if not isinstance(kind, str) or kind not in _ENTRY_FIELDS:
        raise CheckpointError(f"entry {name!r} has an unknown kind")
    _as_dict(entry, f"entry {name!r}", *_ENTRY_FIELDS[kind])
    refs = [entry["file"]] if kind == "array" else []
    cls = None
    if kind == "array" and entry.get("scalar", True) is not True:
        raise CheckpointError(f"entry {name!r}: scalar must be true when present")
    if kind == "object":
        cls = _registered_class(entry["class"])
        if cls is None:
            raise CheckpointError(f"entry {name!r}: unknown class {str(entry['class'])[:80]!r}")
        if not isinstance(entry["config"], dict) or not isinstance(entry["arrays"], dict):
            raise CheckpointError(f"entry {name!r}: config and arrays must be JSON objects")
        refs = list(entry["arrays"].values())
    for ref in refs:
        if not isinstance(ref, str) or ref not in files:
            raise CheckpointError(f"entry {name!r} refers to a file the manifest does not list: {str(ref)[:80]!r}")
    return entry, cls


def _restore(name: str, entry: Dict[str, Any], cls: Optional[Type[Any]], array_of: Any, owners: Dict[int, Any]) -> Any:
    kind = entry["kind"]
    if kind == "array":
        array = array_of(entry["file"])
        if entry.get("scalar"):
            if array.ndim != 0:
                raise CheckpointError(f"entry {name!r}: a scalar must be a 0-d array, got shape {array.shape}")
            return array[()]
        return array
    if kind == "value":
        return entry["value"]
    if kind == "generator":
        state = entry["state"]
        bit_name = state.get("bit_generator") if isinstance(state, dict) else None
        if bit_name not in _BIT_GENERATORS:
            raise CheckpointError(f"entry {name!r}: unknown bit generator {str(bit_name)[:40]!r}")
        bit_generator = getattr(np.random, bit_name)(0)
        restore_bit_generator(bit_generator, state, f"entry {name!r}")
        return np.random.Generator(bit_generator)
    assert cls is not None
    arrays = {key: array_of(file) for key, file in entry["arrays"].items()}
    try:
        obj = cls._from_checkpoint(entry["config"], arrays)
    except CheckpointError as exc:
        raise CheckpointError(f"entry {name!r}: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError) as exc:
        raise CheckpointError(f"entry {name!r}: not a valid {cls.__name__}: {type(exc).__name__}: {exc}") from None
    if hasattr(obj, "_bind_owner"):
        obj._bind_owner(owners.get(id(arrays.get("table"))))
    # Later entries find their owner by the arrays they share with it: those it was restored from
    # and those it holds now (a DynamicTable copies its rows into storage of its own).
    for arr in list(arrays.values()) + list(obj._checkpoint_state()[1].values()):
        owners.setdefault(id(arr), obj)
    return obj


def _load_snapshot(dirfd: int, mmap: bool, verify: bool) -> Dict[str, Any]:
    snap = _current_snapshot(dirfd)
    try:
        snapfd = _open_dir(dirfd, snap)
    except FileNotFoundError:
        raise CheckpointError(f"{_CURRENT} names a missing snapshot {snap}") from None
    except OSError as exc:
        try:
            link = stat.S_ISLNK(os.stat(snap, dir_fd=dirfd, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        why = "is a symbolic link" if link else f"cannot be opened ({exc.strerror})"
        raise CheckpointError(f"snapshot {snap} {why}") from None
    try:
        manifest = _parse_manifest(_read_small(snapfd, _MANIFEST, _MAX_MANIFEST_BYTES))
        files = {name: _file_info(name, info) for name, info in manifest["files"].items()}
        checked = {name: _check_entry(name, entry, files) for name, entry in manifest["entries"].items()}
        cache: Dict[str, np.ndarray] = {}

        def array_of(file: str) -> np.ndarray:
            if file not in cache:
                cache[file] = _read_array(snapfd, file, files[file], mmap, verify)
            return cache[file]

        # Plain values first, then objects that own arrays (layers), then those that refer to
        # them (optimizers, which find their layer in `owners`).
        order = sorted(checked, key=lambda n: -1 if (cls := checked[n][1]) is None else int(cls._checkpoint_order))
        owners: Dict[int, Any] = {}
        result = {name: _restore(name, *checked[name], array_of, owners) for name in order}
    finally:
        os.close(snapfd)
    return {name: result[name] for name in checked}


def load(path: os.PathLike[str] | str, *, mmap: bool = False, verify: bool = True) -> Dict[str, Any]:
    """Load what :func:`save` wrote, as a dict ``name -> value`` in the order of the save.

    Arrays come back as numpy arrays (128-byte aligned), numpy scalars as numpy scalars, JSON
    values as parsed JSON, generators as ``np.random.Generator``, layers and optimizers as
    objects that continue training exactly where the saved ones were (an optimizer's table is
    its loaded layer's weight, and ``opt.layer`` is that layer).

    Parameters
    ----------
    path : str or path-like
        The checkpoint directory. A load holds a shared ``flock`` on ``path/.embtab-lock``: it
        reads one complete snapshot even while another thread or process saves to ``path``.
    mmap : bool
        Map the arrays copy-on-write instead of reading them (``np.load(mmap_mode="c")``; tables
        larger than RAM): they are writable ``np.memmap`` arrays, so a loaded layer and optimizer
        train as usual, but changes stay in memory and the checkpoint's files never change (save
        again to keep them). Arrays of zero size are plain arrays.
    verify : bool
        Check every array file's SHA-256 against the manifest. This reads each file once, also
        with ``mmap=True``; ``verify=False`` maps without reading (sizes and headers are still
        checked).

    Raises
    ------
    FileNotFoundError
        ``path`` is not a directory, or has no ``CURRENT`` file.
    CheckpointError (a ValueError)
        Anything else wrong with the checkpoint: missing, truncated or corrupt files, links or
        special files where regular files belong, a malformed or oversized manifest, settings
        that the class being restored refuses, an unknown format.
    """
    path = os.fspath(path)
    try:
        dirfd = os.open(path, _OPEN_DIR)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"no checkpoint at {path!r}") from None
    try:
        with _locked(dirfd, exclusive=False):
            try:
                os.stat(_CURRENT, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path!r} is not an embtab checkpoint (no {_CURRENT} file)") from None
            return _load_snapshot(dirfd, mmap, verify)
    finally:
        os.close(dirfd)
