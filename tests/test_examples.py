"""The README's first command runs a real model; its output is the independent reference's top-1."""

from __future__ import annotations

import re
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


def test_ssd_finetune_example_runs_the_whole_pipeline(tmp_path):
    """examples/ssd/finetune_res10.py, 2 iterations: VOC boxes -> create_annoset -> the res10 .caffemodel's own
    training net -> caffe train --weights -> caffe detect; the fine-tuned detector still finds the faces the
    original found, at nearly the same places."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ssd" / "finetune_res10.py"), "--iters", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = {}
    for line in result.stdout.splitlines():
        name, _, boxes = line.strip().partition(": ")
        if name.startswith(("original ", "fine-tuned ")):
            found[name] = [[float(v) for v in box.split(", ")] for box in re.findall(r"\[([^\]]+)\]", boxes)]
    assert len(found["original test1.jpg"]) == len(found["fine-tuned test1.jpg"]) == 2
    for before, after in zip(found["original test1.jpg"], found["fine-tuned test1.jpg"], strict=True):
        assert max(abs(a - b) for a, b in zip(before, after, strict=True)) < 10  # pixels
    assert (tmp_path / "res10_finetuned_iter_2.caffemodel").is_file()


def test_ocr_digits_example_runs_the_whole_pipeline(tmp_path):
    """examples/ocr/train_digits.py, 20 iterations: rendered digit strings -> the fork's multi-label list files ->
    convert_imageset --multi_label -> caffe train (Lstm, WarpCTCLoss, the TEST net's two accuracies) -> caffe
    recognize on every held-out image."""
    script = ROOT / "examples" / "ocr" / "train_digits.py"
    result = subprocess.run(
        [sys.executable, str(script), "--images", "60", "--iters", "20", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first = (tmp_path / "train.txt").read_text().splitlines()[0].split()
    assert first[0] == "train/00000.png" and len(first) == 7 and first[-1] == "0"  # 6 labels, blank-padded
    assert re.search(r"Test net output #0: acc = [\d.]+\n.*Test net output #1: acc = [\d.]+", result.stderr)
    assert (tmp_path / "crnn_digits_iter_20.caffemodel").is_file()
    shown = [line for line in result.stdout.splitlines() if line.startswith("   test/")]
    assert len(shown) == 10 and all("(drawn: '" in line for line in shown)
    assert re.search(r"whole strings read right: \d+ of 10 ", result.stdout)
