"""SSD networks for the studio's object-detection models: one net in, the job's train/val and deploy nets out.

A detection model job starts from any SSD network as Caffe users hold them (the weiliu89 ``ssd`` fork's form):

* a deploy net (``Input`` ... ``DetectionOutput``, e.g. OpenCV's res10 face detector, MobileNet-SSD's deploy);
* a training net (``AnnotatedData`` ... ``MultiBoxLoss``, e.g. MobileNet-SSD's ``train.prototxt``), with or
  without its test layers (``DetectionOutput``, ``DetectionEvaluate``);
* or a previous detection job's own train/val net.

:func:`ssd_parts` splits it into the body (everything between the input and the heads), the blobs the heads read
(locations, raw confidences, priors) and the layers around them: the ``MultiBoxLoss``, the confidence chain
(``Reshape`` -> ``Softmax``/``Sigmoid`` -> ``Flatten``) and the ``DetectionOutput``. What a net lacks is made as
the fork's ``ssd_pascal.py`` makes it (a deploy net gets the fork's standard loss, a training net the standard
output: NMS 0.45 over the top 400, 200 kept, confidences from 0.01), and its training data layer the fork's
augmentation (photometric distortions, zoom-out up to 4x, the seven crop samplers, mirror) unless the net has its
own. :func:`retarget` sets the number of classes (the confidence convolutions, the Reshape, the loss and the output
layer); with pretrained weights a confidence convolution whose size changes is renamed (``_retrain``), so Caffe's
copy-by-name leaves it freshly initialized. :func:`train_val_net` and :func:`deploy_net` write the nets back out:
``AnnotatedData`` per phase reading the dataset's LMDBs, the loss in TRAIN, the output and ``DetectionEvaluate`` in
TEST (the fork's ``eval_type: "detection"`` reads the mean AP from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caffe.errors import NetError
from caffe.proto import caffe_pb2 as pb
from caffe.studio.networks import bare_copy, included, layers_behind, producer, retrain_name

DETECTION_SOURCE_TYPES = {"Input", "AnnotatedData", "Data", "DummyData", "ImageData"}
HEAD_PATH_TYPES = ("Flatten", "Permute", "Reshape", "Concat")
DEFAULT_MEAN = (104.0, 117.0, 123.0)  # the fork's (VGG's BGR means)
EVAL_CONFIDENCE = 0.01  # the output threshold while measuring mAP (the fork's)
LABEL_BLOB = "label"
EVAL_BLOB = "detection_eval"


@dataclass
class SsdParts:
    """An SSD network taken apart: see the module."""

    name: str
    input_blob: str
    input_shape: tuple[int, int, int]  # C, H, W
    body: list[pb.LayerParameter]
    loc: str
    conf: str
    prior: str
    loss: pb.LayerParameter
    chain: list[pb.LayerParameter]
    output: pb.LayerParameter
    train_transform: pb.TransformationParameter | None = None  # the net's own TRAIN AnnotatedData's
    samplers: list[pb.BatchSampler] = field(default_factory=list)
    train_batch: int = 0
    test_batch: int = 0

    @property
    def classes(self) -> int:
        return int(self.loss.multibox_loss_param.num_classes)


# ---------------------------------------------------------------------------------------------- taking apart
def _only(layers: list[pb.LayerParameter], kind: str, net: str) -> pb.LayerParameter | None:
    found = [x for x in layers if x.type == kind]
    if len(found) > 1:
        raise NetError(
            f"network '{net}': {len(found)} {kind} layers ({', '.join(x.name for x in found)}); one expected"
        )
    return found[0] if found else None


def _input_shape(net: pb.NetParameter, sources: list[pb.LayerParameter]) -> tuple[str, tuple[int, int, int]]:
    """The image blob and its (C, H, W): an Input layer's shape, the net's ``input_shape``/``input_dim``, or the
    resize of an AnnotatedData layer."""
    for layer in sources:
        if layer.type == "Input" and layer.input_param.shape and len(layer.input_param.shape[0].dim) == 4:
            c, h, w = (int(d) for d in layer.input_param.shape[0].dim[1:])
            return layer.top[0], (c, h, w)
    if net.input:
        dims = list(net.input_shape[0].dim) if net.input_shape else list(net.input_dim[:4])
        if len(dims) == 4:
            return net.input[0], (int(dims[1]), int(dims[2]), int(dims[3]))
    for layer in sources:
        policies = layer.transform_param.resize_param  # several: a multi-scale YOLO net; the first is taken
        if layer.type == "AnnotatedData" and policies and policies[0].height and policies[0].width:
            channels = 1 if layer.transform_param.force_gray else 3
            return layer.top[0], (channels, int(policies[0].height), int(policies[0].width))
    raise NetError(
        f"network '{net.name}': cannot tell its input size (give it an Input layer with a 4-D shape, or an "
        "AnnotatedData layer with transform_param.resize_param height and width)"
    )


def _chain_back(layers: list[pb.LayerParameter], blob: str) -> tuple[list[pb.LayerParameter], str]:
    """The confidence chain that ends in ``blob`` (the fork's Reshape -> Softmax/Sigmoid -> Flatten, each step
    optional) and the raw blob before it."""
    chain: list[pb.LayerParameter] = []
    before = len(layers)
    for kinds in (("Flatten",), ("Softmax", "Sigmoid"), ("Reshape",)):
        i = producer(layers, blob, before)
        if i is not None and layers[i].type in kinds and len(layers[i].bottom) == 1:
            chain.insert(0, layers[i])
            blob, before = layers[i].bottom[0], i
    return chain, blob


def standard_loss(output: pb.LayerParameter, loc: str, conf: str, prior: str) -> pb.LayerParameter:
    """The fork's standard MultiBoxLoss (``ssd_pascal.py``) for the heads of a DetectionOutput layer."""
    d = output.detection_output_param
    loss = pb.LayerParameter(name="mbox_loss", type="MultiBoxLoss", bottom=[loc, conf, prior, LABEL_BLOB])
    loss.top.append("mbox_loss")
    loss.propagate_down.extend([True, True, False, False])
    loss.loss_param.normalization = pb.LossParameter.VALID
    p = loss.multibox_loss_param
    p.loc_loss_type = pb.MultiBoxLossParameter.SMOOTH_L1
    p.conf_loss_type = pb.MultiBoxLossParameter.SOFTMAX
    p.loc_weight = 1.0
    p.num_classes = d.num_classes
    p.share_location = d.share_location
    p.match_type = pb.MultiBoxLossParameter.PER_PREDICTION
    p.overlap_threshold = 0.5
    p.use_prior_for_matching = True
    p.background_label_id = d.background_label_id
    p.use_difficult_gt = True
    p.neg_pos_ratio = 3.0
    p.neg_overlap = 0.5
    p.code_type = d.code_type
    if d.variance_encoded_in_target:
        p.encode_variance_in_target = True
    p.ignore_cross_boundary_bbox = False
    p.mining_type = pb.MultiBoxLossParameter.MAX_NEGATIVE
    return loss


