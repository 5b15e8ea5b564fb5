"""Pictures of what a model found: detection boxes drawn on an image, and image encoding (OpenCV).

:func:`draw_detections` draws each box with its label and confidence (a colour per class, lines scaled
to the image); :func:`encode_image` encodes RGB or class-map pixels as PNG/JPEG/BMP bytes (16-bit
class maps as PNG).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from caffe.deploy.detection import Detection
from caffe.errors import CaffeError

ENCODED_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def class_colour(label: int) -> tuple[int, int, int]:
    """A bright RGB colour of class ``label`` (hues spread by a golden-ratio step)."""
    import cv2

    hue = int((label * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 220, 255]]], dtype=np.uint8)
    r, g, b = (int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
    return r, g, b


def draw_detections(
    pixels: np.ndarray, detections: Sequence[Detection], name: Callable[[int], str] = str
) -> np.ndarray:
    """A copy of H x W x C uint8 RGB (or intensity) ``pixels`` with each detection's box and a
    ``"label 0.97"`` tag drawn on it, as H x W x 3 RGB."""
    import cv2

    image = np.ascontiguousarray(pixels if pixels.shape[2] == 3 else np.repeat(pixels, 3, axis=2)).copy()
    h, w = image.shape[:2]
    thick = max(1, round(min(h, w) / 250))
    font = 0.4 * thick
    for d in detections:
        colour = class_colour(d.label)
        x0, y0, x1, y1 = (round(v) for v in d.box)
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, thick)
        text = f"{name(d.label)} {d.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        top = y0 - th - base if y0 - th - base >= 0 else min(y0 + thick, max(0, h - th - base))
        cv2.rectangle(image, (x0, top), (x0 + tw, top + th + base), colour, -1)
        cv2.putText(image, text, (x0, top + th), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), thick, cv2.LINE_AA)
    return image


def encode_image(pixels: np.ndarray, suffix: str = ".png") -> bytes:
    """H x W x 3 RGB or H x W (x 1) uint8/uint16 pixels as image bytes of the format of ``suffix``."""
    import cv2

    suffix = suffix.lower()
    if suffix not in ENCODED_SUFFIXES:
        raise CaffeError(f"cannot write {suffix!r} images: use one of {', '.join(ENCODED_SUFFIXES)}")
    if pixels.dtype == np.uint16 and suffix != ".png":
        raise CaffeError("16-bit images are written as PNG only")
    arr = pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[:, :, ::-1])  # OpenCV writes BGR
    ok, buf = cv2.imencode(suffix, arr)
    if not ok:
        raise CaffeError(f"OpenCV could not encode a {arr.shape} {arr.dtype} image as {suffix}")
    return buf.tobytes()
