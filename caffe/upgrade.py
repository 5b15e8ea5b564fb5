"""Upgrade net and solver definitions written in Caffe's deprecated formats.

Net definitions went through these formats, oldest first:

* **V0**: ``layers { layer { name: "c" type: "conv" num_output: 8 kernelsize: 3 } bottom: "x" top: "c" }``
  with lowercase type names, flat parameters and separate ``padding`` layers;
* **V1**: ``layers { name: "c" type: CONVOLUTION convolution_param { ... } blobs_lr: 1 }``;
* **current**: ``layer { name: "c" type: "Convolution" param { lr_mult: 1 } convolution_param { ... } }``.

Independently of the layer format, data transformation settings used to live in the data parameters,
net inputs used to be top-level ``input``/``input_dim``/``input_shape`` fields, BatchNorm layers used
to declare three learnable-looking ``param`` specs, and solvers named their type with the
``solver_type`` enum. :func:`upgrade_net_as_needed` and :func:`upgrade_solver_as_needed` apply every
needed step, in Caffe's order, to a parsed message in place.

Problems Caffe tolerates (a V0 parameter that does not apply to the layer's type) are logged at
ERROR level and make the step's function return ``False``; problems Caffe refuses raise
:class:`~caffe.errors.NetError` or :class:`~caffe.errors.SolverError`.
"""

from __future__ import annotations

import logging

from google.protobuf.message import Message

from caffe.errors import NetError, SolverError, layer_context
from caffe.proto import caffe_pb2 as pb

__all__ = [
    "net_needs_batchnorm_upgrade",
    "net_needs_data_upgrade",
    "net_needs_input_upgrade",
    "net_needs_upgrade",
    "net_needs_v0_to_v1_upgrade",
    "net_needs_v1_to_v2_upgrade",
    "solver_needs_type_upgrade",
    "upgrade_net_as_needed",
    "upgrade_net_batchnorm",
    "upgrade_net_data_transformation",
    "upgrade_net_input",
    "upgrade_solver_as_needed",
    "upgrade_solver_type",
    "upgrade_v0_layer_parameter",
    "upgrade_v0_layer_type",
    "upgrade_v0_net",
    "upgrade_v0_padding_layers",
    "upgrade_v1_layer",
    "upgrade_v1_layer_type",
    "upgrade_v1_net",
]

log = logging.getLogger("caffe")

_V1_TYPE = pb.V1LayerParameter.LayerType

# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

#: V0 type string -> name of the V1 ``LayerType`` enum value.
V0_LAYER_TYPES: dict[str, str] = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

