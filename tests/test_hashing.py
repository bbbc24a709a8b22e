"""Hashing: MurmurHash3 (x86_32, x64_128), hash_buckets, scikit-learn's FeatureHasher mapping and
fastText's hash and subword n-grams, against published known-answer vectors and the peer
libraries (mmh3, scikit-learn, fasttext) when installed."""

from __future__ import annotations

import functools
import re
import struct
import threading
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embtab

# The known-answer vectors, kept in the repository (tests/fixtures) so that a clean clone runs every
# test.
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "hash-vectors.md"
FOX = "The quick brown fox jumps over the lazy dog"

# Published MurmurHash3 values (aappleby/smhasher; also in the reference notes): (key, seed, x86_32).
MURMUR3_32_VECTORS = [
    ("", 0, 0x00000000),
    ("", 1, 0x514E28B7),
    ("", 0xFFFFFFFF, 0x81F16F39),
    ("foo", 0, 0xF6A5C420),
    ("foo", 42, 0xB12F489E),
    ("hello", 0, 0x248BFA47),
    ("hello", 42, 0xE2DBD2E1),
    ("Hello, world!", 0x9747B28C, 0x24884CBA),
    (FOX, 0, 0x2E4FF723),
    (FOX, 42, 0x347CA102),
    (FOX, 0x9747B28C, 0x2FA826CD),
    ("日本語", 0, 0xA5A47297),
    ("aaaiTBFZ", 0, 0x80000000),
]
# x64_128 digests: h1 then h2, little-endian.
MURMUR3_128_VECTORS = [
    ("hello", 0, "029bbd41b3a7d8cb191dae486a901e5b"),
    ("hello", 42, "086faf60c9b3b8c47abcefb075b83423"),
    (FOX, 0, "6c1b07bc7bbc4be347939ac4a93c437a"),
]
# scikit-learn FeatureHasher(input_type="string"): (token, n_features, column, sign).
FEATURE_HASH_VECTORS = [
    ("dog", 2**20, 980517, -1),
    ("cat", 2**20, 300839, 1),
    ("hello", 2**20, 784967, 1),
    ("where", 2**20, 865514, 1),
    ("日本語", 2**20, 757097, -1),
    ("café", 2**20, 790280, 1),
    ("dog", 1000, 93, -1),
    ("cat", 1000, 759, 1),
    ("aaaiTBFZ", 2**20, 0, -1),
    ("aaaiTBFZ", 10, 8, -1),
    ("aaaiTBFZ", 1000, 648, -1),
]
FASTTEXT_HASH_VECTORS = [
    ("a", 0xE40C292C),
    ("where", 0x056C1458),
    ("</s>", 0xD79C9359),
    ("<中文>", 0xDF242753),
    ("<café", 0xBC65E60F),
    ("日本語", 0x125C3FE7),
]

ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,-'"
NON_ASCII = "éèàüöñçßøåÆŒ中文日本語한국어русскийΣΩ€😀🎉👍🏽\u0301"


def random_words(rng: np.random.Generator, n: int, max_len: int = 12, alphabet: str = ASCII + NON_ASCII) -> List[str]:
    lengths = rng.integers(0, max_len + 1, n)
    chars = np.array(list(alphabet))
    return ["".join(chars[rng.integers(0, chars.size, k)]) for k in lengths]


