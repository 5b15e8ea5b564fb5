"""``convert_cifar_data input_folder output_folder db_type``: CIFAR-10 binary batches -> two databases.

As Caffe's example converter: reads ``data_batch_1.bin`` .. ``data_batch_5.bin`` into
``OUTPUT/cifar10_train_<db_type>`` and ``test_batch.bin`` into ``OUTPUT/cifar10_test_<db_type>``;
each record of a batch file is 1 label byte and 3072 pixel bytes (the R, G then B planes of a
32x32 image), stored as a raw 3x32x32 Datum under the key ``%05d``; log lines "Writing Training
data", "Training Batch N", "Writing Testing data".

Differences: a batch file may hold any whole number of records (Caffe read exactly 10000 per
file), so the keys are the running record number - identical to Caffe's ``batch*10000 + item``
for the real data set; every input file is checked before anything is written (missing files and
lengths that are not a multiple of 3073 bytes are one-line errors); each database is created
atomically; wrong arguments give exit status 1 (Caffe printed the usage and returned 0).
"""

from __future__ import annotations

import logging
import os
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

CIFAR_SIZE = 32
IMAGE_BYTES = 3 * CIFAR_SIZE * CIFAR_SIZE
RECORD_BYTES = 1 + IMAGE_BYTES
TRAIN_BATCHES = 5
COMMIT_EVERY = 1000

USAGE = """convert_cifar_data input_folder output_folder db_type

This script converts the CIFAR-10 dataset (binary version) to the leveldb/lmdb format used by Caffe.
The input folder should contain the binary batch files data_batch_1.bin .. data_batch_5.bin and
test_batch.bin; db_type is lmdb or leveldb."""


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels N uint8, images N x 3 x 32 x 32 uint8) of one CIFAR-10 binary batch file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such CIFAR-10 batch file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the CIFAR-10 batch file ({e.strerror})") from None
    if not raw or len(raw) % RECORD_BYTES:
        raise DataError(
            f"{path}: {len(raw)} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records "
            "(1 label byte + 3072 pixel bytes; a CIFAR-100 file has 2 label bytes)"
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD_BYTES)
    return records[:, 0].copy(), records[:, 1:].reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE)


def _write(db_path: Path, backend: str, batches: list[tuple[np.ndarray, np.ndarray]], headings: list[str]) -> int:
    datum = pb.Datum(channels=3, height=CIFAR_SIZE, width=CIFAR_SIZE)
    total = sum(len(labels) for labels, _ in batches)
    index = 0
    with new_database(db_path, backend) as db, Progress(total, db_path.name, "img") as bar:
        txn = db.transaction()
        for heading, (labels, images) in zip(headings, batches):
            if heading:
                log.info("%s", heading)
            for label, image in zip(labels, images):
                datum.data = image.tobytes()
                datum.label = int(label)
                txn.put(b"%05d" % index, datum.SerializeToString())
                index += 1
                if index % COMMIT_EVERY == 0:
                    txn.commit()
                    bar.update(COMMIT_EVERY)
        txn.commit()
        bar.update(index % COMMIT_EVERY)
    return index


def convert_cifar(input_folder: str | os.PathLike, output_folder: str | os.PathLike, db_type: str) -> tuple[int, int]:
    """Write both databases; returns (training records, test records)."""
    backend = backend_name(db_type)
    src, out = Path(input_folder), Path(output_folder)
    if not src.is_dir():
        raise DataError(f"{input_folder}: no such folder (the folder holding the CIFAR-10 .bin batch files)")
    train_db, test_db = out / f"cifar10_train_{db_type}", out / f"cifar10_test_{db_type}"
    check_new_database_path(train_db)
    check_new_database_path(test_db)
    train = [read_cifar_batch(src / f"data_batch_{i}.bin") for i in range(1, TRAIN_BATCHES + 1)]
    test = read_cifar_batch(src / "test_batch.bin")
    log.info("Writing Training data")
    n_train = _write(train_db, backend, train, [f"Training Batch {i}" for i in range(1, TRAIN_BATCHES + 1)])
    log.info("Writing Testing data")
    n_test = _write(test_db, backend, [test], [""])
    log.info("Processed %d training and %d test images.", n_train, n_test)
    return n_train, n_test


@command("convert_cifar_data", "convert the CIFAR-10 binary batches to an LMDB/LevelDB train and test database")
def convert_cifar_data(argv: list[str]) -> int:
    parser = ToolParser("convert_cifar_data", USAGE)
    parser.add_argument("input_folder")
    parser.add_argument("output_folder")
    parser.add_argument("db_type")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    convert_cifar(args.input_folder, args.output_folder, args.db_type)
    return 0
