"""``SegmentationModel``: a deployable semantic segmentation net (SegNet, ENet, FCN, PSPNet style).

It is a :class:`~caffe.deploy.model.DeployModel` (the same files, labels, mean and
:class:`~caffe.deploy.preprocess.Preprocessing`) whose output holds N x C x H x W class scores (or
probabilities: a final Softmax changes no argmax). :meth:`SegmentationModel.segment` gives each image's
class map: the argmax over C (ties: the lower class), resized back to the ORIGINAL image's size by nearest
neighbour (output pixel ``floor((y + 0.5) * H / height)`` for image row ``y``, and so for columns), since
the input is the image squashed to the net's size. Images are squashed with OpenCV's bilinear
interpolation, as SegNet's and ENet's scripts do (``Settings.interpolation`` overrides).

:func:`palette` is the PASCAL VOC colour map (class 0 black); :func:`overlay` blends it over the image.
:func:`is_segmenter` tells a dense-prediction output (``caffe serve`` offers ``/segment`` for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from caffe.deploy.errors import ModelFilesError
from caffe.deploy.model import DeployModel


def palette(classes: int) -> np.ndarray:
    """``classes`` x 3 uint8 RGB colours: the PASCAL VOC colour map (the bits of the class number spread
    over the high bits of R, G and B), so class 0 is black and neighbouring classes differ clearly."""
    ids = np.arange(classes, dtype=np.int64)
    colours = np.zeros((classes, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            colours[:, channel] |= bit << (7 - shift)
    return colours.astype(np.uint8)


def overlay(pixels: np.ndarray, classes: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """H x W x 3 uint8 RGB ``pixels`` with the colour of each pixel's class blended in at ``alpha``."""
    colours = palette(int(classes.max()) + 1)[classes]
    rgb = pixels if pixels.shape[2] == 3 else np.repeat(pixels, 3, axis=2)
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def nearest_resize(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """An h x w class map at ``height`` x ``width`` by nearest neighbour (pixel centres; see the module)."""
    h, w = labels.shape
    rows = (2 * np.arange(height, dtype=np.int64) + 1) * h // (2 * height)  # exact: ties are not rounded away
    cols = (2 * np.arange(width, dtype=np.int64) + 1) * w // (2 * width)
    return labels[rows][:, cols]


def class_map_dtype(classes: int) -> type[np.unsignedinteger[Any]]:
    """uint8 when every class number fits (at most 256 classes), else uint16."""
    return np.uint8 if classes <= 256 else np.uint16


def is_segmenter(net: Any, output: str | None = None) -> bool:
    """Whether the net's ``output`` (default: its last) is a dense prediction: N x C x H x W with more than one
    class and more than one pixel (a classifier's N x K x 1 x 1 is not)."""
    shape = tuple(net.blobs[output or net.outputs[-1]].shape)
    return len(shape) == 4 and shape[1] > 1 and shape[2] * shape[3] > 1


def class_counts(labels: np.ndarray) -> list[tuple[int, int]]:
    """``(class, pixels)`` of each class present in a class map, by class number."""
    values, counts = np.unique(labels, return_counts=True)
    return [(int(v), int(c)) for v, c in zip(values, counts, strict=True)]


class SegmentationModel(DeployModel):
    """A segmentation net with its preprocessing and labels (see the module); arguments as
    :class:`DeployModel`'s. An output that is not N x C x H x W is a ModelFilesError."""

    interpolation = "opencv"

    def count_classes(self) -> int:
        """The output's channels (at most 65536)."""
        shape = tuple(self.net.blobs[self.output].shape)
        if len(shape) != 4:
            raise ModelFilesError(
                f"{self.files.deploy}: output '{self.output}' has shape {shape}; a segmentation net gives N x C x H x W"
            )
        if shape[1] > 65536:
            raise ModelFilesError(f"{self.files.deploy}: output '{self.output}' has {shape[1]} classes, over 65536")
        return int(shape[1])

    def normalization(self) -> tuple[bool, str]:
        """No softmax: the class is the argmax over the channels."""
        return False, f"output '{self.output}' holds per-pixel class scores: argmax over {self.classes} channels"

    def segment(self, images: Sequence[np.ndarray], batch_size: int = 4) -> list[np.ndarray]:
        """The class maps (uint8 or uint16, see :func:`class_map_dtype`) of H x W x C uint8 images, each at
        its image's size, ``batch_size`` per forward."""
        prep = self.preprocessing
        maps: list[np.ndarray] = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            scores = self.run(np.stack([prep.to_input(prep.resize(im)) for im in chunk]))
            for im, s in zip(chunk, scores[: len(chunk)], strict=True):
                maps.append(self.class_map(s, im.shape[0], im.shape[1]))
        return maps

    def class_map(self, scores: np.ndarray, height: int, width: int) -> np.ndarray:
        """One image's C x H x W output scores -> its class map at ``height`` x ``width``."""
        labels = np.argmax(scores, axis=0).astype(class_map_dtype(self.classes))
        return nearest_resize(labels, height, width)

    def describe(self) -> dict[str, Any]:
        """:meth:`DeployModel.describe` with ``kind``."""
        return {**super().describe(), "kind": "segmentation"}
