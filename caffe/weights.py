"""Weights files: ``.caffemodel`` and HDF5 (``/data/<layer>/<i>``) read and write.

Copying follows Caffe's ``CopyTrainedLayersFrom``: source layers are matched to the net's layers by
name; unmatched source layers are ignored, net layers missing from the file keep their fillers; a
blob-count or shape mismatch is an error naming the layer, the blob index and both shapes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from caffe.blob import (  # noqa: F401  (BlobProto conversion lives in blob.py; re-exported here)
    Shape,
    array_to_blob_proto,
    blob_proto_to_array,
    blob_proto_to_tensor,
    legacy_shape_matches,
    proto_shape,
)
from caffe.errors import WeightsError
from caffe.limits import check_regular_file, hdf5_errors
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import atomic_write, read_net_param_binary

if TYPE_CHECKING:
    from caffe.net import Net

log = logging.getLogger("caffe")

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# ---------------------------------------------------------------------------- reading files
def is_hdf5(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file starting with the HDF5 signature (never opens a device or FIFO)."""
    try:
        with open(check_regular_file(path, "weights file", WeightsError), "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except (WeightsError, OSError):
        return False


def load_net_param(path: str | os.PathLike) -> pb.NetParameter:
    """The NetParameter of a ``.caffemodel`` (V0/V1 upgraded)."""
    return read_net_param_binary(path)


def copy_trained_layers(net: Net, source: pb.NetParameter | str | os.PathLike) -> list[str]:
    """Copy weights into ``net`` by layer name; returns the names of the layers copied."""
    if not isinstance(source, pb.NetParameter):
        check_regular_file(source, "weights file", WeightsError)
        if is_hdf5(source):
            return copy_trained_layers_hdf5(net, source)
        origin = str(source)
        source = load_net_param(source)
    else:
        origin = "NetParameter"
    copied = []
    for src in source.layer:
        target = net.layer_by_name(src.name)
        if target is None:
            log.info("Ignoring source layer %s", src.name)
            continue
        blobs = target.blobs
        if len(src.blobs) != len(blobs):
            raise WeightsError(
                f"{origin}: incompatible number of blobs for layer '{src.name}': "
                f"the file has {len(src.blobs)}, the net expects {len(blobs)}"
            )
        for j, (blob, bp) in enumerate(zip(blobs, src.blobs, strict=True)):
            if not legacy_shape_matches(blob.shape, bp):
                raise WeightsError(
                    f"{origin}: cannot copy param {j} weights from layer '{src.name}'; shape mismatch. "
                    f"Source param shape is {' '.join(map(str, proto_shape(bp)))}; "
                    f"target param shape is {' '.join(map(str, blob.shape))}"
                )
            value = blob_proto_to_tensor(bp, expect=blob.shape, where=f"{origin} layer {src.name}", keep_double=True)
            net.set_param_data(blob, value)
        if blobs:
            copied.append(src.name)
            log.info("Copying source layer %s", src.name)
    return copied


def copy_trained_layers_hdf5(net: Net, path: str | os.PathLike) -> list[str]:
    """Copy ``/data/<layer>/<i>`` datasets into ``net`` by layer name; any corrupt content is a WeightsError."""
    import h5py

    check_regular_file(path, "HDF5 weights file", WeightsError)
    with hdf5_errors(path, "HDF5 weights file", WeightsError), h5py.File(path, "r") as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            raise WeightsError(f"{path}: HDF5 weights file has no /data group")
        # list() first: h5py's iterators hold its global lock between items, and one abandoned by an error would
        # keep it until collected - by another thread, which cannot release it: every other h5py user then waits
        names = list(data)
        return [name for name in names if _copy_hdf5_layer(net, path, name, data.get(name))]


def _copy_hdf5_layer(net: Net, path: str | os.PathLike, name: str, group: object) -> bool:
    """Copy one layer's datasets; False when the net has no such layer or it has no blobs."""
    import h5py

    layer = net.layer_by_name(name)
    if layer is None:
        log.info("Ignoring source layer %s", name)
        return False
    if not isinstance(group, h5py.Group):
        raise WeightsError(f"{path}: /data/{name} is not a group of blobs")
    if len(group) > len(layer.blobs):
        raise WeightsError(
            f"{path}: incompatible number of blobs for layer '{name}': "
            f"the file has {len(group)}, the net expects {len(layer.blobs)}"
        )
    for j, blob in enumerate(layer.blobs):
        node = group.get(str(j))
        if node is None:
            if net.param_is_shared(layer, j):
                continue
            raise WeightsError(f"{path}: layer '{name}' is missing blob {j} in /data/{name}")
        if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "fiu":
            raise WeightsError(f"{path}: /data/{name}/{j} is not a numeric dataset")
        if tuple(node.shape or ()) != tuple(blob.shape):
            raise WeightsError(
                f"{path}: cannot copy param {j} weights from layer '{name}'; shape mismatch. "
                f"Source param shape is {' '.join(map(str, node.shape or ()))}; "
                f"target param shape is {' '.join(map(str, blob.shape))}"
            )
        kind = np.float64 if node.dtype == np.float64 else np.float32
        net.set_param_data(blob, torch.from_numpy(np.asarray(node[()], dtype=kind)))
    return bool(layer.blobs)


# ---------------------------------------------------------------------------- writing files
def net_to_proto(net: Net, write_diff: bool = False) -> pb.NetParameter:
    """Caffe's ``Net::ToProto``: every layer's parameter (split layers included) with its blobs."""
    param = pb.NetParameter()
    param.name = net.name
    for layer in net.host_layers:
        lp = param.layer.add()
        lp.CopyFrom(layer.layer_param)
        del lp.blobs[:]
        for blob in layer.blobs:
            double = blob.dtype == torch.float64
            lp.blobs.append(array_to_blob_proto(blob.data, blob.diff if write_diff else None, double=double))
    return param


def save_caffemodel(net: Net, path: str | os.PathLike, write_diff: bool = False) -> None:
    atomic_write(path, net_to_proto(net, write_diff).SerializeToString())


def save_hdf5(net: Net, path: str | os.PathLike, write_diff: bool = False) -> None:
    """Caffe's ``Net::ToHDF5``: /data/<layer>/<i> (owners of shared params only), optional /diff."""
    import h5py

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            for layer in net.host_layers:
                gd = data.require_group(layer.name)
                gf = diff.require_group(layer.name) if diff is not None else None
                for j, blob in enumerate(layer.blobs):
                    kind = np.float64 if blob.dtype == torch.float64 else np.float32  # as Caffe's Dtype
                    if not net.param_is_shared(layer, j):
                        gd.create_dataset(str(j), data=np.asarray(blob.data, dtype=kind))
                    if gf is not None:
                        gf.create_dataset(str(j), data=np.asarray(blob.diff, dtype=kind))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
