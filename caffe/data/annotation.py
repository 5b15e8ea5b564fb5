"""SSD's annotated records (``AnnotatedDatum``), as the weiliu89/caffe ``ssd`` fork's ``create_annoset`` makes them.

* :func:`annotated_datum`: an image (array or file bytes) and its boxes as an AnnotatedDatum: boxes grouped by
  class in the order the classes first appear, instance ids counted from 0 within each class;
* :func:`read_label_map` / :func:`label_map_names`: the fork's ``labelmap.prototxt`` (``item { name label
  display_name }``) and its name -> label dictionary;
* :func:`read_voc_xml`: a Pascal VOC annotation file's boxes, normalized by the ``size`` it records (pixel
  corners divided by width and height, as the fork does; ``difficult`` read wherever it stands in an object);
* :func:`read_json_boxes`: the fork's per-image JSON (its COCO scripts write them): ``image`` {``height``,
  ``width``} (else the image's own size), ``annotation`` [{``category_id`` (a label map name), ``bbox`` [x, y,
  width, height] in pixels, ``iscrowd`` (stored as difficult)}];
* :func:`read_txt_boxes`: plain text lines ``label xmin ymin xmax ymax`` (label numbers, pixel corners), normalized
  by the image's own size;
* :func:`read_voc_objects`, :func:`read_json_objects`, :func:`read_kitti_objects`: a VOC, JSON or DIGITS KITTI label
  file's objects by class *name*, corners in pixels (:class:`NamedBox`), for callers that map names themselves.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from caffe.data.datum import encode_image, image_to_raw_datum
from caffe.errors import CaffeError, DataError
from caffe.limits import read_file
from caffe.proto import caffe_pb2 as pb


@dataclass(frozen=True)
class Box:
    """One object: its class label and normalized corners."""

    label: int
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False


@dataclass(frozen=True)
class NamedBox:
    """One object as an annotation file names it: its class name and corners in pixels."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False

    def normalized(self, label: int, width: float, height: float) -> Box:
        """The object as a :class:`Box` of class ``label``, corners divided by ``width`` and ``height``."""
        x0, y0, x1, y1 = self.xmin / width, self.ymin / height, self.xmax / width, self.ymax / height
        return Box(label, x0, y0, x1, y1, self.difficult)


def annotated_datum(
    image: np.ndarray | bytes,
    boxes: Iterable[Box | Sequence[float]],
    *,
    encoding: str = "",
    label: int = 0,
    name: str = "<image>",
) -> pb.AnnotatedDatum:
    """An AnnotatedDatum of type BBOX.

    ``image``: an H x W (x C) uint8 OpenCV image, stored raw, or encoded as ``encoding`` (``"jpg"``, ``"png"``)
    when given; or an image file's bytes, stored as they are (encoded). ``boxes``: :class:`Box` or
    ``(label, xmin, ymin, xmax, ymax[, difficult])`` tuples. ``label``: the Datum's own label.
    """
    anno = pb.AnnotatedDatum(type=pb.AnnotatedDatum.BBOX)
    if isinstance(image, bytes):
        anno.datum.data, anno.datum.encoded = image, True
    elif encoding:
        anno.datum.data, anno.datum.encoded = encode_image(image, encoding, name), True
    else:
        anno.datum.CopyFrom(image_to_raw_datum(image, name=name))
    anno.datum.label = label
    add_boxes(anno, boxes)
    return anno


def add_boxes(anno: pb.AnnotatedDatum, boxes: Iterable[Box | Sequence[float]]) -> None:
    """Append boxes to ``anno``'s groups (a new group per new class), numbering instances within each group."""
    groups = {g.group_label: g for g in anno.annotation_group}
    for item in boxes:
        box = item if isinstance(item, Box) else Box(int(item[0]), *map(float, item[1:5]), *map(bool, item[5:6]))
        group = groups.get(box.label)
        if group is None:
            group = groups[box.label] = anno.annotation_group.add(group_label=box.label)
        instance = group.annotation[-1].instance_id + 1 if len(group.annotation) else 0
        a = group.annotation.add(instance_id=instance)
        a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = box.xmin, box.ymin, box.xmax, box.ymax
        a.bbox.difficult = box.difficult


