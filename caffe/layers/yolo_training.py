"""MobileNet-YOLO's training losses (eric612/MobileNet-YOLO), with the port's rules, read from its sources: YOLOv3's
``Yolov3`` (``yolov3_param``, its field 603) and YOLOv2's ``RegionLoss`` (``region_loss_param``, its 600).

``Yolov3``
----------

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

``iou_loss`` (default MSE, the rules above) may name an overlap instead, IOU, GIOU, DIOU or CIOU
(:mod:`caffe.layers.yolo_iou`). That overlap then matches predictions and anchors to boxes in steps 1 and 2.
The box deltas become minus the port's gradient of the overlap: the sizes are multiplied by ``exp`` of their
raw outputs, then everything by ``iou_normalizer``. NaN and infinities become 0, the deltas are clipped to
``max_delta`` and added to what an earlier box left there (``accumulate``; else they replace it). The loss is
the squared objectness and class deltas plus ``iou_normalizer`` times the batch's mean ``1 - overlap``, over N.

Every 16 forwards the port's statistics are logged (``noobj``, ``obj``, ``iou``, ``cat``, ``recall``, ``recall75``,
``count``). Differences, for inputs the port mishandles: a box centre at x or y = 1 goes to the
last cell (the port indexes past its blob); a class outside ``[0, num_class)`` is an error (the port writes out
of bounds); the label blob may have any number of rows per image (the port assumes 300).

``RegionLoss``
--------------
YOLOv2's loss (darknet's ``region_layer`` rules as the port has them), on one map ``N x (num * (5 + num_class)) x S x
S`` (the port walks S x S cells: the map must be square) and the same labels. ``biases`` are ``num`` anchors in
grid cells. Per image:

1. Objectness ``s_obj`` = sigmoid, the classes a softmax. Each cell and anchor's box is ``((i + sigmoid(x)) / S,
   (j + sigmoid(y)) / S, exp(w) anchor_w / S, exp(h) anchor_h / S)``; its objectness delta is
   ``noobject_scale s (1 - s) s_obj``, or 0 when its best IoU with a label box is above ``thresh``.
2. Each label box goes to its centre's cell and the anchor whose shape (``bias_match``; else the predicted size)
   fits it best: position deltas ``-c (t - sigmoid(x)) sigmoid'(x)``, size ``-c (t - w)`` (``c = coord_scale``
   with ``rescore``, else ``coord_scale (2 - w h)``), objectness ``-object_scale (t - s) s (1 - s)`` with ``t``
   the box's IoU (``rescore``) or 1, classes ``-class_scale (y - p_k)``.
3. Loss ``sum(delta^2) / N``; gradient ``delta / N`` times the top's diff. Statistics logged every 10 forwards.

``coords`` must be 4; ``softmax``, ``jitter``, ``absolute``, ``random``, ``softmax_tree`` and ``class_map`` are
accepted and, as in the port, not used. Fewer than ``2 num`` biases is an error (the port fills in zero anchors,
which match nothing). When no anchor overlaps a box (a box of no size) the port writes its deltas at the batch's
first element; here at the box's cell, anchor 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from caffe.blob import Shape
from caffe.errors import LayerError
from caffe.layer import register
from caffe.layers.loss import LossLayer
from caffe.layers.yolo_iou import KIND, iou_gradient, overlap
from caffe.proto import caffe_pb2 as pb

log = logging.getLogger("caffe")

F32 = np.float32


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
    iou_loss: float = 0.0  # sum of 1 - overlap (Yolov3's IoU losses)

    def box(self, iou: float, objectness: float, category: float) -> None:
        """One matched box's figures."""
        self.recall += iou > 0.5
        self.recall75 += iou > 0.75
        self.iou += iou
        self.obj += objectness
        self.cat += category
        self.count += 1
        self.iou_loss += 1.0 - iou


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


def _end(column: np.ndarray) -> int:
    """Rows before the first 0 of ``column`` (the port's end of the label list)."""
    zeros = np.flatnonzero(column == 0)
    return int(zeros[0]) if len(zeros) else len(column)


