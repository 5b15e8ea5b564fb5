"""``caffe segment``: class maps and overlays from a segmentation net (SegNet, ENet, FCN, PSPNet style).

``caffe segment [FLAGS] [MODEL] INPUT... --out DIR``: MODEL and INPUTs as ``caffe classify`` takes them.
The model is a :class:`caffe.deploy.SegmentationModel`: each image is squashed to the net's input
(OpenCV's bilinear unless ``--interpolation=pillow``), prepared with ``--channel_swap``, ``--raw_scale``,
the mean (``--mean`` or the model's file) and ``--input_scale``; the output's N x C x H x W scores give
each pixel's class (argmax over C), resized back to the image by nearest neighbour.

For each input, DIR gets ``STEM_classes.png`` (the class numbers: 8-bit, or 16-bit when there are more
than 256 classes) and ``STEM_overlay.png`` (the PASCAL VOC colours blended over the image at
``--alpha``, default 0.5). Printed: one line per input with the files and its classes by share of pixels
(``--labels`` names them), or ``--format=json``. Unreadable inputs are reported and skipped (exit status 1).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from caffe import deploy
from caffe.deploy.drawing import encode_image
from caffe.protoio import atomic_write
from caffe.tools import classify_tools as common
from caffe.tools.detect_tools import OutputNames, make_folder
from caffe.tools.flags import ToolParser
from caffe.tools.registry import command

log = logging.getLogger("caffe")

USAGE = """caffe segment [FLAGS] [MODEL] INPUT [INPUT ...] --out DIR

Label every pixel of images, folders, URLs or video frames with a segmentation net: writes each class
map (PNG of class numbers) and an overlay of class colours into DIR."""


def _parser() -> ToolParser:
    p = ToolParser("caffe segment", USAGE)
    common.add_model_flags(p, "Labels: one class name a line (or an SSD-style label map)")
    p.add_argument("--out", metavar="DIR", help="The folder for the class maps and overlays (required)")
    p.add_argument("--alpha", type=float, default=0.5, help="Overlay: weight of the class colours (0.5)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="What is printed")
    common.add_pixel_flags(p, interpolation="opencv")
    common.add_input_flags(p, "segment", batch_size=None)
    return p


def _summary(model: deploy.SegmentationModel, classes: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` most frequent classes of a class map: index, label, share of pixels."""
    counts = np.bincount(classes.ravel(), minlength=1)
    order = np.argsort(-counts, kind="stable")[:top]
    total = classes.size
    return [
        {"index": int(i), "label": model.label(int(i)), "share": round(float(counts[i]) / total, 4)}
        for i in order
        if counts[i]
    ]


def _check(args: Any) -> str | None:
    if not args.out:
        return "--out DIR is required (where the class maps and overlays go)"
    return None if 0.0 <= args.alpha <= 1.0 else f"--alpha must be between 0 and 1, got {args.alpha:g}"


@command("segment", "label every pixel with a segmentation net: class maps and overlays")
def segment(argv: list[str]) -> int:
    parser = _parser()
    started = common.start_model_command(parser, argv, ("every",), _check)
    if isinstance(started, int):
        return started
    args, files, inputs = started
    model = deploy.SegmentationModel(files, common.pixel_settings(args))
    log.info("Model: %s, weights %s; %s", files.deploy, files.weights, model.softmax_reason)
    names = OutputNames(make_folder(args.out, "--out"))
    records: list[dict[str, Any]] = []
    done = 0
    for item in common.input_reader(args, model.input_shape[0]).images(inputs, records):
        classes = model.segment([item.pixels])[0]
        class_path = names.path(item.name, "_classes", ".png")
        overlay_path = names.path(item.name, "_overlay", ".png")
        atomic_write(class_path, encode_image(classes, ".png"))
        atomic_write(overlay_path, encode_image(deploy.overlay(item.pixels, classes, args.alpha), ".png"))
        rec = {"input": item.name, "classes": str(class_path), "overlay": str(overlay_path)}
        rec["top"] = _summary(model, classes)
        records.append(rec)
        done += 1
        if args.format == "text":
            shares = ", ".join(f'"{c["label"]}" {100 * c["share"]:.1f}%' for c in rec["top"])
            print(f"{item.name}: {class_path} {overlay_path} ({shares})", flush=True)
    if args.format == "json":
        print(json.dumps(records, indent=2))
    failed = len(records) - done
    log.info("Segmented %d input(s) into %s%s", done, names.folder, f"; {failed} could not be read" if failed else "")
    return 1 if failed or not done else 0
