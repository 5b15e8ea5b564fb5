"""The mean image of a database of Datums, and its BlobProto as Caffe's ``compute_image_mean`` writes it.

Raw (``data``), float (``float_data``) and encoded Datums (decoded with their own channels, as
``DecodeDatumNative``) are summed exactly (integers for bytes, float64 for floats); a Datum whose size differs
from the first one's is an error naming its key; an empty database is an error.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from caffe.data.datum import datum_to_array, parse_datum
from caffe.data.db import backend_name, detect_backend, open_db
from caffe.errors import DataError
from caffe.proto import caffe_pb2 as pb
from caffe.util.progress import Progress
from caffe.util.threads import default_threads, ordered_map

log = logging.getLogger("caffe")

LOG_EVERY = 10000


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
