"""The hashing trick: MurmurHash3 buckets, scikit-learn's FeatureHasher mapping and fastText's
subword n-grams, for whole arrays and lists of keys at once."""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import numpy as np
from numpy.typing import NDArray

from . import _core

Key = Union[str, bytes, bytearray, memoryview]
#: What the hash functions accept: a numpy integer, bytes ('S'), str ('U') or object array, a
#: list or tuple of str / bytes / bytearray / memoryview, or a single key.
Keys = Union[NDArray[Any], Sequence[Key], Key, int, np.integer]

# One key that is not a sequence of keys (bytes-like objects are iterable, numpy arrays are not keys).
_SINGLE_KEY_TYPES = (str, bytes, bytearray, memoryview)


def _as_keys(keys: Any, allow_ints: bool) -> Tuple[Any, bool]:
    """(what the compiled layer takes, whether `keys` was a single key)."""
    if isinstance(keys, _SINGLE_KEY_TYPES):
        return [keys], True
    if isinstance(keys, (np.ndarray, list, tuple)):
        return keys, False
    if isinstance(keys, (bool, np.bool_)):
        raise TypeError("keys must be str, bytes, an integer or an array / list of them, got bool")
    if allow_ints and isinstance(keys, np.integer):
        return np.asarray(keys).reshape(1), True
    if allow_ints and isinstance(keys, int):
        # Like sklearn.utils.murmurhash3_32(int): the key is the int's 4 little-endian bytes.
        if -(2**31) <= keys < 2**31:
            return np.array([keys], dtype=np.int32), True
        if 2**31 <= keys < 2**32:
            return np.array([keys], dtype=np.uint32), True
        raise OverflowError(
            f"a Python int key is hashed as 4 bytes and must be in [-2**31, 2**32), got {keys}; "
            "pass np.int64(key) or np.uint64(key) to hash 8 bytes"
        )
    if hasattr(keys, "__array__"):
        return np.asarray(keys), False
    if hasattr(keys, "__iter__"):
        return list(keys), False
    expected = "str, bytes, an integer, a numpy array or a list of str / bytes" if allow_ints else (
        "str, bytes, a numpy 'U' / 'S' array or a list of str / bytes"
    )
    raise TypeError(f"keys must be {expected}, got {type(keys).__name__}")


def murmur3_32(keys: Keys, seed: int = 0, *, signed: bool = False) -> Union[NDArray[np.uint32], NDArray[np.int32], int]:
    """MurmurHash3_x86_32 of each key, bit-exact with the reference and with ``mmh3.hash``.

    Parameters
    ----------
    keys : array_like or str or bytes or int
        - a numpy integer array: each element is hashed as its own little-endian bytes (int32 /
          uint32 as 4 bytes, which matches ``sklearn.utils.murmurhash3_32`` on int32 arrays;
          int64 / uint64 as 8 bytes; int8 / int16 as 1 / 2 bytes);
        - a numpy bytes (``S``) or str (``U``) array: each value without numpy's trailing NUL
          padding, str encoded as UTF-8; an object array of keys;
        - a list or tuple of ``str`` (hashed as UTF-8), ``bytes``, ``bytearray`` and / or
          C-contiguous ``memoryview`` (their raw bytes, as mmh3's buffer functions such as
          ``mmh3.mmh3_32_uintdigest`` take them);
        - a single ``str``, ``bytes``, ``bytearray``, ``memoryview``, numpy integer or Python int
          (a Python int is hashed as 4 bytes, like ``sklearn.utils.murmurhash3_32(int)``): the
          result is then a Python int.

        The keys are read once, before hashing starts: another thread may change a list or a
        ``bytearray`` meanwhile without affecting the result.
    seed : int in [0, 2**32)
    signed : bool
        Return int32 (as ``mmh3.hash(key, seed)``) instead of uint32.

    Returns
    -------
    ndarray of uint32 (int32 with ``signed=True``) with the shape of ``keys`` (``(len(keys),)``
    for a list), or an int for a single key.

    Raises
    ------
    TypeError
        Float or bool arrays, or a list item that is not a key (its position is named).
    UnicodeEncodeError
        A str holding a lone surrogate (the reason names its position).
    ValueError
        ``seed`` outside [0, 2**32); a ``memoryview`` that is not C-contiguous or was released.
    """
    prepared, single = _as_keys(keys, allow_ints=True)
    out = _core.murmur3_32(prepared, seed)
    if signed:
        out = out.view(np.int32)
    return int(out[0]) if single else out


