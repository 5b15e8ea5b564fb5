"""Image classification datasets, as DIGITS makes them: ``python -m caffe.studio.datasets <job_dir>``.

The job reads ``<job_dir>/params.json`` (see :class:`DatasetParams`; the field names are DIGITS' form
fields) and writes, in the job folder:

* ``labels.txt`` (one class name a line; line ``i`` names label ``i``), ``train.txt``, ``val.txt``
  [``test.txt``] (``path label`` lines, in the order of the database records);
* ``train_db/``, ``val_db/`` [``test_db/``]: LMDBs of Datums keyed ``%08d_<path>`` as
  ``convert_imageset`` keys them; raw Datums are (C, H, W) uint8 with colour planes in B, G, R order,
  encoded ones hold a PNG/JPEG (quality 90) of the same pixels;
* ``mean.binaryproto`` (1xCxHxW, the mean of the train database as ``compute_image_mean`` computes it)
  and ``mean.jpg`` (that mean as a picture);
* ``events.jsonl``: ``progress`` {stage, done, total} events, then ``done`` {counts, ...} or
  ``error`` {message}; glog-style log lines go to stdout.

The result (counts per split and per class, image dims, encoding, skipped files) goes to the job's
``result`` in the store. Images come from a folder of class sub-folders (split per class with
DIGITS' rounding: 65 images at 25 % validation give 49 + 16) or from ``path label`` list files and a
labels file. Resizing follows DIGITS' ``resize_image`` (squash, crop, fill, half_crop, with noise
padding); the noise and every shuffle come from ``seed``, so a dataset is reproducible.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from caffe.data.datum import image_to_raw_datum
from caffe.data.db import item_key
from caffe.deploy.errors import ImageDecodeError
from caffe.deploy.images import RESIZE_MODES, image_array, open_image, resize_image, round_half_up
from caffe.errors import CaffeError, DataError
from caffe.limits import MiB, read_file
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import atomic_write
from caffe.studio.paths import default_data_roots, resolve_user_path

log = logging.getLogger("caffe")

SUPPORTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
ENCODINGS = ("png", "jpg", "none")
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 90
COMMIT_EVERY = 1000
MAX_LIST_BYTES = 64 * MiB  # the largest list or labels file read (named by path or uploaded)
QUOTE_CHARS = 80  # at most this much of a list line is quoted in an error

ProgressFn = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------
# parameters


@dataclass
class DatasetParams:
    """The "New Image Classification Dataset" form, with DIGITS' field names and defaults."""

    dataset_name: str = ""
    method: str = "folder"  # "folder" | "textfile"
    # folder method
    folder_train: str = ""
    folder_pct_val: float = 25.0
    folder_pct_test: float = 0.0
    folder_train_min_per_class: int = 2
    folder_train_max_per_class: int | None = None
    # textfile method: server paths of the lists (uploads are saved in the job folder first)
    textfile_train_images: str = ""
    textfile_val_images: str = ""
    textfile_test_images: str = ""
    textfile_labels_file: str = ""
    textfile_train_folder: str = ""  # prefix of relative paths in the lists ("" = lists hold absolute paths)
    textfile_val_folder: str = ""
    textfile_test_folder: str = ""
    textfile_shuffle: bool = True
    # image options
    resize_channels: int = 3
    resize_width: int = 256
    resize_height: int = 256
    resize_mode: str = "squash"
    encoding: str = "png"
    backend: str = "lmdb"
    seed: int = 0
    # set by the server (always: its data roots): the folders lists and images may be read from;
    # None, for a params.json written by hand for the command-line job, is no restriction
    data_roots: list[str] | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DatasetParams:
        """Typed and checked parameters; a bad value is a DataError naming its field."""
        params = cls(**form_fields(cls, values))
        params.check()
        return params

    def check(self) -> None:
        def bad(name: str, why: str) -> DataError:
            return DataError(f"{name}: {why} (got {getattr(self, name)!r})")

        if self.method not in ("folder", "textfile"):
            raise bad("method", "must be 'folder' or 'textfile'")
        if self.resize_channels not in (1, 3):
            raise bad("resize_channels", "must be 1 (grayscale) or 3 (color)")
        for name in ("resize_width", "resize_height"):
            if not 1 <= getattr(self, name) <= 8192:
                raise bad(name, "must be between 1 and 8192 pixels")
        if self.resize_mode not in RESIZE_MODES:
            raise bad("resize_mode", f"must be one of {', '.join(RESIZE_MODES)}")
        if self.encoding not in ENCODINGS:
            raise bad("encoding", f"must be one of {', '.join(ENCODINGS)}")
        if self.backend != "lmdb":
            raise bad("backend", "only 'lmdb' is supported")
        for name in ("folder_pct_val", "folder_pct_test"):
            if not 0 <= getattr(self, name) <= 100:
                raise bad(name, "must be a percentage between 0 and 100")
        if self.folder_pct_val + self.folder_pct_test > 100:
            raise DataError("folder_pct_val + folder_pct_test: the validation and test percentages exceed 100 %")
        if self.folder_train_min_per_class < 1:
            raise bad("folder_train_min_per_class", "must be at least 1")
        mx = self.folder_train_max_per_class
        if mx is not None and mx < max(1, self.folder_train_min_per_class):
            raise bad("folder_train_max_per_class", "must be at least the minimum per class")
        if self.method == "folder" and not self.folder_train:
            raise DataError("folder_train: the folder of training images is required")
        if self.method == "textfile":
            if not self.textfile_train_images:
                raise DataError("textfile_train_images: the list of training images is required")
            if not self.textfile_labels_file:
                raise DataError("textfile_labels_file: the labels file is required")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def form_fields(cls: type, values: dict[str, Any], whole: Iterable[str] = ()) -> dict[str, Any]:
    """The ``values`` that name fields of the dataclass ``cls`` (blank ones left out, ``task`` never taken from a
    form), each coerced to its default's type (a whole number for the ``whole`` fields, whose default is None)."""
    defaults = {f.name: f.default for f in fields(cls)}
    return {
        name: coerce_field(name, value, 0 if name in whole else defaults[name])
        for name, value in values.items()
        if name in defaults
        and name != "task"
        and value is not None
        and not (isinstance(value, str) and not value.strip())
    }