#: V0 parameter -> {V0 layer type: dotted destination in the V1 layer}. A parameter set on a layer
#: whose type is not listed is reported and dropped.
V0_TYPED_FIELDS: dict[str, dict[str, str]] = {
    "num_output": {"conv": "convolution_param.num_output", "innerproduct": "inner_product_param.num_output"},
    "biasterm": {"conv": "convolution_param.bias_term", "innerproduct": "inner_product_param.bias_term"},
    "weight_filler": {"conv": "convolution_param.weight_filler", "innerproduct": "inner_product_param.weight_filler"},
    "bias_filler": {"conv": "convolution_param.bias_filler", "innerproduct": "inner_product_param.bias_filler"},
    "pad": {"conv": "convolution_param.pad", "pool": "pooling_param.pad"},
    "kernelsize": {"conv": "convolution_param.kernel_size", "pool": "pooling_param.kernel_size"},
    "group": {"conv": "convolution_param.group"},
    "stride": {"conv": "convolution_param.stride", "pool": "pooling_param.stride"},
    "pool": {"pool": "pooling_param.pool"},
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": "lrn_param.local_size"},
    "alpha": {"lrn": "lrn_param.alpha"},
    "beta": {"lrn": "lrn_param.beta"},
    "k": {"lrn": "lrn_param.k"},
    "source": {
        "data": "data_param.source",
        "hdf5_data": "hdf5_data_param.source",
        "images": "image_data_param.source",
        "window_data": "window_data_param.source",
        "infogain_loss": "infogain_loss_param.source",
    },
    "batchsize": {
        "data": "data_param.batch_size",
        "hdf5_data": "hdf5_data_param.batch_size",
        "images": "image_data_param.batch_size",
        "window_data": "window_data_param.batch_size",
    },
    "rand_skip": {"data": "data_param.rand_skip", "images": "image_data_param.rand_skip"},
    "shuffle_images": {"images": "image_data_param.shuffle"},
    "new_height": {"images": "image_data_param.new_height"},
    "new_width": {"images": "image_data_param.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": "window_data_param.fg_threshold"},
    "det_bg_threshold": {"window_data": "window_data_param.bg_threshold"},
    "det_fg_fraction": {"window_data": "window_data_param.fg_fraction"},
    "det_context_pad": {"window_data": "window_data_param.context_pad"},
    "det_crop_mode": {"window_data": "window_data_param.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
}

#: V0 parameters that become ``transform_param`` fields whatever the layer type.
V0_TRANSFORM_FIELDS: dict[str, str] = {
    "scale": "scale",
    "meanfile": "mean_file",
    "cropsize": "crop_size",
    "mirror": "mirror",
}

#: Name of the V1 ``LayerType`` enum value -> current layer type string.
V1_LAYER_TYPES: dict[str, str] = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

#: Per-type parameter messages copied verbatim from a V1 layer to the current layer.
V1_COPIED_PARAMS: tuple[str, ...] = (
    "accuracy_param",
    "argmax_param",
    "concat_param",
    "contrastive_loss_param",
    "convolution_param",
    "data_param",
    "dropout_param",
    "dummy_data_param",
    "eltwise_param",
    "exp_param",
    "hdf5_data_param",
    "hdf5_output_param",
    "hinge_loss_param",
    "image_data_param",
    "infogain_loss_param",
    "inner_product_param",
    "lrn_param",
    "memory_data_param",
    "mvn_param",
    "pooling_param",
    "power_param",
    "relu_param",
    "sigmoid_param",
    "softmax_param",
    "slice_param",
    "tanh_param",
    "threshold_param",
    "window_data_param",
    "transform_param",
    "loss_param",
)

#: V1 data layer type -> its parameter message that once held the transformation fields.
DATA_LAYER_PARAMS: dict[str, str] = {
    "DATA": "data_param",
    "IMAGE_DATA": "image_data_param",
    "WINDOW_DATA": "window_data_param",
}

#: Transformation fields moved from a data parameter message into ``transform_param``.
DATA_TRANSFORM_FIELDS: tuple[str, ...] = ("scale", "mean_file", "crop_size", "mirror")

#: Name of the ``SolverParameter.SolverType`` enum value -> solver type string.
SOLVER_TYPES: dict[str, str] = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _origin(source: str) -> str:
    """Name of the file being upgraded, for messages."""
    return source or "<net>"


def _v0_context(connection: pb.V1LayerParameter, index: int | None = None) -> str:
    """``layer 'name' (type)`` for a V0 layer connection; falls back to its index."""
    v0 = connection.layer
    name = v0.name or connection.name or (f"#{index}" if index is not None else "?")
    return layer_context(name, v0.type or "?")


def _assign(message: Message, path: str, value: object) -> bool:
    """Store ``value`` at dotted ``path`` under ``message``; False if an enum name is not valid there.

    Repeated scalar fields get the value appended, message fields are copied, and enum fields take
    ``value`` as the name of the enum value.
    """
    *parents, leaf = path.split(".")
    for name in parents:
        message = getattr(message, name)
    field = message.DESCRIPTOR.fields_by_name[leaf]
    if field.message_type is not None:
        getattr(message, leaf).CopyFrom(value)
    elif field.is_repeated:
        getattr(message, leaf).append(value)
    elif field.enum_type is not None:
        enum_value = field.enum_type.values_by_name.get(str(value))
        if enum_value is None:
            return False
        setattr(message, leaf, enum_value.number)
    else:
        setattr(message, leaf, value)
    return True


# ---------------------------------------------------------------------------------------------
# Whole-net entry points
# ---------------------------------------------------------------------------------------------


def net_needs_upgrade(net: pb.NetParameter) -> bool:
    """True iff any upgrade step applies to ``net``."""
    return (
        net_needs_v0_to_v1_upgrade(net)
        or net_needs_v1_to_v2_upgrade(net)
        or net_needs_data_upgrade(net)
        or net_needs_input_upgrade(net)
        or net_needs_batchnorm_upgrade(net)
    )


def upgrade_net_as_needed(net: pb.NetParameter, source: str = "") -> pb.NetParameter:
    """Apply every needed upgrade to ``net`` in place, in Caffe's order, and return it.

    ``source`` names the file in log lines and error messages. Each applied step logs one WARNING
    line (ERROR when Caffe would have reported problems and continued anyway).
    """
    origin = _origin(source)
    if net_needs_v0_to_v1_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated V0LayerParameter: %s", origin)
        ok = upgrade_v0_net(net, source)
        _report(ok, origin, "V0LayerParameter")
    if net_needs_data_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated transformation parameters: %s", origin)
        upgrade_net_data_transformation(net)
        _report(True, origin, "data transformation parameters (now in transform_param)")
    if net_needs_v1_to_v2_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated V1LayerParameter: %s", origin)
        ok = upgrade_v1_net(net, source)
        _report(ok, origin, "V1LayerParameter")
    if net_needs_input_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated input fields: %s", origin)
        upgrade_net_input(net, source)
        _report(True, origin, "input fields (now an Input layer)")
    if net_needs_batchnorm_upgrade(net):
        log.info("Attempting to upgrade batch norm layers using deprecated params: %s", origin)
        upgrade_net_batchnorm(net)
        _report(True, origin, "BatchNorm param specs")
    return net


def _report(ok: bool, origin: str, what: str) -> None:
    """Log the outcome of one upgrade step."""
    if ok:
        log.info(
            "Successfully upgraded %s specified using deprecated %s; "
            "convert it with upgrade_net_proto_text / upgrade_net_proto_binary to silence this",
            origin,
            what,
        )
    else:
        log.error("Upgraded %s from deprecated %s with problems (see above); continuing anyway", origin, what)


# ---------------------------------------------------------------------------------------------
# V0 -> V1
# ---------------------------------------------------------------------------------------------


def net_needs_v0_to_v1_upgrade(net: pb.NetParameter) -> bool:
    """True iff any ``layers`` entry holds a V0 ``layer`` definition."""
    return any(connection.HasField("layer") for connection in net.layers)


def upgrade_v0_net(net: pb.NetParameter, source: str = "") -> bool:
    """Upgrade a V0 net to V1 in place: fold padding layers, then convert every layer.

    Returns False if some V0 parameter could not be carried over (logged). Raises NetError if the
    net mixes V0 entries with V1 ``layers`` entries or current-format ``layer`` entries. Net-level
    fields other than the layers are kept.
    """
    origin = _origin(source)
    if len(net.layer):
        raise NetError(
            f"{origin}: net mixes V0 'layers {{ layer {{ ... }} }}' definitions with current-format "
            f"'layer' definitions (first: '{net.layer[0].name}'); convert it to one format"
        )
    for index, connection in enumerate(net.layers):
        if not connection.HasField("layer"):
            name = connection.name or f"#{index}"
            raise NetError(
                f"{origin}: layer '{name}' is a V1 'layers' definition inside a V0 net; convert it to one format"
            )
    upgrade_v0_padding_layers(net, source)
    ok = True
    for connection in net.layers:
        upgraded = pb.V1LayerParameter()
        ok &= upgrade_v0_layer_parameter(connection, upgraded, source)
        connection.CopyFrom(upgraded)
    return ok


def upgrade_v0_padding_layers(net: pb.NetParameter, source: str = "") -> None:
    """Remove V0 ``padding`` layers in place, moving their ``pad`` into the conv/pool layer they feed.

    Each consumer of a padding layer's output must be a single-input ``conv`` or ``pool`` layer and
    the padding layer must have exactly one bottom and one top; otherwise NetError. Every bottom must
    be a net input or the top of an earlier layer. Idempotent.
    """
    origin = _origin(source)
    producer: dict[str, int] = {name: -1 for name in net.input}
    padding: list[int] = []
    for index, connection in enumerate(net.layers):
        v0 = connection.layer
        if v0.type == "padding":
            padding.append(index)
        for j, blob in enumerate(connection.bottom):
            if blob not in producer:
                raise NetError(
                    f"{origin}: {_v0_context(connection, index)}: bottom '{blob}' is neither a net input "
                    "nor the top of an earlier layer"
                )
            source_index = producer[blob]
            if source_index < 0:
                continue
            pad_layer = net.layers[source_index]
            if pad_layer.layer.type != "padding":
                continue
            pad_context = _v0_context(pad_layer, source_index)
            if v0.type not in ("conv", "pool"):
                raise NetError(
                    f"{origin}: {_v0_context(connection, index)}: only a conv or pool layer may take the output "
                    f"of padding {pad_context}"
                )
            if len(connection.bottom) != 1:
                raise NetError(
                    f"{origin}: {_v0_context(connection, index)}: a layer fed by padding {pad_context} "
                    "must have exactly one bottom"
                )
            if len(pad_layer.bottom) != 1 or len(pad_layer.top) != 1:
                raise NetError(f"{origin}: padding {pad_context} must have exactly one bottom and one top")
            v0.pad = pad_layer.layer.pad
            connection.bottom[j] = pad_layer.bottom[0]
        for blob in connection.top:
            producer[blob] = index
    for index in reversed(padding):
        del net.layers[index]


def upgrade_v0_layer_parameter(connection: pb.V1LayerParameter, out: pb.V1LayerParameter, source: str = "") -> bool:
    """Write the V1 form of V0 layer ``connection`` into ``out`` (cleared first).

    Returns False if some V0 parameter does not apply to the layer's type (it is logged and
    dropped). Raises NetError for an unknown V0 layer type.
    """
    out.Clear()
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    if not connection.HasField("layer"):
        return True
    v0 = connection.layer
    origin = _origin(source)
    context = _v0_context(connection)
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        try:
            out.type = upgrade_v0_layer_type(v0.type)
        except NetError:
            raise NetError(
                f"{origin}: {context}: unknown V0 layer type '{v0.type}' (known: {', '.join(sorted(V0_LAYER_TYPES))})"
            ) from None
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)

    ok = True
    for field, targets in V0_TYPED_FIELDS.items():
        if not v0.HasField(field):
            continue
        path = targets.get(v0.type)
        if path is None:
            log.error("%s: %s: parameter '%s' does not apply to this layer type; dropped", origin, context, field)
            ok = False
            continue
        value = getattr(v0, field)
        enum_type = v0.DESCRIPTOR.fields_by_name[field].enum_type
        if enum_type is not None:
            known = enum_type.values_by_number.get(value)
            value = known.name if known is not None else value
        if not _assign(out, path, value):
            log.error("%s: %s: unknown value %r for parameter '%s'; dropped", origin, context, value, field)
            ok = False
    for field, target in V0_TRANSFORM_FIELDS.items():
        if v0.HasField(field):
            setattr(out.transform_param, target, getattr(v0, field))
    return ok


