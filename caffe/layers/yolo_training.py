"""MobileNet-YOLO's YOLOv3 training loss, ``Yolov3`` (eric612/MobileNet-YOLO, ``yolov3_param``, its field 603), with
the port's rules, read from its sources.

Bottoms: one YOLO head ``N x (num * (5 + num_class)) x H x W`` (per anchor: x, y, w, h, objectness, classes) and the
labels of ``AnnotatedData`` with ``yolo_data_type: 1``: per image, rows ``[class, x, y, w, h]`` (centre and size
relative to the input), ended by a row whose x (first pass) or w (second pass) is 0. The head's anchors are
``mask[n]`` (pairs of ``biases``, in input pixels); ``anchors_scale`` is its stride, so the input is
``W * anchors_scale`` wide. Every forward, image by image, as the port does (darknet's ``yolo_layer`` rules):

1. ``s`` = sigmoid of every channel but w and h. Each cell and anchor's box is ``((i + s_x) / W, (j + s_y) / H,
   exp(w) * anchor_w / (W * stride), exp(h) * anchor_h / (H * stride))``; its objectness delta is ``s_obj``,
   or 0 when its best IoU with a label box is above ``thresh``.
2. Each label box goes to the cell holding its centre and to the anchor (of all the ``biases``) whose shape
   fits it best; if that anchor is one of this head's, the box's deltas are set there: position and size
   ``-c (t - p)`` with ``c = coord_scale (2 - w h)``, the targets ``t_x = x W - i``, ``t_w = log(w W stride /
   anchor_w)`` against ``s_x`` and the raw ``w``; objectness ``-(1 - s_obj)`` (times ``object_scale`` with
   ``use_logic_gradient``); classes ``-class_scale (y - s_k)`` with ``y`` smoothed by ``label_smooth_eps`` to
   ``1 - eps/2`` and ``eps/2`` (when a previous box already set this cell's class, only its class is set), or
   the focal form with ``use_focal_loss``. Every other anchor of the head whose shape has an IoU above
   ``iou_thresh`` with the box gets the same deltas (the port compares the best anchor's *head index* with the
   anchor number there, and so does this layer).
3. The loss is ``sum(delta^2) / N``. The gradient is ``delta / N`` times the top's diff, the deltas taken as the
   gradient of the raw outputs (darknet's logistic shortcut); with ``use_logic_gradient`` the sigmoid channels'
   deltas are first multiplied by ``s (1 - s)``.

Every 16 forwards the port's statistics are logged (``noobj``, ``obj``, ``iou``, ``cat``, ``recall``, ``recall75``,
``count``). Only ``iou_loss: MSE`` (the default, and what the port's nets use) is implemented; the (G/D/C)IoU
losses are refused by name. Differences, for inputs the port mishandles: a box centre at x or y = 1 goes to the
last cell (the port indexes past its blob); a class outside ``[0, num_class)`` is an error (the port writes out
of bounds); the label blob may have any number of rows per image (the port assumes 300).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from caffe.blob import Shape
from caffe.errors import LayerError
from caffe.layer import register
from caffe.layers.loss import LossLayer
from caffe.layers.yolo import center_iou
from caffe.proto import caffe_pb2 as pb

log = logging.getLogger("caffe")

F32 = np.float32
_LOG_EVERY = 16


@dataclass
class _Scores:
    """The port's statistics: one forward's sums (``count``: boxes matched), or the running sums of the per-box
    means (``count``: forwards with a match; ``matched``: boxes)."""

    anyobj: float = 0.0
    obj: float = 0.0
    iou: float = 0.0
    cat: float = 0.0
    recall: float = 0.0
    recall75: float = 0.0
    count: int = 0
    matched: int = 0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


class _Head:
    """The port's forward for one image's head, on float32 arrays (see the module docstring)."""

    def __init__(self, p: pb.Yolov3Parameter, num: int, classes: int) -> None:
        self.p, self.num, self.classes = p, num, classes
        self.biases = np.asarray(p.biases, dtype=F32).reshape(-1, 2)
        self.mask = [int(m) for m in p.mask[:num]]
        self.eps = F32(p.label_smooth_eps)

    def run(self, raw: np.ndarray, truth: np.ndarray, diff: np.ndarray, stats: _Scores) -> None:
        """Fill ``diff`` (num, 5 + classes, H, W) for one image: ``raw`` the head, ``truth`` its label rows."""
        p, num = self.p, self.num
        _, _, h, w = raw.shape
        stride = F32(p.anchors_scale)
        s = _sigmoid(raw)
        s[:, 2:4] = raw[:, 2:4]
        cols, rows = np.meshgrid(np.arange(w, dtype=F32), np.arange(h, dtype=F32))
        anchors = self.biases[self.mask]  # (num, 2)
        boxes = np.stack(
            [
                (cols + s[:, 0]) / F32(w),
                (rows + s[:, 1]) / F32(h),
                np.exp(s[:, 2]) * anchors[:, 0, None, None] / (F32(w) * stride),
                np.exp(s[:, 3]) * anchors[:, 1, None, None] / (F32(h) * stride),
            ],
            axis=-1,
        ).astype(F32)  # (num, H, W, 4)
        first = truth[: _end(truth[:, 1])]
        best = np.zeros((num, h, w), dtype=F32)
        flat = boxes.reshape(-1, 4)
        for t in first[:, 1:5]:
            iou = np.nan_to_num(_iou_many(flat, t), nan=0.0).reshape(num, h, w)
            best = np.maximum(best, iou)
        stats.anyobj += float(s[:, 4].sum())
        diff[:, 4] = np.where(best > F32(p.thresh), F32(0), s[:, 4])

        for row in truth[: _end(truth[:, 3])]:
            self._truth(row, s, raw, diff, stats, (h, w))

    def _truth(
        self, row: np.ndarray, s: np.ndarray, raw: np.ndarray, diff: np.ndarray, stats: _Scores, size: tuple[int, int]
    ) -> None:
        p = self.p
        h, w = size
        if not np.isfinite(row).all():
            raise LayerError(f"a label box is not finite: {row.tolist()}")
        label = int(row[0])
        if not 0 <= label < self.classes:
            raise LayerError(f"class {label} of a label box is outside [0, {self.classes}) (num_class)")
        x, y, bw, bh = (F32(v) for v in row[1:5])
        i, j = min(max(int(x * F32(w)), 0), w - 1), min(max(int(y * F32(h)), 0), h - 1)
        shape = np.array([0, 0, bw, bh], dtype=F32)
        fits = self._anchor_ious(shape, size)
        best_n, best_iou = -1, F32(0)
        for n, iou in enumerate(fits):
            if iou > best_iou:
                best_n, best_iou = n, iou
        if best_n in self.mask:
            best_n = self.mask.index(best_n)  # the port's reuse of best_n (a head index from here on)
            self._assign(best_n, (i, j), row, s, raw, diff, stats, size)
        if p.iou_thresh >= 1.0:
            return
        for n, iou in enumerate(fits):
            if n in self.mask and n != best_n and iou > F32(p.iou_thresh):
                self._assign(self.mask.index(n), (i, j), row, s, raw, diff, stats, size)

    def _anchor_ious(self, shape: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        h, w = size
        stride = F32(self.p.anchors_scale)
        anchors = np.zeros((len(self.biases), 4), dtype=F32)
        anchors[:, 2] = self.biases[:, 0] / (F32(w) * stride)
        anchors[:, 3] = self.biases[:, 1] / (F32(h) * stride)
        return np.nan_to_num(_iou_many(anchors, shape), nan=0.0)

    def _assign(
        self,
        k: int,
        cell: tuple[int, int],
        row: np.ndarray,
        s: np.ndarray,
        raw: np.ndarray,
        diff: np.ndarray,
        stats: _Scores,
        size: tuple[int, int],
    ) -> None:
        """Set box ``row``'s deltas at head anchor ``k`` of ``cell`` = (i, j)."""
        p = self.p
        (i, j), (h, w) = cell, size
        stride = F32(p.anchors_scale)
        aw, ah = self.biases[self.mask[k]]
        x, y, bw, bh = (F32(v) for v in row[1:5])
        sx, sy, rw, rh = s[k, 0, j, i], s[k, 1, j, i], raw[k, 2, j, i], raw[k, 3, j, i]
        pred = np.array(
            [(F32(i) + sx) / F32(w), (F32(j) + sy) / F32(h), np.exp(rw) * aw / (F32(w) * stride),
             np.exp(rh) * ah / (F32(h) * stride)],
            dtype=F32,
        )  # fmt: skip
        iou = float(np.nan_to_num(_iou_many(pred[None], np.array([x, y, bw, bh], dtype=F32)), nan=0.0)[0])
        scale = F32(p.coord_scale) * (F32(2) - bw * bh)
        with np.errstate(divide="ignore"):
            tw = np.log(bw * F32(w) * stride / aw)
            th = np.log(bh * F32(h) * stride / ah)
        targets = (x * F32(w) - F32(i), y * F32(h) - F32(j), tw, th)
        for c, (target, value) in enumerate(zip(targets, (sx, sy, rw, rh))):
            diff[k, c, j, i] = -scale * (F32(target) - value)
        stats.recall += iou > 0.5
        stats.recall75 += iou > 0.75
        stats.iou += iou
        stats.obj += float(s[k, 4, j, i])
        obj = -(F32(1) - s[k, 4, j, i])
        diff[k, 4, j, i] = obj * F32(p.object_scale) if p.use_logic_gradient else obj
        stats.cat += self._classes(int(row[0]), s[k, 5:, j, i], diff[k, 5:, j, i])
        stats.count += 1

    def _classes(self, label: int, probs: np.ndarray, out: np.ndarray) -> float:
        """The port's class deltas into ``out`` (a view); returns the label's probability."""
        scale, eps = F32(self.p.class_scale), self.eps
        smooth = (lambda y: y * (F32(1) - eps) + F32(0.5) * eps) if eps else (lambda y: y)
        if out[label]:  # a box already matched here: only its class is set
            delta = smooth(F32(1)) - probs[label]
            if np.isfinite(delta):
                out[label] = -scale * delta
            return float(probs[label])
        target = (np.arange(len(probs)) == label).astype(F32)
        if self.p.use_focal_loss:
            pt = probs[label] + F32(1e-15)
            grad = -(F32(1) - pt) * (F32(2) * pt * np.log(pt) + pt - F32(1))
            out[:] = -scale * (target - probs) * (F32(0.5) * grad)
        else:
            delta = smooth(target) - probs
            out[:] = np.where(np.isfinite(delta), -scale * delta, out)
        return float(probs[label])


