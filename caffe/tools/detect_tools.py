"""``caffe detect``: find objects with an SSD-style detector (a net ending in ``DetectionOutput``).

``caffe detect [FLAGS] [MODEL] INPUT...``: MODEL and INPUTs as ``caffe classify`` takes them (a model
folder, archive or zoo entry, or ``--model``/``--weights``; images, folders, URLs, video frames, ``.npy``).
The model is a :class:`caffe.deploy.DetectionModel`: each image is squashed to the net's input (OpenCV's
bilinear, as ``cv2.dnn.blobFromImage`` and SSD's ``ssd_detect``; ``--interpolation=pillow`` for Pillow's),
channels reordered (``--channel_swap``, default RGB -> BGR), scaled (``--raw_scale``), the mean (``--mean``
or the model's file) subtracted, times ``--input_scale``. ``--labels``: an SSD label map
(``labelmap_voc.prototxt``) or one name a line; default the model folder's labels or its one
``*labelmap*.prototxt``; classes without a name are printed as their number.

Output: the detections with confidence above ``--threshold`` (default 0.5), boxes in pixels of the
original image, clipped to it: text (``IMAGE: 0.9988 - "face" [xmin, ymin, xmax, ymax]``), ``--format=json``
(per input: width, height, detections with label, index, confidence, box) or ``csv``; ``--output FILE``
writes it to a file. ``--draw DIR`` writes each image with its boxes, labels and confidences into DIR
(the input's file name; PNG unless it is a JPEG, PNG or BMP). Inputs that cannot be read are reported and
skipped; the exit status is then 1.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caffe import deploy
from caffe.deploy.drawing import ENCODED_SUFFIXES, draw_detections, encode_image
from caffe.protoio import atomic_write
from caffe.tools.classify_tools import (
    Failure,
    Image,
    add_input_flags,
    add_model_flags,
    add_pixel_flags,
    input_reader,
    pixel_settings,
    start_model_command,
)
from caffe.tools.flags import ToolParser
from caffe.tools.registry import command

log = logging.getLogger("caffe")

USAGE = """caffe detect [FLAGS] [MODEL] INPUT [INPUT ...]

Find objects in images, folders of images, URLs or video frames with an SSD-style detector (a model
folder, archive or --model and --weights): boxes in pixels, labels, confidences above --threshold."""


# ---------------------------------------------------------------------------------------------- outputs


@dataclass
class OutputNames:
    """Safe, distinct file names in one folder for the pictures of inputs (a counter tells repeats apart)."""

    folder: Path
    used: set[str] = field(default_factory=set)

    def path(self, name: str, tail: str = "", suffix: str | None = None) -> Path:
        """``folder/STEM{tail}{suffix}``: STEM from the input's last path segment (unsafe characters become
        ``_``), the suffix the input's when it can be encoded (else ``.png``), unless ``suffix`` is given."""
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", re.split(r"[/\\]", name.rstrip("/\\"))[-1]).strip("._") or "image"
        stem, ext = (base.rsplit(".", 1)[0], "." + base.rsplit(".", 1)[1].lower()) if "." in base else (base, "")
        ext = suffix or (ext if ext in ENCODED_SUFFIXES else ".png")
        candidate, n = f"{stem}{tail}{ext}", 1
        while candidate in self.used:
            candidate, n = f"{stem}-{n}{tail}{ext}", n + 1
        self.used.add(candidate)
        return self.folder / candidate


