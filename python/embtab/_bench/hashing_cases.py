"""The hashing trick against the Python-level tools people use today: scikit-learn's
``murmurhash3_32`` and ``FeatureHasher``, an ``mmh3.hash`` loop, and fastText's ``get_subwords``.

Text comes from the SMS Spam Collection when it sits beside the project
(``../shared/data/sms_spam/SMSSpamCollection``, looked for from the current directory and from
this package's location; ``EMBTAB_SMS_PATH`` names another file), else from generated words.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

import embtab

from .common import Case, Config, assert_equal, optional_import

SMS_RELATIVE = Path("shared") / "data" / "sms_spam" / "SMSSpamCollection"


def find_sms_corpus() -> Optional[Path]:
    """The SMS Spam Collection file, or None."""
    if os.environ.get("EMBTAB_SMS_PATH"):
        path = Path(os.environ["EMBTAB_SMS_PATH"])
        return path if path.is_file() else None
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            candidate = folder.parent / SMS_RELATIVE  # "../shared/..." relative to a project root
            if candidate.is_file():
                return candidate
    return None


def sms_messages(path: Optional[Path] = None) -> Optional[List[List[str]]]:
    """Each message of the corpus as a list of whitespace-separated tokens (None without the file)."""
    path = path or find_sms_corpus()
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t", 1)[-1].split() for line in f if line.strip()]


def generated_messages(rng: np.random.Generator, num_messages: int = 5000) -> List[List[str]]:
    """Short messages of Zipf-distributed words of 1-12 letters (some accented), when the corpus is absent."""
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqzé"))
    vocab = ["".join(letters[rng.integers(0, letters.size, k)]) for k in rng.integers(1, 13, 20_000)]
    ranks = np.minimum(rng.zipf(1.3, (num_messages, 16)), len(vocab)) - 1
    lengths = rng.integers(3, 30, num_messages)
    return [[vocab[r] for r in ranks[m, : min(lengths[m], 16)]] for m in range(num_messages)]


def repeat_to(items: List[Any], n: int) -> List[Any]:
    return (items * (n // max(len(items), 1) + 1))[:n]


def documents_with(messages: List[List[str]], num_tokens: int) -> List[List[str]]:
    """Messages repeated until they hold about num_tokens tokens."""
    docs: List[List[str]] = []
    total = 0
    while total < num_tokens:
        for m in messages:
            docs.append(m)
            total += len(m)
            if total >= num_tokens:
                break
    return docs


def fasttext_baseline(words: List[str], minn: int, maxn: int, bucket: int) -> Optional[Callable[[], Any]]:
    """A loop of fastText's ``model.get_subwords`` over the words (a tiny model is trained on first
    use), returning the subword ids without the words' own ids; None without fasttext."""
    fasttext = optional_import("fasttext")
    if fasttext is None:
        return None
    state: Dict[str, Any] = {}

    def model() -> Any:
        if "model" not in state:
            with tempfile.TemporaryDirectory() as folder:
                corpus = Path(folder) / "corpus.txt"
                corpus.write_text("embtab hashing benchmark corpus\n" * 5, encoding="utf-8")
                state["model"] = fasttext.train_unsupervised(
                    str(corpus), model="skipgram", minCount=1, dim=1, epoch=1, minn=minn, maxn=maxn,
                    bucket=bucket, thread=1, verbose=0,
                )
            state["nwords"] = len(state["model"].words)
        return state["model"]

    def run() -> Any:
        m = model()
        ids = np.concatenate([m.get_subwords(w)[1] for w in words])
        return ids[ids >= state["nwords"]]  # drop in-vocabulary words' own ids

    run.nwords = lambda: (model(), state["nwords"])[1]  # type: ignore[attr-defined]
    return run


