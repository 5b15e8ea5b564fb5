"""The SSD fork's detection layers (weiliu89/caffe, branch ``ssd``): Normalize, Permute, PriorBox, DetectionOutput.

Semantics follow the fork's CPU code, read from its sources:

* **Normalize** divides by the L2 norm ``sqrt(sum x^2 + eps)`` over C*H*W per image
  (``across_spatial``) or over the channels at each position, then multiplies by a learned scale (one
  value, or one per channel). Its backward is the fork's: the scale multiplies the normalization's
  gradient *after* it (the exact gradient when the scale is shared or uniform). A ``Normalize`` without
  ``norm_param`` is happynear/caffe-windows' (:mod:`caffe.layers.face`).
* **Permute** reorders axes; the axes not listed follow in their original order.
* **PriorBox** writes, per feature-map cell (rows, then columns), per ``min_size``: the square prior
  ``min_size``, the square ``sqrt(min_size * max_size)``, then one prior per aspect ratio other than 1
  (each ratio ``r`` followed by ``1/r`` with ``flip``), as normalized corners; channel 1 holds the
  variances. Sizes are truncated to integers as the fork does.
* **DetectionOutput** decodes the location predictions against the priors (CORNER, CENTER_SIZE,
  CORNER_SIZE), runs per-class greedy NMS on the scores above ``confidence_threshold`` (``top_k``
  candidates), keeps the best ``keep_top_k`` per image and writes rows ``[image, label, score, xmin,
  ymin, xmax, ymax]`` (1x1xNx7); with no detection at all, one row ``[i, -1, -1, -1, -1, -1, -1]`` per
  image. OpenCV's ``clip`` extension (field 1000) clips the decoded boxes to [0, 1].
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from caffe.blob import Shape
from caffe.data.bbox import box_areas, overlaps
from caffe.layer import Layer, register
from caffe.proto import caffe_pb2 as pb

log = logging.getLogger("caffe")

CORNER = pb.PriorBoxParameter.CORNER
CENTER_SIZE = pb.PriorBoxParameter.CENTER_SIZE
CORNER_SIZE = pb.PriorBoxParameter.CORNER_SIZE


# ---------------------------------------------------------------------------- Normalize
@register("Normalize")
class NormalizeLayer(Layer):
    """L2 normalization with a learned scale (SSD's ``conv4_3_norm``); see the module docstring. A
    ``Normalize`` layer without ``norm_param`` (or with happynear/caffe-windows' ``normalize_param``) is that
    fork's layer, :class:`caffe.layers.face.NormFaceNormalizeLayer`: SSD's nets always give ``norm_param``."""

    exact_num_bottom, exact_num_top = 1, 1

    def __new__(cls, param: pb.LayerParameter) -> Any:
        if cls is NormalizeLayer and (param.HasField("normalize_param") or not param.HasField("norm_param")):
            from caffe.layers.face import NormFaceNormalizeLayer

            return NormFaceNormalizeLayer(param)
        return super().__new__(cls)

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.norm_param
        self._check_axes(bottom[0])
        self._across, self._shared, self._eps = p.across_spatial, p.channel_shared, float(p.eps)
        self._channels = self.legacy_shape(bottom[0])[1]
        filler = p.scale_filler if p.HasField("scale_filler") else pb.FillerParameter(type="constant", value=1.0)
        self.add_param(() if self._shared else (self._channels,), filler)

    def _check_axes(self, shape: Shape) -> None:
        if len(shape) < 2:
            raise self.shape_error(f"needs a bottom with at least 2 axes (num, channels, ...), got shape {shape}")

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self._check_axes(bottom[0])
        n, c, h, w = self.legacy_shape(bottom[0])
        if not self._shared and c != self._channels:
            raise self.shape_error(f"bottom has {c} channels, the scale blob has {self._channels}")
        self._rows = (n, c, h * w)
        return [bottom[0]]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        if x.dim() != 4:  # as (num, channels, positions); a 4-axis bottom keeps its memory layout
            x = x.reshape(self._rows)
        scale = self.param_tensor(0).reshape(1, -1, *(1,) * (x.dim() - 2))
        if x.requires_grad and not self._shared:
            # The fork scales the normalization's gradient by the scale after the Jacobian (x's diff is
            # s * J^T dy, not J^T (s * dy)): route the scale into the gradient of x, keep its own gradient.
            held = scale.detach()
            x = x.detach() + (x - x.detach()) * held
            z = self._normalized(x)
            top = scale * z.detach() + (z - z.detach())
        else:
            top = self._normalized(x) * scale
        return [top.reshape(bottom[0].shape)]

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        """x / sqrt(sum of squares + eps), the sum over C*H*W or over C per position."""
        dims = tuple(range(1, x.dim())) if self._across else (1,)
        return x / (x.square().sum(dim=dims, keepdim=True) + self._eps).sqrt()


# ---------------------------------------------------------------------------- Permute
@register("Permute")
class PermuteLayer(Layer):
    """Reorder the axes of a blob by ``permute_param.order`` (unlisted axes follow, in order)."""

    exact_num_bottom, exact_num_top = 1, 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        num_axes = len(bottom[0])
        order: list[int] = []
        for axis in self.layer_param.permute_param.order:
            if axis >= num_axes:
                raise self.shape_error(f"order {axis} is out of range for a {num_axes}-axis bottom")
            if axis in order:
                raise self.error(f"permute_param.order repeats axis {axis}")
            order.append(int(axis))
        self._order = tuple(order + [a for a in range(num_axes) if a not in order])
        self._identity = self._order == tuple(range(num_axes))

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[0]) != len(self._order):
            raise self.shape_error(f"was set up for {len(self._order)} axes, got bottom shape {bottom[0]}")
        return [tuple(bottom[0][a] for a in self._order)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._identity:
            return [bottom[0]]
        return [bottom[0].permute(self._order).contiguous()]


# ---------------------------------------------------------------------------- PriorBox
def _aspect_ratios(ratios: list[float], flip: bool) -> list[float]:
    """1, then each new ratio r (and 1/r with ``flip``); ratios within 1e-6 of a listed one are skipped."""
    out = [1.0]
    for r in ratios:
        r = float(np.float32(r))
        if any(abs(r - a) < 1e-6 for a in out):
            continue
        out.append(r)
        if flip:
            out.append(float(np.float32(1.0 / r)))
    return out


@register("PriorBox")
class PriorBoxLayer(Layer):
    """SSD's default boxes for one feature map: top (1, 2, H*W*num_priors*4), corners then variances."""

    min_bottom, exact_num_top = 1, 1
    # The fork declares its bottom count under a name Caffe never calls, so any number is accepted.

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.prior_box_param
        self.require(len(p.min_size) > 0, "prior_box_param: must provide min_size")
        self.require(all(s > 0 for s in p.min_size), "prior_box_param.min_size must be positive")
        if p.max_size:
            self.require(
                len(p.max_size) == len(p.min_size), "prior_box_param: max_size must be given once per min_size"
            )
            for lo, hi in zip(p.min_size, p.max_size, strict=True):
                self.require(hi > lo, f"prior_box_param.max_size {hi:g} must be greater than min_size {lo:g}")
        self._ratios = _aspect_ratios(list(p.aspect_ratio), p.flip)
        self._num_priors = len(self._ratios) * len(p.min_size) + len(p.max_size)
        self._variance = self._read_variance(p)
        self._img = self._pair(p, "img_size", "img_h", "img_w", int)
        self._step = self._pair(p, "step", "step_h", "step_w", float)
        self._offset = float(p.offset)
        if 0 in self._img and len(bottom) < 2:
            raise self.error("needs the image as bottom[1] (or prior_box_param.img_size / img_h and img_w)")

    def _read_variance(self, p: pb.PriorBoxParameter) -> list[float]:
        if len(p.variance) > 1:
            self.require(len(p.variance) == 4, f"prior_box_param.variance takes 1 or 4 values, got {len(p.variance)}")
        self.require(all(v > 0 for v in p.variance), "prior_box_param.variance must be positive")
        return [float(v) for v in p.variance] or [0.1]

    def _pair(self, p: pb.PriorBoxParameter, both: str, h: str, w: str, kind: type) -> tuple[float, float]:
        """(h, w) from ``both`` or from ``h``/``w`` (not both ways); (0, 0) when unset."""
        if p.HasField(h) or p.HasField(w):
            self.require(not p.HasField(both), f"prior_box_param: give either {both} or {h}/{w}, not both")
            value = (kind(getattr(p, h)), kind(getattr(p, w)))
        elif p.HasField(both):
            value = (kind(getattr(p, both)),) * 2
        else:
            return (0, 0)
        self.require(min(value) > 0, f"prior_box_param: {both} ({h}, {w}) must be positive, got {value}")
        return value

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        _, _, height, width = self.legacy_shape(bottom[0])
        if 0 in self._img:
            _, _, img_h, img_w = self.legacy_shape(bottom[1])
        else:
            img_h, img_w = self._img
        if height * width == 0:
            raise self.shape_error(f"feature map {bottom[0]} has no positions")
        self._priors = torch.from_numpy(self._compute(height, width, img_h, img_w))
        self._cache: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        return [tuple(self._priors.shape)]

    def _compute(self, height: int, width: int, img_h: int, img_w: int) -> np.ndarray:
        """The (1, 2, H*W*P*4) float32 priors, with the fork's float/double arithmetic."""
        f32 = np.float32
        step_h, step_w = self._step if 0 not in self._step else (f32(img_h) / f32(height), f32(img_w) / f32(width))
        cy = (np.arange(height, dtype=f32)[:, None] + f32(self._offset)) * f32(step_h)
        cx = (np.arange(width, dtype=f32)[None, :] + f32(self._offset)) * f32(step_w)
        sizes = self._box_sizes()  # (P, 2) widths, heights
        cx = np.broadcast_to(cx[:, :, None], (height, width, len(sizes))).astype(np.float64)
        cy = np.broadcast_to(cy[:, :, None], (height, width, len(sizes))).astype(np.float64)
        bw, bh = sizes[:, 0].astype(np.float64) / 2.0, sizes[:, 1].astype(np.float64) / 2.0
        boxes = np.stack([(cx - bw) / img_w, (cy - bh) / img_h, (cx + bw) / img_w, (cy + bh) / img_h], axis=-1)
        boxes = boxes.astype(f32).reshape(-1)
        if self.layer_param.prior_box_param.clip:
            boxes = np.clip(boxes, 0.0, 1.0)
        variance = np.resize(np.asarray(self._variance, dtype=f32), boxes.size)
        return np.stack([boxes, variance]).reshape(1, 2, -1)

    def _box_sizes(self) -> np.ndarray:
        """(width, height) of each prior of one cell, float32 (sizes truncated to int as the fork does)."""
        p = self.layer_param.prior_box_param
        sizes: list[tuple[float, float]] = []
        for s, lo in enumerate(p.min_size):
            lo = int(lo)
            sizes.append((lo, lo))
            if p.max_size:
                side = float(np.float32(math.sqrt(lo * int(p.max_size[s]))))
                sizes.append((side, side))
            for r in self._ratios[1:]:
                root = np.sqrt(np.float32(r))
                sizes.append((lo * root, lo / root))
        return np.asarray(sizes, dtype=np.float32)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        key = (bottom[0].dtype, bottom[0].device)
        if key not in self._cache:
            self._cache[key] = self._priors.to(dtype=key[0], device=key[1])
        return [self._cache[key]]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False


# ---------------------------------------------------------------------------- DetectionOutput
def decode_boxes(
    loc: np.ndarray, priors: np.ndarray, variances: np.ndarray, code_type: int, encoded_in_target: bool
) -> np.ndarray:
    """Boxes (..., P, 4) decoded from offsets ``loc`` (..., P, 4) against priors (P, 4) as the fork does."""
    loc = loc.astype(np.float64)
    priors = priors.astype(np.float64)
    var = np.ones_like(variances, dtype=np.float64) if encoded_in_target else variances.astype(np.float64)
    pw = (priors[:, 2] - priors[:, 0])[:, None]
    ph = (priors[:, 3] - priors[:, 1])[:, None]
    if code_type == CORNER:
        return priors + var * loc
    if code_type == CORNER_SIZE:
        return priors + var * loc * np.concatenate([pw, ph, pw, ph], axis=1)
    cx = var[:, 0] * loc[..., 0] * pw[:, 0] + (priors[:, 0] + priors[:, 2]) / 2
    cy = var[:, 1] * loc[..., 1] * ph[:, 0] + (priors[:, 1] + priors[:, 3]) / 2
    half_w = np.exp(var[:, 2] * loc[..., 2]) * pw[:, 0] / 2
    half_h = np.exp(var[:, 3] * loc[..., 3]) * ph[:, 0] / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


# Candidates left at which NMS computes all their pairwise overlaps at once rather than a row per kept
# box (a row costs ~15 us of NumPy call overhead; 128^2 pairs cost ~120 us; measured on the res10 SSD).
_PAIRWISE_AT = 128


def _best_first(scores: np.ndarray, threshold: float, top_k: int) -> np.ndarray:
    """Indices of the scores above ``threshold``, best first (ties by index), at most ``top_k`` (-1: all)."""
    candidates = np.flatnonzero(scores > threshold)
    negated = -scores[candidates]
    if 0 < top_k < len(candidates):
        # Only the top_k best need sorting: keep those not worse than the top_k-th (ties included).
        kth = np.partition(negated, top_k - 1)[top_k - 1]
        near = negated <= kth
        candidates, negated = candidates[near], negated[near]
    order = candidates[np.argsort(negated, kind="stable")]
    return order[:top_k] if top_k > -1 else order


def nms(
    boxes: np.ndarray, scores: np.ndarray, threshold: float, nms_threshold: float, eta: float, top_k: int
) -> list[int]:
    """The fork's ApplyNMSFast: indices of the kept boxes, best score first.

    A candidate is kept when its overlap with every box kept before it is at most the (adaptive)
    threshold. With a fixed threshold each kept box drops the later candidates it overlaps too much
    (one vectorised row per kept box) until few are left, whose pairwise overlaps are then computed at once.
    """
    order = _best_first(scores, threshold, top_k)
    chosen = boxes[order]
    cols = np.concatenate([chosen.T, box_areas(chosen)[None], order[None]])  # (6, K): corners, area, index
    if eta >= 1:
        kept: list[int] = []
        while cols.shape[1] > _PAIRWISE_AT:
            one, rest = cols[:, 0], cols[:, 1:]
            kept.append(int(one[5]))
            cols = rest[:, overlaps(one, rest) <= nms_threshold]
        dropped = ~(overlaps(cols[:, :, None], cols[:, None, :]) <= nms_threshold)
        alive = np.ones(cols.shape[1], dtype=bool)
        for i in range(cols.shape[1]):
            if alive[i]:
                kept.append(int(cols[5, i]))
                alive &= ~dropped[i]
        return kept
    worst = np.zeros(len(order))  # the largest overlap with a kept box so far
    picked: list[int] = []
    adaptive = nms_threshold
    for i in range(len(order)):
        if picked and not worst[i] <= adaptive:
            continue
        picked.append(i)
        worst[i + 1 :] = np.maximum(worst[i + 1 :], overlaps(cols[:, i], cols[:, i + 1 :]))
        if adaptive > 0.5:
            adaptive *= eta
    return [int(order[i]) for i in picked]


@register("DetectionOutput")
class DetectionOutputLayer(Layer):
    """SSD's detection head: decode, per-class NMS, keep_top_k; see the module docstring."""

    min_bottom, max_bottom, exact_num_top = 3, 4, 1
    traceable = False  # data-dependent output size

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.detection_output_param
        self.require(p.HasField("num_classes"), "detection_output_param: must specify num_classes")
        nms_param = p.nms_param
        self.require(nms_param.nms_threshold >= 0, "nms_param.nms_threshold must be non negative")
        self.require(0 < nms_param.eta <= 1, f"nms_param.eta must be in (0, 1], got {nms_param.eta:g}")
        self.require(p.code_type in (CORNER, CENTER_SIZE, CORNER_SIZE), f"unknown code_type {p.code_type}")
        self._classes = int(p.num_classes)
        self._loc_classes = 1 if p.share_location else self._classes
        self._threshold = float(p.confidence_threshold) if p.HasField("confidence_threshold") else -math.inf
        self._top_k = int(nms_param.top_k) if nms_param.HasField("top_k") else -1
        if p.save_output_param.output_directory or p.visualize:
            log.warning("layer '%s' (DetectionOutput): save_output_param and visualize are not supported", self.name)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        loc, conf, prior = (self.legacy_shape(s) for s in bottom[:3])
        if loc[0] != conf[0]:
            raise self.shape_error(f"location and confidence bottoms differ in num: {bottom[0]} vs {bottom[1]}")
        self._num, self._priors = loc[0], prior[2] // 4
        if self._priors * self._loc_classes * 4 != loc[1]:
            raise self.shape_error(
                f"location bottom {bottom[0]} needs {self._priors * self._loc_classes * 4} channels "
                f"for {self._priors} priors"
            )
        if self._priors * self._classes != conf[1]:
            raise self.shape_error(
                f"confidence bottom {bottom[1]} needs {self._priors * self._classes} channels "
                f"for {self._priors} priors and {self._classes} classes"
            )
        return [(1, 1, 1, 7)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        n, k, c, lc = self._num, self._priors, self._classes, self._loc_classes
        loc = self._array(bottom[0], n * k * lc * 4).reshape(n, k, lc, 4).transpose(0, 2, 1, 3)
        conf = self._array(bottom[1], n * k * c).reshape(n, k, c)
        prior = self._array(bottom[2], 2 * k * 4).reshape(2, k, 4)
        p = self.layer_param.detection_output_param
        boxes = decode_boxes(loc, prior[0], prior[1], p.code_type, p.variance_encoded_in_target)
        boxes = boxes.astype(np.float32).astype(np.float64)  # the fork keeps boxes as floats
        if p.clip:  # OpenCV's extension: clip to [0, 1] before NMS measures the boxes
            boxes = np.clip(boxes, 0.0, 1.0)
        rows = [self._image_rows(i, boxes[i], conf[i]) for i in range(n)]
        out = np.concatenate(rows) if any(len(r) for r in rows) else self._empty(n)
        top = torch.from_numpy(out.reshape(1, 1, -1, 7))
        return [top.to(dtype=bottom[0].dtype, device=bottom[0].device)]

    @staticmethod
    def _array(t: torch.Tensor, count: int) -> np.ndarray:
        """The first ``count`` values of ``t`` as float32 (the fork reads its blobs as flat arrays)."""
        return t.detach().reshape(-1)[:count].to(device="cpu", dtype=torch.float32).numpy()

    @staticmethod
    def _empty(num: int) -> np.ndarray:
        out = np.full((num, 7), -1.0)
        out[:, 0] = np.arange(num)
        return out

    def _image_rows(self, image: int, boxes: np.ndarray, conf: np.ndarray) -> np.ndarray:
        """(D, 7) rows of one image: classes in ascending order, each best score first."""
        p = self.layer_param.detection_output_param
        labels: list[int] = []
        priors: list[int] = []
        for label in range(self._classes):
            if label == p.background_label_id:
                continue
            loc_boxes = boxes[0 if p.share_location else label]
            keep = nms(
                loc_boxes, conf[:, label], self._threshold, p.nms_param.nms_threshold, p.nms_param.eta, self._top_k
            )
            labels += [label] * len(keep)
            priors += keep
        label_of, prior_of = np.array(labels, dtype=np.int64), np.array(priors, dtype=np.int64)
        scores = conf[prior_of, label_of]
        if -1 < p.keep_top_k < len(prior_of):
            best = np.sort(np.argsort(-scores, kind="stable")[: p.keep_top_k])
            best = best[np.lexsort((-scores[best], label_of[best]))]  # by class, then best score first
            label_of, prior_of, scores = label_of[best], prior_of[best], scores[best]
        out = np.empty((len(prior_of), 7))
        out[:, 0], out[:, 1], out[:, 2] = image, label_of, scores
        out[:, 3:] = boxes[0 if p.share_location else label_of, prior_of]
        return out
