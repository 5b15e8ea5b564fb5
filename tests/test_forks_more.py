"""The rest of issue 14: the YOLOv3 ports' ``Yolov3DetectionOutput`` (and ``caffe detect`` on it), SegNet's
``DenseImageData`` (small generated PNGs).

OpenCV 4.x has no ``Yolov3DetectionOutput`` (``readNetFromCaffe`` parses it, forward refuses: "Can't create
layer"), so its cases are computed by hand, plus a loop-by-loop transliteration of the port's CPU forward
(eric612/MobileNet-YOLO ``yolov3_detection_output_layer.cpp``) on random heads.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.errors import LayerError
from caffe.layer import FORK_TYPES
from caffe.proto import caffe_pb2 as pb

FORKS = Path(__file__).parent / "data" / "forks"
NEG = -30.0  # a logit whose sigmoid is ~1e-13: no candidate


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _yolo_text(**fields: object) -> str:
    body = " ".join(
        " ".join(f"{k}: {x}" for x in v) if isinstance(v, (list, tuple)) else f"{k}: {v}" for k, v in fields.items()
    )
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(int(fields.get("mask_group_num", 2))))
    return f'type: "Yolov3DetectionOutput" {bottoms} top: "det" yolov3_detection_output_param {{ {body} }}'


def _run(text: str, heads: list[np.ndarray]) -> np.ndarray:
    net = layer_net(text, {f"b{i}": h.shape for i, h in enumerate(heads)}, force_backward=False)
    set_inputs(net, {f"b{i}": h for i, h in enumerate(heads)})
    return net.forward()["det"].reshape(-1, 7)


# ----------------------------------------------------------------------------------- Yolov3DetectionOutput
def test_yolov3_one_cell_hand_computed():
    """One head 2 x 3, one anchor (mask 1: 30 x 40 px), stride 8: the input is 24 x 16 px."""
    head = np.full((1, 7, 2, 3), NEG)
    cell = (slice(None), 1, 2)  # row 1, column 2
    head[0, 0][cell[1:]] = 0.0  # sigmoid 0.5
    head[0, 1][cell[1:]] = _logit(0.25)
    head[0, 2][cell[1:]] = math.log(2.0)
    head[0, 3][cell[1:]] = 0.0
    head[0, 4][cell[1:]] = _logit(0.8)  # objectness
    head[0, 5][cell[1:]] = _logit(0.9)  # class 0: 0.72
    head[0, 6][cell[1:]] = _logit(0.5)  # class 1: 0.40, same box: suppressed across classes
    text = _yolo_text(
        num_classes=2, num_box=1, mask_group_num=1, mask=[1], biases=[10, 20, 30, 40], anchors_scale=[8],
        confidence_threshold=0.3,
    )  # fmt: skip
    rows = _run(text, [head])
    cx, cy, w, h = 2.5 / 3, 1.25 / 2, 2 * 30 / 24, 40 / 16
    expected = [[0, 1, 0.72, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]]  # unclipped
    np.testing.assert_allclose(rows, expected, rtol=1e-6, atol=1e-7)


def test_yolov3_threshold_is_strict_and_nothing_found_gives_one_row_per_image():
    head = np.full((2, 6, 1, 1), NEG)
    head[:, 4] = 0.0  # objectness 0.5
    head[:, 5] = 0.0  # class 0.5 -> 0.25, not above 0.25
    text = _yolo_text(
        num_classes=1, num_box=1, mask_group_num=1, mask=[0], biases=[1, 1], anchors_scale=[1],
        confidence_threshold=0.25,
    )  # fmt: skip
    np.testing.assert_array_equal(_run(text, [head]), [[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]])


def test_yolov3_two_heads_nms_and_order():
    """Head 0 (1x1, stride 32, anchors 2-3) and head 1 (2x2, stride 16, anchors 0-1) of a 32 x 32 input:
    candidates of both heads sorted together, best first; IoU below nms_threshold keeps all three, a copy
    of the best box (IoU 1) in head 0 is suppressed."""
    biases = [16, 16, 32, 32, 32, 32, 64, 64]  # anchors 0..3
    h0 = np.full((1, 2 * 6, 1, 1), NEG)
    h1 = np.full((1, 2 * 6, 2, 2), NEG)
    # head 0, anchor 1 of the head (mask 3: 64 x 64 px): the centre of the 32 x 32 input, the whole image
    h0[0, 6 + 0] = h0[0, 6 + 1] = 0.0
    h0[0, 6 + 2] = h0[0, 6 + 3] = 0.0
    h0[0, 6 + 4], h0[0, 6 + 5] = _logit(0.6), 0.0  # 0.3
    # head 0, anchor 0 (mask 2: 32 x 32 px): the best box's copy, below it: suppressed
    h0[0, 0], h0[0, 1], h0[0, 2], h0[0, 3] = _logit(0.75), _logit(0.75), math.log(0.5), math.log(0.5)
    h0[0, 4], h0[0, 5] = _logit(0.5), _logit(0.5)  # 0.25
    # head 1, anchor 0 (mask 0: 16 x 16 px) at cell (1, 1): centre (0.75, 0.75), half the image
    h1[0, 0:4, 1, 1] = 0.0
    h1[0, 4, 1, 1], h1[0, 5, 1, 1] = _logit(0.9), 10.0  # ~0.9
    # head 1, anchor 1 (mask 1: 32 x 32 px) at cell (0, 0): centre (0.25, 0.25), the image's size
    h1[0, 6:10, 0, 0] = 0.0
    h1[0, 6 + 4, 0, 0], h1[0, 6 + 5, 0, 0] = _logit(0.7), 0.0  # 0.35
    text = _yolo_text(
        num_classes=1, num_box=2, mask_group_num=2, mask=[2, 3, 0, 1], biases=biases, anchors_scale=[32, 16],
        confidence_threshold=0.1, nms_threshold=0.45,
    )  # fmt: skip
    rows = _run(text, [h0, h1])
    s = 1 / (1 + math.exp(-10.0))
    expected = [
        [0, 1, 0.9 * s, 0.5, 0.5, 1.0, 1.0],
        [0, 1, 0.35, -0.25, -0.25, 0.75, 0.75],
        [0, 1, 0.3, -0.5, -0.5, 1.5, 1.5],  # IoU 0.0625 with the first, 0.25 with the second
    ]
    np.testing.assert_allclose(rows, expected, rtol=1e-6, atol=1e-7)


def _port_reference(p: dict, heads: list[np.ndarray]) -> np.ndarray:
    """The port's CPU forward, loop by loop, one image at a time (float64)."""
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    gauss = p.get("gaussian_box", False)
    length = (9 if gauss else 5) + p["num_classes"]
    group = len(p["mask"]) // p["mask_group_num"]
    out = []
    for image in range(heads[0].shape[0]):
        preds = []
        for t, head in enumerate(heads):
            _, _, hh, ww = head.shape
            x = head[image].reshape(-1)
            stride = hh * ww
            for s in range(stride):
                for n in range(p["num_box"]):
                    base = n * length * stride + s
                    v = [x[base + c * stride] for c in range(length)]
                    if gauss:
                        obj = sig(v[8]) * (4 - sig(v[1]) - sig(v[3]) - sig(v[5]) - sig(v[7])) / 4
                        bx, by, bw, bh, first = sig(v[0]), sig(v[2]), v[4], v[6], 9
                    else:
                        obj, bx, by, bw, bh, first = sig(v[4]), sig(v[0]), sig(v[1]), v[2], v[3], 5
                    m = p["mask"][t * group + n]
                    box = (
                        (s % ww + bx) / ww,
                        (s // ww + by) / hh,
                        math.exp(bw) * p["biases"][2 * m] / (ww * p["anchors_scale"][t]),
                        math.exp(bh) * p["biases"][2 * m + 1] / (hh * p["anchors_scale"][t]),
                    )
                    for c in range(p["num_classes"]):
                        conf = sig(v[first + c]) * obj
                        if conf > p["confidence_threshold"]:
                            preds.append((conf, c, box))
        out += _port_rows(image, preds, p["nms_threshold"])
    return np.array(out).reshape(-1, 7)


def _port_rows(image: int, preds: list, threshold: float) -> list[list[float]]:
    """The YOLO ports' ending: sort by confidence, their greedy NMS loop (IoU >= threshold, across classes),
    rows ``[image, class + 1, confidence, corners]``."""
    preds = sorted(preds, key=lambda r: -r[0])
    gone: set[int] = set()
    for i in range(len(preds)):
        if i in gone:
            continue
        for j in range(i + 1, len(preds)):
            a, b = preds[i][2], preds[j][2]
            w = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
            h = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
            inter = 0.0 if w < 0 or h < 0 else w * h
            if inter / (a[2] * a[3] + b[2] * b[3] - inter) >= threshold:
                gone.add(j)
    return [
        [image, c + 1, conf, x0 - w / 2, y0 - h / 2, x0 + w / 2, y0 + h / 2]
        for i, (conf, c, (x0, y0, w, h)) in enumerate(preds)
        if i not in gone
    ]


@pytest.mark.parametrize("gaussian", [False, True])
def test_yolov3_matches_the_ports_loops_on_random_heads(gaussian: bool):
    rng = np.random.default_rng(3)
    p = {
        "num_classes": 3, "num_box": 2, "mask_group_num": 2, "mask": [2, 3, 0, 1],
        "biases": [10, 14, 23, 27, 37, 58, 81, 82], "anchors_scale": [32, 16], "confidence_threshold": 0.2,
        "nms_threshold": 0.45, "gaussian_box": gaussian,
    }  # fmt: skip
    length = (9 if gaussian else 5) + 3
    heads = [rng.normal(0, 1.5, (2, 2 * length, 3, 4)), rng.normal(0, 1.5, (2, 2 * length, 6, 8))]
    fields = {**p, "gaussian_box": str(gaussian).lower()}
    rows = _run(_yolo_text(**fields), heads)
    expected = _port_reference({**p, "confidence_threshold": np.float32(0.2), "nms_threshold": np.float32(0.45)}, heads)
    assert len(expected) > 5
    np.testing.assert_allclose(rows, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("fields", "shapes", "message"),
    [
        ({"mask_group_num": 2}, [(1, 18, 2, 2)], "1 bottoms, but mask_group_num is 2"),
        ({"num_box": 3, "mask": [0, 1]}, [(1, 18, 2, 2)], "num_box 3: each bottom has 2 anchors"),
        ({"mask": [0, 5]}, [(1, 12, 2, 2)], "mask: anchors beyond the 2 in biases"),
        ({"anchors_scale": []}, [(1, 12, 2, 2)], "anchors_scale: needs one stride per bottom"),
        ({}, [(1, 13, 2, 2)], r"expected N x 12 x H x W"),
    ],
)
def test_yolov3_bad_parameters_are_refused(fields: dict, shapes: list, message: str):
    p = {"num_classes": 1, "num_box": 2, "mask_group_num": 1, "mask": [0, 1], "biases": [1, 1, 2, 2]}
    p |= {"anchors_scale": [8]}
    p |= fields
    text = _yolo_text(**p).replace('bottom: "b1" ', "")
    with pytest.raises(LayerError, match=message):
        layer_net(text, {f"b{i}": s for i, s in enumerate(shapes)})


def test_yolov3_is_no_longer_an_unknown_fork_type():
    assert "Yolov3DetectionOutput" not in FORK_TYPES
    assert caffe.layer_type_list().count("Yolov3DetectionOutput") == 1


def test_yolov3_tiny_prototxt_of_the_port_builds_and_runs():
    """eric612/MobileNet-YOLO ``models/darknet_yolov3/yolov3-tiny.prototxt`` (@1abe4e8, BSD-2, LICENSE beside)
    with random weights, its 416 input reshaped to 128: two heads of 4x4 and 8x8."""
    net = caffe.Net(str(FORKS / "MobileNet-YOLO_darknet_yolov3-tiny.prototxt"), caffe.TEST)
    net.blobs["data"].reshape(1, 3, 128, 128)
    net.reshape()
    rows = net.forward()["layer24-yolo"].reshape(-1, 7)
    assert rows.shape[0] > 0 and np.all(rows[:, 0] == 0)
    assert np.all((rows[:, 1] >= 1) & (rows[:, 1] <= 80)) and np.all(rows[:, 2] > 0.01)
    assert np.all(np.diff(rows[:, 2]) <= 0)  # best first


# -------------------------------------------------------------------------------------- YoloDetectionOutput
def _yolo2_text(bottoms: int = 1, **fields: object) -> str:
    body = " ".join(
        " ".join(f"{k}: {x}" for x in v) if isinstance(v, (list, tuple)) else f"{k}: {v}" for k, v in fields.items()
    )
    names = " ".join(f'bottom: "b{i}"' for i in range(bottoms))
    return f'type: "YoloDetectionOutput" {names} top: "det" yolo_detection_output_param {{ {body} }}'


def test_yolov2_one_cell_hand_computed():
    """One 2 x 3 map, one anchor of 1.5 x 0.5 cells, three classes (softmax): one candidate, the best class."""
    head = np.full((1, 8, 2, 3), NEG)
    head[0, :, 1, 2] = [0.0, _logit(0.25), math.log(2.0), 0.0, _logit(0.8), 1.0, 2.0, 0.0]
    probs = np.exp([1.0, 2.0, 0.0]) / np.exp([1.0, 2.0, 0.0]).sum()
    conf = 0.8 * probs[1]
    text = _yolo2_text(num_classes=3, num_box=1, biases=[1.5, 0.5], confidence_threshold=0.5)
    rows = _run(text, [head])
    cx, cy, w, h = 2.5 / 3, 1.25 / 2, 2 * 1.5 / 3, 0.5 / 2
    expected = [[0, 2, conf, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]]  # class 1 -> label 2
    np.testing.assert_allclose(rows, expected, rtol=1e-6, atol=1e-7)
    none = _run(_yolo2_text(num_classes=3, num_box=1, biases=[1.5, 0.5], confidence_threshold=0.54), [head])
    np.testing.assert_array_equal(none, [[0, -1, -1, -1, -1, -1, -1]])


def _yolo2_port_reference(p: dict, heads: list[np.ndarray]) -> np.ndarray:
    """The port's loops (swap to cell-major, softmax, threshold, sort, greedy NMS), image by image."""
    length = 5 + p["num_classes"]

    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    out = []
    for image in range(heads[0].shape[0]):
        preds = []
        for head in heads:
            _, _, hh, ww = head.shape
            for j in range(hh):
                for i in range(ww):
                    for n in range(p["num_box"]):
                        v = head[image, n * length : (n + 1) * length, j, i]
                        e = np.exp(v[5:] - v[5:].max())
                        prob = e / e.sum()
                        c = int(np.argmax(prob))
                        conf = sig(v[4]) * prob[c]
                        box = (
                            (i + sig(v[0])) / ww,
                            (j + sig(v[1])) / hh,
                            math.exp(v[2]) * p["biases"][2 * n] / ww,
                            math.exp(v[3]) * p["biases"][2 * n + 1] / hh,
                        )
                        if conf >= p["confidence_threshold"]:
                            preds.append((conf, c, box))
        out += _port_rows(image, preds, p["nms_threshold"])
    return np.array(out).reshape(-1, 7)


def test_yolov2_matches_the_ports_loops_on_two_random_maps():
    rng = np.random.default_rng(5)
    p = {"num_classes": 4, "num_box": 3, "biases": [1.08, 1.19, 3.42, 4.41, 6.63, 11.38], "nms_threshold": 0.45}
    p["confidence_threshold"] = 0.3
    heads = [rng.normal(0, 1.5, (2, 27, 3, 3)), rng.normal(0, 1.5, (2, 27, 4, 6))]
    rows = _run(_yolo2_text(2, **p), heads)
    expected = _yolo2_port_reference(
        {**p, "confidence_threshold": np.float32(0.3), "nms_threshold": np.float32(0.45)}, heads
    )
    assert len(expected) > 5 and len(expected) < 2 * (27 + 72)  # some kept, some suppressed
    np.testing.assert_allclose(rows, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("fields", "shapes", "message"),
    [
        ({"coords": 5}, [(1, 14, 2, 2)], "coords 5: only 4"),
        ({"biases": [1.0, 1.0, 2.0]}, [(1, 14, 2, 2)], "need a .width, height. pair for each of the 2 anchors"),
        ({}, [(1, 13, 2, 2)], r"expected N x 14 x H x W"),
        ({}, [(1, 14, 2, 2)] * 3, r"bottom"),
    ],
)
def test_yolov2_bad_parameters_are_refused(fields: dict, shapes: list, message: str):
    p = {"num_classes": 2, "num_box": 2, "biases": [1, 1, 2, 2]} | fields
    with pytest.raises(caffe.CaffeError, match=message):
        layer_net(_yolo2_text(len(shapes), **p), {f"b{i}": s for i, s in enumerate(shapes)})


def test_yolov2_mobilenet_yolo_deploy_of_the_port_builds_and_runs():
    """eric612/MobileNet-YOLO ``models/yolov2/mobilenet_yolo_deploy.prototxt`` (@292c8de, BSD-2) with random
    weights, its 416 input reshaped to 160: a 5 x 5 map and a 10 x 10 one from its upsampling branch."""
    net = caffe.Net(str(FORKS / "MobileNet-YOLO_yolov2_mobilenet_yolo_deploy.prototxt"), caffe.TEST)
    net.blobs["data"].reshape(1, 3, 160, 160)
    net.reshape()
    rows = net.forward()["detection_out"].reshape(-1, 7)
    assert net.blobs["conv22"].shape[1] == 125 and net.blobs["conv23"].shape[1] == 125
    assert rows.shape[0] > 0 and np.all(rows[:, 0] == 0)
    valid = rows[rows[:, 1] > 0]
    assert np.all(valid[:, 1] <= 20) and np.all(valid[:, 2] >= 0.4) and np.all(np.diff(valid[:, 2]) <= 0)
    assert "YoloDetectionOutput" not in FORK_TYPES


# ---------------------------------------------------------------------------------------------------- Reorg
def _reorg_port(x: np.ndarray, stride: int, forward: bool) -> np.ndarray:
    """The port's reorg_cpu loop over the bottom's (N, C, H, W), flat in and out (darknet's reorg)."""
    n_, c_, h_, w_ = x.shape
    flat, out = x.reshape(-1), np.zeros(x.size)
    t_c, t_h, t_w = c_ // (stride * stride), h_ * stride, w_ * stride
    for n in range(n_):
        for c in range(c_):
            for h in range(h_):
                for w in range(w_):
                    bottom_index = w + w_ * (h + h_ * (c + c_ * n))
                    offset = c // t_c
                    w2, h2 = w * stride + offset % stride, h * stride + offset // stride
                    top_index = w2 + t_w * (h2 + t_h * (c % t_c + t_c * n))
                    if forward:
                        out[top_index] = flat[bottom_index]
                    else:
                        out[bottom_index] = flat[top_index]
    return out


@pytest.mark.parametrize("reverse", [False, True])
def test_reorg_is_the_ports_loop_with_the_true_gradient(reverse: bool):
    rng = np.random.default_rng(8)
    shape = (2, 8, 3, 5) if reverse else (2, 4, 6, 4)
    x = rng.normal(0, 1, shape)
    text = f'type: "Reorg" bottom: "x" top: "y" reorg_param {{ stride: 2 reverse: {str(reverse).lower()} }}'
    net = layer_net(text, {"x": shape})
    set_inputs(net, {"x": x})
    y = net.forward()["y"]
    assert y.shape == ((2, 2, 6, 10) if reverse else (2, 16, 3, 2))
    np.testing.assert_array_equal(y.reshape(-1), _reorg_port(x, 2, forward=reverse))
    check_gradient(layer_net(text, {"x": shape}), {"x": x})


@pytest.mark.parametrize(
    ("param", "shape", "message"),
    [
        ("", (1, 4, 4, 4), "stride must be given"),
        ("stride: 2", (1, 6, 4, 4), r"needs C a multiple of stride\^2"),
        ("stride: 2", (1, 4, 5, 4), "H, W multiples of the stride"),
        ("stride: 2", (4, 4, 4), "N x C x H x W"),
    ],
)
def test_reorg_refuses_what_the_port_would_index_outside_of(param: str, shape: tuple, message: str):
    with pytest.raises(caffe.CaffeError, match=message):
        layer_net(f'type: "Reorg" bottom: "x" top: "y" reorg_param {{ {param} }}', {"x": shape})


# ---------------------------------------------------------------------------------------------------- ReLU6
def test_relu6_values_and_the_ports_gradient_at_its_kinks():
    x = np.array([[-2.0, 0.0, 3.0, 6.0, 7.0]])
    text = 'type: "ReLU6" bottom: "x" top: "y" relu6_param { negative_slope: 0.1 }'
    net = layer_net(text, {"x": x.shape})
    set_inputs(net, {"x": x})
    np.testing.assert_allclose(net.forward()["y"], [[-0.2, 0.0, 3.0, 6.0, 6.0]])
    net.blobs["y"].diff[...] = 1.0
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, [[0.1, 0.1, 1.0, 0.0, 0.0]])  # slope at 0, none from 6
    away = np.random.default_rng(2).choice([-3.0, -1.5, 0.5, 2.5, 4.0, 8.0], (3, 4)) + 0.01
    check_gradient(layer_net(text, {"x": away.shape}), {"x": away})


