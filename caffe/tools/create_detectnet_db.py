"""``caffe create_detectnet_db [FLAGS] IMAGE_FOLDER LABEL_FOLDER OUT_FOLDER``: a DetectNet dataset as DIGITS'
"New Object Detection Dataset" stores it, from KITTI-format folders, for NVIDIA/caffe's DetectNet nets
(``DetectNetTransformation``).

Each image of IMAGE_FOLDER (sub-folders included, sorted) whose label file ``<stem>.txt`` is in LABEL_FOLDER
(KITTI lines: ``type truncated occluded alpha left top right bottom height width length x y z rotation_y``)
becomes a pair of records with the same key (``%09d``, DIGITS' keys) in two LMDBs, ``OUT_FOLDER/features`` (the
image, 3 channels, stored PNG-encoded by default, decoding to BGR) and ``OUT_FOLDER/labels`` (its box table:
:func:`caffe.data.detectnet.box_table`, float Datums (1, most boxes + 1, 16)). DIGITS' rules: the image is
pasted at the top left of a black canvas of ``--pad_width`` x ``--pad_height`` (an image larger than it is
skipped), then squashed to ``--resize_width`` x ``--resize_height``, the boxes scaled alike; classes are
DIGITS' KITTI numbers (car 1, van 2, ..., pedestrian 8, ..., cyclist 12; other types 0, don't care) or
``--classes`` (comma-separated names: the ``i``-th is class ``i``); objects narrower or lower than
``--min_box_size`` pixels become class 0 (DIGITS' validation rule); boxes are stored farthest first (by
depth ``z``). The images are shuffled (``--shuffle``, seeded by ``--random_seed``), as DIGITS does. When all
images have one size, ``OUT_FOLDER/mean.binaryproto`` holds their mean (BGR), as DIGITS writes it.
Each database is written atomically (:func:`caffe.util.database.new_database`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffe.data.annotation import read_kitti_rows
from caffe.data.detectnet import BOX_WIDTH, KITTI_CLASSES, detectnet_record, kitti_box_rows, record_key
from caffe.deploy.errors import ImageDecodeError
from caffe.deploy.images import IMAGE_SUFFIXES, image_array, open_image, pad_top_left, resize_image
from caffe.errors import DataError
from caffe.io import array_to_blobproto
from caffe.limits import MiB
from caffe.protoio import atomic_write
from caffe.tools.flags import ToolParser, gflags_int, parse_flags
from caffe.tools.registry import command

log = logging.getLogger("caffe")

USAGE = """caffe create_detectnet_db [FLAGS] IMAGE_FOLDER LABEL_FOLDER OUT_FOLDER

