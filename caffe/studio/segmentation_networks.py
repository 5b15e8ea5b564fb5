"""Segmentation networks for the studio's segmentation models: one net in, the job's train/val and deploy nets out.

A segmentation model job starts from a net as FCN, SegNet, ENet or DIGITS' FCN-AlexNet users hold them: a deploy
net (``Input`` ... class scores N x C x H x W, maybe a ``Softmax``/``ArgMax`` after them) or a training net (its
data layers - ``Data`` pairs, SegNet's ``DenseImageData``, DeepLab's ``ImageSegData`` - and a
``SoftmaxWithLoss``). :func:`seg_parts` keeps the body and finds the score
blob: the loss's input, else the net's output before its Softmax/ArgMax.

:func:`retarget` sets the number of classes on the score layers: the convolutions and deconvolutions with one
output per class that lead to the score blob through layers that keep the classes apart (Crop, Eltwise, ReLU,
Dropout, BatchNorm, Scale, Upsample, ...; FCN-8s' three score branches). With pretrained weights a changed layer
is renamed ``*_retrain`` so Caffe's copy-by-name starts it fresh; a renamed deconvolution that does not learn
(FCN's fixed upsampling, ``lr_mult: 0``) becomes a per-class bilinear upsampling (``group`` = classes, the
``bilinear`` filler), as FCN's surgery initializes it.

:func:`train_val_net` writes two ``Data`` layers per phase - the images (with the mean) and the label maps, read in
the same record order, never mirrored or cropped apart - the body, ``SoftmaxWithLoss`` over the pixels
(``ignore_label: 255``, VOC's void; normalized by the counted pixels unless the net's own loss says otherwise,
e.g. SegNet's class weighting) and a per-pixel ``Accuracy`` in TEST. :func:`deploy_net` gives the deploy net at
the dataset's image size.
"""

from __future__ import annotations

from dataclasses import dataclass

from caffe.errors import NetError
from caffe.proto import caffe_pb2 as pb
from caffe.studio.networks import bare_copy, included, layers_behind, producer, retrain_name

SOURCE_TYPES = {"Input", "Data", "DenseImageData", "ImageSegData", "ImageData", "HDF5Data", "DummyData", "MemoryData"}
TAIL_TYPES = ("Softmax", "ArgMax")  # after the scores in deploy nets
CLASS_PRESERVING = {"Crop", "Eltwise", "ReLU", "PReLU", "Dropout", "BatchNorm", "BN", "Scale", "Upsample", "Power",
                    "Interp", "Bias", "Sigmoid", "TanH"}  # fmt: skip
SCORE_TYPES = ("Convolution", "Deconvolution")
IGNORE_LABEL = 255
LABEL_BLOB = "label"
ACCURACY_BLOB = "accuracy"


@dataclass
class SegParts:
    """A segmentation network taken apart: see the module."""

    name: str
    input_blob: str
    body: list[pb.LayerParameter]
    score: str
    tail: list[pb.LayerParameter]  # Softmax/ArgMax after the scores (deploy only)
    loss: pb.LayerParameter | None  # the net's own SoftmaxWithLoss (bottoms: score, label)
    train_transform: pb.TransformationParameter | None = None
    train_batch: int = 0
    test_batch: int = 0


def _batch(layer: pb.LayerParameter) -> int:
    if layer.type == "DenseImageData":
        return int(layer.dense_image_data_param.batch_size)
    if layer.type in ("ImageData", "ImageSegData"):
        return int(layer.image_data_param.batch_size)
    return int(layer.data_param.batch_size)