def coerce_field(name: str, value: Any, default: Any) -> Any:
    """A form value (text, number or bool) as the field's type; DataError naming the field."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on", "y")
            return bool(value)
        if isinstance(default, int) or name.endswith("_per_class"):
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if isinstance(default, float):
            f = float(value)
            if math.isnan(f):
                raise ValueError
            return f
        if name == "data_roots":
            return [str(v) for v in value]
        return str(value).strip()
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if isinstance(default, int) or name.endswith("_per_class") else "a number"
        raise DataError(f"{name}: expected {kind}, got {value!r}") from None


def allowed_roots(configured: Iterable[str | os.PathLike] | None) -> list[Path]:
    """The studio's data roots, resolved; None is the default, :func:`caffe.studio.paths.default_data_roots`
    (the working directory). ``[Path("/")]`` allows every folder this process can read."""
    if configured is None:
        return default_data_roots()
    return [Path(r).expanduser().resolve() for r in configured]


def inside_roots(path: str | os.PathLike, roots: list[Path] | None) -> bool:
    """Whether ``path``, symlinks followed, lies inside one of ``roots`` (None: no restriction)."""
    return roots is None or any(Path(path).resolve().is_relative_to(r) for r in roots)


def quote(text: str) -> str:
    """``text`` as an error quotes it: repr, cut to :data:`QUOTE_CHARS` characters."""
    return repr(text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "...")


def check_server_path(text: str, field_name: str, roots: Iterable[str | os.PathLike] | None, kind: str = "dir") -> Path:
    """A server-side folder (``kind="dir"``) or file (``"file"``) typed in the form: no ``..``, inside
    the allowed roots, existing, of the right kind and readable; DataError naming the field otherwise."""
    try:
        path = resolve_user_path(text, roots)
    except CaffeError as e:
        raise DataError(f"{field_name}: {e}") from None
    what = "folder" if kind == "dir" else "file"
    try:
        if not path.exists():
            raise DataError(f"{field_name}: {what} {quote(text)} does not exist")
        if kind == "dir" and not path.is_dir():
            raise DataError(f"{field_name}: {quote(text)} is not a directory")
        if kind == "file" and not path.is_file():
            raise DataError(f"{field_name}: {quote(text)} is not a file")
    except OSError as e:  # e.g. a name too long for the file system
        raise DataError(f"{field_name}: cannot use {what} {quote(text)}: {e.strerror}") from None
    if not os.access(path, os.R_OK | (os.X_OK if kind == "dir" else 0)):
        raise DataError(f"{field_name}: no permission to read {what} {quote(text)}")
    return path


# ---------------------------------------------------------------------------------------------
# images


def load_image(path: str | os.PathLike) -> Image.Image:
    """An image file as a PIL image of mode ``L`` or ``RGB`` (:func:`caffe.deploy.images.open_image`: transparent
    pixels become white, as in DIGITS); DataError naming the file when it cannot be decoded."""
    try:
        return open_image(path, str(path))
    except ImageDecodeError as e:
        raise DataError(f"{path}: not a readable image ({str(e).removeprefix(f'{path}: ')})") from None


def make_datum(pixels: np.ndarray, label: int, encoding: str, name: str = "<image>") -> bytes:
    """A serialized Datum of RGB (or gray) pixels: raw (C, H, W) BGR bytes for ``"none"``, else the
    pixels encoded as PNG or JPEG (quality 90), which decode to the same BGR order."""
    bgr = pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels[:, :, ::-1])
    if encoding == "none":
        return image_to_raw_datum(bgr, label, name).SerializeToString()
    flags = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if encoding == "jpg" else []
    ok, buf = cv2.imencode("." + encoding, bgr, flags)
    if not ok:
        raise DataError(f"{name}: OpenCV could not encode the image as .{encoding}")
    datum = pb.Datum(label=label, encoded=True, data=buf.tobytes())
    return datum.SerializeToString()


# ---------------------------------------------------------------------------------------------
# which images go where


@dataclass
class Entry:
    path: str
    label: int


@dataclass
class Plan:
    """The dataset to write: class names, the entries of each split, and files left out (with why)."""

    labels: list[str]
    splits: dict[str, list[Entry]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def split_sizes(n: int, pct_val: float, pct_test: float) -> tuple[int, int, int]:
    """How DIGITS splits one class of ``n`` images: (train, val, test) counts.

    The training count is rounded (halves up) from its percentage, then the validation count; each
    split asked for gets at least one image when the class has enough, taken from the previous split.
    """
    pct_train = 100 - (pct_val + pct_test)
    if pct_train >= 100:
        return n, 0, 0
    if pct_val >= 100:
        return 0, n, 0
    if pct_test >= 100:
        return 0, 0, n
    a = round_half_up(n * pct_train / 100)
    if pct_train and not a:
        a = 1
    b = min(round_half_up(n * pct_val / 100), n - a)
    if pct_val and not b:
        if a > 1:
            a, b = a - 1, 1
        elif a != n:
            b = 1
    c = n - a - b
    if pct_test and not c:
        if b > 1:
            b, c = b - 1, 1
        elif a > 1:
            a, c = a - 1, 1
    return a, b, c


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(SUPPORTED_EXTENSIONS)


def scan_class_folder(folder: Path, roots: list[Path] | None, skipped: list[dict[str, str]]) -> list[str]:
    """The image files under one class folder (sub-folders included), sorted; other files, and links
    leading outside the allowed roots, are added to ``skipped``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not _is_image_name(name):
                skipped.append({"path": path, "reason": f"not an image file ({' '.join(SUPPORTED_EXTENSIONS)})"})
            elif not inside_roots(path, roots):
                skipped.append({"path": path, "reason": "a link to a file outside the allowed folders"})
            else:
                found.append(path)
    return found