def read_label_map(path: str | os.PathLike) -> pb.LabelMap:
    """The fork's label map prototxt; DataError naming the file when it does not parse."""
    from caffe.protoio import read_text

    try:
        return read_text(path, pb.LabelMap())
    except CaffeError as e:
        raise DataError(f"cannot read the label map: {e}") from None


def label_map_names(label_map: pb.LabelMap) -> dict[str, int]:
    """``name`` -> ``label`` of a label map; DataError for a name listed twice."""
    names: dict[str, int] = {}
    for item in label_map.item:
        if item.name in names:
            raise DataError(f"label map: the name {item.name!r} is listed twice")
        names[item.name] = int(item.label)
    return names


def read_voc_xml(path: str | os.PathLike, names: dict[str, int]) -> tuple[list[Box], int, int]:
    """A Pascal VOC XML file's boxes (normalized by its ``size``) and that width and height.

    DataError naming the file for a file that does not parse, a missing or zero size, an unknown class name.
    """
    objects, width, height = read_voc_objects(path, known=names)
    return [obj.normalized(names[obj.name], width, height) for obj in objects], width, height


def read_voc_objects(
    path: str | os.PathLike, max_bytes: int | None = None, known: Container[str] | None = None
) -> tuple[list[NamedBox], int, int]:
    """A Pascal VOC XML file's objects (class name, pixel corners, ``difficult``) and the width and height its
    ``size`` records; DataError naming the file for a file that does not parse, a missing or zero size, or (given
    ``known``) a class name not in ``known``."""
    try:
        root = ET.fromstring(read_file(path, "annotation file", max_bytes=max_bytes))
    except ET.ParseError as e:
        raise DataError(f"{path}: not a valid XML annotation file ({e})") from None
    width, height = _int(root, "size/width", path), _int(root, "size/height", path)
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: no valid image width/height ({width} x {height})")
    return [_voc_object(obj, path, known) for obj in root.iter("object")], width, height


def _voc_object(obj: ET.Element, path: object, known: Container[str] | None) -> NamedBox:
    name = (obj.findtext("name") or "").strip()
    if known is not None and name not in known:
        raise DataError(f"{path}: unknown class name {name!r} (not in the label map)")
    corners = [_number(obj, f"bndbox/{k}", path) for k in ("xmin", "ymin", "xmax", "ymax")]
    difficult = (obj.findtext("difficult") or "0").strip() == "1"
    return NamedBox(name, *corners, difficult)


def _number(node: ET.Element, tag: str, path: object) -> float:
    text = node.findtext(tag)
    try:
        value = float(text or "")
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{path}: <{tag}> is {text!r}, not a finite number")
    return value


def _int(node: ET.Element, tag: str, path: object) -> int:
    return int(_number(node, tag, path))


def read_json_boxes(path: str | os.PathLike, names: dict[str, int], image_size: tuple[int, int]) -> list[Box]:
    """The fork's per-image JSON annotation (see the module docstring); ``image_size``: the image's (height,
    width), used when the file records none. DataError naming the file for anything malformed."""
    objects, height, width = read_json_objects(path, image_size)
    unknown = next((obj.name for obj in objects if obj.name not in names), None)
    if unknown is not None:
        message = f"unknown category_id {unknown!r} (not in the label map)"
        raise DataError(f"{path}: not a valid JSON annotation file ({message})")
    return [obj.normalized(names[obj.name], width, height) for obj in objects]


def read_json_objects(
    path: str | os.PathLike, image_size: tuple[int, int], max_bytes: int | None = None
) -> tuple[list[NamedBox], int, int]:
    """The fork's per-image JSON annotation as objects (``category_id``, pixel corners, ``iscrowd`` as difficult)
    and the (height, width) they are measured in: the file's ``image`` size, else ``image_size``."""
    try:
        doc = json.loads(read_file(path, "annotation file", max_bytes=max_bytes))
        image = doc.get("image") or {}
        height, width = int(image.get("height", image_size[0])), int(image.get("width", image_size[1]))
        if height <= 0 or width <= 0:
            raise ValueError(f"no valid image width/height ({width} x {height})")
        return [_json_object(obj) for obj in doc["annotation"]], height, width
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RecursionError) as e:  # JSON: ValueError
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise DataError(f"{path}: not a valid JSON annotation file ({detail})") from None


