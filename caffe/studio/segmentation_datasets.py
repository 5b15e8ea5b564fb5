"""Semantic segmentation datasets, as DIGITS' "New Image Segmentation Dataset" makes them:
``python -m caffe.studio.segmentation_datasets <job_dir>``.

The job reads ``<job_dir>/params.json`` (:class:`SegmentationParams`; DIGITS' form field names) and writes:

* ``train_db/``, ``val_db/``: LMDBs of Datums keyed ``%08d_<image path>``, the feature images (C x H x W, colour
  planes B, G, R; raw, or PNG-encoded with ``encoding: png``), label 0;
* ``train_labels_db/``, ``val_labels_db/``: LMDBs of raw 1 x H x W uint8 Datums, each pixel its class (255: void,
  ignored), under the SAME keys in the SAME order as the image databases;
* ``mean.binaryproto`` and ``mean.jpg`` (the mean of the train images, :func:`caffe.studio.datasets.write_mean`);
* ``labels.txt`` (line ``i`` names class ``i``), ``palette.json`` (``[[R, G, B], ...]``, the colour of each class);
* ``train.txt``, ``val.txt``: ``<image path> <label path>`` a line, in record order;
* ``events.jsonl``: ``progress`` {stage, done, total}, then ``done`` {the result} or ``error`` {message}.

DIGITS' rules kept (``digits/extensions/data/imageSegmentation/``): each feature image (sub-folders included) is
paired with the label image of the same name but any image extension; ``colormap_method`` ``label``: label images
are single-channel, a palette PNG's indices or a grayscale image's values being the classes (all palette images
must agree on the colours of the classes they use), and the palette is the first one's; ``textfile``: label images
are RGB, and line ``i`` of ``colormap_text_file`` (``R G B``) is the colour of class ``i``; ``class_labels_file``:
line ``i`` names class ``i``; ``channel_conversion`` ``RGB``/``L``/``none`` (the feature images' mode; ``none``:
the first image's); without separate validation folders (``has_val_folder``) ``floor(n * folder_pct_val / 100)``
of the shuffled (``seed``) images are the validation set.
Added: ``resize_image_width``/``height`` squash each image (bilinear, as DIGITS' ``resize_image``) and its label
map (nearest neighbour, so classes stay classes); a colour of an RGB label image that the map lacks is an error
(DIGITS maps it to the nearest colour); pairs whose image and label sizes differ, and, without a resize, images
of another size than the first, are skipped with the reason (a batch needs one size).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from caffe.data.datum import image_to_raw_datum
from caffe.data.db import item_key
from caffe.deploy.images import MAX_PIXELS, image_array, resize_image
from caffe.deploy.segmentation import nearest_resize, palette
from caffe.errors import CaffeError, DataError
from caffe.limits import MiB, read_file
from caffe.protoio import atomic_write
from caffe.studio import datasets as ds

log = logging.getLogger("caffe")

TASK = "segmentation"
COLORMAP_METHODS = ("label", "textfile")  # DIGITS' values; "text" is taken for "textfile"
CHANNEL_CONVERSIONS = ("none", "RGB", "L")
ENCODINGS = ("png", "none")
SPLITS = ("train", "val")
IGNORE = 255  # VOC's void: stored as is, counted apart, never a class
MAX_LABEL_BYTES = 64 * MiB  # the largest label image read
MAX_TEXT_BYTES = 1 * MiB  # the largest colour map or class labels file
MAX_SIDE = 8192
MAX_SKIPPED_LISTED = 1000  # the result lists (and the log names) this many skipped files; skipped_count counts all

ProgressFn = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------
# parameters


@dataclass
class SegmentationParams:
    """The "New Image Segmentation Dataset" form, with DIGITS' field names and defaults."""

    dataset_name: str = ""
    feature_folder: str = ""
    label_folder: str = ""
    folder_pct_val: float = 10.0
    has_val_folder: bool = False
    validation_feature_folder: str = ""
    validation_label_folder: str = ""
    channel_conversion: str = "none"
    class_labels_file: str = ""
    colormap_method: str = "label"
    colormap_text_file: str = ""
    resize_image_width: int | None = None
    resize_image_height: int | None = None
    encoding: str = "png"
    seed: int = 0
    task: str = TASK
    data_roots: list[str] | None = None  # as DatasetParams.data_roots

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegmentationParams:
        """Typed and checked parameters; a bad value is a DataError naming its field."""
        kwargs = ds.form_fields(cls, values, whole=("resize_image_width", "resize_image_height"))
        if kwargs.get("colormap_method") == "text":
            kwargs["colormap_method"] = "textfile"
        params = cls(**kwargs)
        params.check()
        return params

    def check(self) -> None:
        bad = self._bad
        if not self.feature_folder:
            raise DataError("feature_folder: the folder of feature (input) images is required")
        if not self.label_folder:
            raise DataError("label_folder: the folder of label images is required")
        if self.has_val_folder:
            for name in ("validation_feature_folder", "validation_label_folder"):
                if not getattr(self, name):
                    raise DataError(f"{name}: required with separate validation images (has_val_folder)")
        if not 0 <= self.folder_pct_val < 100:
            raise bad("folder_pct_val", "must be a percentage from 0 to under 100")
        if self.channel_conversion not in CHANNEL_CONVERSIONS:
            raise bad("channel_conversion", f"must be one of {', '.join(CHANNEL_CONVERSIONS)}")
        if self.colormap_method not in COLORMAP_METHODS:
            raise bad("colormap_method", f"must be one of {', '.join(COLORMAP_METHODS)}")
        if self.colormap_method == "textfile" and not self.colormap_text_file:
            raise DataError("colormap_text_file: required when the colour map comes from a text file")
        if self.encoding not in ENCODINGS:
            raise bad("encoding", f"must be one of {', '.join(ENCODINGS)}")
        if self.seed < 0:
            raise bad("seed", "must be 0 or more")
        width, height = self.resize_image_width, self.resize_image_height
        if (width is None) != (height is None):
            missing = "resize_image_width" if width is None else "resize_image_height"
            raise DataError(f"{missing}: give both resize_image_width and resize_image_height, or neither")
        for name in ("resize_image_width", "resize_image_height"):
            if getattr(self, name) is not None and not 1 <= getattr(self, name) <= MAX_SIDE:
                raise bad(name, f"must be between 1 and {MAX_SIDE} pixels")

    def _bad(self, name: str, why: str) -> DataError:
        """A DataError naming field ``name``, why it is wrong and its value."""
        return DataError(f"{name}: {why} (got {getattr(self, name)!r})")

    def channels(self) -> int | None:
        """1 or 3 stored channels, None (``none``: the first image's)."""
        return {"RGB": 3, "L": 1}.get(self.channel_conversion)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# the colour map and class names


