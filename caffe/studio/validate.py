"""Validation at submit: a model job's train, validation and deploy nets are built (shapes only) before the
training is queued, so that an unknown layer type, a wrong ``bottom:`` or a shape error comes back at once as a
field error naming the layer (and its line in the typed network), not minutes later from the training.

Building reads no data and no weights: each ``Data`` (``AnnotatedData``) layer is replaced by ``Input`` layers of the
shapes it would produce - the dataset's image size and channels (or the crop) and the batch - so nothing opens the LMDB.
The nets are first built with a batch of 1 (cheap); only when that fails are they built again with the real
batch, whose error is the one reported (a net may depend on its batch, e.g. a Reshape with a fixed first axis).
A net with Python layers is built in a layer worker (:mod:`caffe.studio.layer_worker`, the job's folder, only
with ``--allow_python_layers``; without it the consent rule refuses the net before this).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caffe import common
from caffe.errors import CaffeError, LayerError, NetError, UnknownLayerTypeError
from caffe.layers.python import python_layers
from caffe.limits import LimitError
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import parse_text, to_text

_LAYER = re.compile(r"layer '([^']+)'")
_SOURCE = re.compile(r"^NetParameter: ")
NET_ERRORS = (NetError, LayerError, UnknownLayerTypeError, LimitError)  # what building a net raises


@dataclass(frozen=True)
class NetToBuild:
    """One net of a job: what it is called in messages, its NetParameter, its phase and stages."""

    what: str  # "train net", "validation net", "deploy net"
    param: pb.NetParameter
    phase: int
    stages: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "text": to_text(self.param), "phase": self.phase, "stages": list(self.stages)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetToBuild:
        param = parse_text(str(d["text"]), pb.NetParameter(), str(d["what"]))
        return cls(str(d["what"]), param, int(d["phase"]), tuple(str(s) for s in d.get("stages", ())))


# ---------------------------------------------------------------------------------------------- the nets
Tops = dict[str, tuple[int, int, int]]  # (C, H, W) of a Data layer's first top when it is not the images


def _input_for(
    layer: pb.LayerParameter, image: tuple[int, int, int], batch: int | None, tops: Tops | None = None
) -> pb.LayerParameter:
    """The Input layer standing for a Data layer - tops (N, C, H, W) and (N,), C, H, W from ``tops`` for its first
    top when named there (a segmentation job's label maps) - or an AnnotatedData layer - the images at its resize
    and one box row (1, 1, 1, 8) - as the layer gives them."""
    c, h, w = (tops or {}).get(layer.top[0], image) if layer.top else image
    n = batch or layer.data_param.batch_size or 1
    if layer.type == "AnnotatedData":
        resize = layer.transform_param.resize_param
        size = (resize[0].height or h, resize[0].width or w) if resize else (h, w)
        shapes = [[n, c, *size], [1, 1, 1, 8]]
    else:
        crop = layer.transform_param.crop_size
        shapes = [[n, c, crop or h, crop or w], [n]]
    out = pb.LayerParameter(name=layer.name, type="Input", top=list(layer.top))
    out.include.extend(layer.include)
    out.exclude.extend(layer.exclude)
    for k in range(len(layer.top)):
        out.input_param.shape.add(dim=shapes[min(k, 1)])
    return out


def shapes_only(
    net: pb.NetParameter, image: tuple[int, int, int], batch: int | None, tops: Tops | None = None
) -> pb.NetParameter:
    """``net`` with each Data (AnnotatedData) layer replaced by Input layers of its shapes (``batch`` None: the
    layer's own)."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        out.layer.append(_input_for(layer, image, batch, tops) if layer.type in ("Data", "AnnotatedData") else layer)
    return out


def job_nets(
    train_val: pb.NetParameter,
    deploy: pb.NetParameter,
    image: tuple[int, int, int],
    *,
    validation: bool,
    batch: int | None,
    tops: Tops | None = None,
) -> list[NetToBuild]:
    """The nets a training builds (train, validation when it validates) and the deploy net."""
    param = shapes_only(train_val, image, batch, tops)
    nets = [NetToBuild("train net", param, common.TRAIN)]
    if validation:
        nets.append(NetToBuild("validation net", param, common.TEST))
    return [*nets, NetToBuild("deploy net", deploy, common.TEST, ("deploy",))]


def build_all(nets: list[NetToBuild]) -> None:
    """Build each net (no weights); the first failure raises, its message prefixed by the net."""
    from caffe.net import Net

    for net in nets:
        try:
            Net(net.param, net.phase, stages=list(net.stages) or None)
        except CaffeError as e:
            raise type(e)(f"{net.what}: {_SOURCE.sub('', str(e))}") from None


# ---------------------------------------------------------------------------------------------- messages
def layer_line(text: str, layer_name: str) -> int | None:
    """The line of ``name: "<layer_name>"`` in a prototxt's layer (1-based), None when not found."""
    pattern = re.compile(r"""(?:^|[\s{])name\s*:\s*["']""" + re.escape(layer_name) + r"""["']""")
    seen_layer = False
    for number, line in enumerate(text.splitlines(), 1):
        seen_layer = seen_layer or re.match(r"^\s*layers?\s*\{", line) is not None
        if seen_layer and pattern.search(line):
            return number
    return None


def where(message: str, source: str, text: str | None) -> str:
    """``message`` prefixed with ``source:line:`` of the layer it names (when the text has it)."""
    found = _LAYER.search(message)
    line = layer_line(text, found.group(1)) if found and text else None
    return f"{source}:{line}: {message}" if line else message


# ---------------------------------------------------------------------------------------------- checking
def check(
    train_val: pb.NetParameter,
    deploy: pb.NetParameter,
    image: tuple[int, int, int],
    *,
    validation: bool,
    job_dir: Path | None = None,
    tops: Tops | None = None,
) -> None:
    """Build the job's nets (a layer worker in ``job_dir`` when they have Python layers: the caller checked
    the consent); raises the first net's error. ``tops``: see :func:`_input_for`."""
    if python_layers(train_val) or python_layers(deploy):
        _check_in_worker(train_val, deploy, image, validation, job_dir, tops)
        return
    try:
        build_all(job_nets(train_val, deploy, image, validation=validation, batch=1, tops=tops))
    except CaffeError:
        build_all(job_nets(train_val, deploy, image, validation=validation, batch=None, tops=tops))


def _check_in_worker(
    train_val: pb.NetParameter,
    deploy: pb.NetParameter,
    image: tuple[int, int, int],
    validation: bool,
    job_dir: Path | None,
    tops: Tops | None = None,
) -> None:
    from caffe.studio.layer_worker import validate_nets

    if job_dir is None:
        raise ValueError("a net with Python layers is validated in its job's folder")
    for batch in (1, None):
        nets = job_nets(train_val, deploy, image, validation=validation, batch=batch, tops=tops)
        error = validate_nets(job_dir, [n.to_dict() for n in nets])
        if error is None:
            return
    raise error
