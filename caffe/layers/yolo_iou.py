"""The box overlaps of MobileNet-YOLO's ``Yolov3`` loss (``iou_loss``) and the port's gradient of them, as its CPU
code computes them (after darknet's AlexeyAB fork, the GIoU and DIoU papers). Boxes are centre and size
``(x, y, w, h)``.

* IOU: the plain overlap (intersection over union; 0 where the boxes do not meet).
* GIOU: ``IoU - (C - U) / C`` with ``C`` the area of the smallest box around both (``IoU`` when ``C`` is 0).
* DIOU: ``IoU - (d / c)^0.6`` with ``d`` the squared distance of the centres and ``c`` the squared diagonal of
  the box around both. The port's exponent is 0.6; the paper has 1.
* CIOU: ``IoU - (d / c + alpha v)`` with ``v = 4 / pi^2 (atan(W/H) - atan(w/h))^2`` (truth ``W, H``) and
  ``alpha = v / (1 - IoU + v + 1e-6)``.

The gradient (:func:`iou_gradient`) is the port's, in ``(x, y, w, h)``:

* IOU and GIOU: the derivative through the sides (top, bottom, left, right) with ``x = l + r``, ``y = t + b``,
  ``w = r - l``, ``h = b - t``. So the sizes get twice the derivative; the port notes that it leaves out the
  factor 1/2. The intersection there is not clamped at 0.
* GIOU: where the boxes do not overlap, only the enclosing-box term.
* DIOU and CIOU: the IoU part plus the derivative of ``-d / c`` with the exponent left out. In x and y the
  enclosing diagonal's change enters with the opposite sign, which looks like a sign slip in the port. Where the
  boxes do not overlap, that term alone. CIOU adds ``alpha 8 / pi^2 (atan(W/H) - atan(w/h))`` times h (to w) and
  times -w (to h): ``-alpha dv`` without its factor ``1 / (w^2 + h^2)``.

With IOU the loss and the statistics use the DIoU value, as the port's (its box delta returns the DIoU for
both); the gradient stays the IoU's.
"""

from __future__ import annotations

import math

import numpy as np

from caffe.proto import caffe_pb2 as pb

F32 = np.float32
KIND = pb.Yolov3Parameter
_ARC = F32(4 / (math.pi * math.pi))


