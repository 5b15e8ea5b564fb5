"""Region layers of the R-CNN family's Caffe forks (issue 14), with each fork's rules.

* ``ROIPooling`` -- rbgirshick/caffe-fast-rcnn: each ROI ``(batch, x1, y1, x2, y2)`` is scaled by
  ``spatial_scale`` and rounded (half away from zero) to feature cells, its inclusive extent (at least
  1x1) split into ``pooled_h`` x ``pooled_w`` bins (bin ``i`` covers ``floor(i * size / n)`` to
  ``ceil((i + 1) * size / n)``, clipped to the map); each bin takes its maximum, an empty bin 0. The
  gradient goes to the element that gave each maximum (the fork's argmax); none goes to the ROIs.
* ``PSROIPooling`` -- daijifeng001/caffe-rfcn: position-sensitive average pooling. The ROI's corners are
  rounded before scaling, its far edge is ``round(x2) + 1``, sides are at least 0.1; output channel
  ``c`` at bin ``(i, j)`` averages input channel ``(c * group_size + i) * group_size + j`` over the bin
  (0 when empty); the gradient spreads each bin's diff evenly over its elements.
* ``Proposal`` -- OpenCV's native form of py-faster-rcnn's ``rpn.proposal_layer.ProposalLayer``:
  anchors (py-faster-rcnn's generate_anchors: ratio-major, widths and heights rounded as NumPy does),
  shifted to every cell by ``feat_stride``; bbox deltas applied (widths ``x2 - x1 + 1``), boxes clipped
  to the image of ``im_info``, boxes with a side under ``min_size * im_info[2]`` dropped, the
  ``pre_nms_topn`` best scores kept, greedy NMS (overlaps with the ``+ 1`` pixel convention, a box is
  dropped when its overlap exceeds ``nms_thresh``), the first ``post_nms_topn`` kept. Tops: ROIs
  ``(R, 5)`` (batch index first) and optionally their scores ``(R, 1)``. A ``Python`` layer of module
  ``rpn.proposal_layer`` that cannot be imported is built as this layer too (see
  :mod:`caffe.layers.python`), its ``param_str`` read as py-faster-rcnn reads it and the rest taken from
  py-faster-rcnn's config for the layer's phase. Unlike OpenCV (which skips ``min_size`` and pads the
  output to ``post_nms_topn`` rows), the rows are exactly the kept proposals, as in py-faster-rcnn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import yaml

from caffe.blob import Shape
from caffe.common import TRAIN
from caffe.layer import Layer, register

_ELEMENT_BUDGET = 1 << 24  # elements of the intermediates of one batch of ROIs pooled at once


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C's ``round``: halves away from zero (NumPy's ``round`` goes to even)."""
    v = v.astype(np.float64)
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _roi_array(layer: Layer, rois: torch.Tensor, batch: int) -> np.ndarray:
    """The ROIs (R, 5[, 1, 1]) as an (R, 5) float32 array, batch indices truncated to integers (as the forks'
    C++ casts them) and checked to be in [0, batch) (the forks' CHECK). R may be 0 (no proposal survived)."""
    arr = rois.detach().reshape(-1, 5).to(device="cpu", dtype=torch.float32).numpy().copy()
    arr[:, 0] = np.trunc(arr[:, 0])
    index = arr[:, 0]
    if arr.size and (index.min() < 0 or index.max() >= batch):
        raise layer.error(f"ROI batch indices must be in [0, {batch}), got {sorted(set(index.tolist()))}")
    return arr


def _check_rois(layer: Layer, shape: Shape) -> int:
    """The number of ROIs of an (R, 5[, 1, 1]) bottom."""
    if len(shape) < 2 or math.prod(shape[1:]) != 5:
        raise layer.shape_error(f"the ROI bottom must be (R, 5) (batch index, x1, y1, x2, y2), got {list(shape)}")
    return shape[0]