def standard_output(
    loss: pb.LayerParameter, loc: str, conf: str, prior: str
) -> tuple[list[pb.LayerParameter], pb.LayerParameter]:
    """The fork's standard confidence chain and DetectionOutput (``ssd_pascal.py``) for a MultiBoxLoss's heads."""
    p = loss.multibox_loss_param
    reshape = pb.LayerParameter(name="mbox_conf_reshape", type="Reshape", bottom=[conf], top=["mbox_conf_reshape"])
    reshape.reshape_param.shape.dim.extend([0, -1, p.num_classes])
    logistic = p.conf_loss_type == pb.MultiBoxLossParameter.LOGISTIC
    scores = pb.LayerParameter(
        name="mbox_conf_sigmoid" if logistic else "mbox_conf_softmax",
        type="Sigmoid" if logistic else "Softmax",
        bottom=["mbox_conf_reshape"],
    )
    scores.top.append(scores.name)
    if not logistic:
        scores.softmax_param.axis = 2
    flatten = pb.LayerParameter(name="mbox_conf_flatten", type="Flatten", bottom=[scores.name])
    flatten.top.append("mbox_conf_flatten")
    flatten.flatten_param.axis = 1
    output = pb.LayerParameter(name="detection_out", type="DetectionOutput", bottom=[loc, "mbox_conf_flatten", prior])
    output.top.append("detection_out")
    d = output.detection_output_param
    d.num_classes = p.num_classes
    d.share_location = p.share_location
    d.background_label_id = p.background_label_id
    d.nms_param.nms_threshold = 0.45
    d.nms_param.top_k = 400
    d.code_type = p.code_type
    if p.encode_variance_in_target:
        d.variance_encoded_in_target = True
    d.keep_top_k = 200
    d.confidence_threshold = EVAL_CONFIDENCE
    return [reshape, scores, flatten], output


