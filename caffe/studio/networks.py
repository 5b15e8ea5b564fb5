"""Networks for the studio: the standard networks, and the surgery a model job does on a network.

A network reaches a model job as one "all-in-one" NetParameter in either style:

* phase style (Caffe's ``train_val.prototxt``, the studio's standard networks): Data layers with
  ``include { phase: TRAIN }`` / ``{ phase: TEST }``, Accuracy in TEST;
* DIGITS' stage style (the beginners' guide's customized nets): ``include { stage: "train" }``,
  ``{ stage: "val" }``, ``{ stage: "deploy" }``, ``exclude { stage: "deploy" }``;
* or a deploy net (``Input`` + ``Softmax``), as pretrained models often come: :func:`trainable`
  turns it into a train/val net.

:func:`train_val_net` resolves the stages into phases, :func:`deploy_net` derives the deploy net
(Data -> Input, label consumers dropped, a Softmax on the classifier, dead branches such as
GoogLeNet's auxiliary classifiers pruned). :func:`retarget` sets the classifier(s) to the dataset's
number of classes and, when weights are loaded (fine-tuning), renames them so that Caffe's
copy-by-layer-name leaves them freshly initialized: ``fc8`` -> ``fc8_retrain``, GoogLeNet's
``loss{1,2,3}/classifier``, SqueezeNet's ``conv10``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path

from caffe.errors import NetError
from caffe.net import filter_net
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import parse_text, to_text
from caffe.upgrade import upgrade_net_as_needed

STANDARD_DIR = Path(__file__).with_name("standard_networks")
STANDARD_NETWORKS = {"lenet": "LeNet", "alexnet": "AlexNet", "googlenet": "GoogLeNet", "squeezenet": "SqueezeNet"}
DEFAULT_BATCH_SIZE = 16  # DIGITS' default when neither the network nor the form gives one

SOURCE_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "Input", "Python",
                "DenseImageData", "ImageSegData", "AnnotatedData"}  # fmt: skip
LOSS_TYPES = {
    "SoftmaxWithLoss",
    "MultinomialLogisticLoss",
    "InfogainLoss",
    "SigmoidCrossEntropyLoss",
    "HingeLoss",
    "EuclideanLoss",
}
CLASSIFIER_TYPES = {"InnerProduct": "inner_product_param", "Convolution": "convolution_param"}
RETRAIN_SUFFIX = "_retrain"

TRAIN_STATE = pb.NetState(phase=pb.TRAIN, stage=["train"])
VAL_STATE = pb.NetState(phase=pb.TEST, stage=["val"])
DEPLOY_STATE = pb.NetState(phase=pb.TEST, stage=["deploy"])


# ---------------------------------------------------------------------------------------------- reading
def standard_network(key: str) -> str:
    """The prototxt text of a standard network (``lenet``, ``alexnet``, ``googlenet``, ``squeezenet``)."""
    if key not in STANDARD_NETWORKS:
        raise NetError(f"unknown standard network '{key}' (choose one of {', '.join(STANDARD_NETWORKS)})")
    return (STANDARD_DIR / f"{key}.prototxt").read_text()


def parse_network(text: str, source: str = "network") -> pb.NetParameter:
    """Parse (and upgrade) a network; a ParseError names ``source:line:column``."""
    net = parse_text(text, pb.NetParameter(), source)
    upgrade_net_as_needed(net, source)
    if not net.layer:
        raise NetError(f"{source}: the network has no layers")
    return net


def copy_net(net: pb.NetParameter) -> pb.NetParameter:
    out = pb.NetParameter()
    out.CopyFrom(net)
    return out


def included(layer: pb.LayerParameter, state: pb.NetState) -> bool:
    """Whether Caffe builds ``layer`` in a net of ``state`` (its include/exclude rules)."""
    probe = pb.NetParameter(state=state)
    probe.layer.add().CopyFrom(layer)
    return len(filter_net(probe).layer) == 1


def is_source(layer: pb.LayerParameter) -> bool:
    """A layer that feeds the net from outside (Data, Input, ...): no bottoms, one or more tops."""
    return layer.type in SOURCE_TYPES and not layer.bottom


def data_layers(net: pb.NetParameter) -> list[pb.LayerParameter]:
    return [layer for layer in net.layer if is_source(layer)]


# ---------------------------------------------------------------------------------------------- classifiers
def producer(layers: list[pb.LayerParameter], blob: str, before: int | None = None) -> int | None:
    """The index of the last of ``layers[:before]`` (all of them when None) that writes ``blob``: walking back
    from layer ``i`` with ``before=i`` passes an in-place layer (ReLU, BatchNorm) to the layer it modifies."""
    for i in range((len(layers) if before is None else before) - 1, -1, -1):
        if blob in layers[i].top:
            return i
    return None


def _heads(net: pb.NetParameter) -> list[tuple[int, str]]:
    """(layer index, blob) pairs holding the class scores: the inputs of the losses, else of the
    Softmax layers, else the blobs nothing consumes."""
    layers = list(net.layer)
    for types in (LOSS_TYPES, {"Softmax"}):
        found = [(i, layer.bottom[0]) for i, layer in enumerate(layers) if layer.type in types and layer.bottom]
        if found:
            return found
    consumed = {b for layer in layers for b in layer.bottom}
    return [(len(layers), t) for layer in layers if not is_source(layer) for t in layer.top if t not in consumed]


def classifier_layers(net: pb.NetParameter) -> list[pb.LayerParameter]:
    """The last InnerProduct/Convolution before each head, through single-input layers such as
    ReLU, Dropout and (global) Pooling - e.g. AlexNet's fc8, GoogLeNet's three classifiers,
    SqueezeNet's conv10. In net order, each once."""
    layers = list(net.layer)
    found: dict[int, pb.LayerParameter] = {}
    for at, blob in _heads(net):
        i = producer(layers, blob, at)
        while i is not None:
            layer = layers[i]
            if layer.type in CLASSIFIER_TYPES:
                found[i] = layer
                break
            if len(layer.bottom) != 1:
                break
            i = producer(layers, layer.bottom[0], i)
    return [found[i] for i in sorted(found)]


