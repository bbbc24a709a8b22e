"""Train two text classifiers with embtab layers and numpy, no deep-learning framework.

1. The classic Keras sentiment model: every token hashed into 10,000 buckets and embedded
   (dim 128), sequences padded or truncated to a fixed length, flattened, one dense sigmoid unit,
   binary cross-entropy, Adam.
2. fastText-style: a hashed bag of words *and* character n-grams (SubwordEmbedding, mean
   pooling), one dense sigmoid unit, binary cross-entropy, Adam.

Usage::

    python examples/text_classifier.py --data ../shared/data/sms_spam/SMSSpamCollection --epochs 5

``--data`` is a file of ``label<TAB>text`` lines with two distinct labels. Without it a small
corpus is generated. The data is split 80/20 (train/test) with ``--seed``; each model prints
``test accuracy: 0.xxxx`` at the end.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from typing import List, Sequence, Tuple

import numpy as np

import embtab

TOKEN = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> List[str]:
    return TOKEN.findall(text.lower())


def load_corpus(path: str) -> Tuple[List[str], np.ndarray, List[str]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            if "\t" not in line:
                raise SystemExit(f"{path}:{number}: expected 'label<TAB>text'")
            label, text = line.split("\t", 1)
            labels.append(label)
            texts.append(text)
    names = sorted(set(labels))
    if len(names) != 2:
        raise SystemExit(f"{path}: expected exactly two distinct labels, found {len(names)}: {names[:5]}")
    # The rarer label is the positive class (spam, say).
    counts = Counter(labels)
    positive = min(names, key=lambda n: (counts[n], n))
    return texts, np.array([label == positive for label in labels], np.float64), [n for n in names if n != positive] + [positive]


def generated_corpus(seed: int, size: int = 2000) -> Tuple[List[str], np.ndarray, List[str]]:
    rng = np.random.default_rng(seed)
    good = "great excellent wonderful loved superb delightful enjoyable brilliant amazing fantastic".split()
    bad = "terrible awful boring hated dreadful poor disappointing worst horrible weak".split()
    neutral = "the movie film plot actor scene story was and a it this of to with very really quite".split()
    texts, labels = [], []
    for _ in range(size):
        label = rng.random() < 0.5
        words = list(rng.choice(neutral, rng.integers(5, 15)))
        words += list(rng.choice(good if label else bad, rng.integers(1, 3)))
        words += list(rng.choice(bad if label else good, rng.integers(0, 2)))  # some noise
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(float(label))
    return texts, np.array(labels), ["negative", "positive"]


class Dense:
    """One sigmoid unit (logistic regression) over features, trained with Adam (numpy)."""

    def __init__(self, n_in: int, rng: np.random.Generator, lr: float) -> None:
        bound = np.sqrt(6.0 / (n_in + 1))
        self.w = rng.uniform(-bound, bound, n_in).astype(np.float32)
        self.b = np.zeros(1, np.float32)
        self.lr, self.t = lr, 0
        self.m = [np.zeros_like(self.w), np.zeros_like(self.b)]
        self.v = [np.zeros_like(self.w), np.zeros_like(self.b)]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(x @ self.w + self.b[0])))

    def backward(self, x: np.ndarray, grad_logits: np.ndarray) -> np.ndarray:
        grads = [x.T @ grad_logits, np.array([grad_logits.sum()], np.float32)]
        grad_x = np.outer(grad_logits, self.w).astype(np.float32)
        self.t += 1
        for p, g, m, v in zip((self.w, self.b), grads, self.m, self.v):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= self.lr * (m / (1 - 0.9**self.t)) / (np.sqrt(v / (1 - 0.999**self.t)) + 1e-7)
        return grad_x


def bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def progress(epoch: int, epochs: int, done: int, total: int, loss: float, started: float, batch: int) -> None:
    """A one-line progress bar on stderr, redrawn about 20 times per epoch."""
    step = max(batch, total // 20)
    if done != total and (done // step) == ((done - batch) // step):
        return
    width = 30
    filled = int(width * done / max(total, 1))
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r  epoch {epoch}/{epochs} [{bar}] {done}/{total} loss {loss:.4f} {time.perf_counter() - started:.1f}s")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def pad_hashed(token_lists: Sequence[Sequence[str]], maxlen: int, buckets: int) -> np.ndarray:
    """Bucket ids of each token, padded (with the padding row `buckets`) or truncated to maxlen."""
    out = np.full((len(token_lists), maxlen), buckets, np.int64)
    for i, tokens in enumerate(token_lists):
        tokens = list(tokens[:maxlen])
        if tokens:
            out[i, : len(tokens)] = embtab.hash_buckets(tokens, buckets)
    return out


def train_flatten(train: Tuple[List[List[str]], np.ndarray], test: Tuple[List[List[str]], np.ndarray], *, epochs: int,
                  seed: int, batch: int = 32, maxlen: int = 50, buckets: int = 10_000, dim: int = 128) -> float:
    """Model 1: hashed token embedding (dim 128) -> flatten -> dense sigmoid."""
    rng = np.random.default_rng(seed)
    x_train, x_test = pad_hashed(train[0], maxlen, buckets), pad_hashed(test[0], maxlen, buckets)
    embedding = embtab.Embedding(buckets + 1, dim, std=0.05, seed=seed, padding_idx=buckets)
    dense = Dense(maxlen * dim, rng, lr=1e-3)
    opt = embtab.optim.Adam(embedding, lr=1e-3)
    for epoch in range(1, epochs + 1):
        started, order, losses = time.perf_counter(), rng.permutation(len(x_train)), []
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            opt.zero_grad()  # backward() adds to embedding.grad; step() leaves it
            emb = embedding.forward(x_train[idx])  # (b, maxlen, dim)
            flat = emb.reshape(len(idx), -1)
            p = dense.forward(flat)
            y = train[1][idx]
            losses.append(bce(p, y))
            grad_flat = dense.backward(flat, ((p - y) / len(idx)).astype(np.float32))
            embedding.backward(grad_flat.reshape(emb.shape))
            opt.step()
            progress(epoch, epochs, min(start + batch, len(order)), len(order), float(np.mean(losses)), started, batch)
    embedding.eval()
    p = dense.forward(embedding.forward(x_test).reshape(len(x_test), -1))
    return float(np.mean((p > 0.5) == (test[1] > 0.5)))


def train_bag(train: Tuple[List[List[str]], np.ndarray], test: Tuple[List[List[str]], np.ndarray], *, epochs: int,
              seed: int, batch: int = 16, dim: int = 64, bucket: int = 200_000) -> float:
    """Model 2: mean of word and subword rows (fastText-style) -> dense sigmoid."""
    rng = np.random.default_rng(seed)
    counts = Counter(w for doc in train[0] for w in doc)
    vocab = sorted(w for w, c in counts.items() if c >= 2)
    layer = embtab.SubwordEmbedding(dim, vocab=vocab, minn=3, maxn=5, bucket=bucket, seed=seed)
    dense = Dense(dim, rng, lr=5e-3)
    opt = embtab.optim.Adam(layer, lr=5e-3)
    docs = [doc if doc else ["<empty>"] for doc in train[0]]
    for epoch in range(1, epochs + 1):
        started, order, losses = time.perf_counter(), rng.permutation(len(docs)), []
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            h = layer.forward([docs[i] for i in idx])
            p = dense.forward(h)
            y = train[1][idx]
            losses.append(bce(p, y))
            layer.backward(dense.backward(h, ((p - y) / len(idx)).astype(np.float32)))
            opt.step()
            progress(epoch, epochs, min(start + batch, len(order)), len(order), float(np.mean(losses)), started, batch)
    layer.eval()
    p = dense.forward(layer.forward([doc if doc else ["<empty>"] for doc in test[0]]))
    return float(np.mean((p > 0.5) == (test[1] > 0.5)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="file of label<TAB>text lines (default: a generated corpus)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="flatten,bag", help="which models to train (flatten, bag)")
    args = parser.parse_args(argv)

    texts, labels, names = load_corpus(args.data) if args.data else generated_corpus(args.seed)
    tokens = [tokenize(t) for t in texts]
    order = np.random.default_rng(args.seed).permutation(len(tokens))
    cut = int(0.8 * len(order))
    train = ([tokens[i] for i in order[:cut]], labels[order[:cut]])
    test = ([tokens[i] for i in order[cut:]], labels[order[cut:]])
    print(f"{len(texts)} documents ({names[1]}: {int(labels.sum())}, {names[0]}: {int(len(labels) - labels.sum())}); "
          f"train {len(train[1])}, test {len(test[1])}; embtab {embtab.__version__} ({embtab.simd_path()})")

    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        started = time.perf_counter()
        if model == "flatten":
            print("model 1: hashed token embedding (10,000 buckets x 128) -> flatten -> dense sigmoid")
            accuracy = train_flatten(train, test, epochs=args.epochs, seed=args.seed)
        elif model == "bag":
            print("model 2: fastText-style mean of word + subword rows -> dense sigmoid")
            accuracy = train_bag(train, test, epochs=args.epochs, seed=args.seed)
        else:
            raise SystemExit(f"unknown model {model!r}")
        elapsed = time.perf_counter() - started
        print(f"  {elapsed / max(args.epochs, 1):.2f} s per epoch")
        print(f"test accuracy: {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
