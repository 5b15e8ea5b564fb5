"""Caffe2 -> Caffe: a predict NetDef and its init net's tensors as a deploy NetParameter and its weights.

Shapes are followed from the input shape (``value_info.json`` or given), so pooling is converted exactly:
each Caffe2 pool becomes the Caffe pooling (head pad, ceil or floor rounding, or global pooling) that
gives the same windows at that size, and an AveragePool whose divisor differs from Caffe's (padding
excluded in Caffe2, counted in Caffe) is followed by a Scale layer holding the per-position ratio.
The translator's expansions are folded back: ``Mul`` + ``Add`` with constant per-channel operands is one
``Scale`` (``bias_term``), ``SpatialBN`` is ``BatchNorm`` + ``Scale``. Layer names are the operators' names,
else their first output's. An operator without a Caffe counterpart is an :class:`UnsupportedOperatorError`
naming it (all such types at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from caffe.caffe2 import geometry as geo
from caffe.caffe2.errors import Caffe2Error, UnsupportedOperatorError
from caffe.caffe2.io import arg_map
from caffe.proto import caffe2_pb2 as c2
from caffe.proto import caffe_pb2 as pb
from caffe.weights import array_to_blob_proto

Shape = tuple[int, ...]


@dataclass
class _State:
    """What the conversion has built so far: layers, their weights, blob shapes and used layer names."""

    source: str
    blobs: dict[str, np.ndarray]
    shapes: dict[str, Shape] = field(default_factory=dict)
    layers: list[tuple[pb.LayerParameter, list[np.ndarray]]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    def name(self, op: c2.OperatorDef, suffix: str = "") -> str:
        base = (op.name or (op.output[0] if op.output else op.type)) + suffix
        name, n = base, 1
        while name in self.names:
            n += 1
            name = f"{base}_{op.type.lower()}" if n == 2 else f"{base}_{op.type.lower()}{n - 1}"
        self.names.add(name)
        return name

    def add(self, layer: pb.LayerParameter, weights: list[np.ndarray] | None = None) -> pb.LayerParameter:
        self.layers.append((layer, weights or []))
        return layer

    def shape(self, op: c2.OperatorDef, blob: str) -> Shape:
        if blob not in self.shapes:
            raise Caffe2Error(f"{self.source}: {_where(op)}: input '{blob}' is neither produced nor an input")
        return self.shapes[blob]

    def weight(self, op: c2.OperatorDef, blob: str) -> np.ndarray:
        if blob not in self.blobs:
            raise Caffe2Error(f"{self.source}: {_where(op)}: '{blob}' is not filled by the init net")
        return self.blobs[blob]


def _where(op: c2.OperatorDef) -> str:
    return f"operator {op.type} '{op.name or (op.output[0] if op.output else '?')}'"


def _layer(name: str, type_: str, bottoms: list[str], tops: list[str]) -> pb.LayerParameter:
    return pb.LayerParameter(name=name, type=type_, bottom=bottoms, top=tops)


def _int(args: dict[str, c2.Argument], name: str, default: int) -> int:
    return int(args[name].i) if name in args else default


def _float(args: dict[str, c2.Argument], name: str, default: float) -> float:
    return float(args[name].f) if name in args else default


def _pair(args: dict[str, c2.Argument], key: str, plural: str, default: int) -> tuple[int, int]:
    """A 2-D setting from ``key``, ``key_h``/``key_w`` or the list ``plural``."""
    if plural in args and len(args[plural].ints) == 2:
        return int(args[plural].ints[0]), int(args[plural].ints[1])
    if f"{key}_h" in args or f"{key}_w" in args:
        return _int(args, f"{key}_h", default), _int(args, f"{key}_w", default)
    value = _int(args, key, default)
    return value, value


def _pads(args: dict[str, c2.Argument]) -> tuple[int, int, int, int]:
    """Caffe2's (top, left, bottom, right) pads."""
    if "pads" in args and len(args["pads"].ints) == 4:
        t, left, b, r = (int(v) for v in args["pads"].ints)
        return t, left, b, r
    pad = _int(args, "pad", 0)
    return tuple(_int(args, k, pad) for k in ("pad_t", "pad_l", "pad_b", "pad_r"))  # type: ignore[return-value]


