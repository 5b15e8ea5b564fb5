"""Normalized boxes for SSD's training data (the weiliu89/caffe ``ssd`` fork's rules, read from its sources).

Boxes are rows ``(xmin, ymin, xmax, ymax)`` of fractions of the image's width and height; an annotation
table (:data:`ROW`) adds the class, the instance id and the difficult flag around them. A box is empty
when its width or height is negative (area 0); stored ``size`` fields are not read, areas are recomputed.

* :func:`box_areas`, :func:`overlaps`, :func:`jaccard_matrix`: areas and intersection over union (the fork's
  BBoxSize and JaccardOverlap), for these layers, MultiBoxLoss's matching and DetectionOutput's NMS.
* :func:`project`: boxes seen from inside a window (a crop, or the canvas of an expansion), clipped to
  it; boxes that do not overlap it, or are left with no area, are dropped.
* :func:`emit_mask`: which boxes an :class:`EmitConstraint` lets through a window (centre inside it, or
  covered by more than ``emit_overlap`` of their own area).
* :func:`sample_windows`: the batch samplers' random crops that meet their sample constraints.
* :func:`resize_boxes`: boxes after a resize (WARP, FIT_LARGE_SIZE_AND_PAD).
"""

from __future__ import annotations

import math

import numpy as np

from caffe.proto import caffe_pb2 as pb

#: Columns of an annotation table: one box a row.
GROUP, INSTANCE, XMIN, YMIN, XMAX, YMAX, DIFFICULT = range(7)
ROW = 7
COORDS = slice(XMIN, YMAX + 1)

