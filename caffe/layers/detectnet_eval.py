"""DetectNet's boxes and scores: NVIDIA/caffe's Python layers, built in.

DIGITS' DetectNet nets name four Python layers of the Caffe it ships, ``caffe.layers.detectnet.clustering``
(``ClusterDetections``, ``ClusterGroundtruth``) and ``caffe.layers.detectnet.mean_ap`` (``ScoreDetections``,
``mAP``). Here ``caffe`` is neocaffe, so those modules can only be neocaffe's: such a layer is built as the
native type below (:data:`caffe.layers.python.BUILTIN_MODULES`), with the fork's comma-separated
``param_str``, and no server needs consent to run it. Every top is (N, 50, 5) per class, as in the fork:

* ``ClusterDetections`` (param_str: image width, height, stride, coverage threshold, group threshold,
  group eps, minimum height[, classes]) -- bottoms: coverage (N, classes, gy, gx) and the boxes (N, 4, gy,
  gx) relative to each cell's corner. Cells at or above the threshold propose their box; OpenCV's
  ``groupRectangles`` merges them (boxes cut to whole pixels, as the fork's OpenCV did); groups at least
  the minimum height tall become rows ``[x1, y1, x2, y2, log(group size)]``.
* ``ClusterGroundtruth`` (param_str: width, height, stride[, classes]) -- the labels' boxes, once each:
  rows ``[x1, y1, x2, y2, 0]``, in sorted order (the fork's came in a set's order, and kept a box twice when its
  cells gave it back with different float32 rounding: :func:`distinct_boxes`).
* ``ScoreDetections`` -- bottoms: ground truth rows and detection rows; each truth box takes the first free
  detection with IoU >= 0.7. Rows ``[box, 1]`` for matched detections, ``[box, 2]`` for the others,
  ``[truth box, 3]`` for missed truth.
* ``DetectNetMAP`` (the fork's ``mAP``) -- tops mAP, precision and recall in percent over the batch:
  precision = matched / detections, recall = matched / truth, mAP = precision x recall / 100.

The rows are float16-rounded, as the fork stores them. A batch image with more than 50 rows keeps its
first 50 with a warning (the fork fails).
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import torch

from caffe.blob import Shape
from caffe.data.bbox import jaccard_matrix
from caffe.layer import Layer, register

log = logging.getLogger(__name__)

MAX_BOXES = 50  # rows per image in every top, as in the fork
MATCH_IOU = 0.7
PIXEL_LIMIT = 1 << 28  # proposals are cut to this many pixels either way (a diverged net's boxes)


def _params(layer: Layer, kinds: tuple[type, ...], optional: int) -> list:
    """The comma-separated ``param_str`` as ``kinds``; the last ``optional`` may be left out."""
    text = layer.layer_param.python_param.param_str
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    if not len(kinds) - optional <= len(parts) <= len(kinds):
        raise layer.error(f"param_str {text!r} needs {len(kinds) - optional} to {len(kinds)} comma-separated values")
    try:
        return [kind(p) for kind, p in zip(kinds, parts, strict=False)]
    except ValueError:
        raise layer.error(f"param_str {text!r}: a value is not a number of the right kind") from None


def _fit(layer: Layer, rows: np.ndarray, image: int) -> np.ndarray:
    if len(rows) > MAX_BOXES:
        log.warning("layer '%s': image %d has %d rows; keeping the first %d", layer.name, image, len(rows), MAX_BOXES)
        return rows[:MAX_BOXES]
    return rows


def _to_top(rows: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(rows.astype(np.float32)).to(device=like.device, dtype=like.dtype)


class _Cluster(Layer):
    """Shared by the two clustering layers: grid cells to boxes, one top per class."""

    exact_num_bottom = 2
    min_top = 1
    traceable = False
    truth = False

    def read_settings(self) -> None:
        raise NotImplementedError

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.read_settings()
        self.require(self.classes >= 1, f"needs at least one class, param_str says {self.classes}")
        self.require(self.threshold >= 0, f"the coverage threshold must be >= 0, got {self.threshold}")
        self.require(self.stride > 0 and self.width > 0 and self.height > 0, "image size and stride must be > 0")
        if len(self.layer_param.top) != self.classes:
            raise self.error(f"has {len(self.layer_param.top)} top(s) for {self.classes} class(es); needs one each")
        self.grid = (self.width // self.stride, self.height // self.stride)
        self.require(min(self.grid) > 0, f"a {self.width}x{self.height} image has no cell of stride {self.stride}")
        self.cell = (self.width / self.grid[0], self.height / self.grid[1])

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        n, c, _, _ = self.legacy_shape(bottom[0], "the coverage bottom")
        if c != self.classes:
            raise self.shape_error(f"param_str says {self.classes} class(es); coverage has shape {tuple(bottom[0])}")
        _, four, _, _ = self.legacy_shape(bottom[1], "the box bottom")
        if four != 4 or int(bottom[1][0]) != n or tuple(bottom[1][2:]) != tuple(bottom[0][2:]):
            raise self.shape_error(f"needs boxes (N, 4, H, W) beside coverage (N, {c}, H, W), got {tuple(bottom[1])}")
        return [(n, MAX_BOXES, 5)] * self.classes

    def proposals(self, coverage: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The boxes (K, 4) ``x1, y1, x2, y2`` in pixels of the cells that count (the grid of ``param_str``'s
        size; any cells beyond it are not read, as in the fork)."""
        cvg = coverage[: self.grid[1], : self.grid[0]]
        ys, xs = np.nonzero(cvg > 0 if self.truth else cvg >= self.threshold)
        mx, my = xs * self.cell[0], ys * self.cell[1]
        return np.stack(
            [boxes[0][ys, xs] + mx, boxes[1][ys, xs] + my, boxes[2][ys, xs] + mx, boxes[3][ys, xs] + my], axis=1
        ).astype(np.float64)

    def rows(self, coverage: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        coverage, boxes = (t.detach().to(device="cpu", dtype=torch.float32).numpy() for t in bottom)
        tops = []
        for k in range(self.classes):
            out = np.zeros((len(coverage), MAX_BOXES, 5))
            for i in range(len(coverage)):
                rows = _fit(self, self.rows(coverage[i, k], boxes[i]), i).astype(np.float16)
                out[i, : len(rows), : rows.shape[1]] = rows
            tops.append(_to_top(out, bottom[0]))
        return tops


@register("ClusterDetections")
class ClusterDetectionsLayer(_Cluster):
    """The network's coverage and boxes to detections, by OpenCV's rectangle grouping."""

    def read_settings(self) -> None:
        values = _params(self, (int, int, int, float, int, float, int, int), 1)
        self.width, self.height, self.stride, self.threshold = values[:4]
        self.group_threshold, self.group_eps, self.min_height = values[4:7]
        self.classes = values[7] if len(values) > 7 else 1
        self.require(self.group_eps >= 0, f"the group eps must be >= 0, got {self.group_eps}")

    def rows(self, coverage: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        found = self.proposals(coverage, boxes)
        if not found.any():
            return np.zeros((0, 5))
        found = found[np.isfinite(found).all(axis=1)].clip(-PIXEL_LIMIT, PIXEL_LIMIT)  # OpenCV's int rectangles
        rects = [[int(x1), int(y1), int(x2 - x1), int(y2 - y1)] for x1, y1, x2, y2 in found.tolist()]
        groups, weights = cv2.groupRectangles(rects, self.group_threshold, self.group_eps)
        out = [
            [x, y, x + w, y + h, math.log(weight)]
            for (x, y, w, h), weight in zip(np.asarray(groups).reshape(-1, 4).tolist(), np.ravel(weights).tolist())
            if h >= self.min_height
        ]
        return np.array(out, dtype=np.float64).reshape(-1, 5)


@register("ClusterGroundtruth")
class ClusterGroundtruthLayer(_Cluster):
    """The grid labels' boxes back as a list, each once."""

    truth = True

    def read_settings(self) -> None:
        values = _params(self, (int, int, int, int), 1)
        self.width, self.height, self.stride = values[:3]
        self.classes = values[3] if len(values) > 3 else 1
        self.threshold = 0.0

    def rows(self, coverage: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return distinct_boxes(self.proposals(coverage, boxes))


def distinct_boxes(found: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
    """The rows of ``found`` (K, 4), sorted, each box once: rows within ``tolerance`` pixels are one box. The cells
    of one label box give it back with float32 rounding differences (its corner minus each cell's, plus the cell's
    again); the fork's set of exact values kept those as several boxes, each extra one then counted as missed."""
    kept: list[np.ndarray] = []
    for row in found[np.lexsort(found.T[::-1])] if len(found) else []:
        if not kept or np.abs(np.asarray(kept) - row).max(axis=1).min() > tolerance:
            kept.append(row)
    return np.array(kept, dtype=np.float64).reshape(-1, 4)


@register("ScoreDetections")
class ScoreDetectionsLayer(Layer):
    """Detections marked 1 (matched), 2 (false), and missed truth 3 (see the module docstring)."""

    exact_num_bottom, exact_num_top = 2, 1
    traceable = False

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        for i, s in enumerate(bottom):
            if len(s) != 3 or int(s[2]) != 5:
                raise self.shape_error(f"bottom[{i}] must be (N, rows, 5), got {tuple(s)}")
        if int(bottom[0][0]) != int(bottom[1][0]):
            raise self.shape_error(f"# of images not matching: {tuple(bottom[0])} and {tuple(bottom[1])}")
        return [(int(bottom[0][0]), MAX_BOXES, 5)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        truth, det = (t.detach().to(device="cpu", dtype=torch.float64).numpy() for t in bottom)
        out = np.zeros((len(truth), MAX_BOXES, 5))
        for k in range(len(truth)):
            rows = _fit(self, self.score(truth[k, :, :4], det[k, :, :4]), k)
            out[k, : len(rows)] = rows
        return [_to_top(out, bottom[0])]

    @staticmethod
    def score(truth: np.ndarray, det: np.ndarray) -> np.ndarray:
        """One image's marked rows: matched detections, other detections, missed truth."""
        truth = truth[np.any(truth != 0, axis=1)]
        det = det[np.any(det != 0, axis=1)]
        truth_hit = np.zeros(len(truth), dtype=bool)
        det_hit = np.zeros(len(det), dtype=bool)
        overlap = jaccard_matrix(truth, det)  # the fork's IoU (no +1 on sizes; 0 when apart)
        for i in range(len(truth)):
            for j in range(len(det)):
                if not det_hit[j] and overlap[i, j] >= MATCH_IOU:
                    truth_hit[i] = det_hit[j] = True
                    break
        marked = [(det[det_hit], 1), (det[~det_hit], 2), (truth[~truth_hit], 3)]
        return np.concatenate([np.column_stack([rows, np.full(len(rows), mark)]) for rows, mark in marked]).reshape(
            -1, 5
        )


@register("DetectNetMAP")
class DetectNetMAPLayer(Layer):
    """The fork's ``mAP`` layer: mAP, precision and recall (percent) of the marked rows."""

    exact_num_bottom, exact_num_top = 1, 3
    traceable = False

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[0]) != 3 or int(bottom[0][2]) != 5:
            raise self.shape_error(f"bottom must be (N, rows, 5), got {tuple(bottom[0])}")
        return [(1,), (1,), (1,)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        marks = bottom[0].detach().to(device="cpu", dtype=torch.float64)[:, :, 4]
        matched, false, missed = (int((marks == m).sum()) for m in (1, 2, 3))
        precision = 100.0 * matched / (matched + false) if matched + false else 0.0
        recall = 100.0 * matched / (matched + missed) if matched + missed else 0.0
        values = (precision * recall / 100.0, precision, recall)
        return [torch.tensor([v], dtype=bottom[0].dtype, device=bottom[0].device) for v in values]
