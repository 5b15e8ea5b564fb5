"""Caffe -> Caffe2: a deploy net and its weights as an init NetDef, a predict NetDef and ``value_info.json``.

Operators and blob names follow Caffe2's own translator (``Conv`` with ``<layer>_w``/``<layer>_b``, LRN,
Dropout and Concat with their second outputs, Scale as ``Mul`` + ``Add`` through ``<top>_internal``,
BatchNorm as ``SpatialBN``); every operator is named after its layer, so converting back keeps the names.
Pooling is written with explicit pads that give Caffe's output size at the net's input size, and an AVE
pooling whose divisor (padding counted) differs from Caffe2's (padding excluded) is followed by a ``Mul``
by the per-position ratio, so the Caffe2 net computes what the Caffe net does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from caffe.caffe2 import geometry as geo
from caffe.caffe2.errors import UnsupportedOperatorError
from caffe.caffe2.io import fill_op, make_arg
from caffe.layers.core import NORMALIZE_EPS
from caffe.proto import caffe2_pb2 as c2
from caffe.proto import caffe_pb2 as pb

Shape = tuple[int, ...]


@dataclass
class Caffe2Model:
    """A Caffe2 model: its init net (weights), predict net and input shapes (``value_info.json``)."""

    init_net: c2.NetDef
    predict_net: c2.NetDef
    value_info: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class _State:
    source: str
    model: Caffe2Model

    def op(self, layer: pb.LayerParameter, type_: str, inputs: list[str], outputs: list[str]) -> c2.OperatorDef:
        op = self.model.predict_net.op.add(type=type_, name=layer.name)
        op.input.extend(inputs)
        op.output.extend(outputs)
        return op

    def weight(self, name: str, array: np.ndarray) -> str:
        self.model.init_net.op.append(fill_op(name, array))
        self.model.predict_net.external_input.append(name)
        return name


def _where(layer: pb.LayerParameter) -> str:
    return f"layer '{layer.name}' ({layer.type})"


def _args(op: c2.OperatorDef, **values: int | float | str | list[int]) -> None:
    op.arg.extend(make_arg(k, v) for k, v in values.items())


def _hw(p: pb.ConvolutionParameter, key: str, default: int) -> tuple[int, int]:
    if p.HasField(f"{key}_h") or p.HasField(f"{key}_w"):
        return getattr(p, f"{key}_h"), getattr(p, f"{key}_w")
    values = list(getattr(p, "kernel_size" if key == "kernel" else key))
    if not values:
        return default, default
    return (values[0], values[-1]) if len(values) <= 2 else (-1, -1)


def _conv(st: _State, layer: pb.LayerParameter, x: Shape, params: list[np.ndarray]) -> None:
    p = layer.convolution_param
    kh, kw = _hw(p, "kernel", 0)
    if kh < 0 or len(x) != 4:
        raise UnsupportedOperatorError(f"{st.source}: {_where(layer)}: only 2-D convolution converts")
    inputs = [layer.bottom[0], st.weight(f"{layer.name}_w", params[0])]
    if p.bias_term:
        inputs.append(st.weight(f"{layer.name}_b", params[1].reshape(-1)))
    op = st.op(layer, "Conv", inputs, [layer.top[0]])
    sh, sw = _hw(p, "stride", 1)
    ph, pw = _hw(p, "pad", 0)
    dh, dw = (list(p.dilation) * 2)[:2] if len(p.dilation) else (1, 1)
    _args(op, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_t=ph, pad_l=pw, pad_b=ph, pad_r=pw)
    if (dh, dw) != (1, 1):
        _args(op, dilation_h=dh, dilation_w=dw)
    if p.group != 1:
        _args(op, group=p.group)
    _args(op, order="NCHW")


def _pool_hw(p: pb.PoolingParameter, key: str, default: int) -> tuple[int, int]:
    if p.HasField(f"{key}_h") or p.HasField(f"{key}_w"):
        return getattr(p, f"{key}_h"), getattr(p, f"{key}_w")
    name = "kernel_size" if key == "kernel" else key
    value = getattr(p, name) if p.HasField(name) or key != "kernel" else default
    return value, value


def _pool(st: _State, layer: pb.LayerParameter, x: Shape, y: Shape) -> None:
    p = layer.pooling_param
    if p.pool not in (pb.PoolingParameter.MAX, pb.PoolingParameter.AVE):
        raise UnsupportedOperatorError(f"{st.source}: {_where(layer)}: STOCHASTIC pooling has no Caffe2 operator")
    ave = p.pool == pb.PoolingParameter.AVE
    type_ = "AveragePool" if ave else "MaxPool"
    if p.global_pooling:
        _args(st.op(layer, type_, [layer.bottom[0]], [layer.top[0]]), global_pooling=1, order="NCHW")
        return
    kh, kw = _pool_hw(p, "kernel", 0)
    sh, sw = _pool_hw(p, "stride", 1)
    ph, pw = _pool_hw(p, "pad", 0)
    out = (y[2], y[3])
    tails = []
    for size, k, s, pad, o in ((x[2], kh, sh, ph, out[0]), (x[3], kw, sw, pw, out[1])):
        tail = max(0, (o - 1) * s + k - size - pad)
        if geo.c2_pool_output(size, k, s, pad, tail) != o:
            raise UnsupportedOperatorError(
                f"{st.source}: {_where(layer)}: no Caffe2 pads give its output size {o} from {size}"
            )
        tails.append(tail)
    fix = None
    if ave:
        caffe_div = geo.divisor_map(
            geo.caffe_divisor(x[2], kh, sh, ph, out[0]), geo.caffe_divisor(x[3], kw, sw, pw, out[1])
        )
        c2_div = geo.divisor_map(geo.c2_divisor(x[2], kh, sh, ph, out[0]), geo.c2_divisor(x[3], kw, sw, pw, out[1]))
        if not np.array_equal(caffe_div, c2_div):
            fix = (c2_div / caffe_div).astype(np.float32)
    top = layer.top[0] if fix is None else f"{layer.top[0]}_unscaled"
    op = st.op(layer, type_, [layer.bottom[0]], [top])
    _args(op, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_t=ph, pad_l=pw, pad_b=tails[0], pad_r=tails[1])
    _args(op, order="NCHW")
    if fix is not None:  # Caffe counts the padding in an AVE window, Caffe2 does not
        mul = st.op(layer, "Mul", [top, st.weight(f"{layer.name}_divisor", fix)], [layer.top[0]])
        mul.name = f"{layer.name}/divisor"
        _args(mul, broadcast=1, axis=2)


def _scale(st: _State, layer: pb.LayerParameter, x: Shape, params: list[np.ndarray]) -> None:
    p = layer.scale_param
    if len(layer.bottom) != 1:
        raise UnsupportedOperatorError(f"{st.source}: {_where(layer)}: a Scale of two bottoms")
    axis = p.axis if p.axis >= 0 else len(x) + p.axis
    top = layer.top[0]
    mid = f"{top}_internal" if p.bias_term else top
    mul = st.op(layer, "Mul", [layer.bottom[0], st.weight(f"{layer.name}_w", params[0])], [mid])
    _args(mul, broadcast=1, axis=axis)
    if p.bias_term:
        add = st.op(layer, "Add", [mid, st.weight(f"{layer.name}_b", params[1])], [top])
        _args(add, broadcast=1, axis=axis)


def _bias(st: _State, layer: pb.LayerParameter, x: Shape, params: list[np.ndarray]) -> None:
    if len(layer.bottom) != 1:
        raise UnsupportedOperatorError(f"{st.source}: {_where(layer)}: a Bias of two bottoms")
    axis = layer.bias_param.axis if layer.bias_param.axis >= 0 else len(x) + layer.bias_param.axis
    add = st.op(layer, "Add", [layer.bottom[0], st.weight(f"{layer.name}_b", params[0])], [layer.top[0]])
    _args(add, broadcast=1, axis=axis)


def _batch_norm(st: _State, layer: pb.LayerParameter, x: Shape, params: list[np.ndarray]) -> None:
    factor = float(params[2].reshape(-1)[0])
    scale = np.float32(0.0 if factor == 0 else 1.0 / factor)
    channels = params[0].size
    names = [
        st.weight(f"{layer.name}_scale", np.ones(channels, dtype=np.float32)),
        st.weight(f"{layer.name}_bias", np.zeros(channels, dtype=np.float32)),
        st.weight(f"{layer.name}_mean", params[0].reshape(-1) * scale),
        st.weight(f"{layer.name}_var", params[1].reshape(-1) * scale),
    ]
    op = st.op(layer, "SpatialBN", [layer.bottom[0], *names], [layer.top[0]])
    _args(op, is_test=1, epsilon=float(layer.batch_norm_param.eps), order="NCHW")


def _eltwise(st: _State, layer: pb.LayerParameter, x: Shape, params: list[np.ndarray]) -> None:
    p = layer.eltwise_param
    if any(c != 1 for c in p.coeff):
        raise UnsupportedOperatorError(f"{st.source}: {_where(layer)}: Eltwise coefficients")
    kinds = {pb.EltwiseParameter.SUM: "Sum", pb.EltwiseParameter.PROD: "Mul", pb.EltwiseParameter.MAX: "Max"}
    if p.operation == pb.EltwiseParameter.PROD and len(layer.bottom) != 2:
        raise UnsupportedOperatorError(f"{st.source}: {_where(layer)}: PROD of {len(layer.bottom)} bottoms")
    st.op(layer, kinds[p.operation], list(layer.bottom), [layer.top[0]])


def _inner_product(st: _State, layer: pb.LayerParameter, x: Shape, params: list[np.ndarray]) -> None:
    p = layer.inner_product_param
    if p.transpose:
        raise UnsupportedOperatorError(f"{st.source}: {_where(layer)}: transpose: true")
    w = params[0].reshape(params[0].shape[-2], params[0].shape[-1]) if params[0].ndim == 4 else params[0]
    if p.normalize:  # happynear/caffe-windows: the rows the layer scales to unit length before each forward
        w = (w / np.sqrt(np.square(w, dtype=np.float32).sum(axis=1, keepdims=True) + NORMALIZE_EPS)).astype(np.float32)
    b = params[1].reshape(-1) if p.bias_term else np.zeros(w.shape[0], dtype=np.float32)
    inputs = [layer.bottom[0], st.weight(f"{layer.name}_w", w), st.weight(f"{layer.name}_b", b)]
    op = st.op(layer, "FC", inputs, [layer.top[0]])
    if p.axis != 1:
        _args(op, axis=p.axis)


def _plain(type_: str, extra: str = "") -> Callable[[_State, pb.LayerParameter, Shape, list[np.ndarray]], None]:
    def convert(st: _State, layer: pb.LayerParameter, x: Shape, params: list[np.ndarray]) -> None:
        outputs = [layer.top[0]] + ([f"_{layer.top[0]}_{extra}"] if extra else [])
        op = st.op(layer, type_, list(layer.bottom), outputs)
        if layer.type == "LRN":
            q = layer.lrn_param
            if q.norm_region != pb.LRNParameter.ACROSS_CHANNELS:
                raise UnsupportedOperatorError(f"{st.source}: {_where(layer)}: WITHIN_CHANNEL LRN")
            _args(op, size=int(q.local_size), alpha=float(q.alpha), beta=float(q.beta), bias=float(q.k), order="NCHW")
        elif layer.type == "Dropout":
            _args(op, ratio=float(layer.dropout_param.dropout_ratio), is_test=1)
        elif layer.type == "Concat":
            _args(op, axis=int(layer.concat_param.axis), order="NCHW")
        elif layer.type == "Softmax" and layer.softmax_param.axis != 1:
            _args(op, axis=int(layer.softmax_param.axis))
        elif layer.type == "ReLU" and layer.relu_param.negative_slope != 0:
            raise UnsupportedOperatorError(f"{st.source}: {_where(layer)}: negative_slope (leaky ReLU)")

    return convert


WITH_PARAMS: dict[str, Callable[[_State, pb.LayerParameter, Shape, list[np.ndarray]], None]] = {
    "Convolution": _conv,
    "InnerProduct": _inner_product,
    "Scale": _scale,
    "Bias": _bias,
    "BatchNorm": _batch_norm,
    "Eltwise": _eltwise,
}
PLAIN: dict[str, Callable[[_State, pb.LayerParameter, Shape, list[np.ndarray]], None]] = {
    "ReLU": _plain("Relu"),
    "Sigmoid": _plain("Sigmoid"),
    "TanH": _plain("Tanh"),
    "LRN": _plain("LRN", "scale"),
    "Dropout": _plain("Dropout", "mask"),
    "Softmax": _plain("Softmax"),
    "Concat": _plain("Concat", "dims"),
}
SUPPORTED = ("Input", "Pooling", *WITH_PARAMS, *PLAIN)


def from_caffe(deploy: pb.NetParameter, net: Any, source: str = "Caffe net") -> Caffe2Model:
    """The Caffe2 model of the deploy net ``deploy`` built as ``net`` (a :class:`caffe.Net` in the TEST phase,
    its weights loaded: it gives the blob shapes and the parameters).

    A layer type without a Caffe2 operator is an :class:`UnsupportedOperatorError` naming all such types.
    """
    layers = [layer for layer in deploy.layer if layer.name in net.layer_dict]
    missing = sorted({layer.type for layer in layers if layer.type not in SUPPORTED})
    if missing:
        raise UnsupportedOperatorError(
            f"{source}: layer types without a Caffe2 operator: {', '.join(missing)}; supported: {', '.join(SUPPORTED)}"
        )
    name = deploy.name or "net"
    model = Caffe2Model(c2.NetDef(name=f"{name}_init"), c2.NetDef(name=name))
    st = _State(source, model)
    inputs: list[str] = []
    for layer in layers:
        if layer.type == "Input":
            for top in layer.top:
                inputs.append(top)
                model.value_info[top] = [int(d) for d in net.blobs[top].shape]
            continue
        x = tuple(int(d) for d in net.blobs[layer.bottom[0]].shape)
        if layer.type == "Pooling":
            _pool(st, layer, x, tuple(int(d) for d in net.blobs[layer.top[0]].shape))
            continue
        params = [np.array(p.data, dtype=np.float32) for p in net.layer_dict[layer.name].blobs]
        (WITH_PARAMS.get(layer.type) or PLAIN[layer.type])(st, layer, x, params)
    weights = list(model.predict_net.external_input)
    del model.predict_net.external_input[:]
    model.predict_net.external_input.extend(inputs + weights)
    model.predict_net.external_output.extend(net.outputs)
    return model
