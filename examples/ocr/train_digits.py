"""Train a text recogniser (a CRNN: convolutions, a bidirectional LSTM, CTC) the senlinuc/caffe_ocr way, end to end.

    python examples/ocr/train_digits.py [--images 6000] [--iters 3000] [--out DIR]

The steps are a caffe_ocr user's, with the same kinds of files and commands:

1. images and their label sequences: ``--images`` grey 32 x 100 images of 3-6 digits drawn with OpenCV's Hershey
   fonts (random font, size, thickness, place, contrast, noise and blur), and the fork's list files, one line an
   image: ``train/00001.png 4 2 9 0 0 0`` (class 0 the blank, 1-10 the digits 0-9, padded with blanks to 6);
2. ``caffe convert_imageset --multi_label --gray``: LMDBs of multi-label Datums (the fork's ``repeated label``);
3. ``caffe train --solver crnn_solver.prototxt``: Data layers with (N, 6, 1, 1) labels, ``Lstm``, ``Reverse``,
   ``WarpCTCLoss``; the TEST net's ``CTCGreedyDecoder`` logs the edit and whole-string accuracies;
4. ``caffe recognize`` with the deploy net on held-out images: the strings it reads, and how many are right.

``--out DIR`` (default ``examples/ocr/digits``) gets the images, the databases, copies of this folder's nets and
solver with their paths pointed there, and the snapshot.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from caffe.tools.cli import main as main_cli

HERE = Path(__file__).resolve().parent
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_PLAIN)
HEIGHT, WIDTH, MAX_DIGITS = 32, 100, 6


def caffe(*args: str, capture: bool = False) -> str:
    """Run a ``caffe`` command (in this process: ``caffe.tools.cli.main``), stopping on failure; its printed
    output when ``capture``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if capture else contextlib.nullcontext():
        code = main_cli(list(args))
    if code != 0:
        sys.exit(f"caffe {args[0]} failed (exit {code})")
    return out.getvalue()


def render(rng: np.random.Generator, digits: str) -> np.ndarray:
    """One grey HEIGHT x WIDTH image of ``digits``."""
    font = FONTS[rng.integers(len(FONTS))]
    thickness = int(rng.integers(1, 3))
    scale = float(rng.uniform(0.7, 1.1)) * (1.6 if font == cv2.FONT_HERSHEY_PLAIN else 1.0)
    (w, h), base = cv2.getTextSize(digits, font, scale, thickness)
    fit = min(1.0, (WIDTH - 6) / w, (HEIGHT - 6) / (h + base))
    scale *= fit
    (w, h), base = cv2.getTextSize(digits, font, scale, thickness)
    x = int(rng.integers(2, max(3, WIDTH - w - 2)))
    y = int(rng.integers(h + 2, max(h + 3, HEIGHT - base - 1)))
    back, ink = sorted(rng.integers(0, 256, 2)) if rng.random() < 0.5 else sorted(rng.integers(0, 256, 2))[::-1]
    if abs(int(back) - int(ink)) < 80:
        back, ink = (0, 255) if rng.random() < 0.5 else (255, 0)
    image = np.full((HEIGHT, WIDTH), back, np.uint8)
    cv2.putText(image, digits, (x, y), font, scale, int(ink), thickness, cv2.LINE_AA)
    noisy = image.astype(np.float32) + rng.normal(0, rng.uniform(0, 12), image.shape)
    if rng.random() < 0.5:
        noisy = cv2.GaussianBlur(noisy, (3, 3), float(rng.uniform(0.3, 1.0)))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def make_images(out: Path, split: str, count: int, rng: np.random.Generator) -> list[str]:
    """``count`` images under ``out/split`` and the list file ``out/split.txt``; returns the strings drawn."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    lines, strings = [], []
    for i in range(count):
        digits = "".join(str(d) for d in rng.integers(0, 10, rng.integers(3, MAX_DIGITS + 1)))
        name = f"{split}/{i:05d}.png"
        cv2.imwrite(str(out / name), render(rng, digits))
        labels = [int(d) + 1 for d in digits] + [0] * (MAX_DIGITS - len(digits))
        lines.append(f"{name} {' '.join(map(str, labels))}")
        strings.append(digits)
    (out / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return strings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6000, help="training images (a tenth more are held out)")
    parser.add_argument("--iters", type=int, default=3000, help="training iterations (batch 32)")
    parser.add_argument("--out", default=str(HERE / "digits"), help="where everything goes (examples/ocr/digits)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    held_out = max(10, args.images // 10)

    print(f"1. drawing {args.images} training and {held_out} held-out images into {out}", flush=True)
    make_images(out, "train", args.images, rng)
    truth = make_images(out, "test", held_out, rng)

    print("2. caffe convert_imageset --multi_label", flush=True)
    for split in ("train", "test"):
        db = out / f"digits_{split}_lmdb"
        shutil.rmtree(db, ignore_errors=True)
        caffe("convert_imageset", "--multi_label", "--gray", "--shuffle", "--backend=lmdb",
              f"{out}/", str(out / f"{split}.txt"), str(db))  # fmt: skip

    print(f"3. caffe train, {args.iters} iterations", flush=True)
    for name in ("crnn_train_val.prototxt", "crnn_solver.prototxt", "crnn_deploy.prototxt", "digits_labels.txt"):
        text = (HERE / name).read_text().replace("examples/ocr/", f"{out}/")
        if name == "crnn_solver.prototxt":
            text = text.replace("max_iter: 3000", f"max_iter: {args.iters}")
            text = text.replace("snapshot: 3000", f"snapshot: {args.iters}")
            text = text.replace("test_interval: 500", f"test_interval: {max(1, min(500, args.iters))}")
        (out / name).write_text(text)
    caffe("train", "--solver", str(out / "crnn_solver.prototxt"))

    print("4. caffe recognize on the held-out images", flush=True)
    weights = out / f"crnn_digits_iter_{args.iters}.caffemodel"
    flags = ["--model", str(out / "crnn_deploy.prototxt"), "--weights", str(weights), "--format", "json"]
    flags += ["--labels", str(out / "digits_labels.txt"), "--mean", "128", "--input_scale", "0.0078125"]
    images = [str(out / f"test/{i:05d}.png") for i in range(held_out)]
    records = json.loads(caffe("recognize", *flags, *images, capture=True))
    right = 0
    for i, (record, digits) in enumerate(zip(records, truth, strict=True)):
        right += record["text"] == digits
        if i < 10:
            print(f"   test/{i:05d}.png: {record['text']!r} (drawn: {digits!r})")
    print(f"whole strings read right: {right} of {held_out} ({100.0 * right / held_out:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