def seg_parts(net: pb.NetParameter) -> SegParts:
    """Take a segmentation network apart (see the module); a NetError says what is missing."""
    name = net.name or "network"
    layers = list(net.layer)  # one wrapper per layer for the whole function: the id()s below stay theirs
    sources = [x for x in layers if x.type in SOURCE_TYPES and not x.bottom]
    image_sources = [x for x in sources if x.top and x.top[0] != LABEL_BLOB]
    input_blob = image_sources[0].top[0] if image_sources else (net.input[0] if net.input else "data")
    losses = [x for x in layers if x.type == "SoftmaxWithLoss"]
    if len(losses) > 1:
        raise NetError(f"network '{name}': {len(losses)} SoftmaxWithLoss layers; one expected")
    dropped = {id(x) for x in sources} | {id(x) for x in losses}
    dropped |= {id(x) for x in layers if x.type in ("Accuracy", "Silence")}
    rest = [x for x in layers if id(x) not in dropped]
    tail: list[pb.LayerParameter] = []
    if losses:
        if len(losses[0].bottom) < 2:
            raise NetError(f"network '{name}': layer '{losses[0].name}' (SoftmaxWithLoss) needs scores and labels")
        score = losses[0].bottom[0]
        rest = [x for x in rest if not (x.type in TAIL_TYPES and score in x.bottom)]
    else:
        unread: dict[str, None] = {}  # Caffe's outputs: tops no later layer reads (an in-place layer re-makes one)
        for x in rest:
            for b in x.bottom:
                unread.pop(b, None)
            unread.update(dict.fromkeys(x.top))
        outputs = list(unread)
        if not outputs:
            raise NetError(f"network '{name}': no output blob (a segmentation net ends in N x C x H x W scores)")
        score = outputs[-1]
        i = producer(rest, score)
        while i is not None and rest[i].type in TAIL_TYPES and len(rest[i].bottom) == 1:
            tail.insert(0, rest[i])
            score = rest[i].bottom[0]
            i = producer(rest, score, i)
        rest = [x for x in rest if all(x is not t for t in tail)]
    if producer(rest, score) is None:
        raise NetError(f"network '{name}': no layer makes its score blob '{score}'")
    parts = SegParts(name, input_blob, [bare_copy(x) for x in rest], score, [bare_copy(x) for x in tail], None)
    if losses:
        parts.loss = bare_copy(losses[0])
    for layer in image_sources:
        test = any(r.phase == pb.TEST for r in layer.include) or any("val" in r.stage for r in layer.include)
        if test:
            parts.test_batch = parts.test_batch or _batch(layer)
        elif parts.train_transform is None:
            parts.train_batch = _batch(layer)
            parts.train_transform = pb.TransformationParameter()
            parts.train_transform.CopyFrom(layer.transform_param)
    return parts


# ---------------------------------------------------------------------------------------------- classes
def score_layers(parts: SegParts, classes: int) -> list[pb.LayerParameter]:
    """The convolutions and deconvolutions with ``classes`` outputs that lead to the score blob through
    class-preserving layers (see the module), in net order."""

    def step(layer: pb.LayerParameter) -> tuple[bool, list[str]]:
        if layer.type in SCORE_TYPES:
            keep = layer.convolution_param.num_output == classes
            return keep, [layer.bottom[0]] if keep else []
        if layer.type == "Crop":
            return False, [layer.bottom[0]]
        return False, list(layer.bottom) if layer.type in CLASS_PRESERVING else []

    return layers_behind(parts.body, parts.score, step)


def classes_of(parts: SegParts) -> int:
    """The number of classes the net scores: the channels of the layer making the score blob."""
    body = parts.body
    i = producer(body, parts.score)
    while i is not None and body[i].type not in SCORE_TYPES and body[i].bottom:
        i = producer(body, body[i].bottom[0], i)
    layer = body[i] if i is not None else None
    if layer is None or layer.type not in SCORE_TYPES:
        raise NetError(
            f"network '{parts.name}': no Convolution or Deconvolution layer makes its scores '{parts.score}'"
        )
    return int(layer.convolution_param.num_output)


def _learns(layer: pb.LayerParameter) -> bool:
    return not layer.param or layer.param[0].lr_mult != 0


