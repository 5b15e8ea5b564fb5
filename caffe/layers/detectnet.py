"""DetectNet's training layers, from NVIDIA/caffe (the Caffe that DIGITS ships).

* ``DetectNetTransformation`` -- bottoms: images (N, 3, H, W) in [0, 255] and DIGITS' box tables (N, 1, rows,
  16); tops: the images the network sees (N, 3, image_size_y, image_size_x) and their grid labels (N, 8 +
  classes, grid height, grid width). In TRAIN each image is augmented at random
  (``detectnet_augmentation_param``: hue, saturation, flip, scale, rotation, crop and shift), in TEST it is
  resized to the network's size; the boxes follow, then become labels (``detectnet_groundtruth_param``; the
  maths in :mod:`caffe.data.detectnet`). The mean (``transform_param``'s ``mean_value`` or ``mean_file``) is
  subtracted before the spatial steps, so the borders that rotation and cropping add are the mean.
* ``L1Loss`` -- ``sum |a - b| / N``, gradient ``sign(a - b) / N`` to both bottoms (0 where they are equal).

The random draws come from torch's generator (``caffe.set_random_seed``; snapshots keep its state), one
sequence per image in the fork's order, all made in the net's thread; the images are then transformed on the
layer's threads (one per core), so the results do not depend on the thread count.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from caffe.blob import Shape
from caffe.data.detectnet import (
    Augmentation,
    CoverageLabels,
    draw_augmentation,
    read_boxes,
    test_augmentation,
    transform_boxes,
    transform_image,
)
from caffe.data.transform import load_mean
from caffe.errors import DataError
from caffe.layer import Layer, register
from caffe.layers.loss import EuclideanLossLayer, LossLayer
from caffe.limits import check_blob
from caffe.proto import caffe_pb2 as pb
from caffe.util.threads import default_threads

TRAIN = pb.TRAIN


def _uniform() -> float:
    return float(torch.rand((), dtype=torch.float64))


@register("DetectNetTransformation")
class DetectNetTransformationLayer(Layer):
    """DIGITS' DetectNet data step: augmented images and their grid labels (see the module docstring)."""

    exact_num_bottom, exact_num_top = 2, 2
    traceable = False  # per-image OpenCV work and random draws
    draws_random = True

    def layer_setup(self, bottom: list[Shape]) -> None:
        g = self.layer_param.detectnet_groundtruth_param
        try:
            self.coverage = CoverageLabels(g)
        except ValueError as e:
            raise self.error(str(e)) from None
        self.image_size = (int(g.image_size_x), int(g.image_size_y))
        self.augmentation = a = self.layer_param.detectnet_augmentation_param
        for field in a.DESCRIPTOR.fields:
            value = getattr(a, field.name)
            self.require(math.isfinite(value), f"detectnet_augmentation_param.{field.name} must be finite, got {value}")
        self.require(
            a.scale_prob <= 0 or 0 < a.scale_min <= a.scale_max,
            f"detectnet_augmentation_param needs 0 < scale_min <= scale_max, got {a.scale_min:g} and {a.scale_max:g}",
        )
        t = self.layer_param.transform_param
        unread = [f.name for f, _ in t.ListFields() if f.name not in ("mean_value", "mean_file")]
        self.require(not unread, f"transform_param {', '.join(unread)} is not read by DetectNetTransformation")
        self.require(not (t.mean_value and t.HasField("mean_file")), "give mean_value or mean_file, not both")
        self.require(len(t.mean_value) in (0, 1, 3), f"mean_value needs 1 or 3 values, got {len(t.mean_value)}")
        self.mean_values = None
        if t.mean_value:
            values = list(t.mean_value) * (3 if len(t.mean_value) == 1 else 1)
            self.mean_values = np.array(values, dtype=np.float32) / np.float32(255)
        self.mean_file: np.ndarray | None = None
        if t.HasField("mean_file"):
            where = f"layer '{self.name}' ({self.type})"
            try:
                mean = load_mean(t.mean_file, where)
            except DataError as e:
                raise self.error(str(e)) from None
            self.require(mean.shape[0] == 3, f"mean_file {t.mean_file} has {mean.shape[0]} channels, needs 3")
            self.mean_file = mean.transpose(1, 2, 0).copy()
        self._mean_at: tuple[tuple[int, int], np.ndarray] | None = None
        self._pool: tuple[int, ThreadPoolExecutor] | None = None

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        n, c, h, w = self.legacy_shape(bottom[0], "an image bottom")
        if c != 3 or h < 1 or w < 1:
            raise self.shape_error(f"takes 3-channel images, bottom[0] has shape {tuple(bottom[0])}")
        if self.phase == TRAIN:  # the largest image an augmentation can make on the way
            a = self.augmentation
            most = max(a.scale_max, 1.0) if a.scale_prob > 0 else 1.0
            side_w, side_h = math.ceil(w * most) + 1, math.ceil(h * most) + 1
            if a.rotation_prob > 0:
                side_w = side_h = math.ceil(math.hypot(side_w, side_h)) + 2
            check_blob((3, side_h, side_w), 4, f"layer '{self.name}' ({self.type}): an image scaled by {most:g}")
        if not bottom[1] or int(bottom[1][0]) != n:
            raise self.shape_error(
                f"needs one box table per image: bottom[0] has shape {tuple(bottom[0])}, bottom[1] {tuple(bottom[1])}"
            )
        return [(n, 3, self.image_size[1], self.image_size[0]), (n, *self.coverage.shape)]

    def _mean(self, size: tuple[int, int]) -> np.ndarray | None:
        """The mean to subtract from a (height, width) image in [0, 1]: the mean file resized (bicubic) to the
        bottom's size, as the fork does, or the channel values."""
        if self.mean_file is None:
            return self.mean_values
        if self._mean_at is None or self._mean_at[0] != size:
            resized = cv2.resize(self.mean_file, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
            self._mean_at = (size, resized / np.float32(255))
        return self._mean_at[1]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        images = bottom[0].detach().to(device="cpu", dtype=torch.float32).numpy()
        tables = bottom[1].detach().to(device="cpu", dtype=torch.float32).reshape(len(images), -1).numpy()
        height, width = images.shape[2:]
        mean = self._mean((height, width))
        out_images = np.empty((len(images), 3, self.image_size[1], self.image_size[0]), dtype=np.float32)
        out_labels = np.empty((len(images), *self.coverage.shape), dtype=np.float32)
        jobs = []  # the boxes read and the draws made in order, in this thread (errors name the image)
        for i, table in enumerate(tables):
            try:
                boxes = read_boxes(table)
            except ValueError as e:
                raise self.error(f"image {i} of the batch: {e}") from None
            if self.phase == TRAIN:
                aug = draw_augmentation(self.augmentation, (width, height), self.image_size, _uniform)
            else:
                aug = test_augmentation(self.image_size)
            jobs.append((i, boxes, aug))

        def one(job: tuple[int, np.ndarray, Augmentation]) -> None:
            i, boxes, aug = job
            seen = transform_image(images[i].transpose(1, 2, 0), aug, self.image_size, mean)
            out_images[i] = seen.transpose(2, 0, 1)
            out_labels[i] = self.coverage.generate(transform_boxes(boxes, aug, (width, height)))

        for _ in self._workers(len(jobs)).map(one, jobs):  # OpenCV's work releases the GIL: images in parallel
            pass
        like = {"device": bottom[0].device, "dtype": bottom[0].dtype}
        return [torch.from_numpy(out_images).to(**like), torch.from_numpy(out_labels).to(**like)]

    def _workers(self, images: int) -> ThreadPoolExecutor:
        """The layer's threads for a batch of ``images`` (one per core, at most one per image; kept)."""
        wanted = max(1, min(images, default_threads()))
        if self._pool is None or self._pool[0] != wanted:
            if self._pool is not None:
                self._pool[1].shutdown(wait=False)
            self._pool = (wanted, ThreadPoolExecutor(max_workers=wanted, thread_name_prefix="caffe-detectnet"))
        return self._pool[1]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False


@register("L1Loss")
class L1LossLayer(LossLayer):
    """NVIDIA/caffe's ``sum |a - b| / N`` (DetectNet's box loss), with gradients to both bottoms."""

    no_grad_bottoms = ()
    reshape = EuclideanLossLayer.reshape  # the same shape rules

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        a = bottom[0]
        return [(a - bottom[1].reshape(a.shape)).abs().sum() / max(a.shape[0], 1)]
