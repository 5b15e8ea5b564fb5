"""``convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME``: images listed with labels -> an LMDB/LevelDB of Datums.

Caffe's tool, with its flags, defaults, keys (``%08d_<listed name>``, the number being the line's
position in the - possibly shuffled - list) and log lines. Differences, all on paths where Caffe
misbehaves:

* A list line without a label (or with a label that is not an integer) is an error naming
  ``LISTFILE:line``; Caffe silently gave such a line label 0. Blank lines are skipped.
* An unreadable image is a warning naming the file; the others are written and the number of
  unreadable ones is reported at the end (Caffe logged an error per file and went on too).
* ``--shuffle`` is reproducible: the list is shuffled with a NumPy generator seeded with
  ``--random_seed`` (default 0). Caffe shuffled with its own RNG, seeded differently on every run.
* ``ROOTFOLDER`` without a trailing ``/`` that names a folder is joined with ``/`` (Caffe
  concatenated the strings, reading ``/data/trainn01440764/...``); otherwise it is a plain prefix.
* ``--check_size`` compares the decoded images' channels x height x width, also for encoded
  datums (Caffe compared an encoded file's byte count with 0 and aborted on the second image).
* The database is created atomically (see :func:`caffe.util.database.new_database`); an existing
  non-empty ``DB_NAME`` is an error, as Caffe's ``db::NEW`` is.

``--multi_label`` (neocaffe's flag, default off) writes the multi-label Datums of the OCR fork caffe_ocr:
list lines are ``relative/path.png 12 7 0 33 ...``, the file name ending at the first space after the
line's last '.', every integer after it a label (at least one), and each Datum holds them all as
caffe_ocr's ``repeated int32 label = 5`` (the Data layer reads them as an (N, L, 1, 1) label top).
Without the flag, a line whose name before its last space is no file but which reads as such a line is an
error saying to pass ``--multi_label``.

Images are read and decoded by ``--threads`` threads (default: one per core) and written in list
order; a progress bar is shown when stderr is a terminal.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from caffe.data.datum import decode_image_bytes, image_to_raw_datum, serialize_datum
from caffe.data.db import backend_name, item_key
from caffe.errors import CaffeError, DataError
from caffe.limits import max_list_bytes, read_file
from caffe.proto import caffe_pb2 as pb
from caffe.tools.flags import ToolParser, gflags_int, parse_flags
from caffe.tools.registry import command
from caffe.util.database import check_new_database_path, new_database
from caffe.util.progress import Progress
from caffe.util.threads import default_threads, ordered_map

log = logging.getLogger("caffe")

COMMIT_EVERY = 1000

USAGE = """convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

