"""Hashing inputs that the peers accept (issue 12) and hostile inputs (issue 17 item 2):
bytearray / memoryview keys against mmh3's buffer functions, MurmurHash3 x86_128, feature_hash's
seed, fastText's "</s>" and no-subword settings against the fasttext peer, and containers that
change while the keys are gathered (crash-prone cases run in a subprocess)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import threading
from typing import Any, List

import numpy as np
import pytest

import embtab

# SMHasher's VerificationTest value of MurmurHash3_x86_128 (aappleby/smhasher, main.cpp's table).
X86_128_VERIFICATION = 0xB3ECE62A
X64_128_VERIFICATION = 0x6384BA69


def smhasher_verification(digest: Any) -> int:
    """Hash {}, {0}, {0,1}, ..., {0..254} with seed 256 - i, hash the concatenated digests with seed
    0, read the first 4 bytes little-endian."""
    digests = b"".join(digest(bytes(range(i)), 256 - i) for i in range(256))
    return struct.unpack("<I", digest(digests, 0)[:4])[0]


def digest_128(key: Any, seed: int, x64arch: bool) -> bytes:
    return np.asarray(embtab.murmur3_128([key], seed, x64arch=x64arch), dtype="<u8").tobytes()


def words(n: int, seed: int = 0) -> List[str]:
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz éü中文😀"))
    return ["".join(alphabet[rng.integers(0, alphabet.size, k)]) for k in rng.integers(0, 90, n)]


# ------------------------------------------------------------------------------------------------
# MurmurHash3 x86_128.


@pytest.mark.parametrize("x64arch, expected", [(False, X86_128_VERIFICATION), (True, X64_128_VERIFICATION)])
def test_murmur3_128_verification_values(x64arch: bool, expected: int, simd_path: str) -> None:
    assert smhasher_verification(lambda key, seed: digest_128(key, seed, x64arch)) == expected


def test_murmur3_x86_128_matches_mmh3(each_path_and_threads: tuple) -> None:
    mmh3 = pytest.importorskip("mmh3")
    keys = words(3000) + ["", "a", "hello", "x" * 15, "y" * 16, "z" * 17, "w" * 33]
    for seed in (0, 1, 42, 2**32 - 1):
        out = embtab.murmur3_128(keys, seed, x64arch=False)
        expected = np.array([mmh3.hash64(k, seed, x64arch=False, signed=False) for k in keys], np.uint64)
        np.testing.assert_array_equal(out, expected)
    key = "The quick brown fox jumps over the lazy dog"
    h1, h2 = embtab.murmur3_128(key, 7, x64arch=False)
    assert h1 | (h2 << 64) == mmh3.hash128(key, 7, x64arch=False)
    assert digest_128(key, 7, False) == mmh3.hash_bytes(key, 7, x64arch=False)
    assert embtab.murmur3_128(key, 7) == mmh3.hash64(key, 7, signed=False)  # x64 stays the default


def test_murmur3_x86_128_integer_and_fixed_width_arrays() -> None:
    mmh3 = pytest.importorskip("mmh3")
    ints = np.array([0, 1, -5, 2**40, 123456789], np.int64)
    expected = [mmh3.hash64(int(v).to_bytes(8, "little", signed=True), 3, x64arch=False, signed=False) for v in ints]
    np.testing.assert_array_equal(embtab.murmur3_128(ints, 3, x64arch=False), np.array(expected, np.uint64))
    texts = np.array(["ab", "café", ""], dtype="U6")
    np.testing.assert_array_equal(embtab.murmur3_128(texts, x64arch=False),
                                  embtab.murmur3_128(texts.tolist(), x64arch=False))


# ------------------------------------------------------------------------------------------------
# bytearray and memoryview keys.


def test_bytearray_and_memoryview_keys_match_mmh3(each_path_and_threads: tuple) -> None:
    mmh3 = pytest.importorskip("mmh3")
    raw = [w.encode() for w in words(2000, seed=1)]  # short and long (> 64 bytes) keys
    ints = np.arange(6, dtype=np.int32)
    keys: List[Any] = []
    for i, b in enumerate(raw):
        keys.append(bytearray(b) if i % 3 == 0 else memoryview(b) if i % 3 == 1 else b)
    keys.append(memoryview(ints))  # any C-contiguous buffer: its raw bytes, as mmh3 hashes it
    raw.append(ints.tobytes())
    for seed in (0, 99):
        np.testing.assert_array_equal(embtab.murmur3_32(keys, seed), [mmh3.mmh3_32_uintdigest(k, seed) for k in keys])
        np.testing.assert_array_equal(embtab.murmur3_32(keys, seed), embtab.murmur3_32(raw, seed))
        for x64arch, reference in ((True, mmh3.mmh3_x64_128_digest), (False, mmh3.mmh3_x86_128_digest)):
            out = np.asarray(embtab.murmur3_128(keys, seed, x64arch=x64arch), dtype="<u8")
            assert [row.tobytes() for row in out] == [reference(k, seed) for k in keys]
    np.testing.assert_array_equal(embtab.hash_buckets(keys, 1000), embtab.hash_buckets(raw, 1000))
    np.testing.assert_array_equal(embtab.fasttext_hash(keys), embtab.fasttext_hash(raw))
    for got, want in zip(embtab.subword_ngrams(keys, bucket=997), embtab.subword_ngrams(raw, bucket=997)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(embtab.feature_hash(keys), embtab.feature_hash(raw)):
        np.testing.assert_array_equal(got, want)
    docs = [keys[:5], keys[5:9]]
    for got, want in zip(embtab.feature_hash(docs), embtab.feature_hash([raw[:5], raw[5:9]])):
        np.testing.assert_array_equal(got, want)
    objects = np.array(keys[:10] + [None], dtype=object)[:10]
    np.testing.assert_array_equal(embtab.murmur3_32(objects), embtab.murmur3_32(raw[:10]))


def test_single_bytearray_and_memoryview_keys() -> None:
    mmh3 = pytest.importorskip("mmh3")
    assert embtab.murmur3_32(bytearray(b"foo")) == mmh3.mmh3_32_uintdigest(bytearray(b"foo")) == 0xF6A5C420
    assert embtab.murmur3_32(memoryview(b"foo"), signed=True) == mmh3.hash(b"foo")
    assert embtab.murmur3_128(bytearray(b"hello")) == mmh3.hash64(b"hello", signed=False)
    assert embtab.hash_buckets(bytearray(b"foo"), 7) == 0xF6A5C420 % 7
    assert embtab.fasttext_hash(bytearray(b"</s>")) == 0xD79C9359
    ids, _offsets = embtab.subword_ngrams(memoryview(b"ab"), minn=1, maxn=2, bucket=10**6)
    assert ids.tolist() == embtab.subword_ngrams("ab", minn=1, maxn=2, bucket=10**6)[0].tolist()


def test_memoryview_that_cannot_be_read_raises_value_error() -> None:
    strided = memoryview(b"abcdef")[::2]
    with pytest.raises(ValueError, match=r"keys\[1\] is a memoryview .*contiguous"):
        embtab.murmur3_32([b"x", strided])
    released = memoryview(b"ab")
    released.release()
    with pytest.raises(ValueError, match=r"keys\[0\] is a memoryview"):
        embtab.hash_buckets([released], 3)
    with pytest.raises(TypeError, match=r"keys\[0\] must be str, bytes, bytearray or memoryview, got int"):
        embtab.murmur3_32([3])


def test_bytearray_rewritten_by_another_thread_hashes_one_version() -> None:
    """The keys are read once, with the GIL held: a thread that resizes and rewrites the bytearrays
    meanwhile never makes the hash read freed memory, and each result is the hash of one of the
    versions the key had."""
    mmh3 = pytest.importorskip("mmh3")
    short, long = b"s" * 10, b"L" * 500
    keys = [bytearray(short) for _ in range(2000)]
    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            for k in keys:
                k[:] = long if len(k) == len(short) else short

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        allowed = {mmh3.mmh3_32_uintdigest(short), mmh3.mmh3_32_uintdigest(long)}
        for _ in range(30):
            assert set(embtab.murmur3_32(keys).tolist()) <= allowed
    finally:
        stop.set()
        writer.join()


# ------------------------------------------------------------------------------------------------
# feature_hash's seed.


def test_feature_hash_seed_is_the_hash_seed() -> None:
    mmh3 = pytest.importorskip("mmh3")
    tokens = words(500, seed=4)
    indices, signs = embtab.feature_hash(tokens, 1000, seed=12345)
    h = np.array([mmh3.hash(t, 12345) for t in tokens], np.int64)
    np.testing.assert_array_equal(indices, np.abs(h) % 1000)
    np.testing.assert_array_equal(signs, np.where(h < 0, -1.0, 1.0).astype(np.float32))
    default = embtab.feature_hash(tokens, 1000)
    for got, want in zip(embtab.feature_hash(tokens, 1000, seed=0), default):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(indices, default[0])
    with pytest.raises(ValueError, match="seed"):
        embtab.feature_hash(tokens, seed=2**32)


def test_argument_checks_belong_to_the_compiled_layer() -> None:
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\), got 1267650600228229401496703205376"):
        embtab._core.murmur3_32(["a"], 2**100)
    with pytest.raises(TypeError, match="num_buckets must be an integer, got float"):
        embtab._core.hash_buckets(["a"], 2.5, 0)
    with pytest.raises(ValueError, match="n_features must be >= 1"):
        embtab._core.feature_hash(["a"], 0, True, 0, False)
    # Huge counts act like 2**32 (every 32-bit hash is below it).
    np.testing.assert_array_equal(embtab.hash_buckets(["a", "b"], 2**70), embtab.murmur3_32(["a", "b"]))


# ------------------------------------------------------------------------------------------------
# fastText: "</s>" and models without subwords.


def test_end_of_sentence_word_has_no_ngrams() -> None:
    _ids, offsets = embtab.subword_ngrams(["a", "</s>", "b", "</s>x"], minn=1, maxn=6, bucket=1000)
    assert offsets[2] - offsets[1] == 0  # "</s>" itself: none
    assert offsets[4] - offsets[3] > 0  # a word that merely starts like it: its n-grams
    np.testing.assert_array_equal(embtab.subword_ngrams(np.array(["</s>", "</s>"], dtype="U4"))[1], [0, 0, 0])
    np.testing.assert_array_equal(embtab.subword_ngrams(np.array([b"</s>"], dtype="S8"))[1], [0, 0])


def test_no_subword_settings() -> None:
    for kwargs in ({"minn": 0, "maxn": 0}, {"minn": 3, "maxn": 0}, {"bucket": 0}):
        ids, offsets = embtab.subword_ngrams(["abc", "", "中文"], **kwargs)
        assert ids.size == 0 and offsets.tolist() == [0, 0, 0, 0]
    # minn = 0 with maxn > 0 acts as minn = 1, as in fastText (lengths start at 1).
    for got, want in zip(embtab.subword_ngrams(["abc"], minn=0, maxn=3), embtab.subword_ngrams(["abc"], minn=1, maxn=3)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(UnicodeEncodeError):  # the words are still read and checked
        embtab.subword_ngrams(["\ud800"], maxn=0)


@pytest.fixture(scope="module")
def fasttext_corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    corpus = tmp_path_factory.mktemp("fasttext") / "corpus.txt"
    corpus.write_text("alpha beta gamma delta café 中文\nbeta gamma\n" * 5, encoding="utf-8")
    return str(corpus)


def train_fasttext(corpus: str, **kwargs: Any) -> Any:
    fasttext = pytest.importorskip("fasttext")
    return fasttext.train_unsupervised(corpus, model="skipgram", minCount=1, dim=3, epoch=1, thread=1, verbose=0, **kwargs)


def subword_layer_of(model: Any, **kwargs: Any) -> embtab.SubwordEmbedding:
    layer = embtab.SubwordEmbedding(3, vocab=model.words, **kwargs)
    matrix = model.get_input_matrix().astype(np.float32)
    assert matrix.shape == layer.weight.shape
    layer.weight[...] = matrix
    return layer.eval()


def test_end_of_sentence_word_matches_fasttext(fasttext_corpus: str) -> None:
    model = train_fasttext(fasttext_corpus, minn=3, maxn=6, bucket=1000)
    assert "</s>" in model.words
    _, expected = model.get_subwords("</s>")
    assert expected.tolist() == [model.words.index("</s>")]
    ids, _offsets = embtab.subword_ngrams(["</s>"], minn=3, maxn=6, bucket=1000, offset=len(model.words))
    assert ids.size == 0
    layer = subword_layer_of(model, minn=3, maxn=6, bucket=1000)
    probe = ["</s>", "alpha", "unseen", "café"]
    expected_vectors = np.stack([model.get_word_vector(w) for w in probe])
    np.testing.assert_allclose(layer.forward(probe), expected_vectors, rtol=1e-5, atol=1e-7)


def test_model_without_subwords_matches_fasttext(fasttext_corpus: str) -> None:
    model = train_fasttext(fasttext_corpus, minn=0, maxn=0)
    assert model.get_input_matrix().shape[0] == len(model.words)  # fastText sets bucket = 0
    probe = ["alpha", "中文", "</s>", "unseen"]
    for word in probe:
        ids, _offsets = embtab.subword_ngrams([word], minn=0, maxn=0, offset=len(model.words))
        assert ids.size == 0
        assert model.get_subwords(word)[1].tolist() == ([model.words.index(word)] if word in model.words else [])
    for kwargs in ({"minn": 0, "maxn": 0, "bucket": 0}, {"bucket": 0}):
        layer = subword_layer_of(model, **kwargs)
        expected = np.stack([model.get_word_vector(w) for w in probe])  # "unseen": zeros
        np.testing.assert_allclose(layer.forward(probe), expected, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Containers that change while their keys are gathered (issue 17 item 2). Each script runs in a
# subprocess: before the fix the first one crashed (use after free) in 3 of 3 runs.


def run_script(body: str) -> str:
    script = "import gc, threading\nimport numpy as np\nimport embtab\n" + textwrap.dedent(body)
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_document_whose_iter_mutates_the_outer_list() -> None:
    out = run_script("""
        class Doc:
            def __init__(self, outer, tokens):
                self.outer, self.tokens = outer, tokens
            def __iter__(self):
                for doc in self.outer:
                    if isinstance(doc, list):
                        doc.clear()          # frees the tokens of the other documents
                self.outer.clear()           # and the documents themselves
                gc.collect()
                return iter(self.tokens)

        for trial in range(30):
            first = ["tok%d-" % i + "x" * 100 for i in range(40)]   # long: held by reference
            last = ["z%d" % i for i in range(40)]                    # short: copied
            outer = [first, None, last]
            outer[1] = Doc(outer, ["a", "b"])
            snapshot = [list(first), ["a", "b"], list(last)]
            indices, signs, offsets = embtab.feature_hash(outer, 2**20)
            # Each document is read as a Python loop over them would see it: the first before the
            # second one's __iter__ ran, the last after.
            expected = embtab.feature_hash(snapshot[:2] + [[]], 2**20)
            assert offsets.tolist() == [0, 40, 42, 42], offsets
            assert indices.tolist() == expected[0].tolist()
        print("ok")
    """)
    assert out.strip() == "ok"


def test_document_iter_that_raises_is_reported() -> None:
    class Broken:
        def __iter__(self) -> Any:
            raise KeyError("broken document")

    with pytest.raises(KeyError, match="broken document"):
        embtab.feature_hash([["a"], Broken()])


def test_lists_mutated_by_other_threads_while_hashing() -> None:
    """Another thread clears and refills the key lists (long keys, held by reference, and short
    ones, copied) while the main thread hashes them with every function that takes lists."""
    out = run_script("""
        long_keys = ["key%d-" % i + "x" * 200 for i in range(3000)]
        short_keys = ["k%d" % i for i in range(3000)]
        blobs = [bytearray(b"b" * (i % 150)) for i in range(3000)]
        shared = [list(long_keys), list(short_keys), list(blobs)]
        stop = threading.Event()

        def churn():
            i = 0
            while not stop.is_set():
                for lst, source in zip(shared, (long_keys, short_keys, blobs)):
                    lst.clear()
                    lst.extend(source[i % 7:])
                for b in blobs[:50]:
                    b.extend(b"zz")
                    del b[:2]
                i += 1

        t = threading.Thread(target=churn)
        t.start()
        try:
            for _ in range(40):
                for keys in shared:
                    embtab.murmur3_32(keys)
                    embtab.murmur3_128(keys, x64arch=False)
                    embtab.hash_buckets(keys, 1000)
                    embtab.subword_ngrams(keys, bucket=1000)
                    embtab.fasttext_hash(keys)
                    embtab.feature_hash([keys, keys[:10]])
        finally:
            stop.set()
            t.join()
        print("ok")
    """)
    assert out.strip() == "ok"


def test_type_names_in_errors_run_no_python_code() -> None:
    """A metaclass whose attribute lookup mutates the list cannot make the error path read a freed
    item: the type's name is read from the type object itself."""
    out = run_script("""
        keys = []
        class Meta(type):
            def __getattribute__(cls, name):
                keys.clear()
                gc.collect()
                return type.__getattribute__(cls, name)
        class Key(metaclass=Meta):
            pass
        for _ in range(20):
            keys[:] = ["a" * 100, Key(), "b"]
            try:
                embtab.murmur3_32(keys)
            except TypeError as e:
                assert "keys[1] must be str, bytes, bytearray or memoryview, got Key" in str(e), e
            else:
                raise AssertionError("no TypeError")
        print("ok")
    """)
    assert out.strip() == "ok"
