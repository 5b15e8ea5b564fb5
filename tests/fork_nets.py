"""Shared by the fork-prototxt tests and the cv2 sweep: where the fixtures are, and random weights that keep
a deep random-weight net's activations in range (He-scaled filters, BatchNorm/BN statistics of a unit-ish
variance, positive scales), so that outputs are neither zero nor overflowing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import caffe

FORKS = Path(__file__).parent / "data" / "forks"


def random_weights(net: caffe.Net, seed: int = 0) -> None:
    """Fill every parameter blob of ``net`` with random values (in place), by the layer's role."""
    rng = np.random.default_rng(seed)
    for layer in net.layer_dict.values():
        blobs = [b.data for b in layer.blobs]
        if layer.type == "BatchNorm":  # mean, variance, moving-average factor
            blobs[0][...] = rng.normal(0, 0.1, blobs[0].shape)
            blobs[1][...] = rng.uniform(0.5, 1.5, blobs[1].shape)
            blobs[2][...] = 1
            continue
        for i, data in enumerate(blobs):
            if (layer.type in ("Scale", "BN") and i == 0) or (layer.type == "BN" and i == 3):  # scales, BN variance
                data[...] = rng.uniform(0.5, 1.5, data.shape)
            elif layer.type == "PReLU":
                data[...] = rng.uniform(0, 0.3, data.shape)
            elif i == 0 and data.ndim > 1:  # filters: He-scaled by fan-in
                data[...] = rng.standard_normal(data.shape, np.float32) * np.float32(math.prod(data.shape[1:]) ** -0.5)
            else:  # biases, shifts, means
                data[...] = rng.normal(0, 0.1, data.shape)


def random_input(net: caffe.Net, seed: int = 1) -> dict[str, np.ndarray]:
    """Standard-normal float32 values for each input blob of ``net``, set into the net and returned."""
    rng = np.random.default_rng(seed)
    values = {}
    for name in net.inputs:
        values[name] = rng.standard_normal(net.blobs[name].shape).astype(np.float32)
        net.blobs[name].data[...] = values[name]
    return values
