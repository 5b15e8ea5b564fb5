"""pycaffe's ``caffe.io``: BlobProto/Datum <-> NumPy, image loading, resizing, oversampling and ``Transformer``.

Same names, arguments and conventions as pycaffe: images are H x W x K float32 in [0, 1] (RGB),
net inputs are K x H x W. Where this differs from pycaffe:

* errors are one-line ``CaffeError``s that also derive from the builtin pycaffe raised (``ValueError``
  for bad arguments, ``OSError`` for unreadable images), so existing ``except`` clauses still match;
* ``Transformer.preprocess`` never modifies the caller's array (pycaffe scaled it in place when no
  resize or channel swap was needed); ``deprocess`` keeps a single-channel axis; ``set_mean`` also
  takes a 1 x K x H x W mean (as read from a ``.binaryproto``);
* images are decoded with Pillow (OpenCV for 16-bit colour, which Pillow truncates to 8 bits) instead
  of scikit-image, with identical 8-bit results, and resized with OpenCV instead of scikit-image/SciPy
  (see ``resize_image`` for how results differ).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from google.protobuf.message import DecodeError
from numpy.typing import ArrayLike
from PIL import Image

from caffe.data.datum import array_to_datum, datum_to_array
from caffe.errors import CaffeError, DataError, WeightsError
from caffe.proto import caffe_pb2
from caffe.weights import array_to_blob_proto, blob_proto_to_array

__all__ = [
    "BlobProtoError",
    "ImageError",
    "PreprocessError",
    "Transformer",
    "array_to_blobproto",
    "array_to_datum",
    "arraylist_to_blobprotovector_str",
    "blobproto_to_array",
    "blobprotovector_str_to_arraylist",
    "caffe_pb2",
    "datum_to_array",
    "load_image",
    "oversample",
    "resize_image",
]


class BlobProtoError(WeightsError, ValueError):
    """A BlobProto (or serialized BlobProtoVector) whose contents do not fit its declared shape."""


class PreprocessError(CaffeError, ValueError):
    """A ``Transformer`` setting, or an image given to it / to ``resize_image`` / ``oversample``, that cannot work."""


class ImageError(DataError, OSError):
    """An image file that is missing or cannot be decoded."""


# ---------------------------------------------------------------------------- proto <-> array
def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The data (or, with ``return_diff``, the diff) of ``blob`` as a float64 array.

    The shape is the legacy num/channels/height/width when any of those is set, else ``shape.dim``
    (no shape at all means a scalar). A value count that does not fit raises ``BlobProtoError``.
    """
    try:
        arr = blob_proto_to_array(blob, diff=return_diff)
    except WeightsError as e:
        what = "diff" if return_diff else "data"
        raise BlobProtoError(f"blobproto_to_array ({what}): {e}") from None
    return arr.astype(np.float64, copy=False)


def array_to_blobproto(arr: ArrayLike, diff: ArrayLike | None = None) -> caffe_pb2.BlobProto:
    """A BlobProto with ``arr``'s shape and values (float32), and ``diff``'s values if given."""
    arr = np.asarray(arr)
    if diff is not None:
        diff = np.asarray(diff)
        if diff.size != arr.size:
            raise BlobProtoError(
                f"array_to_blobproto: diff of shape {diff.shape} does not match data of shape {arr.shape}"
            )
    return array_to_blob_proto(arr, diff)


