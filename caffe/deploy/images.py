"""The one image decoder of deployable models and DIGITS' resize modes.

:func:`decode_image` turns image bytes into H x W x C uint8 pixels (RGB, or intensity for 1-channel nets)
as DIGITS decodes a dataset's images: with Pillow, transparent pixels onto white, deeper-than-8-bit
images reduced to 8 bits, EXIF orientation not applied; more than :data:`MAX_PIXELS` pixels are refused.
:func:`resize_image` is DIGITS' ``resize_image`` (squash/crop/fill/half_crop, bilinear). Its scaling is
Pillow's bilinear (``interpolation="pillow"``, DIGITS', which averages over the source when shrinking), or
OpenCV's ``cv2.resize`` with ``INTER_LINEAR`` (``"opencv"``: Caffe's C++ examples, SSD's ``ssd_detect`` and
``cv2.dnn.blobFromImage`` resize so).
"""

from __future__ import annotations

import io
import math
import os
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from caffe.deploy.errors import ImageDecodeError
from caffe.errors import DataError

#: Decoded images above this many pixels are refused (decompression bombs).
MAX_PIXELS = 64_000_000
RESIZE_MODES = ("squash", "crop", "fill", "half_crop")
INTERPOLATIONS = ("pillow", "opencv")
#: The file suffixes the command-line tools take as images when they list a folder (what the decoder reads).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def open_image(src: str | os.PathLike | IO[bytes], source: str) -> Image.Image:
    """A Pillow image of mode ``L`` or ``RGB`` (see the module); ImageDecodeError naming ``source`` if not."""
    try:
        with Image.open(src) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageDecodeError(f"{source}: {w} x {h} pixels, more than the {MAX_PIXELS} accepted")
            im.load()
            return im.copy() if im.mode in ("L", "RGB") else _normalize_mode(im)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{source}: not an image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # SyntaxError: broken PNG chunks
        raise ImageDecodeError(f"{source}: cannot decode the image ({e})") from None


def _normalize_mode(im: Image.Image) -> Image.Image:
    if im.mode == "1" or im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return im.convert("L")
    if im.mode in ("LA", "La"):
        out = Image.new("L", im.size, 255)
        out.paste(im.convert("L"), mask=im.convert("RGBA").getchannel("A"))
        return out
    if im.mode in ("P", "PA", "RGBA", "RGBa"):
        out = Image.new("RGB", im.size, (255, 255, 255))
        rgba = im.convert("RGBA")
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def image_array(image: Image.Image, channels: int) -> np.ndarray:
    """HxW (``channels`` 1) or HxWx3 RGB uint8 pixels of ``image``."""
    mode = "L" if channels == 1 else "RGB"
    return np.asarray(image if image.mode == mode else image.convert(mode))


def decode_image(data: bytes, channels: int = 3, source: str = "image") -> np.ndarray:
    """Image bytes as H x W x ``channels`` uint8 pixels (see the module); ImageDecodeError naming ``source``."""
    if not data:
        raise ImageDecodeError(f"{source}: empty, not an image")
    arr = image_array(open_image(io.BytesIO(data), source), channels)
    return arr[:, :, np.newaxis] if arr.ndim == 2 else arr


# ---------------------------------------------------------------------------------------------- resizing


def round_half_up(x: float) -> int:
    """Python 2's ``round`` (halves away from zero), which DIGITS' arithmetic relies on."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def _scale(img: np.ndarray, height: int, width: int, interpolation: str = "pillow") -> np.ndarray:
    if img.shape[:2] == (height, width):
        return img
    if interpolation == "opencv":
        import cv2

        return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def _center_crop(img: np.ndarray, size: int, axis: int) -> np.ndarray:
    start = round_half_up((img.shape[axis] - size) / 2)
    return img[:, start : start + size] if axis == 1 else img[start : start + size]


def _pad_noise(img: np.ndarray, size: int, axis: int, rng: np.random.Generator) -> np.ndarray:
    pad = (size - img.shape[axis]) // 2
    if pad <= 0:
        return img
    shape = list(img.shape)
    shape[axis] = pad
    blocks = [rng.integers(0, 255, shape, dtype=np.uint8), img, rng.integers(0, 255, shape, dtype=np.uint8)]
    return np.concatenate(blocks, axis=axis)


def pad_top_left(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """DIGITS' object-detection padding: H x W x C uint8 pixels at the top left of a black ``width`` x ``height``
    canvas; a DataError when the image is larger than the canvas."""
    h, w = img.shape[:2]
    if w > width or h > height:
        raise DataError(f"{w} x {h} pixels, larger than the padding size {width} x {height}")
    canvas = np.zeros((height, width, *img.shape[2:]), np.uint8)
    canvas[:h, :w] = img
    return canvas


def resize_image(
    img: np.ndarray,
    height: int,
    width: int,
    mode: str = "squash",
    rng: np.random.Generator | None = None,
    interpolation: str = "pillow",
) -> np.ndarray:
    """Resize HxW or HxWxC uint8 pixels to ``height`` x ``width`` as DIGITS does (bilinear):

    * ``squash``: stretch to the size (also every mode when the aspect ratio already matches);
    * ``crop``: scale so the image covers the size, keeping its aspect ratio, then cut the middle;
    * ``fill``: scale so the image fits inside, then pad both sides of the short dimension with
      random noise (the scaled side is made even with the target, so the padding is equal);
    * ``half_crop``: scale by the mean of the two ratios, cut the long side, noise-pad the short one.

    Offsets round halves up (``(9-4)/2`` starts at 3), as DIGITS' Python 2 ``round`` did. An H x W x 1
    image stays H x W x 1. ``interpolation``: see the module.
    """
    if mode not in RESIZE_MODES:
        raise DataError(f"resize_mode: must be one of {', '.join(RESIZE_MODES)} (got {mode!r})")
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"interpolation: must be one of {', '.join(INTERPOLATIONS)} (got {interpolation!r})")
    if img.ndim == 3 and img.shape[2] == 1:
        return resize_image(img[:, :, 0], height, width, mode, rng, interpolation)[:, :, np.newaxis]
    ih, iw = img.shape[:2]
    if (ih, iw) == (height, width):
        return img
    wr, hr = iw / width, ih / height
    if mode == "squash" or wr == hr:
        return _scale(img, height, width, interpolation)
    wide = wr > hr  # the image is relatively wider than the target
    if mode == "crop":
        if wide:
            return _center_crop(_scale(img, height, round_half_up(iw / hr), interpolation), width, axis=1)
        return _center_crop(_scale(img, round_half_up(ih / wr), width, interpolation), height, axis=0)
    if mode == "fill":
        if wide:
            rh = round_half_up(ih / wr)
            img = _scale(img, rh + (height - rh) % 2, width, interpolation)
        else:
            rw = round_half_up(iw / hr)
            img = _scale(img, height, rw + (width - rw) % 2, interpolation)
    else:  # half_crop
        ratio = (wr + hr) / 2
        rw, rh = round_half_up(iw / ratio), round_half_up(ih / ratio)
        if wide:
            img = _center_crop(_scale(img, rh + (height - rh) % 2, rw, interpolation), width, axis=1)
        else:
            img = _center_crop(_scale(img, rh, rw + (width - rw) % 2, interpolation), height, axis=0)
    rng = rng if rng is not None else np.random.default_rng()
    return _pad_noise(img, height if wide else width, 0 if wide else 1, rng)
