"""DetectNet networks for the studio's object-detection models, trained as DIGITS trains them.

A DetectNet network (NVIDIA/caffe's ``examples/kitti/detectnet_network.prototxt``, DIGITS' object-detection
example) is one net in DIGITS' stage style: ``Data`` layers for TRAIN and for TEST with stage ``val`` (a top
named like ``data``: the images; like ``label``: the box tables), an ``Input`` for the ``deploy`` stage, the
``DetectNetTransformation`` that augments the images and makes the grid labels, the trunk, and NVIDIA/caffe's
clustering and scoring layers. DIGITS' rules for such ("generic") networks:

* :func:`train_val_net` keeps the train and val states' layers and points each Data layer at the dataset's
  ``features`` or ``labels`` LMDB by its top's name; the batch size is the form's, else the images layer's, else
  16, on both layers of a phase (their records must pair up);
* :func:`deploy_net` keeps the deploy state's layers behind an ``Input`` of the dataset's image size;
* the network's classes are its own: ``detectnet_groundtruth_param``'s ``object_class`` maps a dataset class
  (``src``) to a network class (``dst``), as written (else the fork's default, KITTI's car as class 0);
  :func:`class_names` names the network's classes from the dataset's labels.

No mean is set on the Data layers, whatever the form says: the transformation needs the raw pixels (its hue and
saturation augmentation) and subtracts the network's own mean (``transform_param`` of the transformation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from caffe.data.detectnet import object_classes
from caffe.errors import NetError
from caffe.layers.python import builtin_type
from caffe.proto import caffe_pb2 as pb
from caffe.studio import networks as nets

TRANSFORMATION = "DetectNetTransformation"
DEFAULT_BATCH_SIZE = 16  # DIGITS' constants.DEFAULT_BATCH_SIZE
PERCENT_LAYER = "DetectNetMAP"  # its tops (mAP, precision, recall) are percentages
CLUSTERING = ("ClusterDetections", "ClusterGroundtruth")  # param_str: image width, height, ...


@dataclass
class DetectNetSources:
    """Where the job's Data layers read: a dataset's ``<split>_db`` folders (``features`` and ``labels`` inside)."""

    train_db: Path
    val_db: Path | None  # None: no validation
    batch_size: int | None = None  # the form's


def is_detectnet(net: pb.NetParameter) -> bool:
    """Whether ``net`` is a DetectNet network (it has a ``DetectNetTransformation``)."""
    return any(layer.type == TRANSFORMATION for layer in net.layer)


def is_detectnet_deploy(net: pb.NetParameter) -> bool:
    """Whether ``net`` is a DetectNet deploy net: its clustering without the transformation (nothing to train)."""
    return not is_detectnet(net) and any(
        x.type == "Python" and builtin_type(x.python_param) == "ClusterDetections" for x in net.layer
    )


def _role(layer: pb.LayerParameter) -> str | None:
    """``features`` or ``labels``: what a Data layer reads, by its tops' names (DIGITS' rule: ``data`` first)."""
    if any("data" in top for top in layer.top):
        return "features"
    if any("label" in top for top in layer.top):
        return "labels"
    return None


def train_val_net(net: pb.NetParameter, sources: DetectNetSources) -> tuple[pb.NetParameter, int, int]:
    """The job's train/val net (see the module) with its TRAIN and TEST batch sizes."""
    out = nets.train_val_net(net)
    for layer in [x for x in out.layer if x.type == "Input"]:
        out.layer.remove(layer)  # DIGITS makes the deploy input itself
    found: dict[tuple[int, str], pb.LayerParameter] = {}
    for layer in out.layer:
        if not nets.is_source(layer):
            continue
        if layer.type != "Data":
            raise NetError(f"network '{net.name}': layer '{layer.name}' is a {layer.type} layer; a DetectNet "
                           "network reads its dataset through Data layers")  # fmt: skip
        role = _role(layer)
        if role is None or not layer.include:
            why = "no top named like 'data' or 'label'" if role is None else "no phase (train or val stage) of its own"
            raise NetError(f"network '{net.name}': Data layer '{layer.name}' has {why}")
        phase = layer.include[0].phase
        if (phase, role) in found:
            other = found[phase, role].name
            raise NetError(f"network '{net.name}': two {pb.Phase.Name(phase)} Data layers read {role}: "
                           f"'{other}' and '{layer.name}'")  # fmt: skip
        found[phase, role] = layer
    for role in ("features", "labels"):
        if (pb.TRAIN, role) not in found:
            raise NetError(f"network '{net.name}': no TRAIN Data layer for the {role} (a top named like "
                           f"'{'data' if role == 'features' else 'label'}')")  # fmt: skip
    batches = {}
    for phase, db in ((pb.TRAIN, sources.train_db), (pb.TEST, sources.val_db)):
        pair = [found.get((phase, role)) for role in ("features", "labels")]
        if db is None or None in pair:
            for layer in (x for x in pair if x is not None):
                out.layer.remove(layer)
            continue
        batch = sources.batch_size or pair[0].data_param.batch_size or DEFAULT_BATCH_SIZE
        for layer, role in zip(pair, ("features", "labels"), strict=True):
            layer.data_param.source, layer.data_param.backend = str(db / role), pb.DataParameter.LMDB
            layer.data_param.batch_size = batch
        batches[phase] = batch
    return out, batches[pb.TRAIN], batches.get(pb.TEST, batches[pb.TRAIN])