def ssd_parts(net: pb.NetParameter) -> SsdParts:
    """Take an SSD network apart (see the module); a NetError says what is missing."""
    name = net.name or "network"
    layers = [x for x in net.layer if x.type != "DetectionEvaluate"]
    loss = _only(layers, "MultiBoxLoss", name)
    output = _only(layers, "DetectionOutput", name)
    if loss is None and output is None:
        raise NetError(
            f"network '{name}': not an SSD detector (it has neither a MultiBoxLoss nor a DetectionOutput layer)"
        )
    sources = [x for x in layers if x.type in DETECTION_SOURCE_TYPES and not x.bottom]
    input_blob, shape = _input_shape(net, sources)
    chain: list[pb.LayerParameter] = []
    if output is not None:
        if len(output.bottom) < 3:
            raise NetError(f"network '{name}': layer '{output.name}' (DetectionOutput) needs 3 bottoms")
        chain, conf = _chain_back(layers, output.bottom[1])
        loc, prior = output.bottom[0], output.bottom[2]
        if loss is not None and (loss.bottom[0], loss.bottom[1], loss.bottom[2]) != (loc, conf, prior):
            raise NetError(
                f"network '{name}': layers '{loss.name}' (MultiBoxLoss) and '{output.name}' (DetectionOutput) read "
                f"different heads ({', '.join(loss.bottom[:3])} and {loc}, {conf}, {prior})"
            )
    else:
        assert loss is not None
        if len(loss.bottom) < 4:
            raise NetError(f"network '{name}': layer '{loss.name}' (MultiBoxLoss) needs 4 bottoms")
        loc, conf, prior = loss.bottom[0], loss.bottom[1], loss.bottom[2]
    removed = {id(x) for x in sources} | {id(x) for x in chain}
    heads = ("MultiBoxLoss", "DetectionOutput", "Silence")
    loss = bare_copy(loss) if loss is not None else standard_loss(output, loc, conf, prior)
    if output is None:
        chain, output = standard_output(loss, loc, conf, prior)
    else:
        output, chain = bare_copy(output), [bare_copy(x) for x in chain]
    body = [bare_copy(x) for x in layers if id(x) not in removed and x.type not in heads]
    parts = SsdParts(name, input_blob, shape, body, loc, conf, prior, loss, chain, output)
    _take_data_settings(parts, sources)
    _label_blob(parts)
    return parts


def _take_data_settings(parts: SsdParts, sources: list[pb.LayerParameter]) -> None:
    """The augmentation and batch sizes of the net's own AnnotatedData layers."""
    for layer in sources:
        if layer.type != "AnnotatedData":
            continue
        test = any(r.phase == pb.TEST for r in layer.include)
        if test:
            parts.test_batch = parts.test_batch or layer.data_param.batch_size
            continue
        parts.train_batch = parts.train_batch or layer.data_param.batch_size
        if parts.train_transform is None:
            parts.train_transform = pb.TransformationParameter()
            parts.train_transform.CopyFrom(layer.transform_param)
            parts.samplers = list(layer.annotated_data_param.batch_sampler)


def _label_blob(parts: SsdParts) -> None:
    """The loss reads the ground truth from ``label`` (the AnnotatedData layer's second top)."""
    del parts.loss.bottom[3:]
    parts.loss.bottom.append(LABEL_BLOB)
    for layer in parts.body:
        if LABEL_BLOB in layer.bottom or LABEL_BLOB in layer.top:
            raise NetError(f"network '{parts.name}': layer '{layer.name}' uses the blob '{LABEL_BLOB}' (the labels)")


# ---------------------------------------------------------------------------------------------- classes
def confidence_layers(parts: SsdParts) -> list[pb.LayerParameter]:
    """The convolutions whose outputs make the raw confidences (through Permute, Flatten, Reshape and Concat)."""

    def step(layer: pb.LayerParameter) -> tuple[bool, list[str]]:
        if layer.type == "Convolution":
            return True, []
        return False, list(layer.bottom) if layer.type in HEAD_PATH_TYPES else []

    found = layers_behind(parts.body, parts.conf, step)
    if not found:
        raise NetError(f"network '{parts.name}': no Convolution layer found under the confidences '{parts.conf}'")
    return found