def _json_object(obj: dict) -> NamedBox:
    x, y, w, h = (float(v) for v in obj["bbox"])
    if not all(map(math.isfinite, (x, y, x + w, y + h))):
        raise ValueError(f"bbox {obj['bbox']} is not finite")
    return NamedBox(str(obj["category_id"]), x, y, x + w, y + h, bool(int(obj.get("iscrowd", 0))))


def read_txt_boxes(path: str | os.PathLike, image_size: tuple[int, int]) -> list[Box]:
    """Plain text boxes ``label xmin ymin xmax ymax`` (whitespace separated, pixel corners), normalized by the
    image's (height, width) ``image_size``; reading stops at the first incomplete or non-numeric entry, as the
    fork's stream does."""
    height, width = image_size
    words = read_file(path, "annotation file").decode("utf-8", "replace").split()
    boxes = []
    for k in range(0, len(words) - 4, 5):
        try:
            label, corners = int(words[k]), [float(v) for v in words[k + 1 : k + 5]]
        except ValueError:
            break
        if not all(map(math.isfinite, corners)):
            raise DataError(f"{path}: box {words[k : k + 5]} is not finite")
        x0, y0, x1, y1 = corners
        boxes.append(Box(label, x0 / width, y0 / height, x1 / width, y1 / height))
    return boxes


KITTI_COLUMNS = 15  # type truncated occluded alpha left top right bottom h w l x y z rotation_y [score]


def read_kitti_objects(path: str | os.PathLike, max_bytes: int | None = None) -> list[NamedBox]:
    """DIGITS' KITTI label file (``<image stem>.txt``): one object a line, ``type truncated occluded alpha left top
    right bottom height width length x y z rotation_y [score]``, separated by spaces. As DIGITS, only the type
    (lower-cased) and the box corners (pixels) are used; blank lines are skipped. A line of fewer than 15 values or
    a corner that is not a finite number is a DataError naming ``file:line``; the file is read bounded."""
    return [_kitti_object(values, where) for values, where in _kitti_lines(path, max_bytes)]


def read_kitti_rows(path: str | os.PathLike, max_bytes: int | None = None) -> list[tuple[str, list[float]]]:
    """Every value of a KITTI label file: (type lower-cased, the 14 numbers after it: truncated occluded alpha left
    top right bottom height width length x y z rotation_y) per object, for DIGITS' DetectNet tables. The checks
    of :func:`read_kitti_objects`, and every number must be one."""
    rows = []
    for values, where in _kitti_lines(path, max_bytes):
        _kitti_object(values, where)
        try:
            numbers = [float(v) for v in values[1:KITTI_COLUMNS]]
        except ValueError:
            raise DataError(f"{where}: the values after the type must be numbers") from None
        rows.append((values[0].lower(), numbers))
    return rows


def _kitti_lines(path: str | os.PathLike, max_bytes: int | None) -> Iterator[tuple[list[str], str]]:
    """The non-blank lines of a KITTI label file, split, with ``file:line``; read bounded, UTF-8."""
    data = read_file(path, "label file", max_bytes=max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text label file (byte {e.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        values = line.split()
        if values:
            yield values, f"{path}:{lineno}"


def _kitti_object(values: list[str], where: str) -> NamedBox:
    if len(values) < KITTI_COLUMNS:
        raise DataError(f"{where}: {len(values)} values, a KITTI label line has {KITTI_COLUMNS} (type ... rotation_y)")
    try:
        corners = [float(v) for v in values[4:8]]
    except ValueError:
        corners = [math.nan]
    if not all(map(math.isfinite, corners)):
        raise DataError(f"{where}: the box (left top right bottom) {' '.join(values[4:8])!r} is not 4 finite numbers")
    return NamedBox(values[0].lower(), *corners)
