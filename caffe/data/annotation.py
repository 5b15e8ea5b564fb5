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
  by the image's own size.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
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
    try:
        root = ET.fromstring(read_file(path, "annotation file"))
    except ET.ParseError as e:
        raise DataError(f"{path}: not a valid XML annotation file ({e})") from None
    width, height = _int(root, "size/width", path), _int(root, "size/height", path)
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: no valid image width/height ({width} x {height})")
    return [_voc_box(obj, names, width, height, path) for obj in root.iter("object")], width, height


def _voc_box(obj: ET.Element, names: dict[str, int], width: int, height: int, path: object) -> Box:
    name = (obj.findtext("name") or "").strip()
    if name not in names:
        raise DataError(f"{path}: unknown class name {name!r} (not in the label map)")
    corners = [_number(obj, f"bndbox/{k}", path) for k in ("xmin", "ymin", "xmax", "ymax")]
    difficult = (obj.findtext("difficult") or "0").strip() == "1"
    return Box(names[name], corners[0] / width, corners[1] / height, corners[2] / width, corners[3] / height, difficult)


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
    try:
        doc = json.loads(read_file(path, "annotation file"))
        image = doc.get("image") or {}
        height, width = int(image.get("height", image_size[0])), int(image.get("width", image_size[1]))
        objects = doc["annotation"]
        if height <= 0 or width <= 0:
            raise ValueError(f"no valid image width/height ({width} x {height})")
        boxes = []
        for obj in objects:
            name = str(obj["category_id"])
            if name not in names:
                raise ValueError(f"unknown category_id {name!r} (not in the label map)")
            x, y, w, h = (float(v) for v in obj["bbox"])
            corners = (x / width, y / height, (x + w) / width, (y + h) / height)
            if not all(map(math.isfinite, corners)):
                raise ValueError(f"bbox {obj['bbox']} is not finite")
            boxes.append(Box(names[name], *corners, bool(int(obj.get("iscrowd", 0)))))
        return boxes
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RecursionError) as e:  # JSON: ValueError
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise DataError(f"{path}: not a valid JSON annotation file ({detail})") from None


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
