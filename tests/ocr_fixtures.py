"""A small CRNN written in senlinuc/caffe_ocr's style (convolution, Transpose, a bidirectional Lstm pair, CTC) and
its synthetic text: 6 x 12 grey strips of 2-4 characters (classes 1-5, class k a bright row k - 1 two columns
wide), mean 100, the net scaling by 0.01 (shared by the layer and the deploy tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import caffe
from caffe.proto import caffe_pb2 as pb

MEAN = 100
LABELS = ["blank", "a", "b", "c", "d", "e"]

_BODY = """
layer { name: "scaled" type: "Power" bottom: "data" top: "scaled" power_param { scale: 0.01 } }
layer { name: "conv" type: "Convolution" bottom: "scaled" top: "conv"
        convolution_param { num_output: 16 kernel_h: 6 kernel_w: 1 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "seq" type: "Transpose" bottom: "conv" top: "seq" transpose_param { dim: 3 dim: 0 dim: 1 dim: 2 } }
layer { name: "flat" type: "Reshape" bottom: "seq" top: "flat" reshape_param { shape { dim: 0 dim: 0 dim: -1 } } }
layer { name: "fw" type: "Lstm" bottom: "flat" top: "fw"
        lstm_param { num_output: 16 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "rev" type: "Reverse" bottom: "flat" top: "rev" }
layer { name: "bw_r" type: "Lstm" bottom: "rev" top: "bw_r"
        lstm_param { num_output: 16 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bw" type: "Reverse" bottom: "bw_r" top: "bw" }
layer { name: "blstm" type: "Concat" bottom: "fw" bottom: "bw" top: "blstm" concat_param { axis: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "blstm" top: "fc"
        inner_product_param { axis: 2 num_output: 6 weight_filler { type: "xavier" } } }
"""

TRAIN_NET = (
    'name: "crnn"\nlayer { name: "data" type: "Input" top: "data" top: "label"\n'
    "        input_param { shape { dim: 16 dim: 1 dim: 6 dim: 12 } shape { dim: 16 dim: 4 } } }"
    + _BODY
    + 'layer { name: "ctc" type: "WarpCTCLoss" bottom: "fc" bottom: "label" top: "ctc" }\n'
    'layer { name: "acc" type: "CTCGreedyDecoder" bottom: "fc" bottom: "label" top: "acc" }\n'
)


def deploy_net(decoder: bool = True) -> str:
    """The deploy form: one 1 x 1 x 6 x 12 input, ending in a CTCGreedyDecoder (or at the scores)."""
    text = 'name: "crnn"\nlayer { name: "data" type: "Input" top: "data"'
    text += " input_param { shape { dim: 1 dim: 1 dim: 6 dim: 12 } } }"
    text += _BODY
    if decoder:
        text += 'layer { name: "result" type: "CTCGreedyDecoder" bottom: "fc" top: "result" }\n'
    return text


def strip_pixels(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 6 x 12 strips and their labels (n x 4, blank-padded)."""
    glyphs = np.eye(6)[1:] * 2 - 0.3
    values = rng.normal(0, 0.1, (n, 6, 12))
    labels = np.zeros((n, 4))
    for i in range(n):
        chars = rng.integers(1, 6, rng.integers(2, 5))
        labels[i, : len(chars)] = chars
        for j, c in enumerate(chars):
            values[i, :, 3 * j : 3 * j + 2] += glyphs[c - 1][:, None]
    return np.clip(np.rint(MEAN + 100 * values), 0, 255).astype(np.uint8), labels


def text_strips(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Strips as the net's input (n x 1 x 6 x 12, the mean subtracted) and their labels."""
    pixels, labels = strip_pixels(rng, n)
    return (pixels.astype(np.float64) - MEAN)[:, np.newaxis], labels


def train_crnn(folder: Path, iterations: int = 150) -> caffe.Net:
    """The train net after ``iterations`` Adam steps on fresh strips (seeded); the net is returned."""
    net_file = folder / "crnn.prototxt"
    net_file.write_text(TRAIN_NET)
    solver = pb.SolverParameter(net=str(net_file), base_lr=0.01, lr_policy="fixed", type="Adam", random_seed=3)
    solver.momentum, solver.momentum2 = 0.9, 0.999
    s = caffe.get_solver(solver)
    rng = np.random.default_rng(0)
    for _ in range(iterations):
        images, labels = text_strips(rng, 16)
        s.net.blobs["data"].data[...] = images
        s.net.blobs["label"].data[...] = labels
        s.step(1)
    return s.net