# ============================================================================ ROIPooling
def roi_pool_bins(
    rois: np.ndarray, scale: float, pooled: tuple[int, int], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """caffe-fast-rcnn's bins: (hstart, hend) of shape (R, pooled_h), (wstart, wend) (R, pooled_w)."""
    corners = _round_half_away(rois[:, 1:5] * np.float32(scale)).astype(np.int64)
    rows = _bin_edges(corners[:, 1], corners[:, 3], pooled[0], size[0])
    cols = _bin_edges(corners[:, 0], corners[:, 2], pooled[1], size[1])
    return rows[0], rows[1], cols[0], cols[1]


def _bin_edges(start: np.ndarray, end: np.ndarray, bins: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    extent = np.maximum(end - start + 1, 1).astype(np.float32)
    bin_size = extent / np.float32(bins)
    index = np.arange(bins, dtype=np.float32)
    lo = np.floor(index[None, :] * bin_size[:, None]).astype(np.int64) + start[:, None]
    hi = np.ceil((index[None, :] + 1) * bin_size[:, None]).astype(np.int64) + start[:, None]
    return np.clip(lo, 0, limit), np.clip(hi, 0, limit)


def _window_index(lo: np.ndarray, hi: np.ndarray, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per bin, the indices of its cells padded to the widest bin, and which of them are real."""
    width = max(int((hi - lo).max(initial=1)), 1)
    index = lo[:, :, None] + np.arange(width)[None, None, :]
    valid = index < hi[:, :, None]
    return torch.from_numpy(np.clip(index, 0, limit - 1)), torch.from_numpy(valid)


def _masked_max(x: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, axis: int) -> torch.Tensor:
    """Max of ``x`` along ``axis`` over each bin's cells: (r, ..., L, ...) -> (r, ..., bins, ...)."""
    r, bins, width = index.shape
    shape = [r] + [1] * (x.dim() - 1)
    shape[axis] = bins * width
    expand = list(x.shape)
    expand[axis] = bins * width
    picked = torch.gather(x, axis, index.reshape(shape).expand(expand).to(x.device))
    split = list(x.shape)
    split[axis : axis + 1] = [bins, width]
    picked = picked.reshape(split)
    mask_shape = [r] + [1] * (len(split) - 1)
    mask_shape[axis], mask_shape[axis + 1] = bins, width
    picked = picked.masked_fill(~valid.reshape(mask_shape).to(x.device), -math.inf)
    # The first maximum (the fork's strict '>' scan), taken by index: the gradient reaches that element only.
    first = picked.detach().argmax(dim=axis + 1, keepdim=True)
    return picked.gather(axis + 1, first).squeeze(axis + 1)


@register("ROIPooling")
class ROIPoolingLayer(Layer):
    """Fast R-CNN's ROI max pooling; see the module docstring."""

    exact_num_bottom, exact_num_top = 2, 1
    traceable = False  # the bins depend on the ROI values

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.roi_pooling_param
        self.require(p.pooled_h > 0, "roi_pooling_param.pooled_h must be > 0")
        self.require(p.pooled_w > 0, "roi_pooling_param.pooled_w must be > 0")
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        self.scale = float(p.spatial_scale)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[0]) != 4:
            raise self.shape_error(f"the feature bottom must be 4-D (N, C, H, W), got {list(bottom[0])}")
        return [(_check_rois(self, bottom[1]), bottom[0][1], *self.pooled)]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        rois = _roi_array(self, bottom[1], x.shape[0])
        height, width = x.shape[2], x.shape[3]
        hs, he, ws, we = roi_pool_bins(rois, self.scale, self.pooled, (height, width))
        batch = torch.from_numpy(rois[:, 0].astype(np.int64)).to(x.device)
        widest = int((we - ws).max(initial=1)) * self.pooled[1]
        chunk = max(1, _ELEMENT_BUDGET // (x.shape[1] * height * (width + widest)))
        parts = []
        for lo in range(0, len(rois), chunk):
            part = slice(lo, lo + chunk)
            parts.append(self._pool(x[batch[part]], (hs[part], he[part]), (ws[part], we[part])))
        out = torch.cat(parts) if parts else x.new_zeros((0, x.shape[1], *self.pooled))
        return [out]

    def _pool(self, x: torch.Tensor, rows: tuple[np.ndarray, ...], cols: tuple[np.ndarray, ...]) -> torch.Tensor:
        """Max over each bin of the ROIs' feature maps ``x`` (r, C, H, W) -> (r, C, pooled_h, pooled_w)."""
        col_index, col_valid = _window_index(cols[0], cols[1], x.shape[3])
        row_index, row_valid = _window_index(rows[0], rows[1], x.shape[2])
        out = _masked_max(_masked_max(x, col_index, col_valid, 3), row_index, row_valid, 2)
        empty = ~(row_valid.any(-1)[:, :, None] & col_valid.any(-1)[:, None, :])
        return out.masked_fill(empty[:, None].to(x.device), 0.0)


# ============================================================================ PSROIPooling
def psroi_bins(
    rois: np.ndarray, scale: float, group: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """caffe-rfcn's bins: (hstart, hend) and (wstart, wend), each (R, group_size)."""
    s = np.float32(scale)
    start = _round_half_away(rois[:, 1:3]).astype(np.float32) * s
    end = (_round_half_away(rois[:, 3:5]) + 1).astype(np.float32) * s
    extent = np.maximum(end - start, np.float32(0.1))
    bin_size = extent / np.float32(group)
    index = np.arange(group, dtype=np.float32)[None, :, None]
    lo = np.floor(index * bin_size[:, None, :] + start[:, None, :]).astype(np.int64)
    hi = np.ceil((index + 1) * bin_size[:, None, :] + start[:, None, :]).astype(np.int64)
    limits = np.array([size[1], size[0]])
    lo, hi = np.clip(lo, 0, limits), np.clip(hi, 0, limits)
    return lo[:, :, 1], hi[:, :, 1], lo[:, :, 0], hi[:, :, 0]


@register("PSROIPooling")
class PSROIPoolingLayer(Layer):
    """R-FCN's position-sensitive ROI average pooling; see the module docstring."""

    exact_num_bottom, exact_num_top = 2, 1
    traceable = False

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.psroi_pooling_param
        for field in ("spatial_scale", "output_dim", "group_size"):
            self.require(p.HasField(field), f"psroi_pooling_param.{field} is required")
        self.require(p.output_dim > 0, "psroi_pooling_param.output_dim must be > 0")
        self.require(p.group_size > 0, "psroi_pooling_param.group_size must be > 0")
        self.output_dim, self.group, self.scale = int(p.output_dim), int(p.group_size), float(p.spatial_scale)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[0]) != 4:
            raise self.shape_error(f"the feature bottom must be 4-D (N, C, H, W), got {list(bottom[0])}")
        need = self.output_dim * self.group * self.group
        if bottom[0][1] != need:
            raise self.shape_error(
                f"the feature bottom needs output_dim * group_size^2 = {need} channels, got {bottom[0][1]}"
            )
        return [(_check_rois(self, bottom[1]), self.output_dim, self.group, self.group)]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        rois = _roi_array(self, bottom[1], x.shape[0])
        rows_lo, rows_hi, cols_lo, cols_hi = psroi_bins(rois, self.scale, self.group, x.shape[2:])
        batch = torch.from_numpy(rois[:, 0].astype(np.int64)).to(x.device)[:, None, None, None]
        rows = [torch.from_numpy(a).to(x.device)[:, None, :, None] for a in (rows_lo, rows_hi)]
        cols = [torch.from_numpy(a).to(x.device)[:, None, None, :] for a in (cols_lo, cols_hi)]
        return [self._average(x, batch, rows, cols).to(x.dtype)]

    def _average(
        self, x: torch.Tensor, batch: torch.Tensor, rows: list[torch.Tensor], cols: list[torch.Tensor]
    ) -> torch.Tensor:
        """Each bin's mean of its own channel, from a summed-area table (float64 so large maps keep
        their precision); bins (R, 1, g, 1) x (R, 1, 1, g) -> (R, output_dim, g, g)."""
        table = torch.nn.functional.pad(x.to(torch.float64).cumsum(2).cumsum(3), (1, 0, 1, 0))
        g = self.group
        grid = torch.arange(g, device=x.device)
        c = ((torch.arange(self.output_dim, device=x.device)[:, None, None] * g + grid[:, None]) * g + grid)[None]
        (h0, h1), (w0, w1) = rows, cols
        total = table[batch, c, h1, w1] - table[batch, c, h0, w1] - table[batch, c, h1, w0] + table[batch, c, h0, w0]
        area = ((h1 - h0) * (w1 - w0)).to(total.dtype)
        return torch.where(area > 0, total / area.clamp(min=1), torch.zeros_like(total))


# ============================================================================ Proposal
#: py-faster-rcnn's lib/fast_rcnn/config.py RPN settings per phase: pre-NMS top N, post-NMS top N,
#: NMS threshold, minimum size (at the original image's scale).
RPN_CONFIG = {"TRAIN": (12000, 2000, 0.7, 16), "TEST": (6000, 300, 0.7, 16)}
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
DEFAULT_SCALES = (8.0, 16.0, 32.0)


@dataclass(frozen=True)
class ProposalSettings:
    feat_stride: int
    base_size: int
    min_size: float
    ratios: tuple[float, ...]
    scales: tuple[float, ...]
    pre_nms_topn: int
    post_nms_topn: int
    nms_thresh: float


def generate_anchors(base_size: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> np.ndarray:
    """py-faster-rcnn's anchors (x1, y1, x2, y2) around the cell ``[0, base_size - 1]``: for each ratio
    (outer) and scale (inner), the base area reshaped to the ratio (NumPy rounding) then scaled."""
    center = 0.5 * (base_size - 1)
    area = float(base_size * base_size)
    rows = []
    for ratio in ratios:
        w = np.round(np.sqrt(area / ratio))
        h = np.round(w * ratio)
        for scale in scales:
            half_w, half_h = 0.5 * (w * scale - 1), 0.5 * (h * scale - 1)
            rows.append([center - half_w, center - half_h, center + half_w, center + half_h])
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def parse_param_str(text: str) -> dict[str, object]:
    """py-faster-rcnn's ``param_str`` (YAML, e.g. ``'feat_stride': 16``) as a dict."""
    try:
        value = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise ValueError(f"param_str {text!r} is not YAML: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"param_str {text!r} is not a YAML mapping")
    return value


def greedy_nms(boxes: np.ndarray, threshold: float, limit: int) -> list[int]:
    """Indices kept by py-faster-rcnn's NMS over ``boxes`` sorted best first (``+ 1`` pixel areas; a box
    overlapping a kept one by more than ``threshold`` is dropped); at most ``limit`` (<= 0: all)."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    alive = np.ones(len(boxes), dtype=bool)
    keep: list[int] = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        keep.append(i)
        if len(keep) == limit:
            break
        rest = slice(i + 1, None)
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1, 0)
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1, 0)
        inter = iw * ih
        alive[rest] &= inter / (areas[i] + areas[rest] - inter) <= threshold
    return keep


def propose(scores: np.ndarray, deltas: np.ndarray, im_info: np.ndarray, s: ProposalSettings) -> np.ndarray:
    """One image's proposals as (R, 5) rows (x1, y1, x2, y2, score), float32 as in py-faster-rcnn."""
    anchors = generate_anchors(s.base_size, s.ratios, s.scales)
    count, (height, width) = len(anchors), scores.shape[1:]
    sx, sy = np.meshgrid(np.arange(width) * s.feat_stride, np.arange(height) * s.feat_stride)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    boxes = (anchors[None, :, :] + shifts[:, None, :]).reshape(-1, 4).astype(np.float32)
    deltas = deltas.reshape(count * 4, height, width).transpose(1, 2, 0).reshape(-1, 4)
    scores = scores[count:].transpose(1, 2, 0).reshape(-1)
    boxes = _apply_deltas(boxes, deltas)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, im_info[1] - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, im_info[0] - 1)
    smallest = np.float32(s.min_size) * im_info[2]
    big = (boxes[:, 2] - boxes[:, 0] + 1 >= smallest) & (boxes[:, 3] - boxes[:, 1] + 1 >= smallest)
    boxes, scores = boxes[big], scores[big]
    order = np.argsort(-scores, kind="stable")
    if s.pre_nms_topn > 0:
        order = order[: s.pre_nms_topn]
    boxes, scores = boxes[order], scores[order]
    keep = greedy_nms(boxes, s.nms_thresh, s.post_nms_topn)
    return np.concatenate([boxes[keep], scores[keep, None]], axis=1)


def _apply_deltas(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """py-faster-rcnn's bbox_transform_inv in float32: centres move by d * size, sizes scale by exp(d)."""
    w = boxes[:, 2] - boxes[:, 0] + np.float32(1)
    h = boxes[:, 3] - boxes[:, 1] + np.float32(1)
    cx, cy = boxes[:, 0] + np.float32(0.5) * w, boxes[:, 1] + np.float32(0.5) * h
    px, py = deltas[:, 0] * w + cx, deltas[:, 1] * h + cy
    pw, ph = np.exp(deltas[:, 2]) * w, np.exp(deltas[:, 3]) * h
    half = np.float32(0.5)
    return np.stack([px - half * pw, py - half * ph, px + half * pw, py + half * ph], axis=1)


@register("Proposal")
class ProposalLayer(Layer):
    """The RPN's proposals: OpenCV's ``Proposal`` type, or py-faster-rcnn's Python layer built in."""

    exact_num_bottom, min_top, max_top = 3, 1, 2
    traceable = False  # data-dependent output size

    def layer_setup(self, bottom: list[Shape]) -> None:
        try:
            self.settings = self._from_param_str() if self.layer_param.type == "Python" else self._from_proto()
        except (ValueError, TypeError) as e:
            raise self.error(str(e)) from None
        s = self.settings
        self.require(s.feat_stride > 0 and s.base_size > 0, "feat_stride and base_size must be > 0")
        self.require(bool(s.ratios) and bool(s.scales), "needs at least one ratio and one scale")
        self.anchor_count = len(s.ratios) * len(s.scales)

    def _from_proto(self) -> ProposalSettings:
        p = self.layer_param.proposal_param
        return ProposalSettings(
            int(p.feat_stride), int(p.base_size), float(p.min_size),
            tuple(p.ratio) or DEFAULT_RATIOS, tuple(p.scale) or DEFAULT_SCALES,
            int(p.pre_nms_topn), int(p.post_nms_topn), float(p.nms_thresh),
        )  # fmt: skip

    def _from_param_str(self) -> ProposalSettings:
        params = parse_param_str(self.layer_param.python_param.param_str)
        if "feat_stride" not in params:
            raise ValueError("param_str must give 'feat_stride' (py-faster-rcnn's ProposalLayer reads it)")
        pre, post, nms, min_size = RPN_CONFIG["TRAIN" if self.phase == TRAIN else "TEST"]
        return ProposalSettings(
            int(params["feat_stride"]), int(params.get("base_size", 16)), float(min_size),
            tuple(float(r) for r in params.get("ratios", DEFAULT_RATIOS)),
            tuple(float(v) for v in params.get("scales", DEFAULT_SCALES)), pre, post, nms,
        )  # fmt: skip

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        scores, deltas, info = bottom
        if len(scores) != 4 or scores[1] != 2 * self.anchor_count:
            raise self.shape_error(
                f"the score bottom must be (N, {2 * self.anchor_count}, H, W) for {self.anchor_count} anchors "
                f"(background then object scores), got {list(scores)}"
            )
        if tuple(deltas) != (scores[0], 4 * self.anchor_count, *scores[2:]):
            raise self.shape_error(
                f"the bbox delta bottom must be {[scores[0], 4 * self.anchor_count, *scores[2:]]}, got {list(deltas)}"
            )
        if len(info) < 2 or info[0] != scores[0] or math.prod(info[1:]) < 3:
            raise self.shape_error(f"im_info must be (N, 3) (height, width, scale), got {list(info)}")
        return [(1, 5), (1, 1)][: len(self.layer_param.top)]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        scores, deltas, info = (b.detach().to(device="cpu", dtype=torch.float32).numpy() for b in bottom)
        info = info.reshape(info.shape[0], -1)
        rows = []
        for n in range(scores.shape[0]):
            found = propose(scores[n], deltas[n], info[n, :3], self.settings)
            rows.append(np.concatenate([np.full((len(found), 1), n, dtype=np.float32), found], axis=1))
        out = torch.from_numpy(np.concatenate(rows)).to(dtype=bottom[0].dtype, device=bottom[0].device)
        return [out[:, :5], out[:, 5:]][: len(self.layer_param.top)]
