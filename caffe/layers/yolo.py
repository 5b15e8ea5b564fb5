"""The YOLO Caffe ports' layers (eric612/MobileNet-YOLO and its forks): the detection heads
``Yolov3DetectionOutput`` and YOLOv2's ``YoloDetectionOutput``, and YOLOv2's ``Reorg``.

``Yolov3DetectionOutput`` follows the port's CPU forward, read from its sources:

* One bottom per YOLO head (``mask_group_num`` of them), each ``N x (num_box * (5 + num_classes)) x H x W``:
  per anchor, channels x, y, w, h, objectness, then one score per class (with ``gaussian_box``: x, its
  uncertainty, y, ..., h, its uncertainty, objectness, classes).
* Bottom ``t`` uses the anchors ``mask[t * g + n]`` (``g = len(mask) / mask_group_num``, ``n < num_box``),
  anchor ``m`` being ``(biases[2m], biases[2m + 1])`` in input pixels; ``anchors_scale[t]`` is the head's
  stride, so the input is ``W * anchors_scale[t]`` wide.
* Cell ``(i, j)`` decodes to the centre ``((i + sigmoid(x)) / W, (j + sigmoid(y)) / H)`` and size
  ``(exp(w) * anchor_w / (W * stride), exp(h) * anchor_h / (H * stride))``, relative to the input. Each class
  whose ``sigmoid(class) * sigmoid(objectness)`` is above ``confidence_threshold`` is a candidate (with
  ``gaussian_box`` the objectness is multiplied by ``1 - mean of the four sigmoid uncertainties``).
* Candidates are sorted by confidence and suppressed greedily, across classes, when their IoU with a kept
  box (on the unclipped boxes) is at least ``nms_threshold``.
* Rows ``[image, class + 1, confidence, xmin, ymin, xmax, ymax]`` (1x1xKx7, unclipped), as SSD's
  ``DetectionOutput``; with no detection at all, one row ``[i, -1, ..., -1]`` per image.

``YoloDetectionOutput`` (YOLOv2, ``yolo_detection_output_param``, the port's field 601) reads one or two bottoms
``N x (num_box * (5 + num_classes)) x H x W`` with the same anchors ``biases`` (pairs in grid cells): cell
``(i, j)`` decodes to ``((i + sigmoid(x)) / W, (j + sigmoid(y)) / H, exp(w) * bias_w / W, exp(h) * bias_h / H)``;
each anchor gives one candidate, its class the largest softmax probability (the first on ties) and its
confidence ``sigmoid(objectness)`` times that probability, kept when at least ``confidence_threshold``. Then
the same greedy class-agnostic NMS (IoU >= ``nms_threshold``) and rows. ``coords`` must be 4; ``side`` is
read from the bottom, as the port does; ``label_map_file`` only names classes in the port's logs and is not
read. The port assumes square maps (it walks W x W cells); here H and W are each used.

``Reorg`` (``reorg_param``: ``stride`` s, ``reverse``) is darknet's passthrough rearrangement, element for element
as the port's CPU loop: the bottom ``C x H x W`` is read as a ``C/s^2 x Hs x Ws`` array; output element
``(c, h, w)`` of ``Cs^2 x H/s x W/s``, taken at the same flat position as ``(c, h, w)`` in ``C x H x W``, is the
element ``(c mod C/s^2, hs + (c div C/s^2) div s, ws + (c div C/s^2) mod s)`` of that array (``reverse``
scatters instead: ``C/s^2 x Hs x Ws``). C must be a multiple of s^2 and, forward, H and W of s (the port
indexes outside its blobs otherwise). The gradient is the true one (the port's CPU backward reads an
internal blob that is never written).

For both detection heads, one difference: the ports pool every image of a batch into one list labelled image
0; here each image is decoded and suppressed on its own (the same rows for a batch of one). Ties in
confidence keep the order the candidates were found in (heads, cells, anchors, classes); the ports' sorts
leave it unspecified.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from caffe.blob import Shape
from caffe.layer import Layer, register


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def center_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(x, y, w, h)`` centre-size box with each of ``boxes`` (K x 4), the port's formula."""
    w = np.minimum(box[0] + box[2] / 2, boxes[:, 0] + boxes[:, 2] / 2)
    w -= np.maximum(box[0] - box[2] / 2, boxes[:, 0] - boxes[:, 2] / 2)
    h = np.minimum(box[1] + box[3] / 2, boxes[:, 1] + boxes[:, 3] / 2)
    h -= np.maximum(box[1] - box[3] / 2, boxes[:, 1] - boxes[:, 3] / 2)
    inter = np.where((w < 0) | (h < 0), 0.0, w * h)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def greedy_nms(boxes: np.ndarray, threshold: float) -> list[int]:
    """Indices kept from ``boxes`` (already best first): each suppresses the later ones at IoU >= threshold."""
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        later = np.arange(i + 1, len(boxes))
        if len(later):
            suppressed[later] |= center_iou(boxes[i], boxes[later]) >= threshold
    return keep


