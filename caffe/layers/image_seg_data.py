"""DeepLab's ``ImageSegData`` (deeplab-public-ver2, and PSPNet's Caffe built on it): images and label maps.

Semantics follow the fork's layer and its ``TransformImgAndSeg``, read from PSPNet's copy of them:

* ``image_data_param.source`` lists one item per line: ``image label_image`` (``label_type: PIXEL``),
  ``image class`` (``IMAGE``, the default: the label map is filled with that number) or ``image`` (``NONE``: the
  label map is ``ignore_label``); names are read relative to ``root_folder``. ``shuffle``, ``rand_skip``,
  ``batch_size`` and ``is_color`` are ImageData's. With ``new_height`` / ``new_width`` image and label image are
  both resized bilinearly (the fork reads both through the same resizing reader). Label maps are 8-bit, so a
  class or ``ignore_label`` outside 0-255 saturates, as OpenCV does in the fork.
* ``transform_param`` per item, in the fork's order: a scale from ``scale_factors`` (one drawn per item; the
  image resized bilinearly and the labels by nearest neighbour to ``int(H * s) x int(W * s)``); padding at the
  bottom and right up to the crop (the image with the mean values, 0 without them, the labels with
  ``ignore_label``); a crop of ``crop_size``, or ``crop_height`` x ``crop_width`` (random in TRAIN, centred in
  TEST); a mirror (``mirror``: a coin per item in every phase, as the fork draws it); then ``(pixel - mean_value)
  * scale`` on the image. ``mean_file`` is refused, as the fork refuses it; without a crop, scale factors other
  than 1 are refused (the fork sizes its tops by the first image and stops on any other size).
* Tops: data (N, C, H, W), labels (N, 1, H, W) and, third, each item's image size before scaling, clipped to the
  data's (N, 1, 1, 2: height, width), which DeepLab's test nets use to cut predictions back to the image.

Reading, prefetching, sharding and bounded reads are ImageData's (:mod:`caffe.layers.data`), as for SegNet's
:mod:`~caffe.layers.dense_image_data`: the label map travels as one more channel of the item.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from caffe.blob import Shape
from caffe.data.prefetch import Decoded, Record
from caffe.data.shard import ALONE, Shard
from caffe.data.transform import HWC, DataTransformer
from caffe.errors import DataError
from caffe.layer import register
from caffe.layers.data import ImageDataLayer, ImageListSource
from caffe.layers.dense_image_data import with_label_plane
from caffe.limits import check_blob, read_text
from caffe.proto import caffe_pb2 as pb

ImageParam = pb.ImageDataParameter


def read_seg_list(path: str, label_type: int) -> list[Record]:
    """The fork's list file: per line the image and, unless ``label_type`` is NONE, its label column."""
    records = []
    for number, line in enumerate(read_text(path, "image list").splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if label_type != ImageParam.NONE and len(words) < 2:
            kind = "label image" if label_type == ImageParam.PIXEL else "class number"
            raise DataError(f"{path}:{number}: expected 'image {kind}', got {line.strip()!r}")
        label = words[1] if label_type != ImageParam.NONE else ""
        if label_type == ImageParam.IMAGE:
            try:
                int(label)
            except ValueError:
                raise DataError(f"{path}:{number}: the class {label!r} is not an integer") from None
        records.append(Record((words[0], label), words[0]))
    return records


def _saturate(value: int) -> int:
    """A number as OpenCV writes it into an 8-bit map."""
    return min(max(int(value), 0), 255)


class SegListSource(ImageListSource):
    """ImageData's list order over ``image_data_param``'s lines; an item is the image with its label map as one
    more channel (H x W x C+1, uint8)."""

    def __init__(self, layer: ImageSegDataLayer, *args: object, **kwargs: object) -> None:
        p = layer.layer_param.image_data_param
        self.label_type, self.ignore = int(p.label_type), _saturate(p.ignore_label)
        super().__init__(layer, *args, **kwargs)  # type: ignore[arg-type]

    def read_list(self, path: str) -> list[Record]:  # type: ignore[override]
        return read_seg_list(path, self.label_type)

    def decode(self, record: Record) -> Decoded:
        from caffe.data.datum import read_image

        image_name, label = record.payload
        image = read_image(self.root + image_name, self.height, self.width, self.is_color)
        if self.label_type == ImageParam.PIXEL:
            labels = read_image(self.root + label, 0, 0, is_color=False)
            if self.height > 0:
                labels = cv2.resize(labels, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        else:
            value = _saturate(int(label)) if self.label_type == ImageParam.IMAGE else self.ignore
            labels = np.full(image.shape[:2], value, dtype=np.uint8)
        return with_label_plane(image, labels, self.root + label, image_name)


class SegTransformer(DataTransformer):
    """DeepLab's TransformImgAndSeg (see the module docstring); drawn per item like Caffe's transformer draws,
    so shards and restarts repeat them. ``place_item`` returns the item's size for the third top."""

    places_batches = False  # its items are HWC images with their label plane: see place

    def __init__(self, param: pb.TransformationParameter, image: pb.ImageDataParameter, phase: int, where: str,
                 shard: Shard = ALONE) -> None:  # fmt: skip
        if param.mean_file:
            raise DataError(f"{where}: ImageSegData does not read transform_param.mean_file (use mean_value)")
        if param.HasField("crop_size") and (param.HasField("crop_height") or param.HasField("crop_width")):
            raise DataError(f"{where}: transform_param: give crop_size or crop_height and crop_width, not both")
        if param.HasField("crop_height") != param.HasField("crop_width"):
            raise DataError(f"{where}: transform_param: crop_height and crop_width must be given together")
        own = pb.TransformationParameter()
        own.CopyFrom(param)
        own.ClearField("crop_size")
        own.ClearField("mirror")  # the base class keeps the mean and scale; the crop and mirror are done here
        super().__init__(own, phase, where, shard)
        size = int(param.crop_size)
        self.crop_h, self.crop_w = (size, size) if size else (int(param.crop_height), int(param.crop_width))
        self.flip = bool(param.mirror)
        self.factors = [float(f) for f in param.scale_factors]
        if not self.crop_h and any(f != 1 for f in self.factors):
            raise DataError(f"{where}: scale_factors other than 1 need a crop (every item of a batch has its size)")
        if any(not np.isfinite(f) or f <= 0 for f in self.factors):
            raise DataError(f"{where}: scale_factors must be positive, got {self.factors}")
        self.ignore = _saturate(image.ignore_label)
        self.resizes_items = bool(self.crop_h)  # items of any size are padded and cropped to the crop

    def check_item(self, channels: int, height: int, width: int, name: str = "") -> None:
        super().check_item(channels - 1, *self.output_shape(channels, height, width)[1:], name)

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        return (channels, self.crop_h, self.crop_w) if self.crop_h else (channels, height, width)

    @property
    def draws_per_item(self) -> int:
        return 4 if self.crop_h or self.flip or self.factors else 0

    def draw(self, rng: np.random.Generator) -> tuple[float, ...]:
        if not self.draws_per_item:
            return 0.0, 0.0, 0.0, False
        u_scale, u_h, u_w, u_flip = self.shard.draws(rng, 1, 4)[0]
        return float(u_scale), float(u_h), float(u_w), self.flip and bool(u_flip < 0.5)

    def _pad_values(self, channels: int) -> list[float]:
        if self.mean_values is None:
            return [0.0] * channels
        return [float(v) for v in np.broadcast_to(self.mean_values, (channels,))]

    def place(self, item: np.ndarray, layout: str, out: np.ndarray, draw: tuple) -> tuple[int, int]:
        """Scale, pad, crop and mirror image and labels; mean and scale on the image; labels as they are."""
        image, labels = item[:, :, :-1], item[:, :, -1]
        if self.factors:
            factor = self.factors[min(int(draw[0] * len(self.factors)), len(self.factors) - 1)]
            if factor != 1:
                size = (int(image.shape[1] * factor), int(image.shape[0] * factor))
                if min(size) < 1:
                    raise DataError(f"{self.where}: scale factor {factor:g} leaves a {size[1]}x{size[0]} image")
                check_blob((size[1], size[0], item.shape[2]), 8, f"{self.where}: the image scaled by {factor:g}")
                image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR).reshape(size[1], size[0], -1)
                labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        image = image.astype(np.float64)
        height, width = labels.shape
        size_h, size_w = out.shape[:2]
        pad_h, pad_w = max(size_h - height, 0), max(size_w - width, 0)
        if pad_h or pad_w:
            image = np.concatenate(  # channel by channel: cv2 pads at most 4 channels with a value each
                [
                    cv2.copyMakeBorder(image[:, :, c], 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=v)[:, :, None]
                    for c, v in enumerate(self._pad_values(image.shape[2]))
                ],
                axis=2,
            )
            labels = cv2.copyMakeBorder(labels, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.ignore)
            height, width = labels.shape
        if self.crop_h and self.train:
            h, w = int(draw[1] * (height - size_h + 1)), int(draw[2] * (width - size_w + 1))
        else:
            h, w = (height - size_h) // 2, (width - size_w) // 2
        image, labels = image[h : h + size_h, w : w + size_w], labels[h : h + size_h, w : w + size_w]
        if draw[3]:
            image, labels = image[:, ::-1], labels[:, ::-1]
        normalized = np.empty((size_h, size_w, out.shape[2] - 1), dtype=np.float32)
        super().place(np.ascontiguousarray(image, dtype=np.float32), HWC, normalized, (0.0, 0.0, False))
        out[:, :, :-1] = normalized
        out[:, :, -1] = labels
        return h, w

    def place_item(self, item: Decoded, out: np.ndarray, draw: tuple, name: str) -> np.ndarray:
        self.place(item.array, item.layout, out, draw)
        height, width = item.array.shape[:2]
        return np.array([min(out.shape[0], height), min(out.shape[1], width)], dtype=np.float32)

    def new_labels(self, n: int) -> np.ndarray:
        return np.empty((n, 2), dtype=np.float32)

    def labels_tensor(self, labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(labels.reshape(-1, 1, 1, 2))


@register("ImageSegData")
class ImageSegDataLayer(ImageDataLayer):
    """DeepLab's image + label-map data layer (``image_data_param``); see the module docstring."""

    min_top, max_top = 2, 3

    def make_transformer(self, where: str) -> DataTransformer:
        p = self.layer_param.image_data_param
        return SegTransformer(self.layer_param.transform_param, p, self.phase, where, self.shard)

    def make_source(self, rng: np.random.Generator) -> SegListSource:
        previous = getattr(self, "source", None)  # a fast-forward's restart: the list is not read again
        return SegListSource(self, rng, previous.records if previous is not None else None, self.shard)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        n, c, h, w = self._data_shape
        return [(n, c - 1, h, w), (n, 1, h, w), (n, 1, 1, 2)][: len(self.tops)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        both, dims = super().forward(bottom)[:2]
        return [both[:, :-1].contiguous(), both[:, -1:].contiguous(), dims][: len(self.tops)]