def _check_nchw(op: c2.OperatorDef, args: dict[str, c2.Argument], source: str) -> None:
    order = args["order"].s.decode("utf-8", "replace") if "order" in args else "NCHW"
    if order != "NCHW":
        raise UnsupportedOperatorError(f"{source}: {_where(op)}: order {order} (only NCHW converts to Caffe)")


# ------------------------------------------------------------------------------------------ operators


def _conv(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
    args = arg_map(op)
    _check_nchw(op, args, st.source)
    if _int(args, "legacy_pad", 0):
        raise UnsupportedOperatorError(f"{st.source}: {_where(op)}: legacy_pad {args['legacy_pad'].i}")
    x = st.shape(op, op.input[0])
    w = st.weight(op, op.input[1])
    if w.ndim != 4 or len(x) != 4:
        raise Caffe2Error(f"{st.source}: {_where(op)}: expected 4-D input and filters, got {list(x)}, {list(w.shape)}")
    kh, kw = _pair(args, "kernel", "kernels", 0) if ("kernel" in args or "kernels" in args) else w.shape[2:]
    if (kh, kw) == (0, 0):
        kh, kw = w.shape[2:]
    sh, sw = _pair(args, "stride", "strides", 1)
    dh, dw = _pair(args, "dilation", "dilations", 1)
    t, left, b, r = _pads(args)
    if t != b or left != r:
        raise UnsupportedOperatorError(
            f"{st.source}: {_where(op)}: asymmetric padding (t {t}, l {left}, b {b}, r {r}) has no Caffe convolution"
        )
    group = _int(args, "group", 1)
    layer = st.add(_layer(st.name(op), "Convolution", [op.input[0]], [op.output[0]]))
    p = layer.convolution_param
    p.num_output = int(w.shape[0])
    p.bias_term = len(op.input) > 2
    if kh == kw:
        p.kernel_size.append(int(kh))
    else:
        p.kernel_h, p.kernel_w = int(kh), int(kw)
    if sh == sw:
        p.stride.append(sh)
    else:
        p.stride_h, p.stride_w = sh, sw
    if t == left:
        p.pad.append(t)
    else:
        p.pad_h, p.pad_w = t, left
    if (dh, dw) != (1, 1):
        p.dilation.extend([dh, dw] if dh != dw else [dh])
    if group != 1:
        p.group = group
    weights = [w] + ([st.weight(op, op.input[2]).reshape(-1)] if p.bias_term else [])
    st.layers[-1] = (layer, weights)
    oh = geo.conv_output(x[2], int(kh), sh, t, b, dh)
    ow = geo.conv_output(x[3], int(kw), sw, left, r, dw)
    st.shapes[op.output[0]] = (x[0], int(w.shape[0]), oh, ow)
    return 1


def _pool(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
    args = arg_map(op)
    _check_nchw(op, args, st.source)
    x = st.shape(op, op.input[0])
    if len(x) != 4:
        raise Caffe2Error(f"{st.source}: {_where(op)}: expected a 4-D input, got {list(x)}")
    ave = op.type == "AveragePool"
    layer = _layer(st.name(op), "Pooling", [op.input[0]], [op.output[0]])
    p = layer.pooling_param
    p.pool = pb.PoolingParameter.AVE if ave else pb.PoolingParameter.MAX
    if _int(args, "global_pooling", 0):
        p.global_pooling = True
        st.add(layer)
        st.shapes[op.output[0]] = (x[0], x[1], 1, 1)
        return 1
    legacy = _int(args, "legacy_pad", 0)
    if legacy not in (0, geo.CAFFE_LEGACY_POOLING):
        raise UnsupportedOperatorError(f"{st.source}: {_where(op)}: legacy_pad {legacy}")
    kh, kw = _pair(args, "kernel", "kernels", 0)
    sh, sw = _pair(args, "stride", "strides", 1)
    t, left, b, r = _pads(args)
    if kh < 1 or kw < 1:
        raise Caffe2Error(f"{st.source}: {_where(op)}: no kernel size")
    out = (geo.c2_pool_output(x[2], kh, sh, t, b, legacy), geo.c2_pool_output(x[3], kw, sw, left, r, legacy))
    if out[0] < 1 or out[1] < 1:
        raise Caffe2Error(f"{st.source}: {_where(op)}: empty output {list(out)} for input {list(x)}")
    st.shapes[op.output[0]] = (x[0], x[1], *out)
    ceil = _caffe_rounding(x, (kh, kw), (sh, sw), (t, left), out)
    covers = out == (1, 1) and t <= 0 and left <= 0 and kh - t >= x[2] and kw - left >= x[3]
    if ceil is None and covers:  # one window over the whole input: global pooling, exactly
        p.global_pooling = True
        st.add(layer)
        return 1
    if ceil is None:
        raise UnsupportedOperatorError(
            f"{st.source}: {_where(op)}: no Caffe pooling gives its {out[0]}x{out[1]} output windows on a "
            f"{x[2]}x{x[3]} input (kernel {kh}x{kw}, stride {sh}x{sw}, pads t{t} l{left} b{b} r{r})"
        )
    _set_hw(p, "kernel", kh, kw)
    _set_hw(p, "stride", sh, sw)
    if (t, left) != (0, 0):
        _set_hw(p, "pad", t, left)
    if not ceil:
        p.round_mode = pb.PoolingParameter.FLOOR
    st.add(layer)
    if not ave:
        return 1
    include = bool(_int(args, "count_include_pad", 0))
    c2_div = geo.divisor_map(
        geo.c2_divisor(x[2], kh, sh, t, out[0], include), geo.c2_divisor(x[3], kw, sw, left, out[1], include)
    )
    caffe_div = geo.divisor_map(
        geo.caffe_divisor(x[2], kh, sh, t, out[0]), geo.caffe_divisor(x[3], kw, sw, left, out[1])
    )
    if np.array_equal(c2_div, caffe_div):
        return 1
    ratio = (caffe_div / c2_div).astype(np.float32)
    nxt = ops[i + 1] if i + 1 < len(ops) else None
    if nxt is not None and _is_divisor_fix(st, nxt, op.output[0], ratio, ops[i + 2 :]):
        layer.top[0] = nxt.output[0]  # our own Caffe -> Caffe2 expansion of a Caffe AVE pooling: fold it back
        st.shapes[nxt.output[0]] = st.shapes[op.output[0]]
        return 2
    fix = _layer(layer.name + "/divisor", "Scale", [op.output[0]], [op.output[0]])
    st.names.add(fix.name)
    fix.scale_param.axis, fix.scale_param.num_axes = 2, 2
    st.add(fix, [ratio])
    return 1


def _is_divisor_fix(st: _State, op: c2.OperatorDef, blob: str, ratio: np.ndarray, rest: list[c2.OperatorDef]) -> bool:
    """Whether ``op`` multiplies the pool output ``blob`` (read by nothing else) by ``1 / ratio``: a Caffe
    AVE pooling that :mod:`caffe.caffe2.from_caffe` wrote as AveragePool + Mul."""
    if op.type != "Mul" or len(op.input) != 2 or op.input[0] != blob or op.input[1] not in st.blobs:
        return False
    if any(blob in later.input for later in rest):
        return False
    factor = st.blobs[op.input[1]]
    return factor.shape == ratio.shape and np.allclose(factor * ratio, 1.0, rtol=1e-6, atol=0)


def _caffe_rounding(x: Shape, k: tuple[int, int], s: tuple[int, int], pad: tuple[int, int], out: Shape) -> bool | None:
    """True (ceil) or False (floor) when Caffe's pooling with head pads ``pad`` gives ``out``; else None."""
    padded = pad != (0, 0)
    if any(p < 0 or p >= kk for p, kk in zip(pad, k, strict=True)):
        return None
    for ceil in (True, False):
        sizes = tuple(geo.caffe_pool_output(x[2 + d], k[d], s[d], pad[d], ceil, padded) for d in (0, 1))
        if sizes == tuple(out):
            return ceil
    return None


def _set_hw(p: pb.PoolingParameter, key: str, h: int, w: int) -> None:
    if h == w:
        setattr(p, "kernel_size" if key == "kernel" else key, h)
    else:
        setattr(p, f"{key}_h", h)
        setattr(p, f"{key}_w", w)


def _same_shape(st: _State, op: c2.OperatorDef) -> None:
    st.shapes[op.output[0]] = st.shape(op, op.input[0])


def _simple(caffe_type: str) -> Callable[[_State, c2.OperatorDef, int, list[c2.OperatorDef]], int]:
    def convert(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
        st.add(_layer(st.name(op), caffe_type, [op.input[0]], [op.output[0]]))
        _same_shape(st, op)
        return 1

    return convert


def _lrn(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
    args = arg_map(op)
    _check_nchw(op, args, st.source)
    layer = st.add(_layer(st.name(op), "LRN", [op.input[0]], [op.output[0]]))
    p = layer.lrn_param
    p.local_size = _int(args, "size", 5)
    p.alpha, p.beta, p.k = _float(args, "alpha", 1.0), _float(args, "beta", 0.75), _float(args, "bias", 1.0)
    _same_shape(st, op)
    return 1


def _dropout(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
    layer = st.add(_layer(st.name(op), "Dropout", [op.input[0]], [op.output[0]]))
    layer.dropout_param.dropout_ratio = _float(arg_map(op), "ratio", 0.5)
    _same_shape(st, op)
    return 1


def _softmax(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
    layer = st.add(_layer(st.name(op), "Softmax", [op.input[0]], [op.output[0]]))
    axis = _int(arg_map(op), "axis", 1)
    if axis != 1:
        layer.softmax_param.axis = axis
    _same_shape(st, op)
    return 1


def _fc(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
    args = arg_map(op)
    x = st.shape(op, op.input[0])
    axis = _int(args, "axis", 1)
    w = st.weight(op, op.input[1])
    axis_w = _int(args, "axis_w", 1)
    if not 0 < axis_w < max(w.ndim, 2):
        raise Caffe2Error(f"{st.source}: {_where(op)}: axis_w {axis_w} for weights of shape {list(w.shape)}")
    w = w.reshape(math.prod(w.shape[:axis_w]), -1)  # axis_w: the old 4-D (1, 1, N, K) blobs have 3
    k = math.prod(x[axis:])
    if k != w.shape[1]:
        raise Caffe2Error(
            f"{st.source}: {_where(op)}: input '{op.input[0]}' of shape {list(x)} has {k} values per row "
            f"but the weights {list(w.shape)} expect {w.shape[1]}"
        )
    layer = _layer(st.name(op), "InnerProduct", [op.input[0]], [op.output[0]])
    layer.inner_product_param.num_output = int(w.shape[0])
    if axis != 1:
        layer.inner_product_param.axis = axis
    bias = st.weight(op, op.input[2]).reshape(-1) if len(op.input) > 2 else None
    layer.inner_product_param.bias_term = bias is not None
    st.add(layer, [w] + ([bias] if bias is not None else []))
    st.shapes[op.output[0]] = (*x[:axis], int(w.shape[0]))
    return 1


def _concat(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
    args = arg_map(op)
    _check_nchw(op, args, st.source)
    if _int(args, "add_axis", 0):
        raise UnsupportedOperatorError(f"{st.source}: {_where(op)}: add_axis")
    axis = _int(args, "axis", 1)
    shapes = [st.shape(op, b) for b in op.input]
    layer = st.add(_layer(st.name(op), "Concat", list(op.input), [op.output[0]]))
    if axis != 1:
        layer.concat_param.axis = axis
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    st.shapes[op.output[0]] = tuple(out)
    return 1


def _spatial_bn(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
    args = arg_map(op)
    _check_nchw(op, args, st.source)
    if len(op.input) != 5 or (len(op.output) > 1 and not _int(args, "is_test", 0)):
        raise UnsupportedOperatorError(f"{st.source}: {_where(op)}: only inference SpatialBN (is_test: 1, 5 inputs)")
    scale, bias, mean, var = (st.weight(op, b).reshape(-1) for b in op.input[1:5])
    name = st.name(op)
    bn = _layer(name, "BatchNorm", [op.input[0]], [op.output[0]])
    bn.batch_norm_param.use_global_stats = True
    bn.batch_norm_param.eps = _float(args, "epsilon", 1e-5)
    st.add(bn, [mean, var, np.ones(1, dtype=np.float32)])
    if not (np.all(scale == 1) and np.all(bias == 0)):
        sc = _layer(st.name(op, "_scale"), "Scale", [op.output[0]], [op.output[0]])
        sc.scale_param.bias_term = True
        st.add(sc, [scale, bias])
    _same_shape(st, op)
    return 1


def _broadcast_axis(st: _State, op: c2.OperatorDef, x: Shape, b: np.ndarray) -> int:
    args = arg_map(op)
    axis = _int(args, "axis", -1)
    axis = len(x) - b.ndim if axis < 0 else axis
    if tuple(x[axis : axis + b.ndim]) != b.shape:
        raise Caffe2Error(f"{st.source}: {_where(op)}: operand {list(b.shape)} does not fit {list(x)} at axis {axis}")
    return axis


def _mul_add(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
    """Mul/Add: by a constant -> Scale/Bias (a Mul + Add pair -> one Scale), of two blobs -> Eltwise."""
    if len(op.input) != 2:
        raise Caffe2Error(f"{st.source}: {_where(op)}: expected 2 inputs, got {len(op.input)}")
    x = st.shape(op, op.input[0])
    if op.input[1] not in st.blobs:
        if st.shape(op, op.input[1]) != x:
            raise UnsupportedOperatorError(f"{st.source}: {_where(op)}: broadcasting between two computed blobs")
        layer = st.add(_layer(st.name(op), "Eltwise", list(op.input), [op.output[0]]))
        layer.eltwise_param.operation = pb.EltwiseParameter.PROD if op.type == "Mul" else pb.EltwiseParameter.SUM
        _same_shape(st, op)
        return 1
    b = st.blobs[op.input[1]]
    axis = _broadcast_axis(st, op, x, b)
    nxt = ops[i + 1] if i + 1 < len(ops) else None
    pair = (
        op.type == "Mul"
        and nxt is not None
        and nxt.type == "Add"
        and len(nxt.input) == 2
        and nxt.input[0] == op.output[0]
        and nxt.input[1] in st.blobs
        and st.blobs[nxt.input[1]].shape == b.shape
        and _broadcast_axis(st, nxt, x, st.blobs[nxt.input[1]]) == axis
        and not any(op.output[0] in later.input for later in ops[i + 2 :])
    )
    last = nxt if pair and nxt is not None else op
    layer = _layer(st.name(last), "Scale" if op.type == "Mul" else "Bias", [op.input[0]], [last.output[0]])
    param = layer.scale_param if op.type == "Mul" else layer.bias_param
    if axis != 1:
        param.axis = axis
    if b.ndim != 1:
        param.num_axes = b.ndim
    weights = [b]
    if pair and nxt is not None:
        layer.scale_param.bias_term = True
        weights.append(st.blobs[nxt.input[1]])
    st.add(layer, weights)
    st.shapes[last.output[0]] = x
    return 2 if pair else 1


def _sum(st: _State, op: c2.OperatorDef, i: int, ops: list[c2.OperatorDef]) -> int:
    shapes = {st.shape(op, b) for b in op.input}
    if len(shapes) != 1:
        raise Caffe2Error(f"{st.source}: {_where(op)}: inputs of different shapes {sorted(shapes)}")
    if len(op.input) == 1:
        st.add(_layer(st.name(op), "Split", [op.input[0]], [op.output[0]]))
    else:
        st.add(_layer(st.name(op), "Eltwise", list(op.input), [op.output[0]]))
    _same_shape(st, op)
    return 1


CONVERTERS: dict[str, Callable[[_State, c2.OperatorDef, int, list[c2.OperatorDef]], int]] = {
    "Conv": _conv,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "Relu": _simple("ReLU"),
    "Sigmoid": _simple("Sigmoid"),
    "Tanh": _simple("TanH"),
    "LRN": _lrn,
    "FC": _fc,
    "Dropout": _dropout,
    "Softmax": _softmax,
    "Concat": _concat,
    "SpatialBN": _spatial_bn,
    "Mul": _mul_add,
    "Add": _mul_add,
    "Sum": _sum,
}


def check_supported(predict: c2.NetDef, source: str) -> None:
    """An :class:`UnsupportedOperatorError` naming every operator type without a Caffe counterpart."""
    unsupported: dict[str, list[str]] = {}
    for op in predict.op:
        if op.type not in CONVERTERS:
            unsupported.setdefault(op.type, []).append(op.name or (op.output[0] if op.output else "?"))
    if unsupported:
        listing = "; ".join(f"{t} (e.g. '{n[0]}', {len(n)} in all)" for t, n in unsupported.items())
        raise UnsupportedOperatorError(
            f"{source}: unsupported Caffe2 operator{'s' if len(unsupported) > 1 else ''} "
            f"{', '.join(unsupported)}: {listing}; supported: {', '.join(sorted(CONVERTERS))}"
        )


def net_inputs(predict: c2.NetDef, blobs: dict[str, np.ndarray]) -> list[str]:
    """The blobs the net reads that neither an operator nor the init net makes (its data inputs)."""
    read = {b for op in predict.op for b in op.input}
    declared = [b for b in predict.external_input if b not in blobs and b in read]
    if declared:
        return declared
    made: set[str] = set()
    inputs: list[str] = []
    for op in predict.op:
        for b in op.input:
            if b not in made and b not in blobs and b not in inputs:
                inputs.append(b)
        made.update(op.output)
    return inputs


def to_caffe(
    predict: c2.NetDef,
    blobs: dict[str, np.ndarray],
    input_shapes: dict[str, list[int]] | list[int],
    source: str = "Caffe2 net",
) -> tuple[pb.NetParameter, pb.NetParameter]:
    """The deploy NetParameter (no weights) and the weights NetParameter (.caffemodel) of a Caffe2 net.

    ``input_shapes``: by input name (``value_info.json``), or one shape for a net with one input.
    """
    check_supported(predict, source)
    st = _State(source, blobs)
    inputs = net_inputs(predict, blobs)
    if not inputs:
        raise Caffe2Error(f"{source}: the net has no input (every blob it reads is filled by the init net)")
    if isinstance(input_shapes, list):
        if len(inputs) != 1:
            raise Caffe2Error(f"{source}: {len(inputs)} inputs ({', '.join(inputs)}): name the shape of each")
        input_shapes = {inputs[0]: input_shapes}
    for name in inputs:
        if name not in input_shapes:
            raise Caffe2Error(f"{source}: no shape for input '{name}' (give value_info.json or --input_shape)")
        layer = st.add(_layer(name, "Input", [], [name]))
        layer.input_param.shape.add().dim.extend(int(d) for d in input_shapes[name])
        st.names.add(name)
        st.shapes[name] = tuple(int(d) for d in input_shapes[name])
    ops = list(predict.op)
    i = 0
    while i < len(ops):
        op = ops[i]
        if not op.input or not op.output:
            raise Caffe2Error(f"{source}: {_where(op)}: no input or no output")
        i += CONVERTERS[op.type](st, op, i, ops)
    deploy = pb.NetParameter(name=predict.name or "caffe2_net")
    weights = pb.NetParameter(name=deploy.name)
    for layer, arrays in st.layers:
        deploy.layer.append(layer)
        if arrays:
            trained = weights.layer.add()
            trained.CopyFrom(layer)
            trained.blobs.extend(array_to_blob_proto(np.asarray(a, dtype=np.float32)) for a in arrays)
    return deploy, weights
