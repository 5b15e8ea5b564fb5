"""MobileNet-YOLO's YOLO training (eric612/MobileNet-YOLO), checked in these ways:

- The ``Yolov3`` loss (MSE and the IoU losses) and ``RegionLoss`` against the port's loops written out element by
  element, and against hand computations.
- The overlap gradients against finite differences.
- ``AssistedExcitation`` computed by hand, and the solver's progress reaching the layers.
- The data: ``AnnotatedData`` with YOLO labels, several resize policies, jittered crops and the difficult-box
  warm-up.
- The port's own train, test and solver files, training here."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from fork_nets import FORKS
from google.protobuf import text_format
from gradcheck import layer_net
from test_ssd_fork_training import _annotated_lmdb, _user_copy, solve_two_iterations

import caffe
from caffe.data.annotation import annotated_datum
from caffe.data.db import item_key, open_db
from caffe.errors import CaffeError
from caffe.layers.annotated_data import jitter_window
from caffe.layers.assisted_excitation import excitation_weight
from caffe.layers.yolo_iou import KIND, iou_gradient, overlap
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_solver_param

PORT = "MobileNet-YOLO_yolov3_mobilenet_yolov3_lite_"
BIASES = [6, 8, 10, 14, 16, 12, 30, 20, 24, 36, 40, 30]  # six anchors, input pixels


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _iou(a: list[float], b: list[float]) -> float:
    def overlap(x1: float, w1: float, x2: float, w2: float) -> float:
        return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)

    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = 0.0 if w < 0 or h < 0 else w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


def port_loss(x: np.ndarray, label: np.ndarray, p: dict) -> tuple[float, np.ndarray]:
    """The port's Forward_cpu and Backward_cpu, loop for loop (flat indices as in its sources): (loss, bottom diff
    for a top diff of 1)."""
    n_img, channels, side_h, side_w = x.shape
    num, classes, scale = p["num"], p["num_class"], p["anchors_scale"]
    biases, mask = p["biases"], p["mask"]
    eps, thresh, iou_thresh = p.get("label_smooth_eps", 0.1), p.get("thresh", 0.2), p.get("iou_thresh", 0.5)
    logic, focal = p.get("use_logic_gradient", False), p.get("use_focal_loss", False)
    coord, object_scale, class_scale = p.get("coord_scale", 5.0), p.get("object_scale", 1.0), p.get("class_scale", 1.0)
    kind = KIND.IOU_LOSS.Value(p.get("iou_loss", "MSE"))
    normalizer, max_delta, accumulate = (
        p.get("iou_normalizer", 0.25),
        p.get("max_delta", 10.0),
        p.get("accumulate", True),
    )
    inp, lab = x.reshape(-1).astype(np.float64), label.reshape(n_img, -1)
    rows = lab.shape[1] // 5
    count1 = channels * side_h * side_w
    count, iou_loss = 0, 0.0

    def match(a: list[float], b: list[float]) -> float:  # box_iou(a, b, iou_loss): the overlap of that kind
        if kind == KIND.MSE:
            return _iou(a, b)
        value = float(overlap(kind, np.array([a], dtype=np.float32), np.array(b))[0])
        return 0.0 if math.isnan(value) else value

    length, stride = 5 + classes, side_w * side_h
    swap = inp.copy()
    diff = np.zeros_like(inp)

    def region_box(a: int, index: int, i: int, j: int) -> list[float]:
        return [
            (i + swap[index]) / side_w,
            (j + swap[index + stride]) / side_h,
            math.exp(swap[index + 2 * stride]) * biases[2 * a] / (side_w * scale),
            math.exp(swap[index + 3 * stride]) * biases[2 * a + 1] / (side_h * scale),
        ]

    def delta_box(truth: list[float], a: int, index: int, i: int, j: int, s: float) -> float:
        pred = region_box(a, index, i, j)
        if kind != KIND.MSE:  # the IoU path: the overlap's gradient (FD-checked below), its sizes through exp
            value = match(pred, truth) if kind in (KIND.GIOU, KIND.CIOU) else match_kind(KIND.DIOU, pred, truth)
            sized = [v if k < 2 or v != 0 else 1.0 for k, v in enumerate(pred)]
            grad = iou_gradient(kind, np.array(sized), np.array(truth))
            for c in range(4):
                d = grad[c] * (math.exp(swap[index + c * stride]) if c >= 2 else 1.0) * normalizer
                d = 0.0 if not math.isfinite(d) else min(max(d, -max_delta), max_delta)
                diff[index + c * stride] = (diff[index + c * stride] if accumulate else 0.0) - d
            return value
        iou = _iou(pred, truth)
        tx, ty = truth[0] * side_w - i, truth[1] * side_h - j
        tw = math.log(truth[2] * side_w * scale / biases[2 * a])
        th = math.log(truth[3] * side_h * scale / biases[2 * a + 1])
        for c, t in enumerate((tx, ty, tw, th)):
            diff[index + c * stride] = -s * (t - swap[index + c * stride])
        return iou

    def match_kind(other: int, a: list[float], b: list[float]) -> float:
        value = float(overlap(other, np.array([a], dtype=np.float32), np.array(b))[0])
        return 0.0 if math.isnan(value) else value

    def delta_class(index: int, label_class: int) -> None:
        def smooth(y: float) -> float:
            return y * (1 - eps) + 0.5 * eps if eps else y

        if diff[index + stride * label_class]:
            diff[index + stride * label_class] = -class_scale * (smooth(1.0) - swap[index + stride * label_class])
            return
        if focal:
            pt = swap[index + stride * label_class] + 1e-15
            grad = -(1 - pt) * (2 * pt * math.log(pt) + pt - 1)
            for k in range(classes):
                target = 1.0 if k == label_class else 0.0
                diff[index + stride * k] = -class_scale * (target - swap[index + k * stride]) * 0.5 * grad
            return
        for k in range(classes):
            diff[index + stride * k] = -class_scale * (
                smooth(1.0 if k == label_class else 0.0) - swap[index + stride * k]
            )

    def truth_row(b: int, t: int) -> list[float]:
        return [float(v) for v in lab[b, t * 5 : t * 5 + 5]]

    for b in range(n_img):
        for s in range(stride):
            for n in range(num):
                index = n * length * stride + s + b * count1
                for c in range(length):
                    if c not in (2, 3):
                        swap[c * stride + index] = _sig(inp[c * stride + index])
                y2, x2 = s // side_w, s % side_w
                pred = region_box(mask[n], index, x2, y2)
                best = 0.0
                for t in range(rows):
                    row = truth_row(b, t)
                    if not row[1]:
                        break
                    best = max(best, match(pred, row[1:]))
                diff[index + 4 * stride] = swap[index + 4 * stride]
                if best > thresh:
                    diff[index + 4 * stride] = 0
        for t in range(rows):
            row = truth_row(b, t)
            if not row[3]:
                break
            truth = row[1:]
            i, j = int(truth[0] * side_w), int(truth[1] * side_h)
            pos = j * side_w + i
            shift = [0.0, 0.0, truth[2], truth[3]]
            best_n, best_iou = -1, 0.0
            anchors = [[0.0, 0.0, biases[2 * a] / (side_w * scale), biases[2 * a + 1] / (side_h * scale)]
                       for a in range(len(biases) // 2)]  # fmt: skip
            for a, anchor in enumerate(anchors):
                if match(anchor, shift) > best_iou:
                    best_n, best_iou = a, match(anchor, shift)
            targets = []
            if best_n in mask:
                best_n = mask.index(best_n)
                targets.append(best_n)
            for a, anchor in enumerate(anchors):
                if a in mask and a != best_n and iou_thresh < 1 and match(anchor, shift) > iou_thresh:
                    targets.append(mask.index(a))
            for k in targets:
                index = k * length * stride + pos + b * count1
                iou = delta_box(truth, mask[k], index, i, j, coord * (2 - truth[2] * truth[3]))
                count, iou_loss = count + 1, iou_loss + (1 - iou)
                obj = -(1 - swap[index + 4 * stride])
                diff[index + 4 * stride] = obj * object_scale if logic else obj
                delta_class(index + 5 * stride, int(row[0]))
    if kind == KIND.MSE:
        loss = float((diff**2).sum()) / n_img
    else:  # the objectness and class deltas squared, plus the normalized mean of 1 - overlap
        loss = sum(diff[idx] ** 2 for idx in range(len(diff)) if (idx // stride) % length >= 4)
        loss = (loss + (normalizer * iou_loss / count if count else 0.0)) / n_img
    if logic:
        for idx in range(len(diff)):
            if (idx // stride) % length not in (2, 3):
                diff[idx] *= swap[idx] * (1 - swap[idx])
    return loss, (diff / n_img).reshape(x.shape)


def _yolov3_text(p: dict) -> str:
    fields = []
    for key, value in p.items():
        for v in value if isinstance(value, list) else [value]:
            fields.append(f"{key}: {str(v).lower() if isinstance(v, bool) else v}")
    return f'name: "loss" type: "Yolov3" bottom: "x" bottom: "label" top: "loss" yolov3_param {{ {" ".join(fields)} }}'


def _labels(boxes: list[list[list[float]]], rows: int = 6) -> np.ndarray:
    out = np.zeros((len(boxes), 1, rows, 5), dtype=np.float32)
    for b, image in enumerate(boxes):
        out[b, 0, : len(image)] = image
    return out


def _loss_and_diff(text: str, x: np.ndarray, label: np.ndarray) -> tuple[float, np.ndarray]:
    """A loss layer's value and its bottom's gradient (top diff 1) for the head ``x`` and the labels."""
    net = layer_net(text, {"x": x.shape, "label": label.shape}, phase=caffe.TRAIN)
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = label
    loss = float(net.forward()["loss"])
    net.backward()
    return loss, net.blobs["x"].diff.copy()


# two images: a box whose best anchor is another head's, two boxes in one cell (the class set twice), a small box
BOXES = [
    [[1, 0.30, 0.40, 0.20, 0.25], [2, 0.70, 0.55, 0.50, 0.45], [0, 0.72, 0.58, 0.30, 0.40]],
    [[2, 0.15, 0.80, 0.10, 0.12], [1, 0.55, 0.35, 0.60, 0.70]],
]
HEAD = {"num_class": 3, "num": 3, "anchors_scale": 8, "biases": BIASES, "mask": [3, 4, 5]}


@pytest.mark.parametrize(
    ("extra", "matches"),
    [
        ({}, 2),
        ({"mask": [0, 1, 2], "thresh": 0.3}, 4),
        ({"use_logic_gradient": True, "object_scale": 5.0, "coord_scale": 1.0}, 2),
        ({"use_focal_loss": True, "label_smooth_eps": 0.0}, 2),
        ({"iou_thresh": 0.2, "class_scale": 2.0}, 6),  # boxes 2 and 3 share a cell and anchors
        ({"iou_thresh": 1.0, "label_smooth_eps": 0.3}, 1),
        ({"iou_loss": "GIOU", "iou_thresh": 0.2}, 6),
        ({"iou_loss": "DIOU", "iou_normalizer": 0.5, "max_delta": 0.05}, 2),
        ({"iou_loss": "CIOU", "accumulate": False, "iou_thresh": 0.2}, 6),
        ({"iou_loss": "IOU", "mask": [0, 1, 2]}, 4),
    ],
    ids=[
        "defaults",
        "small-anchors",
        "logic-gradient",
        "focal",
        "several-anchors",
        "one-anchor",
        "giou",
        "diou",
        "ciou",
        "iou",
    ],
)
def test_yolov3_loss_and_gradient_follow_the_ports_loops(extra: dict, matches: int):
    p = {**HEAD, **extra}
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1.0, (2, 3 * 8, 4, 5))  # H 4, W 5: an input of 32 x 40
    label = _labels(BOXES)
    loss, diff = _loss_and_diff(_yolov3_text(p), x, label)
    want_loss, want_diff = port_loss(x.astype(np.float32), label, p)
    assert want_loss > 1.0
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5)
    np.testing.assert_allclose(diff, want_diff, rtol=1e-4, atol=1e-6)
    matched = np.abs(want_diff.reshape(2, 3, 8, 4, 5)[:, :, 5:]).sum(axis=2) > 0  # (image, anchor, cell)
    assert matched.sum() == matches  # (image, anchor, cell) places given a box: the cases each set covers


def _intersection(b: np.ndarray, t: np.ndarray) -> float:
    iw = min(b[0] + b[2] / 2, t[0] + t[2] / 2) - max(b[0] - b[2] / 2, t[0] - t[2] / 2)
    ih = min(b[1] + b[3] / 2, t[1] + t[3] / 2) - max(b[1] - b[3] / 2, t[1] - t[3] / 2)
    return max(iw, 0.0) * max(ih, 0.0)


def _true_iou(b: np.ndarray, t: np.ndarray) -> float:
    inter = _intersection(b, t)
    return inter / (b[2] * b[3] + t[2] * t[3] - inter)


def _enclosing(b: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    cw = max(b[0] + b[2] / 2, t[0] + t[2] / 2) - min(b[0] - b[2] / 2, t[0] - t[2] / 2)
    ch = max(b[1] + b[3] / 2, t[1] + t[3] / 2) - min(b[1] - b[3] / 2, t[1] - t[3] / 2)
    return cw, ch


def _giou(b: np.ndarray, t: np.ndarray) -> float:
    cw, ch = _enclosing(b, t)
    union = b[2] * b[3] + t[2] * t[3] - _intersection(b, t)
    return _true_iou(b, t) - (cw * ch - union) / (cw * ch)


def _distance(b: np.ndarray, t: np.ndarray) -> float:
    cw, ch = _enclosing(b, t)
    return -((b[0] - t[0]) ** 2 + (b[1] - t[1]) ** 2) / (cw * cw + ch * ch)


def _aspect(b: np.ndarray, t: np.ndarray) -> float:
    return 4 / math.pi**2 * (math.atan(t[2] / t[3]) - math.atan(b[2] / b[3])) ** 2


def _fd(f, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.zeros(4)
    for k in range(4):
        step = np.zeros(4)
        step[k] = 1e-6
        out[k] = (f(b + step, t) - f(b - step, t)) / 2e-6
    return out


TRUTH = np.array([0.50, 0.45, 0.30, 0.40])
OVERLAPPING = np.array([0.56, 0.38, 0.26, 0.33])  # overlaps the truth, no side shared


@pytest.mark.parametrize("kind", ["IOU", "GIOU", "DIOU", "CIOU"])
def test_iou_gradient_is_the_derivative_the_port_takes(kind: str):
    """The port's overlap gradient against finite differences: the true derivative in x and y, twice it in w and h
    (its sides-to-sizes step leaves out a 1/2), the DIoU term without its 0.6 exponent and, in x and y, with the
    enclosing box's part of opposite sign, the CIoU aspect term without its 1 / (w^2 + h^2) factor - each as its
    sources write them."""
    value = KIND.IOU_LOSS.Value(kind)
    got = iou_gradient(value, OVERLAPPING, TRUTH)
    iou = _fd(_true_iou, OVERLAPPING, TRUTH)
    part = _fd(_giou, OVERLAPPING, TRUTH) if kind == "GIOU" else iou
    want = np.concatenate([part[:2], 2 * part[2:]])
    if kind in ("DIOU", "CIOU"):
        want += _fd(_distance, OVERLAPPING, TRUTH)
        # in x and y the port takes the enclosing diagonal's change with the opposite sign
        s, c = -_distance(OVERLAPPING, TRUTH), sum(v * v for v in _enclosing(OVERLAPPING, TRUTH))
        dc = _fd(lambda b, t: sum(v * v for v in _enclosing(b, t)), OVERLAPPING, TRUTH)
        want[:2] -= 2 * (s * c) * dc[:2] / c**2
    if kind == "CIOU":
        v, w, h = _aspect(OVERLAPPING, TRUTH), OVERLAPPING[2], OVERLAPPING[3]
        alpha = v / (1 - _true_iou(OVERLAPPING, TRUTH) + v + 1e-6)
        want[2:] += -(w * w + h * h) * alpha * _fd(_aspect, OVERLAPPING, TRUTH)[2:]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.abs(got).min() > 1e-3  # every component moves


@pytest.mark.parametrize("kind", ["GIOU", "DIOU", "CIOU"])
def test_iou_losses_pull_apart_boxes_together(kind: str):
    """Boxes that do not overlap: the GIoU, DIoU and CIoU gradients point the centre towards the truth's (the IoU's
    would be 0), and the overlap values are those of their definitions."""
    apart = np.array([0.15, 0.85, 0.10, 0.12])
    grad = iou_gradient(KIND.IOU_LOSS.Value(kind), apart, TRUTH)
    assert float(np.dot(grad[:2], TRUTH[:2] - apart[:2])) > 0
    got = float(overlap(KIND.IOU_LOSS.Value(kind), apart[None].astype(np.float32), TRUTH)[0])
    cw, ch = _enclosing(apart, TRUTH)
    union = apart[2] * apart[3] + TRUTH[2] * TRUTH[3]
    d = -_distance(apart, TRUTH)
    want = {
        "GIOU": -(cw * ch - union) / (cw * ch),
        "DIOU": -(d**0.6),
        "CIOU": -(d + _aspect(apart, TRUTH) ** 2 / (1 + _aspect(apart, TRUTH) + 1e-6)),
    }[kind]
    assert got == pytest.approx(want, rel=1e-5)


def test_yolov3_one_box_by_hand():
    """One cell, one anchor of 16 x 16 pixels on a 16-pixel input, all outputs 0 (sigmoids 0.5, the anchor's own
    size) and a centred box half the input's size: IoU 0.25, below thresh, so the objectness target is 1;
    c = 2 - 0.25; the size targets log(0.5); the class target 1 - 0.1 / 2."""
    p = {"num_class": 1, "num": 1, "anchors_scale": 16, "biases": [16, 16], "mask": [0], "coord_scale": 1.0}
    loss, diff = _loss_and_diff(_yolov3_text(p), np.zeros((1, 6, 1, 1)), _labels([[[0, 0.5, 0.5, 0.5, 0.5]]], rows=2))
    c = 2 - 0.25
    size = c * math.log(2)  # -c (log 0.5 - 0)
    assert loss == pytest.approx(2 * size**2 + 0.5**2 + 0.45**2, rel=1e-6)
    np.testing.assert_allclose(diff.reshape(6), [0, 0, size, size, -0.5, -0.45], rtol=1e-6, atol=1e-7)


def test_yolov3_trains_a_head_towards_its_boxes():
    """SGD through the port's gradient brings a 1x1 convolution head's loss down on a fixed batch."""
    head = {**HEAD, "thresh": 0.6}
    text = f"""
    force_backward: true
    layer {{ name: "in" type: "Input" top: "data" top: "label"
      input_param {{ shape {{ dim: 2 dim: 4 dim: 4 dim: 5 }} shape {{ dim: 2 dim: 1 dim: 6 dim: 5 }} }} }}
    layer {{ name: "head" type: "Convolution" bottom: "data" top: "x"
      convolution_param {{ num_output: 24 kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
    layer {{ {_yolov3_text(head)} }}
    """
    rng = np.random.default_rng(0)
    data, label = rng.normal(0, 1, (2, 4, 4, 5)), _labels(BOXES)
    solver = pb.SolverParameter(base_lr=0.05, lr_policy="fixed", momentum=0.9, max_iter=60, display=0)
    solver.net_param.CopyFrom(text_format.Parse(text, pb.NetParameter()))
    solver.solver_mode, solver.random_seed = pb.SolverParameter.CPU, 1
    s = caffe.SGDSolver(solver)
    losses = []
    for _ in range(60):
        s.net.blobs["data"].data[...] = data
        s.net.blobs["label"].data[...] = label
        s.step(1)
        losses.append(float(s.net.blobs["loss"].data))
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"iou_loss": "GIOU", "max_delta": -1}, "max_delta must be positive"),
        ({"mask": [3, 4, 9]}, "names an anchor beyond the 6"),
        ({"mask": [3, 4]}, r"mask must list num \(3\) anchors"),
        ({"biases": BIASES[:-1]}, "pairs"),
    ],
)
def test_yolov3_refuses_what_it_cannot_do(extra: dict, match: str):
    with pytest.raises(CaffeError, match=match):
        layer_net(_yolov3_text({**HEAD, **extra}), {"x": (1, 24, 2, 2), "label": (1, 1, 2, 5)}, phase=caffe.TRAIN)


def test_yolov3_names_bad_shapes_and_labels():
    with pytest.raises(CaffeError, match=r"N x 24 x H x W"):
        layer_net(_yolov3_text(HEAD), {"x": (1, 20, 2, 2), "label": (1, 1, 2, 5)}, phase=caffe.TRAIN)
    net = layer_net(_yolov3_text(HEAD), {"x": (1, 24, 2, 2), "label": (1, 1, 2, 5)}, phase=caffe.TRAIN)
    net.blobs["label"].data[...] = _labels([[[7, 0.5, 0.5, 0.2, 0.2]]], rows=2)
    with pytest.raises(CaffeError, match=r"layer 'loss'.*image 0: class 7 .* outside \[0, 3\)"):
        net.forward()
    net.blobs["label"].data[...] = _labels([[[1, 0.5, np.inf, 0.2, 0.2]]], rows=2)
    with pytest.raises(CaffeError, match="not finite"):
        net.forward()


# ---------------------------------------------------------------------------- RegionLoss (YOLOv2)
def port_region_loss(x: np.ndarray, label: np.ndarray, p: dict) -> tuple[float, np.ndarray]:
    """The port's RegionLoss Forward_cpu and Backward_cpu, loop for loop: (loss, bottom diff for a top diff of 1)."""
    n_img, channels, side, _ = x.shape
    num, classes, biases = p["num"], p["num_class"], p["biases"]
    thresh, rescore, bias_match = p.get("thresh", 0.2), p.get("rescore", 1), p.get("bias_match", 1)
    coord, object_scale = p.get("coord_scale", 5.0), p.get("object_scale", 1.0)
    noobject_scale, class_scale = p.get("noobject_scale", 0.5), p.get("class_scale", 1.0)
    inp, lab = x.reshape(-1).astype(np.float64), label.reshape(n_img, -1)
    rows, count1 = lab.shape[1] // 5, channels * side * side
    length, stride = 5 + classes, side * side
    swap, diff = inp.copy(), np.zeros_like(inp)

    def region_box(a: int, index: int, i: int, j: int) -> list[float]:
        return [
            (i + _sig(swap[index])) / side,
            (j + _sig(swap[index + stride])) / side,
            math.exp(swap[index + 2 * stride]) * biases[2 * a] / side,
            math.exp(swap[index + 3 * stride]) * biases[2 * a + 1] / side,
        ]

    for b in range(n_img):
        for s in range(stride):
            for n in range(num):
                index = n * length * stride + s + b * count1
                swap[index + 4 * stride] = _sig(inp[index + 4 * stride])
                logits = [swap[index + (5 + k) * stride] for k in range(classes)]
                top = max(logits)
                exps = [math.exp(v - top) for v in logits]
                for k in range(classes):
                    swap[index + (5 + k) * stride] = exps[k] / sum(exps)
                pred = region_box(n, index, s % side, s // side)
                best = 0.0
                for t in range(rows):
                    row = [float(v) for v in lab[b, t * 5 : t * 5 + 5]]
                    if not row[1]:
                        break
                    best = max(best, _iou(pred, row[1:]))
                so = swap[index + 4 * stride]
                diff[index + 4 * stride] = -noobject_scale * (0 - so) * so * (1 - so)
                if best > thresh:
                    diff[index + 4 * stride] = 0
        for t in range(rows):
            row = [float(v) for v in lab[b, t * 5 : t * 5 + 5]]
            if not row[3]:
                break
            truth = row[1:]
            i, j = int(truth[0] * side), int(truth[1] * side)
            pos = j * side + i
            best_iou, best_index, best_n = 0.0, 0, 0
            for n in range(num):
                index2 = n * length * stride + pos + b * count1
                pred = region_box(n, index2, i, j)
                if bias_match:
                    pred[2], pred[3] = biases[2 * n] / side, biases[2 * n + 1] / side
                pred[0] = pred[1] = 0.0
                iou = _iou(pred, [0.0, 0.0, truth[2], truth[3]])
                if iou > best_iou:
                    best_index, best_iou, best_n = index2, iou, n
            scale = coord if rescore else coord * (2 - truth[2] * truth[3])
            pred = region_box(best_n, best_index, i, j)
            iou = _iou(pred, truth)
            targets = (truth[0] * side - i, truth[1] * side - j, math.log(truth[2] * side / biases[2 * best_n]),
                       math.log(truth[3] * side / biases[2 * best_n + 1]))  # fmt: skip
            for c in (0, 1):
                sc = _sig(swap[best_index + c * stride])
                diff[best_index + c * stride] = -scale * (targets[c] - sc) * sc * (1 - sc)
            for c in (2, 3):
                diff[best_index + c * stride] = -scale * (targets[c] - swap[best_index + c * stride])
            so = swap[best_index + 4 * stride]
            diff[best_index + 4 * stride] = -object_scale * ((iou if rescore else 1.0) - so) * so * (1 - so)
            for k in range(classes):
                target = 1.0 if k == int(row[0]) else 0.0
                diff[best_index + (5 + k) * stride] = -class_scale * (target - swap[best_index + (5 + k) * stride])
    return float((diff**2).sum()) / n_img, (diff / n_img).reshape(x.shape)


def _region_text(p: dict) -> str:
    return _yolov3_text(p).replace('"Yolov3"', '"RegionLoss"').replace("yolov3_param", "region_loss_param")


REGION = {"num_class": 3, "num": 3, "biases": [0.8, 1.0, 1.6, 2.4, 3.0, 2.0], "thresh": 0.5}


@pytest.mark.parametrize(
    ("extra", "places"),
    [
        ({}, 5),
        ({"rescore": 0, "object_scale": 5.0}, 5),
        ({"bias_match": 0, "coord_scale": 1.0, "noobject_scale": 1.0}, 4),  # boxes 2 and 3: one cell, one anchor
    ],
    ids=["rescore", "no-rescore", "predicted-shapes"],
)
def test_region_loss_and_gradient_follow_the_ports_loops(extra: dict, places: int):
    p = {**REGION, **extra}
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1.0, (2, 3 * 8, 5, 5))
    label = _labels(BOXES)
    loss, diff = _loss_and_diff(_region_text(p), x, label)
    want_loss, want_diff = port_region_loss(x.astype(np.float32), label, p)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5)
    np.testing.assert_allclose(diff, want_diff, rtol=1e-4, atol=1e-6)
    matched = np.abs(want_diff.reshape(2, 3, 8, 5, 5)[:, :, 5:]).sum(axis=2) > 0
    assert matched.sum() == places  # (image, anchor, cell) places given a box


def test_region_loss_one_box_by_hand():
    """One cell, one anchor of one cell, two classes, all outputs 0 (sigmoids and probabilities 0.5) and a centred
    box half the map: IoU 0.25 (below thresh 0.6); rescore: the objectness target is the IoU, c = coord_scale;
    the size targets log(0.5)."""
    p = {"num_class": 2, "num": 1, "biases": [1, 1], "thresh": 0.6, "coord_scale": 1.0, "object_scale": 5.0}
    loss, diff = _loss_and_diff(_region_text(p), np.zeros((1, 7, 1, 1)), _labels([[[0, 0.5, 0.5, 0.5, 0.5]]], rows=2))
    size, obj = math.log(2), -5.0 * (0.25 - 0.5) * 0.25
    assert loss == pytest.approx(2 * size**2 + obj**2 + 0.5**2 + 0.5**2, rel=1e-6)
    np.testing.assert_allclose(diff.reshape(7), [0, 0, size, size, obj, -0.5, 0.5], rtol=1e-6, atol=1e-7)


def test_region_loss_refusals():
    with pytest.raises(CaffeError, match="coords must be 4"):
        layer_net(_region_text({**REGION, "coords": 5}), {"x": (1, 24, 2, 2), "label": (1, 1, 2, 5)}, caffe.TRAIN)
    with pytest.raises(CaffeError, match=r"num \(5\) anchor pairs"):
        layer_net(_region_text({**REGION, "num": 5}), {"x": (1, 40, 2, 2), "label": (1, 1, 2, 5)}, caffe.TRAIN)
    with pytest.raises(CaffeError, match="must be square"):
        layer_net(_region_text(REGION), {"x": (1, 24, 2, 3), "label": (1, 1, 2, 5)}, phase=caffe.TRAIN)


# ---------------------------------------------------------------------------- data
def _boxes_lmdb(path: Path, images: list[tuple[np.ndarray, list[tuple]]]) -> None:
    with open_db(path, "lmdb", "new") as db:
        txn = db.transaction()
        for i, (image, boxes) in enumerate(images):
            txn.put(item_key(i, f"img{i}.png"), annotated_datum(image, boxes, encoding="png").SerializeToString())
        txn.commit()


def _data_net(source: Path, annotated: str, transform: str, phase: str = "TEST", batch: int = 2) -> str:
    return f"""
    layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: {phase} }}
      transform_param {{ {transform} }}
      data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}
      annotated_data_param {{ {annotated} }} }}
    """


def _net(tmp_path: Path, text: str, phase: int = caffe.TEST) -> caffe.Net:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase)


def test_yolo_labels_are_centre_size_rows_of_300(tmp_path: Path):
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    _boxes_lmdb(
        tmp_path / "db",
        [(image, [(3, 0.1, 0.2, 0.5, 0.6), (1, 0.5, 0.5, 0.9, 1.0, True)]), (image, [(20, 0.0, 0.0, 1.0, 0.5)])],
    )
    resize = "resize_param { height: 32 width: 32 }"
    net = _net(tmp_path, _data_net(tmp_path / "db", "yolo_data_type: 1", resize))
    net.forward()
    label = net.blobs["label"].data
    assert label.shape == (2, 1, 300, 5) and net.blobs["data"].shape == (2, 3, 32, 32)
    np.testing.assert_allclose(label[0, 0, :2], [[2, 0.3, 0.4, 0.4, 0.4], [0, 0.7, 0.75, 0.4, 0.5]], atol=1e-6)
    np.testing.assert_allclose(label[1, 0, :1], [[19, 0.5, 0.25, 1.0, 0.5]], atol=1e-6)
    assert not label[0, 0, 2:].any() and not label[1, 0, 1:].any()
    net = _net(tmp_path, _data_net(tmp_path / "db", "yolo_data_type: 1 train_diffcult: false", resize))
    net.forward()
    assert net.blobs["label"].data[0, 0, 0, 0] == 2 and not net.blobs["label"].data[0, 0, 1:].any()  # difficult out


def test_several_resize_policies_change_the_size_every_ten_batches(tmp_path: Path):
    rng = np.random.default_rng(0)
    _boxes_lmdb(tmp_path / "db", [(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), [(1, 0.2, 0.2, 0.6, 0.7)])])
    sizes = {24: 0.5, 32: 0.25, 40: 0.25}
    policies = " ".join(f"resize_param {{ prob: {p} height: {s} width: {s} }}" for s, p in sizes.items())
    text = _data_net(tmp_path / "db", "yolo_data_type: 1", policies, phase="TRAIN", batch=1)

    def shapes(seed: int) -> list[int]:
        caffe.set_random_seed(seed)
        net = _net(tmp_path, text, caffe.TRAIN)
        out = []
        for _ in range(60):
            net.forward()
            out.append(net.blobs["data"].shape[2])
            assert net.blobs["data"].shape[2:] == (out[-1], out[-1])
        return out

    seen = shapes(5)
    runs = [seen[k : k + 10] for k in range(0, 60, 10)]
    assert all(len(set(run)) == 1 for run in runs) and set(seen) <= set(sizes)
    assert len({run[0] for run in runs}) > 1  # six draws from three sizes: not all the same (for this seed)
    assert shapes(5) == seen  # seeded: the same sizes again
    caffe.set_random_seed(5)
    resumed = _net(tmp_path, text, caffe.TRAIN)
    resumed.layers[0].fast_forward(25)  # as a solver restoring a snapshot of iteration 25 does
    for k in range(25, 60):
        resumed.forward()
        assert resumed.blobs["data"].shape[2] == seen[k]


def test_jittered_crops_are_the_ports():
    rng = np.random.default_rng(1)
    windows = np.array([jitter_window(0.3, False, rng) for _ in range(4000)])
    sides = windows[:, 2:] - windows[:, :2]
    assert (windows >= 0).all() and (windows <= 1 + 1e-12).all() and (sides >= 0.7 - 1e-12).all()
    whole = (sides == 1).all(axis=1)
    assert abs(whole.mean() - 0.2) < 0.03  # one time in five the whole image
    half = (sides[~whole] >= 0.85).all(axis=1).mean()  # jitter / 2 one time in five: sides >= 0.85
    assert 0.25 + 0.75 * 0.25 - 0.05 < half < 0.25 + 0.75 * 0.25 + 0.05
    square = np.array([jitter_window(0.3, True, rng) for _ in range(200)])
    np.testing.assert_allclose(square[:, 2] - square[:, 0], square[:, 3] - square[:, 1])


def test_jitter_crops_train_images_and_moves_their_boxes(tmp_path: Path):
    """A box filling the image: after the port's jittered crop (no batch_sampler) it still fills the crop, and the
    crops differ from item to item; an SSD file without the YOLO fields is not jittered."""
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    cv2.rectangle(image, (16, 16), (47, 47), (0, 0, 255), -1)
    _boxes_lmdb(tmp_path / "db", [(image, [(1, 0.25, 0.25, 0.75, 0.75)])])
    resize = "resize_param { height: 64 width: 64 }"
    caffe.set_random_seed(2)
    text = _data_net(tmp_path / "db", "yolo_data_type: 1 yolo_data_jitter: 0.5", resize, phase="TRAIN", batch=1)
    net = _net(tmp_path, text, caffe.TRAIN)
    rows = []
    for _ in range(12):
        net.forward()
        rows.append(net.blobs["label"].data[0, 0, 0].copy())
        red = net.blobs["data"].data[0, 0] < 100  # the rectangle: no blue, the background 200
        x, y, w, h = rows[-1][1:]
        ys, xs = np.nonzero(red)
        np.testing.assert_allclose([xs.min() / 64, xs.max() / 64], [x - w / 2, x + w / 2], atol=0.05)
        np.testing.assert_allclose([ys.min() / 64, ys.max() / 64], [y - h / 2, y + h / 2], atol=0.05)
    assert len({tuple(np.round(r, 4)) for r in rows}) > 3
    ssd = _data_net(tmp_path / "db", "", resize, phase="TRAIN", batch=1)
    net = _net(tmp_path, ssd, caffe.TRAIN)
    for _ in range(5):
        net.forward()
        np.testing.assert_allclose(net.blobs["label"].data[0, 0, 0, 3:7], [0.25, 0.25, 0.75, 0.75], atol=1e-6)


@pytest.mark.parametrize(
    ("annotated", "transform", "match"),
    [
        ("yolo_data_type: 2", "", "yolo_data_type must be 0"),
        ("yolo_data_jitter: 1.0", "", r"yolo_data_jitter must be in \[0, 1\)"),
        ("", "resize_param { prob: 0.5 height: 8 width: 8 } resize_param { prob: 0.2 height: 9 width: 9 }",
         "summing to 1; got 0.5, 0.2"),
        ("", "resize_param { prob: 0.5 height: 8 width: 8 } resize_param { prob: 0.5 height: 4000000 width: 400000 }",
         r"resize_param\[1\]"),
    ],
)  # fmt: skip
def test_yolo_data_refusals_name_the_option(tmp_path: Path, annotated: str, transform: str, match: str):
    _boxes_lmdb(tmp_path / "db", [(np.zeros((8, 8, 3), dtype=np.uint8), [(1, 0.2, 0.2, 0.6, 0.7)])])
    with pytest.raises(CaffeError, match=match):
        _net(tmp_path, _data_net(tmp_path / "db", annotated, transform))


def test_difficult_boxes_wait_for_five_percent_of_the_run(tmp_path: Path):
    """``difficult_label_warmup``: the YOLO labels leave difficult boxes out until the solver's iteration passes
    stop / 20 (integer division, as the port's)."""
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    _boxes_lmdb(tmp_path / "db", [(image, [(3, 0.1, 0.2, 0.5, 0.6), (1, 0.5, 0.5, 0.9, 1.0, True)])])
    text = _data_net(tmp_path / "db", "yolo_data_type: 1 difficult_label_warmup: true", "", batch=1)
    net = _net(tmp_path, text)
    kept = []
    for progress in [(0, 0), (50, 1000), (51, 1000), (999, 1000)]:
        net.layers[0].progress = progress
        net.forward()
        kept.append(int((net.blobs["label"].data[0, 0, :, 3] > 0).sum()))
    assert kept == [1, 1, 2, 2]  # outside a solver, (0, 0), counts as the start of a run


def test_assisted_excitation_by_hand():
    """Two images, each brightened inside its own box by alpha times its map, in every channel; alpha from the
    solver's progress; the features' gradient unchanged."""
    text = 'name: "ae" type: "AssistedExcitation" bottom: "x" bottom: "label" bottom: "map" top: "y"'
    net = layer_net(text, {"x": (2, 2, 4, 5), "label": (2, 1, 3, 5), "map": (2, 4, 5)}, phase=caffe.TRAIN)
    rng = np.random.default_rng(0)
    x, plane = rng.normal(0, 1, (2, 2, 4, 5)), rng.uniform(1, 2, (2, 4, 5))
    net.blobs["x"].data[...] = x
    net.blobs["map"].data[...] = plane
    net.blobs["label"].data[...] = _labels([[[1, 0.5, 0.5, 0.4, 0.5]], [[0, 0.1, 0.9, 0.1, 0.1]]], rows=3)
    for progress, alpha in [((0, 0), 1.0), ((300, 1000), math.cos(0.2 * math.pi)), ((800, 1000), 0.0)]:
        net.layers[1].progress = progress
        net.forward()
        want = x.copy()
        want[0, :, 1:3, 1:4] += alpha * plane[0, 1:3, 1:4]  # columns int(1.5)..int(4.45), rows int(1)..int(3.95)
        want[1, :, 3:4, 0:1] += alpha * plane[1, 3:4, 0:1]  # a box under a cell wide: one cell
        np.testing.assert_allclose(net.blobs["y"].data, want, rtol=1e-6, atol=1e-6)
    assert excitation_weight(300, 1000) == pytest.approx(math.cos(0.2 * math.pi))
    top = rng.normal(0, 1, x.shape)
    net.blobs["y"].diff[...] = top
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, top)