def _end(column: np.ndarray) -> int:
    """Rows before the first 0 of ``column`` (the port's end of the label list)."""
    zeros = np.flatnonzero(column == 0)
    return int(zeros[0]) if len(zeros) else len(column)


def _iou_many(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return center_iou(box, boxes).astype(F32)


class _Yolov3Function(torch.autograd.Function):
    """The loss with the port's gradient (its deltas, not the derivative of the loss)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx: Any, top_diff: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * top_diff, None, None


@register("Yolov3")
class Yolov3Layer(LossLayer):
    """MobileNet-YOLO's YOLOv3 loss (``yolov3_param``); see the module docstring."""

    traceable = False  # the matching reads the values on the CPU

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.yolov3_param
        loss_name = pb.Yolov3Parameter.IOU_LOSS.Name(p.iou_loss)
        anchors, mask = len(p.biases) // 2, list(p.mask[: p.num])
        checks = [
            (p.iou_loss == pb.Yolov3Parameter.MSE,
             f"iou_loss {loss_name} is not supported (MSE is: the port's default and its nets' choice)"),
            (p.num_class > 0 and p.num > 0, "num_class and num must be positive"),
            (len(p.biases) >= 2 and len(p.biases) % 2 == 0,
             f"biases must hold anchor (width, height) pairs, got {len(p.biases)} values"),
            (all(b > 0 and math.isfinite(b) for b in p.biases), "biases must be positive"),
            (len(p.mask) >= p.num, f"mask must list num ({p.num}) anchors, got {len(p.mask)}"),
            (all(m < anchors for m in mask), f"mask {mask} names an anchor beyond the {anchors} in biases"),
            (p.anchors_scale > 0, "anchors_scale must be positive"),
        ]  # fmt: skip
        for ok, problem in checks:
            self.require(ok, f"yolov3_param: {problem}")
        self.head = _Head(p, int(p.num), int(p.num_class))
        self.scores = _Scores()
        self.forwards = 0

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        p = self.layer_param.yolov3_param
        x, label = bottom
        if len(x) != 4 or x[1] != p.num * (5 + p.num_class):
            raise self.shape_error(
                f"bottom 0 must be N x (num * (5 + num_class)) x H x W = N x {p.num * (5 + p.num_class)} x H x W "
                f"(num {p.num}, num_class {p.num_class}), got {tuple(x)}"
            )
        if not label or label[0] != x[0] or math.prod(label[1:]) % 5:
            raise self.shape_error(
                f"bottom 1 must hold rows [class, x, y, w, h] per image (N x 1 x K x 5, N = {x[0]}), got {tuple(label)}"
            )
        return [()]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x, label = bottom
        n, _, h, w = x.shape
        p = self.layer_param.yolov3_param
        heads = x.detach().to("cpu", torch.float32).numpy().reshape(n, p.num, 5 + p.num_class, h, w)
        truth = label.detach().to("cpu", torch.float32).numpy().reshape(n, -1, 5)
        diff = np.zeros_like(heads)
        stats = _Scores()
        for b in range(n):
            try:
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    self.head.run(heads[b], truth[b], diff[b], stats)
            except LayerError as e:
                raise self.error(f"image {b}: {e}") from None
        loss = float(np.square(diff, dtype=np.float64).sum()) / n
        if p.use_logic_gradient:
            with np.errstate(over="ignore"):
                s = _sigmoid(heads)
            factor = s * (F32(1) - s)
            factor[:, :, 2:4] = 1
            diff *= factor
        self._log(stats, n * p.num * h * w)
        grad = torch.from_numpy(diff.reshape(x.shape) / F32(n)).to(x.device, x.dtype)
        value = torch.tensor(loss, dtype=x.dtype, device=x.device)
        return [_Yolov3Function.apply(x, value, grad)]

    def _log(self, batch: _Scores, cells: int) -> None:
        """The port's statistics: summed over 15 forwards, logged on the 16th (whose own are dropped)."""
        self.forwards += 1
        sc = self.scores
        sc.matched += batch.count
        if self.forwards % _LOG_EVERY:
            sc.anyobj += batch.anyobj / cells
            if batch.count:
                for name in ("obj", "iou", "cat", "recall", "recall75"):
                    setattr(sc, name, getattr(sc, name) + getattr(batch, name) / batch.count)
                sc.count += 1
            return
        if sc.count:
            t = sc.count
            log.info(
                "%s: noobj: %g obj: %g iou: %g cat: %g recall: %g recall75: %g count: %g",
                self.name, sc.anyobj / _LOG_EVERY, sc.obj / t, sc.iou / t, sc.cat / t, sc.recall / t,
                sc.recall75 / t, sc.matched / t,
            )  # fmt: skip
        self.scores = _Scores()
