"""SegNet's ``DenseImageData`` (alexgkendall/caffe-segnet): images and their label images from a list file.

Semantics follow the fork's layer, read from its sources:

* ``dense_image_data_param.source`` lists ``image label_image`` pairs (whitespace separated), read relative
  to ``root_folder``; ``shuffle`` (every epoch), ``rand_skip``, ``batch_size``, ``is_color`` as ImageData's.
* The label image is read as grayscale; its pixel values are the labels (no mean, no scale). With
  ``new_height`` / ``new_width`` the image is resized bilinearly and the labels by nearest neighbour.
* ``mirror`` flips image and labels together (a coin per item), then ``crop_height`` / ``crop_width`` cut
  the same random window from both, in every phase (the fork draws them in TEST too).
* ``transform_param`` applies its mean and scale to the image only; its ``mirror`` and ``crop_size`` are
  refused (the fork stops on them: image and labels would be transformed differently).
* Tops: data (N, C, H, W) and labels (N, 1, H, W). Image and label image must have the same size; with
  ``batch_size: 1`` and no resize or crop, each batch takes its image's size.

Reading, prefetching, sharding across training processes and bounded file reads are ImageData's
(:mod:`caffe.layers.data`): the label image travels as one more channel of the item and is split off at
the end.
"""

from __future__ import annotations

import logging

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
from caffe.limits import read_text
from caffe.proto import caffe_pb2 as pb

log = logging.getLogger("caffe")


def read_pair_list(path: str) -> list[Record]:
    """The fork's list file: ``image label_image`` pairs (whitespace separated, any line layout)."""
    words = read_text(path, "image list").split()
    if len(words) % 2:
        raise DataError(f"{path}: expected 'image label_image' pairs, got an odd number of names ({len(words)})")
    return [Record((image, label), image) for image, label in zip(words[::2], words[1::2], strict=True)]


def with_label_plane(image: np.ndarray, labels: np.ndarray, label_path: str, image_name: str) -> Decoded:
    """An image (H x W or H x W x C) with its label map (H x W) as one more channel, the item the prefetcher
    carries for the segmentation data layers; the sizes must match."""
    image = image[:, :, None] if image.ndim == 2 else image
    if labels.shape[:2] != image.shape[:2]:
        raise DataError(
            f"{label_path}: label image {labels.shape[0]}x{labels.shape[1]} but image "
            f"{image_name} is {image.shape[0]}x{image.shape[1]}: input and label image sizes must match"
        )
    return Decoded(np.concatenate([image, labels[:, :, None]], axis=2), HWC, 0.0)


class DenseListSource(ImageListSource):
    """ImageData's list order (shuffle, rand_skip, shards) over ``dense_image_data_param``'s pairs; an item
    is the image with its label image as one more channel (H x W x C+1, uint8)."""

    param_field = "dense_image_data_param"

    @staticmethod
    def read_list(path: str) -> list[Record]:
        return read_pair_list(path)

    def decode(self, record: Record) -> Decoded:
        from caffe.data.datum import read_image

        image_name, label_name = record.payload
        image = read_image(self.root + image_name, self.height, self.width, self.is_color)
        labels = read_image(self.root + label_name, 0, 0, is_color=False)
        if self.height > 0:
            labels = cv2.resize(labels, (self.width, self.height), interpolation=cv2.INTER_NEAREST)
        return with_label_plane(image, labels, self.root + label_name, image_name)


class DenseTransformer(DataTransformer):
    """transform_param's mean and scale on the image channels; the fork's mirror and crop on image and
    labels alike (drawn per item like Caffe's transformer draws, so shards and restarts repeat them)."""

    places_batches = False  # its items are HWC images with their label plane: see place

    def __init__(self, param: pb.TransformationParameter, dense: pb.DenseImageDataParameter, phase: int, where: str,
                 shard: Shard = ALONE) -> None:  # fmt: skip
        if param.mirror or param.crop_size:
            raise DataError(
                f"{where}: transform_param mirror / crop_size would transform image and labels differently: "
                "use dense_image_data_param's mirror, crop_height and crop_width"
            )
        super().__init__(param, phase, where, shard)
        if (dense.crop_height == 0) != (dense.crop_width == 0):
            raise DataError(f"{where}: dense_image_data_param: crop_height and crop_width must be set together")
        self.crop_h, self.crop_w = int(dense.crop_height), int(dense.crop_width)
        self.flip = bool(dense.mirror)

    def check_item(self, channels: int, height: int, width: int, name: str = "") -> None:
        if self.crop_h and (height < self.crop_h or width < self.crop_w):
            raise DataError(
                f"{self.where}: {name}: crop {self.crop_h}x{self.crop_w} is larger than the image ({height}x{width})"
            )
        super().check_item(channels - 1, *self.output_shape(channels, height, width)[1:], name)

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        return (channels, self.crop_h, self.crop_w) if self.crop_h else (channels, height, width)

    @property
    def draws_per_item(self) -> int:
        return 3 if self.crop_h or self.flip else 0

    def draw(self, rng: np.random.Generator) -> tuple[float, float, bool]:
        if not self.draws_per_item:
            return 0.0, 0.0, False
        u_h, u_w, u_flip = self.shard.draws(rng, 1, 3)[0]
        return float(u_h), float(u_w), self.flip and bool(u_flip < 0.5)

    def place(self, item: np.ndarray, layout: str, out: np.ndarray, draw: tuple[float, float, bool]) -> tuple[int, int]:
        """Mirror, then crop, image and labels; mean and scale on the image; labels copied as they are."""
        height, width = item.shape[:2]
        if draw[2]:
            item = item[:, ::-1]
        size_h, size_w = out.shape[:2]
        h = int(draw[0] * (height - size_h + 1)) if self.crop_h else 0
        w = int(draw[1] * (width - size_w + 1)) if self.crop_h else 0
        window = item[h : h + size_h, w : w + size_w]
        image = np.empty((size_h, size_w, out.shape[2] - 1), dtype=np.float32)
        super().place(np.ascontiguousarray(window[:, :, :-1]), HWC, image, (0.0, 0.0, False))
        out[:, :, :-1] = image
        out[:, :, -1] = window[:, :, -1]
        return h, w


@register("DenseImageData")
class DenseImageDataLayer(ImageDataLayer):
    """SegNet's image + label-image data layer (``dense_image_data_param``); see the module docstring."""

    min_top, max_top = 2, 2

    def batch_size(self) -> int:
        return int(self.layer_param.dense_image_data_param.batch_size)

    def make_transformer(self, where: str) -> DataTransformer:
        p = self.layer_param.dense_image_data_param
        if p.mean_file:
            log.warning("%s: dense_image_data_param.mean_file is not read (as in the fork): use transform_param", where)
        return DenseTransformer(self.layer_param.transform_param, p, self.phase, where, self.shard)

    def make_source(self, rng: np.random.Generator) -> DenseListSource:
        previous = getattr(self, "source", None)  # a fast-forward's restart: the list is not read again
        return DenseListSource(self, rng, previous.records if previous is not None else None, self.shard)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        n, c, h, w = self._data_shape
        return [(n, c - 1, h, w), (n, 1, h, w)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        both = super().forward(bottom)[0]
        return [both[:, :-1].contiguous(), both[:, -1:].contiguous()]