def plan_from_folder(params: DatasetParams, roots: list[Path] | None, rng: np.random.Generator) -> Plan:
    """Class sub-folders (sorted names) -> labels and a per-class split, as DIGITS' ``parse_folder``."""
    folder = check_server_path(params.folder_train, "folder_train", roots)
    plan = Plan([], {s: [] for s in SPLITS})
    subdirs = []
    for p in sorted(folder.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        if inside_roots(p, roots):
            subdirs.append(p)
        else:  # a link out: its contents are not listed, not even in the skipped files
            plan.skipped.append({"path": str(p), "reason": "a link to a folder outside the allowed folders"})
    if len(subdirs) < 2:
        raise DataError(
            f"folder_train: {params.folder_train} has {len(subdirs)} class sub-folder(s); "
            "a classification dataset needs at least two (one folder of images per class)"
        )
    need = 1 + (params.folder_pct_val > 0) + (params.folder_pct_test > 0)
    minimum = max(need, params.folder_train_min_per_class)
    mx = params.folder_train_max_per_class
    for sub in subdirs:
        paths = scan_class_folder(sub, roots, plan.skipped)
        if mx is not None and len(paths) > mx:
            plan.warnings.append(f"class {sub.name!r}: {len(paths)} images, keeping the first {mx} (maximum per class)")
            paths = paths[:mx]
        if len(paths) < minimum:
            plan.warnings.append(f"class {sub.name!r}: {len(paths)} image(s), fewer than {minimum}; class left out")
            continue
        label = len(plan.labels)
        plan.labels.append(sub.name)
        order = rng.permutation(len(paths))
        a, b, _ = split_sizes(len(paths), params.folder_pct_val, params.folder_pct_test)
        for split, idx in zip(SPLITS, (order[:a], order[a : a + b], order[a + b :]), strict=True):
            plan.splits[split].extend(Entry(paths[i], label) for i in idx)
    if len(plan.labels) < 2:
        raise DataError(
            f"folder_train: {params.folder_train} has {len(plan.labels)} class(es) with enough images "
            f"(at least {minimum} each); a classification dataset needs two"
            + (f" ({'; '.join(plan.warnings)})" if plan.warnings else "")
        )
    return plan


def _read_list_text(path: Path, field_name: str, what: str) -> str:
    """A list or labels file's text: a regular file of at most :data:`MAX_LIST_BYTES`, UTF-8."""
    try:
        return read_file(path, what, max_bytes=MAX_LIST_BYTES, error=DataError).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{field_name}: {path} is not UTF-8 text (byte {e.start})") from None
    except CaffeError as e:
        raise DataError(f"{field_name}: {e}") from None


def read_labels_file(path: Path, field_name: str = "textfile_labels_file") -> list[str]:
    """The class names of a labels file (one a line, blank lines skipped); at least two."""
    text = _read_list_text(path, field_name, "labels file")
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) < 2:
        raise DataError(f"{field_name}: {path} names {len(labels)} class(es); a classification dataset needs two")
    return labels