Store KITTI-labelled images as DIGITS' object-detection dataset for DetectNet: OUT_FOLDER/features and
OUT_FOLDER/labels (LMDBs with the same keys) and OUT_FOLDER/mean.binaryproto."""

ENCODINGS = ("png", "jpg", "none")
MAX_LABEL_BYTES = 16 * MiB


@dataclass
class DetectNetOptions:
    """How images and boxes are stored (see the module)."""

    pad: tuple[int, int] | None = None  # (width, height)
    resize: tuple[int, int] | None = None  # (width, height)
    classes: dict[str, int] | None = None  # None: DIGITS' KITTI numbers
    min_box_size: float = 0.0
    encoding: str = "png"
    shuffle: bool = True
    random_seed: int = 0


def _pairs(images: Path, labels: Path) -> tuple[list[tuple[Path, Path]], int]:
    """(image, label file) of every image with a label file, sorted; and how many images had none."""
    found = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    pairs = [(p, labels / f"{p.stem}.txt") for p in found]
    kept = [(p, q) for p, q in pairs if q.is_file()]
    for p, q in pairs:
        if not q.is_file():
            log.warning("Skipping %s: no label file %s", p, q)
    return kept, len(pairs) - len(kept)


def _picture(path: Path, o: DetectNetOptions) -> tuple[np.ndarray, float, float]:
    """The stored RGB pixels of ``path`` and the factors (x, y) its boxes are scaled by."""
    try:
        pixels = image_array(open_image(path, str(path)), 3)
    except ImageDecodeError as e:
        raise DataError(str(e)) from None
    if o.pad is not None:
        try:
            pixels = pad_top_left(pixels, *o.pad)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
    if o.resize is None:
        return pixels, 1.0, 1.0
    sx, sy = o.resize[0] / pixels.shape[1], o.resize[1] / pixels.shape[0]
    return resize_image(pixels, o.resize[1], o.resize[0], "squash"), sx, sy


def _boxes(label_file: Path, o: DetectNetOptions) -> np.ndarray:
    rows = kitti_box_rows(read_kitti_rows(label_file, MAX_LABEL_BYTES), o.classes or KITTI_CLASSES)
    if o.min_box_size > 0:
        small = (rows[:, 2] < o.min_box_size) | (rows[:, 3] < o.min_box_size)
        rows[small, 5] = 0
    return rows


def create_detectnet_db(image_folder: str | os.PathLike, label_folder: str | os.PathLike, out: str | os.PathLike,
                        options: DetectNetOptions | None = None) -> int:  # fmt: skip
    """Write the dataset (see the module); returns how many images were stored."""
    from caffe.util.database import new_database

    o = options or DetectNetOptions()
    if o.encoding not in ENCODINGS:
        raise DataError(f"--encoding: {o.encoding!r} is not one of {', '.join(ENCODINGS)}")
    images, labels, out = Path(image_folder), Path(label_folder), Path(out)
    for what, folder in (("IMAGE_FOLDER", images), ("LABEL_FOLDER", labels)):
        if not folder.is_dir():
            raise DataError(f"{what} {folder}: no such folder")
    pairs, unlabelled = _pairs(images, labels)
    tables = {}
    for image, label_file in pairs:
        tables[image] = _boxes(label_file, o)  # every label file first: the tables' height is the most boxes
    if not tables:
        raise DataError(f"{images}: no image has a label file in {labels}")
    most = max(len(t) for t in tables.values())
    if o.shuffle:
        pairs = [pairs[i] for i in np.random.default_rng(o.random_seed).permutation(len(pairs))]
    out.mkdir(parents=True, exist_ok=True)
    total, shapes, stored = None, set(), 0
    with new_database(out / "features", "lmdb") as features, new_database(out / "labels", "lmdb") as boxes:
        ti, tl = features.transaction(), boxes.transaction()
        for image, _ in pairs:
            try:
                pixels, sx, sy = _picture(image, o)
            except DataError as e:
                log.warning("Skipping %s", e)
                continue
            rows = tables[image].copy()
            rows[:, [0, 2]] *= np.float32(sx)
            rows[:, [1, 3]] *= np.float32(sy)
            bgr = np.ascontiguousarray(pixels[:, :, ::-1])
            picture, table = detectnet_record(bgr, rows, most, o.encoding, str(image))
            ti.put(record_key(stored), picture)
            tl.put(record_key(stored), table)
            stored += 1
            shapes.add(bgr.shape)
            if len(shapes) == 1:
                total = bgr.astype(np.float64) if total is None else total + bgr
            if stored % 1000 == 0:
                ti.commit()
                tl.commit()
                log.info("Processed %d files.", stored)
        ti.commit()
        tl.commit()
    if len(shapes) == 1 and total is not None:
        mean = np.around(total / stored).astype(np.uint8).transpose(2, 0, 1)[np.newaxis].astype(np.float32)
        atomic_write(out / "mean.binaryproto", array_to_blobproto(mean).SerializeToString())
    log.info(
        "Stored %d images (%d without a label file skipped), box tables of %d rows of %d", stored, unlabelled,
        most + 1, BOX_WIDTH,
    )  # fmt: skip
    return stored


def _size(text: tuple[int, int], what: str) -> tuple[int, int] | None:
    w, h = text
    if (w == 0) != (h == 0):
        raise DataError(f"--{what}_width and --{what}_height: give both, or neither")
    if w < 0 or h < 0:
        raise DataError(f"--{what}_width and --{what}_height must be positive")
    return (w, h) if w else None


def _classes(text: str) -> dict[str, int] | None:
    if not text.strip():
        return None
    names = [n.strip().lower() for n in text.split(",")]
    if "" in names or len(set(names)) != len(names):
        raise DataError(f"--classes {text!r}: names must be non-empty and different")
    return {name: i for i, name in enumerate(names)}


@command("create_detectnet_db", "store KITTI-labelled images as DIGITS' DetectNet dataset (features + labels LMDBs)")
def create_detectnet(argv: list[str]) -> int:
    p = ToolParser("caffe create_detectnet_db", USAGE)
    p.add_argument("image_folder")
    p.add_argument("label_folder")
    p.add_argument("out_folder")
    p.add_argument("--pad_width", type=gflags_int, default=0, help="Paste each image on a black canvas this wide")
    p.add_argument("--pad_height", type=gflags_int, default=0, help="... and this high (top left)")
    p.add_argument("--resize_width", type=gflags_int, default=0, help="Then squash it to this width")
    p.add_argument("--resize_height", type=gflags_int, default=0, help="... and height (boxes scaled alike)")
    p.add_argument("--classes", default="", help="Class names, comma-separated (the i-th is class i); "
                   "default DIGITS' KITTI numbers")  # fmt: skip
    p.add_argument("--min_box_size", type=float, default=0, help="Smaller objects become class 0 (don't care)")
    p.add_argument("--encoding", default="png", help="png (DIGITS' default), jpg or none (raw pixels)")
    p.add_bool("shuffle", "Shuffle the images (default true, as DIGITS)")
    p.set_defaults(shuffle=True)
    p.add_argument("--random_seed", type=gflags_int, default=0, help="The shuffle's seed")
    args = parse_flags(p, argv)
    if isinstance(args, int):
        return args
    options = DetectNetOptions(
        pad=_size((args.pad_width, args.pad_height), "pad"),
        resize=_size((args.resize_width, args.resize_height), "resize"),
        classes=_classes(args.classes),
        min_box_size=args.min_box_size,
        encoding=args.encoding,
        shuffle=args.shuffle,
        random_seed=args.random_seed,
    )
    create_detectnet_db(args.image_folder, args.label_folder, args.out_folder, options)
    return 0
