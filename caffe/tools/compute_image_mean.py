"""``compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]``: the mean Datum of a database, as a BlobProto.

As Caffe's tool: raw (``data``), float (``float_data``) and encoded Datums (decoded with their own
channels, as ``DecodeDatumNative``) are summed; the mean is written as a binary BlobProto with
``num: 1``, ``channels``, ``height``, ``width`` - the legacy dimension fields Caffe's tool writes,
which every reader of mean files understands - and the per-channel means are logged.

Differences: the sum is exact (integers for bytes, float64 for floats; Caffe summed in float32,
which drifts on millions of images); a Datum whose size differs from the first one's is an error
naming its key (Caffe aborted on a size check); an empty database is an error; ``OUTPUT_FILE`` is
written atomically; without ``--backend`` the database's kind is detected (Caffe assumed LMDB).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from caffe.data.datum import datum_to_array, parse_datum
from caffe.data.db import backend_name, detect_backend, open_db
from caffe.errors import DataError
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import atomic_write
from caffe.tools.cli import command
from caffe.tools.progress import Progress, ToolParser, default_threads, ordered_map, parse_flags

log = logging.getLogger("caffe")

LOG_EVERY = 10000

USAGE = """compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]

Compute the mean_image of a set of images given by a leveldb/lmdb."""


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _decode(item: tuple[bytes, bytes]) -> tuple[bytes, np.ndarray, bool]:
    key, value = item
    name = f"record {key.decode('utf-8', 'replace')!r}"
    datum = parse_datum(value, name)
    return key, datum_to_array(datum, name), bool(datum.encoded)


def compute_mean(input_db: str, backend: str | None = None, threads: int = 0) -> tuple[np.ndarray, int]:
    """The mean (C, H, W) float64 array over every Datum of ``input_db`` and the number of Datums."""
    backend = backend_name(backend) if backend else detect_backend(input_db)
    with open_db(input_db, backend, "read") as db:
        total = len(db)
        if total == 0:
            raise DataError(f"{input_db}: the database is empty; there is no mean to compute")
        records = iter(db.cursor())
        first = next(records)
        if parse_datum(first[1], f"{input_db} first record").encoded:
            threads = threads if threads > 0 else default_threads()  # decoding is the work: spread it
        else:
            threads = 1  # summing bytes is faster than handing them to threads
        total_sum: np.ndarray | None = None
        shape: tuple[int, ...] = ()
        count = 0
        with Progress(total, "compute_image_mean", "img") as bar:
            for key, arr, encoded in ordered_map(_decode, itertools.chain([first], records), threads):
                if total_sum is None:
                    if encoded:
                        log.info("Decoding Datum")
                    shape = arr.shape
                    total_sum = np.zeros(shape, np.int64 if arr.dtype == np.uint8 else np.float64)
                    log.info("Starting iteration")
                if arr.shape != shape:
                    raise DataError(
                        f"{input_db}: record {key.decode('utf-8', 'replace')!r} is {_shape_text(arr.shape)} but the "
                        f"first record is {_shape_text(shape)} (channels x height x width); a mean needs equal sizes"
                    )
                if arr.dtype != np.uint8 and total_sum.dtype == np.int64:
                    total_sum = total_sum.astype(np.float64)
                total_sum += arr
                count += 1
                bar.update()
                if count % LOG_EVERY == 0:
                    log.info("Processed %d files.", count)
        if count % LOG_EVERY != 0:
            log.info("Processed %d files.", count)
    assert total_sum is not None
    return total_sum / count, count


def mean_blob_proto(mean: np.ndarray) -> pb.BlobProto:
    """A (C, H, W) mean as the BlobProto Caffe's tool writes: num 1, channels, height, width, float data."""
    c, h, w = mean.shape
    blob = pb.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(np.asarray(mean, dtype=np.float32).ravel().tolist())
    return blob


@command("compute_image_mean", "compute the mean image of an LMDB/LevelDB of Datums (a .binaryproto)")
def compute_image_mean(argv: list[str]) -> int:
    parser = ToolParser("compute_image_mean", USAGE)
    parser.add_argument(
        "--backend", default=None, help="The backend {leveldb, lmdb} containing the images (default: detected)"
    )
    parser.add_argument("--threads", type=int, default=0, help="Decoding threads for encoded Datums (neocaffe)")
    parser.add_argument("input_db", metavar="INPUT_DB")
    parser.add_argument("output_file", metavar="OUTPUT_FILE", nargs="?")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    mean, _ = compute_mean(args.input_db, args.backend, args.threads)
    blob = mean_blob_proto(mean)
    if args.output_file:
        log.info("Write to %s", args.output_file)
        try:
            atomic_write(args.output_file, blob.SerializeToString())
        except OSError as e:
            raise DataError(f"{args.output_file}: cannot write the mean file ({e.strerror})") from None
    channels = mean.shape[0]
    log.info("Number of channels: %d", channels)
    for c, value in enumerate(mean.reshape(channels, -1).mean(axis=1)):
        log.info("mean_value channel [%d]: %g", c, value)
    return 0