def read_image_list(
    path: Path, n_labels: int, image_folder: Path | None, roots: list[Path] | None, field_name: str
) -> list[Entry]:
    """``path label`` lines (split at the last space/tab; blank lines skipped). Relative paths are
    taken under ``image_folder``; every path must stay inside the allowed roots. A line without a
    label, a label out of range or a path leaving the roots is a DataError naming ``file:line`` (quoting at
    most :data:`QUOTE_CHARS` characters of the line). The file is bounded by :data:`MAX_LIST_BYTES`."""
    text = _read_list_text(path, field_name, "list file")
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        where = f"{field_name}: {path.name}:{lineno}"
        cut = max(line.rfind(" "), line.rfind("\t"))
        if cut < 0:
            raise DataError(f"{where}: expected 'path label', found no label in {quote(line)}")
        name, label_text = line[:cut].strip(), line[cut + 1 :]
        try:
            label = int(label_text)
        except ValueError:
            raise DataError(f"{where}: the label {quote(label_text)} is not a whole number") from None
        if not 0 <= label < n_labels:
            raise DataError(f"{where}: label {label} is not in the labels file (0..{n_labels - 1})")
        if not os.path.isabs(name):
            if image_folder is None:
                raise DataError(f"{where}: {quote(name)} is a relative path; give the images folder or absolute paths")
            name = str(image_folder / name)
        try:
            resolved = resolve_user_path(name, roots, shown=quote(name))
        except CaffeError as e:
            raise DataError(f"{where}: {e}") from None
        entries.append(Entry(str(resolved), label))
    if not entries:
        raise DataError(f"{field_name}: {path} lists no images")
    return entries


def plan_from_lists(params: DatasetParams, roots: list[Path] | None, rng: np.random.Generator) -> Plan:
    """Lists of ``path label`` lines plus a labels file, as DIGITS' "Textfiles" dataset type."""
    labels_path = check_server_path(params.textfile_labels_file, "textfile_labels_file", roots, "file")
    plan = Plan(read_labels_file(labels_path), {s: [] for s in SPLITS})
    for split in SPLITS:
        list_field = f"textfile_{split}_images"
        if not getattr(params, list_field):
            continue
        folder_text = getattr(params, f"textfile_{split}_folder") or params.textfile_train_folder
        folder = check_server_path(folder_text, f"textfile_{split}_folder", roots) if folder_text else None
        list_path = check_server_path(getattr(params, list_field), list_field, roots, "file")
        entries = read_image_list(list_path, len(plan.labels), folder, roots, list_field)
        if params.textfile_shuffle:
            entries = [entries[i] for i in rng.permutation(len(entries))]
        plan.splits[split] = entries
    return plan