def test_yolov2_lite_deploy_of_the_port_matches_cv2_up_to_its_head(tmp_path: Path):
    """eric612/MobileNet-YOLO ``models/yolov2/mobilenet_yolo_lite_deploy.prototxt`` (@4c7f444, BSD-2; ReLU6 after
    its convolutions) runs whole, its 320 input reshaped to 160; without its YoloDetectionOutput, which cv2 cannot
    create, its heads equal ``cv2.dnn``'s (whose ReLU6 is the clamp to [0, 6])."""
    from fork_nets import random_input, random_weights

    full = caffe.Net(str(FORKS / "MobileNet-YOLO_yolov2_mobilenet_yolo_lite_deploy.prototxt"), caffe.TEST)
    full.blobs["data"].reshape(1, 3, 160, 160)
    full.reshape()
    assert full.forward()["detection_out"].shape[-1] == 7
    param = text_format.Parse(
        (FORKS / "MobileNet-YOLO_yolov2_mobilenet_yolo_lite_deploy.prototxt").read_text(), pb.NetParameter()
    )
    head = next(x for x in param.layer if x.type == "YoloDetectionOutput")
    heads = list(head.bottom)
    param.layer.remove(head)
    param.layer[0].input_param.shape[0].dim[2:] = [160, 160]
    proto = tmp_path / "lite.prototxt"
    proto.write_text(text_format.MessageToString(param))
    net = caffe.Net(str(proto), caffe.TEST)
    random_weights(net)
    inputs = {k: 50 * v for k, v in random_input(net).items()}  # large enough that the clamp at 6 acts
    model = tmp_path / "lite.caffemodel"
    net.save(str(model))
    ours = net.forward(blobs=heads, **inputs)
    for layer in param.layer:  # cv2 knows the fork's DepthwiseConvolution as what it is, a grouped Convolution
        layer.type = "Convolution" if layer.type == "DepthwiseConvolution" else layer.type
    (tmp_path / "lite_cv2.prototxt").write_text(text_format.MessageToString(param))
    ref = cv2.dnn.readNetFromCaffe(str(tmp_path / "lite_cv2.prototxt"), str(model))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    for name, value in inputs.items():
        ref.setInput(value, name)
    for name, theirs in zip(heads, ref.forward(heads), strict=True):
        worst = np.abs(ours[name] - theirs).max() / np.abs(theirs).max()
        assert worst < 1e-4, (name, worst)
    assert (ours[heads[0]] != 0).any() and (net.blobs["conv0"].data == 6).any()