def upgrade_v0_layer_type(v0_type: str) -> int:
    """V1 ``LayerType`` enum value for a V0 type string such as ``"conv"``; NetError if unknown."""
    try:
        return _V1_TYPE.Value(V0_LAYER_TYPES[v0_type])
    except KeyError:
        raise NetError(f"unknown V0 layer type '{v0_type}'") from None


# ---------------------------------------------------------------------------------------------
# Data transformation fields
# ---------------------------------------------------------------------------------------------


def net_needs_data_upgrade(net: pb.NetParameter) -> bool:
    """True iff a V1 data layer still sets transformation fields in its data parameters."""
    for layer in net.layers:
        param_field = DATA_LAYER_PARAMS.get(_V1_TYPE.Name(layer.type))
        if param_field is None:
            continue
        params = getattr(layer, param_field)
        if any(params.HasField(field) for field in DATA_TRANSFORM_FIELDS):
            return True
    return False


def upgrade_net_data_transformation(net: pb.NetParameter) -> None:
    """Move scale/mean_file/crop_size/mirror of V1 data layers into ``transform_param``, in place."""
    for layer in net.layers:
        param_field = DATA_LAYER_PARAMS.get(_V1_TYPE.Name(layer.type))
        if param_field is None:
            continue
        params = getattr(layer, param_field)
        for field in DATA_TRANSFORM_FIELDS:
            if params.HasField(field):
                setattr(layer.transform_param, field, getattr(params, field))
                params.ClearField(field)