def retarget(parts: SsdParts, classes: int, *, finetune: bool) -> list[tuple[str, str]]:
    """Set ``parts`` (in place) to ``classes`` classes, background included; returns the renamed layers."""
    old = parts.classes
    if old < 1:
        raise NetError(f"network '{parts.name}': layer '{parts.loss.name}' has no num_classes")
    renames: list[tuple[str, str]] = []
    if classes != old:
        if not parts.loss.multibox_loss_param.share_location:
            raise NetError(
                f"network '{parts.name}': its locations are per class (share_location: false), so it cannot be "
                f"set from {old} to {classes} classes"
            )
        for layer in confidence_layers(parts):
            outputs = layer.convolution_param.num_output
            if outputs % old:
                raise NetError(
                    f"network '{parts.name}': layer '{layer.name}' has {outputs} outputs, not a multiple of its "
                    f"{old} classes"
                )
            layer.convolution_param.num_output = outputs // old * classes
            if finetune:
                before, layer.name = layer.name, retrain_name(layer.name, {x.name for x in parts.body})
                renames.append((before, layer.name))
        for layer in parts.chain:
            dims = layer.reshape_param.shape.dim
            if layer.type == "Reshape" and len(dims) == 3 and dims[2] == old:
                dims[2] = classes
    parts.loss.multibox_loss_param.num_classes = classes
    parts.output.detection_output_param.num_classes = classes
    return renames


# ---------------------------------------------------------------------------------------------- writing
def default_train_transform(height: int, width: int, mean: list[float], scale: float) -> pb.TransformationParameter:
    """The fork's training transformation (``ssd_pascal.py``): warp to the input size, mirror, photometric
    distortions, zoom out up to 4x, boxes kept when their centre is in the crop."""
    t = pb.TransformationParameter(mirror=True)
    t.mean_value.extend(mean)
    if scale != 1.0:
        t.scale = scale
    r = t.resize_param.add()
    r.prob, r.resize_mode, r.height, r.width = 1.0, pb.ResizeParameter.WARP, height, width
    r.interp_mode.extend(
        [pb.ResizeParameter.LINEAR, pb.ResizeParameter.AREA, pb.ResizeParameter.NEAREST, pb.ResizeParameter.CUBIC,
         pb.ResizeParameter.LANCZOS4]
    )  # fmt: skip
    t.emit_constraint.emit_type = pb.EmitConstraint.CENTER
    d = t.distort_param
    d.brightness_prob, d.brightness_delta = 0.5, 32.0
    d.contrast_prob, d.contrast_lower, d.contrast_upper = 0.5, 0.5, 1.5
    d.hue_prob, d.hue_delta = 0.5, 18.0
    d.saturation_prob, d.saturation_lower, d.saturation_upper = 0.5, 0.5, 1.5
    d.random_order_prob = 0.0
    t.expand_param.prob, t.expand_param.max_expand_ratio = 0.5, 4.0
    return t


def default_samplers() -> list[pb.BatchSampler]:
    """The fork's seven crop samplers: the whole image, crops overlapping a box by 0.1 ... 0.9, any crop."""
    samplers = [pb.BatchSampler(max_sample=1, max_trials=1)]
    for overlap in (0.1, 0.3, 0.5, 0.7, 0.9, None):
        s = pb.BatchSampler(max_sample=1, max_trials=50)
        s.sampler.min_scale, s.sampler.max_scale = 0.3, 1.0
        s.sampler.min_aspect_ratio, s.sampler.max_aspect_ratio = 0.5, 2.0
        if overlap is None:
            s.sample_constraint.max_jaccard_overlap = 1.0
        else:
            s.sample_constraint.min_jaccard_overlap = overlap
        samplers.append(s)
    return samplers


def test_transform(train: pb.TransformationParameter, height: int, width: int) -> pb.TransformationParameter:
    """The validation transformation: the training one's pixel settings (mean, scale, colour), a plain warp."""
    t = pb.TransformationParameter()
    t.mean_value.extend(train.mean_value)
    if train.HasField("mean_file"):
        t.mean_file = train.mean_file
    if train.HasField("scale"):
        t.scale = train.scale
    if train.force_color:
        t.force_color = True
    if train.force_gray:
        t.force_gray = True
    r = t.resize_param.add()
    r.prob, r.resize_mode, r.height, r.width = 1.0, pb.ResizeParameter.WARP, height, width
    r.interp_mode.append(pb.ResizeParameter.LINEAR)
    return t


@dataclass
class DataSources:
    """Where and how the job's AnnotatedData layers read."""

    train_db: str
    val_db: str | None  # None: no validation
    label_map: str
    train_batch: int
    val_batch: int
    mean: list[float]
    scale: float = 1.0


