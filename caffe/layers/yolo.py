"""The YOLOv3 Caffe ports' detection head: ``Yolov3DetectionOutput`` (eric612/MobileNet-YOLO and its forks).

Semantics follow the port's CPU forward, read from its sources:

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

One difference: the port pools every image of a batch into one list labelled image 0; here each image is
decoded and suppressed on its own (the same rows for a batch of one). Ties in confidence keep the order the
candidates were found in (heads, cells, anchors, classes); the port's sort leaves it unspecified.
"""

from __future__ import annotations

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


@register("Yolov3DetectionOutput")
class Yolov3DetectionOutputLayer(Layer):
    """YOLOv3's detection head: decode every head, threshold, class-agnostic NMS; see the module docstring."""

    min_bottom, exact_num_top = 1, 1
    traceable = False  # data-dependent output size

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

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        p = self.layer_param.yolov3_detection_output_param
        for shape in bottom:
            if len(shape) != 4 or shape[1] != p.num_box * self._len or shape[0] != bottom[0][0]:
                raise self.shape_error(
                    f"bottom {shape}: expected N x {p.num_box * self._len} x H x W (num_box {p.num_box} x "
                    f"{self._len} values), N as the first bottom's"
                )
        return [(1, 1, 1, 7)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        heads = [t.detach().to(device="cpu", dtype=torch.float32).numpy().astype(np.float64) for t in bottom]
        num = heads[0].shape[0]
        rows = [self._image_rows(i, [h[i] for h in heads]) for i in range(num)]
        if any(len(r) for r in rows):
            out = np.concatenate(rows)
        else:
            out = np.full((num, 7), -1.0)
            out[:, 0] = np.arange(num)
        top = torch.from_numpy(out.reshape(1, 1, -1, 7))
        return [top.to(dtype=bottom[0].dtype, device=bottom[0].device)]

    def _candidates(self, t: int, head: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (x, y, w, h), classes and confidences above the threshold of head ``t`` of one image, in the
        port's order (cells, anchors, classes)."""
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
        cols, rows = np.meshgrid(np.arange(width), np.arange(height))
        boxes = np.stack(
            [
                (cols[..., None] + _sigmoid(v[..., xi])) / width,
                (rows[..., None] + _sigmoid(v[..., yi])) / height,
                np.exp(v[..., wi]) * biases[:, 0] / (width * stride),
                np.exp(v[..., hi]) * biases[:, 1] / (height * stride),
            ],
            axis=-1,
        )
        row, col, anchor, label = np.nonzero(scores > p.confidence_threshold)
        return boxes[row, col, anchor], label, scores[row, col, anchor, label]

    def _image_rows(self, image: int, heads: list[np.ndarray]) -> np.ndarray:
        """(D, 7) rows of one image, best first."""
        found = [self._candidates(t, head) for t, head in enumerate(heads)]
        boxes = np.concatenate([f[0] for f in found])
        labels = np.concatenate([f[1] for f in found])
        conf = np.concatenate([f[2] for f in found])
        order = np.argsort(-conf, kind="stable")
        boxes, labels, conf = boxes[order], labels[order], conf[order]
        keep = greedy_nms(boxes, float(self.layer_param.yolov3_detection_output_param.nms_threshold))
        b = boxes[keep]
        out = np.empty((len(keep), 7))
        out[:, 0], out[:, 1], out[:, 2] = image, labels[keep] + 1, conf[keep]
        out[:, 3:5] = b[:, :2] - b[:, 2:] / 2
        out[:, 5:7] = b[:, :2] + b[:, 2:] / 2
        return out