def murmur3_128(keys: Keys, seed: int = 0, *, x64arch: bool = True) -> Union[NDArray[np.uint64], Tuple[int, int]]:
    """MurmurHash3_x64_128 (or x86_128) of each key: ``(h1, h2)`` as in
    ``mmh3.hash64(key, seed, x64arch=x64arch, signed=False)``.

    ``h1`` and ``h2`` are the two little-endian halves of the reference's 16-byte digest
    (``mmh3.hash_bytes(key, seed, x64arch)``): ``out.astype("<u8").tobytes()`` gives the digests,
    and ``h1 | (h2 << 64)`` is ``mmh3.hash128(key, seed, x64arch)``. Keys are interpreted as in
    :func:`murmur3_32`.

    Parameters
    ----------
    keys : array_like or str or bytes or int
    seed : int in [0, 2**32)
    x64arch : bool
        True: MurmurHash3_x64_128 (mmh3's default); False: MurmurHash3_x86_128, the variant
        optimised for 32-bit machines (a different hash, not a different encoding).

    Returns
    -------
    ndarray of uint64 with shape ``keys.shape + (2,)`` (``(len(keys), 2)`` for a list), or a
    tuple ``(h1, h2)`` of Python ints for a single key.

    Raises
    ------
    TypeError, UnicodeEncodeError, ValueError
        As :func:`murmur3_32`.
    """
    prepared, single = _as_keys(keys, allow_ints=True)
    out = _core.murmur3_128(prepared, seed, bool(x64arch))
    if single:
        return int(out[0, 0]), int(out[0, 1])
    return out


def hash_buckets(keys: Keys, num_buckets: int, *, seed: int = 0) -> Union[NDArray[np.int64], int]:
    """Row ids of a hashed embedding table: ``murmur3_32(keys, seed) % num_buckets`` (unsigned).

    Parameters
    ----------
    keys : array_like or str or bytes or int
        As in :func:`murmur3_32`.
    num_buckets : int >= 1
        Number of rows of the table.
    seed : int in [0, 2**32)

    Returns
    -------
    ndarray of int64 with the shape of ``keys``, values in ``[0, num_buckets)``; an int for a
    single key.

    Raises
    ------
    TypeError, UnicodeEncodeError
        As :func:`murmur3_32`.
    ValueError
        ``num_buckets < 1`` or ``seed`` outside [0, 2**32).
    """
    prepared, single = _as_keys(keys, allow_ints=True)
    out = _core.hash_buckets(prepared, num_buckets, seed)
    return int(out[0]) if single else out


def _is_documents(tokens: Any) -> bool:
    if not isinstance(tokens, (list, tuple)) or len(tokens) == 0:
        return False
    first = tokens[0]
    return not isinstance(first, _SINGLE_KEY_TYPES) and hasattr(first, "__iter__")


def feature_hash(
    tokens: Any, n_features: int = 2**20, *, alternate_sign: bool = True, seed: int = 0
) -> Union[Tuple[NDArray[np.int64], NDArray[np.float32]], Tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]]:
    """Column and sign of each token, bit-identical to scikit-learn's
    ``FeatureHasher(n_features, input_type="string", alternate_sign=...)``.

    Per token, ``h = murmur3_32(token, seed, signed=True)``; the column is ``abs(h) % n_features``
    (``h = -2**31`` gives ``2**31 % n_features``, as in scikit-learn) and the sign is -1 where
    ``h < 0`` when ``alternate_sign``, else +1. scikit-learn then adds up the values of repeated
    columns in a document; here each token keeps its own entry, ready for
    ``gather_bags(table, indices, offsets, weights=signs)``.

    Parameters
    ----------
    tokens : list of str / bytes, numpy 'U' / 'S' array, or list of documents
        A flat sequence of tokens (keys as in :func:`murmur3_32`), or a list of documents (each a
        list, tuple or other iterable of tokens). Documents are read in order, each as it is when
        its turn comes, as a Python loop over them would.
    n_features : int >= 1
    alternate_sign : bool
    seed : int in [0, 2**32)
        The seed of the hash. scikit-learn always uses 0 (the default); another seed gives an
        independent hashing, e.g. for a second hash of the same tokens.

    Returns
    -------
    indices : ndarray of int64, the columns (shape of ``tokens`` when flat, else all tokens in order)
    signs : ndarray of float32, +1.0 or -1.0 per token (use ``signs.astype(table.dtype)`` for a
        float64 table)
    offsets : ndarray of int64, ``(num_documents + 1,)``
        Only for a list of documents: document ``d`` holds ``indices[offsets[d]:offsets[d + 1]]``.

    Raises
    ------
    TypeError
        Tokens that are not keys (position named), integer or float arrays.
    UnicodeEncodeError
        A str holding a lone surrogate.
    ValueError
        ``n_features < 1``, ``seed`` outside [0, 2**32).
    """
    if isinstance(tokens, _SINGLE_KEY_TYPES):
        raise TypeError("tokens must be a list of str / bytes (or of documents), got a single " + type(tokens).__name__)
    documents = _is_documents(tokens)
    if not documents and not isinstance(tokens, (np.ndarray, list, tuple)):
        tokens, _ = _as_keys(tokens, allow_ints=False)
        documents = _is_documents(tokens)
    return tuple(_core.feature_hash(tokens, n_features, bool(alternate_sign), seed, documents))  # type: ignore[return-value]


