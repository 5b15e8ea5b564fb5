"""``create_annoset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME``: images and Pascal VOC boxes -> an LMDB/LevelDB of
AnnotatedDatums, for SSD's AnnotatedData layer (the weiliu89/caffe ``ssd`` fork's ``convert_annoset``, which its
``scripts/create_annoset.py`` runs; also installed as ``caffe convert_annoset``).

``LISTFILE`` holds ``image annotation`` pairs (whitespace separated, relative to ``ROOTFOLDER``); each annotation
is, by ``--label_type``, a VOC XML file (``xml``, the default) or the fork's per-image JSON (``json``) whose class
names ``--label_map_file`` (the fork's labelmap prototxt) maps to labels, or text lines ``label xmin ymin xmax
ymax`` (``txt``, label numbers; no label map needed). An image whose annotation file does not exist is stored
without boxes, as the fork does (a background image). Records
are keyed ``%08d_<image>`` and hold the image as ``convert_imageset`` stores it (``--encoded``, ``--encode_type``,
``--resize_width/height``, ``--gray``) and its boxes normalized by the size the XML file records, grouped by class
(:mod:`caffe.data.annotation`). Reading, threads, shuffling (seeded: ``--random_seed``), ``--check_size`` and the
atomic database are ``convert_imageset``'s.

Refused with a message (the fork has them): ``--anno_type=classification``, ``--min_dim``/``--max_dim``. An
unknown class name or a malformed annotation file stops the conversion with an error naming the file (the fork
aborts too); an unreadable image is skipped with a warning, as in ``convert_imageset``.
The fork's Python wrapper's OUTDIR/EXAMPLEDIR symlink is not made.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any

from caffe.data.annotation import (
    Box,
    add_boxes,
    label_map_names,
    read_json_boxes,
    read_label_map,
    read_txt_boxes,
    read_voc_xml,
)
from caffe.errors import DataError
from caffe.layers.dense_image_data import read_pair_list
from caffe.proto import caffe_pb2 as pb
from caffe.tools.convert_imageset import (
    Converted,
    DatumConverter,
    ListEntry,
    add_image_flags,
    checked_options,
    image_options,
    join_root,
    listed_order,
)
from caffe.tools.flags import ToolParser, gflags_int, parse_flags
from caffe.tools.registry import command

log = logging.getLogger("caffe")

USAGE = """create_annoset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

Convert a set of images and annotations to the leveldb/lmdb format used as input for Caffe.
LISTFILE lines are 'relative/image.jpg relative/annotation.xml'."""


@dataclass
class AnnoEntry:
    name: str  # the image, as listed
    annotation: str  # its VOC XML file, as listed


LABEL_TYPES = ("xml", "json", "txt")


class AnnotationConverter:
    """An image (read as ``images`` reads it) and its boxes (``label_type``) as a serialized AnnotatedDatum of
    type BBOX (runs on worker threads)."""

    def __init__(self, images: DatumConverter, names: dict[str, int], label_type: str = "xml") -> None:
        self.images, self.names, self.label_type = images, names, label_type

    def __call__(self, entry: AnnoEntry) -> Converted:
        image = self.images(ListEntry(entry.name, 0))
        if image.payload is None:
            return image
        anno = pb.AnnotatedDatum(type=pb.AnnotatedDatum.BBOX, datum=pb.Datum.FromString(image.payload))
        add_boxes(anno, self._boxes(entry))
        return Converted(anno.SerializeToString(), image.shape)

    def _boxes(self, entry: AnnoEntry) -> list[Box]:
        path = join_root(self.images.root, entry.annotation)
        if not os.path.exists(path):
            log.info("%s: no annotation file %s: stored without boxes", entry.name, entry.annotation)
            return []
        if self.label_type == "xml":
            return read_voc_xml(path, self.names)[0]
        size = original_size(join_root(self.images.root, entry.name))
        if self.label_type == "json":
            return read_json_boxes(path, self.names, size)
        return read_txt_boxes(path, size)


def original_size(path: str) -> tuple[int, int]:
    """An image file's (height, width), read from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image's size ({e})") from None


def label_names(path: str, check_label: bool, label_type: str = "xml") -> dict[str, int]:
    """The label map's name -> label; ``check_label``: a label given to two names is an error too (``txt`` labels
    are numbers: no map needed)."""
    if not path and label_type == "txt":
        return {}
    if not path:
        raise DataError("--label_map_file is required (the fork's labelmap prototxt: item { name label })")
    names = label_map_names(read_label_map(path))
    if check_label and len(set(names.values())) != len(names):
        raise DataError(f"{path}: --check_label: a label is given to more than one name")
    return names


def create_annoset_db(
    root: str,
    list_file: str | os.PathLike,
    db_name: str | os.PathLike,
    *,
    label_map_file: str,
    check_label: bool = False,
    label_type: str = "xml",
    **options: Any,
) -> tuple[int, int]:
    """Write the database; returns (records written, images that could not be read). ``options``: convert_imageset's
    (:class:`~caffe.tools.convert_imageset.ImageOptions`)."""
    if label_type not in LABEL_TYPES:
        raise DataError(f"create_annoset --label_type: {label_type!r} is not one of {', '.join(LABEL_TYPES)}")
    names = label_names(label_map_file, check_label, label_type)
    o = checked_options(options, db_name)
    entries = [AnnoEntry(*r.payload) for r in read_pair_list(str(list_file))]
    entries = listed_order(entries, o.shuffle, o.random_seed, list_file)
    converter = AnnotationConverter(o.converter(root), names, label_type)
    return o.write(entries, converter, db_name, "create_annoset", list_file)


def _refused(args: argparse.Namespace) -> str | None:
    """What create_annoset does not do, of the fork's convert_annoset flags, or None."""
    if args.anno_type != "detection":
        return "--anno_type: only 'detection' (boxes); for classification records use convert_imageset"
    if args.min_dim or args.max_dim:
        return "--min_dim / --max_dim are not supported: use --resize_width and --resize_height"
    return None


@command("create_annoset", "convert images and VOC boxes to an LMDB/LevelDB of AnnotatedDatums (SSD)")
@command("convert_annoset", "the SSD fork's name of create_annoset")
def create_annoset(argv: list[str]) -> int:
    parser = ToolParser("create_annoset", USAGE)
    parser.add_argument("--anno_type", default="detection", help="The type of annotation: detection (only)")
    parser.add_argument("--label_type", default="xml", help="The type of annotation file format: xml, json or txt")
    parser.add_argument("--label_map_file", default="", help="A file with LabelMap protobuf message.")
    parser.add_bool("check_label", "When this option is on, check that there is no duplicated name/label.")
    parser.add_argument("--min_dim", type=gflags_int, default=0, help="(not supported)")
    parser.add_argument("--max_dim", type=gflags_int, default=0, help="(not supported)")
    add_image_flags(parser)
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    refused = _refused(args)
    if refused:
        raise DataError(f"create_annoset {refused}")
    create_annoset_db(
        args.root_folder,
        args.list_file,
        args.db_name,
        label_map_file=args.label_map_file,
        check_label=args.check_label,
        label_type=args.label_type,
        **image_options(args),
    )
    return 0