def test_the_solver_tells_the_layers_where_the_run_is():
    text = """
    layer { name: "d" type: "DummyData" top: "data" top: "target"
      dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 }
        data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "out"
      inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "target" top: "loss" }
    """
    solver = pb.SolverParameter(base_lr=0.01, lr_policy="fixed", max_iter=10, display=0)
    solver.net_param.CopyFrom(text_format.Parse(text, pb.NetParameter()))
    solver.solver_mode = pb.SolverParameter.CPU
    s = caffe.SGDSolver(solver)
    assert {layer.progress for layer in s.net.layers} == {(0, 0)}
    s.step(3)
    assert {layer.progress for layer in s.net.layers} == {(2, 3)}  # the last iteration run, of the run to 3
    s.step(2)
    assert {layer.progress for layer in s.net.layers} == {(4, 5)}


# ---------------------------------------------------------------------------- the port's files
def test_mobilenet_yolov3_lite_trains_and_tests_with_its_own_files(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The port's VOC train net (ten resize policies, 320 to 608; distortion, expansion, samplers; two Yolov3
    heads), test net (Yolov3DetectionOutput, DetectionEvaluate) and RMSProp solver, as a user edits them: database
    paths, batch sizes, iteration counts, and iter_size 9 set to 1."""
    solver = read_solver_param(FORKS / f"{PORT}solver.prototxt")
    assert (solver.type, solver.iter_size, solver.eval_type) == ("RMSProp", 9, "detection")
    solver.iter_size, solver.display = 1, 1
    nets = (FORKS / f"{PORT}train.prototxt", FORKS / f"{PORT}test.prototxt")
    s, lines = solve_two_iterations(solver, nets, tmp_path, caplog)
    losses = [float(line.rsplit("= ", 1)[1].split()[0]) for line in lines if "Train net output" in line]
    assert len(losses) == 4 and all(math.isfinite(v) and v > 0 for v in losses)  # det_loss1 and 2, twice
    evaluation = [line for line in lines if "Test net output #0: detection_eval = " in line]
    assert len(evaluation) == 1 and 0.0 <= float(evaluation[0].rsplit("= ", 1)[1]) <= 1.0
    data, label = s.net.blobs["data"].data, s.net.blobs["label"].data
    assert data.shape[0] == 2 and data.shape[2] == data.shape[3] and data.shape[2] in range(320, 609, 32)
    assert label.shape == (2, 1, 300, 5)
    real = label[label[..., 3] > 0]
    assert len(real) >= 2 and set(real[:, 0]) <= set(range(20)) and (real[:, 1:] <= 1.0 + 1e-6).all()
    conv19 = s.net.blobs["conv19"].data
    assert conv19.shape[1:] == (75, data.shape[2] // 32, data.shape[3] // 32)


def test_mobilenet_yolov2_lite_trains_and_tests_with_its_own_files(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The port's YOLOv2 lite VOC files: ten resize policies, RegionLoss; the test net's YoloDetectionOutput and
    DetectionEvaluate; the RMSProp solver with iter_size 8 set to 1."""
    solver = read_solver_param(FORKS / "MobileNet-YOLO_yolov2_mobilenet_yolo_lite_solver.prototxt")
    assert (solver.type, solver.iter_size) == ("RMSProp", 8)
    solver.iter_size, solver.display = 1, 1
    nets = tuple(FORKS / f"MobileNet-YOLO_yolov2_mobilenet_yolo_lite_{n}.prototxt" for n in ("train", "test"))
    s, lines = solve_two_iterations(solver, nets, tmp_path, caplog)
    losses = [float(line.rsplit("= ", 1)[1].split()[0]) for line in lines if "Train net output" in line]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    evaluation = [line for line in lines if "Test net output #0: detection_eval = " in line]
    assert len(evaluation) == 1 and 0.0 <= float(evaluation[0].rsplit("= ", 1)[1]) <= 1.0
    assert s.net.blobs["label"].data.shape == (2, 1, 300, 5)