def num_output(layer: pb.LayerParameter) -> int:
    return getattr(layer, CLASSIFIER_TYPES[layer.type]).num_output


def retrain_name(name: str, taken: set[str]) -> str:
    """The name a retrained layer gets: ``name_retrain``, then ``_retrain2``, ... (the first not in ``taken``)."""
    m = re.fullmatch(rf"(.*){RETRAIN_SUFFIX}(\d*)", name)
    base, n = (m.group(1), int(m.group(2) or 1) + 1) if m else (name, 1)
    while True:
        new = f"{base}{RETRAIN_SUFFIX}{n if n > 1 else ''}"
        if new not in taken:
            return new
        n += 1


def retarget(net: pb.NetParameter, classes: int, *, finetune: bool) -> list[tuple[str, str]]:
    """Point the classifier(s) of ``net`` (in place) at ``classes`` outputs.

    With ``finetune`` (weights will be copied by layer name), a classifier whose ``num_output`` is
    set to another value is renamed, and so is its output blob when it carries the layer's name
    (every bottom/top that refers to it follows), as the guide does by hand. Returns the renames.
    A network whose classifier cannot be found is a NetError.
    """
    classifiers = classifier_layers(net)
    if not classifiers:
        raise NetError(
            f"network '{net.name}': no classifier found (an InnerProduct or Convolution layer feeding the loss or "
            "Softmax)"
        )
    taken = {layer.name for layer in net.layer} | {b for layer in net.layer for b in (*layer.top, *layer.bottom)}
    renames: list[tuple[str, str]] = []
    for layer in classifiers:
        current = num_output(layer)
        if finetune and current not in (0, classes):
            old, new = layer.name, retrain_name(layer.name, taken)
            taken.add(new)
            renames.append((old, new))
            layer.name = new
            if old in layer.top:
                for other in net.layer:
                    for field in (other.bottom, other.top):
                        for k, b in enumerate(field):
                            if b == old:
                                field[k] = new
        getattr(layer, CLASSIFIER_TYPES[layer.type]).num_output = classes
    return renames


def bare_copy(layer: pb.LayerParameter, *, rules: bool = True) -> pb.LayerParameter:
    """A copy of ``layer`` without its weights and phase (and, ``rules=False``, its include/exclude rules)."""
    out = pb.LayerParameter()
    out.CopyFrom(layer)
    del out.blobs[:]
    out.ClearField("phase")
    if not rules:
        del out.include[:]
        del out.exclude[:]
    return out


