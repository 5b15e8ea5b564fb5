"""The forks' layers and rules (issue 14): pooling's ceil_mode and small-input rule, SegNet's BN and
Upsample, the YOLO ports' Upsample, PSPNet's Interp, ShuffleChannel, Axpy, the depthwise convolutions.

Each is checked against hand-computed values for its special rules, against cv2.dnn where OpenCV
implements the type (nets with random weights, saved and loaded by both), and against finite
differences where the fork has a backward.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import caffe
from tests.gradcheck import check_gradient, layer_net, set_inputs


# ---------------------------------------------------------------------------- helpers
def _net_text(shape: tuple[int, ...], layers: str) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'input: "data" input_shape {{ {dims} }}\n{layers}'


def _ours_and_cv2(tmp_path: Path, text: str, x: np.ndarray, out: str) -> tuple[np.ndarray, np.ndarray]:
    """Forward ``x`` through the net ``text`` here (random weights) and in cv2.dnn (the same weights)."""
    proto, model = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    proto.write_text(text)
    net = caffe.Net(str(proto), caffe.TEST)
    net.blobs["data"].data[...] = x
    ours = net.forward()[out].copy()
    net.save(str(model))
    ref = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.setInput(x)
    return ours, ref.forward(out)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _one_layer(layer: str, shape: tuple[int, ...], x: np.ndarray | None = None) -> np.ndarray:
    net = layer_net(layer, {"data": shape})
    set_inputs(net, {"data": x if x is not None else np.zeros(shape)})
    return net.forward()[net.outputs[0]].copy()


# ---------------------------------------------------------------------------- pooling: ceil_mode, small inputs
POOL = 'type: "Pooling" bottom: "data" top: "out" pooling_param {{ {} }}'


@pytest.mark.parametrize(
    ("params", "hw", "out_hw"),
    [
        ("pool: MAX kernel_size: 3 stride: 2 ceil_mode: false", (6, 6), (2, 2)),
        ("pool: MAX kernel_size: 3 stride: 2 ceil_mode: true", (6, 6), (3, 3)),
        ("pool: MAX kernel_size: 3 stride: 2", (6, 6), (3, 3)),
        ("pool: AVE kernel_size: 2 stride: 2 ceil_mode: false", (5, 7), (2, 3)),
        ("pool: AVE kernel_size: 3 stride: 2 pad: 1 ceil_mode: false", (6, 6), (3, 3)),
        ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (6, 6), (4, 4)),
        ("pool: MAX kernel_size: 3 stride: 2 ceil_mode: false round_mode: FLOOR", (6, 6), (2, 2)),
    ],
)
def test_pooling_ceil_mode_output_size(params: str, hw: tuple[int, int], out_hw: tuple[int, int]):
    y = _one_layer(POOL.format(params), (1, 1, *hw))
    assert y.shape[2:] == out_hw


def test_pooling_ceil_mode_contradicting_round_mode_is_refused():
    with pytest.raises(caffe.LayerError, match="contradicts round_mode"):
        layer_net(POOL.format("kernel_size: 2 ceil_mode: false round_mode: CEIL"), {"data": (1, 1, 4, 4)})


def test_pooling_ceil_mode_floor_values():
    x = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6)
    y = _one_layer(POOL.format("pool: MAX kernel_size: 3 stride: 2 ceil_mode: false"), x.shape, x)
    np.testing.assert_array_equal(y[0, 0], [[14, 16], [26, 28]])  # windows at rows/cols 0 and 2


@pytest.mark.parametrize(
    "params",
    [
        "pool: MAX kernel_size: 3 stride: 2 ceil_mode: false",
        "pool: AVE kernel_size: 3 stride: 2 ceil_mode: false",
        "pool: AVE kernel_size: 3 stride: 2 pad: 1 ceil_mode: false",
        "pool: MAX kernel_size: 2 stride: 2 ceil_mode: true",
    ],
)
def test_pooling_ceil_mode_matches_cv2(tmp_path: Path, params: str):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 9)).astype(np.float32)
    text = _net_text(x.shape, f'layer {{ name: "out" {POOL.format(params)} }}')
    ours, ref = _ours_and_cv2(tmp_path, text, x, "out")
    assert _rel_err(ours, ref) < 1e-6


@pytest.mark.parametrize(
    ("params", "value"),
    [
        ("pool: MAX kernel_size: 2 stride: 2", 3.0),  # OpenPose: 2x2/2 over 1x1 -> 1x1
        ("pool: AVE kernel_size: 2 stride: 2", 3.0),  # window clipped to the image: divisor 1
        ("pool: AVE kernel_size: 2 stride: 2 pad: 1", 0.75),  # window [-1, 1)^2: divisor 4, one pixel
    ],
)
def test_pooling_window_larger_than_input_builds_with_caffes_size(params: str, value: float):
    x = np.full((1, 2, 1, 1), 3.0)
    y = _one_layer(POOL.format(params), x.shape, x)
    assert y.shape == (1, 2, 1, 1)
    np.testing.assert_allclose(y, value)


def test_pooling_larger_window_then_reshape():
    """Load-then-reshape (OpenPose's 1x1 declared input): builds, then pools the real size."""
    net = layer_net(POOL.format("pool: MAX kernel_size: 2 stride: 2"), {"data": (1, 1, 1, 1)})
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    set_inputs(net, {"data": x})
    np.testing.assert_array_equal(net.forward()["out"][0, 0], [[5, 7], [13, 15]])


@pytest.mark.parametrize(
    ("params", "hw"),
    [
        ("pool: MAX kernel_size: 2 stride: 2 ceil_mode: false", (1, 1)),  # floor: size 0
        ("pool: MAX kernel_size: 5 stride: 1", (4, 6)),  # ceil(-1) + 1 = 0
        ("pool: MAX kernel_size: 4 stride: 1", (1, 1)),  # negative: Caffe's blob check fails
    ],
)
def test_pooling_empty_or_negative_output_is_refused(params: str, hw: tuple[int, int]):
    with pytest.raises(caffe.ShapeError, match="smaller than the kernel"):
        layer_net(POOL.format(params), {"data": (1, 1, *hw)})


def test_convolution_kernel_overhanging_tiny_input_uses_caffes_truncating_size():
    """Caffe's (in + 2p - k) / s + 1 divides toward zero: 2x2/2 over 1x1 gives 1 (missing taps are 0)."""
    conv = (
        'type: "Convolution" bottom: "data" top: "out" convolution_param { num_output: 1 kernel_size: 3 '
        'stride: 2 weight_filler { type: "constant" value: 1 } }'
    )
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    y = _one_layer(conv, x.shape, x)
    np.testing.assert_allclose(y, [[[[6.0]]]])
    im2col = 'type: "Im2col" bottom: "data" top: "out" convolution_param { kernel_size: 2 stride: 2 }'
    np.testing.assert_allclose(_one_layer(im2col, (1, 1, 1, 1), np.full((1, 1, 1, 1), 5.0)).ravel(), [5, 0, 0, 0])
    with pytest.raises(caffe.ShapeError, match="by a stride or more"):
        layer_net(conv.replace("stride: 2", "stride: 1"), {"data": (1, 1, 1, 1)})


def test_convolution_overhang_gradient():
    conv = 'type: "Convolution" bottom: "data" top: "out" convolution_param { num_output: 2 kernel_size: 3 stride: 2 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'  # noqa: E501
    net = layer_net(conv, {"data": (2, 2, 2, 2)})
    check_gradient(net, {"data": np.random.default_rng(1).standard_normal((2, 2, 2, 2))})


# ---------------------------------------------------------------------------- BN (SegNet; PSPNet)
def _bn(params: str, shape: tuple[int, ...], tops: int = 1, phase: int = caffe.TEST) -> caffe.Net:
    top = " ".join(f'top: "{t}"' for t in ["out", "mean", "var"][:tops])
    fill = 'scale_filler { type: "gaussian" } shift_filler { type: "gaussian" }'
    return layer_net(f'type: "BN" bottom: "data" {top} bn_param {{ {fill} {params} }}', {"data": shape}, phase)


def test_bn_segnet_learn_uses_batch_statistics():
    x = np.random.default_rng(2).standard_normal((3, 2, 4, 5)) * 3 + 1
    net = _bn("bn_mode: LEARN", x.shape, tops=3)
    set_inputs(net, {"data": x})
    out = net.forward()
    scale, shift = (b.data.reshape(1, -1, 1, 1) for b in net.layers[-1].blobs)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = (x**2).mean(axis=(0, 2, 3), keepdims=True) - mean**2
    np.testing.assert_allclose(out["out"], (x - mean) / np.sqrt(var + 1e-9) * scale + shift, rtol=1e-10)
    np.testing.assert_allclose(out["mean"], mean.reshape(1, -1, 1, 1), rtol=1e-12)
    np.testing.assert_allclose(out["var"], var.reshape(1, -1, 1, 1), rtol=1e-10)


def test_bn_segnet_inference_is_scale_and_shift():
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 4))
    net = _bn("bn_mode: INFERENCE", x.shape)
    set_inputs(net, {"data": x})
    scale, shift = (b.data.reshape(1, -1, 1, 1) for b in net.layers[-1].blobs)
    np.testing.assert_allclose(net.forward()["out"], x * scale + shift, rtol=1e-12)
    assert [b.shape for b in net.layers[-1].blobs] == [(1, 3, 1, 1)] * 2