UNIT = np.array([0.0, 0.0, 1.0, 1.0])


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Width * height, 0 for an inverted box (the fork's BBoxSize of normalized boxes)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.where((w < 0) | (h < 0), 0.0, w * h)


def overlaps(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one box with each of ``boxes``; 0 where they do not overlap.

    Boxes are columns ``(xmin, ymin, xmax, ymax, area, ...)``: ``box`` (R,), ``boxes`` (R, K).
    """
    iw = np.minimum(boxes[2], box[2]) - np.maximum(boxes[0], box[0])
    ih = np.minimum(boxes[3], box[3]) - np.maximum(boxes[1], box[1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    return inter / np.where(inter > 0, box[4] + boxes[4] - inter, 1.0)


def empty_table() -> np.ndarray:
    return np.zeros((0, ROW))


def apart(window: np.ndarray, boxes: np.ndarray, strict: bool) -> np.ndarray:
    """Boxes entirely on one side of ``window`` (``strict``: boxes touching its edge count as overlapping)."""
    lo, hi = (np.greater, np.less) if strict else (np.greater_equal, np.less_equal)
    x0, y0, x1, y1 = boxes.T
    return lo(x0, window[2]) | hi(x1, window[0]) | lo(y0, window[3]) | hi(y1, window[1])


def intersection(window: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Each box's intersection with ``window`` (all zeros where they are apart), (K, 4)."""
    outside = apart(window, boxes, strict=True)
    inter = np.concatenate([np.maximum(boxes[:, :2], window[:2]), np.minimum(boxes[:, 2:], window[2:])], axis=1)
    inter[outside] = 0.0
    return inter


def jaccard_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) intersection over union of every box of ``a`` with every box of ``b``, in their dtype (the fork's
    JaccardOverlap: boxes that only touch, or are apart, overlap 0)."""
    columns_a = np.concatenate([a.T, box_areas(a)[None]])
    columns_b = np.concatenate([b.T, box_areas(b)[None]])
    return overlaps(columns_a[:, :, None], columns_b[:, None, :])


def coverage(boxes: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The part of each box's area that ``window`` covers."""
    size = box_areas(intersection(window, boxes))
    return np.divide(size, box_areas(boxes), out=np.zeros_like(size), where=size > 0)


def project(window: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``boxes`` in the coordinates of ``window``, clipped to [0, 1], and the mask of those kept: boxes that
    overlap the window and keep an area."""
    keep = ~apart(window, boxes, strict=False)
    size = np.tile(window[2:] - window[:2], 2)
    moved = np.clip((boxes - np.tile(window[:2], 2)) / size, 0.0, 1.0)
    return moved, keep & (box_areas(moved) > 0)


def emit_mask(window: np.ndarray, boxes: np.ndarray, emit: pb.EmitConstraint | None) -> np.ndarray:
    """Which boxes ``emit`` lets through ``window`` (all without a constraint)."""
    if emit is None:
        return np.ones(len(boxes), dtype=bool)
    if emit.emit_type == pb.EmitConstraint.CENTER:
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        return (cx >= window[0]) & (cx <= window[2]) & (cy >= window[1]) & (cy <= window[3])
    return coverage(boxes, window) > emit.emit_overlap


def crop_table(table: np.ndarray, window: np.ndarray, emit: pb.EmitConstraint | None) -> np.ndarray:
    """The annotation rows that survive cutting ``window`` out of the image, in its coordinates (row order kept)."""
    boxes = table[:, COORDS]
    moved, keep = project(window, boxes)
    keep &= emit_mask(window, boxes, emit)
    out = table[keep].copy()
    out[:, COORDS] = moved[keep]
    return out


def mirror_table(table: np.ndarray) -> np.ndarray:
    """The rows of a horizontally flipped image: x -> 1 - x (xmin and xmax swap)."""
    out = table.copy()
    out[:, XMIN], out[:, XMAX] = 1.0 - table[:, XMAX], 1.0 - table[:, XMIN]
    return out


# ---------------------------------------------------------------------------- resize policies
def resize_boxes(boxes: np.ndarray, param: pb.ResizeParameter, width: int, height: int) -> np.ndarray:
    """Boxes of a ``width`` x ``height`` image after ``param``'s resize: WARP clips them to the image;
    FIT_LARGE_SIZE_AND_PAD also moves them into the unpadded band (the fork's padding, unrounded)."""
    out = boxes.copy()
    out[:, :2] = np.maximum(out[:, :2], 0.0)
    out[:, 2:] = np.minimum(out[:, 2:], 1.0)
    if param.resize_mode != pb.ResizeParameter.FIT_LARGE_SIZE_AND_PAD:
        return out
    new_w, new_h = float(param.width), float(param.height)
    aspect = width / height
    if aspect > new_w / new_h:  # bands above and below
        pad = (new_h - new_w / aspect) / 2
        out[:, [1, 3]] = (pad + out[:, [1, 3]] * (new_h - 2 * pad)) / new_h
    else:
        pad = (new_w - aspect * new_h) / 2
        out[:, [0, 2]] = (pad + out[:, [0, 2]] * (new_w - 2 * pad)) / new_w
    return out


# ---------------------------------------------------------------------------- batch samplers
def sample_candidates(sampler: pb.Sampler, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random crops (count, 4) of the unit image: each a scale and an aspect ratio (kept within what
    fits), then a place."""
    scale = rng.uniform(sampler.min_scale, sampler.max_scale, count)
    ratio = np.clip(rng.uniform(sampler.min_aspect_ratio, sampler.max_aspect_ratio, count), scale**2, 1.0 / scale**2)
    w, h = scale * np.sqrt(ratio), scale / np.sqrt(ratio)
    x = rng.uniform(0.0, 1.0, count) * np.maximum(0.0, 1.0 - w)  # (w or h 1 + rounding)
    y = rng.uniform(0.0, 1.0, count) * np.maximum(0.0, 1.0 - h)
    return np.stack([x, y, x + w, y + h], axis=1)


def _overlap_areas(windows: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(W, B) areas of every window's intersection with every box (0 where they only touch or are apart)."""
    iw = np.minimum(windows[:, None, 2], boxes[None, :, 2]) - np.maximum(windows[:, None, 0], boxes[None, :, 0])
    ih = np.minimum(windows[:, None, 3], boxes[None, :, 3]) - np.maximum(windows[:, None, 1], boxes[None, :, 1])
    return np.where((iw > 0) & (ih > 0), iw * ih, 0.0)


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    return np.divide(part, whole, out=np.zeros_like(part), where=part > 0)


def constraint_mask(windows: np.ndarray, objects: np.ndarray, constraint: pb.SampleConstraint) -> np.ndarray:
    """Which ``windows`` meet ``constraint`` against one of the ground-truth ``objects`` (all, without bounds).

    Only the first kind of bound that is set decides (jaccard overlap, else the part of the window a box covers,
    else the part of a box the window covers), as in the fork: its search counts a box found once it passed the
    first kind, even when a later kind then fails. The SSD prototxts set one kind per sampler.
    """
    for low, high in (
        ("min_jaccard_overlap", "max_jaccard_overlap"),
        ("min_sample_coverage", "max_sample_coverage"),
        ("min_object_coverage", "max_object_coverage"),
    ):
        if not (constraint.HasField(low) or constraint.HasField(high)):
            continue
        if low == "min_jaccard_overlap":
            values = jaccard_matrix(windows, objects)
        elif low == "min_sample_coverage":  # the part of the window a box covers
            values = _share(_overlap_areas(windows, objects), box_areas(windows)[:, None])
        else:  # the part of a box the window covers
            values = _share(_overlap_areas(windows, objects), box_areas(objects)[None, :])
        ok = np.ones(values.shape, dtype=bool)
        if constraint.HasField(low):
            ok &= values >= getattr(constraint, low)
        if constraint.HasField(high):
            ok &= values <= getattr(constraint, high)
        return ok.any(axis=1)
    return np.ones(len(windows), dtype=bool)


def sample_windows(samplers: list[pb.BatchSampler], objects: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Every batch sampler's crops (of the whole image: ``use_original_image``) that meet its constraint: of
    ``max_trials`` draws, the first ``max_sample`` that do (all when unset). The draws are made at once and the
    first that pass kept: the same distribution as the fork's one-at-a-time search, which stops there."""
    found: list[np.ndarray] = []
    for sampler in samplers:
        if not sampler.use_original_image or not sampler.max_trials:
            continue
        windows = sample_candidates(sampler.sampler, int(sampler.max_trials), rng)
        passed = np.flatnonzero(constraint_mask(windows, objects, sampler.sample_constraint))
        if sampler.HasField("max_sample"):
            passed = passed[: sampler.max_sample]
        found += list(windows[passed])
    return found


def check_sampler(sampler: pb.BatchSampler, where: str) -> str | None:
    """What is wrong with a batch sampler's ranges, or None."""
    s = sampler.sampler
    if not 0.0 < s.min_scale <= s.max_scale <= 1.0:
        return f"{where}: sampler scales must satisfy 0 < min_scale <= max_scale <= 1, got {s.min_scale}, {s.max_scale}"
    if not 0.0 < s.min_aspect_ratio <= s.max_aspect_ratio < math.inf:
        return (
            f"{where}: sampler aspect ratios must satisfy 0 < min_aspect_ratio <= max_aspect_ratio (finite), got "
            f"{s.min_aspect_ratio}, {s.max_aspect_ratio}"
        )
    return None