def layers_behind(
    layers: list[pb.LayerParameter], blob: str, step: Callable[[pb.LayerParameter], tuple[bool, list[str]]]
) -> list[pb.LayerParameter]:
    """Walk back from ``blob`` (as the net's end reads it) through the layers that make it: ``step(layer)`` says
    whether to keep the layer and which of its bottoms to walk on. The kept layers, each once, in net order."""
    kept: dict[int, pb.LayerParameter] = {}
    pending: list[tuple[str, int]] = [(blob, len(layers))]
    seen: set[tuple[str, int]] = set()
    while pending:
        name, before = pending.pop()
        if (name, before) in seen:
            continue
        seen.add((name, before))
        i = producer(layers, name, before)
        if i is None:
            continue
        keep, further = step(layers[i])
        if keep:
            kept[i] = layers[i]
        pending.extend((b, i) for b in further)
    return [kept[i] for i in sorted(kept)]


def fill_missing_fillers(layers: list[pb.LayerParameter]) -> None:
    """Convolutions, deconvolutions and inner products without fillers (deploy nets carry none) start as the
    fork's detectors and segmenters do: Xavier weights, zero biases (Caffe's default, constant 0 weights, would
    not train)."""
    params = {"Convolution": "convolution_param", "Deconvolution": "convolution_param"}
    params["InnerProduct"] = "inner_product_param"
    for layer in layers:
        if layer.type not in params:
            continue
        param = getattr(layer, params[layer.type])
        if not param.HasField("weight_filler"):
            param.weight_filler.type = "xavier"
        if param.bias_term and not param.HasField("bias_filler"):
            param.bias_filler.type = "constant"


# ---------------------------------------------------------------------------------------------- train/val
def trainable(net: pb.NetParameter, batch_size: int = DEFAULT_BATCH_SIZE) -> pb.NetParameter:
    """A net that can train: a deploy net (Input ... Softmax) gets a Data layer per phase and a
    SoftmaxWithLoss + Accuracy in place of its final Softmax; other nets are returned as they are."""
    if any(layer.type != "Input" for layer in data_layers(net)):
        return copy_net(net)
    inputs = [layer for layer in net.layer if layer.type == "Input"]
    if len(inputs) != 1 or len(inputs[0].top) != 1:
        raise NetError(f"network '{net.name}': a deploy net needs exactly one Input layer with one top to be trained")
    top = inputs[0].top[0]
    dims = list(inputs[0].input_param.shape[0].dim) if inputs[0].input_param.shape else []
    out = copy_net(net)
    del out.layer[:]
    for phase, name in ((pb.TRAIN, "train-data"), (pb.TEST, "val-data")):
        data = out.layer.add(name=name, type="Data", top=[top, "label"])
        data.include.add(phase=phase)
        data.data_param.batch_size = batch_size
        if len(dims) == 4 and dims[2] == dims[3]:
            data.transform_param.crop_size = dims[2]
        if phase == pb.TRAIN and len(dims) == 4 and dims[1] == 3:
            data.transform_param.mirror = True
    consumed = {b for layer in net.layer for b in layer.bottom}
    heads: list[str] = []
    for layer in net.layer:
        if layer.type == "Input":
            continue
        if layer.type == "Softmax" and not any(t in consumed for t in layer.top):
            heads.append(layer.bottom[0])
            continue
        out.layer.add().CopyFrom(layer)
    if not heads:
        heads = [t for layer in net.layer if layer.type != "Input" for t in layer.top if t not in consumed]
    for k, blob in enumerate(heads):
        suffix = f"_{k + 1}" if len(heads) > 1 else ""
        out.layer.add(name=f"loss{suffix}", type="SoftmaxWithLoss", bottom=[blob, "label"], top=[f"loss{suffix}"])
        acc = out.layer.add(name=f"accuracy{suffix}", type="Accuracy", bottom=[blob, "label"])
        acc.top.append(f"accuracy{suffix}")
        acc.include.add(phase=pb.TEST)
    return out


def train_val_net(net: pb.NetParameter) -> pb.NetParameter:
    """The train/val net with phase rules only: a layer of the "train" state only gets
    ``include { phase: TRAIN }``, of the "val" state only ``{ phase: TEST }``, of both no rule;
    layers of neither (deploy-only) are dropped."""
    out = copy_net(net)
    del out.layer[:]
    for layer in net.layer:
        in_train, in_val = included(layer, TRAIN_STATE), included(layer, VAL_STATE)
        if not (in_train or in_val):
            continue
        copy = _without_rules(layer)
        if in_train != in_val:
            copy.include.add(phase=pb.TRAIN if in_train else pb.TEST)
        out.layer.append(copy)  # appends a copy: set the rules first
    return out


