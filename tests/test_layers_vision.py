"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP, Crop.

Forward results are compared with NumPy transcriptions of Caffe's formulas (written here, loop by
loop where Caffe loops), with hand-derived values from Caffe's own test cases, and backward with
finite differences (float64).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.layer import create_layer
from caffe.layers.vision import PoolPlan
from caffe.proto import caffe_pb2 as pb

FLT_MAX = float(np.finfo(np.float32).max)


# ============================================================================ helpers
def net_of(text: str, shapes: dict, phase: int = caffe.TEST, dtype: torch.dtype = torch.float64) -> caffe.Net:
    return layer_net(text, {k: tuple(v) for k, v in shapes.items()}, phase=phase, dtype=dtype)


def forward(net: caffe.Net, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    set_inputs(net, inputs)
    net._forward(0, len(net.layers) - 1)
    tops = net.top_names[net._layer_names[-1]]
    return [net.blobs[t].data.copy() for t in tops]


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def distinct(*shape: int, seed: int = 0) -> np.ndarray:
    """Values at least 0.01 apart (no ties within a pooling window, safe for finite differences)."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(math.prod(shape)).reshape(shape) - math.prod(shape) / 2) * 0.01


def conv_text(ltype: str = "Convolution", bottoms: tuple[str, ...] = ("x",), **fields: object) -> str:
    body = []
    for key, value in fields.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            body.append(f"{key}: {str(v).lower() if isinstance(v, bool) else v}")
    fill = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'
    if ltype == "Im2col":
        fill = ""
    bots = " ".join(f'bottom: "{b}"' for b in bottoms)
    tops = " ".join(f'top: "y{i}"' for i in range(len(bottoms)))
    return f'type: "{ltype}" {bots} {tops} convolution_param {{ {" ".join(body)} {fill} }}'


def pool_text(tops: int = 1, **fields: object) -> str:
    body = " ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in fields.items())
    names = " ".join(f'top: "{t}"' for t in ["y", "mask"][:tops])
    return f'type: "Pooling" bottom: "x" {names} pooling_param {{ {body} }}'


# ----------------------------------------------------------------------------- NumPy references
def np_conv(x, w, b, stride, pad, dilation, group):
    """Caffe's convolution (cross-correlation) by summing shifted, strided input slices."""
    n = x.ndim - 2
    kernel = w.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out = [(xp.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(n)]
    cg, og = x.shape[1] // group, w.shape[0] // group
    y = np.zeros((x.shape[0], w.shape[0], *out))
    for kk in np.ndindex(*kernel):
        sl = tuple(
            slice(kk[i] * dilation[i], kk[i] * dilation[i] + stride[i] * (out[i] - 1) + 1, stride[i]) for i in range(n)
        )
        patch = xp[(slice(None), slice(None), *sl)]
        for g in range(group):
            wk = w[(slice(g * og, (g + 1) * og), slice(None), *kk)]
            y[:, g * og : (g + 1) * og] += np.einsum("nc...,oc->no...", patch[:, g * cg : (g + 1) * cg], wk)
    if b is not None:
        y += b.reshape(1, -1, *[1] * n)
    return y


def np_deconv(x, w, b, stride, pad, dilation, group):
    """Caffe's deconvolution: every input pixel scatters its weighted kernel (col2im), then the pad is cut."""
    n = x.ndim - 2
    kernel, spatial = w.shape[2:], x.shape[2:]
    cg, og = x.shape[1] // group, w.shape[1]
    full = [stride[i] * (spatial[i] - 1) + dilation[i] * (kernel[i] - 1) + 1 for i in range(n)]
    y = np.zeros((x.shape[0], og * group, *full))
    for kk in np.ndindex(*kernel):
        sl = tuple(
            slice(kk[i] * dilation[i], kk[i] * dilation[i] + stride[i] * (spatial[i] - 1) + 1, stride[i])
            for i in range(n)
        )
        for g in range(group):
            wk = w[(slice(g * cg, (g + 1) * cg), slice(None), *kk)]
            y[(slice(None), slice(g * og, (g + 1) * og), *sl)] += np.einsum(
                "nc...,co->no...", x[:, g * cg : (g + 1) * cg], wk
            )
    y = y[(slice(None), slice(None), *(slice(pad[i], full[i] - pad[i]) for i in range(n)))]
    if b is not None:
        y = y + b.reshape(1, -1, *[1] * n)
    return y


def np_im2col(x, kernel, stride, pad, dilation):
    """Caffe's im2col, element by element: row c*K + (kernel offset, row-major), one column per output."""
    n = len(kernel)
    spatial = x.shape[2:]
    out = [(spatial[i] + 2 * pad[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(n)]
    K = math.prod(kernel)
    y = np.zeros((x.shape[0], x.shape[1] * K, *out))
    for c in range(x.shape[1]):
        for j, kk in enumerate(np.ndindex(*kernel)):
            for o in np.ndindex(*out):
                pos = tuple(o[i] * stride[i] - pad[i] + kk[i] * dilation[i] for i in range(n))
                if all(0 <= pos[i] < spatial[i] for i in range(n)):
                    y[(slice(None), c * K + j, *o)] = x[(slice(None), c, *pos)]
    return y


def np_pooled_size(size, k, s, p, ceil=True, padded=None):
    """Caffe's PoolingLayer::Reshape (float division, then ceil or floor; the padding correction applies
    to both axes when either pad is nonzero)."""
    v = np.float32(size + 2 * p - k) / np.float32(s)
    out = int(math.ceil(v) if ceil else math.floor(v)) + 1
    if (p > 0 if padded is None else padded) and (out - 1) * s >= size + p:
        out -= 1
    return out


def np_pool(x, method, kernel, stride=(1, 1), pad=(0, 0), ceil=True):
    """Caffe's pooling loops (MAX with its index, AVE with pool_size, STOCHASTIC's test-phase rule)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    N, C, H, W = x.shape
    padded = bool(ph or pw)
    oh, ow = np_pooled_size(H, kh, sh, ph, ceil, padded), np_pooled_size(W, kw, sw, pw, ceil, padded)
    top = np.zeros((N, C, oh, ow))
    mask = np.full((N, C, oh, ow), -1.0)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            if method == "MAX":
                best = np.full((N, C), -FLT_MAX)
                idx = np.full((N, C), -1.0)
                for h in range(max(hs, 0), min(hs + kh, H)):
                    for w in range(max(ws, 0), min(ws + kw, W)):
                        better = x[:, :, h, w] > best
                        best = np.where(better, x[:, :, h, w], best)
                        idx = np.where(better, h * W + w, idx)
                top[:, :, i, j], mask[:, :, i, j] = best, idx
            elif method == "AVE":
                he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
                size = (he - hs) * (we - ws)
                total = x[:, :, max(hs, 0) : min(he, H), max(ws, 0) : min(we, W)].sum(axis=(2, 3))
                with np.errstate(divide="ignore", invalid="ignore"):
                    top[:, :, i, j] = total / size
            else:  # STOCHASTIC, test phase
                win = x[:, :, hs : min(hs + kh, H), ws : min(ws + kw, W)]
                s1, s2 = win.sum(axis=(2, 3)), (win * win).sum(axis=(2, 3))
                top[:, :, i, j] = np.where(s1 > 0, s2 / np.where(s1 > 0, s1, 1), 0)
    return top, mask


def np_spp(x, levels, method="MAX"):
    H, W = x.shape[2:]
    outs = []
    for level in range(levels):
        bins = 2**level
        kh, kw = math.ceil(H / bins), math.ceil(W / bins)
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        outs.append(np_pool(x, method, (kh, kw), (kh, kw), (ph, pw))[0])
    if levels == 1:
        return outs[0]
    return np.concatenate([o.reshape(x.shape[0], -1) for o in outs], axis=1)


# ============================================================================ Convolution
CONV_CASES = {
    "basic": ((2, 3, 6, 5), dict(num_output=4, kernel_size=3)),
    "stride_pad": ((2, 3, 7, 6), dict(num_output=2, kernel_size=3, stride=2, pad=1)),
    "group": ((2, 6, 5, 5), dict(num_output=4, kernel_size=3, group=2, pad=1)),
    "depthwise": ((1, 4, 5, 6), dict(num_output=4, kernel_size=3, group=4, stride=2)),
    "dilation": ((1, 2, 9, 8), dict(num_output=3, kernel_size=3, dilation=2, pad=2)),
    "per_dim": ((1, 2, 7, 8), dict(num_output=2, kernel_size=[3, 2], stride=[2, 1], pad=[1, 0], dilation=[1, 2])),
    "hw_fields": ((2, 2, 7, 6), dict(num_output=3, kernel_h=3, kernel_w=1, stride_h=2, stride_w=1, pad_h=0, pad_w=2)),
    "1x1": ((2, 5, 4, 3), dict(num_output=3, kernel_size=1)),
    "no_bias": ((1, 3, 5, 5), dict(num_output=2, kernel_size=2, bias_term=False)),
    "1d": ((2, 3, 9), dict(num_output=4, kernel_size=3, stride=2, pad=1, dilation=1)),
    "3d": ((1, 2, 5, 4, 6), dict(num_output=3, kernel_size=[3, 2, 3], stride=[2, 1, 2], pad=1, dilation=[1, 2, 1])),
    "3d_group": ((2, 4, 4, 4, 4), dict(num_output=2, kernel_size=2, group=2)),
}


def _conv_geometry(fields: dict, n: int) -> tuple[list[int], list[int], list[int]]:
    def per_dim(name, hw, default):
        if f"{hw}_h" in fields:
            return [fields[f"{hw}_h"], fields[f"{hw}_w"]]
        v = fields.get(name, default)
        return list(v) if isinstance(v, list) else [v] * n

    return per_dim("stride", "stride", 1), per_dim("pad", "pad", 0), per_dim("dilation", "dilation", 1)


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_convolution_forward_matches_numpy(case):
    shape, fields = CONV_CASES[case]
    net = net_of(conv_text(**fields), {"x": shape})
    x = rand(*shape, seed=1)
    (y,) = forward(net, {"x": x})
    layer = net.layers[-1]
    w = layer.blobs[0].data
    b = layer.blobs[1].data if fields.get("bias_term", True) else None
    group = fields.get("group", 1)
    # Caffe's blob shapes: weight (num_output, C/group, *kernel), bias (num_output,)
    assert w.shape[:2] == (fields["num_output"], shape[1] // group)
    assert len(layer.blobs) == (2 if b is not None else 1)
    stride, pad, dilation = _conv_geometry(fields, len(shape) - 2)
    np.testing.assert_allclose(y, np_conv(x, w, b, stride, pad, dilation, group), rtol=1e-10, atol=1e-10)


def test_convolution_setup_shapes_as_caffe():
    # Caffe's TestSetup: bottom 2x3x6x4, kernel 3, stride 2 -> 2x4x2x1; and with group 3.
    net = net_of(conv_text(num_output=4, kernel_size=3, stride=2), {"x": (2, 3, 6, 4)})
    assert net.blobs["y0"].shape == (2, 4, 2, 1)
    assert net.params["layer"][0].data.shape == (4, 3, 3, 3)
    net = net_of(conv_text(num_output=3, kernel_size=3, stride=2, group=3), {"x": (2, 3, 6, 4)})
    assert net.blobs["y0"].shape == (2, 3, 2, 1)
    assert net.params["layer"][0].data.shape == (3, 1, 3, 3)
    assert net.params["layer"][1].data.shape == (3,)


def test_convolution_fillers_and_two_bottoms_share_weights():
    text = (
        'type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" convolution_param { num_output: 2 '
        'kernel_size: 3 weight_filler { type: "gaussian" } bias_filler { type: "constant" value: 0.1 } }'
    )
    net = net_of(text, {"a": (2, 3, 5, 5), "b": (2, 3, 5, 5)})
    np.testing.assert_allclose(net.params["layer"][1].data, [0.1, 0.1], rtol=1e-7)  # a float field
    a, b = rand(2, 3, 5, 5, seed=2), rand(2, 3, 5, 5, seed=3)
    ya, yb = forward(net, {"a": a, "b": b})
    w, bias = net.params["layer"][0].data, net.params["layer"][1].data
    np.testing.assert_allclose(ya, np_conv(a, w, bias, [1, 1], [0, 0], [1, 1], 1), atol=1e-10)
    np.testing.assert_allclose(yb, np_conv(b, w, bias, [1, 1], [0, 0], [1, 1], 1), atol=1e-10)


def test_convolution_axis_with_leading_batch_axes():
    # axis 2: axes 0 and 1 are both batch-like (Caffe's num = count(0, axis)).
    net = net_of(conv_text(num_output=3, kernel_size=2, axis=2), {"x": (2, 3, 4, 5, 5)})
    x = rand(2, 3, 4, 5, 5, seed=4)
    (y,) = forward(net, {"x": x})
    assert y.shape == (2, 3, 3, 4, 4)
    w, b = (blob.data for blob in net.params["layer"])
    ref = np_conv(x.reshape(6, 4, 5, 5), w, b, [1, 1], [0, 0], [1, 1], 1).reshape(2, 3, 3, 4, 4)
    np.testing.assert_allclose(y, ref, atol=1e-10)
    # axis 0: one image whose channels are axis 0; negative axis counts from the end.
    net = net_of(conv_text(num_output=2, kernel_size=3, axis=-3), {"x": (3, 5, 6)})
    x = rand(3, 5, 6, seed=5)
    (y,) = forward(net, {"x": x})
    w, b = (blob.data for blob in net.params["layer"])
    np.testing.assert_allclose(y, np_conv(x[None], w, b, [1, 1], [0, 0], [1, 1], 1)[0], atol=1e-10)


def test_convolution_0d_is_a_channel_inner_product():
    # Caffe's Test0DConvolution: channel axis last, no spatial axes, no kernel_size needed.
    net = net_of(conv_text(num_output=3, axis=3), {"x": (2, 3, 6, 4)})
    x = rand(2, 3, 6, 4, seed=6)
    (y,) = forward(net, {"x": x})
    w, b = (blob.data for blob in net.params["layer"])
    assert w.shape == (3, 4)
    np.testing.assert_allclose(y, x @ w.T + b, atol=1e-10)


GRAD_CONV = {
    "stride_pad_group": ((2, 4, 5, 5), dict(num_output=4, kernel_size=3, stride=2, pad=1, group=2)),
    "dilation": ((1, 2, 6, 6), dict(num_output=2, kernel_size=2, dilation=2, pad=1)),
    "rect": ((1, 2, 5, 4), dict(num_output=2, kernel_h=3, kernel_w=2, stride_h=2, stride_w=1)),
    "1d": ((2, 2, 7), dict(num_output=3, kernel_size=3, stride=2, pad=1)),
    "3d": ((1, 2, 4, 3, 4), dict(num_output=2, kernel_size=2, stride=[1, 1, 2], pad=[1, 0, 0])),
    "axis2": ((2, 2, 2, 4, 4), dict(num_output=2, kernel_size=2, axis=2)),
    "0d": ((3, 4), dict(num_output=2)),
}


@pytest.mark.parametrize("case", sorted(GRAD_CONV))
def test_convolution_gradient(case):
    shape, fields = GRAD_CONV[case]
    net = net_of(conv_text(**fields), {"x": shape})
    check_gradient(net, {"x": rand(*shape, seed=7)})


def test_convolution_gradient_two_bottoms_accumulates_weights():
    net = net_of(conv_text(bottoms=("a", "b"), num_output=2, kernel_size=2), {"a": (1, 2, 3, 3), "b": (1, 2, 3, 3)})
    check_gradient(net, {"a": rand(1, 2, 3, 3, seed=8), "b": rand(1, 2, 3, 3, seed=9)})


# ============================================================================ Deconvolution
DECONV_CASES = {
    "basic": ((2, 3, 4, 3), dict(num_output=2, kernel_size=3)),
    "stride_pad": ((1, 2, 4, 5), dict(num_output=3, kernel_size=4, stride=2, pad=1)),
    "group_dilation": ((2, 4, 3, 3), dict(num_output=6, kernel_size=3, group=2, dilation=2, stride=2, pad=2)),
    "hw": ((1, 2, 3, 4), dict(num_output=2, kernel_h=2, kernel_w=3, stride_h=3, stride_w=1, pad_h=1, pad_w=0)),
    "1d": ((2, 3, 5), dict(num_output=2, kernel_size=3, stride=2)),
    "3d": ((1, 2, 3, 2, 3), dict(num_output=2, kernel_size=[2, 3, 2], stride=2, pad=[0, 1, 1])),
    "0d": ((3, 4), dict(num_output=2, group=2)),
}


@pytest.mark.parametrize("case", sorted(DECONV_CASES))
def test_deconvolution_forward_matches_numpy(case):
    shape, fields = DECONV_CASES[case]
    net = net_of(conv_text("Deconvolution", **fields), {"x": shape})
    x = rand(*shape, seed=10)
    (y,) = forward(net, {"x": x})
    w, b = (blob.data for blob in net.params["layer"])
    group = fields.get("group", 1)
    assert w.shape[:2] == (shape[1], fields["num_output"] // group)  # (C, num_output/group, *kernel)
    stride, pad, dilation = _conv_geometry(fields, len(shape) - 2)
    ref = np_deconv(x, w, b, stride, pad, dilation, group)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


def test_deconvolution_output_size_formula():
    # stride*(in-1) + dilation*(k-1)+1 - 2*pad per axis: 2*(5-1)+3-2 = 9 and 1*(4-1)+2*(2-1)+1-2 = 4
    net = net_of(
        conv_text("Deconvolution", num_output=1, kernel_size=[3, 2], stride=[2, 1], pad=1, dilation=[1, 2]),
        {"x": (1, 1, 5, 4)},
    )
    assert net.blobs["y0"].shape == (1, 1, 9, 4)


def test_deconvolution_bilinear_upsampling():
    # FCN-style 2x upsampling of a constant map: interior pixels stay constant.
    text = (
        'type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 1 kernel_size: 4 stride: 2 '
        'pad: 1 bias_term: false weight_filler { type: "bilinear" } }'
    )
    net = net_of(text, {"x": (1, 1, 4, 4)})
    (y,) = forward(net, {"x": np.full((1, 1, 4, 4), 3.0)})
    assert y.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(y[0, 0, 1:-1, 1:-1], 3.0)


@pytest.mark.parametrize("case", ["stride_pad", "group_dilation", "1d", "3d", "0d"])
def test_deconvolution_gradient(case):
    shape, fields = DECONV_CASES[case]
    net = net_of(conv_text("Deconvolution", **fields), {"x": shape})
    check_gradient(net, {"x": rand(*shape, seed=11)})


# ============================================================================ Im2col
IM2COL_CASES = {
    "basic": ((2, 3, 6, 5), dict(kernel_size=3, stride=2)),
    "pad_dilation": ((1, 2, 7, 6), dict(kernel_size=3, stride=2, pad=2, dilation=2)),
    "rect": ((1, 2, 6, 5), dict(kernel_h=5, kernel_w=3, stride=2, pad_h=1, pad_w=2)),
    "1d": ((2, 2, 8), dict(kernel_size=3, stride=2, pad=1, dilation=2)),
    "3d": ((1, 2, 4, 5, 4), dict(kernel_size=[2, 3, 2], stride=[1, 2, 2], pad=[1, 1, 0], dilation=[2, 1, 1])),
}


@pytest.mark.parametrize("case", sorted(IM2COL_CASES))
def test_im2col_forward_matches_caffe_loops(case):
    shape, fields = IM2COL_CASES[case]
    net = net_of(conv_text("Im2col", **fields), {"x": shape})
    x = rand(*shape, seed=12)
    (y,) = forward(net, {"x": x})
    n = len(shape) - 2
    if "kernel_h" in fields:
        kernel = [fields["kernel_h"], fields["kernel_w"]]
    else:
        k = fields["kernel_size"]
        kernel = list(k) if isinstance(k, list) else [k] * n
    stride, pad, dilation = _conv_geometry(fields, n)
    np.testing.assert_array_equal(y, np_im2col(x, kernel, stride, pad, dilation))


def test_im2col_caffe_expectations():
    # TestSetup: 2x3x10x11, kernel 3, stride 2, dilation 3 -> 2 x 27 x 2 x 3
    net = net_of(conv_text("Im2col", kernel_size=3, stride=2, dilation=3), {"x": (2, 3, 10, 11)})
    assert net.blobs["y0"].shape == (2, 27, 2, 3)
    # TestForward / TestRect: the top-left column is the top-left patch, channel-major.
    x = rand(2, 3, 6, 5, seed=13)
    (y,) = forward(net_of(conv_text("Im2col", kernel_size=3, stride=2), {"x": x.shape}), {"x": x})
    for c in range(27):
        assert y[0, c, 0, 0] == x[0, c // 9, (c // 3) % 3, c % 3]
    (y,) = forward(net_of(conv_text("Im2col", kernel_h=5, kernel_w=3, stride=2), {"x": x.shape}), {"x": x})
    for c in range(45):
        assert y[0, c, 0, 0] == x[0, c // 15, (c // 3) % 5, c % 3]


def test_im2col_with_axis():
    net = net_of(conv_text("Im2col", kernel_size=2, axis=2), {"x": (2, 2, 3, 4, 4)})
    x = rand(2, 2, 3, 4, 4, seed=14)
    (y,) = forward(net, {"x": x})
    ref = np_im2col(x.reshape(4, 3, 4, 4), [2, 2], [1, 1], [0, 0], [1, 1]).reshape(2, 2, 12, 3, 3)
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("case", ["pad_dilation", "rect", "1d", "3d"])
def test_im2col_gradient(case):
    shape, fields = IM2COL_CASES[case]
    net = net_of(conv_text("Im2col", **fields), {"x": shape})
    check_gradient(net, {"x": rand(*shape, seed=15)})


# ============================================================================ convolution errors
@pytest.mark.parametrize(
    ("ltype", "shape", "fields", "error", "match"),
    [
        ("Convolution", (1, 2, 5, 5), dict(num_output=2), caffe.LayerError, "kernel_size must be specified"),
        (
            "Convolution",
            (1, 2, 5, 5),
            dict(num_output=2, kernel_size=3, kernel_h=3, kernel_w=3),
            caffe.LayerError,
            "kernel_size or kernel_h/kernel_w",
        ),
        ("Convolution", (1, 2, 5, 5), dict(num_output=2, kernel_h=3), caffe.LayerError, "kernel_size"),
        (
            "Convolution",
            (1, 2, 5, 5, 5),
            dict(num_output=2, kernel_h=3, kernel_w=3),
            caffe.LayerError,
            "kernel_h & kernel_w can only be used for 2-D",
        ),
        (
            "Convolution",
            (1, 2, 5, 5),
            dict(num_output=2, kernel_size=[3, 3, 3]),
            caffe.LayerError,
            "kernel_size must be specified once, or once per spatial dimension",
        ),
        ("Convolution", (1, 2, 5, 5), dict(num_output=2, kernel_size=3, stride=0), caffe.LayerError, "stride"),
        (
            "Convolution",
            (1, 2, 5, 5),
            dict(num_output=2, kernel_size=3, stride=2, stride_h=1, stride_w=1),
            caffe.LayerError,
            "stride or stride_h/stride_w",
        ),
        (
            "Convolution",
            (1, 3, 5, 5),
            dict(num_output=2, kernel_size=3, group=2),
            caffe.LayerError,
            "group 2 does not divide the 3 input channels",
        ),
        (
            "Convolution",
            (1, 4, 5, 5),
            dict(num_output=3, kernel_size=3, group=2),
            caffe.LayerError,
            "num_output 3 is not a multiple of group 2",
        ),
        ("Convolution", (1, 2, 5, 5), dict(num_output=0, kernel_size=3), caffe.LayerError, "num_output"),
        ("Convolution", (1, 2, 2, 5), dict(num_output=2, kernel_size=3), caffe.ShapeError, "smaller than"),
        ("Convolution", (1, 2, 5, 5), dict(num_output=2, kernel_size=3, dilation=3), caffe.ShapeError, "dilated"),
        ("Convolution", (1, 1, 3, 3, 3, 3), dict(num_output=2, kernel_size=1), caffe.ShapeError, "1, 2 or 3"),
        ("Convolution", (1, 2, 5, 5), dict(num_output=2, kernel_size=3, axis=4), caffe.ShapeError, "axis"),
        ("Deconvolution", (1, 3, 4, 4), dict(num_output=2, kernel_size=2, group=2), caffe.LayerError, "group"),
        ("Deconvolution", (1, 2, 1, 1), dict(num_output=2, kernel_size=2, pad=1), caffe.ShapeError, "output size"),
        ("Im2col", (2, 3), dict(kernel_size=1), caffe.ShapeError, "spatial"),
        (
            "Im2col",
            (1, 2, 5, 5),
            dict(kernel_size=3, pad=1, pad_h=1, pad_w=1),
            caffe.LayerError,
            "either pad or pad_h/pad_w",
        ),
    ],
)
def test_convolution_bad_parameters(ltype, shape, fields, error, match):
    with pytest.raises(error, match=match):
        net_of(conv_text(ltype, **fields), {"x": shape})


def test_convolution_reshape_checks():
    net = net_of(conv_text(num_output=2, kernel_size=3), {"x": (1, 2, 5, 5)})
    (y,) = forward(net, {"x": rand(3, 2, 6, 7)})  # a new batch and spatial size is fine
    assert y.shape == (3, 2, 4, 5)
    with pytest.raises(caffe.ShapeError, match="3 channels at axis 1, the weights expect 2"):
        forward(net, {"x": rand(1, 3, 5, 5)})
    with pytest.raises(caffe.ShapeError, match="axes"):
        forward(net, {"x": rand(1, 2, 5, 5, 5)})


def test_convolution_bottom_shape_mismatch():
    with pytest.raises(caffe.ShapeError, match="shape mismatch"):
        net_of(conv_text(bottoms=("a", "b"), num_output=2, kernel_size=3), {"a": (1, 2, 5, 5), "b": (1, 2, 6, 5)})


def test_convolution_wrong_number_of_inline_blobs():
    text = conv_text(num_output=1, kernel_size=1, bias_term=False)
    text = text[:-1] + "} blobs { shape { dim: 1 dim: 1 dim: 1 dim: 1 } data: 1 } blobs { shape { dim: 1 } data: 0 }"
    with pytest.raises(caffe.LayerError, match="number of weight blobs"):
        net_of(text, {"x": (1, 1, 2, 2)})


# ============================================================================ Pooling: sizes and values
SQUARE = np.array([[1, 2, 5, 2, 3], [9, 4, 1, 4, 8], [1, 2, 5, 2, 3]], dtype=np.float64)
MAGIC6 = np.array(
    [
        [35, 1, 6, 26, 19, 24],
        [3, 32, 7, 21, 23, 25],
        [31, 9, 2, 22, 27, 20],
        [8, 28, 33, 17, 10, 15],
        [30, 5, 34, 12, 14, 16],
        [4, 36, 29, 13, 18, 11],
    ],
    dtype=np.float64,
)


def test_pooling_max_square_with_mask_as_caffe():
    net = net_of(pool_text(tops=2, kernel_size=2), {"x": (2, 2, 3, 5)})
    y, mask = forward(net, {"x": np.broadcast_to(SQUARE, (2, 2, 3, 5)).copy()})
    np.testing.assert_array_equal(y, np.broadcast_to([[9, 5, 5, 8], [9, 5, 5, 8]], (2, 2, 2, 4)))
    np.testing.assert_array_equal(mask, np.broadcast_to([[5, 2, 2, 9], [5, 12, 12, 9]], (2, 2, 2, 4)))


def test_pooling_max_rectangles_as_caffe():
    x = np.broadcast_to(MAGIC6, (2, 2, 6, 6)).copy()
    # kernel 3 high, 2 wide: 4x5 output
    y, mask = forward(net_of(pool_text(tops=2, kernel_h=3, kernel_w=2), {"x": x.shape}), {"x": x})
    expect = [[35, 32, 26, 27, 27], [32, 33, 33, 27, 27], [31, 34, 34, 27, 27], [36, 36, 34, 18, 18]]
    np.testing.assert_array_equal(y[1, 1], expect)
    np.testing.assert_array_equal(
        mask[0, 0], [[0, 7, 3, 16, 16], [7, 20, 20, 16, 16], [12, 26, 26, 16, 16], [31, 31, 26, 34, 34]]
    )
    # kernel 2 high, 3 wide: 5x4 output
    y, mask = forward(net_of(pool_text(tops=2, kernel_h=2, kernel_w=3), {"x": x.shape}), {"x": x})
    expect = [[35, 32, 26, 26], [32, 32, 27, 27], [33, 33, 33, 27], [34, 34, 34, 17], [36, 36, 34, 18]]
    np.testing.assert_array_equal(y[0, 1], expect)
    ref_y, ref_mask = np_pool(x, "MAX", (2, 3))
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(mask, ref_mask)


def test_pooling_max_pad_larger_than_half_kernel():
    # Caffe's TestForwardMaxPadded: 3x3 input, kernel 3, stride 2, pad 2 (torch refuses pad > k/2).
    x = np.array([[1, 2, 4], [2, 3, 2], [4, 2, 1]], dtype=np.float64).reshape(1, 1, 3, 3)
    y, mask = forward(net_of(pool_text(tops=2, kernel_size=3, stride=2, pad=2), {"x": x.shape}), {"x": x})
    np.testing.assert_array_equal(y[0, 0], [[1, 4, 4], [4, 4, 4], [4, 4, 1]])
    np.testing.assert_array_equal(mask[0, 0], [[0, 2, 2], [6, 2, 2], [6, 6, 8]])


def test_pooling_ave_padded_as_caffe():
    # Caffe's TestForwardAve: constant 2, kernel 3, stride 1, pad 1: corners 8/9, edges 4/3, centre 2.
    net = net_of(pool_text(pool="AVE", kernel_size=3, stride=1, pad=1), {"x": (1, 1, 3, 3)})
    (y,) = forward(net, {"x": np.full((1, 1, 3, 3), 2.0)})
    np.testing.assert_allclose(y[0, 0], [[8 / 9, 4 / 3, 8 / 9], [4 / 3, 2, 4 / 3], [8 / 9, 4 / 3, 8 / 9]])


def test_pooling_ave_divisor_counts_padding_but_not_overhang():
    # 4x4 ones, kernel 3, stride 2, pad 1 (ceil): windows start at -1, 1, 3; the divisor counts the
    # window clipped to [-1, 5): 3, 3, 2 per axis, while the image covers 2, 3, 1 cells.
    net = net_of(pool_text(pool="AVE", kernel_size=3, stride=2, pad=1), {"x": (1, 1, 4, 4)})
    (y,) = forward(net, {"x": np.ones((1, 1, 4, 4))})
    inside, divisor = np.array([2, 3, 1]), np.array([3, 3, 2])
    np.testing.assert_allclose(y[0, 0], np.outer(inside, inside) / np.outer(divisor, divisor))
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9) and y[0, 0, 2, 2] == pytest.approx(1 / 4)


def test_pooling_ave_pad_larger_than_half_kernel():
    # pad 2 with kernel 3 (torch refuses): 3x3 twos, stride 2 -> 3x3 output; divisor per axis 1, 3, 1
    # ([-2, 1) clipped to [-2, 5) has 3 cells, of which 1 is in the image).
    net = net_of(pool_text(pool="AVE", kernel_size=3, stride=2, pad=2), {"x": (1, 1, 3, 3)})
    (y,) = forward(net, {"x": np.full((1, 1, 3, 3), 2.0)})
    inside = np.array([1, 3, 1])
    np.testing.assert_allclose(y[0, 0], 2 * np.outer(inside, inside) / 9)


@pytest.mark.parametrize(
    ("size", "fields", "ceil_out", "floor_out"),
    [
        ((5, 5), dict(kernel_size=2, stride=2), (3, 3), (2, 2)),
        ((6, 5), dict(kernel_size=3, stride=2), (3, 2), (2, 2)),  # Caffe's TestSetup
        ((6, 5), dict(kernel_size=3, stride=2, pad=1), (4, 3), (3, 3)),  # Caffe's TestSetupPadded
        ((6, 6), dict(kernel_size=3, stride=2, pad=1), (4, 4), (3, 3)),
        ((5, 5), dict(kernel_size=2, stride=2, pad=1), (3, 3), (3, 3)),  # last ceil window would start in the pad
        ((7, 4), dict(kernel_h=3, kernel_w=2, stride_h=3, stride_w=3), (3, 2), (2, 1)),
        ((5, 5), dict(kernel_size=1, stride=3), (3, 3), (2, 2)),  # ceil: last window wholly outside (kept)
        # a nonzero pad_h also drops a width window starting past the image (Caffe tests "pad_h || pad_w")
        ((5, 5), dict(kernel_h=2, kernel_w=1, stride=3, pad_h=1, pad_w=0), (2, 2), (2, 2)),
    ],
)
def test_pooling_output_size_ceil_and_floor(size, fields, ceil_out, floor_out):
    for mode, out in (("CEIL", ceil_out), ("FLOOR", floor_out)):
        for pool in ("MAX", "AVE"):
            net = net_of(pool_text(pool=pool, round_mode=mode, **fields), {"x": (1, 1, *size)})
            assert net.blobs["y"].shape == (1, 1, *out), (mode, pool)


def test_pooling_window_outside_unpadded_image():
    # 5x5, kernel 1, stride 3: Caffe keeps a third window starting at 6 (outside the image): MAX gives
    # -FLT_MAX and index -1 there; AVE divides 0 by its (negative) pool size.
    x = rand(1, 2, 5, 5, seed=16)
    y, mask = forward(net_of(pool_text(tops=2, kernel_size=1, stride=3), {"x": x.shape}), {"x": x})
    ref_y, ref_mask = np_pool(x, "MAX", (1, 1), (3, 3))
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(mask, ref_mask)
    assert y[0, 0, 2, 0] == -FLT_MAX and mask[0, 0, 0, 2] == -1
    # gradient: routed to the argmax of each window (none from the empty ones); finite differences
    # cannot see past the -FLT_MAX outputs, so the routing is checked directly
    w = rand(*y.shape, seed=27)
    net = net_of(pool_text(tops=2, kernel_size=1, stride=3), {"x": x.shape})
    forward(net, {"x": x})
    net.blobs["y"].diff[...] = w
    net._backward(len(net.layers) - 1, len(net.layers) - 1)
    expect = np.zeros(x.size)
    flat = expect.reshape(2, -1)
    for c in range(2):
        for m, g in zip(mask[0, c].ravel(), w[0, c].ravel()):
            if m >= 0:
                flat[c, int(m)] += g
    np.testing.assert_array_equal(net.blobs["x"].diff, expect.reshape(x.shape))
    (y,) = forward(net_of(pool_text(pool="AVE", kernel_size=1, stride=3), {"x": x.shape}), {"x": x})
    np.testing.assert_array_equal(y, np_pool(x, "AVE", (1, 1), (3, 3))[0])


def _plan(method: str, kernel, stride, pad, ceil, hw) -> PoolPlan:
    layer = create_layer(pb.LayerParameter(name="p", type="Pooling"))
    return PoolPlan(layer, getattr(pb.PoolingParameter, method), kernel, stride, pad, ceil, hw)


def test_pooling_sweep_matches_caffe_loops():
    """Every small geometry (pad up to kernel-1, stride above kernel, overhangs, ceil and floor),
    torch fast path and explicit fallback alike, against the transcription of Caffe's loops."""
    rng = np.random.default_rng(17)
    paths = {True: 0, False: 0}
    for _ in range(260):
        kernel = tuple(int(k) for k in rng.integers(1, 5, 2))
        stride = tuple(int(s) for s in rng.integers(1, 4, 2))
        pad = tuple(int(rng.integers(0, k)) for k in kernel)
        hw = tuple(int(max(k - 2 * p, 1) + rng.integers(0, 5)) for k, p in zip(kernel, pad))
        ceil = bool(rng.integers(0, 2))
        if rng.integers(0, 2):
            x = torch.from_numpy(distinct(2, 2, *hw, seed=int(rng.integers(1 << 30))))
        else:  # many ties: the MAX index must be the first maximum in row-major order, as Caffe's strict '>'
            x = torch.from_numpy(rng.integers(0, 3, (2, 2, *hw)).astype(np.float64))
        for method in ("MAX", "AVE"):
            plan = _plan(method, kernel, stride, pad, ceil, hw)
            paths[plan.native] += 1
            y, mask = plan(x, train=False, want_mask=method == "MAX")
            ref_y, ref_mask = np_pool(x.numpy(), method, kernel, stride, pad, ceil)
            where = f"{method} k={kernel} s={stride} p={pad} hw={hw} ceil={ceil}"
            assert y.shape == ref_y.shape, where
            np.testing.assert_allclose(y.numpy(), ref_y, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=where)
            if mask is not None:
                np.testing.assert_array_equal(mask.numpy(), ref_mask, err_msg=where)
    assert paths[True] > 50 and paths[False] > 50


def test_global_pooling():
    x = rand(2, 3, 4, 5, seed=18)
    y, mask = forward(net_of(pool_text(tops=2, global_pooling=True), {"x": x.shape}), {"x": x})
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(y[..., 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(mask[..., 0, 0], x.reshape(2, 3, -1).argmax(-1))
    (y,) = forward(net_of(pool_text(pool="AVE", global_pooling=True), {"x": x.shape}), {"x": x})
    np.testing.assert_allclose(y[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-12)
    # the kernel follows the input size on reshape
    (y,) = forward(net_of(pool_text(pool="AVE", global_pooling=True), {"x": x.shape}), {"x": x[:, :, :3, :2]})
    np.testing.assert_allclose(y[..., 0, 0], x[:, :, :3, :2].mean(axis=(2, 3)), rtol=1e-12)


def test_stochastic_pooling_test_phase_formula():
    x = np.abs(rand(2, 3, 6, 5, seed=19))
    x[0, 0] = 0.0  # all-zero windows give 0
    net = net_of(pool_text(pool="STOCHASTIC", kernel_size=3, stride=2), {"x": x.shape})
    (y,) = forward(net, {"x": x})
    assert y.shape == (2, 3, 3, 2)
    np.testing.assert_allclose(y, np_pool(x, "STOCHASTIC", (3, 3), (2, 2))[0], rtol=1e-12)
    assert not y[0, 0].any()


def _windows(x: np.ndarray, oh: int, ow: int, k: int, s: int):
    for i in range(oh):
        for j in range(ow):
            yield i, j, x[..., i * s : i * s + k, j * s : j * s + k], (i * s, j * s)


def test_stochastic_pooling_train_samples_window_values_and_routes_gradient():
    shape = (2, 3, 6, 5)
    x = np.random.default_rng(20).permutation(math.prod(shape)).reshape(shape) + 1.0  # positive, distinct
    net = net_of(pool_text(pool="STOCHASTIC", kernel_size=3, stride=2), {"x": shape}, phase=caffe.TRAIN)
    (y,) = forward(net, {"x": x})
    assert y.shape == (2, 3, 3, 2)
    w = np.random.default_rng(21).standard_normal(y.shape)
    net.blobs["y"].diff[...] = w
    net._backward(len(net.layers) - 1, len(net.layers) - 1)
    expect = np.zeros(shape)
    for i, j, win, (h0, w0) in _windows(x, 3, 2, 3, 2):
        for n in range(2):
            for c in range(3):
                hit = np.argwhere(win[n, c] == y[n, c, i, j])
                assert len(hit) == 1, "the output must be one value of its window"
                expect[n, c, h0 + hit[0][0], w0 + hit[0][1]] += w[n, c, i, j]
    np.testing.assert_allclose(net.blobs["x"].diff, expect, rtol=1e-12, atol=1e-12)
    assert y.mean() > np.mean([win.mean() for *_, win, _ in _windows(x, 3, 2, 3, 2)])


def test_stochastic_pooling_train_probabilities():
    # one 1x4 window per channel holding 1, 2, 3, 4: picked with probability 0.1, 0.2, 0.3, 0.4
    channels = 6000
    x = np.broadcast_to(np.array([1.0, 2.0, 3.0, 4.0]), (1, channels, 1, 4)).copy()
    net = net_of(pool_text(pool="STOCHASTIC", kernel_h=1, kernel_w=4), {"x": x.shape}, phase=caffe.TRAIN)
    (y,) = forward(net, {"x": x})
    freq = np.array([(y == v).mean() for v in (1, 2, 3, 4)])
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.025)
    # a zero inside the window is never picked; an all-zero window outputs 0
    x[0, :, 0, 1] = 0
    x[0, :10] = 0
    (y,) = forward(net, {"x": x})
    assert not (y[0, 10:] == 0).any() and not y[0, :10].any()


# ============================================================================ Pooling: gradients
GRAD_POOL = {
    "max_pad_mask": (2, dict(kernel_h=3, kernel_w=4, stride=2, pad=1)),
    "max_fallback_pad": (2, dict(kernel_size=3, stride=2, pad=2)),
    "ave_padded": (1, dict(pool="AVE", kernel_h=4, kernel_w=3, stride=2, pad=2)),
    "ave_ceil_overhang": (1, dict(pool="AVE", kernel_size=3, stride=2)),
    "ave_floor": (1, dict(pool="AVE", kernel_size=2, stride=2, round_mode="FLOOR", pad=1)),
    "ave_global": (1, dict(pool="AVE", global_pooling=True)),
    "max_global": (2, dict(global_pooling=True)),
    "stochastic_test": (1, dict(pool="STOCHASTIC", kernel_size=3, stride=2)),
}


@pytest.mark.parametrize("case", sorted(GRAD_POOL))
def test_pooling_gradient(case):
    tops, fields = GRAD_POOL[case]
    shape = (2, 2, 6, 5)
    net = net_of(pool_text(tops=tops, **fields), {"x": shape})
    x = distinct(*shape, seed=22)
    if fields.get("pool") == "STOCHASTIC":
        x = x - x.min() + 0.5
    check_gradient(net, {"x": x})


# ============================================================================ Pooling: errors
@pytest.mark.parametrize(
    ("fields", "shape", "error", "match"),
    [
        (dict(stride=2), (1, 1, 4, 4), caffe.LayerError, "kernel_size must be specified"),
        (dict(kernel_h=2), (1, 1, 4, 4), caffe.LayerError, "kernel_h and kernel_w"),
        (dict(kernel_size=2, kernel_h=2, kernel_w=2), (1, 1, 4, 4), caffe.LayerError, "not both"),
        (dict(kernel_size=2, pad=2), (1, 1, 4, 4), caffe.LayerError, r"pad \[2, 2\] must be smaller than the kernel"),
        (dict(kernel_size=2, pad_h=1), (1, 1, 4, 4), caffe.LayerError, "pad_h and pad_w"),
        (dict(kernel_size=2, stride_w=1), (1, 1, 4, 4), caffe.LayerError, "stride_h and stride_w"),
        (dict(kernel_size=2, stride=0), (1, 1, 4, 4), caffe.LayerError, "stride must be nonzero"),
        (dict(kernel_size=0), (1, 1, 4, 4), caffe.LayerError, "kernel size must be nonzero"),
        (dict(global_pooling=True, pad=1), (1, 1, 4, 4), caffe.LayerError, "global_pooling"),
        (dict(global_pooling=True, stride=2), (1, 1, 4, 4), caffe.LayerError, "global_pooling"),
        (dict(global_pooling=True, kernel_size=2), (1, 1, 4, 4), caffe.LayerError, "global_pooling"),
        (dict(pool="STOCHASTIC", kernel_size=3, pad=1), (1, 1, 4, 4), caffe.LayerError, "AVE and MAX"),
        (dict(kernel_size=5), (1, 1, 4, 6), caffe.ShapeError, "smaller than the kernel"),
        (dict(kernel_size=2), (1, 4, 4), caffe.ShapeError, "4 axes"),
    ],
)
def test_pooling_bad_parameters(fields, shape, error, match):
    with pytest.raises(error, match=match):
        net_of(pool_text(**fields), {"x": shape})


def test_pooling_mask_top_only_for_max():
    with pytest.raises(caffe.LayerError, match="only MAX pooling can have a second top"):
        net_of(pool_text(tops=2, pool="AVE", kernel_size=2), {"x": (1, 1, 4, 4)})


# ============================================================================ SPP
def spp_text(height: int, pool: str = "MAX") -> str:
    return f'type: "SPP" bottom: "x" top: "y" spp_param {{ pyramid_height: {height} pool: {pool} }}'


def test_spp_output_shapes_as_caffe():
    assert net_of(spp_text(3), {"x": (2, 3, 9, 8)}).blobs["y"].shape == (2, 63)
    assert net_of(spp_text(3), {"x": (10, 3, 7, 7)}).blobs["y"].shape == (10, 63)
    big = net_of(spp_text(5), {"x": (4, 3, 1024, 765)}, dtype=torch.float32)
    assert big.blobs["y"].shape == (4, 1023)
    # a single level is Caffe's plain pooling layer: a 4-axis top
    assert net_of(spp_text(1), {"x": (2, 3, 9, 8)}).blobs["y"].shape == (2, 3, 1, 1)


@pytest.mark.parametrize(
    ("shape", "height", "pool"),
    [((2, 3, 9, 8), 3, "MAX"), ((1, 2, 7, 10), 3, "AVE"), ((2, 2, 5, 4), 1, "MAX"), ((1, 2, 8, 8), 3, "STOCHASTIC")],
)
def test_spp_forward_matches_numpy(shape, height, pool):
    x = np.abs(rand(*shape, seed=23))
    net = net_of(spp_text(height, pool), {"x": shape}, phase=caffe.TEST)
    (y,) = forward(net, {"x": x})
    if pool == "STOCHASTIC":
        # Caffe's SPP runs its inner pooling with a default (TRAIN-phase) LayerParameter: it samples.
        assert y.shape == (1, 2 * 21)
        per_level = np.split(y[0], [2, 10])
        for level, vals in enumerate(per_level):
            k = 8 // 2**level
            wins = x[0].reshape(2, 2**level, k, 2**level, k).transpose(0, 1, 3, 2, 4).reshape(2, -1, k * k)
            for v, win in zip(vals.reshape(2, -1).ravel(), wins.reshape(-1, k * k)):
                assert v in win
        return
    np.testing.assert_allclose(y, np_spp(x, height, pool), rtol=1e-12)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_spp_gradient(pool):
    shape = (1, 2, 6, 7)
    net = net_of(spp_text(3, pool), {"x": shape})
    check_gradient(net, {"x": distinct(*shape, seed=24)})


def test_spp_bad_parameters():
    # 3 rows in 4 bins: kernel 1 and pad 1, which Caffe's pooling refuses
    with pytest.raises(caffe.LayerError, match=r"pyramid level 2.*pad \[1, 0\] must be smaller"):
        net_of(spp_text(3), {"x": (1, 1, 3, 4)})
    with pytest.raises(caffe.LayerError, match="pyramid_height"):
        net_of('type: "SPP" bottom: "x" top: "y"', {"x": (1, 1, 4, 4)})
    with pytest.raises(caffe.LayerError, match="STOCHASTIC"):
        net_of(spp_text(2, "STOCHASTIC"), {"x": (1, 1, 5, 5)})
    with pytest.raises(caffe.ShapeError, match="4 axes"):
        net_of(spp_text(2), {"x": (1, 4, 4)})


# ============================================================================ Crop
def crop_text(axis: int | None = None, offsets: tuple[int, ...] = ()) -> str:
    body = "" if axis is None else f"axis: {axis} "
    body += " ".join(f"offset: {o}" for o in offsets)
    return f'type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param {{ {body} }}'


@pytest.mark.parametrize(
    ("axis", "offsets", "a_shape", "b_shape", "expect"),
    [
        (None, (), (2, 4, 5, 4), (1, 2, 3, 2), (slice(None), slice(None), slice(0, 3), slice(0, 2))),  # default 2
        (None, (1, 2), (2, 4, 5, 4), (1, 2, 3, 2), (slice(None), slice(None), slice(1, 4), slice(2, 4))),
        (0, (), (2, 4, 5, 4), (1, 2, 3, 2), (slice(0, 1), slice(0, 2), slice(0, 3), slice(0, 2))),
        (0, (0, 1, 1, 2), (2, 4, 5, 4), (1, 2, 3, 2), (slice(0, 1), slice(1, 3), slice(1, 4), slice(2, 4))),
        (1, (1,), (2, 4, 5, 4), (1, 2, 3, 2), (slice(None), slice(1, 3), slice(1, 4), slice(1, 3))),
        (-1, (2,), (2, 4, 5, 4), (9, 9, 9, 2), (slice(None), slice(None), slice(None), slice(2, 4))),
        (
            2,
            (1, 0, 2),
            (2, 3, 4, 5, 6),
            (1, 1, 2, 3, 4),
            (slice(None), slice(None), slice(1, 3), slice(0, 3), slice(2, 6)),
        ),
    ],
)
def test_crop_forward_and_gradient(axis, offsets, a_shape, b_shape, expect):
    net = net_of(crop_text(axis, offsets), {"a": a_shape, "b": b_shape})
    a = rand(*a_shape, seed=25)
    (y,) = forward(net, {"a": a, "b": rand(*b_shape, seed=26)})
    np.testing.assert_array_equal(y, a[expect])
    net.blobs["y"].data[...] = 0  # the top owns its memory, as in Caffe
    np.testing.assert_array_equal(net.blobs["a"].data, a)
    check_gradient(net, {"a": a, "b": rand(*b_shape, seed=26)}, check_bottoms=["a"])
    diff_b = net.blobs["b"].diff
    assert not diff_b.any()


def test_crop_bad_parameters():
    with pytest.raises(caffe.ShapeError, match="out-of-bounds with size 3 and offset 3"):
        net_of(crop_text(2, (3,)), {"a": (1, 1, 5, 5), "b": (1, 1, 3, 3)})
    with pytest.raises(caffe.LayerError, match="number of offset values"):
        net_of(crop_text(1, (1, 1)), {"a": (1, 2, 5, 5), "b": (1, 1, 3, 3)})
    with pytest.raises(caffe.ShapeError, match="axis"):
        net_of(crop_text(4), {"a": (1, 2, 5, 5), "b": (1, 1, 3, 3)})


# ============================================================================ tracing (TEST phase)
TRACE_CASES = [
    (conv_text(num_output=2, kernel_size=3, stride=2, pad=1, group=2), (2, 4, 7, 6)),
    (conv_text(num_output=2, kernel_size=2, axis=2), (2, 2, 3, 5, 5)),
    (conv_text("Deconvolution", num_output=2, kernel_size=4, stride=2, pad=1), (1, 3, 4, 5)),
    (conv_text("Im2col", kernel_size=[2, 3, 2], stride=2, pad=1), (1, 2, 4, 5, 4)),
    (pool_text(kernel_size=3, stride=2), (2, 3, 7, 6)),
    (pool_text(tops=2, kernel_size=3, stride=2, pad=2), (2, 3, 7, 6)),
    (pool_text(pool="AVE", kernel_size=3, stride=2, pad=2), (2, 3, 7, 6)),
    (pool_text(pool="AVE", global_pooling=True), (2, 3, 7, 6)),
    (pool_text(pool="STOCHASTIC", kernel_size=3, stride=2), (2, 3, 7, 6)),
    (spp_text(2, "AVE"), (2, 3, 8, 6)),
]


@pytest.mark.parametrize(("text", "shape"), TRACE_CASES)
def test_traceable_in_test_phase(text, shape):
    net = layer_net(text, {"x": shape}, dtype=torch.float32, force_backward=False)
    layer = net.layers[-1]
    for blob in layer.blobs:  # a tracer takes parameters as constants
        blob.tensor.requires_grad_(False)
    x = torch.rand(shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates jit.trace
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(lambda t: tuple(layer.forward([t])), (x,))
        x2 = torch.rand(shape)
        for got, want in zip(traced(x2), layer.forward([x2])):
            torch.testing.assert_close(got, want)
