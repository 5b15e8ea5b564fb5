"""Caffe's DataTransformer, applied batch-wise: crop, mirror, mean (file or values), scale.

Each item is cropped, mirrored, mean-subtracted and scaled by the prefetch workers in one fused
NumPy pass straight into the batch's float32 buffer, which the net then uses as it is (a batch of
raw Datums of one shape: a few NumPy passes for the whole batch, bit for bit the same). Numbers
are Caffe's: ``top = (x - mean) * scale`` with the mean cropped at the same offsets as the
image and never mirrored (mirroring applies to the mean-subtracted crop).

One deliberate difference: Caffe's transformer mirrors at random whenever ``mirror: true``, in
TEST too; here mirroring happens in TRAIN only, as this project's specification asks (test-time
results stay deterministic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from caffe.blob import blob_proto_to_array
from caffe.common import TRAIN
from caffe.data.shard import ALONE, Shard
from caffe.errors import CaffeError, DataError
from caffe.proto import caffe_pb2 as pb

if TYPE_CHECKING:
    from caffe.data.prefetch import Decoded

HWC, CHW = "hwc", "chw"  # layouts of an item: decoded image (H, W, C) or raw Datum planes (C, H, W)


class DataTransformer:
    """Caffe's TransformationParameter for one layer (``where`` names it in messages); with the ``shard`` of
    one of several ranks, each item's random draws are those its global item gets in one process's sequence."""

    #: Whether :meth:`place_batch` does what :meth:`place` does per item (False: a subclass places its own way,
    #: so batches are placed item by item).
    places_batches = True
    #: Whether items of any size may share a batch (True: :meth:`place_item` brings each to the batch's size).
    resizes_items = False
    #: One item's label shape in :meth:`new_labels`: () for a number per item, (L, 1, 1) for caffe_ocr's L labels.
    label_shape: tuple[int, ...] = ()

    def __init__(self, param: pb.TransformationParameter, phase: int, where: str, shard: Shard = ALONE) -> None:
        self.where, self.shard = where, shard
        self.scale = float(param.scale)
        self.crop = int(param.crop_size)
        self.mirror = bool(param.mirror) and phase == TRAIN
        self.train = phase == TRAIN
        self.force_color, self.force_gray = bool(param.force_color), bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise DataError(f"{where}: cannot set both force_color and force_gray")
        if param.mean_file and len(param.mean_value):
            raise DataError(f"{where}: cannot specify mean_file and mean_value at the same time")
        self.mean_values = np.array(param.mean_value, dtype=np.float32) if len(param.mean_value) else None
        self.mean: np.ndarray | None = None  # (C, H, W)
        self._means: dict[tuple[str, bool], np.ndarray] = {}
        if param.mean_file:
            self.mean = load_mean(param.mean_file, where)

    # ------------------------------------------------------------------ shapes and checks
    def check_item(self, channels: int, height: int, width: int, name: str = "") -> None:
        """Caffe's checks for an item of this size, as one-line errors naming it."""
        item = f"{self.where}: {name + ': ' if name else ''}"
        if self.crop and (height < self.crop or width < self.crop):
            raise DataError(f"{item}crop_size {self.crop} is larger than the image ({height}x{width})")
        if self.mean is not None and self.mean.shape != (channels, height, width):
            raise DataError(
                f"{item}the mean file is {'x'.join(map(str, self.mean.shape))} but the data is "
                f"{channels}x{height}x{width} (channels x height x width)"
            )
        if self.mean_values is not None and len(self.mean_values) not in (1, channels):
            raise DataError(
                f"{item}specify either 1 mean_value or as many as channels ({channels}), got {len(self.mean_values)}"
            )

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        if self.crop:
            return channels, self.crop, self.crop
        return channels, height, width

    def batch_shape(self, channels: int, height: int, width: int, draws: list[tuple]) -> tuple[int, int, int]:
        """The items' (C, H, W) in a batch with these ``draws`` (a subclass may size each batch its own way)."""
        return self.output_shape(channels, height, width)

    # ------------------------------------------------------------------ per item (workers)
    @property
    def draws_per_item(self) -> int:
        """Uniforms (one 64-bit generator output each) drawn per item: 3 with a TRAIN crop or mirror, else 0."""
        return 3 if (self.crop and self.train) or self.mirror else 0

    def draw(self, rng: np.random.Generator) -> tuple[float, float, bool]:
        """The random numbers one item needs (drawn in order by one thread, so runs repeat exactly).

        Always ``draws_per_item`` uniforms: the crop's row and column fractions and the mirror coin
        (``u < 0.5``), so that skipping items is one jump of the generator (:meth:`skip_draws`). A rank of
        several draws every rank's and keeps its own (:meth:`Shard.draws`).
        """
        if not self.draws_per_item:
            return 0.0, 0.0, False
        u_h, u_w, u_flip = self.shard.draws(rng, 1, self.draws_per_item)[0]
        return float(u_h), float(u_w), self.mirror and bool(u_flip < 0.5)

    def batch_draws(self, draws: list[tuple], seed: int, number: int) -> list[tuple]:
        """The draws of batch ``number`` (counted from the run's start; ``seed``: the prefetcher's) with what the
        whole batch shares added; nothing here (AnnotatedData adds its resize policy)."""
        return draws

    def skip_draws(self, rng: np.random.Generator, items: int) -> None:
        """Move ``rng`` on as ``items`` calls of :meth:`draw` would (a constant-time jump for PCG64)."""
        self.shard.skip_draws(rng, items, self.draws_per_item)

    def offsets(self, height: int, width: int, draw: tuple[float, float, bool]) -> tuple[int, int]:
        if not self.crop:
            return 0, 0
        if self.train:  # uniform over the height - crop + 1 possible rows (Caffe's Rand(n))
            return int(draw[0] * (height - self.crop + 1)), int(draw[1] * (width - self.crop + 1))
        return (height - self.crop) // 2, (width - self.crop) // 2

    def _mean_view(self, layout: str, flip: bool) -> np.ndarray:
        """The mean file in the item's layout (mirrored for mirrored items), cached."""
        key = (layout, flip)
        if key not in self._means:
            mean = self.mean[:, :, ::-1] if flip else self.mean  # type: ignore[index]
            self._means[key] = np.ascontiguousarray(mean.transpose(1, 2, 0) if layout == HWC else mean)
        return self._means[key]

    def place(self, item: np.ndarray, layout: str, out: np.ndarray, draw: tuple[float, float, bool]) -> tuple[int, int]:
        """Write ``(crop(item) - crop(mean)) * scale`` (mirrored if drawn so) into the float32 ``out``.

        One fused pass per item (NumPy releases the GIL, so decode workers run it in parallel).
        Returns the crop offsets (h, w).
        """
        height, width = item.shape[:2] if layout == HWC else item.shape[1:]
        h, w = self.offsets(height, width, draw)
        self._window(item, layout, out, h, w, draw[2])
        self._normalize(out, layout)
        return h, w

    def place_item(self, item: Decoded, out: np.ndarray, draw: tuple, name: str) -> Any:
        """:meth:`place` a decoded item (``name``: its record, for messages) into ``out``; returns its label as
        :meth:`new_labels` stores it (a subclass may transform the label with the item)."""
        self.place(item.array, item.layout, out, draw)
        return item.label

    def new_labels(self, n: int) -> Any:
        """Where a batch of ``n`` items keeps the labels :meth:`place_item` returns: a float32 (N, *label_shape)
        array."""
        return np.empty((n, *self.label_shape), dtype=np.float32)

    def labels_tensor(self, labels: Any) -> torch.Tensor:
        """A finished batch's labels (from :meth:`new_labels`) as the label top."""
        return torch.from_numpy(labels)

    def place_batch(self, items: np.ndarray, out: np.ndarray, draws: list[tuple[float, float, bool]]) -> None:
        """:meth:`place` for every item of a CHW batch ``items`` (N, C, H, W) into ``out`` (N, C, h, w), bit for bit.

        The mean values and the scale apply to the whole batch at once, and so does the rest when no item
        has a window or mirror of its own (TEST, or neither random crops nor mirrors): a few NumPy passes
        per batch instead of a few per item.
        """
        height, width = items.shape[2:]
        if self.draws_per_item:  # random crops or mirrors: each item's own window
            for item, slot, draw in zip(items, out, draws):
                h, w = self.offsets(height, width, draw)
                self._window(item, CHW, slot, h, w, draw[2])
        else:
            h, w = self.offsets(height, width, (0.0, 0.0, False))
            self._window(items, CHW, out, h, w, False)
        self._normalize(out, CHW)

    def _window(self, x: np.ndarray, layout: str, out: np.ndarray, h: int, w: int, flip: bool) -> None:
        """Write ``crop(x) - crop(mean)`` (mirrored if ``flip``) at offsets (h, w) into the float32 ``out``: one
        item, or (CHW) a batch (N, C, H, W) whose items share the window."""
        if layout == HWC:
            size_h, size_w = out.shape[:2]
            crop = x[h : h + size_h, w : w + size_w]
            if flip:  # cv2.flip: a SIMD copy into a contiguous array (a negative-stride view is slow below)
                crop = cv2.flip(crop, 1).reshape(crop.shape)
        else:
            size_h, size_w = out.shape[-2:]
            crop = x[..., h : h + size_h, w : w + size_w]
            crop = crop[..., ::-1] if flip else crop
        if self.mean is None:
            out[...] = crop  # one casting copy into the float32 slot
            return
        # mirror(crop(x) - crop(mean)) = mirror(crop(x)) - crop(mirrored mean at the mirrored offset)
        ww = (x.shape[1] if layout == HWC else x.shape[-1]) - w - size_w if flip else w
        mean = self._mean_view(layout, flip)
        if layout == HWC:
            mean = mean[h : h + size_h, ww : ww + size_w]
            if crop.dtype == np.uint8 and crop.shape[2] <= 4:
                # one fused pass: uint8 - float32 -> float32 straight into the slot
                cv2.subtract(crop, mean, dst=out.reshape(crop.shape), dtype=cv2.CV_32F)
                return
        else:
            mean = mean[:, h : h + size_h, ww : ww + size_w]
        np.subtract(crop, mean, out=out, dtype=np.float32)  # the item cast to float32, then the float32 mean

    def _normalize(self, out: np.ndarray, layout: str) -> None:
        """Subtract the mean values (no mean file) and scale, in place: one item or a batch, float32 throughout."""
        if self.mean is None and self.mean_values is not None:
            np.subtract(out, self.mean_values if layout == HWC else self.mean_values[:, None, None], out=out)
        if self.scale != 1.0:
            np.multiply(out, np.float32(self.scale), out=out)

    @staticmethod
    def to_tensor(buffer: np.ndarray, layout: str) -> torch.Tensor:
        """The finished float32 batch as (N, C, H, W): an HWC buffer becomes a channels-last view."""
        x = torch.from_numpy(buffer)
        return x.permute(0, 3, 1, 2) if layout == HWC else x


def load_mean(path: str, where: str) -> np.ndarray:
    """A mean file (binary BlobProto, 1 x C x H x W) as a (C, H, W) float32 array."""
    from caffe.protoio import read_binary

    try:
        arr = blob_proto_to_array(read_binary(path, pb.BlobProto(), "mean file"))
    except CaffeError as e:  # ParseError / WeightsError / LimitError: say it is the mean file
        raise DataError(f"{where}: cannot read mean_file: {e}") from None
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise DataError(f"{where}: mean_file {path} has shape {arr.shape}, expected 1 x C x H x W")
    return arr.astype(np.float32)