def _data_layer(parts: SsdParts, phase: int, db: str, batch: int, transform: pb.TransformationParameter,
                label_map: str) -> pb.LayerParameter:  # fmt: skip
    layer = pb.LayerParameter(name="data", type="AnnotatedData", top=[parts.input_blob, LABEL_BLOB])
    layer.include.add(phase=phase)
    layer.data_param.source, layer.data_param.batch_size = db, batch
    layer.data_param.backend = pb.DataParameter.LMDB
    layer.transform_param.CopyFrom(transform)
    layer.annotated_data_param.label_map_file = label_map
    return layer


def train_transform(parts: SsdParts, sources: DataSources) -> pb.TransformationParameter:
    """The net's own training transformation (resized to its input), else the fork's standard one."""
    _, h, w = parts.input_shape
    if parts.train_transform is None:
        return default_train_transform(h, w, sources.mean, sources.scale)
    t = pb.TransformationParameter()
    t.CopyFrom(parts.train_transform)
    if not t.resize_param:
        r = t.resize_param.add(prob=1.0, resize_mode=pb.ResizeParameter.WARP)
        r.interp_mode.append(pb.ResizeParameter.LINEAR)
    if len(t.resize_param) == 1:  # several: the net's multi-scale policies, kept as written
        t.resize_param[0].height, t.resize_param[0].width = h, w
    return t


def train_val_net(parts: SsdParts, sources: DataSources) -> pb.NetParameter:
    """The job's train/val net: AnnotatedData per phase, the body, the loss (TRAIN), the output and its mean AP
    (TEST)."""
    _, h, w = parts.input_shape
    net = pb.NetParameter(name=parts.name)
    train = train_transform(parts, sources)
    layer = _data_layer(parts, pb.TRAIN, sources.train_db, sources.train_batch, train, sources.label_map)
    layer.annotated_data_param.batch_sampler.extend(parts.samplers or default_samplers())
    net.layer.append(layer)
    if sources.val_db is not None:
        net.layer.append(
            _data_layer(parts, pb.TEST, sources.val_db, sources.val_batch, test_transform(train, h, w),
                        sources.label_map)
        )  # fmt: skip
    net.layer.extend(parts.body)
    loss = bare_copy(parts.loss, rules=False)
    loss.include.add(phase=pb.TRAIN)
    net.layer.append(loss)
    if sources.val_db is None:
        return net
    for layer in (*parts.chain, parts.output):
        tested = bare_copy(layer, rules=False)
        tested.include.add(phase=pb.TEST)
        net.layer.append(tested)
    d = net.layer[-1].detection_output_param
    d.ClearField("save_output_param")
    d.ClearField("visualize")
    if not d.HasField("confidence_threshold") or d.confidence_threshold > EVAL_CONFIDENCE:
        d.confidence_threshold = EVAL_CONFIDENCE
    evaluate = pb.LayerParameter(name=EVAL_BLOB, type="DetectionEvaluate", bottom=[parts.output.top[0], LABEL_BLOB])
    evaluate.top.append(EVAL_BLOB)
    evaluate.include.add(phase=pb.TEST)
    e = evaluate.detection_evaluate_param
    e.num_classes = parts.classes
    e.background_label_id = max(0, parts.output.detection_output_param.background_label_id)
    e.overlap_threshold = 0.5
    e.evaluate_difficult_gt = False
    net.layer.append(evaluate)
    return net


def deploy_net(parts: SsdParts) -> pb.NetParameter:
    """The deploy net: an Input of 1 x C x H x W, the body's TEST layers, the confidence chain and the output."""
    net = pb.NetParameter(name=parts.name)
    source = net.layer.add(name="data", type="Input", top=[parts.input_blob])
    source.input_param.shape.add(dim=[1, *parts.input_shape])
    for layer in (*parts.body, *parts.chain, parts.output):
        if not included(layer, pb.NetState(phase=pb.TEST, stage=["deploy"])):
            continue
        kept = bare_copy(layer, rules=False)
        net.layer.append(kept)
    net.layer[-1].detection_output_param.ClearField("save_output_param")
    return net


def network_mean(parts: SsdParts) -> tuple[list[float], float] | None:
    """The mean values and scale the net's own training data layer used (None: it has none)."""
    t = parts.train_transform
    if t is None or not t.mean_value:
        return None
    return [float(v) for v in t.mean_value], float(t.scale) if t.HasField("scale") else 1.0
