"""``caffe classify`` (classify images with a deployable model) and ``caffe package`` (write a DIGITS archive).

``caffe classify [FLAGS] [MODEL] INPUT...``: MODEL is a model folder, a DIGITS archive or a zoo entry (see
:func:`caffe.deploy.find_model`), or leave it out and name the files (``--model``/``--model_def``,
``--weights``/``--pretrained_model``, ``--mean``/``--mean_file``, ``--labels``). INPUTs are image files,
folders (their images, or ``*.EXT`` with ``--ext``), http/https URLs (fetched with ``--timeout`` and
``--max_mb``), video files (every ``--every``-th frame, with OpenCV) or ``.npy`` arrays of H x W x K images
in [0, 1] (rounded to 8 bits).

The model is a :class:`caffe.deploy.DeployModel`, whose defaults this command keeps: a DIGITS model (its
archive or folder has info.json) is prepared as DIGITS and the studio prepare it (the dataset's image size
and resize mode, then a centre crop to the input); any other model as Caffe's C++ classification example
(resized to the input, the per-channel mean subtracted). ``--images_dim``, ``--resize_mode``, ``--mean``,
``--channel_swap``, ``--raw_scale`` and ``--input_scale`` override them; a model without a mean is warned
about. With ``--oversample`` (pycaffe's default; also ``--nocenter_only``) the probabilities of ten
input-sized crops (corners, centre, and their mirrors) of the image resized to ``--images_dim`` (default:
the input's size, at least 256 x 256) are averaged.

Output: probabilities (the net's last output, through a softmax unless a Softmax layer produces it; the log
says which), top ``--top_k`` per input as ``0.8123 - "n02119789 kit fox"`` lines (``--format=text``), JSON
(``probability`` and the net's raw ``score``) or CSV; ``--output FILE`` writes it to a file instead (a
``.npy`` FILE gets the N x C probabilities). Inputs that cannot be read are reported and skipped; the exit
status is then 1.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caffe import deploy
from caffe.deploy.images import IMAGE_SUFFIXES
from caffe.errors import CaffeError, DataError
from caffe.io import oversample as ten_crops
from caffe.limits import read_file
from caffe.protoio import atomic_write
from caffe.tools.flags import ToolParser, parse_flags, usage_error
from caffe.tools.registry import command
from caffe.util import http

log = logging.getLogger("caffe")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")

CLASSIFY_USAGE = """caffe classify [FLAGS] [MODEL] INPUT [INPUT ...]

Classify images, folders of images, URLs or video frames with a model folder, a DIGITS model archive
(.tar.gz/.zip) or explicit files (--model, --weights, --mean, --labels)."""

PACKAGE_USAGE = """caffe package --output=MODEL.tar.gz --deploy=DEPLOY --weights=SNAPSHOT [--solver=... --train_val=...
  --mean=... --labels=...]

Write a model archive as DIGITS' "Download Model" gives it (deploy.prototxt, snapshot_iter_N.caffemodel,
mean.binaryproto, labels.txt, solver.prototxt, train_val.prototxt, original.prototxt, info.json)."""


class InputError(DataError):
    """An input (file, folder, URL, video) that gives no image."""


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class Image:
    """One image to classify: its name in the output and its pixels (H x W x C uint8, the net's channels)."""

    name: str
    pixels: np.ndarray


def fetch_url(url: str, timeout: float, max_bytes: int) -> bytes:
    """The body of an http/https ``url`` (``caffe.util.http.fetch_url``: redirects to http(s) only);
    failures, timeouts and bodies over ``max_bytes`` (--max_mb) are InputErrors."""
    try:
        return http.fetch_url(url, timeout, max_bytes)
    except http.RequestError as e:
        raise InputError(e.message + (" (--max_mb)" if e.status == 413 else "")) from None


def _video_frames(path: Path, every: int, channels: int) -> Iterator[Image]:
    import cv2
    from PIL import Image as PILImage

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"{path}: OpenCV cannot open it as a video")
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                rgb = PILImage.fromarray(np.ascontiguousarray(frame[:, :, ::-1]))
                pixels = deploy.image_array(rgb, channels)
                yield Image(f"{path}#frame={index}", pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels)
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise InputError(f"{path}: no frame could be read from the video")


