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