def fasttext_hash(strings: Any) -> Union[NDArray[np.uint32], int]:
    """fastText's dictionary hash: 32-bit FNV-1a over the UTF-8 bytes, each byte sign-extended
    (``uint32_t(int8_t(c))``) exactly as fastText's ``Dictionary::hash`` does.

    For non-ASCII text this differs from textbook FNV-1a; it is what fastText uses to place words
    and character n-grams in its buckets.

    Parameters
    ----------
    strings : list of keys, numpy 'U' / 'S' array, or a single key (str, bytes, bytearray, memoryview)

    Returns
    -------
    ndarray of uint32 with the shape of ``strings``, or an int for a single string.

    Raises
    ------
    TypeError, UnicodeEncodeError
        As :func:`murmur3_32` (integer arrays are refused).
    """
    prepared, single = _as_keys(strings, allow_ints=False)
    out = _core.fasttext_hash(prepared)
    return int(out[0]) if single else out


def subword_ngrams(
    words: Any, *, minn: int = 3, maxn: int = 6, bucket: int = 2_000_000, offset: int = 0
) -> Tuple[NDArray[np.int64], NDArray[np.int64]]:
    """fastText's character n-gram ids of each word (``Dictionary::computeSubwords``), as CSR.

    Each word is wrapped as ``"<" + word + ">"``; every n-gram of ``minn <= n <= maxn``
    characters (UTF-8 characters: a multi-byte character is never split) gets the id
    ``offset + fasttext_hash(ngram) % bucket``, in fastText's order (by start, then by length).
    As in fastText, a 1-character n-gram at the start ("<") or the end (">") is skipped, and the
    end-of-sentence word ``"</s>"`` has no n-grams at all. With ``offset`` = the number of words in
    a fastText model's dictionary, the ids are the rows of its input matrix that
    ``model.get_subwords(word)`` reports (without the word's own id).

    Parameters
    ----------
    words : list of keys, numpy 'U' / 'S' array (flattened), or a single key
    minn, maxn : int
        The n-gram lengths, ``minn <= maxn``. As in fastText, ``maxn = 0`` means no n-grams (its
        setting ``-minn 0 -maxn 0`` for models without subwords), and ``minn = 0`` with ``maxn > 0``
        acts as ``minn = 1``.
    bucket : int >= 0
        Number of n-gram buckets; 0 means no n-grams (fastText sets it to 0 when it has none).
    offset : int >= 0

    Returns
    -------
    ids : ndarray of int64, the n-gram ids of all words in order
    offsets : ndarray of int64, ``(len(words) + 1,)``; word ``i`` has ``ids[offsets[i]:offsets[i + 1]]``,
        ready for ``gather_bags(table, ids, offsets)``.

    Raises
    ------
    TypeError, UnicodeEncodeError
        As :func:`fasttext_hash`.
    ValueError
        A negative ``minn``, ``maxn``, ``bucket`` or ``offset``; ``0 < maxn < minn``.
    """
    prepared, _ = _as_keys(words, allow_ints=False)
    if isinstance(prepared, np.ndarray) and prepared.ndim != 1:
        prepared = prepared.reshape(-1)
    ids, offsets = _core.subword_ngrams(prepared, minn, maxn, bucket, offset)
    return ids, offsets