# ---------------------------------------------------------------------------------------------- deploy
def deploy_net(net: pb.NetParameter, shape: tuple[int, int, int]) -> pb.NetParameter:
    """The deploy net for inputs of ``shape`` (C, H, W): the "deploy" state's layers, the data
    layers replaced by ``Input`` (1xCxHxW) plus the train Data layer's ``scale`` as a Power layer,
    layers that read labels dropped, a Softmax ``prob`` on the classifier when the net has none,
    and every layer that does not lead to the output pruned."""
    layers = [layer for layer in net.layer if included(layer, DEPLOY_STATE)]
    sources = [layer for layer in net.layer if is_source(layer)]
    if not sources:
        raise NetError(f"network '{net.name}': no data layer (Data or Input) to derive the deploy net from")
    label_blobs = {t for s in sources for t in s.top[1:]}
    produced: set[str] = set()
    body: list[pb.LayerParameter] = []
    inputs: list[str] = []
    for layer in layers:
        if is_source(layer) or any(b in label_blobs for b in layer.bottom):
            continue
        inputs += [b for b in layer.bottom if b not in produced and b not in inputs]
        produced.update(layer.top)
        body.append(_without_rules(layer))
    if len(inputs) != 1:
        raise NetError(f"network '{net.name}': {_input_problem(body, sources, inputs, produced)}")
    out = pb.NetParameter(name=net.name)
    out.layer.add(name=inputs[0], type="Input", top=[inputs[0]]).input_param.shape.add(dim=[1, *shape])
    train = next((s for s in sources if s.type != "Input" and included(s, TRAIN_STATE)), None)
    scale = train.transform_param.scale if train is not None and train.transform_param.HasField("scale") else 1.0
    if train is not None and scale != 1.0 and train.top[0] == inputs[0]:
        power = out.layer.add(name="scale", type="Power", bottom=[inputs[0]], top=[inputs[0]])
        power.power_param.scale = scale
    if not any(layer.type == "Softmax" for layer in body):
        heads = [x.bottom[0] for x in net.layer if x.type == "SoftmaxWithLoss" and x.bottom[0] in produced]
        if not heads:
            raise NetError(f"network '{net.name}': no Softmax or SoftmaxWithLoss to give the deploy net its output")
        body.append(pb.LayerParameter(name="prob", type="Softmax", bottom=[heads[-1]], top=["prob"]))
    out.layer.extend(_prune(body))
    return out


def _input_problem(
    body: list[pb.LayerParameter], sources: list[pb.LayerParameter], inputs: list[str], produced: set[str]
) -> str:
    """Why the deploy net has not one input: the layer reading a blob that no layer before it produces
    (with the nearest blob names), or no layer reading the data."""
    data = {s.top[0] for s in sources if s.top}
    strays = [b for b in inputs if b not in data] or inputs[1:]
    if not strays:
        return f"no layer of the deploy net reads the data ({', '.join(sorted(data)) or 'none'})"
    blob = strays[0]
    reader = next(layer for layer in body if blob in layer.bottom)
    before = [t for layer in body[: body.index(reader)] for t in layer.top] + sorted(data)
    short = [b for b in before if len(b) <= 128]  # difflib's matching is quadratic in the names' length
    close = difflib.get_close_matches(blob, short, n=2, cutoff=0.6) if len(blob) <= 128 else []
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"layer '{reader.name}' reads bottom '{blob}', which no layer before it produces{hint}"


def _without_rules(layer: pb.LayerParameter) -> pb.LayerParameter:
    copy = pb.LayerParameter()
    copy.CopyFrom(layer)
    del copy.include[:]
    del copy.exclude[:]
    return copy


def _prune(body: list[pb.LayerParameter]) -> list[pb.LayerParameter]:
    """Keep the last Softmax and the layers it depends on (in order)."""
    last = max(i for i, layer in enumerate(body) if layer.type == "Softmax")
    needed = set(body[last].bottom)
    keep = [last]
    for i in range(last - 1, -1, -1):
        if any(t in needed for t in body[i].top):
            keep.append(i)
            needed.update(body[i].bottom)
    return [body[i] for i in sorted(keep)]


def network_text(net: pb.NetParameter) -> str:
    return to_text(net)
