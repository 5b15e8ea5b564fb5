"""DetectNet's training data (NVIDIA/caffe, the Caffe that DIGITS ships): boxes in, grid labels out.

DIGITS keeps an object-detection dataset as two LMDBs with the same keys: the images (3-channel uint8
Datums) and their boxes, one float Datum of shape (1, max_boxes + 1, 16) per image. Row 0 is the header
``[number of boxes, 16, 0, ...]``; each following row is one KITTI object (:data:`BOX_FIELDS`), its box
as ``x, y, width, height`` in pixels. :func:`box_table` writes such an array, :func:`read_boxes` reads one.

``DetectNetTransformation`` augments an image and its boxes alike (:func:`draw_augmentation`,
:func:`transform_image`, :func:`transform_boxes`) and :class:`CoverageLabels` turns the boxes into one
label per grid cell of ``stride`` pixels. The fork computes in float32 with OpenCV, and so does this
module: its labels are the fork's to the bit, its images to OpenCV's rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from caffe.data.datum import array_to_datum, encode_image, image_to_raw_datum
from caffe.proto import caffe_pb2 as pb

#: The 16 values DIGITS stores per object (``GroundTruthObj.gt_to_lmdb_format``), in order.
BOX_FIELDS = (
    "x", "y", "width", "height", "alpha", "class", "scenario", "rotation_y",
    "truncated", "occluded", "length", "object_width", "object_height", "location_x", "location_y", "location_z",
)  # fmt: skip
BOX_WIDTH = len(BOX_FIELDS)
CLASS = BOX_FIELDS.index("class")

#: The label channels before the coverage channels: foreground, the box's corners relative to the cell's
#: top-left corner, its inverse size, the object's normalization weight.
LABEL_FIELDS = ("foreground", "x1", "y1", "x2", "y2", "inverse_width", "inverse_height", "obj_norm")

#: DIGITS' KITTI class numbers (``ObjectType``) by lower-cased type; any other type is 0, don't care.
KITTI_CLASSES = {
    "car": 1, "van": 2, "truck": 3, "bus": 4, "pickup": 5, "vehicle-with-trailer": 6, "special-vehicle": 7,
    "person": 8, "pedestrian": 8, "person-fa": 9, "person?": 10, "people": 11, "cyclist": 12, "tram": 13,
    "person_sitting": 14, "misc": 15,
}  # fmt: skip
#: The class names by number that a DetectNet dataset of DIGITS' KITTI classes lists (0: don't care).
KITTI_CLASS_NAMES = (
    "dontcare", "car", "van", "truck", "bus", "pickup", "vehicle-with-trailer", "special-vehicle", "pedestrian",
    "person-fa", "person?", "people", "cyclist", "tram", "person_sitting", "misc",
)  # fmt: skip

#: The most coverage channels a network's ``object_class`` may map to (the fork's nets use 1 or 2).
MAX_CLASSES = 1024

_F = np.float32
_EPS = _F(np.finfo(np.float32).eps)  # the fork's FLT_EPSILON


def box_table(boxes: np.ndarray, max_boxes: int) -> np.ndarray:
    """DIGITS' label array, (1, max_boxes + 1, 16) float32, for ``boxes`` (K, 16) (K <= max_boxes)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, BOX_WIDTH)
    if len(boxes) > max_boxes:
        raise ValueError(f"{len(boxes)} boxes do not fit a table of {max_boxes}")
    table = np.zeros((max_boxes + 1, BOX_WIDTH), dtype=np.float32)
    table[0, :2] = (len(boxes), BOX_WIDTH)
    table[1 : 1 + len(boxes)] = boxes
    return table[np.newaxis]


def kitti_box_rows(objects: list[tuple[str, list[float]]], classes: dict[str, int]) -> np.ndarray:
    """KITTI objects (type, the 14 numbers after it) as DIGITS' rows (K, 16) in its order: farthest first (by
    the depth ``z``, descending), so that nearer objects win the grid cells they share. ``classes``: type ->
    class number (others 0)."""
    rows = []
    for name, v in objects:
        truncated, occluded, alpha, left, top, right, bottom, height, width, length, x, y, z, rotation_y = v
        rows.append([
            left, top, right - left, bottom - top, alpha, classes.get(name, 0), 0, rotation_y,
            truncated, occluded, length, width, height, x, y, z,
        ])  # fmt: skip
    rows = sorted(rows, key=lambda r: r[-1])[::-1]
    return np.array(rows, dtype=np.float32).reshape(-1, BOX_WIDTH)