def deploy_net(net: pb.NetParameter, shape: tuple[int, int, int]) -> pb.NetParameter:
    """The deploy state's layers behind one ``Input`` (1 x C x H x W: ``shape``), named as the net's deploy
    input (else ``data``); a layer reading a blob that no layer before it makes is a NetError."""
    layers = [x for x in net.layer if nets.included(x, nets.DEPLOY_STATE)]
    inputs = [x for x in layers if nets.is_source(x)]
    name = inputs[0].top[0] if inputs and inputs[0].top else "data"
    out = pb.NetParameter(name=net.name)
    out.layer.add(name=name, type="Input", top=[name]).input_param.shape.add(dim=[1, *shape])
    made = {name}
    for layer in layers:
        if nets.is_source(layer):
            continue
        missing = [b for b in layer.bottom if b not in made]
        if missing:
            raise NetError(f"network '{net.name}': in the deploy stage, layer '{layer.name}' reads '{missing[0]}', "
                           "which no layer before it makes (give its maker no stage, or the deploy stage)")  # fmt: skip
        copy = out.layer.add()
        copy.CopyFrom(layer)
        del copy.include[:]
        del copy.exclude[:]
        made.update(layer.top)
    return out


def class_mapping(net: pb.NetParameter) -> dict[int, int]:
    """Dataset class -> network class, from the TRAIN transformation (the fork's default: {1: 0}); a NetError
    naming the layer for a network class past :data:`caffe.data.detectnet.MAX_CLASSES`."""
    layer = next(
        (x for x in net.layer if x.type == TRANSFORMATION and nets.included(x, nets.TRAIN_STATE)),
        next(x for x in net.layer if x.type == TRANSFORMATION),
    )
    try:
        return object_classes(layer.detectnet_groundtruth_param)
    except ValueError as e:
        raise NetError(f"network '{net.name}': layer '{layer.name}': {e}") from None


def class_names(net: pb.NetParameter, labels: list[str]) -> list[str]:
    """The network's class names in its order (class ``dst`` named by its dataset classes, joined by ``/``)."""
    mapping = class_mapping(net)
    names: list[list[str]] = [[] for _ in range(max(mapping.values()) + 1)]
    for src, dst in sorted(mapping.items()):
        names[dst].append(labels[src] if 0 <= src < len(labels) else f"class {src}")
    return ["/".join(n) or f"class {i}" for i, n in enumerate(names)]


def unknown_classes(net: pb.NetParameter, labels: list[str]) -> list[int]:
    """The dataset classes the network maps that the dataset does not have (0 and out of range)."""
    return sorted(src for src in class_mapping(net) if not 0 < src < len(labels))


def size_mismatches(net: pb.NetParameter, size: tuple[int, int]) -> list[str]:
    """Where the network is sized for other images than the dataset's ``size`` (width, height): the validation
    transformation's ``image_size_x``/``_y`` (TEST resizes to it) when it differs, a clustering layer's
    ``param_str`` (its first two values, the image's width and height) when it is larger: a smaller one clusters
    the top-left part of the grid (the fork's KITTI net clusters the top 352 rows of its 384). Each as
    "layer 'name': W x H". The TRAIN transformation may crop to another size."""
    found = []
    for layer in net.layer:
        if layer.type == TRANSFORMATION and nets.included(layer, nets.VAL_STATE):
            p = layer.detectnet_groundtruth_param
            if (p.image_size_x, p.image_size_y) != size:
                found.append(f"layer '{layer.name}': {p.image_size_x} x {p.image_size_y}")
        elif layer.type == "Python" and builtin_type(layer.python_param) in CLUSTERING:
            values = layer.python_param.param_str.split(",")[:2]
            try:
                w, h = (int(v) for v in values)
            except ValueError:
                continue  # the layer's own set-up names a bad param_str
            if w > size[0] or h > size[1]:
                found.append(f"layer '{layer.name}': {w} x {h}")
    return found


def percent_outputs(net: pb.NetParameter) -> list[str]:
    """The tops of the net's DetectNet mAP layers (mAP, precision, recall: percentages)."""
    return [
        top for x in net.layer if x.type == "Python" and builtin_type(x.python_param) == PERCENT_LAYER for top in x.top
    ]