def _grid_boxes(xywh: np.ndarray, anchors: np.ndarray, anchor_units: tuple[float, float]) -> np.ndarray:
    """Centre-size boxes relative to the input from an ``H x W x anchors x 4`` map of raw (x, y, w, h): the
    centre ``(cell + sigmoid) / map size``, the size ``exp * anchor / anchor_units`` (the map's width and
    height in the anchors' unit)."""
    height, width = xywh.shape[:2]
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    return np.stack(
        [
            (cols[..., None] + _sigmoid(xywh[..., 0])) / width,
            (rows[..., None] + _sigmoid(xywh[..., 1])) / height,
            np.exp(xywh[..., 2]) * anchors[:, 0] / anchor_units[0],
            np.exp(xywh[..., 3]) * anchors[:, 1] / anchor_units[1],
        ],
        axis=-1,
    )


Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (K, 4) as (x, y, w, h), classes, confidences


def _image_rows(image: int, found: list[Candidates], nms: float) -> np.ndarray:
    """(D, 7) rows of one image from its heads' candidates, best first, after the greedy NMS."""
    boxes = np.concatenate([f[0] for f in found])
    labels = np.concatenate([f[1] for f in found])
    conf = np.concatenate([f[2] for f in found])
    order = np.argsort(-conf, kind="stable")
    boxes, labels, conf = boxes[order], labels[order], conf[order]
    keep = greedy_nms(boxes, nms)
    b = boxes[keep]
    out = np.empty((len(keep), 7))
    out[:, 0], out[:, 1], out[:, 2] = image, labels[keep] + 1, conf[keep]
    out[:, 3:5] = b[:, :2] - b[:, 2:] / 2
    out[:, 5:7] = b[:, :2] + b[:, 2:] / 2
    return out


def detection_rows(
    bottom: list[torch.Tensor], candidates: Callable[[int, np.ndarray], Candidates], nms: float
) -> list[torch.Tensor]:
    """The (1, 1, D, 7) top of a YOLO head: each image's candidates (``candidates(head index, C x H x W)``)
    suppressed and laid out as rows; one ``[i, -1, ...]`` row per image when nothing is found."""
    heads = [t.detach().to(device="cpu", dtype=torch.float32).numpy().astype(np.float64) for t in bottom]
    num = heads[0].shape[0]
    rows = [_image_rows(i, [candidates(t, h[i]) for t, h in enumerate(heads)], nms) for i in range(num)]
    if any(len(r) for r in rows):
        out = np.concatenate(rows)
    else:
        out = np.full((num, 7), -1.0)
        out[:, 0] = np.arange(num)
    top = torch.from_numpy(out.reshape(1, 1, -1, 7))
    return [top.to(dtype=bottom[0].dtype, device=bottom[0].device)]