def mixed_words(rng: np.random.Generator, n: int) -> List[str]:
    """ASCII, accented, CJK and emoji words of 0..40 characters (every tail length of both hashes)."""
    return random_words(rng, n // 2, 40, ASCII) + random_words(rng, n - n // 2, 20)


# ------------------------------------------------------------------------------------------------
# Independent references written from the algorithms' descriptions.


def fnv1a_fasttext(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h ^= (b - 256 if b >= 128 else b) & 0xFFFFFFFF  # the byte as int8, sign-extended to 32 bits
        h = (h * 16777619) & 0xFFFFFFFF
    return h


def compute_subwords(word: bytes, minn: int, maxn: int) -> List[bytes]:
    """fastText's Dictionary::computeSubwords over the bytes of "<word>"."""
    w = b"<" + word + b">"
    out = []
    for i in range(len(w)):
        if w[i] & 0xC0 == 0x80:
            continue
        j, n = i, 1
        while j < len(w) and n <= maxn:
            j += 1
            while j < len(w) and w[j] & 0xC0 == 0x80:
                j += 1
            if n >= minn and not (n == 1 and (i == 0 or j == len(w))):
                out.append(w[i:j])
            n += 1
    return out


def subword_reference(words: List[bytes], minn: int, maxn: int, bucket: int, offset: int) -> Tuple[np.ndarray, np.ndarray]:
    ids: List[int] = []
    offsets = [0]
    for w in words:
        ids.extend(offset + fnv1a_fasttext(g) % bucket for g in compute_subwords(w, minn, maxn))
        offsets.append(len(ids))
    return np.array(ids, dtype=np.int64), np.array(offsets, dtype=np.int64)


def smhasher_verification(hash_bytes: Any, out_bytes: int) -> int:
    """SMHasher's VerificationTest: hash {0}, {0,1}, ..., {0..254} with seed 256 - i, hash the
    concatenated outputs with seed 0, read the first 4 bytes little-endian."""
    digests = b"".join(hash_bytes(bytes(range(i)), 256 - i) for i in range(256))
    assert len(digests) == 256 * out_bytes
    return struct.unpack("<I", hash_bytes(digests, 0)[:4])[0]


def digest_32(key: bytes, seed: int) -> bytes:
    return struct.pack("<I", embtab.murmur3_32(key, seed))


def digest_128(key: bytes, seed: int) -> bytes:
    return np.asarray(embtab.murmur3_128([key], seed), dtype="<u8").tobytes()


# ------------------------------------------------------------------------------------------------
# Known answers.


def test_smhasher_verification_values(simd_path: str) -> None:
    assert smhasher_verification(digest_32, 4) == 0xB0F57EE3
    assert smhasher_verification(digest_128, 16) == 0x6384BA69


def test_smhasher_keys_as_one_call(each_path_and_threads: tuple) -> None:
    # The 256 keys of the verification test hashed in one call per seed used, checked against
    # single-key calls: exercises every block / tail length of both variants.
    keys = [bytes(range(i)) for i in range(256)] * 20
    for seed in (0, 256, 0x9747B28C):
        h32 = embtab.murmur3_32(keys, seed)
        h128 = embtab.murmur3_128(keys, seed)
        for i in range(256):
            assert h32[i] == embtab.murmur3_32(keys[i], seed)
            assert tuple(h128[i]) == embtab.murmur3_128(keys[i], seed)
        np.testing.assert_array_equal(h32[256:], np.tile(h32[:256], 19))


@pytest.mark.parametrize("key,seed,expected", MURMUR3_32_VECTORS)
def test_murmur3_32_vectors(key: str, seed: int, expected: int) -> None:
    assert embtab.murmur3_32(key, seed) == expected
    assert embtab.murmur3_32(key.encode(), seed) == expected
    signed = expected - 2**32 if expected >= 2**31 else expected
    assert embtab.murmur3_32(key, seed, signed=True) == signed


def test_murmur3_32_vectors_batched(each_path_and_threads: tuple) -> None:
    for seed in sorted({s for _, s, _ in MURMUR3_32_VECTORS}):
        rows = [(k, e) for k, s, e in MURMUR3_32_VECTORS if s == seed]
        keys = [k for k, _ in rows] * 3000
        expected = np.array([e for _, e in rows] * 3000, dtype=np.uint32)
        for given_keys in (keys, np.array(keys), np.array([k.encode() for k in keys]), np.array(keys, dtype=object)):
            out = embtab.murmur3_32(given_keys, seed)
            assert out.dtype == np.uint32
            np.testing.assert_array_equal(out, expected)
    assert embtab.murmur3_32(["aaaiTBFZ"], signed=True)[0] == -(2**31)


@pytest.mark.parametrize("key,seed,digest", MURMUR3_128_VECTORS)
def test_murmur3_128_vectors(key: str, seed: int, digest: str) -> None:
    out = embtab.murmur3_128([key], seed)
    assert out.shape == (1, 2) and out.dtype == np.uint64
    assert out.astype("<u8").tobytes().hex() == digest
    h1, h2 = embtab.murmur3_128(key, seed)
    assert struct.pack("<QQ", h1, h2).hex() == digest


@pytest.mark.parametrize("token,n_features,column,sign", FEATURE_HASH_VECTORS)
def test_feature_hash_vectors(token: str, n_features: int, column: int, sign: int) -> None:
    indices, signs = embtab.feature_hash([token], n_features)
    assert indices.tolist() == [column] and signs.tolist() == [sign]
    indices, signs = embtab.feature_hash([token], n_features, alternate_sign=False)
    assert indices.tolist() == [column] and signs.tolist() == [1.0]


@pytest.mark.parametrize("word,expected", FASTTEXT_HASH_VECTORS)
def test_fasttext_hash_vectors(word: str, expected: int) -> None:
    assert embtab.fasttext_hash(word) == expected
    assert fnv1a_fasttext(word.encode()) == expected


def test_fasttext_hash_is_not_plain_fnv1a() -> None:
    assert embtab.fasttext_hash("<中文>") == 0xDF242753  # textbook FNV-1a gives 0xFD18C753
    assert embtab.fasttext_hash(["<café"], ) % 2_000_000 == 794639
    assert embtab.fasttext_hash("日本語") % 2_000_000 == 35559


def test_subword_vectors() -> None:
    ids, offsets = embtab.subword_ngrams(["中文"], minn=3, maxn=6, bucket=2**32)
    grams = ["<中文", "<中文>", "中文>"]
    assert ids.tolist() == [embtab.fasttext_hash(g) for g in grams] and offsets.tolist() == [0, 3]
    ids, _ = embtab.subword_ngrams(["ab"], minn=1, maxn=2, bucket=2**32)
    assert ids.tolist() == [embtab.fasttext_hash(g) for g in ["<a", "a", "ab", "b", "b>"]]


def parse_reference(text: str) -> Dict[str, list]:
    """The known-answer tables of hash-vectors.md."""
    found: Dict[str, list] = {"x86_32": [], "x64_128": [], "verification": [], "feature": [], "fasttext": []}
    for name, value in re.findall(r"^- (x86_32|x64_128): (0x[0-9A-Fa-f]+)", text, re.M):
        found["verification"].append((name, int(value, 16)))
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith(("x86_32", "x64_128")):
            continue
        variant, key, seeds, outputs = cells
        key = FOX if key == "the fox sentence" else key.strip('"')
        seed_list = [int(s, 0) for s in seeds.split(" / ")]
        out_list = [o.split("(")[0].strip() for o in outputs.split(" / ")]
        for seed, out in zip(seed_list, out_list):
            if variant == "x86_32":
                found["x86_32"].append((key, seed, int(out, 16)))
            else:
                found["x64_128"].append((key, seed, out))
    for token, column, sign in re.findall(r'"([^"]+)" \((\d+), ([+-])\)', text):
        found["feature"].append((token, 2**20, int(column), -1 if sign == "-" else 1))
    for token, value in re.findall(r'"([^"]+)" (0x[0-9A-Fa-f]{8})', text):
        found["fasttext"].append((token, int(value, 16)))
    return found


def test_reference_file_vectors() -> None:
    vectors = parse_reference(REFERENCE.read_text(encoding="utf-8"))
    assert len(vectors["x86_32"]) >= 13 and len(vectors["x64_128"]) >= 3
    assert len(vectors["feature"]) >= 6 and len(vectors["fasttext"]) >= 6
    for key, seed, expected in vectors["x86_32"]:
        assert embtab.murmur3_32(key, seed) == expected, (key, seed)
    for key, seed, digest in vectors["x64_128"]:
        assert embtab.murmur3_128([key], seed).astype("<u8").tobytes().hex() == digest, (key, seed)
    for token, n_features, column, sign in vectors["feature"]:
        assert [int(x) for x in embtab.feature_hash([token], n_features)[0]] == [column]
        assert embtab.feature_hash([token], n_features)[1][0] == sign
    for token, value in vectors["fasttext"]:
        assert embtab.fasttext_hash(token) == value, token
    for name, value in vectors["verification"]:
        digest = digest_32 if name == "x86_32" else digest_128
        assert smhasher_verification(digest, 4 if name == "x86_32" else 16) == value


# ------------------------------------------------------------------------------------------------
# Peers: mmh3, scikit-learn, fasttext.


def test_murmur3_matches_mmh3(each_path_and_threads: tuple) -> None:
    mmh3 = pytest.importorskip("mmh3")
    rng = np.random.default_rng(1)
    words = mixed_words(rng, 9000)
    raw = [bytes(rng.integers(0, 256, k, dtype=np.uint8)) for k in rng.integers(0, 70, 3000)]
    for seed in (0, 1, 0x9747B28C, 0xFFFFFFFF):
        np.testing.assert_array_equal(embtab.murmur3_32(words, seed), [mmh3.hash(w, seed, signed=False) for w in words])
        np.testing.assert_array_equal(embtab.murmur3_32(words, seed, signed=True), [mmh3.hash(w, seed) for w in words])
        np.testing.assert_array_equal(embtab.murmur3_32(raw, seed), [mmh3.hash(b, seed, signed=False) for b in raw])
    for seed in (0, 42, 0xFFFFFFFF):
        expected = np.array([mmh3.hash64(w, seed, signed=False) for w in words[:3000] + raw], dtype=np.uint64)
        np.testing.assert_array_equal(embtab.murmur3_128(words[:3000] + raw, seed), expected)


def test_string_arrays_match_lists(each_path_and_threads: tuple) -> None:
    rng = np.random.default_rng(2)
    words = mixed_words(rng, 6000)
    expected = embtab.murmur3_32(words, 7)
    unicode = np.array(words)
    np.testing.assert_array_equal(embtab.murmur3_32(unicode, 7), expected)
    np.testing.assert_array_equal(embtab.murmur3_32(unicode.astype(unicode.dtype.newbyteorder(">")), 7), expected)
    np.testing.assert_array_equal(embtab.murmur3_32(np.array(words, dtype=object), 7), expected)
    encoded = [w.encode() for w in words]
    np.testing.assert_array_equal(embtab.murmur3_32(np.array(encoded), 7), expected)
    np.testing.assert_array_equal(embtab.murmur3_32(tuple(encoded), 7), expected)
    np.testing.assert_array_equal(embtab.murmur3_128(unicode, 7), embtab.murmur3_128(words, 7))
    np.testing.assert_array_equal(embtab.fasttext_hash(unicode), embtab.fasttext_hash(words))
    np.testing.assert_array_equal(embtab.hash_buckets(unicode, 1000, seed=7), embtab.hash_buckets(words, 1000, seed=7))


def test_string_array_shapes_and_padding() -> None:
    grid = np.array([["a", "bb", ""], ["日本語", "x", "hello"]])
    out = embtab.murmur3_32(grid)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out.ravel(), embtab.murmur3_32(grid.ravel().tolist()))
    assert embtab.murmur3_128(grid).shape == (2, 3, 2)
    assert embtab.hash_buckets(grid, 10).shape == (2, 3)
    # numpy drops trailing NULs of 'S' / 'U' values; embedded ones are part of the key.
    padded = np.array([b"ab", b"a\x00b", b"ab\x00"], dtype="S6")
    assert padded[2] == b"ab"
    np.testing.assert_array_equal(embtab.murmur3_32(padded), embtab.murmur3_32([b"ab", b"a\x00b", b"ab"]))
    unicode = np.array(["ab", "a\x00b", "ab\x00"], dtype="U6")
    np.testing.assert_array_equal(embtab.murmur3_32(unicode), embtab.murmur3_32(["ab", "a\x00b", "ab"]))
    # Long runs of NULs inside a value stay; the padding after it goes (also for code points
    # whose UCS-4 bytes end in zeros, such as U+0100 and U+10000).
    wide = np.array([b"ab" + b"\x00" * 9 + b"c", b"\x00" * 10 + b"z", b"", b"q"], dtype="S24")
    np.testing.assert_array_equal(embtab.murmur3_32(wide), embtab.murmur3_32([b"ab" + b"\x00" * 9 + b"c", b"\x00" * 10 + b"z", b"", b"q"]))
    texts = ["a" + "\x00" * 9 + "\u0100", "\U00010000", "x\u0100", "", "\x00" * 5 + "y"]
    np.testing.assert_array_equal(embtab.murmur3_32(np.array(texts, dtype="U30")), embtab.murmur3_32(texts))
    np.testing.assert_array_equal(embtab.subword_ngrams(np.array(texts, dtype="U30"), minn=1, maxn=4)[0],
                                  embtab.subword_ngrams(texts, minn=1, maxn=4)[0])
    # Non-contiguous and read-only inputs.
    strided = np.array([f"w{i}" for i in range(40)])[::3]
    strided.flags.writeable = False
    np.testing.assert_array_equal(embtab.murmur3_32(strided), embtab.murmur3_32(strided.tolist()))


def test_int32_arrays_match_sklearn(each_path_and_threads: tuple) -> None:
    utils = pytest.importorskip("sklearn.utils")
    rng = np.random.default_rng(3)
    keys = rng.integers(-(2**31), 2**31, 200_003, dtype=np.int64).astype(np.int32)
    keys[:4] = [0, -1, 2**31 - 1, -(2**31)]
    for seed in (0, 12345, 2**32 - 1):
        expected = utils.murmurhash3_32(keys, seed)
        np.testing.assert_array_equal(embtab.murmur3_32(keys, seed, signed=True), expected)
        np.testing.assert_array_equal(embtab.murmur3_32(keys.view(np.uint32), seed), expected.view(np.uint32))
        np.testing.assert_array_equal(
            embtab.hash_buckets(keys, 1_000_003, seed=seed), expected.view(np.uint32).astype(np.int64) % 1_000_003
        )
    assert embtab.murmur3_32(12345, 7, signed=True) == utils.murmurhash3_32(12345, 7)
    assert embtab.murmur3_32(-5, 0) == utils.murmurhash3_32(-5, 0, positive=True)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", ">i4", ">u8"])
def test_integer_arrays_hash_their_little_endian_bytes(dtype: str, simd_path: str) -> None:
    rng = np.random.default_rng(4)
    info = np.iinfo(np.dtype(dtype))
    keys = rng.integers(info.min, info.max, 300, dtype=np.dtype(dtype).newbyteorder("="), endpoint=True).astype(dtype)
    little = keys.astype(np.dtype(dtype).newbyteorder("<"))
    as_bytes = [little[i : i + 1].tobytes() for i in range(keys.size)]
    for seed in (0, 99):
        np.testing.assert_array_equal(embtab.murmur3_32(keys, seed), embtab.murmur3_32(as_bytes, seed))
        np.testing.assert_array_equal(embtab.murmur3_128(keys, seed), embtab.murmur3_128(as_bytes, seed))
        np.testing.assert_array_equal(embtab.hash_buckets(keys, 97, seed=seed), embtab.hash_buckets(as_bytes, 97, seed=seed))
    grid = keys[:300].reshape(10, 30)[:, ::2]  # non-contiguous 2-D
    assert embtab.murmur3_32(grid).shape == grid.shape
    np.testing.assert_array_equal(embtab.murmur3_32(grid).ravel(), embtab.murmur3_32(np.ascontiguousarray(grid).ravel()))


def test_unaligned_integer_arrays() -> None:
    buffer = np.zeros(8 * 1000 + 1, dtype=np.uint8)
    unaligned = buffer[1:].view(np.int64)
    unaligned[:] = np.arange(1000) * 7919
    assert not unaligned.flags.aligned
    np.testing.assert_array_equal(embtab.murmur3_32(unaligned), embtab.murmur3_32(np.arange(1000) * 7919))


def test_int64_keys_match_mmh3() -> None:
    mmh3 = pytest.importorskip("mmh3")
    keys = np.array([0, 1, -1, 2**40 + 3, -(2**63), 2**63 - 1], dtype=np.int64)
    np.testing.assert_array_equal(embtab.murmur3_32(keys, 5), [mmh3.hash(k.tobytes(), 5, signed=False) for k in keys])
    assert embtab.murmur3_32(np.int64(7)) == mmh3.hash(np.int64(7).tobytes(), signed=False)
    assert embtab.murmur3_128(np.int64(7)) == mmh3.hash64(np.int64(7).tobytes(), signed=False)


def test_python_int_keys() -> None:
    assert embtab.murmur3_32(5) == embtab.murmur3_32(np.array([5], dtype=np.int32))[0]
    assert embtab.murmur3_32(2**32 - 1) == embtab.murmur3_32(-1)
    assert embtab.hash_buckets(5, 10) == embtab.murmur3_32(5) % 10
    with pytest.raises(OverflowError, match=r"np\.int64"):
        embtab.murmur3_32(2**32)


@pytest.mark.parametrize("num_buckets", [1, 2, 3, 7, 1000, 2**20, 2**31 - 1, 2**31, 2**31 + 11, 2**32 - 1, 2**32, 2**40, 2**63 - 1])
def test_hash_buckets_is_exact_modulo(num_buckets: int) -> None:
    rng = np.random.default_rng(num_buckets % 1000)
    keys = rng.integers(-(2**31), 2**31, 5000, dtype=np.int64).astype(np.int32)
    hashes = embtab.murmur3_32(keys).astype(np.uint64)
    expected = (hashes % np.uint64(num_buckets)).astype(np.int64)
    np.testing.assert_array_equal(embtab.hash_buckets(keys, num_buckets), expected)
    words = [str(k) for k in keys[:500]]
    np.testing.assert_array_equal(
        embtab.hash_buckets(words, num_buckets, seed=3),
        (embtab.murmur3_32(words, 3).astype(np.uint64) % np.uint64(num_buckets)).astype(np.int64),
    )


def test_hash_buckets_many_bucket_counts() -> None:
    # hash_buckets reduces without a division; check it against % for bucket counts of every size.
    rng = np.random.default_rng(5)
    keys = rng.integers(-(2**31), 2**31, 50_000, dtype=np.int64).astype(np.int32)
    h = embtab.murmur3_32(keys).astype(np.uint64)
    counts = [3, 5, 6, 641, 65535, 65537, 2**24 + 1, 2**31 - 1, 2**32 - 3] + [int(n) for n in rng.integers(1, 2**32, 20)]
    for n in counts:
        np.testing.assert_array_equal(embtab.hash_buckets(keys, n), (h % np.uint64(n)).astype(np.int64))


def test_feature_hash_matches_sklearn(each_path_and_threads: tuple) -> None:
    sk = pytest.importorskip("sklearn.feature_extraction")
    rng = np.random.default_rng(6)
    tokens = mixed_words(rng, 6000) + ["aaaiTBFZ", "dog", "日本語"]
    for n_features in (1, 10, 1000, 2**20, 2**31 - 1):
        for alternate_sign in (True, False):
            hasher = sk.FeatureHasher(n_features=n_features, input_type="string", alternate_sign=alternate_sign)
            expected = hasher.transform([[t] for t in tokens])  # one token per row: its column and sign
            indices, signs = embtab.feature_hash(tokens, n_features, alternate_sign=alternate_sign)
            assert indices.dtype == np.int64 and signs.dtype == np.float32
            np.testing.assert_array_equal(indices, expected.indices)
            np.testing.assert_array_equal(signs, expected.data)


def test_feature_hash_documents_match_sklearn() -> None:
    sk = pytest.importorskip("sklearn.feature_extraction")
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(7)
    words = mixed_words(rng, 400)
    docs: List[Any] = [list(rng.choice(words, rng.integers(0, 30))) for _ in range(300)]
    docs[3] = []
    docs[5] = tuple(docs[5])
    docs[7] = np.array(docs[7], dtype=object)
    for n_features in (16, 2**20):
        indices, signs, offsets = embtab.feature_hash(docs, n_features)
        assert offsets.tolist()[:1] == [0] and offsets.size == len(docs) + 1 and offsets[-1] == indices.size
        ours = sparse.csr_matrix((signs.astype(np.float64), indices, offsets), shape=(len(docs), n_features))
        ours.sum_duplicates()
        expected = sk.FeatureHasher(n_features=n_features, input_type="string").transform(docs)
        assert (ours != expected).nnz == 0
        flat = [t for d in docs for t in d]
        np.testing.assert_array_equal(indices, embtab.feature_hash(flat, n_features)[0])


def test_fasttext_hash_matches_reference(each_path_and_threads: tuple) -> None:
    rng = np.random.default_rng(8)
    words = mixed_words(rng, 6000)
    out = embtab.fasttext_hash(words)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, [fnv1a_fasttext(w.encode()) for w in words])
    raw = [bytes(rng.integers(0, 256, k, dtype=np.uint8)) for k in rng.integers(0, 20, 500)]
    np.testing.assert_array_equal(embtab.fasttext_hash(raw), [fnv1a_fasttext(b) for b in raw])


