"""``Preprocessing``: decoded pixels -> a net's C x H x W input, every step explicit.

1. resize to ``image_size`` (H, W) with ``resize_mode`` (DIGITS' squash/crop/fill/half_crop; fill and
   half_crop pad with noise from a fixed seed, so one image always gives one input); ``image_size`` None
   means the input's size;
2. reach the input's size: ``crop="center"`` cuts the centre of an image at least that large (Caffe's
   test-phase crop, DIGITS' inference), anything else is squashed (bilinear);
3. transpose to C x H x W, reorder the channels by ``channel_swap`` (RGB -> BGR by default), scale the
   0..1 intensities by ``raw_scale`` (255: pixels as they are), subtract the fitted mean, times
   ``input_scale`` (pycaffe's ``Transformer`` order).

Resizing (steps 1 and 2) interpolates with Pillow's bilinear (``interpolation="pillow"``, DIGITS') or
OpenCV's ``INTER_LINEAR`` (``"opencv"``, as ``cv2.dnn.blobFromImage`` and Caffe's C++ examples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from caffe.deploy.images import INTERPOLATIONS, RESIZE_MODES, decode_image, resize_image
from caffe.errors import CaffeError

CROPS = ("center", "squash")


@dataclass(frozen=True)
class Preprocessing:
    """How image pixels become the net's input (see the module)."""

    input_shape: tuple[int, int, int]  # the net's C, H, W
    image_size: tuple[int, int] | None = None
    resize_mode: str = "squash"
    crop: str = "center"
    channel_swap: tuple[int, ...] | None = (2, 1, 0)
    raw_scale: float = 255.0
    mean: np.ndarray | None = None  # C x H x W or C x 1 x 1, in the net's channel order
    input_scale: float = 1.0
    interpolation: str = "pillow"

    def __post_init__(self) -> None:
        c = self.input_shape[0]
        if self.resize_mode not in RESIZE_MODES:
            raise CaffeError(f"resize mode {self.resize_mode!r}: expected one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise CaffeError(f"interpolation {self.interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}")
        if self.crop not in CROPS:
            raise CaffeError(f"crop {self.crop!r}: expected one of {', '.join(CROPS)}")
        if self.channel_swap is not None and sorted(self.channel_swap) != list(range(c)):
            raise CaffeError(f"channel_swap {tuple(self.channel_swap)} is not a permutation of the {c} channels")
        if self.image_size is not None and min(self.image_size) < 1:
            raise CaffeError(f"image size {self.image_size}: must be positive")

    @property
    def size(self) -> tuple[int, int]:
        """The (H, W) images are resized to first."""
        return self.image_size or (self.input_shape[1], self.input_shape[2])

    def decode(self, data: bytes, source: str = "image") -> np.ndarray:
        """Image bytes -> H x W x C uint8 pixels of the input's channel count (:func:`decode_image`)."""
        return decode_image(data, self.input_shape[0], source)

    def resize(self, pixels: np.ndarray) -> np.ndarray:
        """Step 1: H x W x C uint8 pixels at :attr:`size` (the image a person is shown)."""
        h, w = self.size
        return resize_image(pixels, h, w, self.resize_mode, np.random.default_rng(0), self.interpolation)

    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        """Steps 2-3: resized H x W x C uint8 pixels -> the C x H x W float32 input."""
        c, h, w = self.input_shape
        ih, iw = pixels.shape[:2]
        if (ih, iw) != (h, w):
            if self.crop == "center" and ih >= h and iw >= w:
                top, left = (ih - h) // 2, (iw - w) // 2
                pixels = pixels[top : top + h, left : left + w]
            else:
                pixels = resize_image(pixels, h, w, "squash", interpolation=self.interpolation)
        x = pixels.astype(np.float32).transpose(2, 0, 1)
        if self.channel_swap is not None and c > 1:
            x = x[list(self.channel_swap)]
        if self.raw_scale != 255.0:
            x = x * np.float32(self.raw_scale / 255.0)
        if self.mean is not None:
            x = x - self.mean
        if self.input_scale != 1.0:
            x = x * np.float32(self.input_scale)
        return np.ascontiguousarray(x, dtype=np.float32)

    def __call__(self, data: bytes, source: str = "image") -> np.ndarray:
        """Image bytes -> the net's input."""
        return self.to_input(self.resize(self.decode(data, source)))

    def describe(self) -> dict[str, Any]:
        """The settings, for people and JSON (the mean is described by the model)."""
        return {
            "image_size": list(self.size),
            "resize_mode": self.resize_mode,
            "crop": self.crop,
            "channel_swap": list(self.channel_swap) if self.channel_swap else None,
            "raw_scale": self.raw_scale,
            "input_scale": self.input_scale,
            "interpolation": self.interpolation,
        }