def plain_box_rows(boxes: list[tuple[int, float, float, float, float]]) -> np.ndarray:
    """Boxes ``(class, xmin, ymin, xmax, ymax)`` in pixels, of labels without KITTI's other fields (Pascal VOC,
    JSON), as DIGITS' rows (K, 16) in the given order: position, size and class, the other fields 0."""
    rows = np.zeros((len(boxes), BOX_WIDTH), dtype=np.float32)
    for row, (label, xmin, ymin, xmax, ymax) in zip(rows, boxes, strict=True):
        row[[0, 1, 2, 3, CLASS]] = (xmin, ymin, xmax - xmin, ymax - ymin, label)
    return rows


def record_key(index: int) -> bytes:
    """The key of a DetectNet dataset's ``index``-th record in both its databases (DIGITS': 9 digits)."""
    return f"{index:09d}".encode()


def detectnet_record(
    bgr: np.ndarray, rows: np.ndarray, max_boxes: int, encoding: str, name: str
) -> tuple[bytes, bytes]:
    """One image's two records, serialized: its features Datum (``bgr`` H x W x 3 uint8, encoded as ``encoding``,
    png or jpg, or raw for ``none``) and its labels Datum (the box table of ``rows`` with ``max_boxes`` rows)."""
    datum = image_to_raw_datum(bgr, 0, name)
    if encoding != "none":
        datum.ClearField("data")
        datum.data, datum.encoded = encode_image(bgr, encoding, name), True
    table = array_to_datum(box_table(rows, max_boxes).astype(np.float64))
    return datum.SerializeToString(), table.SerializeToString()


def read_boxes(values: np.ndarray) -> np.ndarray:
    """The boxes (K, 16) of one image's label blob (its values flattened); ValueError if it is not a table."""
    values = np.asarray(values, dtype=np.float32).ravel()
    if values.size < BOX_WIDTH:
        raise ValueError(f"a box table needs at least {BOX_WIDTH} values (its header row), got {values.size}")
    count, width = float(values[0]), float(values[1])
    if width != BOX_WIDTH:
        raise ValueError(f"the box table's header says rows of {width:g} values; DIGITS writes {BOX_WIDTH}")
    rows = values.size // BOX_WIDTH - 1
    if not (count == int(count) and 0 <= count <= rows):
        raise ValueError(f"the box table's header says {count:g} boxes; it has room for {rows}")
    return values[BOX_WIDTH : BOX_WIDTH * (1 + int(count))].reshape(-1, BOX_WIDTH).copy()


def _round(x: float) -> int:
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


@dataclass(frozen=True)
class Augmentation:
    """One image's draw: colour, then flip, scale (to ``scale``, width x height), rotation and crop."""

    scale: tuple[int, int]
    hue_rotation: float = 0.0  # degrees
    saturation: float = 1.0  # factor on the HSV saturation
    flip: bool = False
    rotation: float = 0.0  # degrees
    crop_offset: tuple[int, int] = (0, 0)  # top-left corner of the crop, in the scaled (and rotated) image

    @property
    def recolours(self) -> bool:
        return abs(self.hue_rotation) > _EPS or self.saturation < 1.0 - 1.0 / 255

    @property
    def rotates(self) -> bool:
        return abs(self.rotation) > _EPS


def test_augmentation(image_size: tuple[int, int]) -> Augmentation:
    """TEST's transformation: the image resized to the network's ``image_size`` (width, height), nothing else."""
    return Augmentation(scale=image_size)


