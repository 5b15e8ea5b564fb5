"""``convert_mnist_data [FLAGS] input_image_file input_label_file output_db_file``: MNIST idx files -> Datums.

As Caffe's example converter: 1 x rows x cols raw Datums (rows = cols = 28 for MNIST) with the label
byte, keys ``%08d`` (the item's index), LMDB by default (``--backend=leveldb``), log lines "A total
of N items.", "Rows: R Cols: C", "Processed N files.".

Also: the idx files may be gzipped (``train-images-idx3-ubyte.gz``; a missing ``FILE`` is read
from ``FILE.gz`` when that exists), magic numbers, item counts and file lengths are checked with
one-line errors (Caffe aborted on bad magic and mismatched counts and read garbage past a
truncated file), wrong arguments give exit status 1 (Caffe's tool printed the usage and returned
0), and the database is created atomically.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from caffe.data.db import backend_name
from caffe.errors import DataError
from caffe.proto import caffe_pb2 as pb
from caffe.tools.flags import ToolParser, parse_flags
from caffe.tools.registry import command
from caffe.util.database import check_new_database_path, new_database
from caffe.util.progress import Progress

log = logging.getLogger("caffe")

IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
COMMIT_EVERY = 1000

USAGE = """convert_mnist_data [FLAGS] input_image_file input_label_file output_db_file

This script converts the MNIST dataset to the lmdb/leveldb format used by Caffe to load data.
The idx files may be gzipped; data/mnist/get_mnist.sh downloads them."""


def read_idx(path: str | os.PathLike) -> tuple[bytes, str]:
    """The bytes of an idx file (gunzipped when it is gzipped; ``path.gz`` when ``path`` is missing)."""
    p = Path(path)
    if not p.exists() and not str(p).endswith(".gz") and Path(f"{p}.gz").is_file():
        p = Path(f"{p}.gz")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"Unable to open file {path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"Unable to open file {path}: it is a folder") from None
    except OSError as e:
        raise DataError(f"Unable to open file {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{p}: corrupt or truncated gzip file ({e})") from None
    return raw, str(p)


def _header(data: bytes, name: str, count: int, what: str) -> tuple[int, ...]:
    if len(data) < 4 * count:
        raise DataError(f"{name}: {len(data)} bytes is too short for an MNIST {what} file header")
    return struct.unpack(f">{count}I", data[: 4 * count])


def load_mnist(image_file: str | os.PathLike, label_file: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images N x rows x cols uint8, labels N uint8) from MNIST idx files, checked."""
    images_raw, image_name = read_idx(image_file)
    labels_raw, label_name = read_idx(label_file)
    magic = _header(images_raw, image_name, 1, "image")[0]
    if magic != IMAGE_MAGIC:
        hint = " (this is a label file: swap the arguments?)" if magic == LABEL_MAGIC else ""
        raise DataError(f"{image_name}: incorrect image file magic {magic}, expected {IMAGE_MAGIC}{hint}")
    magic = _header(labels_raw, label_name, 1, "label")[0]
    if magic != LABEL_MAGIC:
        hint = " (this is an image file: swap the arguments?)" if magic == IMAGE_MAGIC else ""
        raise DataError(f"{label_name}: incorrect label file magic {magic}, expected {LABEL_MAGIC}{hint}")
    _, num_items, rows, cols = _header(images_raw, image_name, 4, "image")
    _, num_labels = _header(labels_raw, label_name, 2, "label")
    if num_items != num_labels:
        raise DataError(f"{image_name} holds {num_items} images but {label_name} holds {num_labels} labels")
    need = 16 + num_items * rows * cols
    if len(images_raw) < need:
        raise DataError(
            f"{image_name}: truncated: {num_items} images of {rows}x{cols} need {need} bytes, the file has "
            f"{len(images_raw)}"
        )
    if len(labels_raw) < 8 + num_labels:
        raise DataError(
            f"{label_name}: truncated: {num_labels} labels need {8 + num_labels} bytes, the file has {len(labels_raw)}"
        )
    images = np.frombuffer(images_raw, np.uint8, num_items * rows * cols, 16).reshape(num_items, rows, cols)
    labels = np.frombuffer(labels_raw, np.uint8, num_labels, 8)
    return images, labels


def convert_mnist(
    image_file: str | os.PathLike, label_file: str | os.PathLike, db_path: str | os.PathLike, backend: str = "lmdb"
) -> int:
    """Write the MNIST files as a database of raw Datums; returns the number of items."""
    backend = backend_name(backend)
    check_new_database_path(db_path)
    images, labels = load_mnist(image_file, label_file)
    num, rows, cols = images.shape
    log.info("A total of %d items.", num)
    log.info("Rows: %d Cols: %d", rows, cols)
    datum = pb.Datum(channels=1, height=rows, width=cols)
    flat = images.reshape(num, rows * cols)
    with new_database(db_path, backend) as db, Progress(num, "convert_mnist_data", "img") as bar:
        txn = db.transaction()
        for i in range(num):
            datum.data = flat[i].tobytes()
            datum.label = int(labels[i])
            txn.put(b"%08d" % i, datum.SerializeToString())
            if (i + 1) % COMMIT_EVERY == 0:
                txn.commit()
                bar.update(COMMIT_EVERY)
        if num % COMMIT_EVERY:
            txn.commit()
            bar.update(num % COMMIT_EVERY)
    log.info("Processed %d files.", num)
    return num


@command("convert_mnist_data", "convert MNIST idx files (optionally gzipped) to an LMDB/LevelDB of Datums")
def convert_mnist_data(argv: list[str]) -> int:
    parser = ToolParser("convert_mnist_data", USAGE)
    parser.add_argument("--backend", default="lmdb", help="The backend for storing the result")
    parser.add_argument("input_image_file")
    parser.add_argument("input_label_file")
    parser.add_argument("output_db_file")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    convert_mnist(args.input_image_file, args.input_label_file, args.output_db_file, args.backend)
    return 0
