"""Caffe2 models (issue 17): NetDef reading, Caffe2 -> Caffe and Caffe -> Caffe2 conversion, checked against
an independent NumPy implementation of the Caffe2 operators written here.

The four zoo predict nets in the assets (bvlc_alexnet, inception_v1, inception_v2, resnet50) get init nets
built here: ``GivenTensorFill`` tensors whose shapes follow from the operators (8 filters per convolution,
10 classes) as the reference runs. The project's own Caffe models (AlexNet, CaffeNet, GoogLeNet,
SqueezeNet v1.0/v1.1) run at batch 1 with their widths divided by 8 (same layers, kernels, pads, strides
and groups), with random weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, asset

import caffe
from caffe.caffe2 import Caffe2Error, UnsupportedOperatorError, load_net, parse_netdef, read_netdef, read_value_info
from caffe.caffe2.from_caffe import from_caffe
from caffe.caffe2.io import fill_op, init_blobs, write_netdef
from caffe.caffe2.model import find_caffe2_files
from caffe.caffe2.to_caffe import to_caffe
from caffe.errors import CaffeError
from caffe.proto import caffe2_pb2 as c2
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import parse_text, read_net_param

ZOO = ("bvlc_alexnet", "inception_v1", "inception_v2", "resnet50")
CAFFE_MODELS = ("bvlc_alexnet", "bvlc_reference_caffenet", "bvlc_googlenet", "squeezenet_v1.0", "squeezenet_v1.1")
TOLERANCE = 1e-5


# ============================================================================ NumPy reference of Caffe2's operators


def _args(op: c2.OperatorDef) -> dict:
    out: dict = {}
    for a in op.arg:
        if a.HasField("f"):
            out[a.name] = a.f
        elif a.HasField("i"):
            out[a.name] = a.i
        elif a.HasField("s"):
            out[a.name] = a.s.decode()
        elif a.ints:
            out[a.name] = list(a.ints)
        elif a.floats:
            out[a.name] = list(a.floats)
    return out


def _hw(a: dict, key: str, default: int) -> tuple[int, int]:
    if f"{key}_h" in a:
        return a[f"{key}_h"], a[f"{key}_w"]
    value = a.get(key, default)
    return value, value


def _pads(a: dict) -> tuple[int, int, int, int]:
    if "pads" in a:
        return tuple(a["pads"])
    p = a.get("pad", 0)
    return tuple(a.get(k, p) for k in ("pad_t", "pad_l", "pad_b", "pad_r"))


def _windows(size: int, k: int, s: int, head: int, tail: int, legacy: int) -> list[tuple[int, int]]:
    """Caffe2's pooling windows [start, end) along one axis (before clipping to the image)."""
    if legacy == 3:  # CAFFE_LEGACY_POOLING: Caffe's ceil rule
        out = math.ceil((size + 2 * head - k) / s) + 1
        if head > 0 and (out - 1) * s >= size + head:
            out -= 1
    else:
        out = (size + head + tail - k) // s + 1
    return [(i * s - head, i * s - head + k) for i in range(out)]


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, a: dict) -> np.ndarray:
    kh, kw = w.shape[2:]
    sh, sw = _hw(a, "stride", 1)
    dh, dw = _hw(a, "dilation", 1)
    t, left, bottom, r = _pads(a)
    g = a.get("group", 1)
    xp = np.pad(x, ((0, 0), (0, 0), (t, bottom), (left, r)))
    n, c, h, wd = xp.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (wd - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((n, c, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[
                :, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw
            ]
    cg, og = c // g, w.shape[0] // g
    y = np.concatenate(
        [np.einsum("ncklhw,ockl->nohw", cols[:, i * cg : (i + 1) * cg], w[i * og : (i + 1) * og]) for i in range(g)], 1
    )
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def np_pool(x: np.ndarray, a: dict, ave: bool) -> np.ndarray:
    """MaxPool / AveragePool; the average divides by the pixels inside the image (Caffe2's default)."""
    if a.get("global_pooling"):
        return (x.mean if ave else x.max)(axis=(2, 3), keepdims=True)
    (kh, kw), (sh, sw), (t, left, b, r) = _hw(a, "kernel", 0), _hw(a, "stride", 1), _pads(a)
    rows = _windows(x.shape[2], kh, sh, t, b, a.get("legacy_pad", 0))
    cols = _windows(x.shape[3], kw, sw, left, r, a.get("legacy_pad", 0))
    y = np.empty((*x.shape[:2], len(rows), len(cols)))
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            win = x[:, :, max(r0, 0) : r1, max(c0, 0) : c1]
            y[:, :, i, j] = win.mean(axis=(2, 3)) if ave else win.max(axis=(2, 3))
    return y


def np_lrn(x: np.ndarray, a: dict) -> np.ndarray:
    size = a["size"]
    sq = np.pad(x * x, ((0, 0), ((size - 1) // 2, size // 2), (0, 0), (0, 0)))
    acc = sum(sq[:, i : i + x.shape[1]] for i in range(size))
    return x * (a.get("bias", 1.0) + a["alpha"] / size * acc) ** -a["beta"]


def _broadcast(x: np.ndarray, b: np.ndarray, a: dict) -> np.ndarray:
    if not a.get("broadcast"):
        return b
    axis = a.get("axis", x.ndim - b.ndim)
    return b.reshape((1,) * axis + b.shape + (1,) * (x.ndim - axis - b.ndim))


def np_run(net: c2.NetDef, blobs: dict, inputs: dict, make=None) -> dict[str, np.ndarray]:
    """Run ``net`` in float64; ``make(kind, hint)`` creates a tensor the init net lacks (added to ``blobs``)."""
    ws = {k: np.asarray(v, np.float64) for k, v in {**blobs, **inputs}.items()}

    def get(name: str, hint: tuple) -> np.ndarray:
        if name not in ws:
            blobs[name] = make(hint)
            ws[name] = blobs[name].astype(np.float64)
        return ws[name]

    for op in net.op:
        a, t, x = _args(op), op.type, ws[op.input[0]]
        if t == "Conv":
            w = get(op.input[1], ("conv", x.shape[1] // a.get("group", 1), *_hw(a, "kernel", 0)))
            y = np_conv(x, w, get(op.input[2], ("bias", w.shape[0])) if len(op.input) > 2 else None, a)
        elif t == "Relu":
            y = np.maximum(x, 0)
        elif t in ("MaxPool", "AveragePool"):
            y = np_pool(x, a, t == "AveragePool")
        elif t == "LRN":
            y = np_lrn(x, a)
        elif t == "Dropout":
            y = x
        elif t == "FC":
            x2 = x.reshape(math.prod(x.shape[: a.get("axis", 1)]), -1)
            aw = a.get("axis_w", 1)
            w = get(op.input[1], ("fc", x2.shape[1], aw))
            w = w.reshape(math.prod(w.shape[:aw]), -1)
            y = x2 @ w.T + get(op.input[2], ("bias", w.shape[0]))
        elif t == "Softmax":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            y = e / e.sum(axis=1, keepdims=True)
        elif t == "Concat":
            y = np.concatenate([ws[i] for i in op.input], axis=a.get("axis", 1))
        elif t == "SpatialBN":
            c = x.shape[1]
            s, b, m, v = (
                get(n, (k, c)).reshape(1, c, 1, 1) for n, k in zip(op.input[1:5], ("pos", "bias", "bias", "pos"))
            )
            y = s * (x - m) / np.sqrt(v + a.get("epsilon", 1e-5)) + b
        elif t in ("Mul", "Add"):
            other = get(op.input[1], ("pos" if t == "Mul" else "bias", x.shape[a.get("axis", 1)]))
            y = x * _broadcast(x, other, a) if t == "Mul" else x + _broadcast(x, other, a)
        elif t == "Sum":
            y = sum(ws[i] for i in op.input)
        else:
            raise NotImplementedError(t)
        ws[op.output[0]] = y
    return ws


def _maker(rng: np.random.Generator, width: int = 8, classes: int = 10):
    def make(hint: tuple) -> np.ndarray:
        kind = hint[0]
        if kind == "conv":
            return rng.normal(0, math.prod(hint[1:]) ** -0.5, (width, *hint[1:])).astype(np.float32)
        if kind == "fc":
            return rng.normal(0, hint[1] ** -0.5, (1,) * (hint[2] - 1) + (classes, hint[1])).astype(np.float32)
        if kind == "pos":
            return rng.uniform(0.5, 2.0, hint[1]).astype(np.float32)
        return rng.normal(0, 0.1, hint[1]).astype(np.float32)

    return make


def rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


# ============================================================================ helpers


def zoo_model(name: str) -> tuple[c2.NetDef, dict[str, np.ndarray], dict[str, list[int]], np.ndarray, dict]:
    """A zoo predict net, an init net's tensors made for it, its value_info, an input and the reference run."""
    net = read_netdef(asset(f"caffe2/{name}/predict_net.pbtxt"))
    info = read_value_info(asset(f"caffe2/{name}/value_info.json"))
    ((input_name, shape),) = info.items()
    rng = np.random.default_rng(17)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    blobs: dict[str, np.ndarray] = {}
    ws = np_run(net, blobs, {input_name: x}, _maker(rng))
    return net, blobs, info, x, ws


def caffe_forward(deploy: pb.NetParameter, weights: pb.NetParameter, x: np.ndarray) -> caffe.Net:
    net = caffe.Net(deploy, caffe.TEST)
    net.copy_from(weights)
    net.blobs[net.inputs[0]].data[...] = x
    net.forward()
    return net


def narrow(deploy: pb.NetParameter, factor: int = 8) -> pb.NetParameter:
    """``deploy`` at batch 1 with every num_output divided by ``factor`` (kept a multiple of the group)."""
    out = pb.NetParameter()
    out.CopyFrom(deploy)
    for layer in out.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = 1
        for p in (layer.convolution_param, layer.inner_product_param):
            if p.num_output:
                group = getattr(p, "group", 1) or 1
                p.num_output = max(group * 2, p.num_output // factor // group * group)
    return out


def random_caffe_net(deploy: pb.NetParameter, seed: int = 0) -> caffe.Net:
    net = caffe.Net(deploy, caffe.TEST)
    rng = np.random.default_rng(seed)
    for params in net.params.values():
        for i, p in enumerate(params):
            fan_in = math.prod(p.data.shape[1:]) if p.data.ndim > 1 else 1
            p.data[...] = rng.normal(0, fan_in**-0.5, p.data.shape) if i == 0 else rng.normal(0, 0.1, p.data.shape)
    return net


def caffe_model_path(name: str) -> Path:
    local = ROOT / "models" / name / "deploy.prototxt"
    return local if local.is_file() else asset(f"caffe-ref/models/{name}/deploy.prototxt")


# ============================================================================ reading NetDefs


def test_text_and_binary_netdefs_read_the_same(tmp_path: Path) -> None:
    text = read_netdef(asset("caffe2/inception_v2/predict_net.pbtxt"))
    assert len(text.op) == 370 and text.external_output == ["prob"]
    write_netdef(tmp_path / "predict_net.pb", text)
    binary = read_netdef(tmp_path / "predict_net.pb")
    assert binary == text
    (tmp_path / "noext").write_bytes((tmp_path / "predict_net.pb").read_bytes())
    assert read_netdef(tmp_path / "noext") == text  # binary recognised by content
    assert parse_netdef(asset("caffe2/resnet50/predict_net.pbtxt").read_bytes()).name == "resnet50"


@pytest.mark.parametrize(
    "data, words",
    [
        (b"\x12\xff\xff\xff\xff\x0f", "not a valid"),  # an op of 4 GiB in a few bytes
        (b"op { type: 'Conv' \n input: }", "predict_net"),
        (b"\x00\x01\x02garbage" * 10, "not a valid"),
        (b"op { arg { n { op { arg { n { " * 200, "predict_net"),
    ],
    ids=["huge-length", "text-syntax", "garbage", "deep-nesting"],
)
def test_corrupt_netdefs_are_caffe_errors_naming_the_file(tmp_path: Path, data: bytes, words: str) -> None:
    path = tmp_path / "predict_net.pb"
    path.write_bytes(data)
    with pytest.raises(CaffeError) as err:
        read_netdef(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_init_net_shapes_are_checked_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    huge = c2.OperatorDef(type="GivenTensorFill", output=["w"])
    huge.arg.add(name="shape", ints=[1 << 20, 1 << 20])
    huge.arg.add(name="values", floats=[1.0])
    with pytest.raises(CaffeError, match=r"init.*w"):
        init_blobs(c2.NetDef(op=[huge]), "init")
    short = fill_op("w", np.zeros((2, 3), np.float32))
    short.arg[1].floats.pop()
    with pytest.raises(Caffe2Error, match="5 values for shape \\[2, 3\\]"):
        init_blobs(c2.NetDef(op=[short]), "init")
    with pytest.raises(Caffe2Error, match="XavierFill"):
        init_blobs(c2.NetDef(op=[c2.OperatorDef(type="XavierFill", output=["w"])]), "init")


# ============================================================================ Caffe2 -> Caffe


@pytest.mark.parametrize("name", ZOO)
def test_zoo_nets_converted_to_caffe_match_numpy(name: str) -> None:
    net, blobs, info, x, ws = zoo_model(name)
    deploy, weights = to_caffe(net, blobs, info, name)
    converted = caffe_forward(deploy, weights, x)
    output = net.external_output[0]
    logits = [op for op in net.op if op.type == "FC"][-1].output[0]
    assert rel_diff(converted.blobs[output].data, ws[output]) <= TOLERANCE
    assert rel_diff(converted.blobs[logits].data, ws[logits]) <= TOLERANCE
    # names kept: every Caffe2 output is a Caffe blob (but the Mul outputs folded into a Scale), every named
    # operator a layer
    folded = {op.output[0] for op in net.op if op.type == "Mul" and op.output[0].endswith("_internal")}
    assert set(converted.blobs) >= {op.output[0] for op in net.op} - folded
    assert {op.name for op in net.op if op.name} <= {layer.name for layer in deploy.layer}


def test_translator_patterns_fold_back() -> None:
    net, blobs, info, _, _ = zoo_model("inception_v2")
    deploy, _ = to_caffe(net, blobs, info, "inception_v2")
    types = [layer.type for layer in deploy.layer]
    spatial_bn = sum(op.type == "SpatialBN" for op in net.op)
    mul_add = sum(op.type == "Mul" for op in net.op)
    # SpatialBN -> BatchNorm + Scale; each Mul + Add pair -> one Scale with a bias
    assert types.count("BatchNorm") == spatial_bn
    scales = [layer for layer in deploy.layer if layer.type == "Scale" and not layer.name.endswith("/divisor")]
    assert len(scales) == spatial_bn + mul_add and "Bias" not in types
    assert all(layer.scale_param.bias_term for layer in scales)
    bn_scale = next(layer for layer in deploy.layer if layer.name == "conv1/7x7_s2/bn/sc")
    assert list(bn_scale.bottom) == ["conv1/7x7_s2/bn"] and list(bn_scale.top) == ["conv1/7x7_s2/bn/sc"]


def test_average_pool_divisor_at_padded_borders() -> None:
    """Caffe2's AveragePool divides by the pixels inside the image (4 at a corner of a 3x3 window with pad 1),
    Caffe by the window clipped to the padded image (9): the conversion adds a Scale by 9/4, 9/6, 1."""
    net, blobs, info, x, ws = zoo_model("inception_v2")
    deploy, weights = to_caffe(net, blobs, info, "inception_v2")
    fixes = {layer.name: layer for layer in weights.layer if layer.name.endswith("/divisor")}
    assert "inception_3a/pool/divisor" in fixes and len(fixes) == 7  # the 7 padded AveragePools, not pool5
    ratio = caffe.io.blobproto_to_array(fixes["inception_3a/pool/divisor"].blobs[0])
    assert ratio[0, 0] == pytest.approx(9 / 4) and ratio[0, 1] == pytest.approx(9 / 6) and ratio[1, 1] == 1
    # without the fix Caffe's pooling would differ from Caffe2's at the borders, and only there
    pool = next(op for op in net.op if op.output[0] == "inception_3a/pool")
    padded = np.pad(ws[pool.input[0]], ((0, 0), (0, 0), (1, 1), (1, 1)))
    caffe_style = sum(padded[:, :, i : i + 28, j : j + 28] for i in range(3) for j in range(3)) / 9
    diff = np.abs(caffe_style - ws["inception_3a/pool"]).max(axis=(0, 1))
    assert diff[1:-1, 1:-1].max() < 1e-12 and diff[0, 0] > 1e-3
    converted = caffe_forward(deploy, weights, x)
    assert rel_diff(converted.blobs["inception_3a/pool"].data, ws["inception_3a/pool"]) <= TOLERANCE


def test_pool_rounding_is_matched_at_the_input_size() -> None:
    """inception_v1 pools with Caffe2's floor (112 -> 55, not Caffe's 56), its pool5 pads one row and column
    after a 6x6 input (one window: global pooling); bvlc_alexnet's pool5 has the translator's pad_b/pad_r."""
    net, blobs, info, x, _ = zoo_model("inception_v1")
    deploy, weights = to_caffe(net, blobs, info, "inception_v1")
    layers = {layer.name: layer for layer in deploy.layer}
    assert layers["pool1/3x3_s2"].pooling_param.round_mode == pb.PoolingParameter.FLOOR
    assert layers["pool5/7x7_s1"].pooling_param.global_pooling
    converted = caffe_forward(deploy, weights, x)
    assert converted.blobs["pool1/3x3_s2"].data.shape[2:] == (55, 55)
    assert converted.blobs["pool5/7x7_s1"].data.shape[2:] == (1, 1)
    net, blobs, info, x, _ = zoo_model("bvlc_alexnet")
    deploy, _ = to_caffe(net, blobs, info, "bvlc_alexnet")
    pool5 = next(layer for layer in deploy.layer if layer.name == "pool5").pooling_param
    assert pool5.round_mode == pb.PoolingParameter.CEIL and pool5.pad == 0


def test_unsupported_operator_is_named() -> None:
    net = read_netdef(asset("caffe2/bvlc_alexnet/predict_net.pbtxt"))
    net.op.add(type="GenerateProposals", name="rpn", input=["prob", "im_info"], output=["rois"])
    net.op.add(type="BBoxTransform", input=["rois"], output=["boxes"])
    with pytest.raises(UnsupportedOperatorError, match=r"GenerateProposals.*'rpn'") as err:
        to_caffe(net, {}, {"data": [1, 3, 224, 224]}, "detectron")
    assert "BBoxTransform" in str(err.value) and "detectron" in str(err.value)


# ============================================================================ Caffe -> Caffe2 -> Caffe


@pytest.mark.parametrize("name", CAFFE_MODELS)
def test_caffe_models_converted_to_caffe2_match_numpy_and_round_trip(name: str) -> None:
    deploy = narrow(read_net_param(caffe_model_path(name)))
    net = random_caffe_net(deploy)
    x = np.random.default_rng(1).uniform(-1, 1, net.blobs[net.inputs[0]].data.shape).astype(np.float32)
    net.blobs[net.inputs[0]].data[...] = x
    want = {k: v.copy() for k, v in net.forward().items()}
    model = from_caffe(deploy, net, name)
    blobs = init_blobs(model.init_net)
    ws = np_run(model.predict_net, dict(blobs), {net.inputs[0]: x})
    back_deploy, back_weights = to_caffe(model.predict_net, blobs, model.value_info, name)
    back = caffe_forward(back_deploy, back_weights, x)
    for out, value in want.items():
        assert rel_diff(value, ws[out]) <= TOLERANCE, out
        assert np.array_equal(back.blobs[out].data, value), out
    names = [layer.name for layer in deploy.layer if layer.type != "Input"]  # an Input is named after its blob
    assert [layer.name for layer in back_deploy.layer if layer.type != "Input"] == names
    assert [layer.type for layer in back_deploy.layer] == [layer.type for layer in deploy.layer]


SMALL_NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 11 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 1 pad_w: 0 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ave" type: "Pooling" bottom: "conv" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "max" type: "Pooling" bottom: "conv" top: "max"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "ave" bottom: "max" top: "sum" }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def test_ave_pooling_with_padding_batch_norm_and_eltwise_round_trip() -> None:
    deploy = parse_text(SMALL_NET, pb.NetParameter())
    net = random_caffe_net(deploy, seed=3)
    net.params["bn"][1].data[...] = np.abs(net.params["bn"][1].data) + 0.5
    net.params["bn"][2].data[...] = 2.0  # Caffe's moving-average factor
    x = np.random.default_rng(2).normal(size=(2, 3, 9, 11)).astype(np.float32)
    net.blobs["data"].data[...] = x
    want = {k: v.copy() for k, v in net.forward().items()} | {"ave": net.blobs["ave"].data.copy()}
    model = from_caffe(deploy, net, "small")
    assert [op.type for op in model.predict_net.op].count("Mul") == 2  # the Scale and the AVE divisor
    blobs = init_blobs(model.init_net)
    ws = np_run(model.predict_net, dict(blobs), {"data": x})
    back_deploy, back_weights = to_caffe(model.predict_net, blobs, model.value_info, "small")
    assert [layer.type for layer in back_deploy.layer] == [layer.type for layer in deploy.layer]
    back = caffe_forward(back_deploy, back_weights, x)
    for out in ("ave", "prob"):
        assert rel_diff(want[out], ws[out]) <= TOLERANCE, out
        assert np.allclose(back.blobs[out].data, want[out], rtol=1e-6, atol=1e-7), out


def test_caffe_layer_without_caffe2_operator_is_named() -> None:
    deploy = parse_text(SMALL_NET.replace('type: "ReLU"', 'type: "PReLU"'), pb.NetParameter())
    with pytest.raises(UnsupportedOperatorError, match="PReLU"):
        from_caffe(deploy, caffe.Net(deploy, caffe.TEST), "small")


# ============================================================================ the commands


def _zoo_folder(folder: Path, name: str = "bvlc_alexnet") -> tuple[np.ndarray, dict]:
    """Write a zoo model with random weights (init_net.pb, predict_net.pb, value_info.json) into ``folder``."""
    net, blobs, _, x, ws = zoo_model(name)
    folder.mkdir(parents=True, exist_ok=True)
    write_netdef(folder / "predict_net.pb", net)
    write_netdef(folder / "init_net.pb", c2.NetDef(name=f"{name}_init", op=[fill_op(k, v) for k, v in blobs.items()]))
    (folder / "value_info.json").write_bytes(asset(f"caffe2/{name}/value_info.json").read_bytes())
    return x, ws


def test_convert_commands_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from caffe.tools.cli import main

    x, ws = _zoo_folder(tmp_path / "c2")
    assert (
        main(
            [
                "convert_caffe2",
                str(tmp_path / "c2/init_net.pb"),
                str(tmp_path / "c2/predict_net.pb"),
                str(tmp_path / "caffe"),
            ]
        )
        == 0
    )
    deploy, weights = tmp_path / "caffe/deploy.prototxt", tmp_path / "caffe/alexnet.caffemodel"
    net = caffe.Net(str(deploy), caffe.TEST, weights=str(weights))
    net.blobs["data"].data[...] = x
    assert rel_diff(net.forward()["prob"], ws["prob"]) <= TOLERANCE
    assert main(["convert_to_caffe2", str(deploy), str(weights), str(tmp_path / "back")]) == 0
    files = find_caffe2_files(tmp_path / "back")
    assert read_value_info(files.value_info) == {"data": [1, 3, 224, 224]}
    again = load_net(tmp_path / "back")
    again.blobs["data"].data[...] = x
    assert np.array_equal(again.forward()["prob"], net.blobs["prob"].data)
    # --input_shape wins over value_info.json; one the weights do not fit is a clear error
    args = [str(tmp_path / "c2/init_net.pb"), str(tmp_path / "c2/predict_net.pb"), str(tmp_path / "two")]
    assert main(["convert_caffe2", *args, "--input_shape", "2,3,224,224"]) == 0
    assert caffe.Net(str(tmp_path / "two/deploy.prototxt"), caffe.TEST).blobs["data"].data.shape == (2, 3, 224, 224)
    capsys.readouterr()
    assert main(["convert_caffe2", *args[:2], str(tmp_path / "bad"), "--input_shape", "1,3,199,199"]) == 1
    assert "operator FC 'fc6': input 'pool5' of shape [1, 8, 5, 5]" in capsys.readouterr().err


def test_convert_commands_usage_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from caffe.tools.cli import main

    assert main(["convert_caffe2", "only_one"]) == 1
    assert "usage: caffe convert_caffe2 INIT_NET PREDICT_NET OUT_DIR" in capsys.readouterr().err
    assert main(["convert_to_caffe2"]) == 1
    assert "usage: caffe convert_to_caffe2 DEPLOY WEIGHTS OUT_DIR" in capsys.readouterr().err
    _zoo_folder(tmp_path / "c2")
    predict = read_netdef(tmp_path / "c2/predict_net.pb")
    predict.op.add(type="GenerateProposals", input=["prob"], output=["rois"])
    write_netdef(tmp_path / "c2/predict_net.pb", predict)
    assert (
        main(
            [
                "convert_caffe2",
                str(tmp_path / "c2/init_net.pb"),
                str(tmp_path / "c2/predict_net.pb"),
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "unsupported Caffe2 operator GenerateProposals" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ============================================================================ Caffe2 folders as models


@pytest.fixture(scope="module")
def caffe2_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, dict]:
    folder = tmp_path_factory.mktemp("zoo") / "bvlc_alexnet"
    x, ws = _zoo_folder(folder)
    return folder, x, ws


def test_load_net_and_find_model_accept_a_caffe2_folder(
    caffe2_folder: tuple[Path, np.ndarray, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from caffe.deploy import DeployModel, find_model

    folder, x, ws = caffe2_folder
    net = load_net(folder)
    net.blobs["data"].data[...] = x
    assert rel_diff(net.forward()["prob"], ws["prob"]) <= TOLERANCE
    direct = caffe.Net(str(folder))  # caffe.Net takes the folder itself: TEST phase, the init net's weights
    assert direct.phase == caffe.TEST
    direct.blobs["data"].data[...] = x
    np.testing.assert_array_equal(direct.forward()["prob"], net.forward()["prob"])
    monkeypatch.setenv("CAFFE_CACHE_DIR", str(tmp_path / "cache"))
    files = find_model(folder)
    assert files.deploy.name == "deploy.prototxt" and files.weights.suffix == ".caffemodel"
    assert files.deploy.is_relative_to(tmp_path / "cache" / "caffe2") and files.folder == folder
    assert find_model(folder).weights == files.weights  # converted once
    model = DeployModel(files)
    assert model.input_shape == (3, 224, 224) and model.classes == 10 and not model.softmax
    probs = model.forward(x)
    assert rel_diff(probs, ws["prob"]) <= TOLERANCE
    # a corrupt Caffe2 model folder is a model-files error naming the folder
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "init_net.pb").write_bytes(b"\x0a\xff\xff")
    (broken / "predict_net.pb").write_bytes((folder / "predict_net.pb").read_bytes())
    with pytest.raises(CaffeError, match="broken"):
        find_model(broken)


def test_caffe_classify_runs_a_caffe2_folder(
    caffe2_folder: tuple[Path, np.ndarray, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from caffe.tools.cli import main

    monkeypatch.setenv("CAFFE_CACHE_DIR", str(tmp_path / "cache"))
    folder, _, _ = caffe2_folder
    assert main(["classify", str(folder), str(asset("caffe-ref/examples/images/cat.jpg")), "--format", "json"]) == 0
    assert '"index"' in capsys.readouterr().out


def test_caffe_serve_runs_a_caffe2_folder(
    caffe2_folder: tuple[Path, np.ndarray, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """``caffe serve`` answers with the probabilities ``caffe classify`` prints for the same folder and image."""
    import httpx
    from test_serve import Server

    from caffe.tools.cli import main

    monkeypatch.setenv("CAFFE_CACHE_DIR", str(tmp_path / "cache"))
    folder, _, _ = caffe2_folder
    image = asset("caffe-ref/examples/images/cat.jpg")
    assert main(["classify", str(folder), str(image), "--format", "json", "--top_k", "10"]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    srv = Server(f"c2={folder}", "--nodocs")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            r = client.post(
                "/models/c2/predict?top_k=10", files={"file": ("cat.jpg", image.read_bytes(), "image/jpeg")}
            )
    finally:
        srv.stop()
    assert r.status_code == 200, r.text
    served = {p["index"]: p["probability"] for p in r.json()["predictions"]}
    assert served == pytest.approx({p["index"]: p["probability"] for p in printed["predictions"]}, abs=1e-6)


def test_studio_pretrained_upload_of_a_caffe2_model(caffe2_folder: tuple[Path, np.ndarray, dict], tmp_path: Path):
    from test_studio_inference import make_client

    from caffe.studio import pretrained

    folder, _, _ = caffe2_folder
    with make_client(tmp_path, [tmp_path]) as client:
        store = client.app.state.studio.store
        job = pretrained.upload_caffe2(
            store,
            name="alexnet c2",
            init_net=(folder / "init_net.pb").read_bytes(),
            predict_net=(folder / "predict_net.pb").read_bytes(),
            value_info=(folder / "value_info.json").read_bytes(),
            width=224,
            height=224,
        )
        assert store.get(job.id).status == "Done"
        facts = json.loads((Path(store.job_dir(job.id)) / "info.json").read_text())
        assert facts["input_shape"] == [1, 3, 224, 224] and facts["outputs"] == 10
        bare = {name: (folder / f"{name}.pb").read_bytes() for name in ("init_net", "predict_net")}
        with pytest.raises(CaffeError, match=r"no value_info\.json: the input shape 1x3x256x256 from the image"):
            pretrained.upload_caffe2(store, name="no shape", **bare)  # the form's default 256 x 256
        job = pretrained.upload_caffe2(store, name="image size", width=224, height=224, **bare)
        assert json.loads((Path(store.job_dir(job.id)) / "info.json").read_text())["input_shape"] == [1, 3, 224, 224]


# ============================================================================ caffe zoo and the Caffe2 zoo's layout


def _lfs_pointer(data: bytes) -> str:
    import hashlib

    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n"
    )


def test_zoo_downloads_caffe2_models_through_a_mirror(
    caffe2_folder: tuple[Path, np.ndarray, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A clone of caffe2/models has LFS pointers for the nets: ``caffe zoo download`` fetches them from a mirror
    (a folder, a file:// URL) holding ``<model>/<file>``, checks their SHA-256, and ``caffe zoo list`` shows it."""
    from caffe import zoo
    from caffe.tools.cli import main

    source, _, _ = caffe2_folder
    mirror = tmp_path / "mirror" / "bvlc_alexnet"
    mirror.mkdir(parents=True)
    for name in ("init_net.pb", "predict_net.pb", "value_info.json"):
        (mirror / name).write_bytes((source / name).read_bytes())
    models = tmp_path / "models"
    clone = models / "bvlc_alexnet"
    clone.mkdir(parents=True)
    for name in ("init_net.pb", "predict_net.pb"):
        (clone / name).write_text(_lfs_pointer((source / name).read_bytes()))
    (clone / "value_info.json").write_bytes((source / "value_info.json").read_bytes())
    assert main(["zoo", "list", "--models_dir", str(models)]) == 0
    assert "Caffe2 model, not downloaded: predict_net.pb, init_net.pb" in capsys.readouterr().out
    assert main(["zoo", "download", str(clone), "--mirror", str(tmp_path / "mirror")]) == 0
    said = capsys.readouterr().out
    assert "Downloaded" in said and "SHA-256 checked" in said and "SHA1" not in said
    assert (clone / "init_net.pb").read_bytes() == (source / "init_net.pb").read_bytes()
    assert zoo.download_caffe2_model(clone, mirror=str(tmp_path / "mirror")) == (clone, False)
    assert main(["zoo", "list", "--models_dir", str(models)]) == 0
    assert "Caffe2 model, downloaded" in capsys.readouterr().out
    # a new folder named after the model, the mirror as a file:// URL from the environment; value_info comes too
    monkeypatch.setenv(zoo.MIRROR_ENV, (tmp_path / "mirror").as_uri())
    fresh = tmp_path / "elsewhere" / "bvlc_alexnet"
    assert zoo.download_model(fresh) == (fresh, True)
    assert sorted(p.name for p in fresh.iterdir()) == ["init_net.pb", "predict_net.pb", "value_info.json"]
    monkeypatch.setenv("CAFFE_CACHE_DIR", str(tmp_path / "cache"))
    assert caffe.deploy.find_model(fresh).weights.suffix == ".caffemodel"
    # a file that is not the one its LFS pointer names is refused and removed
    (clone / "init_net.pb").write_text(_lfs_pointer(b"something else"))
    with pytest.raises(zoo.ModelDownloadError, match="Git-LFS pointer"):
        zoo.download_model(clone)
    assert not (clone / "init_net.pb").exists()
    # without a mirror the files come from Caffe2's server, <url>/<model>/<file> (here: a file:// stand-in)
    monkeypatch.setenv(zoo.MIRROR_ENV, "")
    monkeypatch.setenv(zoo.CAFFE2_URL_ENV, (tmp_path / "mirror").as_uri())
    assert zoo.download_model(clone) == (clone, True)


def test_a_normalized_inner_product_exports_its_rows_normalized() -> None:
    """happynear/caffe-windows' InnerProduct with normalize: true: Caffe2's FC gets the rows the layer scales to
    unit length before each forward, so both give the same outputs."""
    text = SMALL_NET.replace(
        "inner_product_param { num_output: 5 }", "inner_product_param { num_output: 5 normalize: true }"
    )
    deploy = parse_text(text, pb.NetParameter())
    net = random_caffe_net(deploy, seed=4)
    net.params["bn"][1].data[...] = np.abs(net.params["bn"][1].data) + 0.5
    net.params["bn"][2].data[...] = 2.0
    raw = net.params["ip"][0].data.copy()
    model = from_caffe(deploy, net, "small")  # before any forward: the stored rows are not yet normalized
    x = np.random.default_rng(5).normal(size=(2, 3, 9, 11)).astype(np.float32)
    net.blobs["data"].data[...] = x
    want = net.forward()["prob"].copy()
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    ws = np_run(model.predict_net, dict(init_blobs(model.init_net)), {"data": x})
    assert rel_diff(want, ws["prob"]) <= TOLERANCE
