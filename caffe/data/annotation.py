"""SSD's annotated records (``AnnotatedDatum``), as the weiliu89/caffe ``ssd`` fork's ``create_annoset`` makes them.

* :func:`annotated_datum`: an image (array or file bytes) and its boxes as an AnnotatedDatum: boxes grouped by
  class in the order the classes first appear, instance ids counted from 0 within each class;
* :func:`read_label_map` / :func:`label_map_names`: the fork's ``labelmap.prototxt`` (``item { name label
  display_name }``) and its name -> label dictionary;
* :func:`read_voc_xml`: a Pascal VOC annotation file's boxes, normalized by the ``size`` it records (pixel
  corners divided by width and height, as the fork does; ``difficult`` read wherever it stands in an object).
"""

from __future__ import annotations

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
        return float(text or "")
    except ValueError:
        raise DataError(f"{path}: <{tag}> is {text!r}, not a number") from None


def _int(node: ET.Element, tag: str, path: object) -> int:
    return int(_number(node, tag, path))