class _YoloHead(Layer):
    """A YOLO detection head: bottoms ``N x (num_box * values) x H x W``, a (1, 1, D, 7) top of rows."""

    exact_num_top = 1
    traceable = False  # data-dependent output size
    param_field: ClassVar[str]  # the LayerParameter field holding num_box and nms_threshold
    _len: int  # values per anchor, set by layer_setup

    def head_param(self) -> Any:
        return getattr(self.layer_param, self.param_field)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        p = self.head_param()
        for shape in bottom:
            if len(shape) != 4 or shape[1] != p.num_box * self._len or shape[0] != bottom[0][0]:
                raise self.shape_error(
                    f"bottom {shape}: expected N x {p.num_box * self._len} x H x W (num_box {p.num_box} x "
                    f"{self._len} values), N as the first bottom's"
                )
        return [(1, 1, 1, 7)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return detection_rows(bottom, self.candidates, float(self.head_param().nms_threshold))

    def candidates(self, t: int, head: np.ndarray) -> Candidates:
        """Boxes (x, y, w, h), classes and confidences above the threshold of bottom ``t``'s map ``head`` of one
        image (C x H x W), in the port's order."""
        raise NotImplementedError


@register("Yolov3DetectionOutput")
class Yolov3DetectionOutputLayer(_YoloHead):
    """YOLOv3's detection head: decode every head, threshold, class-agnostic NMS; see the module docstring."""

    min_bottom = 1
    param_field = "yolov3_detection_output_param"

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.yolov3_detection_output_param
        self.require(p.HasField("num_classes"), "yolov3_detection_output_param: must specify num_classes")
        self.require(p.num_classes > 0, "yolov3_detection_output_param: num_classes must be positive")
        self.require(p.mask_group_num > 0, "yolov3_detection_output_param: mask_group_num must be positive")
        self.require(
            len(bottom) == p.mask_group_num,
            f"{len(bottom)} bottoms, but mask_group_num is {p.mask_group_num} (one bottom per YOLO head)",
        )
        self.require(len(p.biases) % 2 == 0, f"biases: {len(p.biases)} values, expected (width, height) pairs")
        self.require(len(p.anchors_scale) >= len(bottom), f"anchors_scale: needs one stride per bottom ({len(bottom)})")
        self.require(all(s > 0 for s in p.anchors_scale), "anchors_scale: strides must be positive")
        self._group = len(p.mask) // p.mask_group_num
        self.require(
            0 < p.num_box <= self._group,
            f"num_box {p.num_box}: each bottom has {self._group} anchors in mask ({len(p.mask)} / {p.mask_group_num})",
        )
        self.require(
            all(m < len(p.biases) // 2 for m in p.mask), f"mask: anchors beyond the {len(p.biases) // 2} in biases"
        )
        self._len = (9 if p.gaussian_box else 5) + int(p.num_classes)

    def candidates(self, t: int, head: np.ndarray) -> Candidates:
        """In the port's order: cells, anchors, classes."""
        p = self.layer_param.yolov3_detection_output_param
        _, height, width = head.shape
        v = head.reshape(p.num_box, self._len, height, width).transpose(2, 3, 0, 1)  # H, W, anchor, values
        xi, yi, wi, hi, first = (0, 2, 4, 6, 9) if p.gaussian_box else (0, 1, 2, 3, 5)
        objectness = _sigmoid(v[..., first - 1])
        if p.gaussian_box:
            objectness = objectness * (4.0 - _sigmoid(v[..., [1, 3, 5, 7]]).sum(-1)) / 4.0
        scores = _sigmoid(v[..., first:]) * objectness[..., None]
        anchors = np.array([p.mask[t * self._group + n] for n in range(p.num_box)])
        biases = np.asarray(p.biases, dtype=np.float64).reshape(-1, 2)[anchors]
        stride = float(p.anchors_scale[t])
        boxes = _grid_boxes(v[..., [xi, yi, wi, hi]], biases, (width * stride, height * stride))
        row, col, anchor, label = np.nonzero(scores > p.confidence_threshold)
        return boxes[row, col, anchor], label, scores[row, col, anchor, label]


@register("YoloDetectionOutput")
class YoloDetectionOutputLayer(_YoloHead):
    """YOLOv2's detection head: decode one or two maps, softmax classes, class-agnostic NMS (module docstring)."""

    min_bottom, max_bottom = 1, 2
    param_field = "yolo_detection_output_param"

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.yolo_detection_output_param
        self.require(p.HasField("num_classes"), "yolo_detection_output_param: must specify num_classes")
        self.require(p.num_classes > 0, "yolo_detection_output_param: num_classes must be positive")
        self.require(p.num_box > 0, "yolo_detection_output_param: num_box must be positive")
        self.require(p.coords == 4, f"yolo_detection_output_param: coords {p.coords}: only 4 (x, y, w, h) is read")
        self.require(
            len(p.biases) >= 2 * p.num_box,
            f"biases: {len(p.biases)} values, need a (width, height) pair for each of the {p.num_box} anchors",
        )
        self._len = 5 + int(p.num_classes)

    def candidates(self, t: int, head: np.ndarray) -> Candidates:
        """One candidate per cell and anchor (both bottoms share the anchors), in the port's order."""
        p = self.layer_param.yolo_detection_output_param
        _, height, width = head.shape
        v = head.reshape(p.num_box, self._len, height, width).transpose(2, 3, 0, 1)  # H, W, anchor, values
        logits = v[..., 5:]
        prob = np.exp(logits - logits.max(-1, keepdims=True))
        prob /= prob.sum(-1, keepdims=True)
        label = prob.argmax(-1)
        conf = _sigmoid(v[..., 4]) * np.take_along_axis(prob, label[..., None], -1)[..., 0]
        biases = np.asarray(p.biases, dtype=np.float64)[: 2 * p.num_box].reshape(-1, 2)
        boxes = _grid_boxes(v[..., :4], biases, (width, height))
        row, col, anchor = np.nonzero(conf >= p.confidence_threshold)
        return boxes[row, col, anchor], label[row, col, anchor], conf[row, col, anchor]


def reorg_index(channels: int, height: int, width: int, stride: int) -> np.ndarray:
    """The port's reorg mapping for one item: ``out[i] = bottom[index[i]]`` (flat, forward direction), where
    position ``i`` is ``(c, h, w)`` of ``channels x height x width`` and ``index[i]`` is its place in the
    bottom read as ``channels / stride^2 x height * stride x width * stride``."""
    t_c, t_h, t_w = channels // (stride * stride), height * stride, width * stride
    c, h, w = np.meshgrid(np.arange(channels), np.arange(height), np.arange(width), indexing="ij")
    offset = c // t_c
    top = (w * stride + offset % stride) + t_w * ((h * stride + offset // stride) + t_h * (c % t_c))
    return top.reshape(-1)


@register("Reorg")
class ReorgLayer(Layer):
    """YOLOv2's passthrough rearrangement (darknet's reorg); see the module docstring."""

    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.reorg_param
        self.require(p.HasField("stride") and p.stride > 0, "reorg_param.stride must be given and positive")
        self.require(self.layer_param.top[0] != self.layer_param.bottom[0], "Reorg does not work in place")
        self.stride = int(p.stride)
        self.reverse = bool(p.reverse)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[0]) != 4:
            raise self.shape_error(f"the bottom must be N x C x H x W, got {tuple(bottom[0])}")
        n, c, h, w = bottom[0]
        s = self.stride
        if c % (s * s) or (not self.reverse and (h % s or w % s)):
            needs = "C a multiple of stride^2" + ("" if self.reverse else " and H, W multiples of the stride")
            raise self.shape_error(f"bottom {tuple(bottom[0])} with stride {s}: needs {needs}")
        self.top_shape = (n, c // (s * s), h * s, w * s) if self.reverse else (n, c * s * s, h // s, w // s)
        # the port's loop runs over the bottom's (C, H, W) in both directions
        index = torch.from_numpy(reorg_index(c, h, w, s))
        self.index = {index.device: index if not self.reverse else torch.argsort(index)}  # per device, made once
        return [self.top_shape]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        index = self.index.get(x.device)
        if index is None:
            index = self.index[x.device] = next(iter(self.index.values())).to(x.device)
        return [x.reshape(x.shape[0], -1)[:, index].reshape(self.top_shape)]
