"""The text-classifier example: runs on a generated corpus, and reads a ``label<TAB>text`` file (a
small SMS-like fixture written for these tests) on which the fastText-style bag model must separate
the two labels."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "text_classifier.py"
SMS_LIKE = Path(__file__).resolve().parent / "fixtures" / "sms_like.tsv"


def run_example(*args: str) -> list:
    out = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=600, check=True)
    return [float(x) for x in re.findall(r"^test accuracy: (\d\.\d{4})$", out.stdout, flags=re.M)]


def test_generated_corpus_runs_both_models():
    accuracies = run_example("--epochs", "2", "--seed", "1")
    assert len(accuracies) == 2
    assert all(a > 0.6 for a in accuracies)  # a majority-class guess gets about 0.5 here


def test_labelled_file_bag_model_accuracy():
    (bag_accuracy,) = run_example("--data", str(SMS_LIKE), "--epochs", "5", "--models", "bag")
    assert bag_accuracy >= 0.95  # spam and ham share no content words here; a constant guess gets 0.73
