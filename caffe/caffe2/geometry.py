"""Convolution and pooling arithmetic shared by both directions of the conversion.

Caffe2 pools with floor rounding over explicit head/tail pads (``pad_t``/``pad_b``...), or, with
``legacy_pad: 3`` (CAFFE_LEGACY_POOLING), with Caffe's ceil rounding; its AveragePool divides by the
number of input pixels in each window (padding excluded, unless ``count_include_pad``). Caffe pads both
sides alike, rounds up (or down with ``round_mode: FLOOR``), and its AVE pooling divides by the window
clipped to ``[-pad, size + pad)``: padding counted. :func:`ave_divisors` gives both, per output position.
"""

from __future__ import annotations

import numpy as np

from caffe.layers.vision import caffe_pool_output

CAFFE_LEGACY_POOLING = 3


def conv_output(size: int, kernel: int, stride: int, pad_head: int, pad_tail: int, dilation: int = 1) -> int:
    """A convolution's output size (the same rule in Caffe and Caffe2)."""
    return (size + pad_head + pad_tail - (dilation * (kernel - 1) + 1)) // stride + 1


def c2_pool_output(size: int, kernel: int, stride: int, pad_head: int, pad_tail: int, legacy_pad: int = 0) -> int:
    """Caffe2's pooled size: floor over explicit pads, or Caffe's ceil rule with ``legacy_pad: 3``."""
    if legacy_pad == CAFFE_LEGACY_POOLING:
        return caffe_pool_output(size, kernel, stride, pad_head, True, pad_head > 0)
    return (size + pad_head + pad_tail - kernel) // stride + 1


def window_starts(out: int, stride: int, pad_head: int) -> np.ndarray:
    return np.arange(out, dtype=np.int64) * stride - pad_head


def caffe_divisor(size: int, kernel: int, stride: int, pad: int, out: int) -> np.ndarray:
    """Caffe's AVE pool size along one axis: the window clipped to ``[-pad, size + pad)``."""
    start = window_starts(out, stride, pad)
    return np.minimum(start + kernel, size + pad) - start


def c2_divisor(size: int, kernel: int, stride: int, pad_head: int, out: int, include_pad: bool = False) -> np.ndarray:
    """Caffe2's AveragePool count along one axis: the window's pixels inside the image (or, with
    ``count_include_pad``, the whole kernel)."""
    start = window_starts(out, stride, pad_head)
    if include_pad:
        return np.full(out, kernel, dtype=np.int64)
    return np.minimum(start + kernel, size) - np.maximum(start, 0)


def divisor_map(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The (out_h, out_w) products of per-axis window sizes."""
    return np.outer(h, w).astype(np.float64)