def test_mobilenetv3_with_assisted_excitation_trains_from_its_own_file(tmp_path: Path):
    """The port's MobileNetV3 VOC net with AssistedExcitation (SE blocks, Power, Reduction over a Permute; five
    resize policies; two Yolov3 heads) trains two iterations from a small LMDB; the excitation is the layer's rule
    at the solver's progress."""
    _annotated_lmdb(tmp_path / "lmdb", 4, seed=0)
    train = _user_copy(FORKS / "MobileNet-YOLO_mobilenetv3_voc_train_AE.prototxt", tmp_path, tmp_path / "lmdb", 2)
    solver = pb.SolverParameter(train_net=str(train), base_lr=0.0005, lr_policy="fixed", max_iter=2, display=1)
    solver.solver_mode, solver.type, solver.random_seed = pb.SolverParameter.CPU, "RMSProp", 1
    solver.snapshot_after_train = False
    s = caffe.get_solver(solver)
    s.solve()
    net = s.net
    ae = net.layer_dict["AE"]
    assert ae.progress == (1, 2)
    features, label, plane = (net.blobs[b].data for b in ("mul16", "label", "reduction"))
    excited = net.blobs["AE"].data - features
    alpha = excitation_weight(1, 2)
    assert 0 < alpha < 1
    n, _, h, w = features.shape
    for b in range(n):
        want = np.zeros((h, w), dtype=np.float32)
        for row in label[b, 0]:
            if row[1] == 0:
                break
            x0 = min(max(int((row[1] - row[3] / 2) * w), 0), w - 1)
            y0 = min(max(int((row[2] - row[4] / 2) * h), 0), h - 1)
            x1 = min(max(int((row[1] + row[3] / 2) * w + 0.95), x0 + 1), w)
            y1 = min(max(int((row[2] + row[4] / 2) * h + 0.95), y0 + 1), h)
            want[y0:y1, x0:x1] = alpha * plane.reshape(n, h, w)[b, y0:y1, x0:x1]
        np.testing.assert_allclose(excited[b], np.broadcast_to(want, excited[b].shape), rtol=1e-4, atol=1e-5)
    assert np.isfinite(net.blobs["det_loss1"].data) and float(net.blobs["det_loss1"].data) > 0