def make_plan(params: DatasetParams, extra_roots: Iterable[Path] = ()) -> Plan:
    """The dataset's labels and splits (deterministic for ``params.seed``); the training split is
    shuffled across classes so that batches mix them."""
    roots = None if params.data_roots is None else allowed_roots(params.data_roots)
    if roots is not None:
        roots += [Path(r).resolve() for r in extra_roots]
    rng = np.random.default_rng(params.seed)
    if params.method == "folder":
        plan = plan_from_folder(params, roots, rng)
        train = plan.splits["train"]
        plan.splits["train"] = [train[i] for i in rng.permutation(len(train))]
    else:
        plan = plan_from_lists(params, roots, rng)
    if not plan.splits["train"]:
        raise DataError("no training images: the training split is empty")
    return plan


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class _Converted:
    payload: bytes | None
    error: str = ""


class _Converter:
    """One entry -> a serialized Datum (runs on worker threads; PIL and OpenCV release the GIL)."""

    def __init__(self, params: DatasetParams, split_index: int) -> None:
        self.p, self.split_index = params, split_index

    def __call__(self, item: tuple[int, Entry]) -> _Converted:
        i, entry = item
        try:
            pixels = image_array(load_image(entry.path), self.p.resize_channels)
        except DataError as e:
            return _Converted(None, str(e).split(": ", 1)[-1])
        rng = np.random.default_rng((self.p.seed, self.split_index, i))
        pixels = resize_image(pixels, self.p.resize_height, self.p.resize_width, self.p.resize_mode, rng)
        return _Converted(make_datum(pixels, entry.label, self.p.encoding, entry.path))