def make_folder(path: str, flag: str) -> Path:
    """The folder ``path`` (created); a CaffeError naming ``flag`` when it cannot be."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise deploy.ModelFilesError(f"{flag}={path}: cannot create the folder ({e.strerror or e})") from None
    return folder


class Formatter:
    """Writes detections as text, JSON or CSV (text and CSV streamed)."""

    def __init__(self, fmt: str, model: deploy.DetectionModel, out: io.TextIOBase) -> None:
        self.fmt, self.model, self.out = fmt, model, out
        self.records: list[dict[str, Any]] = []
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(["input", "index", "label", "confidence", "xmin", "ymin", "xmax", "ymax"])

    def add(self, name: str, shape: tuple[int, ...] | None, found: Sequence[deploy.Detection], error: str = "") -> None:
        if self.fmt == "json":
            rec: dict[str, Any] = {"input": name}
            if error:
                rec["error"] = error
            else:
                assert shape is not None
                rec.update(width=shape[1], height=shape[0], detections=[self.record(d) for d in found])
            self.records.append(rec)
        elif error:
            return
        elif self.csv is not None:
            for d in found:
                self.csv.writerow([name, d.label, self.model.label(d.label), f"{d.confidence:.6g}", *d.box])
        else:
            for d in found:
                box = ", ".join(f"{v:.1f}" for v in d.box)
                self.out.write(f'{name}: {d.confidence:.4f} - "{self.model.label(d.label)}" [{box}]\n')

    def record(self, d: deploy.Detection) -> dict[str, Any]:
        """One detection for JSON: label, index, confidence, box [xmin, ymin, xmax, ymax] in pixels."""
        return {"label": self.model.label(d.label), "index": d.label, "confidence": d.confidence, "box": list(d.box)}

    def close(self) -> None:
        if self.fmt == "json":
            json.dump(self.records, self.out, indent=2)
            self.out.write("\n")


# ---------------------------------------------------------------------------------------------- command


def _parser() -> ToolParser:
    p = ToolParser("caffe detect", USAGE)
    add_model_flags(p, "Labels: an SSD label map (labelmap_voc.prototxt) or one name a line, by class number")
    p.add_argument("--threshold", type=float, default=0.5, help="Keep detections above this confidence (0.5)")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="Output format")
    p.add_argument("--output", help="Write the results to this file")
    p.add_argument("--draw", metavar="DIR", help="Write each image with its boxes into DIR")
    add_pixel_flags(p, interpolation="opencv")
    add_input_flags(p, "detect in", batch_size=8)
    return p


def _check(args: Any) -> str | None:
    return None if 0.0 <= args.threshold <= 1.0 else f"--threshold must be between 0 and 1, got {args.threshold:g}"


@command("detect", "find objects with an SSD-style detector: boxes, labels, confidences")
def detect(argv: list[str]) -> int:
    parser = _parser()
    started = start_model_command(parser, argv, ("every", "batch_size"), _check)
    if isinstance(started, int):
        return started
    args, files, inputs = started
    model = deploy.DetectionModel(files, pixel_settings(args))
    log.info(
        "Model: %s, weights %s; %d classes, %d labels", files.deploy, files.weights, model.classes, len(model.labels)
    )
    log.info(
        "Preprocessing: %s; mean %s", model.preprocessing.describe(), model.mean.describe() if model.mean else "none"
    )
    draw = OutputNames(make_folder(args.draw, "--draw")) if args.draw else None
    text = io.StringIO() if args.output is not None else sys.stdout
    formatter = Formatter(args.format, model, text)
    counts = {"images": 0, "failed": 0, "objects": 0}
    pending: list[Image | Failure] = []

    def flush() -> None:
        images = [item for item in pending if isinstance(item, Image)]
        results = iter(model.detect([im.pixels for im in images], args.threshold, args.batch_size))
        for item in pending:
            if isinstance(item, Failure):
                formatter.add(item.name, None, [], item.message)
                counts["failed"] += 1
                continue
            dets = next(results)
            formatter.add(item.name, item.pixels.shape, dets)
            counts["images"] += 1
            counts["objects"] += len(dets)
            if draw is not None:
                path = draw.path(item.name)
                atomic_write(path, encode_image(draw_detections(item.pixels, dets, model.label), path.suffix))
        pending.clear()

    for item in input_reader(args, model.input_shape[0]).read(inputs):
        if isinstance(item, Failure):
            log.error("%s", item.message)
        pending.append(item)
        if sum(isinstance(p, Image) for p in pending) >= args.batch_size:
            flush()
    flush()
    formatter.close()
    if args.output is not None:
        atomic_write(args.output, text.getvalue().encode("utf-8"))
        log.info("Wrote %s", args.output)
    if draw is not None:
        log.info("Drew %d image(s) into %s", counts["images"], draw.folder)
    failed = counts["failed"]
    log.info(
        "%d object(s) in %d image(s)%s",
        counts["objects"],
        counts["images"],
        f"; {failed} input(s) could not be read" if failed else "",
    )
    return 1 if failed or not counts["images"] else 0
