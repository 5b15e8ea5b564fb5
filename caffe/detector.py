"""pycaffe's ``caffe.Detector``: classify windows of images, R-CNN style.

``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
channel_swap=None, context_pad=None)`` builds the net in the TEST phase with the weights and a
``caffe.io.Transformer`` for its first input (as ``caffe.Classifier`` does).

* ``detect_windows([(image_file, windows), ...])``: every window (``ymin, xmin, ymax, xmax`` in
  pixels) is cut out of its image (``crop``), warped to the input size and classified; returns one
  ``{"filename", "window", "prediction"}`` dict per window, in order.
* ``crop(image, window)``: the window's pixels; with ``context_pad`` the window is first grown so that,
  once warped to the input size, a ``context_pad``-pixel border of the input holds the surroundings
  of the window (R-CNN's context padding), and the part of that border outside the image is filled
  with the mean (in image units, so that it becomes zero after preprocessing).
* ``configure_crop(context_pad)``: sets ``crop_dims`` (the input's H x W x K) and the padding mean.
* ``detect_selective_search(image_files)``: windows proposed by the ``selective_search_ijcv_with_python``
  package (which runs MATLAB), as in pycaffe; without it, a ``SelectiveSearchError`` says so.
* ``detect_ssd(images, threshold=0.5)`` (not in pycaffe): for a net ending in SSD's ``DetectionOutput``,
  each image's detections above ``threshold`` as :class:`caffe.deploy.Detection` tuples ``(label,
  confidence, (xmin, ymin, xmax, ymax))``, the box in pixels of the image, clipped to it. Images are file
  names or H x W x K arrays (uint8 pixels, or floats in [0, 1] as ``caffe.io.load_image`` gives), RGB.
  They are prepared as ``caffe detect`` prepares them (:class:`caffe.deploy.DetectionModel`: squashed to
  the input with OpenCV's bilinear, then this Detector's ``channel_swap``, ``raw_scale``, ``mean`` and
  ``input_scale`` in pycaffe's order), so ``Detector(..., mean=np.array([104, 177, 123]), raw_scale=255,
  channel_swap=(2, 1, 0))`` gives ``cv2.dnn``'s numbers for OpenCV's face detector. ``detect_windows`` on
  such a net is an error saying to use ``detect_ssd``.

Differences from pycaffe: window and box coordinates are used as integers (pycaffe sliced with
floats, which NumPy no longer accepts); for a non-square input the context scale is computed per
axis (pycaffe used the width for both); a window with no pixels inside the image is an error naming
it; each ``prediction`` is a 1-D array.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from caffe import deploy
from caffe import io as caffe_io
from caffe.common import TEST
from caffe.errors import CaffeError
from caffe.limits import read_file
from caffe.net import Net


class SelectiveSearchError(CaffeError, ImportError):
    """``detect_selective_search`` without the ``selective_search_ijcv_with_python`` package."""


class Detector(Net):
    """A ``Net`` that classifies windows of images (see the module)."""

    def __init__(
        self,
        model_file: Any,
        pretrained_file: Any,
        mean: Any = None,
        input_scale: Any = None,
        raw_scale: Any = None,
        channel_swap: Sequence[int] | None = None,
        context_pad: int | None = None,
    ) -> None:
        super().__init__(model_file, TEST, weights=pretrained_file)
        if not self.inputs:
            raise CaffeError(f"Detector: the net in {model_file} has no input blob to feed windows to")
        self.model_files = deploy.ModelFiles(Path(os.fspath(model_file)), Path(os.fspath(pretrained_file)))
        self.ssd_settings = deploy.Settings(
            mean=None if mean is None else np.asarray(mean, dtype=np.float32),
            mean_mode="image",
            channel_swap=None if channel_swap is None else tuple(int(c) for c in channel_swap),
            raw_scale=1.0 if raw_scale is None else float(raw_scale),
            input_scale=1.0 if input_scale is None else float(input_scale),
        )
        self._ssd: deploy.DetectionModel | None = None
        in_ = self.inputs[0]
        self.transformer = caffe_io.image_transformer(
            in_, self.blobs[in_].data.shape, mean, input_scale, raw_scale, channel_swap
        )
        self.configure_crop(context_pad)

    # ------------------------------------------------------------------ detection
    def detect_windows(self, images_windows: Iterable[tuple[Any, Any]]) -> list[dict[str, Any]]:
        """Classify every window of every image: ``[{"window", "prediction", "filename"}, ...]``."""
        if deploy.is_detector(self):
            raise CaffeError("Detector: this net ends in DetectionOutput (SSD): use detect_ssd(images)")
        pairs = [(fname, np.asarray(windows).reshape(-1, 4)) for fname, windows in images_windows]
        crops = []
        for fname, windows in pairs:
            image = caffe_io.load_image(fname).astype(np.float32)
            for window in windows:
                crops.append(self.crop(image, window))
        if not crops:
            return []
        in_ = self.inputs[0]
        batch = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        out = self.forward_all(**{in_: batch})[self.outputs[0]]
        predictions = out.reshape(len(crops), -1)
        detections = []
        k = 0
        for fname, windows in pairs:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[k], "filename": fname})
                k += 1
        return detections

    def detect_selective_search(self, image_fnames: Iterable[Any]) -> list[dict[str, Any]]:
        """``detect_windows`` over the windows Selective Search proposes for each image."""
        try:
            import selective_search_ijcv_with_python as selective_search  # type: ignore[import-not-found]
        except ImportError:
            raise SelectiveSearchError(
                "detect_selective_search needs the selective_search_ijcv_with_python package "
                "(https://github.com/sergeyk/selective_search_ijcv_with_python, which runs MATLAB); "
                "install it, or pass your own windows to detect_windows"
            ) from None
        fnames = [os.path.abspath(os.fspath(f)) for f in image_fnames]  # absolute: MATLAB runs elsewhere
        windows = selective_search.get_windows(fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(fnames, windows))

    def detect_ssd(
        self, images: Iterable[Any], threshold: float = 0.5, batch_size: int = 16
    ) -> list[list[deploy.Detection]]:
        """Each image's SSD detections above ``threshold``: ``[(label, confidence, (xmin, ymin, xmax, ymax)),
        ...]`` in the image's pixels (see the module)."""
        if self._ssd is None:
            self._ssd = deploy.DetectionModel(self.model_files, self.ssd_settings, net=self, warn=False)
        channels = self._ssd.input_shape[0]
        return self._ssd.detect([_pixels(im, channels) for im in images], threshold, batch_size)

    # ------------------------------------------------------------------ cropping
    def crop(self, im: np.ndarray, window: Sequence[float]) -> np.ndarray:
        """The pixels of ``window`` = (ymin, xmin, ymax, xmax) of the H x W x K image ``im``, with the
        configured context padding (see the module)."""
        ymin, xmin, ymax, xmax = (round(float(v)) for v in window)
        if not self.context_pad:
            out = im[ymin:ymax, xmin:xmax]
            if out.size == 0:
                raise CaffeError(
                    f"Detector.crop: window {tuple(window)} holds no pixels of an image of shape {im.shape}"
                )
            return out
        crop_h, crop_w = (int(d) for d in self.crop_dims[:2])
        pad = float(self.context_pad)
        # grow the box so that the window fills the input minus a context_pad border
        scale = np.array([crop_h / (crop_h - 2 * pad), crop_w / (crop_w - 2 * pad)])
        half = np.array([(ymax - ymin + 1) / 2.0, (xmax - xmin + 1) / 2.0])
        center = np.array([ymin, xmin]) + half
        box = np.round(np.concatenate([center - scale * half, center + scale * half]))
        full = box[2:] - box[:2] + 1
        unit = np.array([crop_h, crop_w]) / full  # input pixels per image pixel
        offset = np.round(np.maximum(0.0, -box[:2]) * unit).astype(int)  # padding where the box leaves the image
        height, width = im.shape[:2]
        box = np.clip(box, 0.0, [height, width, height, width])
        clipped = box[2:] - box[:2] + 1
        if np.any(clipped <= 1):
            raise CaffeError(f"Detector.crop: window {tuple(window)} lies outside an image of shape {im.shape}")
        size = np.round(clipped * unit).astype(int)
        size = np.maximum(1, np.minimum(size, np.array([crop_h, crop_w]) - offset))
        top, left, bottom, right = (int(v) for v in box)
        context = caffe_io.resize_image(im[top:bottom, left:right], (int(size[0]), int(size[1])))
        if context.ndim == 2:
            context = context[:, :, np.newaxis]
        out = np.ones(tuple(int(d) for d in self.crop_dims), dtype=np.float32) * self.crop_mean
        oy, ox = (int(v) for v in offset)
        out[oy : oy + size[0], ox : ox + size[1]] = context
        return out

    def configure_crop(self, context_pad: int | None) -> None:
        """Set ``crop_dims`` (input size in image layout) and ``context_pad``; with context padding,
        also ``crop_mean``, the mean in unprocessed image units used to fill the padding."""
        in_ = self.inputs[0]
        transpose = self.transformer.transpose[in_]
        net_shape = self.blobs[in_].data.shape[1:]
        dims = [0] * len(transpose)
        for net_axis, image_axis in enumerate(transpose):
            dims[image_axis] = net_shape[net_axis]
        self.crop_dims = np.array(dims)
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(tuple(dims), dtype=np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float32)
        channel_swap = self.transformer.channel_swap.get(in_)
        if channel_swap is not None and crop_mean.shape[0] == len(channel_swap):
            crop_mean = crop_mean[np.argsort(channel_swap)]
        crop_mean = crop_mean.transpose(np.argsort(transpose))
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean


def _pixels(image: Any, channels: int) -> np.ndarray:
    """H x W x ``channels`` uint8 pixels of a file name or an array (uint8, or floats in [0, 1])."""
    if isinstance(image, (str, os.PathLike)):
        data = read_file(image, "image", error=CaffeError)
        return deploy.decode_image(data, channels, os.fspath(image))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.size == 0:
        raise CaffeError(f"Detector.detect_ssd: expected an H x W x 1|3 image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if arr.shape[2] != channels:
        arr = np.repeat(arr, channels, axis=2) if channels == 3 else np.rint(arr.mean(axis=2, keepdims=True))
    return arr.astype(np.uint8, copy=False)