# ---------------------------------------------------------------------------------- caffe detect on YOLO
YOLO_DEPLOY = """name: "tiny_yolo"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "head" type: "Convolution" bottom: "data" top: "head"
  convolution_param { num_output: 7 kernel_size: 16 stride: 16 } }
layer { name: "det" type: "Yolov3DetectionOutput" bottom: "head" top: "det"
  yolov3_detection_output_param { num_classes: 2 num_box: 1 mask_group_num: 1 mask: 0 biases: 16 biases: 16
    anchors_scale: 16 confidence_threshold: 0.1 } }
"""


YOLO2_DEPLOY = YOLO_DEPLOY.replace('type: "Yolov3DetectionOutput"', 'type: "YoloDetectionOutput"').replace(
    """yolov3_detection_output_param { num_classes: 2 num_box: 1 mask_group_num: 1 mask: 0 biases: 16 biases: 16
    anchors_scale: 16 confidence_threshold: 0.1 }""",
    "yolo_detection_output_param { num_classes: 2 num_box: 1 biases: 1 biases: 1 confidence_threshold: 0.1 }",
)
# YOLOv2's classes are a softmax: logits 2 and 0 give class 0 the probability e^2 / (e^2 + 1)
YOLO2_CAT = 0.8 * math.exp(2) / (math.exp(2) + 1)