def arraylist_to_blobprotovector_str(arraylist: Iterable[ArrayLike]) -> bytes:
    """A serialized BlobProtoVector holding one BlobProto per array."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(str: bytes) -> list[np.ndarray]:  # pycaffe names the argument `str`
    """The arrays of a serialized BlobProtoVector (inverse of ``arraylist_to_blobprotovector_str``)."""
    vec = caffe_pb2.BlobProtoVector()
    try:
        vec.ParseFromString(bytes(str))
    except DecodeError as e:
        raise BlobProtoError(f"blobprotovector_str_to_arraylist: not a serialized BlobProtoVector ({e})") from None
    return [blobproto_to_array(blob) for blob in vec.blobs]


# ---------------------------------------------------------------------------- Transformer
Shape = tuple[int, ...]


class Transformer:
    """Turns H x W x K images into net inputs (and back), configured per input blob.

    ``inputs`` maps each input name to its blob shape, e.g. ``{"data": net.blobs["data"].data.shape}``.
    ``preprocess`` applies, in order: resize to the blob's H x W, transpose, channel swap, raw scale,
    mean subtraction, input scale. The settings live in the dicts ``transpose``, ``channel_swap``,
    ``raw_scale``, ``mean`` and ``input_scale``, keyed by input name, as in pycaffe.
    """

    def __init__(self, inputs: Mapping[str, Sequence[int]]) -> None:
        self.inputs: dict[str, Shape] = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose: dict[str, Shape] = {}
        self.channel_swap: dict[str, Shape] = {}
        self.raw_scale: dict[str, Any] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, Any] = {}

    def _shape(self, in_: str) -> Shape:
        if in_ not in self.inputs:
            raise PreprocessError(f"'{in_}' is not one of the net inputs: {sorted(self.inputs)}")
        return self.inputs[in_]

    def _channels(self, in_: str, what: str) -> int:
        shape = self._shape(in_)
        if len(shape) < 2:
            raise PreprocessError(f"{what}('{in_}'): input of shape {shape} has no channel axis")
        return shape[1]

    # -- settings
    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """Axis order taking an image to the blob's layout, e.g. ``(2, 0, 1)`` for H x W x K -> K x H x W."""
        shape = self._shape(in_)
        order = tuple(int(i) for i in order)
        if sorted(order) != list(range(len(shape) - 1)):
            raise PreprocessError(
                f"set_transpose('{in_}', {order}): need a permutation of {len(shape) - 1} axes "
                f"(one per axis of an image for input shape {shape})"
            )
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Channel order after the transpose, e.g. ``(2, 1, 0)`` for RGB -> BGR."""
        channels = self._channels(in_, "set_channel_swap")
        order = tuple(int(i) for i in order)
        if len(order) != channels or not all(-channels <= i < channels for i in order):
            raise PreprocessError(
                f"set_channel_swap('{in_}', {order}): need {channels} channel indices "
                f"for input shape {self.inputs[in_]}"
            )
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale: Any) -> None:
        """Factor applied before mean subtraction (255 for models trained on [0, 255] images)."""
        self._shape(in_)
        self.raw_scale[in_] = scale

    def set_input_scale(self, in_: str, scale: Any) -> None:
        """Factor applied last, after mean subtraction."""
        self._shape(in_)
        self.input_scale[in_] = scale

    def set_mean(self, in_: str, mean: ArrayLike) -> None:
        """Mean to subtract: one value per channel (K,), or a K x H x W (or H x W) image.

        A mean image whose H x W differs from the input's is resized to it (``resize_image``), as in
        pycaffe; a leading axis of length 1 (a mean ``.binaryproto`` read as 1 x K x H x W) is dropped.
        """
        shape = self._shape(in_)
        channels = self._channels(in_, "set_mean")
        mean = np.asarray(mean)
        if not np.issubdtype(mean.dtype, np.floating):
            mean = mean.astype(np.float64)
        if mean.ndim == 1:
            if mean.shape[0] != channels:
                raise PreprocessError(
                    f"set_mean('{in_}'): mean has {mean.shape[0]} channels but input shape {shape} has {channels}"
                )
            mean = mean[:, np.newaxis, np.newaxis]
        elif mean.ndim >= 2:
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            elif mean.ndim == 2:
                mean = mean[np.newaxis]
            if mean.ndim != 3 or len(shape) != 4:
                raise PreprocessError(
                    f"set_mean('{in_}'): mean of shape {np.shape(mean)} does not fit input shape {shape} "
                    "(expected (K,), (K, H, W) or (H, W))"
                )
            if mean.shape[0] not in (1, channels):
                raise PreprocessError(
                    f"set_mean('{in_}'): mean of shape {mean.shape} has {mean.shape[0]} channels "
                    f"but input shape {shape} has {channels}"
                )
            if mean.shape[1:] != shape[2:]:
                mean = resize_image(mean.transpose(1, 2, 0), shape[2:]).transpose(2, 0, 1)
        self.mean[in_] = mean

    # -- transforms
    def preprocess(self, in_: str, data: ArrayLike) -> np.ndarray:
        """An H' x W' x K image as a float32 input for blob ``in_`` (K x H x W with the usual settings)."""
        shape = self._shape(in_)
        data = np.asarray(data)
        image_ndim = len(shape) - 1
        if data.ndim == 2 and image_ndim == 3:
            data = data[:, :, np.newaxis]
        transpose = self.transpose.get(in_)
        if transpose is not None and data.ndim != len(transpose):
            raise PreprocessError(
                f"preprocess('{in_}'): expected an image with {len(transpose)} axes (H x W x K) "
                f"for input shape {shape}, got shape {data.shape}"
            )
        caffe_in = data.astype(np.float32)  # always a copy: the steps below work in place
        in_dims = shape[2:]
        if len(in_dims) == 2 and caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            if not all(-caffe_in.shape[0] <= i < caffe_in.shape[0] for i in channel_swap):
                raise PreprocessError(
                    f"preprocess('{in_}'): channel swap {channel_swap} does not fit the "
                    f"{caffe_in.shape[0]} channels of the image (shape {caffe_in.shape} after transpose)"
                )
            caffe_in = caffe_in[list(channel_swap)]
        caffe_in = np.ascontiguousarray(caffe_in)
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            caffe_in *= raw_scale
        mean = self.mean.get(in_)
        if mean is not None:
            self._check_broadcast(in_, mean.shape, caffe_in.shape)
            caffe_in -= mean
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_: str, data: ArrayLike) -> np.ndarray:
        """Undo ``preprocess`` (except the resize): a net input (optionally with a batch axis of 1) as an image."""
        shape = self._shape(in_)
        decaf_in = np.array(data)
        if not np.issubdtype(decaf_in.dtype, np.floating):
            decaf_in = decaf_in.astype(np.float32)
        while decaf_in.ndim > len(shape) - 1 and decaf_in.shape[0] == 1:
            decaf_in = decaf_in[0]
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        mean = self.mean.get(in_)
        if mean is not None:
            self._check_broadcast(in_, mean.shape, decaf_in.shape)
            decaf_in += mean
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            decaf_in /= raw_scale
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap)]
        transpose = self.transpose.get(in_)
        if transpose is not None:
            if decaf_in.ndim != len(transpose):
                raise PreprocessError(
                    f"deprocess('{in_}'): expected {len(transpose)} axes for input shape {shape}, "
                    f"got shape {np.shape(data)}"
                )
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    @staticmethod
    def _check_broadcast(in_: str, mean_shape: Shape, shape: Shape) -> None:
        try:
            fits = np.broadcast_shapes(mean_shape, shape) == shape
        except ValueError:
            fits = False
        if not fits:
            raise PreprocessError(f"'{in_}': mean of shape {mean_shape} does not fit the image's shape {shape}")


def image_transformer(
    in_: str,
    shape: Sequence[int],
    mean: Any = None,
    input_scale: Any = None,
    raw_scale: Any = None,
    channel_swap: Sequence[int] | None = None,
) -> Transformer:
    """A ``Transformer`` for the input ``in_`` of ``shape`` fed H x W x K images: transposed to K x H x W,
    with whichever of ``mean``, ``input_scale``, ``raw_scale`` and ``channel_swap`` are given (the setup
    that ``caffe.Classifier`` and ``caffe.Detector`` share)."""
    transformer = Transformer({in_: shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


# ---------------------------------------------------------------------------- images
_LUMA_709 = np.array([0.2125, 0.7154, 0.0721])  # scikit-image's rgb2gray weights


def _tile_rawmode(im: Image.Image) -> str:
    if not im.tile:
        return ""
    args = im.tile[0].args
    if isinstance(args, str):
        return args
    return args[0] if args and isinstance(args[0], str) else ""


def _decode(path: str) -> tuple[np.ndarray, float]:
    """Pixels as (H, W) or (H, W, 3) RGB, and the value that stands for full intensity."""
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA") and "16" in _tile_rawmode(im):
            # 16-bit colour: Pillow keeps only 8 bits, OpenCV keeps all 16 (BGR order, EXIF ignored).
            pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
            if pixels is not None and pixels.dtype == np.uint16 and pixels.ndim == 3:
                return pixels[:, :, 2::-1], 65535.0
        if im.mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16), 65535.0
        if im.mode == "I":
            return np.asarray(im), float(2**31 - 1)
        if im.mode == "F":
            return np.asarray(im), 1.0
        if im.mode in ("1", "L", "LA", "La"):
            return np.asarray(im.convert("L")), 255.0
        if im.mode in ("P", "PA"):  # palettes may carry transparency: expand to RGBA, then drop the alpha
            return np.asarray(im.convert("RGBA"))[:, :, :3], 255.0
        return np.asarray(im.convert("RGB")), 255.0


def load_image(filename: str | os.PathLike, color: bool = True) -> np.ndarray:
    """An image file as float32 in [0, 1]: H x W x 3 RGB, or H x W x 1 intensity with ``color=False``.

    Grayscale files are replicated to 3 channels when ``color``; colour files are reduced to
    intensity (scikit-image's ``rgb2gray`` weights) when not. Alpha is dropped (not composited), as in
    pycaffe; 16-bit files keep their full precision (divided by 65535). Decoding matches
    scikit-image's ``imread`` (both use Pillow; EXIF orientation is not applied). A missing or
    undecodable file raises ``ImageError`` (an ``OSError``) naming it.
    """
    path = os.fspath(filename)
    if not os.path.isfile(path):
        raise ImageError(f"load_image: {path}: no such file")
    try:
        pixels, full = _decode(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"load_image: cannot read {path} as an image ({e})") from None
    img = pixels.astype(np.float64) * (1.0 / full) if full != 1.0 else pixels.astype(np.float64)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.repeat(img, 3, axis=2)
    elif not color:
        img = (img @ _LUMA_709)[:, :, np.newaxis]
    return img.astype(np.float32)


_INTERPOLATION = {
    1: cv2.INTER_LINEAR,
    2: cv2.INTER_CUBIC,
    3: cv2.INTER_CUBIC,
    4: cv2.INTER_LANCZOS4,
    5: cv2.INTER_LANCZOS4,
}


def _nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    # the source pixel containing each output pixel's centre, in exact integer arithmetic
    return ((2 * np.arange(size_out) + 1) * size_in) // (2 * size_out)


def resize_image(im: ArrayLike, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """``im`` (H x W x K, or H x W) resized to ``new_dims`` = (height, width), as float32.

    ``interp_order``: 0 nearest, 1 bilinear (default), 3 bicubic (2 maps to bicubic, 4 and 5 to
    Lanczos). A constant image gives a constant image; otherwise the result stays within the input's
    [min, max], as pycaffe's (which rescales to [0, 1] and back around scikit-image's clipped resize).

    Nearest is exact integer indexing and equals scikit-image's; the others use OpenCV. Compared with
    pycaffe's scikit-image backend (without anti-aliasing), bilinear shrinking agrees to float
    rounding; enlarging differs on the border pixels (OpenCV replicates the edge, scikit-image pads
    with the minimum on some sides); bicubic is Keys' cubic, not scikit-image's cubic spline; and
    scikit-image >= 0.15 also Gaussian-blurs before shrinking (anti-aliasing), which is not done here.
    """
    im = np.asarray(im)
    if im.ndim not in (2, 3) or im.size == 0:
        raise PreprocessError(f"resize_image: expected a non-empty H x W x K image, got shape {im.shape}")
    if len(new_dims) != 2 or min(int(d) for d in new_dims) < 1:
        raise PreprocessError(f"resize_image: new_dims must be (height, width) > 0, got {tuple(new_dims)}")
    if interp_order not in (0, *_INTERPOLATION):
        raise PreprocessError(f"resize_image: interp_order must be 0..5, got {interp_order}")
    height, width = (int(d) for d in new_dims)
    planar = im.ndim == 2
    if planar:
        im = im[:, :, np.newaxis]
    lo, hi = im.min(), im.max()
    if not hi > lo:
        out = np.full((height, width, im.shape[2]), lo, dtype=np.float32)
        return out[:, :, 0] if planar else out
    work = np.ascontiguousarray(im, dtype=np.float64 if im.dtype == np.float64 else np.float32)
    if interp_order == 0:
        out = work[_nearest_indices(work.shape[0], height)][:, _nearest_indices(work.shape[1], width)]
        out = out.astype(np.float32, copy=False)
        return out[:, :, 0] if planar else out
    flag = _INTERPOLATION[interp_order]
    if work.shape[2] <= 4:
        out = cv2.resize(work, (width, height), interpolation=flag).reshape(height, width, -1)
    else:
        planes = [
            cv2.resize(np.ascontiguousarray(work[:, :, k]), (width, height), interpolation=flag)
            for k in range(work.shape[2])
        ]
        out = np.stack(planes, axis=2)
    if interp_order > 1:
        np.clip(out, lo, hi, out=out)
    out = out.astype(np.float32, copy=False)
    return out[:, :, 0] if planar else out


def oversample(images: Iterable[ArrayLike] | np.ndarray, crop_dims: Sequence[int]) -> np.ndarray:
    """The 10 crops of each H x W x K image: 4 corners and the centre, then the same 5 mirrored left-right.

    Crops are in the order top-left, top-right, bottom-left, bottom-right, centre (then mirrors);
    returns a float32 (10 N) x h x w x K array. All images must have the same shape.
    """
    imgs = list(images) if not isinstance(images, np.ndarray) else images
    if len(imgs) == 0:
        raise PreprocessError("oversample: no images given")
    first = np.shape(imgs[0])
    if len(first) != 3:
        raise PreprocessError(f"oversample: expected H x W x K images, got shape {first}")
    crop_h, crop_w = (int(d) for d in crop_dims)
    height, width, channels = first
    if not (0 < crop_h <= height and 0 < crop_w <= width):
        raise PreprocessError(f"oversample: crop {(crop_h, crop_w)} does not fit in images of shape {first}")
    starts = [
        (0, 0),
        (0, width - crop_w),
        (height - crop_h, 0),
        (height - crop_h, width - crop_w),
        ((height - crop_h) // 2, (width - crop_w) // 2),
    ]
    crops = np.empty((10 * len(imgs), crop_h, crop_w, channels), dtype=np.float32)
    for n, im in enumerate(imgs):
        im = np.asarray(im)
        if im.shape != first:
            raise PreprocessError(f"oversample: image {n} has shape {im.shape}, image 0 has {first}")
        base = 10 * n
        for k, (y, x) in enumerate(starts):
            crops[base + k] = im[y : y + crop_h, x : x + crop_w]
        crops[base + 5 : base + 10] = crops[base : base + 5, :, ::-1]
    return crops