def _text_lines(path: Path, field_name: str, what: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a small UTF-8 file; DataError naming the field."""
    try:
        text = read_file(path, what, max_bytes=MAX_TEXT_BYTES, error=DataError).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{field_name}: {path} is not UTF-8 text (byte {e.start})") from None
    except CaffeError as e:
        raise DataError(f"{field_name}: {e}") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_colormap(path: Path, field_name: str = "colormap_text_file") -> np.ndarray:
    """The colour map file: line ``i`` (blank lines skipped) is ``R G B`` of class ``i``; K x 3 uint8."""
    colours: list[tuple[int, ...]] = []
    for lineno, line in _text_lines(path, field_name, "colour map"):
        try:
            rgb = tuple(int(v) for v in line.split())
        except ValueError:
            rgb = ()
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise DataError(f"{field_name}: {path.name}:{lineno}: expected 'R G B' (0-255), got {ds.quote(line)}")
        if rgb in colours:
            raise DataError(f"{field_name}: {path.name}:{lineno}: colour {rgb} is already class {colours.index(rgb)}")
        colours.append(rgb)
    if not colours:
        raise DataError(f"{field_name}: {path} holds no colour")
    if len(colours) > IGNORE:
        raise DataError(f"{field_name}: {path} has {len(colours)} colours; at most {IGNORE} classes (255 is void)")
    return np.array(colours, dtype=np.uint8)


def read_class_names(path: Path, field_name: str = "class_labels_file") -> list[str]:
    """The class names, one a line (blank lines skipped): line ``i`` names class ``i``."""
    names = [line for _, line in _text_lines(path, field_name, "class labels file")]
    if not names:
        raise DataError(f"{field_name}: {path} names no class")
    return names


# ---------------------------------------------------------------------------------------------
# which images


@dataclass
class Pair:
    image: str
    label: str


@dataclass
class SegmentationPlan:
    splits: dict[str, list[Pair]]
    colormap: np.ndarray | None  # K x 3 (textfile) or None
    class_names: list[str] | None
    skipped: list[dict[str, str]] = field(default_factory=list)


def _stem_index(folder: Path, labels: list[str]) -> dict[str, str]:
    """Label images by relative path without extension, and by bare stem (the first one sorted wins)."""
    index: dict[str, str] = {}
    for path in labels:
        relative = Path(path).relative_to(folder).with_suffix("")
        index.setdefault(str(relative), path)
    for path in labels:
        index.setdefault("/" + Path(path).stem, path)
    return index


def scan_split(
    params: SegmentationParams, split: str, roots: list[Path] | None, skipped: list[dict[str, str]]
) -> list[Pair]:
    """The feature images of ``split`` paired with their label images (sorted); the rest to ``skipped``."""
    feature_field, label_field = (
        ("feature_folder", "label_folder")
        if split == "train"
        else ("validation_feature_folder", "validation_label_folder")
    )
    features = ds.check_server_path(getattr(params, feature_field), feature_field, roots)
    labels = ds.check_server_path(getattr(params, label_field), label_field, roots)
    if labels.resolve() == features.resolve():
        raise DataError(f"{label_field}: the same folder as the {feature_field}; the label images need their own")
    images = ds.scan_class_folder(features, roots, skipped)
    index = _stem_index(labels, ds.scan_class_folder(labels, roots, skipped))
    pairs, used = [], set()
    for image in images:
        relative = str(Path(image).relative_to(features).with_suffix(""))
        label = index.get(relative) or index.get("/" + Path(image).stem)
        if label is None:
            skipped.append({"path": image, "reason": f"no label image named {Path(image).stem}.* in {labels}"})
        else:
            pairs.append(Pair(image, label))
            used.add(label)
    skipped.extend(
        {"path": p, "reason": "a label image without a feature image"}
        for p in dict.fromkeys(index.values())
        if p not in used
    )
    if not pairs:
        raise DataError(
            f"{feature_field}: no image in {features} has a label image of the same name in {labels}"
            f" ({len(images)} image(s))"
        )
    return pairs


def scan(
    params: SegmentationParams, extra_roots: Iterable[Path] = ()
) -> tuple[dict[str, list[Pair]], list[dict[str, str]]]:
    """The pairs of each split (every folder checked against the data roots; no image read) and the files left
    out with why."""
    roots = _roots(params, extra_roots)
    skipped: list[dict[str, str]] = []
    splits = {"train": scan_split(params, "train", roots, skipped)}
    splits["val"] = scan_split(params, "val", roots, skipped) if params.has_val_folder else []
    return splits, skipped


def _roots(params: SegmentationParams, extra_roots: Iterable[Path]) -> list[Path] | None:
    if params.data_roots is None:
        return None
    return ds.allowed_roots(params.data_roots) + [Path(r).resolve() for r in extra_roots]


def read_text_files(
    params: SegmentationParams, extra_roots: Iterable[Path] = ()
) -> tuple[np.ndarray | None, list[str] | None]:
    """The colour map (``textfile`` method) and the class names, when given; checked against the data roots."""
    roots = _roots(params, extra_roots)
    colormap = names = None
    if params.colormap_method == "textfile":
        path = ds.check_server_path(params.colormap_text_file, "colormap_text_file", roots, "file")
        colormap = read_colormap(path)
    if params.class_labels_file:
        names = read_class_names(ds.check_server_path(params.class_labels_file, "class_labels_file", roots, "file"))
    if colormap is not None and names is not None and len(names) != len(colormap):
        raise DataError(f"class_labels_file: names {len(names)} classes, the colour map colours {len(colormap)}")
    return colormap, names


def make_plan(params: SegmentationParams, extra_roots: Iterable[Path] = ()) -> SegmentationPlan:
    """Pair the images, read the text files and split off the validation set (seeded, DIGITS' floor)."""
    splits, skipped = scan(params, extra_roots)
    colormap, names = read_text_files(params, extra_roots)
    rng = np.random.default_rng(params.seed)
    train = [splits["train"][i] for i in rng.permutation(len(splits["train"]))]
    if not params.has_val_folder:
        n_val = math.floor(len(train) * params.folder_pct_val / 100)
        splits["val"], train = train[:n_val], train[n_val:]
    splits["train"] = train
    return SegmentationPlan(splits, colormap, names, skipped)


# ---------------------------------------------------------------------------------------------
# label images


def open_label(path: str) -> Image.Image:
    """A label image, its mode untouched (a palette stays a palette), read bounded; DataError naming it."""
    data = read_file(path, "label image", max_bytes=MAX_LABEL_BYTES, error=DataError)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise DataError(f"{path}: {im.size[0]} x {im.size[1]} pixels, more than the {MAX_PIXELS} accepted")
            im.load()
            return im.copy()
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode the label image ({e})") from None


def palette_colours(im: Image.Image) -> np.ndarray:
    """The 256 x 3 palette of a ``P`` image (missing entries black)."""
    flat = (im.getpalette() or []) + [0] * 768
    return np.array(flat[:768], dtype=np.uint8).reshape(256, 3)


class MissingColourError(DataError):
    """A label image colour that the colour map lacks: the map is wrong, so the job fails (no pair is skipped)."""


def classes_of_colours(rgb: np.ndarray, colormap: np.ndarray, name: str) -> np.ndarray:
    """An H x W x 3 RGB label image as class indices through ``colormap``; DataError naming a missing colour."""
    codes = rgb.astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)
    keys = colormap.astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)
    order = np.argsort(keys)
    at = np.minimum(np.searchsorted(keys[order], codes), len(keys) - 1)
    found = keys[order][at] == codes
    if not found.all():
        y, x = np.argwhere(~found)[0]
        colour = tuple(int(v) for v in rgb[y, x])
        raise MissingColourError(
            f"{name}: colour {colour} (at x={x}, y={y}; {int((~found).sum())} pixel(s)) is not in the colour map"
        )
    return order[at].astype(np.uint8)