def test_bn_segnet_inference_refuses_statistic_tops():
    with pytest.raises(caffe.LayerError, match="LEARN"):
        _bn("bn_mode: INFERENCE", (1, 2, 2, 2), tops=2)


@pytest.mark.parametrize("mode", ["LEARN", "INFERENCE"])
def test_bn_segnet_gradient(mode: str):
    net = _bn(f"bn_mode: {mode}", (2, 3, 3, 2))
    check_gradient(net, {"data": np.random.default_rng(4).standard_normal((2, 3, 3, 2))}, threshold=1e-4)


def test_bn_pspnet_frozen_uses_stored_statistics():
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 4))
    net = layer_net(
        'type: "BN" bottom: "data" top: "out" bn_param { slope_filler { type: "gaussian" } '
        'bias_filler { type: "gaussian" } frozen: true momentum: 0.95 }',
        {"data": x.shape},
        caffe.TRAIN,
    )
    layer = net.layers[-1]
    assert len(layer.blobs) == 4 and all(s.lr_mult == 0 for s in layer.layer_param.param)
    layer.blobs[2].data[...] = np.array([0.5, -1.0, 2.0]).reshape(1, 3, 1, 1)
    layer.blobs[3].data[...] = np.array([4.0, 0.25, 1.0]).reshape(1, 3, 1, 1)
    set_inputs(net, {"data": x})
    slope, bias, mean, var = (b.data.reshape(1, -1, 1, 1) for b in layer.blobs)
    np.testing.assert_allclose(net.forward()["out"], (x - mean) / np.sqrt(var + 1e-5) * slope + bias, rtol=1e-10)