def overlap(kind: int, boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The ``kind`` overlap (IOU, GIOU, DIOU, CIOU; MSE: IOU) of each of ``boxes`` (K x 4) with ``truth`` (4,); NaN
    where it is undefined (a box of no size)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _overlap(kind, boxes.astype(F32), truth)


def _overlap(kind: int, boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    x, y, w, h = (boxes[:, k] for k in range(4))
    tx, ty, tw, th = (F32(v) for v in truth)
    iw = np.minimum(x + w / 2, tx + tw / 2) - np.maximum(x - w / 2, tx - tw / 2)
    ih = np.minimum(y + h / 2, ty + th / 2) - np.maximum(y - h / 2, ty - th / 2)
    inter = np.where((iw < 0) | (ih < 0), F32(0), iw * ih)
    union = w * h + tw * th - inter
    iou = inter / union
    if kind in (KIND.IOU, KIND.MSE):
        return iou.astype(F32)
    cw = np.maximum(x + w / 2, tx + tw / 2) - np.minimum(x - w / 2, tx - tw / 2)
    ch = np.maximum(y + h / 2, ty + th / 2) - np.minimum(y - h / 2, ty - th / 2)
    if kind == KIND.GIOU:
        area = cw * ch
        return np.where(area == 0, iou, iou - (area - union) / area).astype(F32)
    diagonal = cw * cw + ch * ch
    distance = (x - tx) ** 2 + (y - ty) ** 2
    if kind == KIND.DIOU:
        value = iou - np.power(distance / diagonal, F32(0.6))
    else:
        v = _ARC * (np.arctan(tw / th) - np.arctan(w / h)) ** 2
        alpha = v / (F32(1) - iou + v + F32(1e-6))
        value = iou - (distance / diagonal + alpha * v)
    return np.where(diagonal == 0, iou, value).astype(F32)


def iou_gradient(kind: int, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The port's gradient of the ``kind`` overlap of ``pred`` with ``truth`` in ``pred``'s (x, y, w, h)."""
    x, y, w, h = (float(v) for v in pred)
    tx, ty, tw, th = (float(v) for v in truth)
    top, bot, left, right = y - h / 2, y + h / 2, x - w / 2, x + w / 2
    p_t, p_b, p_l, p_r = min(top, bot), max(top, bot), min(left, right), max(left, right)
    t_t, t_b, t_l, t_r = ty - th / 2, ty + th / 2, tx - tw / 2, tx + tw / 2
    area = (p_b - p_t) * (p_r - p_l)
    ih, iw = min(p_b, t_b) - max(p_t, t_t), min(p_r, t_r) - max(p_l, t_l)
    inter = iw * ih
    union = area + (t_b - t_t) * (t_r - t_l) - inter
    apart = iw <= 0 or ih <= 0
    # sides in the order top, bottom, left, right
    d_area = (-(p_r - p_l), p_r - p_l, -(p_b - p_t), p_b - p_t)
    d_inter = (-iw if p_t > t_t else 0.0, iw if p_b < t_b else 0.0, -ih if p_l > t_l else 0.0,
               ih if p_r < t_r else 0.0)  # fmt: skip
    d_union = [a - i for a, i in zip(d_area, d_inter)]
    side = [(union * di - inter * du) / (union * union) if union > 0 else 0.0 for di, du in zip(d_inter, d_union)]
    if not top < bot:  # a flipped box: both get the bottom's (the port's assignments in order)
        side[0] = side[1]
    if not left < right:
        side[2] = side[3]
    if kind == KIND.GIOU:
        cw, ch = max(p_r, t_r) - min(p_l, t_l), max(p_b, t_b) - min(p_t, t_t)
        c = cw * ch
        d_c = (-cw if p_t < t_t else 0.0, cw if p_b > t_b else 0.0, -ch if p_l < t_l else 0.0,
               ch if p_r > t_r else 0.0)  # fmt: skip
        term = [_ratio(c * du - union * dc, c * c) for du, dc in zip(d_union, d_c)]
        if c > 0:
            side = [s + t for s, t in zip(side, term)]
        if apart:
            side = term
    grad = [side[2] + side[3], side[0] + side[1], side[3] - side[2], side[1] - side[0]]
    if kind in (KIND.DIOU, KIND.CIOU):
        term, c2 = _distance_term(pred, truth, (p_t, p_b, p_l, p_r), (t_t, t_b, t_l, t_r))
        if kind == KIND.CIOU:
            arcs = math.atan(_ratio(tw, th)) - math.atan(_ratio(w, h))
            v = 4 / (math.pi * math.pi) * arcs * arcs
            alpha = _ratio(v, 1 - _ratio(inter, union) + v + 0.000001)
            term[2] += alpha * 8 / (math.pi * math.pi) * arcs * h
            term[3] += alpha * -8 / (math.pi * math.pi) * arcs * w
        if c2 > 0:
            grad = [g + t for g, t in zip(grad, term)]
        if apart:
            grad = term
    return np.array(grad, dtype=np.float64)


def _ratio(a: float, b: float) -> float:
    """``a / b`` as C's floats divide (a zero divisor gives an infinity or NaN, cleared by the caller)."""
    if b:
        return a / b
    return math.copysign(math.inf, a) if a else math.nan


def _distance_term(pred: np.ndarray, truth: np.ndarray, p: tuple, t: tuple) -> tuple[list[float], float]:
    """The port's derivative of ``d / c`` (centre distance over the enclosing diagonal, both squared) in (x, y, w,
    h), and ``c``; which side of the enclosing box moves is read from the ordered sides ``p`` and ``t`` (top,
    bottom, left, right)."""
    x, y, w, h = (float(v) for v in pred)
    tx, ty, tw, th = (float(v) for v in truth)
    cw = max(x + w / 2, tx + tw / 2) - min(x - w / 2, tx - tw / 2)
    ch = max(y + h / 2, ty + th / 2) - min(y - h / 2, ty - th / 2)
    c = cw * cw + ch * ch
    s = (x - tx) ** 2 + (y - ty) ** 2
    top, bot, left, right = (p[k] < t[k] if k in (0, 2) else p[k] > t[k] for k in range(4))
    d_cw_dx, d_cw_dw = float(right) - float(left), 0.5 * float(right) + 0.5 * float(left)
    d_ch_dy, d_ch_dh = float(bot) - float(top), 0.5 * float(bot) + 0.5 * float(top)
    term = [
        _ratio(2 * (tx - x) * c - 2 * cw * d_cw_dx * s, c * c),
        _ratio(2 * (ty - y) * c - 2 * ch * d_ch_dy * s, c * c),
        _ratio(2 * cw * d_cw_dw * s, c * c),
        _ratio(2 * ch * d_ch_dh * s, c * c),
    ]
    return term, c
