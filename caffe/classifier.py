"""pycaffe's ``caffe.Classifier``: a ``Net`` that classifies H x W x K images, one view or ten.

``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
raw_scale=None, channel_swap=None)`` builds the net in the TEST phase with the weights, and a
``caffe.io.Transformer`` for its first input (transpose to K x H x W, then the given channel swap, raw
scale, mean and input scale, in pycaffe's order). ``predict(inputs, oversample=True)`` resizes every
image to ``image_dims`` (default: the input blob's H x W), takes the centre crop of the input's size or
the ten crops of ``caffe.io.oversample`` (corners, centre and their mirrors) whose outputs are averaged,
runs the net over them in batches of its batch size and returns the first output blob's values.

Differences from pycaffe, all small:

* the result is always an N x C array (pycaffe returned N x C x 1 x 1 for nets whose output blob
  has spatial axes, such as a global pooling, when ``oversample`` was False);
* an image already at ``image_dims`` is not resized (pycaffe resampled it onto the same grid);
* an empty ``inputs`` gives a 0 x C array (pycaffe raised an IndexError), and images with a channel
  count other than the first image's, or ``image_dims`` smaller than the input, are clear errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from caffe import io as caffe_io
from caffe.common import TEST
from caffe.errors import CaffeError
from caffe.net import Net


class Classifier(Net):
    """A ``Net`` for image classification by resizing, centre cropping or oversampling (see the module)."""

    def __init__(
        self,
        model_file: Any,
        pretrained_file: Any,
        image_dims: Sequence[int] | None = None,
        mean: Any = None,
        input_scale: Any = None,
        raw_scale: Any = None,
        channel_swap: Sequence[int] | None = None,
    ) -> None:
        super().__init__(model_file, TEST, weights=pretrained_file)
        if not self.inputs:
            raise CaffeError(f"Classifier: the net in {model_file} has no input blob to feed images to")
        in_ = self.inputs[0]
        self.transformer = caffe_io.image_transformer(
            in_, self.blobs[in_].data.shape, mean, input_scale, raw_scale, channel_swap
        )
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = np.array([int(d) for d in image_dims])
        if self.image_dims.shape != (2,) or np.any(self.image_dims < self.crop_dims):
            raise CaffeError(
                f"Classifier: image_dims {tuple(self.image_dims)} must be (height, width) at least the "
                f"input's {tuple(self.crop_dims)}"
            )

    def _center_window(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the crop_dims window centred in image_dims, as pycaffe computes it."""
        center = self.image_dims / 2.0
        half = self.crop_dims / 2.0
        top, left = (int(v) for v in center - half)
        bottom, right = (int(v) for v in center + half)
        return top, left, bottom, right

    def predict(self, inputs: Sequence[Any], oversample: bool = True) -> np.ndarray:
        """Classify ``inputs`` (H x W x K images, as ``caffe.io.load_image`` gives): an N x C array.

        With ``oversample`` (default) each image's 10 crops are classified and their outputs averaged;
        otherwise only the centre crop is.
        """
        in_ = self.inputs[0]
        images = [np.asarray(im) for im in inputs]
        if not images:
            return np.zeros((0, int(np.prod(self.blobs[self.outputs[0]].data.shape[1:]))), dtype=np.float32)
        height, width = (int(d) for d in self.image_dims)
        channels = images[0].shape[2] if images[0].ndim == 3 else 1
        resized = np.zeros((len(images), height, width, channels), dtype=np.float32)
        for i, im in enumerate(images):
            if im.ndim == 2:
                im = im[:, :, np.newaxis]
            if im.shape[2] != channels:
                raise CaffeError(f"Classifier.predict: image {i} has {im.shape[2]} channels, image 0 has {channels}")
            resized[i] = im if im.shape[:2] == (height, width) else caffe_io.resize_image(im, (height, width))
        if oversample:
            views = caffe_io.oversample(resized, self.crop_dims)
        else:
            top, left, bottom, right = self._center_window()
            views = resized[:, top:bottom, left:right, :]
        batch = np.stack([self.transformer.preprocess(in_, v) for v in views])
        out = self.forward_all(**{in_: batch})[self.outputs[0]]
        predictions = out.reshape(len(views), -1)
        if oversample:
            predictions = predictions.reshape(len(images), 10, -1).mean(axis=1)
        return predictions
