"""The SSD fork's evaluation during training (weiliu89/caffe, branch ``ssd``): the DetectionEvaluate layer and
the mean average precision its solver computes from that layer's rows (``eval_type: "detection"``).

**DetectionEvaluate** takes DetectionOutput's rows (1, 1, D, 7) ``[image, class, score, xmin, ymin, xmax, ymax]``
and AnnotatedData's ground truth (1, 1, G, 8) ``[image, class, instance, xmin, ymin, xmax, ymax, difficult]``
and writes (1, 1, C + D', 5): first one row per class other than the background, ``[-1, class, ground-truth
boxes of the class, -1, -1]`` (difficult boxes counted only with ``evaluate_difficult_gt``), then one row per
detection, ``[image, class, score, tp, fp]``, images and classes ascending. D' counts the detections whose class
is not -1; rows of class -1 (DetectionOutput's rows for images without detections) and of image -1 are left
out. The ground truth ends at its first row of image -1.

Per image and class, the detections are taken best score first (ties in their input order) and each is
matched to the ground-truth box it overlaps most (the first of equal ones): a true positive when that overlap
is at least ``overlap_threshold`` and the box was not matched before, a false positive when it was (a
duplicate) or the overlap is lower; matched to a difficult box that is not evaluated, it is neither (0, 0).
A class the image has no ground truth for gives false positives, in their input order.

With ``name_size_file`` (``name height width`` per test image, in the database's order) both are compared in
pixels of the original image, as the fork does: clipped to the image and scaled, sizes and intersections
counted with +1 per side (so boxes that only touch overlap a little); ``resize_param`` FIT_LARGE_SIZE_AND_PAD
first undoes the padding. The fork's rule is kept: the file advances one line per image that has a row in the
detections (DetectionOutput gives every image one when none has a detection), and wraps after its last line.

The rows' average precision over a test pass (the fork's ComputeAP and TestDetection) is
:mod:`caffe.util.detection_ap`'s.
"""

from __future__ import annotations

import numpy as np
import torch

from caffe.blob import Shape
from caffe.data.bbox import apart, intersection, jaccard_matrix, project
from caffe.errors import CaffeError
from caffe.layer import Layer, register
from caffe.limits import read_text
from caffe.proto import caffe_pb2 as pb

#: One image's boxes by class: (K, 5) rows ``xmin, ymin, xmax, ymax`` and the score (detections) or the
#: difficult flag (ground truth), float32 as the fork keeps them.
ImageBoxes = dict[int, np.ndarray]


# ---------------------------------------------------------------------------- reading the bottoms
def group_boxes(rows: np.ndarray, columns: list[int], end_at_unknown_image: bool) -> dict[int, ImageBoxes]:
    """``{image: {class: boxes}}`` from a table's rows (in row order): the box ``columns`` and one more; rows of
    image -1 are skipped, or end the table with ``end_at_unknown_image`` (the fork's ground-truth rule)."""
    grouped: dict[int, dict[int, list[np.ndarray]]] = {}
    for row in rows:
        image = int(row[0])
        if image == -1:
            if end_at_unknown_image:
                break
            continue
        grouped.setdefault(image, {}).setdefault(int(row[1]), []).append(row[columns])
    return {i: {c: np.array(b, dtype=np.float32) for c, b in by_class.items()} for i, by_class in grouped.items()}


def read_name_sizes(path: str) -> list[tuple[int, int]]:
    """(height, width) of each image listed in a name-size file (``name height width`` per line)."""
    tokens = read_text(path, "name-size file").split()
    try:
        if len(tokens) % 3:
            raise ValueError(f"{len(tokens)} words")
        return [(int(tokens[k + 1]), int(tokens[k + 2])) for k in range(0, len(tokens), 3)]
    except ValueError as e:
        raise ValueError(f"{path}: expected 'name height width' per image ({e})") from None


# ---------------------------------------------------------------------------- boxes in pixels
def unpadded_window(resize: pb.ResizeParameter, height: int, width: int) -> np.ndarray:
    """The part of a FIT_LARGE_SIZE_AND_PAD input that shows a ``height`` x ``width`` image (normalized)."""
    new_h, new_w = np.float32(resize.height), np.float32(resize.width)
    aspect = np.float32(width) / np.float32(height)
    if aspect > new_w / new_h:
        pad = (new_h - new_w / aspect) / 2 / new_h
        return np.array([0, pad, 1, 1 - pad], dtype=np.float32)
    pad = (new_w - new_h * aspect) / 2 / new_w
    return np.array([pad, 0, 1 - pad, 1], dtype=np.float32)