def _iou_many(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of ``boxes`` (K x 4, centre and size) with ``box``; 0 where undefined."""
    return np.nan_to_num(overlap(KIND.IOU, boxes, box), nan=0.0)


def _grid_boxes(xy: np.ndarray, wh: np.ndarray, anchors: np.ndarray, units: tuple[F32, F32]) -> np.ndarray:
    """(num, H, W, 4) boxes: cell offsets ``xy`` (num, 2, H, W, already squashed), raw sizes ``wh``, ``anchors``
    (num, 2) divided by ``units`` (width, height)."""
    _, _, h, w = xy.shape
    cols, rows = np.meshgrid(np.arange(w, dtype=F32), np.arange(h, dtype=F32))
    return np.stack(
        [
            (cols + xy[:, 0]) / F32(w),
            (rows + xy[:, 1]) / F32(h),
            np.exp(wh[:, 0]) * anchors[:, 0, None, None] / units[0],
            np.exp(wh[:, 1]) * anchors[:, 1, None, None] / units[1],
        ],
        axis=-1,
    ).astype(F32)


class _Head:
    """One image's forward under a port's rules, on float32 arrays: ``run`` fills the deltas."""

    def __init__(self, p: Any, num: int, classes: int) -> None:
        self.p, self.num, self.classes = p, num, classes
        self.biases = np.asarray(p.biases, dtype=F32).reshape(-1, 2)

    def run(self, raw: np.ndarray, truth: np.ndarray, diff: np.ndarray, stats: _Scores) -> None:
        raise NotImplementedError

    def grad_factor(self, heads: np.ndarray) -> np.ndarray | None:
        """What the deltas are multiplied by to become the gradient (None: nothing)."""
        return None

    def match(self, boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
        """How well each of ``boxes`` (K x 4) matches ``box``: the IoU here; 0 where undefined."""
        return _iou_many(boxes, box)

    def loss(self, diff: np.ndarray, stats: _Scores) -> float:
        """The batch's loss before the division by N: the sum of the squared deltas."""
        return float(np.square(diff, dtype=np.float64).sum())

    def objectness(self, boxes: np.ndarray, truth: np.ndarray, s_obj: np.ndarray, stats: _Scores) -> np.ndarray:
        """Where each box's best IoU with a label box (rows until an x of 0) is above ``thresh``: 0, else
        ``s_obj``."""
        best = np.zeros(boxes.shape[:-1], dtype=F32)
        flat = boxes.reshape(-1, 4)
        for t in truth[: _end(truth[:, 1]), 1:5]:
            best = np.maximum(best, self.match(flat, t).reshape(best.shape))
        stats.anyobj += float(s_obj.sum())
        return np.where(best > F32(self.p.thresh), F32(0), s_obj)

    def boxes(self, truth: np.ndarray) -> list[np.ndarray]:
        """The label rows of the second pass (until a w of 0), each checked."""
        rows = truth[: _end(truth[:, 3])]
        for row in rows:
            if not np.isfinite(row).all():
                raise LayerError(f"a label box is not finite: {row.tolist()}")
            if not 0 <= int(row[0]) < self.classes:
                raise LayerError(f"class {int(row[0])} of a label box is outside [0, {self.classes}) (num_class)")
        return list(rows)

    @staticmethod
    def cell(x: F32, y: F32, h: int, w: int) -> tuple[int, int]:
        """The (i, j) cell of a centre (truncated, as the port; kept inside the map)."""
        return min(max(int(x * F32(w)), 0), w - 1), min(max(int(y * F32(h)), 0), h - 1)

    @staticmethod
    def best_shape(fits: np.ndarray) -> int:
        """The first anchor of the largest IoU above 0 (-1: none)."""
        best_n, best_iou = -1, F32(0)
        for n, iou in enumerate(fits):
            if iou > best_iou:
                best_n, best_iou = n, iou
        return best_n


class _Yolov3Head(_Head):
    """``Yolov3``'s rules (see the module docstring)."""

    def __init__(self, p: pb.Yolov3Parameter, num: int, classes: int) -> None:
        super().__init__(p, num, classes)
        self.mask = [int(m) for m in p.mask[:num]]
        self.eps = F32(p.label_smooth_eps)
        self.kind = int(p.iou_loss)

    def match(self, boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The port matches with its ``iou_loss`` overlap (GIoU, DIoU, CIoU), the IoU for MSE."""
        return np.nan_to_num(overlap(self.kind, boxes, box), nan=0.0)

    def loss(self, diff: np.ndarray, stats: _Scores) -> float:
        """MSE: the squared deltas; the IoU losses: the squared objectness and class deltas plus
        ``iou_normalizer`` times the mean of ``1 - overlap`` over the batch's matched boxes."""
        if self.kind == KIND.MSE:
            return super().loss(diff, stats)
        total = float(np.square(diff[:, :, 4:], dtype=np.float64).sum())
        return total + (self.p.iou_normalizer * stats.iou_loss / stats.count if stats.count else 0.0)

    def run(self, raw: np.ndarray, truth: np.ndarray, diff: np.ndarray, stats: _Scores) -> None:
        """Fill ``diff`` (num, 5 + classes, H, W) for one image: ``raw`` the head, ``truth`` its label rows."""
        _, _, h, w = raw.shape
        stride = F32(self.p.anchors_scale)
        s = _sigmoid(raw)
        s[:, 2:4] = raw[:, 2:4]
        boxes = _grid_boxes(s[:, :2], raw[:, 2:4], self.biases[self.mask], (F32(w) * stride, F32(h) * stride))
        diff[:, 4] = self.objectness(boxes, truth, s[:, 4], stats)
        for row in self.boxes(truth):
            self._truth(row, s, raw, diff, stats)

    def grad_factor(self, heads: np.ndarray) -> np.ndarray | None:
        if not self.p.use_logic_gradient:
            return None
        s = _sigmoid(heads)
        factor = s * (F32(1) - s)
        factor[:, :, 2:4] = 1
        return factor

    def _truth(self, row: np.ndarray, s: np.ndarray, raw: np.ndarray, diff: np.ndarray, stats: _Scores) -> None:
        p = self.p
        h, w = raw.shape[2:]
        cell = self.cell(F32(row[1]), F32(row[2]), h, w)
        stride = F32(p.anchors_scale)
        anchors = np.zeros((len(self.biases), 4), dtype=F32)
        anchors[:, 2] = self.biases[:, 0] / (F32(w) * stride)
        anchors[:, 3] = self.biases[:, 1] / (F32(h) * stride)
        fits = self.match(anchors, np.array([0, 0, row[3], row[4]], dtype=F32))
        best_n = self.best_shape(fits)
        if best_n in self.mask:
            best_n = self.mask.index(best_n)  # the port's reuse of best_n (a head index from here on)
            self._assign(best_n, cell, row, s, raw, diff, stats)
        if p.iou_thresh >= 1.0:
            return
        for n, iou in enumerate(fits):
            if n in self.mask and n != best_n and iou > F32(p.iou_thresh):
                self._assign(self.mask.index(n), cell, row, s, raw, diff, stats)

    def _assign(
        self, k: int, cell: tuple[int, int], row: np.ndarray, s: np.ndarray, raw: np.ndarray, diff: np.ndarray,
        stats: _Scores,
    ) -> None:  # fmt: skip
        """Set box ``row``'s deltas at head anchor ``k`` of ``cell`` = (i, j)."""
        p = self.p
        (i, j), (h, w) = cell, raw.shape[2:]
        stride = F32(p.anchors_scale)
        aw, ah = self.biases[self.mask[k]]
        x, y, bw, bh = (F32(v) for v in row[1:5])
        sx, sy, rw, rh = s[k, 0, j, i], s[k, 1, j, i], raw[k, 2, j, i], raw[k, 3, j, i]
        pred = np.array(
            [(F32(i) + sx) / F32(w), (F32(j) + sy) / F32(h), np.exp(rw) * aw / (F32(w) * stride),
             np.exp(rh) * ah / (F32(h) * stride)],
            dtype=F32,
        )  # fmt: skip
        truth = np.array([x, y, bw, bh], dtype=F32)
        if self.kind == KIND.MSE:
            iou = float(_iou_many(pred[None], truth)[0])
            scale = F32(p.coord_scale) * (F32(2) - bw * bh)
            targets = (x * F32(w) - F32(i), y * F32(h) - F32(j), np.log(bw * F32(w) * stride / aw),
                       np.log(bh * F32(h) * stride / ah))  # fmt: skip
            for c, (target, value) in enumerate(zip(targets, (sx, sy, rw, rh))):
                diff[k, c, j, i] = -scale * (F32(target) - value)
        else:
            iou = self._overlap_deltas(pred, truth, diff[k, :4, j, i], raw[k, 2:4, j, i])
        obj = -(F32(1) - s[k, 4, j, i])
        diff[k, 4, j, i] = obj * F32(p.object_scale) if p.use_logic_gradient else obj
        category = self._classes(int(row[0]), s[k, 5:, j, i], diff[k, 5:, j, i])
        stats.box(iou, float(s[k, 4, j, i]), category)

    def _overlap_deltas(self, pred: np.ndarray, truth: np.ndarray, out: np.ndarray, raw_size: np.ndarray) -> float:
        """The IoU losses' box deltas into ``out`` (x, y, w, h; a view): minus the port's gradient of the overlap
        (sizes times ``exp`` of the raw output), times ``iou_normalizer``, NaN and infinities made 0, clipped to
        ``max_delta``, added to what is there (``accumulate``) or replacing it. Returns the overlap the loss and the
        statistics use (GIoU, CIoU; DIoU for IOU and DIOU, as the port)."""
        p = self.p
        value = overlap(KIND.GIOU if self.kind == KIND.GIOU else KIND.CIOU if self.kind == KIND.CIOU else KIND.DIOU,
                        pred[None], truth)[0]  # fmt: skip
        sized = pred.copy()
        sized[2:][sized[2:] == 0] = 1  # the port's guard for a box of no size
        grad = iou_gradient(self.kind, sized, truth)
        grad[2:] *= np.exp(raw_size.astype(np.float64))
        grad = np.nan_to_num(grad * float(p.iou_normalizer), nan=0.0, posinf=0.0, neginf=0.0)
        grad = np.clip(grad, -float(p.max_delta), float(p.max_delta))
        if not p.accumulate:
            out[:] = 0
        out[:] = (out - grad).astype(F32)
        return float(value)

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


class _RegionHead(_Head):
    """``RegionLoss``'s rules (see the module docstring)."""

    def run(self, raw: np.ndarray, truth: np.ndarray, diff: np.ndarray, stats: _Scores) -> None:
        p = self.p
        side = raw.shape[3]
        sig = _sigmoid(raw)
        logits = raw[:, 5:] - raw[:, 5:].max(axis=1, keepdims=True)
        probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(F32)
        s_obj = sig[:, 4]
        boxes = _grid_boxes(sig[:, :2], raw[:, 2:4], self.biases[: self.num], (F32(side), F32(side)))
        noobj = F32(p.noobject_scale) * s_obj * (F32(1) - s_obj)
        diff[:, 4] = self.objectness(boxes, truth, s_obj, stats) * noobj
        for row in self.boxes(truth):
            x, y, bw, bh = (F32(v) for v in row[1:5])
            i, j = self.cell(x, y, side, side)
            shapes = boxes[:, j, i].copy()
            if p.bias_match:
                shapes[:, 2:] = self.biases[: self.num] / F32(side)
            shapes[:, :2] = 0
            best_n = max(self.best_shape(_iou_many(shapes, np.array([0, 0, bw, bh], dtype=F32))), 0)
            iou = float(_iou_many(boxes[best_n, j, i][None], np.array([x, y, bw, bh], dtype=F32))[0])
            scale = F32(p.coord_scale) if p.rescore else F32(p.coord_scale) * (F32(2) - bw * bh)
            aw, ah = self.biases[best_n]
            for c, target in enumerate((x * F32(side) - F32(i), y * F32(side) - F32(j))):
                sx = sig[best_n, c, j, i]
                diff[best_n, c, j, i] = -scale * (F32(target) - sx) * sx * (F32(1) - sx)
            for c, target in ((2, np.log(bw * F32(side) / aw)), (3, np.log(bh * F32(side) / ah))):
                diff[best_n, c, j, i] = -scale * (F32(target) - raw[best_n, c, j, i])
            s = s_obj[best_n, j, i]
            goal = F32(iou) if p.rescore else F32(1)
            diff[best_n, 4, j, i] = -F32(p.object_scale) * (goal - s) * s * (F32(1) - s)
            label = int(row[0])
            target = (np.arange(self.classes) == label).astype(F32)
            diff[best_n, 5:, j, i] = -F32(p.class_scale) * (target - probs[best_n, :, j, i])
            stats.box(iou, float(s), float(probs[best_n, label, j, i]))


class _YoloLossFunction(torch.autograd.Function):
    """The loss with the port's gradient (its deltas, not the derivative of the loss)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx: Any, top_diff: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * top_diff, None, None


class _YoloLossLayer(LossLayer):
    """Shared by the ports' losses: checks, the per-image forward on the CPU, the gradient, the statistics."""

    traceable = False  # the matching reads the values on the CPU
    log_every: ClassVar[int] = 16
    field: ClassVar[str] = ""

    def checks(self, p: Any) -> list[tuple[bool, str]]:
        """The layer's own (condition, problem) pairs beyond the shared ones."""
        return []

    def make_head(self, p: Any) -> _Head:
        raise NotImplementedError

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = getattr(self.layer_param, self.field)
        checks = [
            (p.num_class > 0 and p.num > 0, "num_class and num must be positive"),
            (len(p.biases) >= 2 and len(p.biases) % 2 == 0,
             f"biases must hold anchor (width, height) pairs, got {len(p.biases)} values"),
            (all(b > 0 and math.isfinite(b) for b in p.biases), "biases must be positive"),
            *self.checks(p),
        ]  # fmt: skip
        for ok, problem in checks:
            self.require(ok, f"{self.field}: {problem}")
        self.num, self.classes = int(p.num), int(p.num_class)
        self.head = self.make_head(p)
        self.scores = _Scores()
        self.forwards = 0

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        x, label = bottom
        channels = self.num * (5 + self.classes)
        if len(x) != 4 or x[1] != channels:
            raise self.shape_error(
                f"bottom 0 must be N x (num * (5 + num_class)) x H x W = N x {channels} x H x W "
                f"(num {self.num}, num_class {self.classes}), got {tuple(x)}"
            )
        if not label or label[0] != x[0] or math.prod(label[1:]) % 5:
            raise self.shape_error(
                f"bottom 1 must hold rows [class, x, y, w, h] per image (N x 1 x K x 5, N = {x[0]}), got {tuple(label)}"
            )
        return [()]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x, label = bottom
        n, _, h, w = x.shape
        heads = x.detach().to("cpu", torch.float32).numpy().reshape(n, self.num, 5 + self.classes, h, w)
        truth = label.detach().to("cpu", torch.float32).numpy().reshape(n, -1, 5)
        diff = np.zeros_like(heads)
        stats = _Scores()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for b in range(n):
                try:
                    self.head.run(heads[b], truth[b], diff[b], stats)
                except LayerError as e:
                    raise self.error(f"image {b}: {e}") from None
            loss = self.head.loss(diff, stats) / n
            factor = self.head.grad_factor(heads)
        if factor is not None:
            diff *= factor
        self._log(stats, n * self.num * h * w)
        grad = torch.from_numpy(diff.reshape(x.shape) / F32(n)).to(x.device, x.dtype)
        value = torch.tensor(loss, dtype=x.dtype, device=x.device)
        return [_YoloLossFunction.apply(x, value, grad)]

    def _log(self, batch: _Scores, cells: int) -> None:
        """The port's statistics: summed over ``log_every - 1`` forwards, logged on the next (whose own figures are
        dropped, as the port's)."""
        self.forwards += 1
        sc = self.scores
        sc.matched += batch.count
        if self.forwards % self.log_every:
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
                self.name, sc.anyobj / self.log_every, sc.obj / t, sc.iou / t, sc.cat / t, sc.recall / t,
                sc.recall75 / t, sc.matched / t,
            )  # fmt: skip
        self.scores = _Scores()


@register("Yolov3")
class Yolov3Layer(_YoloLossLayer):
    """MobileNet-YOLO's YOLOv3 loss (``yolov3_param``); see the module docstring."""

    field = "yolov3_param"

    def checks(self, p: pb.Yolov3Parameter) -> list[tuple[bool, str]]:
        anchors, mask = len(p.biases) // 2, list(p.mask[: p.num])
        return [
            (p.iou_normalizer >= 0 and math.isfinite(p.iou_normalizer), "iou_normalizer must be finite, >= 0"),
            (p.max_delta > 0, f"max_delta must be positive, got {p.max_delta}"),
            (len(p.mask) >= p.num, f"mask must list num ({p.num}) anchors, got {len(p.mask)}"),
            (all(m < anchors for m in mask), f"mask {mask} names an anchor beyond the {anchors} in biases"),
            (p.anchors_scale > 0, "anchors_scale must be positive"),
        ]  # fmt: skip

    def make_head(self, p: pb.Yolov3Parameter) -> _Head:
        return _Yolov3Head(p, int(p.num), int(p.num_class))


@register("RegionLoss")
class RegionLossLayer(_YoloLossLayer):
    """MobileNet-YOLO's YOLOv2 loss (``region_loss_param``); see the module docstring."""

    field = "region_loss_param"
    log_every = 10

    def checks(self, p: pb.RegionLossParameter) -> list[tuple[bool, str]]:
        return [
            (p.coords == 4, f"coords must be 4 (x, y, w, h), got {p.coords}"),
            (len(p.biases) >= 2 * p.num, f"biases must hold num ({p.num}) anchor pairs, got {len(p.biases)} values"),
        ]

    def make_head(self, p: pb.RegionLossParameter) -> _Head:
        return _RegionHead(p, int(p.num), int(p.num_class))

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        tops = super().reshape(bottom)
        if bottom[0][2] != bottom[0][3]:
            raise self.shape_error(f"the map must be square (the port walks S x S cells), got {tuple(bottom[0])}")
        return tops
