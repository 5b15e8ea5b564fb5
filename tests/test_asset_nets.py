"""Every net in the assets made only of BVLC layer types builds and runs, in each phase it declares.

File-reading data layers (Data, ImageData, HDF5Data, WindowData) are replaced by DummyData of the
dataset's shape, so the nets run without their databases; TRAIN nets also run backward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ASSETS

import caffe
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_net_param

DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "WindowData"}
# per-item shape of the first top of each net's data layers (the datasets' own shapes)
ITEM_SHAPES = {
    "siamese": (2, 28, 28),
    "cifar10": (3, 32, 32),
    "mnist": (1, 28, 28),
    "hdf5_classification": (4,),
}
SKIP: set[str] = set()  # every asset net builds (the SSD fork layers included)


def _nets() -> list[Path]:
    found = []
    for path in sorted(ASSETS.rglob("*.prototxt")):
        rel = path.relative_to(ASSETS).as_posix()
        if "solver" not in path.name and rel not in SKIP:
            found.append(path)
    assert len(found) > 40
    return found


def _item_shape(path: Path, layer: pb.LayerParameter) -> tuple[int, ...]:
    for key, shape in ITEM_SHAPES.items():
        if key in path.as_posix():
            return shape
    crop = layer.transform_param.crop_size or layer.window_data_param.crop_size
    return (3, crop or 227, crop or 227)


def _with_dummy_data(path: Path, net: pb.NetParameter, batch: int = 2) -> pb.NetParameter:
    out = pb.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        if layer.type not in DATA_LAYERS:
            continue
        item = _item_shape(path, layer)
        tops = list(layer.top)
        include, name = list(layer.include), layer.name
        layer.Clear()
        layer.name, layer.type = name, "DummyData"
        layer.top.extend(tops)
        layer.include.extend(include)
        p = layer.dummy_data_param
        p.shape.add().dim.extend((batch, *item))
        p.data_filler.add(type="uniform", min=0, max=1)
        for _ in tops[1:]:
            p.shape.add().dim.append(batch)
            p.data_filler.add(type="constant", value=0)
    return out


def _states(net: pb.NetParameter) -> list[tuple[int, tuple[str, ...]]]:
    """The (phase, stages) states the net's data layers are written for (DIGITS nets use stages)."""
    states = set()
    for layer in net.layer:
        if layer.type == "DummyData":
            for rule in layer.include:
                stages = tuple(rule.stage)
                phase = rule.phase if rule.HasField("phase") else (caffe.TRAIN if "train" in stages else caffe.TEST)
                states.add((phase, stages))
    return sorted(states) or [(caffe.TEST, ())]


def _identity_batchnorm(net: caffe.Net) -> None:
    """Random-weight nets: BatchNorm statistics of mean 0, variance 1 (zeros would blow up)."""
    for layer in net.layers:
        if layer.type == "BatchNorm":
            layer.blobs[0].data[...] = 0
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1


@pytest.mark.parametrize("path", _nets(), ids=lambda p: str(p.relative_to(ASSETS)))
def test_net_builds_and_runs(path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "pylayers"))  # pycaffe's linreg uses 'pyloss'
    param = _with_dummy_data(path, read_net_param(path))
    assert {layer.type for layer in param.layer} <= set(caffe.layer_type_list())
    rng = np.random.default_rng(0)
    for phase, stages in _states(param):
        net = caffe.Net(param, phase, stages=list(stages))
        _identity_batchnorm(net)
        for name in net.inputs:
            blob = net.blobs[name]
            if blob.shape and blob.shape[0] > 1 and blob.count > 3 * 227 * 227:
                blob.reshape(1, *blob.shape[1:])
            blob.data[...] = rng.standard_normal(blob.shape)
        net.reshape()
        out = net.forward()
        assert out or any(layer.loss_weights and any(layer.loss_weights) for layer in net._layers)
        for name, value in out.items():
            assert np.isfinite(value).all(), f"{path.name} ({phase}): output {name} is not finite"
        if phase == caffe.TRAIN and any(net.layer_need_backward):
            net.backward()
            diffs = [b.diff for b in net.learnable_params]
            assert diffs and all(np.isfinite(d).all() for d in diffs)
            assert any(np.abs(d).sum() > 0 for d in diffs)