@functools.cache
def subword_case(minn: int, maxn: int) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Words and their reference ids (bucket 2,000,000, offset 17), computed once per (minn, maxn)."""
    words = mixed_words(np.random.default_rng(minn * 10 + maxn), 5000)
    return (words, *subword_reference([w.encode() for w in words], minn, maxn, 2_000_000, 17))


@pytest.mark.parametrize("minn,maxn", [(3, 6), (1, 2), (1, 1), (2, 4), (5, 5), (1, 8)])
def test_subword_ngrams_match_reference(minn: int, maxn: int, each_path_and_threads: tuple) -> None:
    words, exp_ids, exp_offsets = subword_case(minn, maxn)
    bucket, offset = 2_000_000, 17
    ids, offsets = embtab.subword_ngrams(words, minn=minn, maxn=maxn, bucket=bucket, offset=offset)
    np.testing.assert_array_equal(offsets, exp_offsets)
    np.testing.assert_array_equal(ids, exp_ids)
    unicode_ids, unicode_offsets = embtab.subword_ngrams(np.array(words), minn=minn, maxn=maxn, bucket=bucket, offset=offset)
    np.testing.assert_array_equal(unicode_ids, exp_ids)
    np.testing.assert_array_equal(unicode_offsets, exp_offsets)


def test_subword_ngrams_of_arbitrary_bytes() -> None:
    # Invalid UTF-8 (stray continuation bytes, truncated sequences) follows fastText's byte rules.
    rng = np.random.default_rng(9)
    raw = [bytes(rng.choice([0x61, 0x80, 0xBF, 0xC3, 0xA9, 0xE4, 0xF0, 0x3E, 0x3C], k).astype(np.uint8)) for k in rng.integers(0, 12, 800)]
    for minn, maxn in ((1, 3), (3, 6)):
        ids, offsets = embtab.subword_ngrams(raw, minn=minn, maxn=maxn, bucket=1009)
        exp_ids, exp_offsets = subword_reference(raw, minn, maxn, 1009, 0)
        np.testing.assert_array_equal(offsets, exp_offsets)
        np.testing.assert_array_equal(ids, exp_ids)
        np.testing.assert_array_equal(embtab.subword_ngrams(np.array(raw, dtype="S12"), minn=minn, maxn=maxn, bucket=1009)[1],
                                      subword_reference([r.rstrip(b"\x00") for r in raw], minn, maxn, 1009, 0)[1])


@pytest.fixture(scope="module")
def fasttext_models(tmp_path_factory: pytest.TempPathFactory) -> Dict[Tuple[int, int, int], Any]:
    fasttext = pytest.importorskip("fasttext")
    corpus = tmp_path_factory.mktemp("fasttext") / "corpus.txt"
    corpus.write_text("alpha beta gamma delta café 中文\n" * 5, encoding="utf-8")
    models = {}
    for minn, maxn, bucket in ((3, 6, 2_000_000), (1, 2, 1000), (2, 5, 50_000)):
        models[(minn, maxn, bucket)] = fasttext.train_unsupervised(
            str(corpus), model="skipgram", minCount=1, dim=2, epoch=1, minn=minn, maxn=maxn, bucket=bucket,
            thread=1, verbose=0,
        )
    return models


def test_subword_ngrams_match_fasttext(fasttext_models: Dict[Tuple[int, int, int], Any], simd_path: str) -> None:
    rng = np.random.default_rng(10)
    words = mixed_words(rng, 600) + ["alpha", "café", "中文", "日本語", "a", "", "👍🏽"]
    words = [w for w in words if not any(c.isspace() for c in w)]  # fastText splits on whitespace
    for (minn, maxn, bucket), model in fasttext_models.items():
        nwords = len(model.words)
        ids, offsets = embtab.subword_ngrams(words, minn=minn, maxn=maxn, bucket=bucket, offset=nwords)
        for i, word in enumerate(words):
            _grams, expected = model.get_subwords(word)
            expected = [int(x) for x in expected if x >= nwords]  # drop the word's own id
            assert ids[offsets[i] : offsets[i + 1]].tolist() == expected, (word, minn, maxn)


# ------------------------------------------------------------------------------------------------
# Properties.


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.binary(max_size=40)), max_size=40), st.integers(0, 2**32 - 1))
def test_murmur3_32_property(keys: List[Any], seed: int) -> None:
    mmh3 = pytest.importorskip("mmh3")
    np.testing.assert_array_equal(embtab.murmur3_32(keys, seed), np.array([mmh3.hash(k, seed, signed=False) for k in keys], dtype=np.uint32))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=15), max_size=20), st.integers(1, 4), st.integers(0, 4), st.integers(1, 10**6))
def test_subword_ngrams_property(words: List[str], minn: int, extra: int, bucket: int) -> None:
    ids, offsets = embtab.subword_ngrams(words, minn=minn, maxn=minn + extra, bucket=bucket)
    exp_ids, exp_offsets = subword_reference([w.encode() for w in words], minn, minn + extra, bucket, 0)
    np.testing.assert_array_equal(offsets, exp_offsets)
    np.testing.assert_array_equal(ids, exp_ids)


def test_results_identical_for_every_path_and_thread_count(each_path_and_threads: tuple) -> None:
    rng = np.random.default_rng(11)
    words = mixed_words(rng, 20_000)
    ints = rng.integers(-(2**62), 2**62, 300_000)
    expected = getattr(test_results_identical_for_every_path_and_thread_count, "expected", None)
    got = (
        embtab.murmur3_32(words, 1),
        embtab.murmur3_32(ints, 2),
        embtab.murmur3_32(ints.astype(np.int32), 2),
        embtab.hash_buckets(ints, 1000, seed=3),
        embtab.murmur3_128(words, 4),
        *embtab.feature_hash(words, 1000),
        *embtab.subword_ngrams(words, bucket=10_000),
    )
    if expected is None:
        test_results_identical_for_every_path_and_thread_count.expected = got  # type: ignore[attr-defined]
    else:
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


class Text(str):
    """A str subclass: not gathered by the fast path, hashed as its text all the same."""


def test_large_mixed_lists(num_threads: int) -> None:
    # Many chunks of gathering, each with keys the pool threads copy (short ASCII str, bytes) and
    # keys left to the calling thread (non-ASCII text, str subclasses, strings over 64 bytes).
    rng = np.random.default_rng(14)
    words = mixed_words(rng, 30_000)
    keys: List[Any] = list(words)
    for i in range(0, len(keys), 7):
        keys[i] = keys[i].encode()
    for i in range(3, len(keys), 11):
        keys[i] = Text(words[i])
    for i in range(5, len(keys), 13):
        keys[i] = words[i] * 20
    plain = [k.encode() if isinstance(k, str) else k for k in keys]
    expected = np.array([embtab.murmur3_32(k, 5) for k in plain[:2000]], dtype=np.uint32)
    out = embtab.murmur3_32(keys, 5)
    np.testing.assert_array_equal(out[:2000], expected)
    np.testing.assert_array_equal(out, embtab.murmur3_32(plain, 5))
    np.testing.assert_array_equal(embtab.murmur3_32(tuple(keys), 5), out)
    docs = [keys[i : i + 37] for i in range(0, len(keys), 37)]
    np.testing.assert_array_equal(embtab.feature_hash(docs, 1000)[0], embtab.feature_hash(plain, 1000)[0])
    # The first bad key is reported, wherever the chunks split.
    bad = list(words)
    bad[25_000] = "\ud800"
    bad[21_000] = 3.5
    with pytest.raises(TypeError, match=r"keys\[21000\] must be str, bytes, bytearray or memoryview, got float"):
        embtab.murmur3_32(bad)
    bad[21_000] = "fine"
    with pytest.raises(UnicodeEncodeError, match=r"keys\[25000\]"):
        embtab.murmur3_32(bad)
    with pytest.raises(TypeError, match=r"tokens\[3\]\[2\] must be str, bytes, bytearray or memoryview, got NoneType"):
        embtab.feature_hash([words[:9000]] * 3 + [["a", "b", None]] + [words[:9000]])


def test_concurrent_calls_from_python_threads() -> None:
    rng = np.random.default_rng(12)
    lists = [mixed_words(rng, 20_000) for _ in range(4)]
    expected = [embtab.murmur3_32(w, 9) for w in lists]
    results: Dict[int, Any] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = embtab.murmur3_32(lists[i], 9)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i], expected[i])


# ------------------------------------------------------------------------------------------------
# Bad and empty input.


def test_lone_surrogate_raises_not_crashes() -> None:
    keys = ["ok", "fine", "bad\ud800x"]
    for fn in (embtab.murmur3_32, embtab.murmur3_128, embtab.fasttext_hash, lambda k: embtab.hash_buckets(k, 10)):
        with pytest.raises(UnicodeEncodeError, match=r"keys\[2\]|strings\[2\]"):
            fn(keys)
    with pytest.raises(UnicodeEncodeError, match=r"tokens\[2\]"):
        embtab.feature_hash(keys)
    with pytest.raises(UnicodeEncodeError, match=r"tokens\[1\]\[0\]"):
        embtab.feature_hash([["a"], ["\udfff"]])
    with pytest.raises(UnicodeEncodeError, match=r"words\[2\]"):
        embtab.subword_ngrams(keys)
    with pytest.raises(UnicodeEncodeError):
        embtab.murmur3_32("\ud83d")


def test_surrogate_in_unicode_array() -> None:
    arr = np.array([["ok", "x"], ["a\udc80b", "y"]])
    with pytest.raises(UnicodeEncodeError, match=r"keys\[1, 0\]") as info:
        embtab.murmur3_32(arr)
    assert info.value.start == 1
    with pytest.raises(UnicodeEncodeError, match=r"words\[2\]"):
        embtab.subword_ngrams(arr)
    beyond = np.array([1, 0x110000], dtype=np.uint32).view("U2")
    with pytest.raises(ValueError, match=r"keys\[0\].*1114112"):
        embtab.murmur3_32(beyond)


def test_non_string_items_raise_type_error() -> None:
    with pytest.raises(TypeError, match=r"keys\[1\] must be str, bytes, bytearray or memoryview, got int"):
        embtab.murmur3_32(["a", 3])
    with pytest.raises(TypeError, match=r"keys\[2\] must be str, bytes, bytearray or memoryview, got NoneType"):
        embtab.hash_buckets(("a", b"b", None), 5)
    with pytest.raises(TypeError, match=r"keys\[0, 1\] must be str, bytes, bytearray or memoryview, got float"):
        embtab.murmur3_32(np.array([["a", 1.5]], dtype=object))
    with pytest.raises(TypeError, match=r"strings\[0\] must be str, bytes, bytearray or memoryview, got list"):
        embtab.fasttext_hash([[b"x"]])
    with pytest.raises(TypeError, match=r"tokens\[1\]\[1\] must be str, bytes, bytearray or memoryview, got int"):
        embtab.feature_hash([["a"], ["b", 2]])
    with pytest.raises(TypeError, match=r"tokens\[1\] is a str"):
        embtab.feature_hash([["a"], "b"])
    with pytest.raises(TypeError, match=r"tokens\[1\] must be a list"):
        embtab.feature_hash([["a"], 5])
    with pytest.raises(TypeError, match=r"words\[0\] must be str, bytes, bytearray or memoryview, got int"):
        embtab.subword_ngrams([1])


@pytest.mark.parametrize("fn", [embtab.murmur3_32, embtab.murmur3_128, lambda k: embtab.hash_buckets(k, 3)])
def test_float_and_bool_keys_raise_type_error(fn: Any) -> None:
    for bad in (np.ones(3), np.ones(3, dtype=np.float32), np.zeros(2, dtype=bool), np.ones(2, dtype=np.complex64)):
        with pytest.raises(TypeError, match="dtype"):
            fn(bad)
    with pytest.raises(TypeError):
        fn(1.5)
    with pytest.raises(TypeError):
        fn(True)


def test_integer_arrays_refused_where_strings_are_needed() -> None:
    with pytest.raises(TypeError, match="int64"):
        embtab.fasttext_hash(np.arange(3))
    with pytest.raises(TypeError, match="int64"):
        embtab.feature_hash(np.arange(3))
    with pytest.raises(TypeError, match="int64"):
        embtab.subword_ngrams(np.arange(3))
    with pytest.raises(TypeError):
        embtab.fasttext_hash(5)
    with pytest.raises(TypeError):
        embtab.feature_hash("abc")


def test_bad_parameters_raise_value_error() -> None:
    for seed in (-1, 2**32):
        with pytest.raises(ValueError, match="seed"):
            embtab.murmur3_32(["a"], seed)
        with pytest.raises(ValueError, match="seed"):
            embtab.murmur3_128(["a"], seed)
        with pytest.raises(ValueError, match="seed"):
            embtab.hash_buckets(["a"], 3, seed=seed)
    with pytest.raises(ValueError, match="num_buckets"):
        embtab.hash_buckets(["a"], 0)
    with pytest.raises(ValueError, match="n_features"):
        embtab.feature_hash(["a"], 0)
    with pytest.raises(ValueError, match="bucket"):
        embtab.subword_ngrams(["a"], bucket=-1)
    with pytest.raises(ValueError, match="maxn"):
        embtab.subword_ngrams(["a"], minn=4, maxn=3)
    with pytest.raises(ValueError, match="minn"):
        embtab.subword_ngrams(["a"], minn=-1, maxn=3)
    with pytest.raises(ValueError, match="offset"):
        embtab.subword_ngrams(["a"], offset=-1)
    with pytest.raises(TypeError):
        embtab.hash_buckets(["a"], 2.5)
    # The compiled layer checks too.
    with pytest.raises(ValueError, match="seed"):
        embtab._core.murmur3_32(["a"], -1)
    with pytest.raises(ValueError, match="maxn"):
        embtab._core.subword_ngrams(["a"], 3, 2, 10, 0)


def test_empty_inputs_give_empty_outputs() -> None:
    for empty in ([], (), np.array([], dtype=np.int32), np.array([], dtype="U1"), np.array([], dtype="S3"), np.empty((0, 4), dtype=np.int64)):
        out = embtab.murmur3_32(empty)
        assert out.dtype == np.uint32 and out.size == 0 and out.shape == np.shape(empty)
        assert embtab.murmur3_128(empty).shape == np.shape(empty) + (2,)
        assert embtab.hash_buckets(empty, 5).shape == np.shape(empty)
    assert embtab.murmur3_32([], signed=True).dtype == np.int32
    indices, signs = embtab.feature_hash([])
    assert indices.shape == signs.shape == (0,)
    indices, signs, offsets = embtab.feature_hash([[], []])
    assert indices.size == 0 and offsets.tolist() == [0, 0, 0]
    assert embtab.fasttext_hash([]).shape == (0,)
    ids, offsets = embtab.subword_ngrams([])
    assert ids.shape == (0,) and offsets.tolist() == [0]
    ids, offsets = embtab.subword_ngrams([""], minn=1, maxn=6)
    assert ids.tolist() == [embtab.fasttext_hash("<>") % 2_000_000] and offsets.tolist() == [0, 1]


def test_ids_feed_gather_bags() -> None:
    words = ["where", "café", "中文"]
    ids, offsets = embtab.subword_ngrams(words, bucket=1000)
    table = np.random.default_rng(13).standard_normal((1000, 8)).astype(np.float32)
    pooled = embtab.gather_bags(table, ids, offsets, mode="mean")
    for i in range(3):
        np.testing.assert_allclose(pooled[i], table[ids[offsets[i] : offsets[i + 1]]].mean(0), rtol=1e-6)
    indices, signs, doc_offsets = embtab.feature_hash([["a", "b"], ["c"]], 1000)
    summed = embtab.gather_bags(table, indices, doc_offsets, weights=signs)
    np.testing.assert_allclose(summed[0], signs[0] * table[indices[0]] + signs[1] * table[indices[1]], rtol=1e-6)