def write_split(
    entries: list[Entry], db_path: Path, params: DatasetParams, split_index: int, progress: ProgressFn, stage: str
) -> tuple[list[Entry], list[dict[str, str]]]:
    """Write one split's LMDB; returns the entries stored (in key order) and the images skipped."""
    from caffe.util.database import new_database
    from caffe.util.threads import default_threads, ordered_map

    stored: list[Entry] = []
    skipped: list[dict[str, str]] = []
    every = max(1, len(entries) // 100)
    progress(stage, 0, len(entries))
    with new_database(db_path, params.backend) as db:
        txn = db.transaction()
        results = ordered_map(_Converter(params, split_index), enumerate(entries), min(4, default_threads()))
        for done, (entry, result) in enumerate(zip(entries, results, strict=True), start=1):
            if result.payload is None:
                log.warning("Skipping %s: %s", entry.path, result.error)
                skipped.append({"path": entry.path, "reason": result.error})
            else:
                txn.put(item_key(len(stored), entry.path), result.payload)
                stored.append(entry)
                if len(stored) % COMMIT_EVERY == 0:
                    txn.commit()
                    log.info("%s: processed %d files.", stage, len(stored))
            if done % every == 0 or done == len(entries):
                progress(stage, done, len(entries))
        txn.commit()
    log.info("%s: %d images written to %s", stage, len(stored), db_path.name)
    return stored, skipped


def write_lines(path: Path, lines: Iterable[str]) -> None:
    atomic_write(path, "".join(f"{line}\n" for line in lines).encode("utf-8"))


def write_mean(train_db: Path, job_dir: Path) -> np.ndarray:
    """``mean.binaryproto`` (as ``compute_image_mean``) and ``mean.jpg`` from the train database."""
    from caffe.util.mean import compute_mean, mean_blob_proto

    mean, _ = compute_mean(str(train_db), "lmdb")
    atomic_write(job_dir / "mean.binaryproto", mean_blob_proto(mean).SerializeToString())
    pixels = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    pixels = pixels[0] if pixels.shape[0] == 1 else pixels[::-1].transpose(1, 2, 0)  # BGR planes -> RGB
    tmp = job_dir / f".mean.jpg.{os.getpid()}"
    Image.fromarray(pixels).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    os.replace(tmp, job_dir / "mean.jpg")
    return mean


def create_dataset(job_dir: str | os.PathLike, params: DatasetParams, progress: ProgressFn | None = None) -> dict:
    """Make the dataset's files in ``job_dir``; returns the result (counts, dims, encoding, skipped)."""
    job_dir = Path(job_dir)
    progress = progress or (lambda stage, done, total: None)
    start = time.time()
    plan = make_plan(params, extra_roots=[job_dir.resolve()])
    for warning in plan.warnings:
        log.warning("%s", warning)
    for item in plan.skipped:
        log.warning("Skipping %s: %s", item["path"], item["reason"])
    log.info("Found %d images in %d classes", sum(map(len, plan.splits.values())), len(plan.labels))
    write_lines(job_dir / "labels.txt", plan.labels)
    counts: dict[str, int] = {}
    per_class: dict[str, dict[str, int]] = {}
    skipped = list(plan.skipped)
    for split_index, split in enumerate(SPLITS):
        entries = plan.splits[split]
        if not entries and split != "val":
            continue
        stored: list[Entry] = []
        if entries:
            stored, bad = write_split(entries, job_dir / f"{split}_db", params, split_index, progress, split)
            skipped.extend(bad)
        if entries and not stored:
            raise DataError(f"none of the {len(entries)} {split} images could be read (see the skipped files)")
        write_lines(job_dir / f"{split}.txt", (f"{e.path} {e.label}" for e in stored))
        counts[split] = len(stored)
        by_label = Counter(e.label for e in stored)
        per_class[split] = {name: by_label.get(i, 0) for i, name in enumerate(plan.labels)}
    progress("mean", 0, 1)
    write_mean(job_dir / "train_db", job_dir)
    progress("mean", 1, 1)
    if skipped:
        log.warning("%d file(s) skipped: %s", len(skipped), ", ".join(s["path"] for s in skipped))
    result = {
        "labels": plan.labels,
        "classes": len(plan.labels),
        "counts": counts,
        "per_class": per_class,
        "image_dims": [params.resize_height, params.resize_width, params.resize_channels],
        "resize_mode": params.resize_mode,
        "encoding": params.encoding,
        "backend": params.backend,
        "mean_file": "mean.binaryproto",
        "skipped": skipped,
        "warnings": plan.warnings,
        "seconds": round(time.time() - start, 3),
    }
    log.info("Dataset done: %s (%s)", ", ".join(f"{n} {s}" for s, n in counts.items()), f"{result['seconds']:.1f} s")
    return result


# ---------------------------------------------------------------------------------------------
# the job process


def save_result(job_dir: Path, result: dict) -> None:
    """Store the result in the job's row, when the folder belongs to a studio store."""
    if not (job_dir.parent / "studio.sqlite3").exists():
        return
    from caffe.studio.store import JobStore

    store = JobStore(job_dir.parent)
    try:
        store.merge_result(job_dir.name, **result)
    except KeyError:
        log.warning("%s: no such job in the store; the result is only in events.jsonl", job_dir.name)
    finally:
        store.close()


def run_job(
    job_dir: str | os.PathLike,
    parse: Callable[[dict[str, Any]], Any] = DatasetParams.from_dict,
    create: Callable[..., dict] = create_dataset,
) -> int:
    """Run the dataset job of ``job_dir`` (its ``params.json`` read by ``parse``, the files made by ``create``:
    classification by default, :mod:`caffe.studio.detection_datasets`' for object detection); 0 on success, 1 on
    bad input."""
    from caffe.solver import EventLog

    job_dir = Path(job_dir)
    events = EventLog(job_dir / "events.jsonl")
    try:
        try:
            values = json.loads((job_dir / "params.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{job_dir / 'params.json'}: cannot read the job's parameters ({e})") from None
        if not isinstance(values, dict):
            raise DataError(f"{job_dir / 'params.json'}: not a JSON object")
        params = parse(values)
        result = create(job_dir, params, lambda s, d, t: events.write("progress", stage=s, done=d, total=t))
        save_result(job_dir, result)
        events.write("done", **result)
        return 0
    except CaffeError as e:
        log.error("%s", e)
        events.write("error", message=str(e))
        return 1
    finally:
        events.close()


def main(
    argv: list[str] | None = None, run: Callable[[str], int] = run_job, module: str = "caffe.studio.datasets"
) -> int:
    """The job process: ``python -m <module> JOB_DIR``."""
    from caffe.util import glog
    from caffe.util.parent_watch import stop_when_parent_exits

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m {module} JOB_DIR", file=sys.stderr)
        return 1
    glog.setup(stream=sys.stdout)
    stop_when_parent_exits()
    return run(argv[0])


if __name__ == "__main__":
    sys.exit(main())