def test_bn_pspnet_training_updates_moving_averages():
    x = np.random.default_rng(6).standard_normal((4, 2, 3, 3)) + 2
    net = layer_net('type: "BN" bottom: "data" top: "out" bn_param { momentum: 0.9 }', {"data": x.shape}, caffe.TRAIN)
    set_inputs(net, {"data": x})
    net.forward()
    layer = net.layers[-1]
    np.testing.assert_allclose(layer.blobs[2].data.ravel(), 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[3].data.ravel(), 0.1 * x.var(axis=(0, 2, 3)), rtol=1e-6)


# ---------------------------------------------------------------------------- Upsample
UNPOOL = """
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pooled" top: "mask"
         pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "up" type: "Upsample" bottom: "pooled" bottom: "mask" top: "up" upsample_param {{ {} }} }}
"""


def _net(tmp_path: Path, text: str, phase: int = caffe.TEST) -> caffe.Net:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase)


@pytest.mark.parametrize(
    ("params", "hw", "out_hw"),
    [("scale: 2", (4, 6), (4, 6)), ("upsample_h: 5 upsample_w: 7", (5, 7), (5, 7)), ("", (4, 4), (4, 4))],
)
def test_upsample_segnet_unpools_at_the_mask(tmp_path: Path, params: str, hw: tuple, out_hw: tuple):
    x = np.random.default_rng(7).permutation(2 * 3 * hw[0] * hw[1]).reshape(2, 3, *hw).astype(np.float32)
    net = _net(tmp_path, _net_text(x.shape, UNPOOL.format(params)))
    net.blobs["data"].data[...] = x
    up = net.forward()["up"]
    assert up.shape == (2, 3, *out_hw)
    expected = np.zeros_like(up)
    for n, c, i, j in np.ndindex(2, 3, (hw[0] + 1) // 2, (hw[1] + 1) // 2):  # ceil: partial last windows
        window = x[n, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
        a, b = np.unravel_index(window.argmax(), window.shape)
        expected[n, c, 2 * i + a, 2 * j + b] = window.max()
    np.testing.assert_array_equal(up, expected)


def test_upsample_segnet_hand_mask_and_pad_out():
    net = layer_net(
        'type: "Upsample" bottom: "data" bottom: "mask" top: "out" upsample_param { scale: 2 pad_out_h: true }',
        {"data": (1, 1, 2, 2), "mask": (1, 1, 2, 2)},
    )
    set_inputs(net, {"data": np.array([[[[1.0, 2], [3, 4]]]]), "mask": np.array([[[[0.0, 3], [8, 11]]]])})
    out = net.forward()["out"]
    assert out.shape == (1, 1, 3, 4)
    np.testing.assert_array_equal(out[0, 0], [[1, 0, 0, 2], [0, 0, 0, 0], [3, 0, 0, 4]])


def test_upsample_segnet_mask_out_of_range_is_an_error():
    net = layer_net(
        'type: "Upsample" bottom: "data" bottom: "mask" top: "out" upsample_param { scale: 2 }',
        {"data": (1, 1, 1, 1), "mask": (1, 1, 1, 1)},
    )
    set_inputs(net, {"data": np.ones((1, 1, 1, 1)), "mask": np.full((1, 1, 1, 1), 4.0)})
    with pytest.raises(caffe.LayerError, match="out of range"):
        net.forward()


def test_upsample_segnet_gradient():
    net = layer_net(
        'type: "Upsample" bottom: "data" bottom: "mask" top: "out" upsample_param { scale: 2 }',
        {"data": (2, 2, 2, 2), "mask": (2, 2, 2, 2)},
    )
    mask = np.array([0.0, 3, 9, 14]).reshape(1, 1, 2, 2) * np.ones((2, 2, 1, 1))
    check_gradient(
        net, {"data": np.random.default_rng(8).standard_normal((2, 2, 2, 2)), "mask": mask}, check_bottoms=["data"]
    )


def test_upsample_yolo_nearest_neighbour():
    x = np.arange(6.0).reshape(1, 1, 2, 3)
    y = _one_layer('type: "Upsample" bottom: "data" top: "out" upsample_param { scale: 2 }', x.shape, x)
    np.testing.assert_array_equal(y[0, 0], x[0, 0].repeat(2, axis=0).repeat(2, axis=1))
    np.testing.assert_array_equal(_one_layer('type: "Upsample" bottom: "data" top: "out"', x.shape, x), x)


def test_upsample_yolo_gradient():
    net = layer_net('type: "Upsample" bottom: "data" top: "out" upsample_param { scale: 3 }', {"data": (2, 2, 2, 3)})
    check_gradient(net, {"data": np.random.default_rng(9).standard_normal((2, 2, 2, 3))})


def test_upsample_segnet_fields_with_one_bottom_are_refused():
    with pytest.raises(caffe.LayerError, match="two bottoms"):
        layer_net('type: "Upsample" bottom: "data" top: "out" upsample_param { upsample_h: 4 }', {"data": (1, 1, 2, 2)})


# ---------------------------------------------------------------------------- Interp
INTERP = 'type: "Interp" bottom: "data" top: "out" interp_param {{ {} }}'


@pytest.mark.parametrize(
    ("params", "hw", "out_hw"),
    [
        ("zoom_factor: 2", (5, 7), (9, 13)),
        ("shrink_factor: 2", (5, 8), (3, 4)),
        ("shrink_factor: 2 zoom_factor: 3", (5, 8), (7, 10)),
        ("height: 6 width: 4", (3, 3), (6, 4)),
        ("zoom_factor: 2 height: 6 width: 4", (3, 3), (5, 5)),  # a lone factor wins over height/width
        ("zoom_factor: 2 shrink_factor: 2 height: 6 width: 4", (3, 3), (6, 4)),  # then height/width
        ("zoom_factor: 2 pad_beg: -1 pad_end: -1", (5, 7), (5, 9)),
    ],
)
def test_interp_output_size_rules(params: str, hw: tuple, out_hw: tuple):
    assert _one_layer(INTERP.format(params), (1, 1, *hw)).shape[2:] == out_hw


def test_interp_align_corners_values_and_crop():
    x = np.array([[[[0.0, 3.0], [6.0, 9.0]]]])
    y = _one_layer(INTERP.format("height: 3 width: 4"), x.shape, x)
    np.testing.assert_allclose(y[0, 0], [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]], atol=1e-12)
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    crop = _one_layer(INTERP.format("zoom_factor: 1 pad_beg: -1 pad_end: -1"), x.shape, x)
    np.testing.assert_array_equal(crop[0, 0], x[0, 0, 1:3, 1:3])


@pytest.mark.parametrize("params", ["zoom_factor: 2", "zoom_factor: 3", "height: 11 width: 6", "height: 4 width: 5"])
def test_interp_matches_cv2(tmp_path: Path, params: str):
    x = np.random.default_rng(10).standard_normal((2, 3, 7, 9)).astype(np.float32)
    text = _net_text(x.shape, f'layer {{ name: "out" {INTERP.format(params)} }}')
    ours, ref = _ours_and_cv2(tmp_path, text, x, "out")
    assert _rel_err(ours, ref) < 1e-5


def test_interp_gradient():
    net = layer_net(INTERP.format("height: 5 width: 3"), {"data": (1, 2, 3, 4)})
    check_gradient(net, {"data": np.random.default_rng(11).standard_normal((1, 2, 3, 4))})


def test_interp_positive_padding_is_refused():
    with pytest.raises(caffe.LayerError, match="non-positive"):
        layer_net(INTERP.format("zoom_factor: 2 pad_beg: 1"), {"data": (1, 1, 3, 3)})


# ---------------------------------------------------------------------------- ShuffleChannel, Axpy, depthwise
def test_shuffle_channel_order_and_cv2(tmp_path: Path):
    x = np.arange(6.0).reshape(1, 6, 1, 1)
    y = _one_layer('type: "ShuffleChannel" bottom: "data" top: "out" shuffle_channel_param { group: 2 }', x.shape, x)
    np.testing.assert_array_equal(y.ravel(), [0, 3, 1, 4, 2, 5])
    x = np.random.default_rng(12).standard_normal((2, 6, 3, 4)).astype(np.float32)
    layer = 'layer { name: "out" type: "ShuffleChannel" bottom: "data" top: "out" shuffle_channel_param { group: 3 } }'
    ours, ref = _ours_and_cv2(tmp_path, _net_text(x.shape, layer), x, "out")
    assert _rel_err(ours, ref) == 0.0


AXPY = """
layer {{ name: "a" type: "Pooling" bottom: "data" top: "a" pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "y" type: "Power" bottom: "data" top: "y" power_param {{ scale: -2 shift: 0.5 }} }}
layer {{ name: "out" type: "Axpy" bottom: "a" bottom: "{}" bottom: "{}" top: "out" }}
"""


def test_axpy_matches_hand_and_cv2_with_its_operands_swapped(tmp_path: Path):
    """SENet's Axpy is ``a * bottom[1] + bottom[2]``; OpenCV's importer computes ``a * bottom[2] + bottom[1]``,
    so OpenCV agrees only once the two bottoms are swapped (x and y differ here, or the order would not show)."""
    x = np.random.default_rng(13).standard_normal((1, 3, 4, 5)).astype(np.float32)
    ours, ref = _ours_and_cv2(tmp_path, _net_text(x.shape, AXPY.format("data", "y")), x, "out")
    a, y = x.mean(axis=(2, 3), keepdims=True), 0.5 - 2 * x
    np.testing.assert_allclose(ours, a * x + y, rtol=1e-5, atol=1e-6)
    assert _rel_err(ours, ref) > 0.1  # OpenCV, as written: a * y + x
    (tmp_path / "swapped").mkdir()
    _, swapped = _ours_and_cv2(tmp_path / "swapped", _net_text(x.shape, AXPY.format("y", "data")), x, "out")
    assert _rel_err(ours, swapped) < 1e-6


def test_axpy_gradient():
    net = layer_net(
        'type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "out"',
        {"a": (2, 3, 1, 1), "x": (2, 3, 2, 2), "y": (2, 3, 2, 2)},
    )
    rng = np.random.default_rng(14)
    check_gradient(net, {k: rng.standard_normal(net.blobs[k].shape) for k in ("a", "x", "y")})


DW = 'layer {{ name: "out" type: "{}" bottom: "data" top: "out" convolution_param {{ {} weight_filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }} }}'  # noqa: E501


@pytest.mark.parametrize(
    "params",
    [
        "num_output: 4 kernel_size: 3 pad: 1",
        "num_output: 4 kernel_size: 3 stride: 2",
        "num_output: 4 kernel_h: 3 kernel_w: 1 dilation: 2",
    ],
)
def test_convolution_depthwise_matches_cv2(tmp_path: Path, params: str):
    x = np.random.default_rng(15).standard_normal((2, 4, 7, 8)).astype(np.float32)
    ours, ref = _ours_and_cv2(tmp_path, _net_text(x.shape, DW.format("ConvolutionDepthwise", params)), x, "out")
    assert _rel_err(ours, ref) < 1e-5


def test_convolution_depthwise_ignores_num_output_and_checks_gradient():
    net = layer_net(
        DW.format("ConvolutionDepthwise", "num_output: 7 kernel_size: 2")[len('layer { name: "out" ') : -2],
        {"data": (2, 3, 4, 4)},
    )
    assert net.blobs["out"].shape == (2, 3, 3, 3)
    assert net.layers[-1].blobs[0].shape == (3, 1, 2, 2)
    check_gradient(net, {"data": np.random.default_rng(16).standard_normal((2, 3, 4, 4))})


def test_depthwise_convolution_is_grouped_convolution():
    x = np.random.default_rng(17).standard_normal((2, 4, 5, 5))
    text = DW.format("DepthwiseConvolution", "num_output: 4 group: 4 kernel_size: 3")[len('layer { name: "out" ') : -2]
    net = layer_net(text, {"data": x.shape})
    set_inputs(net, {"data": x})
    w, b = (blob.data for blob in net.layers[-1].blobs)
    assert w.shape == (4, 1, 3, 3)
    expected = np.stack(
        [
            [[(x[n, c, i : i + 3, j : j + 3] * w[c, 0]).sum() for j in range(3)] for i in range(3)]
            for n in range(2)
            for c in range(4)
        ]
    )
    np.testing.assert_allclose(net.forward()["out"], expected.reshape(2, 4, 3, 3) + b.reshape(1, 4, 1, 1), rtol=1e-10)