def to_pixels(
    boxes: np.ndarray, size: tuple[int, int], resize: pb.ResizeParameter | None
) -> tuple[np.ndarray, np.ndarray]:
    """Normalized boxes (K, 4) in pixels of an original image of ``size`` (height, width), and their sizes
    counted as the fork does ((w + 1) * (h + 1), 0 for an inverted box)."""
    height, width = size
    if resize is not None and resize.resize_mode == pb.ResizeParameter.FIT_LARGE_SIZE_AND_PAD:
        window = unpadded_window(resize, height, width)
        moved, _ = project(window, boxes)
        boxes = np.where(apart(window, boxes, strict=False)[:, None], boxes, moved)  # the fork leaves those as they are
    scale = np.array([width, height, width, height], dtype=np.float32)
    pixels = (np.clip(boxes, 0, 1) * scale).astype(np.float32)
    w, h = pixels[:, 2] - pixels[:, 0], pixels[:, 3] - pixels[:, 1]
    one = np.float32(1 if width > 1 or height > 1 else 0)
    return pixels, np.where((w < 0) | (h < 0), np.float32(0), (w + one) * (h + one))


def pixel_jaccard(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(A, B) overlaps of boxes in pixels (each ``(boxes, sizes)`` from :func:`to_pixels`), the fork's
    JaccardOverlap of unnormalized boxes: the intersection also counts +1 per side."""
    out = np.zeros((len(a[0]), len(b[0])), dtype=np.float32)
    for i, (box, size) in enumerate(zip(*a, strict=True)):
        inter = intersection(box, b[0])
        iw, ih = inter[:, 2] - inter[:, 0] + 1, inter[:, 3] - inter[:, 1] + 1
        common = iw * ih
        np.divide(common, size + b[1] - common, out=out[i], where=(iw > 0) & (ih > 0))
    return out


# ---------------------------------------------------------------------------- matching
def match_detections(
    overlap: np.ndarray, difficult: np.ndarray, threshold: float, evaluate_difficult: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) of detections taken in row order against ground-truth boxes, from their overlaps (D, G)."""
    tp, fp = np.zeros(len(overlap), dtype=np.float32), np.zeros(len(overlap), dtype=np.float32)
    taken = np.zeros(overlap.shape[1], dtype=bool)
    for i, j in enumerate(overlap.argmax(axis=1)):
        if not overlap[i, j] >= threshold:
            fp[i] = 1
        elif difficult[j] and not evaluate_difficult:
            continue
        elif taken[j]:
            fp[i] = 1
        else:
            tp[i], taken[j] = 1, True
    return tp, fp


@register("DetectionEvaluate")
class DetectionEvaluateLayer(Layer):
    """SSD's evaluation rows (true and false positives per detection); see the module docstring. No backward."""

    exact_num_bottom, exact_num_top = 2, 1
    traceable = False  # data-dependent output size, computed on the CPU

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.detection_evaluate_param
        self.require(p.HasField("num_classes"), "detection_evaluate_param: must specify num_classes")
        self.require(p.overlap_threshold > 0, f"overlap_threshold must be positive, got {p.overlap_threshold:g}")
        self._background = int(p.background_label_id)
        self._classes = [c for c in range(p.num_classes) if c != self._background]
        self._sizes: list[tuple[int, int]] = []
        if p.HasField("name_size_file"):
            try:
                self._sizes = read_name_sizes(p.name_size_file)
            except (CaffeError, ValueError) as e:
                raise self.error(f"name_size_file: {e}") from None
        self._resize = p.resize_param if p.HasField("resize_param") else None
        if self._resize is not None:
            self._check_resize(self._resize)
        self._next_size = 0

    def _check_resize(self, resize: pb.ResizeParameter) -> None:
        self.require(
            resize.height > 0 and resize.width > 0, "resize_param needs a positive height and width (the net's input)"
        )
        self.require(
            resize.resize_mode != pb.ResizeParameter.FIT_SMALL_SIZE,
            "resize_param: resize_mode FIT_SMALL_SIZE is not supported (WARP, FIT_LARGE_SIZE_AND_PAD)",
        )

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        for shape, width, what in ((bottom[0], 7, "detections"), (bottom[1], 8, "ground truth")):
            if len(shape) != 4 or tuple(shape[:2]) != (1, 1) or shape[3] != width:
                raise self.shape_error(f"{what} must be (1, 1, N, {width}), got {tuple(shape)}")
        return [(1, 1, len(self._classes), 5)]  # the forward adds a row per detection

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        det, truth = (t.detach().to(device="cpu", dtype=torch.float32).numpy() for t in bottom)
        rows = self.evaluate(det.reshape(-1, 7), truth.reshape(-1, 8))
        top = torch.from_numpy(rows.reshape(1, 1, -1, 5))
        return [top.to(dtype=bottom[0].dtype, device=bottom[0].device)]

    def evaluate(self, det: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """The top's rows (C + D', 5) for detection rows (D, 7) and ground-truth rows (G, 8)."""
        detections = group_boxes(det, [3, 4, 5, 6, 2], end_at_unknown_image=False)
        boxes = group_boxes(truth, [3, 4, 5, 6, 7], end_at_unknown_image=True)
        for what, grouped in (("detections", detections), ("ground truth", boxes)):
            if any(self._background in by_class for by_class in grouped.values()):
                raise self.error(f"found the background class {self._background} in the {what}")
        rows = [self._class_rows(boxes)]
        for image in sorted(detections):
            rows.append(self._image_rows(image, detections[image], boxes.get(image, {})))
        out = np.zeros((len(self._classes) + int((det[:, 1] != -1).sum()), 5), dtype=np.float32)
        found = np.concatenate(rows)
        out[: len(found)] = found
        return out

    def _class_rows(self, boxes: dict[int, ImageBoxes]) -> np.ndarray:
        """``[-1, class, ground-truth boxes, -1, -1]`` for every class but the background."""
        evaluate_difficult = self.layer_param.detection_evaluate_param.evaluate_difficult_gt
        counts = dict.fromkeys(self._classes, 0)
        for by_class in boxes.values():
            for label, gt in by_class.items():
                if label in counts:
                    counts[label] += len(gt) if evaluate_difficult else int((gt[:, 4] == 0).sum())
        return np.array([[-1, c, counts[c], -1, -1] for c in self._classes], dtype=np.float32).reshape(-1, 5)

    def _take_size(self) -> tuple[int, int] | None:
        """The name-size file's next (height, width), or None without one."""
        if not self._sizes:
            return None
        size = self._sizes[self._next_size]
        self._next_size = (self._next_size + 1) % len(self._sizes)
        return size

    def _image_rows(self, image: int, detections: ImageBoxes, truth: ImageBoxes) -> np.ndarray:
        """``[image, class, score, tp, fp]`` of one image's detections, classes ascending."""
        size = self._take_size()
        rows = [np.zeros((0, 5), dtype=np.float32)]
        for label in sorted(detections):
            if label == -1:
                continue
            found = detections[label]
            if label in truth:
                found = found[np.argsort(-found[:, 4], kind="stable")]
                tp, fp = self._match(found, truth[label], size)
            else:
                tp, fp = np.zeros(len(found), dtype=np.float32), np.ones(len(found), dtype=np.float32)
            rows.append(np.stack([np.full(len(found), image), np.full(len(found), label), found[:, 4], tp, fp], 1))
        return np.concatenate(rows).astype(np.float32)

    def _match(self, found: np.ndarray, truth: np.ndarray, size: tuple[int, int] | None) -> tuple[np.ndarray, ...]:
        p = self.layer_param.detection_evaluate_param
        if size is None:
            overlap = jaccard_matrix(found[:, :4], truth[:, :4])
        else:
            overlap = pixel_jaccard(
                to_pixels(found[:, :4], size, self._resize), to_pixels(truth[:, :4], size, self._resize)
            )
        return match_detections(overlap, truth[:, 4] != 0, p.overlap_threshold, p.evaluate_difficult_gt)