def label_map(path: str, colormap: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A label image as H x W uint8 classes, and its palette (a ``P`` image's, else None).

    Raises DataError for a label image of the wrong kind, or a colour not in the map (both name the file)."""
    im = open_label(path)
    if colormap is not None:
        if im.mode not in ("RGB", "RGBA", "P"):
            raise DataError(f"{path}: a label image of mode {im.mode}; the colour map needs RGB label images")
        return classes_of_colours(np.asarray(im.convert("RGB")), colormap, path), None
    if im.mode == "P":
        return np.asarray(im, dtype=np.uint8), palette_colours(im)
    if im.mode in ("L", "1"):
        return np.asarray(im, dtype=np.uint8), None
    raise DataError(
        f"{path}: a label image of mode {im.mode}; with colormap_method 'label' label images are 8-bit single-channel"
        " (palette or grayscale); give RGB label images a colour map file (colormap_method 'textfile')"
    )


# ---------------------------------------------------------------------------------------------
# records


@dataclass
class Record:
    image: bytes | None = None
    label: bytes | None = None
    error: str = ""
    pixels: Counter = field(default_factory=Counter)  # class -> pixels (255 included)
    palette: np.ndarray | None = None


class RecordMaker:
    """A pair -> serialized image and label Datums (runs on worker threads). ``size`` is (height, width) and
    ``channels`` 1 or 3: what every record must have."""

    def __init__(self, params: SegmentationParams, colormap: np.ndarray | None, size: tuple[int, int], channels: int):
        self.p, self.colormap, self.size, self.channels = params, colormap, size, channels

    def __call__(self, pair: Pair) -> Record:
        try:
            pixels = image_array(ds.load_image(pair.image), self.channels)
            classes, colours = label_map(pair.label, self.colormap)
        except MissingColourError:
            raise
        except DataError as e:
            return Record(error=str(e))
        problem = self._size_problem(pixels.shape[:2], classes.shape)
        if problem:
            return Record(error=problem)
        if self.p.resize_image_width is not None:
            pixels = resize_image(pixels, *self.size, "squash")
            classes = nearest_resize(classes, *self.size)
        values, counts = np.unique(classes, return_counts=True)
        return Record(
            ds.make_datum(pixels, 0, self.p.encoding, pair.image),
            image_to_raw_datum(np.ascontiguousarray(classes), 0, pair.label).SerializeToString(),
            pixels=Counter(dict(zip(values.tolist(), counts.tolist(), strict=True))),
            palette=colours,
        )

    def _size_problem(self, image: tuple[int, ...], label: tuple[int, ...]) -> str:
        if image != label:
            return f"the image is {image[1]} x {image[0]} pixels, its label image {label[1]} x {label[0]}"
        if self.p.resize_image_width is None and image != self.size:
            return (
                f"{image[1]} x {image[0]} pixels, not the dataset's {self.size[1]} x {self.size[0]} (the first"
                " image's); give resize_image_width and resize_image_height to squash every image to one size"
            )
        return ""


@dataclass
class SplitResult:
    stored: list[Pair] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    pixels: Counter = field(default_factory=Counter)


class PaletteCheck:
    """The palette of the first palette label image; later ones must give the classes they use its colours."""

    def __init__(self) -> None:
        self.colours: np.ndarray | None = None

    def problem(self, record: Record) -> str:
        if record.palette is None:
            return ""
        if self.colours is None:
            self.colours = record.palette
            return ""
        used = [c for c in record.pixels if c != IGNORE]
        differ = [c for c in used if not np.array_equal(self.colours[c], record.palette[c])]
        if differ:
            c = differ[0]
            return (
                f"its palette colours class {c} {tuple(record.palette[c].tolist())}, the first label image's"
                f" {tuple(self.colours[c].tolist())} (all label images must share one palette)"
            )
        return ""


def write_split(
    pairs: list[Pair], job_dir: Path, split: str, maker: RecordMaker, check: PaletteCheck, progress: ProgressFn
) -> SplitResult:
    """A split's image and label LMDBs (same keys, same order), written atomically."""
    from caffe.util.database import new_database
    from caffe.util.threads import default_threads, ordered_map

    out = SplitResult()
    every = max(1, len(pairs) // 100)
    progress(split, 0, len(pairs))
    with (
        new_database(job_dir / f"{split}_db", "lmdb") as images,
        new_database(job_dir / f"{split}_labels_db", "lmdb") as labels,
    ):
        txns = [images.transaction(), labels.transaction()]
        records = ordered_map(maker, pairs, min(4, default_threads()))
        for done, (pair, record) in enumerate(zip(pairs, records, strict=True), start=1):
            problem = check.problem(record)
            error = record.error or (f"{pair.label}: {problem}" if problem else "")
            if error:
                out.skipped.append({"path": pair.image, "reason": error.removeprefix(f"{pair.image}: ")})
            else:
                key = item_key(len(out.stored), pair.image)
                txns[0].put(key, record.image)
                txns[1].put(key, record.label)
                out.stored.append(pair)
                out.pixels.update(record.pixels)
                if len(out.stored) % ds.COMMIT_EVERY == 0:
                    for txn in txns:
                        txn.commit()
            if done % every == 0 or done == len(pairs):
                progress(split, done, len(pairs))
        for txn in txns:
            txn.commit()
    log.info("%s: %d image/label pairs written to %s_db and %s_labels_db", split, len(out.stored), split, split)
    return out


def first_shape(pairs: list[Pair], params: SegmentationParams) -> tuple[tuple[int, int], int]:
    """The stored (height, width) and channels: the resize, else the first readable image's size; the
    channel conversion, else the first image's channels."""
    size = channels = None
    if params.resize_image_width is not None:
        size = (params.resize_image_height, params.resize_image_width)
    channels = params.channels()
    for pair in pairs:
        if size is not None and channels is not None:
            break
        try:
            im = ds.load_image(pair.image)
        except DataError:
            continue
        size = size or (im.size[1], im.size[0])
        channels = channels or (1 if im.mode == "L" else 3)
    if size is None or channels is None:
        raise DataError("feature_folder: none of the training images could be read")
    return size, channels


# ---------------------------------------------------------------------------------------------
# the dataset


def class_names(plan: SegmentationPlan, found: Iterable[int]) -> list[str]:
    """Class ``i``'s name: the class labels file's, else ``class i`` for every class of the colour map, or up to
    the largest class found (255 excluded). DataError when the file names fewer classes than are found."""
    largest = max((c for c in found if c != IGNORE), default=0)
    if plan.class_names is not None:
        if largest >= len(plan.class_names):
            raise DataError(
                f"class_labels_file: names {len(plan.class_names)} classes, but the label images hold class {largest}"
            )
        return plan.class_names
    n = len(plan.colormap) if plan.colormap is not None else largest + 1
    return [f"class {i}" for i in range(n)]


def class_palette(plan: SegmentationPlan, check: PaletteCheck, classes: int) -> list[list[int]]:
    """Each class's RGB colour: the colour map's, the label images' palette, else :func:`caffe.deploy.palette`."""
    colours = plan.colormap if plan.colormap is not None else check.colours
    if colours is None:
        colours = palette(classes)
    return [[int(v) for v in colours[i]] if i < len(colours) else palette(i + 1)[i].tolist() for i in range(classes)]


def create_segmentation_dataset(
    job_dir: str | os.PathLike, params: SegmentationParams, progress: ProgressFn | None = None
) -> dict:
    """Make the dataset's files in ``job_dir``; returns the result (see the module)."""
    job_dir = Path(job_dir)
    progress = progress or (lambda stage, done, total: None)
    start = time.time()
    plan = make_plan(params, [job_dir.resolve()])
    log.info("Found %d image/label pairs", sum(map(len, plan.splits.values())))
    size, channels = first_shape(plan.splits["train"], params)
    maker, check = RecordMaker(params, plan.colormap, size, channels), PaletteCheck()
    results = {}
    for split in SPLITS:
        results[split] = SplitResult()
        if plan.splits[split]:
            results[split] = write_split(plan.splits[split], job_dir, split, maker, check, progress)
            if not results[split].stored:
                raise DataError(f"none of the {len(plan.splits[split])} {split} pairs could be stored (see the log)")
        ds.write_lines(job_dir / f"{split}.txt", (f"{p.image} {p.label}" for p in results[split].stored))
    found = set().union(*(r.pixels for r in results.values()))
    labels = class_names(plan, found)
    ds.write_lines(job_dir / "labels.txt", labels)
    atomic_write(job_dir / "palette.json", json.dumps(class_palette(plan, check, len(labels))).encode("utf-8"))
    progress("mean", 0, 1)
    ds.write_mean(job_dir / "train_db", job_dir)
    progress("mean", 1, 1)
    skipped = plan.skipped + [s for r in results.values() for s in r.skipped]
    for item in skipped[:MAX_SKIPPED_LISTED]:
        log.warning("Skipped %s: %s", item["path"], item["reason"])
    out = {
        "task": TASK,
        "labels": labels,
        "classes": len(labels),
        "counts": {s: len(r.stored) for s, r in results.items()},
        "pixels": {s: {name: r.pixels.get(i, 0) for i, name in enumerate(labels)} for s, r in results.items()},
        "ignored_pixels": {s: r.pixels.get(IGNORE, 0) for s, r in results.items()},
        "image_dims": [size[0], size[1], channels],
        "encoding": params.encoding,
        "mean_file": "mean.binaryproto",
        "palette_file": "palette.json",
        "skipped": skipped[:MAX_SKIPPED_LISTED],
        "skipped_count": len(skipped),
        "seconds": round(time.time() - start, 3),
    }
    log.info("Dataset done: %s (%.1f s)", ", ".join(f"{n} {s}" for s, n in out["counts"].items()), out["seconds"])
    return out


def read_palette(path: Path) -> np.ndarray:
    """A dataset's ``palette.json`` as K x 3 uint8 RGB colours; DataError naming the file."""
    try:
        colours = np.array(json.loads(read_file(path, "palette", max_bytes=MAX_TEXT_BYTES, error=DataError)))
    except ValueError as e:
        raise DataError(f"{path}: not a JSON palette ({e})") from None
    if colours.ndim != 2 or colours.shape[1:] != (3,) or not np.isin(colours, np.arange(256)).all():
        raise DataError(f"{path}: not a list of [R, G, B] colours (0-255)")
    return colours.astype(np.uint8)


def overlay_classes(rgb: np.ndarray, classes: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """H x W x 3 RGB pixels with each pixel's class colour (``colours[class]``) blended in at ``alpha``; void
    (255) pixels and classes without a colour are left as they are."""
    coloured = classes < min(len(colours), IGNORE)
    out = rgb.copy()
    tint = colours[classes[coloured]].astype(np.float32)
    out[coloured] = np.rint((1 - alpha) * rgb[coloured].astype(np.float32) + alpha * tint).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# the job process


def run_job(job_dir: str | os.PathLike) -> int:
    """Run the segmentation dataset job of ``job_dir`` (its ``params.json``); 0 on success, 1 on bad input."""
    return ds.run_job(job_dir, SegmentationParams.from_dict, create_segmentation_dataset)


def main(argv: list[str] | None = None) -> int:
    return ds.main(argv, run_job, "caffe.studio.segmentation_datasets")


if __name__ == "__main__":
    sys.exit(main())