def draw_augmentation(
    param: pb.DetectNetAugmentationParameter,
    size: tuple[int, int],
    image_size: tuple[int, int],
    uniform: Callable[[], float],
) -> Augmentation:
    """TRAIN's random draw for an image of ``size`` (width, height), as the fork draws it: each
    augmentation with its probability, in the fork's order; ``uniform`` gives numbers in [0, 1)."""
    hue, saturation, scale, rotation = 0.0, 1.0, size, 0.0
    if uniform() < param.hue_rotation_prob:
        hue = max(min((uniform() - 0.5) * 2 * param.hue_rotation, 180.0), -180.0)
    if uniform() < param.desaturation_prob:
        saturation = 1.0 - uniform() * param.desaturation_max
    flip = uniform() < param.flip_prob
    if uniform() < param.scale_prob:
        factor = float(_F(param.scale_min + (param.scale_max - param.scale_min) * uniform()))
        scale = (max(_round(size[0] * factor), 1), max(_round(size[1] * factor), 1))  # (the fork: 0 would fail)
    if uniform() < param.rotation_prob:
        rotation = float(_F((uniform() - 0.5) * 2 * param.max_rotate_degree))
    before_crop = rotated_size(scale, rotation) if abs(rotation) > _EPS else scale
    if uniform() < param.crop_prob:
        pct_x, pct_y = uniform(), uniform()
        shift_x, shift_y = int(param.shift_x), int(param.shift_y)
    else:
        pct_x = pct_y = 0.5
        shift_x = shift_y = 0
    offset = (
        _round(pct_x * (before_crop[0] - image_size[0] + shift_x) - shift_x // 2),
        _round(pct_y * (before_crop[1] - image_size[1] + shift_y) - shift_y // 2),
    )
    return Augmentation(scale, hue, saturation, flip, rotation, offset)


def rotated_size(size: tuple[int, int], degrees: float) -> tuple[int, int]:
    """The size of the upright box around ``size`` (width, height) turned by ``degrees`` (OpenCV's bounding
    rectangle of the turned rectangle, centred at the whole-pixel half size as the fork centres it)."""
    box = cv2.RotatedRect((float(size[0] // 2), float(size[1] // 2)), (float(size[0]), float(size[1])), degrees)
    _, _, w, h = box.boundingRect()
    return int(w), int(h)


def rotation_matrix(size: tuple[int, int], degrees: float) -> np.ndarray:
    """The 2x3 float32 affine map turning an image of ``size`` by ``degrees`` about its centre and moving it
    into its bounding rectangle (the fork's transformation matrix)."""
    w, h = float(size[0]), float(size[1])
    centre = (w * 0.5, h * 0.5)
    before = cv2.RotatedRect(centre, (w, h), 0.0).points()
    left, top, _, _ = cv2.RotatedRect(centre, (w, h), degrees).boundingRect()
    after = cv2.RotatedRect((centre[0] - left, centre[1] - top), (w, h), degrees).points()
    return cv2.getAffineTransform(np.float32(before[:3]), np.float32(after[:3])).astype(np.float32)  # 3 corners


def transform_image(
    image: np.ndarray, aug: Augmentation, image_size: tuple[int, int], mean: np.ndarray | None
) -> np.ndarray:
    """One image (H, W, 3) float32 BGR in [0, 255] as the network sees it, (image_size height, width, 3):
    scaled to [0, 1], recoloured in HSV, the mean (H, W, 3 or 3, in [0, 1]) subtracted, flipped, resized
    (bicubic), rotated (bilinear, zeros around), cropped (zeros outside), scaled back by 255."""
    img = image.astype(np.float32) / _F(255)
    if aug.recolours:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        if abs(aug.hue_rotation) > _EPS:
            hsv[..., 0] += _F(aug.hue_rotation)
        if aug.saturation < 1.0 - 1.0 / 255:
            hsv[..., 1] *= _F(aug.saturation)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mean is not None:
        img = img - mean
    if aug.flip:
        img = cv2.flip(img, 1)
    if (img.shape[1], img.shape[0]) != aug.scale:
        img = cv2.resize(img, aug.scale, interpolation=cv2.INTER_CUBIC)
    if aug.rotates:
        size = (img.shape[1], img.shape[0])
        bound = rotated_size(size, aug.rotation)
        turned = np.zeros((bound[1], bound[0], 3), dtype=np.float32)
        matrix = rotation_matrix(size, aug.rotation).astype(np.float64)
        img = cv2.warpAffine(img, matrix, bound, dst=turned, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    return _crop(img, image_size, aug.crop_offset) * _F(255)


def _crop(img: np.ndarray, size: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """The ``size`` (width, height) window of ``img`` at ``offset``, zeros where it leaves the image."""
    out = np.zeros((size[1], size[0], img.shape[2]), dtype=np.float32)
    x0, y0 = max(offset[0], 0), max(offset[1], 0)
    x1, y1 = min(offset[0] + size[0], img.shape[1]), min(offset[1] + size[1], img.shape[0])
    if x1 > x0 and y1 > y0:
        out[y0 - offset[1] : y1 - offset[1], x0 - offset[0] : x1 - offset[0]] = img[y0:y1, x0:x1]
    return out


def transform_boxes(boxes: np.ndarray, aug: Augmentation, size: tuple[int, int]) -> np.ndarray:
    """The boxes (K, 16) of an image of ``size`` (width, height) moved as :func:`transform_image` moves it:
    flipped (the fork's ``width - x - w - 1``), scaled, their centres turned (sizes kept), cropped."""
    out = np.array(boxes, dtype=np.float32).reshape(-1, BOX_WIDTH)
    x, y, w, h = (out[:, i] for i in range(4))
    if aug.flip:
        x[:] = _F(size[0]) - x - w - _F(1)
    if aug.scale != size:
        sx, sy = _F(aug.scale[0]) / _F(size[0]), _F(aug.scale[1]) / _F(size[1])
        x *= sx
        y *= sy
        w *= sx
        h *= sy
    if aug.rotates:
        matrix = rotation_matrix(aug.scale, aug.rotation)
        cx, cy = (x + (x + w)) * _F(0.5), (y + (y + h)) * _F(0.5)
        nx = matrix[0, 0] * cx + matrix[0, 1] * cy + matrix[0, 2]
        ny = matrix[1, 0] * cx + matrix[1, 1] * cy + matrix[1, 2]
        x[:] = nx - ((x + w) - cx)
        y[:] = ny - ((y + h) - cy)
    x -= _F(aug.crop_offset[0])
    y -= _F(aug.crop_offset[1])
    return out


def _intersect(a: tuple, b: tuple) -> tuple:
    """OpenCV's ``Rect_<float> & Rect_<float>`` on (x, y, w, h): empty is all zeros."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    w, h = min(a[0] + a[2], b[0] + b[2]) - x1, min(a[1] + a[3], b[1] + b[3]) - y1
    if a[2] <= 0 or a[3] <= 0 or b[2] <= 0 or b[3] <= 0 or w <= 0 or h <= 0:
        return (_F(0), _F(0), _F(0), _F(0))
    return (x1, y1, w, h)


def object_classes(param: pb.DetectNetGroundTruthParameter) -> dict[int, int]:
    """``object_class`` as {dataset class: coverage channel}, else the fork's default {1: 0} (KITTI's car);
    ValueError for a channel past MAX_CLASSES - 1 (both fields are unsigned)."""
    mapping = {int(m.src): int(m.dst) for m in param.object_class} or {1: 0}
    for src, dst in mapping.items():
        if dst >= MAX_CLASSES:
            raise ValueError(
                f"detectnet_groundtruth_param.object_class {{ src: {src} dst: {dst} }}: dst from 0 to {MAX_CLASSES - 1}"
            )
    return mapping


class CoverageLabels:
    """The fork's rectangular coverage generator: per grid cell, 8 values (:data:`LABEL_FIELDS`) and one
    coverage channel per output class. A cell that a box's coverage region (the box shrunk by ``scale_cvg``,
    its sides bounded by ``min_cvg_len`` or ``max_cvg_len``) overlaps gets that box; later boxes overwrite
    earlier ones (DIGITS stores them farthest first)."""

    def __init__(self, param: pb.DetectNetGroundTruthParameter) -> None:
        if param.stride <= 0:
            raise ValueError("detectnet_groundtruth_param.stride must be positive")
        if param.image_size_x <= 0 or param.image_size_y <= 0:
            raise ValueError("detectnet_groundtruth_param.image_size_x and image_size_y must be positive")
        self.param = param
        self.stride = _F(param.stride)
        inverse = _F(1.0 / param.stride)
        # the fork's grid: the image size times 1/stride, rounded to the nearest cell count
        self.grid = (int(np.rint(_F(param.image_size_x) * inverse)), int(np.rint(_F(param.image_size_y) * inverse)))
        if min(self.grid) < 1:
            raise ValueError(
                f"a {param.image_size_x}x{param.image_size_y} image has no grid cell of stride {param.stride}"
            )
        self.classes = object_classes(param)
        self.channels = len(LABEL_FIELDS) + max(self.classes.values()) + 1
        self.image = (_F(0), _F(0), _F(param.image_size_x), _F(param.image_size_y))
        self.min_obj_norm = _F(0) if param.obj_norm else _F(1)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, grid height, grid width)."""
        return self.channels, self.grid[1], self.grid[0]

    def _kept(self, boxes: np.ndarray) -> list[tuple]:
        kept = []
        for row in boxes:
            box = tuple(_F(v) for v in row[:4])
            if self.param.crop_bboxes:
                box = _intersect(box, self.image)
            cls = float(row[CLASS])
            if cls < 0 or int(cls) not in self.classes or box[2] * box[3] < _EPS:
                continue
            kept.append((box, self.classes[int(cls)]))
        return kept

    def _region(self, box: tuple) -> tuple:
        """The coverage rectangle of ``box``: centred on it, sized by ``scale_cvg`` and the gridbox rule."""
        x, y, w, h = box
        cx, cy = (x + (x + w)) * _F(0.5), (y + (y + h)) * _F(0.5)
        scale = _F(self.param.scale_cvg)
        sw, sh = w * scale, h * scale
        if self.param.gridbox_type == pb.DetectNetGroundTruthParameter.GRIDBOX_MIN:
            least = _F(self.param.min_cvg_len)
            sw, sh = min(w, max(least, sw)), min(h, max(least, sh))
        else:
            most = _F(self.param.max_cvg_len)
            sw, sh = min(most, sw), min(most, sh)
        hw, hh = sw * _F(0.5), sh * _F(0.5)
        ax, ay, bx, by = cx + hw, cy + hh, cx - hw, cy - hh
        return (min(ax, bx), min(ay, by), abs(ax - bx), abs(ay - by))

    def generate(self, boxes: np.ndarray) -> np.ndarray:
        """The label (channels, grid height, grid width) float32 of one image's boxes (K, 16)."""
        label = np.zeros(self.shape, dtype=np.float32)
        cell_area = _F(self.param.stride * self.param.stride)
        grid_w, grid_h = self.grid
        for box, channel in self._kept(boxes):
            region = self._region(box)
            area = region[2] * region[3]
            norm = max(self.min_obj_norm, cell_area / area) if area > 0 else _F(np.inf)
            gx0 = max(math.floor(region[0] / self.stride), 0)
            gy0 = max(math.floor(region[1] / self.stride), 0)
            gx1 = min(math.ceil((region[0] + region[2]) / self.stride), grid_w)
            gy1 = min(math.ceil((region[1] + region[3]) / self.stride), grid_h)
            x, y, w, h = box
            for gy in range(gy0, gy1):
                for gx in range(gx0, gx1):
                    left, top = _F(gx) * self.stride, _F(gy) * self.stride
                    part = _intersect(region, (left, top, self.stride, self.stride))
                    if part[2] * part[3] / cell_area <= _EPS:
                        continue
                    label[len(LABEL_FIELDS) :, gy, gx] = 0
                    label[len(LABEL_FIELDS) + channel, gy, gx] = 1
                    label[:8, gy, gx] = (
                        1, x - left, y - top, (x + w) - left, (y + h) - top,
                        _F(1.0 / float(w)), _F(1.0 / float(h)), norm,
                    )  # fmt: skip
        return label