def cases(config: Config) -> List[Case]:
    rng = np.random.default_rng(config.seed)
    num_ints = 1_000_000 if config.quick else 10_000_000
    num_strings = 100_000 if config.quick else 1_000_000
    messages = sms_messages()
    source = "SMS"
    if messages is None:
        messages = generated_messages(rng)
        source = "generated"
    corpus_words = [w for m in messages for w in m]
    words = repeat_to(corpus_words, num_strings)
    mean_len = np.mean([len(w.encode()) for w in words])

    utils = optional_import("sklearn.utils")
    mmh3 = optional_import("mmh3")
    feature_extraction = optional_import("sklearn.feature_extraction")
    sparse = optional_import("scipy.sparse")

    keys = rng.integers(-(2**31), 2**31, num_ints, dtype=np.int64).astype(np.int32)
    out: List[Case] = [
        Case(
            name="murmur3_32_int32",
            sizes=f"{num_ints:,} int32 keys",
            run=lambda: embtab.murmur3_32(keys, signed=True),
            baseline=(lambda: utils.murmurhash3_32(keys, 0)) if utils is not None else None,
            baseline_name="sklearn murmurhash3_32",
            check=assert_equal,
            bytes_moved=keys.nbytes * 2,
            items=num_ints,
            item_unit="keys",
        )
    ]

    word_sizes = f"{num_strings:,} {source} words (list, {mean_len:.1f} B avg)"
    num_buckets = 2**20
    out.append(
        Case(
            name="murmur3_32_str",
            sizes=word_sizes,
            run=lambda: embtab.murmur3_32(words, signed=True),
            baseline=(lambda: [mmh3.hash(s) for s in words]) if mmh3 is not None else None,
            baseline_name="[mmh3.hash(s) for s in keys]",
            check=assert_equal,
            items=num_strings,
            item_unit="keys",
        )
    )
    out.append(
        Case(
            name="hash_buckets_str",
            sizes=word_sizes + f", {num_buckets:,} buckets",
            run=lambda: embtab.hash_buckets(words, num_buckets),
            baseline=(lambda: [mmh3.hash(s, 0, False) % num_buckets for s in words]) if mmh3 is not None else None,
            baseline_name="[mmh3.hash(s, 0, False) % n ...]",
            check=assert_equal,
            items=num_strings,
            item_unit="keys",
        )
    )

    docs = documents_with(messages, num_strings)
    num_tokens = sum(len(d) for d in docs)
    n_features = 2**20

    def check_feature_hash(ours: Any, expected: Any) -> None:
        indices, signs, offsets = ours
        matrix = sparse.csr_matrix((signs.astype(np.float64), indices, offsets), shape=(len(docs), n_features))
        matrix.sum_duplicates()
        if (matrix != expected).nnz != 0:
            raise AssertionError("feature_hash differs from FeatureHasher")

    hasher = (
        feature_extraction.FeatureHasher(n_features=n_features, input_type="string")
        if feature_extraction is not None and sparse is not None
        else None
    )
    out.append(
        Case(
            name="feature_hash",
            sizes=f"{len(docs):,} {source} docs, {num_tokens:,} tokens",
            run=lambda: embtab.feature_hash(docs, n_features),
            baseline=(lambda: hasher.transform(docs)) if hasher is not None else None,
            baseline_name="sklearn FeatureHasher",
            check=check_feature_hash if hasher is not None else None,
            items=num_tokens,
            item_unit="tokens",
        )
    )

    minn, maxn, bucket = 3, 6, 2_000_000
    fasttext_run = fasttext_baseline(words, minn, maxn, bucket)

    def run_subwords() -> Any:
        offset = fasttext_run.nwords() if fasttext_run is not None else 0  # type: ignore[attr-defined]
        return embtab.subword_ngrams(words, minn=minn, maxn=maxn, bucket=bucket, offset=offset)

    out.append(
        Case(
            name="subword_ngrams",
            sizes=f"{num_strings:,} {source} words, n={minn}..{maxn}, {bucket:,} buckets",
            run=run_subwords,
            baseline=fasttext_run,
            baseline_name="fastText get_subwords loop",
            check=lambda ours, expected: assert_equal(ours[0], expected),
            items=num_strings,
            item_unit="words",
        )
    )
    return out