# ---------------------------------------------------------------------------------------------
# V1 -> current
# ---------------------------------------------------------------------------------------------


def net_needs_v1_to_v2_upgrade(net: pb.NetParameter) -> bool:
    """True iff the net has any V1 ``layers`` entries."""
    return len(net.layers) > 0


def upgrade_v1_net(net: pb.NetParameter, source: str = "") -> bool:
    """Replace the V1 ``layers`` of ``net`` by current-format ``layer`` entries, in place.

    Returns False if some layer could not be fully converted (logged). Raises NetError if the net
    already has current-format ``layer`` entries as well.
    """
    origin = _origin(source)
    if len(net.layer) and len(net.layers):
        raise NetError(
            f"{origin}: refusing to upgrade a net with both 'layer' and 'layers' definitions "
            f"(e.g. layer '{net.layer[0].name}' and layers '{net.layers[0].name}'); "
            'write every layer as layer { type: "Type" ... }'
        )
    ok = True
    for index, v1_layer in enumerate(net.layers):
        if not upgrade_v1_layer(v1_layer, net.layer.add(), source):
            log.error("%s: upgrade of layer %d ('%s') was incomplete", origin, index, v1_layer.name)
            ok = False
    net.ClearField("layers")
    return ok


def upgrade_v1_layer(v1_layer: pb.V1LayerParameter, out: pb.LayerParameter, source: str = "") -> bool:
    """Write the current-format form of ``v1_layer`` into ``out`` (cleared first).

    ``blobs_lr``, ``weight_decay``, ``param`` (names) and ``blob_share_mode`` become the fields of
    one ``ParamSpec`` per position. Returns False if the layer also carries a V0 ``layer`` (ignored).
    """
    out.Clear()
    out.bottom.extend(v1_layer.bottom)
    out.top.extend(v1_layer.top)
    if v1_layer.HasField("name"):
        out.name = v1_layer.name
    out.include.extend(v1_layer.include)
    out.exclude.extend(v1_layer.exclude)
    if v1_layer.HasField("type"):
        try:
            out.type = upgrade_v1_layer_type(v1_layer.type)
        except NetError as err:
            raise NetError(f"{_origin(source)}: layer '{v1_layer.name}': {err}") from None
    out.blobs.extend(v1_layer.blobs)

    per_blob = (v1_layer.param, v1_layer.blob_share_mode, v1_layer.blobs_lr, v1_layer.weight_decay)
    count = max(len(values) for values in per_blob)
    specs = [out.param.add() for _ in range(count)]
    for spec, name in zip(specs, v1_layer.param):
        spec.name = name
    for spec, mode in zip(specs, v1_layer.blob_share_mode):
        spec.share_mode = pb.ParamSpec.DimCheckMode.Value(pb.V1LayerParameter.DimCheckMode.Name(mode))
    for spec, lr in zip(specs, v1_layer.blobs_lr):
        spec.lr_mult = lr
    for spec, decay in zip(specs, v1_layer.weight_decay):
        spec.decay_mult = decay

    out.loss_weight.extend(v1_layer.loss_weight)
    for field in V1_COPIED_PARAMS:
        if v1_layer.HasField(field):
            getattr(out, field).CopyFrom(getattr(v1_layer, field))
    if v1_layer.HasField("layer"):
        log.error("%s: layer '%s' also carries a V0 'layer' definition; it was ignored", _origin(source), v1_layer.name)
        return False
    return True