def retarget(parts: SegParts, classes: int, *, finetune: bool) -> list[tuple[str, str]]:
    """Set the score layers of ``parts`` (in place) to ``classes`` outputs; returns the renamed layers."""
    old = classes_of(parts)
    if old == classes:
        return []
    renames = []
    taken = {x.name for x in parts.body}
    for layer in score_layers(parts, old):
        p = layer.convolution_param
        p.num_output = classes
        if p.group == old:
            p.group = classes
        if not finetune:
            continue
        before, layer.name = layer.name, retrain_name(layer.name, taken)
        taken.add(layer.name)
        renames.append((before, layer.name))
        if layer.type == "Deconvolution" and not _learns(layer):  # FCN's fixed upsampling, per class
            p.group = classes
            p.weight_filler.Clear()
            p.weight_filler.type = "bilinear"
    return renames


# ---------------------------------------------------------------------------------------------- writing
@dataclass
class SegSources:
    """Where and how the job's Data layers read."""

    train_db: str
    train_labels_db: str
    val_db: str | None  # None: no validation
    val_labels_db: str | None
    train_batch: int
    val_batch: int
    transform: pb.TransformationParameter  # the images' (mean, scale); never mirror or crop


def _data(
    name: str, top: str, phase: int, db: str, batch: int, transform: pb.TransformationParameter | None
) -> pb.LayerParameter:
    layer = pb.LayerParameter(name=name, type="Data", top=[top])
    layer.include.add(phase=phase)
    layer.data_param.source, layer.data_param.batch_size = db, batch
    layer.data_param.backend = pb.DataParameter.LMDB
    if transform is not None:
        layer.transform_param.CopyFrom(transform)
    return layer


def image_transform(parts: SegParts) -> pb.TransformationParameter:
    """The net's own image settings that keep pixels and labels aligned: its scale and colour, no mirror, no crop
    (the two Data layers would draw them apart)."""
    t = pb.TransformationParameter()
    own = parts.train_transform
    if own is not None and own.HasField("scale"):
        t.scale = own.scale
    return t


def train_val_net(parts: SegParts, sources: SegSources) -> pb.NetParameter:
    """The job's train/val net (see the module)."""
    net = pb.NetParameter(name=parts.name)
    phases = [(pb.TRAIN, sources.train_db, sources.train_labels_db, sources.train_batch, "train")]
    if sources.val_db is not None and sources.val_labels_db is not None:
        phases.append((pb.TEST, sources.val_db, sources.val_labels_db, sources.val_batch, "val"))
    for phase, images, labels, batch, tag in phases:
        net.layer.append(_data(f"{tag}-data", parts.input_blob, phase, images, batch, sources.transform))
        net.layer.append(_data(f"{tag}-label", LABEL_BLOB, phase, labels, batch, None))
    net.layer.extend(parts.body)
    loss = pb.LayerParameter(name="loss", type="SoftmaxWithLoss")
    if parts.loss is not None:
        loss.CopyFrom(parts.loss)
        del loss.include[:]
        del loss.exclude[:]
        del loss.top[:]
        del loss.bottom[:]
    loss.bottom.extend([parts.score, LABEL_BLOB])
    loss.top.append(loss.name)
    if not loss.loss_param.HasField("ignore_label"):
        loss.loss_param.ignore_label = IGNORE_LABEL
    if not loss.loss_param.HasField("normalization") and not loss.loss_param.HasField("normalize"):
        loss.loss_param.normalization = pb.LossParameter.VALID
    net.layer.append(loss)
    if len(phases) > 1:
        accuracy = net.layer.add(name=ACCURACY_BLOB, type="Accuracy", bottom=[parts.score, LABEL_BLOB])
        accuracy.top.append(ACCURACY_BLOB)
        accuracy.include.add(phase=pb.TEST)
        accuracy.accuracy_param.ignore_label = IGNORE_LABEL
    return net


def deploy_net(parts: SegParts, shape: tuple[int, int, int]) -> pb.NetParameter:
    """The deploy net: an Input of 1 x C x H x W (the dataset's images), the body's TEST layers and the tail."""
    net = pb.NetParameter(name=parts.name)
    source = net.layer.add(name="data", type="Input", top=[parts.input_blob])
    source.input_param.shape.add(dim=[1, *shape])
    for layer in (*parts.body, *parts.tail):
        if included(layer, pb.NetState(phase=pb.TEST, stage=["deploy"])):
            kept = bare_copy(layer, rules=False)
            net.layer.append(kept)
    return net