Convert a set of images to the leveldb/lmdb format used as input for Caffe.
LISTFILE lines are 'relative/path/to/image.jpg LABEL' (the label after the last space), or with
--multi_label 'relative/path/to/image.png LABEL LABEL ...' (caffe_ocr's text-line lists)."""

_WHITESPACE = re.compile(r"[ \t]")


@dataclass
class ListEntry:
    name: str  # as listed (relative to ROOTFOLDER)
    label: int
    labels: tuple[int, ...] = ()  # --multi_label: every label of the line, written as repeated field 5
    line: int = 0  # the line number in LISTFILE


@dataclass
class Converted:
    payload: bytes | None  # the serialized Datum, or None when the image could not be read
    shape: tuple[int, int, int]  # decoded (channels, height, width)
    error: str = ""


def read_list(path: str | os.PathLike, multi_label: bool = False) -> list[ListEntry]:
    """``LISTFILE``: ``name label`` per line, split at the last space (or tab); blank lines skipped. With
    ``multi_label``: ``name label [label ...]`` as caffe_ocr splits it (:func:`split_multi_label`)."""
    raw = read_file(path, "image list", max_bytes=max_list_bytes())
    entries = []
    for lineno, line in enumerate(raw.decode("utf-8", "surrogateescape").splitlines(), start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if multi_label:
            entries.append(_multi_label_entry(path, lineno, text))
            continue
        cut = max(text.rfind(" "), text.rfind("\t"))
        label_text = text[cut + 1 :].strip() if cut >= 0 else ""
        name = text[:cut] if cut >= 0 else text
        if cut < 0 or not name.strip():
            raise DataError(f"{path}:{lineno}: expected 'path label', found no label in {text!r}")
        try:
            label = int(label_text, 10)
        except ValueError:
            raise DataError(f"{path}:{lineno}: the label {label_text!r} is not an integer (line {text!r})") from None
        _check_int32(label, path, lineno)
        entries.append(ListEntry(name, label, line=lineno))
    return entries


def _check_int32(label: int, path: str | os.PathLike, lineno: int) -> None:
    if not -(2**31) <= label < 2**31:
        raise DataError(f"{path}:{lineno}: the label {label} does not fit Datum's int32 label")


def split_multi_label(text: str) -> tuple[str, list[str]]:
    """caffe_ocr's split of a list line: the file name up to the first space (or tab) after the line's last '.'
    (the first one when there is no '.'), then the whitespace-separated label texts."""
    cut = _WHITESPACE.search(text, text.rfind(".") + 1)
    if cut is None:
        return text, []
    return text[: cut.start()], text[cut.end() :].split()


def _multi_label_entry(path: str | os.PathLike, lineno: int, text: str) -> ListEntry:
    """One ``--multi_label`` line; DataError naming ``path:lineno`` unless it has a name and integer labels."""
    name, fields = split_multi_label(text.strip())
    if not fields:
        raise DataError(
            f"{path}:{lineno}: expected 'path label [label ...]' (--multi_label), found no label in {text!r}"
        )
    labels = []
    for field in fields:
        try:
            labels.append(int(field, 10))
        except ValueError:
            raise DataError(f"{path}:{lineno}: the label {field!r} is not an integer (line {text!r})") from None
        _check_int32(labels[-1], path, lineno)
    return ListEntry(name, labels[0], tuple(labels), lineno)


def check_not_multi_label(entries: list[ListEntry], root: str, list_file: str | os.PathLike) -> None:
    """DataError, saying to pass ``--multi_label``, for the first line read as ``name label`` whose name is no file
    while caffe_ocr's split of the same line gives an existing file and several integer labels."""
    for e in entries:
        name, fields = split_multi_label(f"{e.name} {e.label}")
        if name == e.name or len(fields) < 2 or not all(_is_int(f) for f in fields):
            continue
        if not os.path.exists(join_root(root, e.name)) and os.path.isfile(join_root(root, name)):
            raise DataError(
                f"{list_file}:{e.line}: no image {e.name!r}, but {name!r} followed by {len(fields)} labels is "
                "caffe_ocr's multi-label line: pass --multi_label to store every label"
            )


def _is_int(text: str) -> bool:
    try:
        int(text, 10)
    except ValueError:
        return False
    return True


def join_root(root: str, name: str) -> str:
    """``ROOTFOLDER`` + a listed name (a folder named without its trailing ``/`` is joined with one)."""
    if root and not root.endswith(("/", os.sep)) and os.path.isdir(root):
        return root + "/" + name
    return root + name


def _match_ext(filename: str, encoding: str) -> bool:
    """Whether ``filename`` already is in ``encoding``: its text after the last '.', ignoring case (jpeg = jpg)."""
    ext = filename[filename.rfind(".") + 1 :].lower()
    enc = encoding.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


class DatumConverter:
    """Turns one list entry into a serialized Datum (runs on worker threads)."""

    def __init__(self, root: str, height: int, width: int, is_color: bool, encoded: bool, encode_type: str) -> None:
        self.root, self.height, self.width, self.is_color = root, height, width, is_color
        self.encoded, self.encode_type = encoded, encode_type

    def encoding_for(self, name: str) -> str:
        if self.encode_type:
            return self.encode_type
        dot = name.rfind(".")
        return name[dot + 1 :].lower() if dot >= 0 else ""

    def __call__(self, entry: ListEntry) -> Converted:
        path = join_root(self.root, entry.name)
        try:
            raw = read_file(path, "image")
        except CaffeError as e:  # missing, not a regular file, or over the size limit: skipped as Caffe does
            return Converted(None, (0, 0, 0), f"Could not open or find file {path} ({e})")
        try:
            img = decode_image_bytes(raw, "color" if self.is_color else "gray", path)
        except DataError:
            return Converted(None, (0, 0, 0), f"Could not decode file {path} (not an image OpenCV reads, or corrupt)")
        if self.height > 0 and self.width > 0:
            img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        shape = (1 if img.ndim == 2 else img.shape[2], img.shape[0], img.shape[1])
        if not self.encoded:
            return Converted(_serialized(image_to_raw_datum(img, entry.label, path), entry), shape)
        datum = pb.Datum()
        enc = self.encoding_for(entry.name)
        keep_file = (shape[0] == 3) == self.is_color and not self.height and not self.width
        if keep_file and (not enc or _match_ext(entry.name, enc)):
            datum.data = raw  # the file as it is (also when its encoding cannot be guessed, as Caffe)
        elif not enc:
            return Converted(
                None, shape, f"Failed to guess the encoding of '{entry.name}' (no extension); set --encode_type"
            )
        else:
            ok, buf = cv2.imencode("." + enc, img)
            if not ok:
                raise DataError(f"{path}: OpenCV could not encode the image as .{enc}")
            datum.data = buf.tobytes()
        datum.label = entry.label
        datum.encoded = True
        return Converted(_serialized(datum, entry), shape)


def _serialized(datum: pb.Datum, entry: ListEntry) -> bytes:
    """The Datum's bytes, with every label of a ``--multi_label`` entry."""
    return serialize_datum(datum, entry.labels) if entry.labels else datum.SerializeToString()


@dataclass
class ImageOptions:
    """convert_imageset's flags: how images are read, stored and written (create_annoset shares them)."""

    gray: bool = False
    shuffle: bool = False
    backend: str = "lmdb"
    resize_width: int = 0
    resize_height: int = 0
    check_size: bool = False
    encoded: bool = False
    encode_type: str = ""
    random_seed: int = 0
    threads: int = 0

    def converter(self, root: str) -> DatumConverter:
        """What reads and stores each image (``encode_type`` implies ``encoded``)."""
        if (self.resize_height > 0) != (self.resize_width > 0):
            log.warning(
                "Only one of --resize_height/--resize_width is set: images keep their size (both are needed to resize)"
            )
        if self.encode_type and not self.encoded:
            log.info("encode_type specified, assuming encoded=true.")
        return DatumConverter(
            root,
            max(0, self.resize_height),
            max(0, self.resize_width),
            not self.gray,
            self.encoded or bool(self.encode_type),
            self.encode_type,
        )

    def write(
        self,
        entries: list[Any],
        convert: Callable[[Any], Converted],
        db_name: str | os.PathLike,
        tool: str,
        list_file: str | os.PathLike,
    ) -> tuple[int, int]:
        """:func:`write_converted` with these options (``list_file`` names the list in messages)."""
        return write_converted(
            entries,
            convert,
            db_name,
            self.backend,
            check_size=self.check_size,
            threads=self.threads,
            tool=tool,
            source=list_file,
        )


def convert_imageset_db(
    root: str, list_file: str | os.PathLike, db_name: str | os.PathLike, *, multi_label: bool = False, **options: Any
) -> tuple[int, int]:
    """Write the database; returns (records written, images that could not be read). ``multi_label``: caffe_ocr's
    lines and Datums of several labels (see the module docstring). ``options``: the fields of :class:`ImageOptions`
    (gray, shuffle, backend, resize_width, resize_height, check_size, encoded, encode_type, random_seed, threads)."""
    o = checked_options(options, db_name)
    entries = read_list(list_file, multi_label)
    if not multi_label:
        check_not_multi_label(entries, root, list_file)
    entries = listed_order(entries, o.shuffle, o.random_seed, list_file)
    if o.encoded and not o.encode_type:
        for e in entries:
            if "." not in e.name:
                log.warning("Failed to guess the encoding of '%s'", e.name)
    return o.write(entries, o.converter(root), db_name, "convert_imageset", list_file)


def checked_options(options: dict[str, Any], db_name: str | os.PathLike) -> ImageOptions:
    """The options with the backend's and encoding's names checked, and ``db_name`` free for a new database."""
    o = ImageOptions(**options)
    o.backend, o.encode_type = backend_name(o.backend), checked_encode_type(o.encode_type)
    check_new_database_path(db_name)
    return o


def checked_encode_type(encode_type: str) -> str:
    """``--encode_type`` without its dot, lower case; DataError if OpenCV cannot write it."""
    encode_type = encode_type.lower().lstrip(".")
    if encode_type and not cv2.haveImageWriter("x." + encode_type):
        raise DataError(f"--encode_type={encode_type}: OpenCV cannot write .{encode_type} images")
    return encode_type


def listed_order(entries: list[Any], shuffle: bool, random_seed: int, list_file: str | os.PathLike) -> list[Any]:
    """The list's entries in writing order (``--shuffle``: permuted by a generator seeded with ``random_seed``);
    DataError for an empty list."""
    if shuffle:
        log.info("Shuffling data")
        order = np.random.default_rng(random_seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    log.info("A total of %d images.", len(entries))
    if not entries:
        raise DataError(f"{list_file}: the image list is empty; nothing to convert")
    return entries


def write_converted(
    entries: Sequence[Any],
    convert: Callable[[Any], Converted],
    db_name: str | os.PathLike,
    backend: str,
    *,
    check_size: bool,
    threads: int,
    tool: str,
    source: str | os.PathLike,
) -> tuple[int, int]:
    """Convert ``entries`` (each with a ``name``) on ``threads`` threads and write them in order under Caffe's keys
    (``%08d_<name>``, the number being the entry's position), committing every 1000; entries that could not be read
    are warned about and skipped. Returns (records written, entries skipped); none read is a DataError naming the
    list ``source``, and no database is left behind."""
    count = failed = 0
    first_shape: tuple[int, int, int] | None = None
    cv_threads = cv2.getNumThreads()
    threads = threads if threads > 0 else default_threads()
    if threads > 1:
        cv2.setNumThreads(1)  # parallel over images, not inside each resize
    try:
        with new_database(db_name, backend) as db, Progress(len(entries), tool, "img") as bar:
            txn = db.transaction()
            for line_id, (entry, result) in enumerate(zip(entries, ordered_map(convert, entries, threads))):
                bar.update()
                if result.payload is None:
                    log.warning("%s", result.error)
                    failed += 1
                    continue
                if check_size:
                    if first_shape is None:
                        first_shape = result.shape
                    elif result.shape != first_shape:
                        raise DataError(
                            f"--check_size: {entry.name} is {'x'.join(map(str, result.shape))} but the first image "
                            f"is {'x'.join(map(str, first_shape))} (channels x height x width)"
                        )
                txn.put(item_key(line_id, entry.name.encode("utf-8", "surrogateescape")), result.payload)
                count += 1
                if count % COMMIT_EVERY == 0:
                    txn.commit()
                    log.info("Processed %d files.", count)
            if count == 0:
                raise DataError(f"{source}: none of the {len(entries)} listed images could be read; nothing written")
            if count % COMMIT_EVERY != 0:
                txn.commit()
                log.info("Processed %d files.", count)
    finally:
        cv2.setNumThreads(cv_threads)
    if failed:
        log.warning("%d of %d listed images could not be read and were skipped (named above).", failed, len(entries))
    return count, failed


@command("convert_imageset", "convert a list of images and labels to an LMDB/LevelDB of Datums")
def convert_imageset(argv: list[str]) -> int:
    parser = ToolParser("convert_imageset", USAGE)
    parser.add_bool(
        "multi_label",
        "Lines 'name.png LABEL LABEL ...' (the name ends at the first space after the last '.'); each Datum holds "
        "every label, as the OCR fork caffe_ocr's repeated label (neocaffe)",
    )
    add_image_flags(parser)
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    convert_imageset_db(
        args.root_folder, args.list_file, args.db_name, multi_label=args.multi_label, **image_options(args)
    )
    return 0


def add_image_flags(parser: ToolParser) -> None:
    """convert_imageset's flags and ``ROOTFOLDER/ LISTFILE DB_NAME`` (shared with the SSD fork's create_annoset)."""
    parser.add_bool("gray", "When this option is on, treat images as grayscale ones")
    parser.add_bool("shuffle", "Randomly shuffle the order of images and their labels")
    parser.add_argument("--backend", default="lmdb", help="The backend {lmdb, leveldb} for storing the result")
    parser.add_argument("--resize_width", type=gflags_int, default=0, help="Width images are resized to")
    parser.add_argument("--resize_height", type=gflags_int, default=0, help="Height images are resized to")
    parser.add_bool("check_size", "When this option is on, check that all the datum have the same size")
    parser.add_bool("encoded", "When this option is on, the encoded image will be save in datum")
    parser.add_argument(
        "--encode_type", default="", help="Optional: What type should we encode the image as ('png','jpg',...)."
    )
    parser.add_argument("--random_seed", type=gflags_int, default=0, help="Seed of --shuffle (neocaffe)")
    parser.add_argument("--threads", type=gflags_int, default=0, help="Decoding threads (neocaffe; 0: one per core)")
    parser.add_argument("root_folder", metavar="ROOTFOLDER/")
    parser.add_argument("list_file", metavar="LISTFILE")
    parser.add_argument("db_name", metavar="DB_NAME")


def image_options(args: Any) -> dict[str, Any]:
    """The :class:`ImageOptions` that :func:`add_image_flags`'s flags give, as keyword arguments."""
    return {name: getattr(args, name) for name in ImageOptions.__dataclass_fields__}