def upgrade_v1_layer_type(v1_type: int) -> str:
    """Current type string (``"Convolution"``...) for a V1 ``LayerType`` enum value; ``""`` for NONE."""
    try:
        return V1_LAYER_TYPES[_V1_TYPE.Name(v1_type)]
    except (KeyError, ValueError):
        raise NetError(f"unknown V1 layer type enum value {v1_type}") from None


# ---------------------------------------------------------------------------------------------
# Top-level inputs -> Input layer
# ---------------------------------------------------------------------------------------------


def net_needs_input_upgrade(net: pb.NetParameter) -> bool:
    """True iff the net declares top-level ``input`` fields."""
    return len(net.input) > 0


def upgrade_net_input(net: pb.NetParameter, source: str = "") -> None:
    """Turn top-level inputs into a first layer ``input`` of type ``Input``, in place.

    Shapes come from ``input_shape`` (one per input) or from ``input_dim`` (four per input). Inputs
    without any shape (as stored in old .caffemodel files) are simply dropped. The ``input``,
    ``input_shape`` and ``input_dim`` fields are cleared. NetError if the shape counts do not fit.
    """
    origin = _origin(source)
    inputs = list(net.input)
    shapes = list(net.input_shape)
    dims = list(net.input_dim)
    if shapes or dims:
        if shapes and dims:
            raise NetError(f"{origin}: give the net inputs either input_shape or input_dim, not both")
        if shapes and len(shapes) != len(inputs):
            raise NetError(f"{origin}: {len(inputs)} net input(s) {inputs} but {len(shapes)} input_shape(s)")
        if dims and len(dims) != 4 * len(inputs):
            raise NetError(
                f"{origin}: {len(inputs)} net input(s) {inputs} need {4 * len(inputs)} input_dim values, "
                f"got {len(dims)}"
            )
        layer = pb.LayerParameter(name="input", type="Input", top=inputs)
        for i in range(len(inputs)):
            shape = layer.input_param.shape.add()
            if shapes:
                shape.CopyFrom(shapes[i])
            else:
                shape.dim.extend(dims[4 * i : 4 * i + 4])
        net.layer.insert(0, layer)
    for field in ("input", "input_shape", "input_dim"):
        net.ClearField(field)