def write_yolo_model(folder: Path, v2: bool = False) -> tuple[Path, Path, Path]:
    """A 2-class YOLOv3 (``v2``: YOLOv2) head over a 2x2 grid (stride 16) whose convolution has zero weights and
    biases that make every cell find class 0 ("cat") at 0.72 (YOLO2_CAT) in its own quadrant: (deploy, weights,
    labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    deploy = folder / "deploy.prototxt"
    deploy.write_text(YOLO2_DEPLOY if v2 else YOLO_DEPLOY)
    net = caffe.Net(str(deploy), caffe.TEST)
    net.params["head"][0].data[...] = 0
    classes = [2.0, 0.0] if v2 else [_logit(0.9), NEG]
    net.params["head"][1].data[...] = [0, 0, 0, 0, _logit(0.8), *classes]
    weights = folder / "yolo.caffemodel"
    net.save(str(weights))
    labels = folder / "labels.txt"
    labels.write_text("cat\ndog\n")  # darknet's names: class 0 first
    return deploy, weights, labels


def quadrants(width: int, height: int) -> list[list[float]]:
    """The four boxes of write_yolo_model's detector on a ``width`` x ``height`` image, in its order."""
    w, h = width / 2, height / 2
    return [[x, y, x + w, y + h] for y in (0, h) for x in (0, w)]


