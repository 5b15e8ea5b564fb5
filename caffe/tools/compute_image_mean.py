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

import logging

from caffe.errors import DataError
from caffe.protoio import atomic_write
from caffe.tools.flags import ToolParser, parse_flags
from caffe.tools.registry import command
from caffe.util.mean import compute_mean, mean_blob_proto

log = logging.getLogger("caffe")

USAGE = """compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]

Compute the mean_image of a set of images given by a leveldb/lmdb."""


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