# ---------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------


def _is_old_batchnorm(layer: pb.LayerParameter) -> bool:
    """A BatchNorm layer declaring three param specs (as the old definition required) not all frozen.

    Caffe checks only the count, so it reports an upgrade for layers that are already frozen; the
    upgrade itself is the same, but here an upgraded net no longer "needs" it.
    """
    return (
        layer.type == "BatchNorm"
        and len(layer.param) == 3
        and any(spec.lr_mult != 0 or spec.decay_mult != 0 for spec in layer.param)
    )


def net_needs_batchnorm_upgrade(net: pb.NetParameter) -> bool:
    """True iff a BatchNorm layer declares three param specs with a nonzero lr_mult or decay_mult."""
    return any(_is_old_batchnorm(layer) for layer in net.layer)


def upgrade_net_batchnorm(net: pb.NetParameter) -> None:
    """Set ``lr_mult`` and ``decay_mult`` to 0 in the three param specs of old BatchNorm layers.

    The statistics of a BatchNorm layer are not learned; other ParamSpec fields (names used for
    sharing) are kept, as in Caffe master.
    """
    for layer in net.layer:
        if _is_old_batchnorm(layer):
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# ---------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------


def solver_needs_type_upgrade(solver: pb.SolverParameter) -> bool:
    """True iff the solver still uses the ``solver_type`` enum."""
    return solver.HasField("solver_type")


def upgrade_solver_type(solver: pb.SolverParameter, source: str = "") -> bool:
    """Replace the ``solver_type`` enum by the ``type`` string, in place.

    Returns False if there was nothing to upgrade. Raises SolverError if ``type`` is also set and
    names a different solver, or the enum value is unknown.
    """
    if not solver.HasField("solver_type"):
        return False
    origin = source or "<solver>"
    enum_name = pb.SolverParameter.SolverType.Name(solver.solver_type)
    new_type = SOLVER_TYPES.get(enum_name)
    if new_type is None:
        raise SolverError(f"{origin}: unknown solver_type {enum_name}")
    if solver.HasField("type") and solver.type != new_type:
        raise SolverError(
            f'{origin}: deprecated solver_type: {enum_name} conflicts with type: "{solver.type}"; remove solver_type'
        )
    solver.type = new_type
    solver.ClearField("solver_type")
    return True


def upgrade_solver_as_needed(solver: pb.SolverParameter, source: str = "") -> pb.SolverParameter:
    """Apply every needed solver upgrade in place and return the solver."""
    origin = source or "<solver>"
    if solver_needs_type_upgrade(solver):
        log.info("Attempting to upgrade input file specified using deprecated 'solver_type' field (enum): %s", origin)
        upgrade_solver_type(solver, source)
        log.info(
            "Successfully upgraded %s from deprecated 'solver_type' field (enum) to 'type' field (string) "
            "(type: \"%s\"); only 'type' will be supported in the future",
            origin,
            solver.type,
        )
    return solver