@pytest.mark.parametrize("v2", [False, True])
def test_caffe_detect_reads_a_yolo_ports_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], v2: bool):
    import json

    from PIL import Image

    from caffe.tools.cli import main

    deploy, weights, labels = write_yolo_model(tmp_path / "yolo", v2)
    image = tmp_path / "street.png"
    Image.new("RGB", (60, 40), (90, 120, 30)).save(image)
    argv = ["detect", "--model", str(deploy), "--weights", str(weights), "--labels", str(labels)]
    assert main([*argv, "--format=json", str(image)]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    found = record["detections"]
    assert [(d["label"], d["index"]) for d in found] == [("cat", 1)] * 4
    np.testing.assert_allclose([d["confidence"] for d in found], [YOLO2_CAT if v2 else 0.72] * 4, rtol=1e-6)
    np.testing.assert_allclose([d["box"] for d in found], quadrants(60, 40), rtol=1e-5, atol=1e-4)
    assert main([*argv, "--threshold=0.8", str(image)]) == 0
    assert capsys.readouterr().out == ""


def test_caffe_serve_detects_with_a_yolov2_port(tmp_path: Path):
    from fastapi.testclient import TestClient
    from PIL import Image

    from caffe.serve import create_app, load_model

    deploy, weights, labels = write_yolo_model(tmp_path / "yolo2", v2=True)
    model = load_model(f"yolo2={deploy},{weights}", labels=str(labels))
    assert model.kind == "detection"
    image = tmp_path / "street.png"
    Image.new("RGB", (60, 40), (90, 120, 30)).save(image)
    with TestClient(create_app([model])) as client:
        r = client.post("/models/yolo2/detect", files={"file": ("street.png", image.read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        found = r.json()["detections"]
    assert [(d["label"], d["index"]) for d in found] == [("cat", 1)] * 4
    np.testing.assert_allclose([d["confidence"] for d in found], [YOLO2_CAT] * 4, rtol=1e-6)
    np.testing.assert_allclose([d["box"] for d in found], quadrants(60, 40), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------- DenseImageData
def _dense_set(folder: Path, sizes: list[tuple[int, int]], gray: bool = False) -> Path:
    """Image / label PNG pairs whose image channels hold (label, 10 * k + 1, 10 * k + 2) for pair k and
    whose labels number the pixels (row * width + column, under 256): any crop or flip shows in both alike.
    Returns the list file (names relative to ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, (h, w) in enumerate(sizes):
        labels = (np.arange(h * w) % 256).reshape(h, w).astype(np.uint8)
        image = np.stack([labels, np.full_like(labels, 10 * k + 1), np.full_like(labels, 10 * k + 2)], axis=2)
        cv2.imwrite(str(folder / f"im{k}.png"), image[:, :, 0] if gray else image)
        cv2.imwrite(str(folder / f"lab{k}.png"), labels)
        lines.append(f"im{k}.png lab{k}.png")
    source = folder / "list.txt"
    source.write_text("\n".join(lines) + "\n")
    return source


def _dense_net(source: Path, phase: int = caffe.TRAIN, transform: str = "", **param: object) -> caffe.Net:
    fields = " ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in param.items())
    text = (
        f'layer {{ name: "data" type: "DenseImageData" top: "data" top: "label" {transform} '
        f'dense_image_data_param {{ source: "{source}" root_folder: "{source.parent}/" {fields} }} }}'
    )
    return caffe.Net(text_format.Parse(text, pb.NetParameter()), phase)


def _stop(net: caffe.Net) -> None:
    net.layer_dict["data"].prefetcher.stop(join=True)


def test_dense_image_data_reads_pairs_in_order_and_wraps(tmp_path: Path):
    source = _dense_set(tmp_path / "set", [(4, 6)] * 3)
    net = _dense_net(source, batch_size=2)
    assert net.blobs["data"].data.shape == (2, 3, 4, 6) and net.blobs["label"].data.shape == (2, 1, 4, 6)
    batches = [{k: v.copy() for k, v in net.forward().items()} for _ in range(2)]
    _stop(net)
    pixels = np.arange(24).reshape(4, 6)
    for batch, pairs in zip(batches, [(0, 1), (2, 0)], strict=True):
        for i, k in enumerate(pairs):
            np.testing.assert_array_equal(batch["label"][i, 0], pixels)
            rest = [np.full((4, 6), 10 * k + 1), np.full((4, 6), 10 * k + 2)]
            np.testing.assert_array_equal(batch["data"][i], [pixels, *rest])


def test_dense_image_data_mean_and_scale_touch_the_image_only(tmp_path: Path):
    source = _dense_set(tmp_path / "set", [(3, 3)])
    net = _dense_net(source, transform="transform_param { mean_value: 1 scale: 0.5 }", batch_size=1)
    out = net.forward()
    _stop(net)
    pixels = np.arange(9).reshape(3, 3)
    np.testing.assert_allclose(out["data"][0, 1], np.full((3, 3), 0.0))  # (1 - 1) * 0.5
    np.testing.assert_allclose(out["data"][0, 0], (pixels - 1) * 0.5)
    np.testing.assert_array_equal(out["label"][0, 0], pixels)


def test_dense_image_data_resizes_labels_by_nearest_neighbour(tmp_path: Path):
    source = _dense_set(tmp_path / "set", [(4, 6)])
    net = _dense_net(source, batch_size=1, new_height=8, new_width=9)
    out = net.forward()
    _stop(net)
    labels = cv2.imread(str(tmp_path / "set" / "lab0.png"), cv2.IMREAD_GRAYSCALE)
    image = cv2.imread(str(tmp_path / "set" / "im0.png"), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(out["label"][0, 0], cv2.resize(labels, (9, 8), interpolation=cv2.INTER_NEAREST))
    np.testing.assert_array_equal(out["data"][0], cv2.resize(image, (9, 8)).transpose(2, 0, 1))


@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_dense_image_data_mirror_and_crop_move_image_and_labels_together(tmp_path: Path, phase: int):
    source = _dense_set(tmp_path / "set", [(6, 8)] * 2)
    caffe.set_random_seed(5)
    net = _dense_net(source, phase, batch_size=4, mirror=True, crop_height=3, crop_width=5, shuffle=True)
    batches = [{k: v.copy() for k, v in net.forward().items()} for _ in range(6)]
    _stop(net)
    pixels = np.arange(48).reshape(6, 8)
    windows = set()
    for batch in batches:
        assert batch["data"].shape == (4, 3, 3, 5) and batch["label"].shape == (4, 1, 3, 5)
        np.testing.assert_array_equal(batch["data"][:, 0], batch["label"][:, 0])  # same crop, same flip
        for lab in batch["label"][:, 0].astype(int):
            flipped = bool(lab[0, 0] % 8 > lab[0, -1] % 8)
            source_view = pixels[:, ::-1] if flipped else pixels
            h, w = np.argwhere(source_view == lab[0, 0])[0]
            np.testing.assert_array_equal(lab, source_view[h : h + 3, w : w + 5])
            windows.add((flipped, int(h), int(w)))
    assert {f for f, _, _ in windows} == {False, True} and len(windows) > 6  # random in every phase, as the fork


@pytest.mark.parametrize(
    ("transform", "param", "sizes", "message"),
    [
        ("transform_param { mirror: true }", {}, [(4, 4)], "use dense_image_data_param's mirror"),
        ("transform_param { crop_size: 2 }", {}, [(4, 4)], "use dense_image_data_param's mirror, crop_height"),
        ("", {"crop_height": 2}, [(4, 4)], "crop_height and crop_width must be set together"),
        ("", {"crop_height": 5, "crop_width": 2}, [(4, 4)], r"crop 5x2 is larger than the image \(4x4\)"),
    ],
)
def test_dense_image_data_refuses_what_the_fork_refuses(tmp_path, transform, param, sizes, message):
    source = _dense_set(tmp_path / "set", sizes)
    with pytest.raises(caffe.CaffeError, match=message):
        _dense_net(source, transform=transform, batch_size=1, **param)


def test_dense_image_data_bad_files(tmp_path: Path):
    source = _dense_set(tmp_path / "set", [(4, 4)])
    cv2.imwrite(str(tmp_path / "set" / "lab0.png"), np.zeros((3, 4), np.uint8))
    with pytest.raises(caffe.CaffeError, match="input and label image sizes must match"):
        _dense_net(source, batch_size=1)
    source.write_text("im0.png lab0.png im0.png\n")
    with pytest.raises(caffe.CaffeError, match="expected 'image label_image' pairs"):
        _dense_net(source, batch_size=1)
    source.write_text("im0.png missing.png\n")
    with pytest.raises(caffe.CaffeError, match=r"missing\.png: no such image file"):
        _dense_net(source, batch_size=1)


def test_dense_image_data_gray_and_batch_one_takes_each_size(tmp_path: Path):
    source = _dense_set(tmp_path / "set", [(4, 6), (5, 3)], gray=True)
    net = _dense_net(source, batch_size=1, is_color=False)
    shapes = [tuple(net.forward()["data"].shape) for _ in range(2)]
    _stop(net)
    assert shapes == [(1, 1, 4, 6), (1, 1, 5, 3)]
    assert "DenseImageData" not in FORK_TYPES


def test_dense_image_data_shards_equal_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """2 training processes of batch 2 read, between them, what one process of batch 4 reads (same seed):
    the same pairs, flips and crops."""
    source = _dense_set(tmp_path / "set", [(6, 8)] * 5)

    def run(rank: int, size: int, batch: int) -> list[np.ndarray]:
        caffe.set_random_seed(11)
        monkeypatch.setattr(caffe.parallel, "world", lambda: (rank, size))
        try:
            net = _dense_net(source, batch_size=batch, shuffle=True, mirror=True, crop_height=4, crop_width=4)
        finally:
            monkeypatch.undo()
        out = [np.concatenate([net.forward()["data"], net.blobs["label"].data], axis=1).copy() for _ in range(4)]
        _stop(net)
        return out

    whole = run(0, 1, 4)
    ranks = [run(r, 2, 2) for r in range(2)]
    for i in range(4):
        interleaved = np.stack([ranks[0][i], ranks[1][i]], axis=1).reshape(whole[i].shape)
        np.testing.assert_array_equal(interleaved, whole[i])


# ------------------------------------------------------------------------------------ caffe serve /segment
def test_serve_segment_png_and_json_and_wrong_kinds(tmp_path: Path):
    import io

    from fastapi.testclient import TestClient
    from PIL import Image
    from test_detect_segment import FCN, _expected_classes, _scene, _tiny_net

    from caffe.serve import create_app, load_model

    folder = _tiny_net(tmp_path / "fcn", FCN.replace("CLASSES", "5"), (1, 3, 32, 48))
    (folder / "labels.txt").write_text("sky\nroad\ncar\ntree\nsign\n")
    rgb = _scene(50, 70)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    data = buf.getvalue()
    expected = _expected_classes(folder, rgb)
    deploy, weights, labels = write_yolo_model(tmp_path / "yolo")
    seg = load_model(f"seg={folder}")
    yolo = load_model(f"yolo={deploy},{weights}", labels=str(labels))
    assert seg.kind == "segmentation" and yolo.kind == "detection"
    with TestClient(create_app([seg, yolo])) as c:
        r = c.post("/segment", files={"file": ("scene.png", data, "image/png")})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png" and r.headers["x-classes"] == "5"
        classes = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(classes, expected)
        r = c.post("/models/seg/segment?format=json", content=data, headers={"content-type": "image/png"})
        body = r.json()
        assert (body["model"], body["width"], body["height"]) == ("seg", 70, 50)
        values, counts = np.unique(expected, return_counts=True)
        names = ["sky", "road", "car", "tree", "sign"]
        assert body["classes"] == [
            {"index": int(v), "label": names[v], "pixels": int(n)} for v, n in zip(values, counts, strict=True)
        ]
        assert sum(x["pixels"] for x in body["classes"]) == 50 * 70
        # wrong kinds and fields: 4xx naming the right route
        r = c.post("/models/yolo/segment", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 400 and "POST /models/yolo/detect" in r.json()["detail"]
        r = c.post("/models/seg/predict", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 400 and "POST /models/seg/segment" in r.json()["detail"]
        assert c.post("/segment?format=bmp", content=data, headers={"content-type": "image/png"}).status_code == 422
        assert c.post("/segment", json={"base64": "", "threshold": 0.5}).status_code == 422
        assert c.post("/segment", content=b"not an image", headers={"content-type": "image/png"}).status_code == 400
        # the YOLO port's detector on /detect
        r = c.post("/models/yolo/detect", content=data, headers={"content-type": "image/png"})
        found = r.json()["detections"]
        assert [d["label"] for d in found] == ["cat"] * 4
        np.testing.assert_allclose([d["box"] for d in found], quadrants(70, 50), atol=1e-4)
