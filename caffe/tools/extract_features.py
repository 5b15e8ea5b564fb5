"""``extract_features pretrained_net_param feature_extraction_proto_file blob1[,blob2,...] db1[,db2,...]
num_mini_batches db_type [CPU|GPU] [DEVICE_ID]``: store blobs of a net, item by item, in databases.

As Caffe's tool: the net is built in the TEST phase with the trained weights copied in, run
forward ``num_mini_batches`` times (its data layer supplies the inputs), and every item of each
named blob is stored in the matching new database as a Datum of ``float_data`` with ``channels``,
``height``, ``width`` the blob's legacy dimensions (an ``InnerProduct`` output of N x D gives D x 1
x 1), keyed ``%010d`` by the item's running number; log lines "Extracting Features", "Extracted
features of N query images for feature blob X" (every 1000 items and at the end), "Successfully
extracted the features!".

Differences: Caffe logged its progress at ERROR level; here it is INFO. Databases are created
atomically, so a failure leaves none. A blob with more than 4 axes (which Caffe refused) is stored
with channels = its count per item and height = width = 1. The mode (CPU/GPU) chosen here is
restored when the tool returns.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from caffe import common
from caffe.data.db import backend_name, feature_key
from caffe.errors import CaffeError, DataError
from caffe.proto import caffe_pb2 as pb
from caffe.tools.flags import ToolParser, parse_flags
from caffe.tools.registry import command
from caffe.util.database import check_new_database_path, new_database
from caffe.util.progress import Progress

log = logging.getLogger("caffe")

COMMIT_EVERY = 1000

USAGE = """extract_features pretrained_net_param feature_extraction_proto_file \
extract_feature_blob_name1[,name2,...] save_feature_dataset_name1[,name2,...] num_mini_batches db_type \
[CPU/GPU] [DEVICE_ID=0]

Extract features of the input data produced by a trained net. Several features can be extracted in one
pass by naming several blobs and as many databases, separated by ','."""


def legacy_dims(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(num, channels, height, width) of a blob shape as Caffe's legacy accessors give them."""
    if len(shape) > 4:
        num = shape[0]
        return num, int(np.prod(shape[1:])), 1, 1
    padded = tuple(shape) + (1,) * (4 - len(shape))
    return padded[0], padded[1], padded[2], padded[3]


def extract_features_to_dbs(
    weights: str,
    proto: str,
    blob_names: list[str],
    db_names: list[str],
    num_mini_batches: int,
    db_type: str,
) -> list[int]:
    """Run the extraction (in the current mode); returns the number of items stored per blob."""
    from caffe.net import Net

    backend = backend_name(db_type)
    if len(blob_names) != len(db_names):
        raise CaffeError(
            f"the number of blob names ({len(blob_names)}) and dataset names ({len(db_names)}) must be equal"
        )
    if num_mini_batches < 0:
        raise CaffeError(f"num_mini_batches must not be negative, got {num_mini_batches}")
    for name in db_names:
        check_new_database_path(name)
    net = Net(proto, common.TEST, weights=weights)
    for name in blob_names:
        if name not in net.blobs:
            raise CaffeError(f"Unknown feature blob name {name} in the network {proto}")
    counts = [0] * len(blob_names)
    with contextlib.ExitStack() as stack:
        dbs = []
        for name in db_names:
            log.info("Opening dataset %s", name)
            dbs.append(stack.enter_context(new_database(name, backend)))
        txns = [db.transaction() for db in dbs]
        log.info("Extracting Features")
        datum = pb.Datum()
        bar = stack.enter_context(Progress(num_mini_batches, "extract_features", "batch"))
        for _ in range(num_mini_batches):
            net.forward(blobs=blob_names)
            for i, name in enumerate(blob_names):
                data = np.asarray(net.blobs[name].data, dtype=np.float32)
                num, channels, height, width = legacy_dims(tuple(data.shape))
                items = data.reshape(num, -1)
                for n in range(num):
                    datum.Clear()
                    datum.channels, datum.height, datum.width = channels, height, width
                    datum.float_data.extend(items[n].tolist())
                    txns[i].put(feature_key(counts[i]), datum.SerializeToString())
                    counts[i] += 1
                    if counts[i] % COMMIT_EVERY == 0:
                        txns[i].commit()
                        log.info("Extracted features of %d query images for feature blob %s", counts[i], name)
            bar.update()
        for i, name in enumerate(blob_names):
            if counts[i] % COMMIT_EVERY != 0:
                txns[i].commit()
            log.info("Extracted features of %d query images for feature blob %s", counts[i], name)
    log.info("Successfully extracted the features!")
    return counts


@command("extract_features", "store the values of named blobs of a trained net in LMDB/LevelDB databases")
def extract_features(argv: list[str]) -> int:
    parser = ToolParser("extract_features", USAGE)
    for name in (
        "pretrained_net_param",
        "feature_extraction_proto_file",
        "blob_names",
        "dataset_names",
        "num_mini_batches",
        "db_type",
    ):
        parser.add_argument(name)
    parser.add_argument("mode", nargs="?", default="CPU", metavar="CPU/GPU")
    parser.add_argument("device_id", nargs="?", default="0", metavar="DEVICE_ID")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    try:
        num_mini_batches = int(args.num_mini_batches)
    except ValueError:
        raise DataError(f"num_mini_batches must be an integer, got {args.num_mini_batches!r}") from None
    previous = (common.mode(), common.device().index or 0)
    try:
        if args.mode == "GPU":
            log.info("Using GPU")
            try:
                device_id = int(args.device_id)
            except ValueError:
                raise CaffeError(f"DEVICE_ID must be an integer, got {args.device_id!r}") from None
            if device_id < 0:
                raise CaffeError(f"DEVICE_ID must not be negative, got {device_id}")
            log.info("Using Device_id=%d", device_id)
            common.set_device(device_id)
            common.set_mode_gpu()
        else:
            log.info("Using CPU")
            common.set_mode_cpu()
        extract_features_to_dbs(
            args.pretrained_net_param,
            args.feature_extraction_proto_file,
            args.blob_names.split(","),
            args.dataset_names.split(","),
            num_mini_batches,
            args.db_type,
        )
    finally:
        if previous[0] == "GPU":
            common.set_device(previous[1])
            common.set_mode_gpu()
        else:
            common.set_mode_cpu()
    return 0