def _folder_files(folder: Path, ext: str | None) -> list[Path]:
    suffixes = (f".{ext.lower().lstrip('.')}",) if ext else IMAGE_SUFFIXES + VIDEO_EXTENSIONS
    files = sorted(q for q in folder.iterdir() if q.is_file() and q.suffix.lower() in suffixes)
    if not files:
        raise InputError(f"{folder}: no {'*' + suffixes[0] if ext else 'image or video'} files in the folder")
    return files


@dataclass
class Failure:
    """An input that gave no image, and why."""

    name: str
    message: str


@dataclass
class Reader:
    """Turns INPUT arguments into images of the net's channel count (see the module)."""

    channels: int
    ext: str | None = None
    every: int = 1
    timeout: float = 10.0
    max_bytes: int = 50 << 20

    def read(self, inputs: Sequence[str]) -> Iterator[Image | Failure]:
        """Images in order; an input that gives none yields a Failure instead (and reading goes on)."""
        for spec in inputs:
            try:
                if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec):
                    data = fetch_url(spec, self.timeout, self.max_bytes)
                    yield Image(spec, deploy.decode_image(data, self.channels, spec))
                    continue
                path = Path(spec)
                if path.is_dir():
                    for q in _folder_files(path, self.ext):
                        yield from self.read([str(q)])
                elif not path.is_file():
                    raise InputError(f"{spec}: no such file, folder or URL")
                elif path.suffix.lower() in VIDEO_EXTENSIONS:
                    yield from _video_frames(path, self.every, self.channels)
                elif path.suffix.lower() == ".npy":
                    yield from self._npy(path)
                else:
                    data = read_file(path, "image", error=InputError)
                    yield Image(spec, deploy.decode_image(data, self.channels, spec))
            except (DataError, OSError) as e:
                yield Failure(spec, str(e) if isinstance(e, CaffeError) else f"{spec}: {e}")

    def images(self, inputs: Sequence[str], records: list[dict[str, Any]]) -> Iterator[Image]:
        """:meth:`read`'s images; each Failure is logged and appended to ``records`` as ``{"input", "error"}``."""
        for item in self.read(inputs):
            if isinstance(item, Failure):
                log.error("%s", item.message)
                records.append({"input": item.name, "error": item.message})
            else:
                yield item

    def _npy(self, path: Path) -> Iterator[Image]:
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"{path}: not a NumPy array file ({e})") from None
        if arr.ndim == 3:
            arr = arr[np.newaxis]
        if arr.ndim != 4 or arr.shape[3] not in (1, 3):
            raise InputError(f"{path}: expected N x H x W x (1|3) images, got shape {arr.shape}")
        for i, im in enumerate(arr):
            pixels = np.clip(np.rint(np.asarray(im, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
            if pixels.shape[2] != self.channels:
                pixels = (
                    np.repeat(pixels, 3, axis=2)
                    if self.channels == 3
                    else np.rint(pixels.mean(axis=2, keepdims=True)).astype(np.uint8)
                )
            yield Image(f"{path}[{i}]", pixels)


def ints(text: str, flag: str, count: int | None = None) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise CaffeError(f"{flag}={text}: expected comma-separated integers") from None
    if count is not None and len(values) != count:
        raise CaffeError(f"{flag}={text}: expected {count} comma-separated integers")
    return values


def add_model_flags(
    p: ToolParser, labels_help: str = "Labels file, one per line (labels.txt, synset_words.txt)"
) -> None:
    """The positional ``[MODEL] INPUT...`` and the model's files: --model, --weights, --mean, --labels."""
    p.add_argument("inputs", nargs="*", metavar="[MODEL] INPUT")
    p.add_argument("--model", "--model_def", dest="model", help="The deploy prototxt")
    p.add_argument("--weights", "--pretrained_model", dest="weights", help="The trained weights (.caffemodel)")
    p.add_argument("--mean", "--mean_file", dest="mean", help="Mean: .binaryproto, .npy or values (104,117,123)")
    p.add_argument("--labels", help=labels_help)


def add_pixel_flags(p: ToolParser, interpolation: str | None = None) -> None:
    """How pixels become the input: --raw_scale, --input_scale, --channel_swap (and --interpolation with
    this default, unless None)."""
    p.add_argument("--raw_scale", type=float, default=255.0, help="Scale of the [0,1] pixels (default 255)")
    p.add_argument("--input_scale", type=float, default=None, help="Scale after the mean subtraction")
    p.add_argument("--channel_swap", default="2,1,0", help="Channel order of the net's input (default 2,1,0: BGR)")
    if interpolation is not None:
        help_ = f"How images are resized (default {interpolation}: as cv2.dnn.blobFromImage)"
        p.add_argument("--interpolation", choices=deploy.INTERPOLATIONS, default=interpolation, help=help_)


def add_input_flags(p: ToolParser, verb: str = "classify", batch_size: int | None = 16) -> None:
    """Which inputs are read and how: --ext, --every, --batch_size (unless None), --timeout, --max_mb, --gpu."""
    p.add_argument("--ext", help="Only *.EXT files of folders (default: every image and video)")
    p.add_argument("--every", type=int, default=1, help=f"Videos: {verb} every Nth frame (default 1)")
    if batch_size is not None:
        help_ = f"Images per forward pass (default {batch_size})"
        p.add_argument("--batch_size", type=int, default=batch_size, help=help_)
    p.add_argument("--timeout", type=float, default=10.0, help="URLs: seconds to wait (default 10)")
    p.add_argument("--max_mb", type=float, default=50.0, help="URLs: largest download in MB (default 50)")
    p.add_argument("--gpu", default="", help="GPU id to run on (bare --gpu: 0); default: the CPU")


def _classify_parser() -> ToolParser:
    p = ToolParser("caffe classify", CLASSIFY_USAGE)
    add_model_flags(p)
    p.add_argument("--top_k", type=int, default=5, help="How many classes to print per input (default 5)")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="Output format")
    p.add_argument("--output", help="Write the results to this file (.npy: the prediction array)")
    p.add_bool("center_only", "Classify the centre crop only (the default; --nocenter_only oversamples)")
    p.set_defaults(center_only=True)
    p.add_bool("oversample", "Average the 10 crops (corners, centre, mirrored) of each image")
    p.add_argument("--images_dim", help="H,W the images are resized to first (default: the model's; see above)")
    p.add_argument("--resize_mode", choices=deploy.RESIZE_MODES, help="How images are resized (default: the model's)")
    add_pixel_flags(p)
    add_input_flags(p)
    return p


def pixel_settings(args: Any, **kw: Any) -> deploy.Settings:
    """The DeployModel settings of --mean, --channel_swap, --raw_scale, --input_scale, --interpolation (and
    ``kw``)."""
    swap = tuple(ints(args.channel_swap, "--channel_swap")) if args.channel_swap else None
    if getattr(args, "interpolation", None):
        kw.setdefault("interpolation", args.interpolation)
    return deploy.Settings(
        mean=args.mean,
        channel_swap=swap,
        raw_scale=args.raw_scale,
        input_scale=1.0 if args.input_scale is None else args.input_scale,
        **kw,
    )


def input_reader(args: Any, channels: int) -> Reader:
    """The Reader of the input flags for images of ``channels``."""
    return Reader(channels, args.ext, args.every, args.timeout, int(args.max_mb * (1 << 20)))


def check_counts(parser: ToolParser, args: Any, flags: Sequence[str]) -> int | None:
    """A usage error for the first of ``flags`` under 1, else None."""
    for flag in flags:
        if getattr(args, flag) < 1:
            return usage_error(parser, f"--{flag} must be at least 1")
    return None


def bare_gpu(argv: list[str]) -> list[str]:
    """pycaffe's ``--gpu`` took no value: a bare ``--gpu`` means GPU 0."""
    out = []
    for i, arg in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        out.append("--gpu=0" if arg == "--gpu" and not re.fullmatch(r"\d+(,\d+)*|all", nxt) else arg)
    return out


def select_device(spec: str) -> None:
    from caffe.tools.train import select_device as select

    if spec and not re.fullmatch(r"\d+(,\d+)*|all", spec):
        raise CaffeError(f"--gpu must be a device id (or ids, or 'all'), got '{spec}'")
    select(spec)


@dataclass
class Result:
    name: str
    probs: np.ndarray | None = None
    scores: np.ndarray | None = None
    error: str | None = None


class Formatter:
    """Writes results as text, JSON or CSV (streamed for text and CSV): probabilities, most probable first."""

    def __init__(self, fmt: str, model: deploy.DeployModel, top_k: int, out: io.TextIOBase) -> None:
        self.fmt, self.model, self.top_k, self.out = fmt, model, top_k, out
        self.records: list[dict[str, Any]] = []
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(["input", "rank", "index", "label", "probability"])

    def add(self, r: Result) -> None:
        if self.fmt == "json":
            rec: dict[str, Any] = {"input": r.name}
            if r.error is not None:
                rec["error"] = r.error
            else:
                assert r.probs is not None and r.scores is not None
                rec["predictions"] = [
                    {
                        "index": p.index,
                        "label": p.label,
                        "probability": p.probability,
                        "score": float(r.scores[p.index]),
                    }
                    for p in self.model.top_k(r.probs, self.top_k)
                ]
            self.records.append(rec)
        elif r.probs is None:
            return
        elif self.csv is not None:
            for rank, p in enumerate(self.model.top_k(r.probs, self.top_k), 1):
                self.csv.writerow([r.name, rank, p.index, p.label, f"{p.probability:.6g}"])
        else:
            self.out.write(f"---------- Prediction for {r.name} ----------\n")
            for p in self.model.top_k(r.probs, self.top_k):
                self.out.write(f'{p.probability:.4f} - "{p.label}"\n')

    def close(self) -> None:
        if self.fmt == "json":
            json.dump(self.records, self.out, indent=2)
            self.out.write("\n")


def model_files(parser: ToolParser, args: Any) -> tuple[deploy.ModelFiles, list[str]] | int:
    """The model's files and the inputs of ``[MODEL] INPUT...`` with --model/--weights/--labels; no model
    at all is a usage error (its exit status), missing files or inputs a CaffeError."""
    inputs = list(args.inputs)
    path = None
    if args.model is None:
        if not inputs:
            return usage_error(parser, "no model given: name a model folder or archive first, or --model and --weights")
        path = inputs.pop(0)
    files = deploy.find_model(path, deploy=args.model, weights=args.weights, labels=args.labels)
    if not inputs:
        raise CaffeError("no inputs: name images, folders, URLs or videos after the model")
    return files, inputs


def start_model_command(
    parser: ToolParser,
    argv: list[str],
    counts: Sequence[str],
    check: Callable[[Any], str | None] = lambda args: None,
) -> tuple[Any, deploy.ModelFiles, list[str]] | int:
    """The common start of ``caffe classify | detect | segment``: the flags (``counts`` at least 1, then
    ``check(args)``: a usage error message or None), the model's files and inputs, the device; an exit status
    instead when the command line is wrong."""
    args = parse_flags(parser, bare_gpu(argv))
    if isinstance(args, int):
        return args
    bad = check_counts(parser, args, counts)
    if bad is not None:
        return bad
    message = check(args)
    if message:
        return usage_error(parser, message)
    found = model_files(parser, args)
    if isinstance(found, int):
        return found
    select_device(args.gpu)
    return args, found[0], found[1]


def _settings(args: Any) -> tuple[deploy.Settings, bool, tuple[int, int] | None]:
    """The DeployModel settings of the flags, whether to oversample, and ``--images_dim``."""
    dims = (lambda v: (v[0], v[1]))(ints(args.images_dim, "--images_dim", 2)) if args.images_dim else None
    oversample = bool(args.oversample or not args.center_only)
    settings = pixel_settings(args, image_size=None if oversample else dims, resize_mode=args.resize_mode)
    return settings, oversample, dims


def _views(model: deploy.DeployModel, pixels: np.ndarray, oversample: tuple[int, int] | None) -> list[np.ndarray]:
    """The net inputs of one image: one, or the ten crops of the image squashed to ``oversample`` (pycaffe)."""
    prep = model.preprocessing
    if oversample is None:
        return [prep.to_input(prep.resize(pixels))]
    big = deploy.resize_image(pixels, oversample[0], oversample[1], "squash")
    return [prep.to_input(crop.astype(np.uint8)) for crop in ten_crops([big], model.input_shape[1:])]


def _predict(
    model: deploy.DeployModel, images: list[Image], oversample: tuple[int, int] | None, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, raw scores) of ``images``, N x C each; oversampled views are averaged."""
    views = [v for im in images for v in _views(model, im.pixels, oversample)]
    scores = np.concatenate(
        [model.scores(np.stack(views[i : i + batch_size])) for i in range(0, len(views), batch_size)]
    )
    probs = model.normalize(scores)
    per = len(views) // len(images)
    return probs.reshape(len(images), per, -1).mean(axis=1), scores.reshape(len(images), per, -1).mean(axis=1)


@command("classify", "classify images, folders, URLs or videos with a model folder, archive or files")
def classify(argv: list[str]) -> int:
    parser = _classify_parser()
    started = start_model_command(parser, argv, ("top_k", "every", "batch_size"))
    if isinstance(started, int):
        return started
    args, files, inputs = started
    settings, oversample, dims = _settings(args)
    model = deploy.DeployModel(files, settings)
    if model.labels and len(model.labels) != model.classes:
        raise CaffeError(
            f"labels file {files.labels}: {len(model.labels)} labels, but the net gives {model.classes} scores"
        )
    _, h, w = model.input_shape
    big = (dims or (max(h, 256), max(w, 256))) if oversample else None
    if big is not None and (big[0] < h or big[1] < w):
        raise CaffeError(f"--images_dim={big[0]},{big[1]}: smaller than the input's {h} x {w}, nothing to crop")
    log.info("Model: %s, weights %s; %s", files.deploy, files.weights, model.softmax_reason)
    log.info(
        "Preprocessing: %s; mean %s", model.preprocessing.describe(), model.mean.describe() if model.mean else "none"
    )
    reader = input_reader(args, model.input_shape[0])
    to_npy = args.output is not None and args.output.lower().endswith(".npy")
    text = io.StringIO() if args.output is not None else sys.stdout
    formatter = Formatter(args.format, model, args.top_k, text)
    predictions: list[np.ndarray] = []
    failed = done = 0
    pending: list[Image | Failure] = []  # results go out in input order

    def flush() -> None:
        nonlocal done, failed
        images = [item for item in pending if isinstance(item, Image)]
        probs, scores = _predict(model, images, big, args.batch_size) if images else (np.zeros(0), np.zeros(0))
        rows = iter(zip(probs, scores, strict=True))
        for item in pending:
            if isinstance(item, Failure):
                formatter.add(Result(item.name, error=item.message))
                failed += 1
            else:
                p, s = next(rows)
                formatter.add(Result(item.name, probs=p, scores=s))
                predictions.append(p[np.newaxis])
                done += 1
        pending.clear()

    count = 0
    for item in reader.read(inputs):
        if isinstance(item, Failure):
            log.error("%s", item.message)
        else:
            count += 1
        pending.append(item)
        if count >= args.batch_size:
            flush()
            count = 0
    flush()
    formatter.close()
    if args.output is not None:
        if to_npy:
            buf = io.BytesIO()
            np.save(buf, np.concatenate(predictions) if predictions else np.zeros((0, model.classes), np.float32))
            atomic_write(args.output, buf.getvalue())
        else:
            atomic_write(args.output, text.getvalue().encode("utf-8"))
        log.info("Wrote %s", args.output)
    log.info("Classified %d input(s)%s", done, f"; {failed} could not be read" if failed else "")
    return 1 if failed or not done else 0


# ---------------------------------------------------------------------------------------------- package


def _newest_snapshot(solver_path: str) -> Path:
    from caffe.protoio import read_solver_param

    solver = read_solver_param(solver_path)
    if not solver.snapshot_prefix:
        raise CaffeError(f"{solver_path}: no snapshot_prefix, so no snapshot to package; give --weights")
    prefix = Path(solver.snapshot_prefix)
    found = [q for q in prefix.parent.glob(f"{prefix.name}_iter_*.caffemodel*") if re.search(r"_iter_\d+\.", q.name)]
    if not found:
        raise CaffeError(f"{solver_path}: no snapshot {prefix}_iter_N.caffemodel yet; give --weights")
    return max(found, key=lambda q: int(re.search(r"_iter_(\d+)\.", q.name).group(1)))  # type: ignore[union-attr]


def _solver_net(solver_path: str) -> str | None:
    from caffe.protoio import read_solver_param

    solver = read_solver_param(solver_path)
    net = solver.net or solver.train_net
    return net if net and Path(net).is_file() else None


@command("package", "write a DIGITS-style model archive (.tar.gz/.zip) from a training's files")
def package(argv: list[str]) -> int:
    parser = ToolParser("caffe package", PACKAGE_USAGE)
    parser.add_argument("--output", help="The archive to write (.tar.gz, .tgz, .tar or .zip)")
    parser.add_argument("--deploy", help="The deploy prototxt")
    parser.add_argument("--weights", "--snapshot", dest="weights", help="The weights (default: newest snapshot)")
    parser.add_argument("--solver", help="The solver prototxt (also gives the newest snapshot and the net)")
    parser.add_argument("--train_val", help="The training net (default: the solver's net)")
    parser.add_argument("--original", help="The network as written (default: the training net)")
    parser.add_argument("--mean", help="The mean (.binaryproto or .npy)")
    parser.add_argument("--labels", help="The labels file")
    parser.add_argument("--name", help="The model's name in info.json (default: the archive's)")
    parser.add_argument("--format", choices=("tar.gz", "tar", "zip"), help="Archive format (default: by suffix)")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    if not args.output or not args.deploy:
        return usage_error(parser, "--output and --deploy are required")
    if not args.weights and not args.solver:
        return usage_error(parser, "give --weights (or --solver, to take its newest snapshot)")
    weights = args.weights or _newest_snapshot(args.solver)
    train_val = args.train_val or (_solver_net(args.solver) if args.solver else None)
    info = {"name": args.name} if args.name else None
    out = deploy.package_model(
        args.output,
        deploy=args.deploy,
        weights=weights,
        solver=args.solver,
        train_val=train_val,
        original=args.original,
        mean=args.mean,
        labels=args.labels,
        info=info,
        fmt=args.format,
    )
    log.info("Wrote %s: %s", out, ", ".join(sorted(deploy.check_archive(out))))
    return 0
