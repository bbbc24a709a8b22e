"""The text-classifier example: runs on a generated corpus, and on the shared SMS corpus (if present)
the fastText-style bag model must reach at least 0.95 test accuracy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "text_classifier.py"
SMS = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"


def run_example(*args: str) -> list:
    out = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=600, check=True)
    return [float(x) for x in re.findall(r"^test accuracy: (\d\.\d{4})$", out.stdout, flags=re.M)]


def test_generated_corpus_runs_both_models():
    accuracies = run_example("--epochs", "2", "--seed", "1")
    assert len(accuracies) == 2
    assert all(a > 0.6 for a in accuracies)  # a majority-class guess gets about 0.5 here


@pytest.mark.skipif(not SMS.exists(), reason="shared SMS corpus not present")
def test_sms_spam_bag_model_accuracy():
    (bag_accuracy,) = run_example("--data", str(SMS), "--epochs", "3", "--models", "bag")
    assert bag_accuracy >= 0.95
