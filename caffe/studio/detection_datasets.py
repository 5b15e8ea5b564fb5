"""Object detection datasets, as DIGITS' "New Object Detection Dataset" makes them, stored for SSD or (``detector:
detectnet``) for DIGITS' DetectNet: ``python -m caffe.studio.detection_datasets <job_dir>``.

For DetectNet the splits are DIGITS' ``train_db/features`` and ``train_db/labels`` (same for val): the images and
their box tables, keyed alike (:class:`DetectNetRecordMaker`); the classes are DIGITS' KITTI numbers unless
``custom_classes`` name them; small validation objects become class 0; ``mean.binaryproto`` and ``mean.jpg`` are
written when the images have one size. What follows describes the SSD form, which is the default.

The job reads ``<job_dir>/params.json`` (:class:`DetectionParams`; DIGITS' form field names) and writes:

* ``train_db/``, ``val_db/``: LMDBs of AnnotatedDatums (``type: BBOX``) keyed ``%08d_<image path>``, each an
  image encoded as PNG or JPEG (as ``create_annoset --encoded`` stores it) and its boxes normalized to [0, 1]
  of the stored picture, grouped by class (:func:`caffe.data.annotation.annotated_datum`);
* ``labelmap.prototxt`` (the SSD fork's LabelMap: item 0 is the background, then each class with its label)
  and ``labels.txt`` (line ``i`` names label ``i``; line 0 the background);
* ``train.txt``, ``val.txt``: the image paths, one a line, in record order;
* ``events.jsonl``: ``progress`` {stage, done, total}, then ``done`` {the result} or ``error`` {message}.

Images are found (sub-folders included) in ``train_image_folder`` [``val_image_folder``]; each needs a label
file of the same stem in the label folder (the same relative path, else the file name only), or, without a
label folder, beside the image. ``label_format`` ``auto`` takes each file by its extension: ``.xml`` Pascal
VOC, ``.json`` the SSD fork's per-image JSON, ``.txt`` DIGITS' KITTI lines (``type truncated occluded alpha
left top right bottom h w l x y z rotation_y``; only the type and the box are used). Without a validation
folder, ``folder_pct_val`` percent of the training images (seeded by ``seed``) become the validation set.

DIGITS' rules kept (``digits/extensions/data/objectDetection/``): class names are matched lower-cased;
``custom_classes`` is a comma-separated list of names, class ``i`` being the ``i``-th (from 0), and class 0 is
"don't care" - for SSD the background, whose objects are not stored (nor are those of names the list does not
name; DIGITS maps them to 0 too); an image without a label file is skipped; ``val_min_box_size``: validation
objects narrower or lower than this many pixels (in the label file) are don't-care in DIGITS - here they are
stored marked ``difficult``, which the fork's evaluation ignores with ``evaluate_difficult_gt: false``;
``padding_image_width``/``height`` paste each image at the top left of a black canvas of that size (an image
larger than the canvas is skipped); ``resize_image_width``/``height`` then squash it to that size;
``channel_conversion`` ``RGB`` (default) or ``L`` stores 3 or 1 channels (DIGITS' ``none``, the file's own mode, is
refused).
Changed for SSD: without ``custom_classes`` the classes are the names found in the label files (sorted, after
the background ``dontcare``), not DIGITS' fixed KITTI table, since SSD needs consecutive labels.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caffe.data.annotation import (
    Box,
    NamedBox,
    annotated_datum,
    read_json_objects,
    read_kitti_objects,
    read_kitti_rows,
    read_voc_objects,
)
from caffe.data.db import item_key
from caffe.data.detectnet import (
    CLASS,
    KITTI_CLASS_NAMES,
    KITTI_CLASSES,
    detectnet_record,
    kitti_box_rows,
    plain_box_rows,
    record_key,
)
from caffe.deploy.images import image_array, pad_top_left, resize_image
from caffe.errors import CaffeError, DataError
from caffe.limits import MiB
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import write_text
from caffe.studio import datasets as ds

log = logging.getLogger("caffe")

TASK = "object-detection"
LABEL_FORMATS = ("auto", "voc", "kitti", "json")
FORMAT_OF_EXTENSION = {".xml": "voc", ".json": "json", ".txt": "kitti"}
ENCODINGS = ("png", "jpg")
DETECTORS = ("ssd", "detectnet")
CHANNEL_CONVERSIONS = ("RGB", "L")  # DIGITS' choices, less its "none" (the file's own mode, RGBA included)
SPLITS = ("train", "val")
BACKGROUND = "dontcare"  # DIGITS' class 0
MAX_LABEL_BYTES = 16 * MiB  # the largest label file read
MAX_SIDE = 8192  # the largest padding or resize side, as the classification form

ProgressFn = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------
# parameters


@dataclass
class DetectionParams:
    """The "New Object Detection Dataset" form, with DIGITS' field names."""

    dataset_name: str = ""
    train_image_folder: str = ""
    train_label_folder: str = ""  # "": the label files lie beside the images
    val_image_folder: str = ""
    val_label_folder: str = ""
    folder_pct_val: float = 25.0  # without a validation folder
    label_format: str = "auto"
    custom_classes: str = ""
    resize_image_width: int | None = None
    resize_image_height: int | None = None
    padding_image_width: int | None = None
    padding_image_height: int | None = None
    val_min_box_size: int = 25
    encoding: str = "png"
    detector: str = "ssd"  # what the records are stored for: see the module
    channel_conversion: str = "RGB"  # or L: grayscale, one channel
    seed: int = 0
    task: str = TASK
    data_roots: list[str] | None = None  # as DatasetParams.data_roots

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectionParams:
        """Typed and checked parameters; a bad value is a DataError naming its field."""
        params = cls(**ds.form_fields(cls, values, whole=_SIZE_FIELDS))
        params.check()
        return params

    def check(self) -> None:
        def bad(name: str, why: str) -> DataError:
            return DataError(f"{name}: {why} (got {getattr(self, name)!r})")

        if not self.train_image_folder:
            raise DataError("train_image_folder: the folder of training images is required")
        if self.val_label_folder and not self.val_image_folder:
            raise DataError("val_image_folder: required when a validation label folder is given")
        if self.label_format not in LABEL_FORMATS:
            raise bad("label_format", f"must be one of {', '.join(LABEL_FORMATS)}")
        if self.encoding not in ENCODINGS:
            raise bad("encoding", f"must be one of {', '.join(ENCODINGS)}")
        if self.detector not in DETECTORS:
            raise bad("detector", f"must be one of {', '.join(DETECTORS)}")
        if self.channel_conversion not in CHANNEL_CONVERSIONS:
            raise bad("channel_conversion", "must be RGB or L (grayscale); the studio stores no other mode")
        if not 0 <= self.folder_pct_val < 100:
            raise bad("folder_pct_val", "must be a percentage from 0 to under 100")
        if self.seed < 0:
            raise bad("seed", "must be 0 or more")
        if self.val_min_box_size < 0:
            raise bad("val_min_box_size", "must be 0 (no minimum) or more pixels")
        for kind in ("resize", "padding"):
            self._check_size(kind, bad)
        self.class_names()

    def _check_size(self, kind: str, bad: Callable[[str, str], DataError]) -> None:
        width, height = f"{kind}_image_width", f"{kind}_image_height"
        if (getattr(self, width) is None) != (getattr(self, height) is None):
            missing = width if getattr(self, width) is None else height
            raise DataError(f"{missing}: give both {width} and {height}, or neither")
        for name in (width, height):
            if getattr(self, name) is not None and not 1 <= getattr(self, name) <= MAX_SIDE:
                raise bad(name, f"must be between 1 and {MAX_SIDE} pixels")

    def class_names(self) -> list[str] | None:
        """``custom_classes`` as class names (label ``i`` is the ``i``-th; 0 the background), or None."""
        if not self.custom_classes.strip():
            return None
        names = [n.strip().lower() for n in self.custom_classes.split(",")]
        if "" in names:
            raise DataError(f"custom_classes: an empty class name in {ds.quote(self.custom_classes)}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise DataError(f"custom_classes: {', '.join(map(repr, repeated))} listed more than once")
        if len(names) < 2:
            raise DataError("custom_classes: name the background (class 0, e.g. dontcare) and at least one class")
        return names

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SIZE_FIELDS = ("resize_image_width", "resize_image_height", "padding_image_width", "padding_image_height")


# ---------------------------------------------------------------------------------------------
# which images, which label files


@dataclass
class Sample:
    """An image and its label file (``fmt``: voc, json or kitti); after reading, its objects and the
    (width, height) their pixel corners refer to (None: the image's own size)."""

    image: str
    label_file: str
    fmt: str
    objects: list[NamedBox] = field(default_factory=list)
    size: tuple[int, int] | None = None


@dataclass
class DetectionPlan:
    labels: list[str]
    splits: dict[str, list[Sample]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)  # class name -> label (others: 0)


def _extensions(label_format: str) -> list[str]:
    if label_format == "auto":
        return list(FORMAT_OF_EXTENSION)
    return [ext for ext, fmt in FORMAT_OF_EXTENSION.items() if fmt == label_format]


def find_label_file(image: Path, image_folder: Path, label_folder: Path, label_format: str) -> tuple[Path, str] | None:
    """The label file of ``image`` (same relative path, else same name, with a label extension) and its format."""
    relative = image.relative_to(image_folder).with_suffix("")
    for base in dict.fromkeys((label_folder / relative, label_folder / relative.name)):
        for ext in _extensions(label_format):
            candidate = base.parent / (base.name + ext)
            if _is_file(candidate):
                return candidate, FORMAT_OF_EXTENSION[ext]
    return None


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the file system refuses (too long)."""
    try:
        return path.is_file()
    except OSError:
        return False


def scan_split(
    params: DetectionParams, split: str, roots: list[Path] | None, skipped: list[dict[str, str]]
) -> list[Sample]:
    """The images of ``split``'s folder paired with their label files (sorted); the rest to ``skipped``."""
    image_folder = ds.check_server_path(getattr(params, f"{split}_image_folder"), f"{split}_image_folder", roots)
    label_text = getattr(params, f"{split}_label_folder")
    label_folder = ds.check_server_path(label_text, f"{split}_label_folder", roots) if label_text else image_folder
    found: list[dict[str, str]] = []
    images = ds.scan_class_folder(image_folder, roots, found)
    skipped.extend(s for s in found if Path(s["path"]).suffix.lower() not in FORMAT_OF_EXTENSION)
    samples = []
    for image in images:
        label = find_label_file(Path(image), image_folder, label_folder, params.label_format)
        if label is None:
            exts = "/".join(_extensions(params.label_format))
            reason = f"no label file ({Path(image).stem}{{{exts}}}) in {label_folder}"
            skipped.append({"path": image, "reason": reason})
        elif not ds.inside_roots(label[0], roots):
            skipped.append({"path": str(label[0]), "reason": "a link to a file outside the allowed folders"})
        else:
            samples.append(Sample(image, str(label[0]), label[1]))
    if not samples:
        raise DataError(
            f"{split}_image_folder: no image in {image_folder} has a label file"
            f" ({len(images)} image(s), label files looked for in {label_folder})"
        )
    return samples


def scan(
    params: DetectionParams, extra_roots: Iterable[Path] = ()
) -> tuple[dict[str, list[Sample]], list[dict[str, str]]]:
    """The samples of each split before any label file is read (every check of the form, cheaply), and the
    files left out with why."""
    roots = None if params.data_roots is None else ds.allowed_roots(params.data_roots)
    if roots is not None:
        roots += [Path(r).resolve() for r in extra_roots]
    skipped: list[dict[str, str]] = []
    splits = {"train": scan_split(params, "train", roots, skipped)}
    splits["val"] = scan_split(params, "val", roots, skipped) if params.val_image_folder else []
    return splits, skipped


def read_objects(sample: Sample) -> None:
    """Read ``sample``'s label file into its objects (names lower-cased, as DIGITS); DataError naming the file."""
    from caffe.tools.create_annoset import original_size

    if sample.fmt == "voc":
        objects, width, height = read_voc_objects(sample.label_file, MAX_LABEL_BYTES)
        sample.size = (width, height)
    elif sample.fmt == "json":
        objects, height, width = read_json_objects(sample.label_file, original_size(sample.image), MAX_LABEL_BYTES)
        sample.size = (width, height)
    else:
        objects = read_kitti_objects(sample.label_file, MAX_LABEL_BYTES)
    sample.objects = [NamedBox(o.name.lower(), o.xmin, o.ymin, o.xmax, o.ymax, o.difficult) for o in objects]


def _read_all(samples: list[Sample], skipped: list[dict[str, str]], progress: ProgressFn) -> list[Sample]:
    """The samples whose label files read; the others to ``skipped`` (the file and why)."""
    kept = []
    progress("labels", 0, len(samples))
    for done, sample in enumerate(samples, start=1):
        try:
            read_objects(sample)
            kept.append(sample)
        except CaffeError as e:
            skipped.append({"path": sample.label_file, "reason": str(e).removeprefix(f"{sample.label_file}: ")})
        if done % 100 == 0 or done == len(samples):
            progress("labels", done, len(samples))
    return kept


def class_labels(params: DetectionParams, samples: Iterable[Sample]) -> tuple[list[str], list[str]]:
    """The class names (index = label, 0 the background) and warnings about them."""
    custom = params.class_names()
    if custom is None and params.detector == "detectnet":
        return list(KITTI_CLASS_NAMES), []
    if custom is None:
        found = sorted({o.name for s in samples for o in s.objects} - {BACKGROUND})
        return [BACKGROUND, *found], []
    warnings = []
    if custom[0] not in (BACKGROUND, "background"):
        warnings.append(
            f"custom_classes: {custom[0]!r} is class 0, the background: its objects are not stored"
            " (DIGITS' rule; begin the list with dontcare to keep them)"
        )
    return custom, warnings


def label_index(params: DetectionParams, labels: list[str]) -> dict[str, int]:
    """Class name -> label: the names' positions, or for DetectNet without custom classes DIGITS' KITTI numbers
    (with their other names, e.g. ``person`` for ``pedestrian``); names not in it are 0, don't care."""
    if params.detector == "detectnet" and params.class_names() is None:
        return dict(KITTI_CLASSES)
    return {name: i for i, name in enumerate(labels)}


def _check_objects(index: dict[str, int], samples: list[Sample], custom: str) -> None:
    """DataError when no object of the label files is of a class (all would be left out)."""
    found = {o.name for s in samples for o in s.objects}
    if any(index.get(name, 0) for name in found):
        return
    names = ", ".join(sorted(found)[:20]) or "none"
    if custom.strip():
        raise DataError(f"custom_classes: no object in the label files is of these classes (found: {names})")
    raise DataError(f"the label files name no object class besides {BACKGROUND} (found: {names})")


def make_plan(
    params: DetectionParams, extra_roots: Iterable[Path] = (), progress: ProgressFn | None = None
) -> DetectionPlan:
    """Scan, read the label files, name the classes and split off the validation set (seeded)."""
    progress = progress or (lambda stage, done, total: None)
    splits, skipped = scan(params, extra_roots)
    splits = {s: _read_all(samples, skipped, progress) for s, samples in splits.items()}
    if not splits["train"]:
        raise DataError("none of the training label files could be read (see the skipped files)")
    rng = np.random.default_rng(params.seed)
    train = [splits["train"][i] for i in rng.permutation(len(splits["train"]))]
    if not params.val_image_folder and params.folder_pct_val > 0:
        n_train, n_val, _ = ds.split_sizes(len(train), params.folder_pct_val, 0)
        train, splits["val"] = train[:n_train], train[n_train : n_train + n_val]
    if not train:
        raise DataError("folder_pct_val: no training images would be left; lower the percentage")
    splits["train"] = train
    samples = [s for split in splits.values() for s in split]
    labels, warnings = class_labels(params, samples)
    index = label_index(params, labels)
    _check_objects(index, samples, params.custom_classes)
    return DetectionPlan(labels, splits, skipped, warnings, index)


# ---------------------------------------------------------------------------------------------
# records


@dataclass
class Record:
    payloads: tuple[bytes, ...] | None  # one per database
    error: str = ""
    boxes: Counter = field(default_factory=Counter)  # label -> boxes stored
    ignored: int = 0  # objects of class 0 or of names not among the classes
    difficult: int = 0
    shape: tuple[int, int] = (0, 0)  # the stored picture's height, width


class RecordMaker:
    """A sample -> a serialized AnnotatedDatum (runs on worker threads)."""

    databases = ("",)  # the split's database is ``<split>_db`` itself

    def __init__(self, params: DetectionParams, index: dict[str, int], split: str) -> None:
        self.p, self.index = params, index
        self.min_box = params.val_min_box_size if split == "val" else 0

    def key(self, n: int, image: str) -> bytes:
        return item_key(n, image)

    def _pixels(self, sample: Sample) -> np.ndarray:
        """The sample's image as H x W x C uint8, RGB or (``channel_conversion: L``) grayscale."""
        channels = channels_of(self.p)
        pixels = image_array(ds.load_image(sample.image), channels)
        return pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels

    def __call__(self, sample: Sample) -> Record:
        try:
            pixels = self._pixels(sample)
            own = pixels.shape[1], pixels.shape[0]
            pixels = self._pad(pixels)
        except DataError as e:
            return Record(None, str(e).removeprefix(f"{sample.image}: "))
        record = Record(None)
        boxes = self._boxes(sample, record, own, (pixels.shape[1], pixels.shape[0]))
        if self.p.resize_image_width is not None:
            pixels = resize_image(pixels, self.p.resize_image_height, self.p.resize_image_width, "squash")
        bgr = np.ascontiguousarray(pixels[:, :, ::-1])  # RGB -> BGR; grayscale unchanged
        datum = annotated_datum(bgr, boxes, encoding=self.p.encoding, name=sample.image)
        record.payloads = (datum.SerializeToString(),)
        record.shape = bgr.shape[:2]
        return record

    def _pad(self, pixels: np.ndarray) -> np.ndarray:
        """DIGITS' padding: the image at the top left of a black canvas of the padding size."""
        if self.p.padding_image_width is None:
            return pixels
        return pad_top_left(pixels, self.p.padding_image_width, self.p.padding_image_height)

    def _boxes(self, sample: Sample, record: Record, own: tuple[int, int], canvas: tuple[int, int]) -> list[Box]:
        """The sample's objects as boxes normalized to the (padded) picture of ``canvas`` (width, height), the
        image being ``own`` (width, height); don't-care objects are counted, not kept."""
        ref = sample.size or own
        sx, sy = (own[k] / ref[k] / canvas[k] for k in (0, 1))  # label pixels -> image pixels -> [0, 1]
        boxes = []
        for o in sample.objects:
            label = self.index.get(o.name, 0)
            if label == 0:
                record.ignored += 1
                continue
            small = self.min_box and (o.xmax - o.xmin < self.min_box or o.ymax - o.ymin < self.min_box)
            box = Box(label, o.xmin * sx, o.ymin * sy, o.xmax * sx, o.ymax * sy, o.difficult or bool(small))
            boxes.append(box)
            record.boxes[label] += 1
            record.difficult += box.difficult
        return boxes


class DetectNetRecordMaker(RecordMaker):
    """A sample -> its two records in DIGITS' DetectNet form (:func:`caffe.data.detectnet.detectnet_record`): the
    image, and its objects as a box table of ``max_boxes`` rows in pixels of the stored picture. KITTI objects keep
    all their fields and DIGITS' order (farthest first); don't-care objects are kept as class 0, as DIGITS keeps
    them; validation objects under ``val_min_box_size`` become class 0 (DIGITS' rule)."""

    databases = ("features", "labels")

    def __init__(self, params: DetectionParams, index: dict[str, int], split: str, max_boxes: int) -> None:
        super().__init__(params, index, split)
        self.max_boxes = max_boxes

    def key(self, n: int, image: str) -> bytes:
        return record_key(n)

    def __call__(self, sample: Sample) -> Record:
        try:
            pixels = self._pixels(sample)
            own = pixels.shape[1], pixels.shape[0]
            pixels = self._pad(pixels)
            rows = self._rows(sample, own)
            if len(rows) > self.max_boxes:  # the label file grew after it was first read
                raise DataError(f"{sample.label_file}: {len(rows)} objects, {self.max_boxes} when the job began")
        except CaffeError as e:
            return Record(None, str(e).removeprefix(f"{sample.image}: "))
        if self.p.resize_image_width is not None:
            rows[:, [0, 2]] *= np.float32(self.p.resize_image_width / pixels.shape[1])
            rows[:, [1, 3]] *= np.float32(self.p.resize_image_height / pixels.shape[0])
            pixels = resize_image(pixels, self.p.resize_image_height, self.p.resize_image_width, "squash")
        record = Record(None)
        for label in rows[:, CLASS].astype(int):
            if label:
                record.boxes[label] += 1
            else:
                record.ignored += 1
        bgr = np.ascontiguousarray(pixels[:, :, ::-1])  # RGB -> BGR; grayscale unchanged
        record.payloads = detectnet_record(bgr, rows, self.max_boxes, self.p.encoding, sample.image)
        record.shape = bgr.shape[:2]
        return record

    def _rows(self, sample: Sample, own: tuple[int, int]) -> np.ndarray:
        """The sample's objects as rows in pixels of its image (``own``: width, height)."""
        if sample.fmt == "kitti":
            rows = kitti_box_rows(read_kitti_rows(sample.label_file, MAX_LABEL_BYTES), self.index)
        else:
            rows = plain_box_rows([(self.index.get(o.name, 0), o.xmin, o.ymin, o.xmax, o.ymax) for o in sample.objects])
        if self.min_box:
            rows[(rows[:, 2] < self.min_box) | (rows[:, 3] < self.min_box), CLASS] = 0
        ref = sample.size or own
        rows[:, [0, 2]] *= np.float32(own[0] / ref[0])
        rows[:, [1, 3]] *= np.float32(own[1] / ref[1])
        return rows


@dataclass
class SplitResult:
    stored: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    boxes: Counter = field(default_factory=Counter)
    ignored: int = 0
    difficult: int = 0
    shapes: set[tuple[int, int]] = field(default_factory=set)  # the stored pictures' (height, width)

    def add(self, record: Record) -> None:
        self.shapes.add(record.shape)
        self.boxes.update(record.boxes)
        self.ignored += record.ignored
        self.difficult += record.difficult


def write_records(
    samples: list[Sample], db_path: Path, maker: RecordMaker, progress: ProgressFn, stage: str
) -> SplitResult:
    """One split's LMDB(s) (``db_path``, or its ``maker.databases`` inside it), written atomically, the records
    with the same keys; what was stored and skipped."""
    from contextlib import ExitStack

    from caffe.util.database import new_database
    from caffe.util.threads import default_threads, ordered_map

    out = SplitResult()
    every = max(1, len(samples) // 100)
    progress(stage, 0, len(samples))
    with ExitStack() as stack:
        paths = [db_path / name if name else db_path for name in maker.databases]
        dbs = [stack.enter_context(new_database(path, "lmdb")) for path in paths]
        txns = [db.transaction() for db in dbs]
        records = ordered_map(maker, samples, min(4, default_threads()))
        for done, (sample, record) in enumerate(zip(samples, records, strict=True), start=1):
            if record.payloads is None:
                log.warning("Skipping %s: %s", sample.image, record.error)
                out.skipped.append({"path": sample.image, "reason": record.error})
            else:
                key = maker.key(len(out.stored), sample.image)
                for txn, payload in zip(txns, record.payloads, strict=True):
                    txn.put(key, payload)
                out.stored.append(sample.image)
                out.add(record)
                if len(out.stored) % ds.COMMIT_EVERY == 0:
                    for txn in txns:
                        txn.commit()
            if done % every == 0 or done == len(samples):
                progress(stage, done, len(samples))
        for txn in txns:
            txn.commit()
    log.info("%s: %d images written to %s", stage, len(out.stored), db_path.name)
    return out


def write_label_files(job_dir: Path, labels: list[str]) -> None:
    """``labelmap.prototxt`` (the fork's LabelMap) and ``labels.txt``."""
    label_map = pb.LabelMap()
    for i, name in enumerate(labels):
        label_map.item.add(name=name, label=i, display_name=name)
    write_text(job_dir / "labelmap.prototxt", label_map)
    ds.write_lines(job_dir / "labels.txt", labels)


def channels_of(params: DetectionParams) -> int:
    """The stored images' channels: 1 for ``channel_conversion: L``, else 3."""
    return 1 if params.channel_conversion == "L" else 3


def _image_dims(params: DetectionParams) -> list[int] | None:
    if params.resize_image_width is not None:
        return [params.resize_image_height, params.resize_image_width, channels_of(params)]
    if params.padding_image_width is not None:
        return [params.padding_image_height, params.padding_image_width, channels_of(params)]
    return None


def create_detection_dataset(
    job_dir: str | os.PathLike, params: DetectionParams, progress: ProgressFn | None = None
) -> dict:
    """Make the dataset's files in ``job_dir``; returns the result (see the module)."""
    job_dir = Path(job_dir)
    progress = progress or (lambda stage, done, total: None)
    start = time.time()
    plan = make_plan(params, [job_dir.resolve()], progress)
    for warning in plan.warnings:
        log.warning("%s", warning)
    log.info("Found %d images, %d classes", sum(map(len, plan.splits.values())), len(plan.labels) - 1)
    write_label_files(job_dir, plan.labels)
    skipped = list(plan.skipped)
    counts, boxes, ignored, difficult = {}, {}, {}, {}
    most = max((len(s.objects) for split in plan.splits.values() for s in split), default=0)
    shapes: set[tuple[int, ...]] = set()
    for split in SPLITS:
        samples = plan.splits[split]
        result = SplitResult()
        if samples:
            maker = (
                DetectNetRecordMaker(params, plan.index, split, most)
                if params.detector == "detectnet"
                else RecordMaker(params, plan.index, split)
            )
            result = write_records(samples, job_dir / f"{split}_db", maker, progress, split)
            if not result.stored:
                raise DataError(f"none of the {len(samples)} {split} images could be read (see the skipped files)")
            shapes |= result.shapes
        skipped.extend(result.skipped)
        ds.write_lines(job_dir / f"{split}.txt", result.stored)
        counts[split] = len(result.stored)
        boxes[split] = {name: result.boxes.get(i, 0) for i, name in enumerate(plan.labels) if i}
        ignored[split], difficult[split] = result.ignored, result.difficult
    for item in skipped:
        log.warning("Skipped %s: %s", item["path"], item["reason"])
    dims, mean = _image_dims(params), None
    if params.detector == "detectnet" and dims is None and len(shapes) == 1:
        dims = [*next(iter(shapes)), channels_of(params)]  # DetectNet's batches need one size: the model job checks
    if params.detector == "detectnet" and dims is not None:
        progress("mean", 0, 1)
        ds.write_mean(job_dir / "train_db" / "features", job_dir)  # DIGITS' mean image, for networks that use it
        progress("mean", 1, 1)
        mean = "mean.binaryproto"
    out = {
        "task": TASK,
        "detector": params.detector,
        "labels": plan.labels,
        "classes": len(plan.labels),
        "counts": counts,
        "boxes": boxes,
        "ignored_boxes": ignored,
        "difficult_boxes": difficult,
        "image_dims": dims,
        "encoding": params.encoding,
        "mean_file": mean,
        "label_map_file": "labelmap.prototxt",
        "skipped": skipped,
        "warnings": plan.warnings,
        "seconds": round(time.time() - start, 3),
    }
    log.info("Dataset done: %s (%.1f s)", ", ".join(f"{n} {s}" for s, n in counts.items()), out["seconds"])
    return out


# ---------------------------------------------------------------------------------------------
# the job process


def run_job(job_dir: str | os.PathLike) -> int:
    """Run the detection dataset job of ``job_dir`` (its ``params.json``); 0 on success, 1 on bad input."""
    return ds.run_job(job_dir, DetectionParams.from_dict, create_detection_dataset)


def main(argv: list[str] | None = None) -> int:
    return ds.main(argv, run_job, "caffe.studio.detection_datasets")


if __name__ == "__main__":
    sys.exit(main())
