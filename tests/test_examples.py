"""The README's first command runs a real model; its output is the independent reference's top-1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_classify_pretrained_example():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "classify_pretrained.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "cat.jpg:"
    assert "kit fox" in lines[1]
