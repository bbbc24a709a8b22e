"""The DLRM example trains with both backends (tiny sizes): the logged loss goes down."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dlrm_torch.py"


@pytest.mark.parametrize("backend", ["embtab", "torch"])
def test_dlrm_example_loss_goes_down(backend):
    out = subprocess.run([sys.executable, str(EXAMPLE), "--backend", backend, "--steps", "20", "--batch", "64",
                          "--scale", "0.0005", "--log-every", "5", "--dim", "16"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    losses = [float(x) for x in re.findall(r"^step +\d+ +loss (\d+\.\d+)$", out, flags=re.M)]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    assert re.search(r"^steps/s: \d", out, flags=re.M)
