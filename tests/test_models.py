"""Real pretrained Caffe models give the same outputs as OpenCV's cv2.dnn running the same files.

OpenCV 4.x's Caffe importer is an independent implementation of Caffe's layers (it reproduces the
original Caffe's open_nsfw output to 2e-9), so agreement to 1e-4 on the final outputs, with the same
top-1, is strong evidence that our layers, upgrades and weight loading are exact.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import asset

import caffe

IMAGES = "caffe-ref/examples/images"


def bgr_image(name: str, width: int, height: int) -> np.ndarray:
    img = cv2.imread(str(asset(f"{IMAGES}/{name}")), cv2.IMREAD_COLOR)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def nchw(*images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.stack([im.transpose(2, 0, 1) for im in images]))


def cv2_forward(prototxt: Path, weights: Path, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x)
    return [np.asarray(o) for o in net.forward(outputs)]


def ours(prototxt: Path, weights: Path, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    name = net.inputs[0]
    net.blobs[name].reshape(*x.shape)
    net.reshape()
    out = net.forward(blobs=outputs, **{name: x})
    return [out[o].copy() for o in outputs]


def assert_same(a: list[np.ndarray], b: list[np.ndarray], atol: float = 1e-4) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape or x.size == y.size, (x.shape, y.shape)
        x, y = x.reshape(y.shape), y
        assert np.abs(x - y).max() <= atol, f"max abs diff {np.abs(x - y).max():.3g}"
        n = x.shape[0]
        np.testing.assert_array_equal(x.reshape(n, -1).argmax(1), y.reshape(n, -1).argmax(1))


def test_open_nsfw_resnet50_matches_cv2():
    d = "models/open_nsfw_resnet50_1by2"
    proto, weights = asset(f"{d}/deploy.prototxt"), asset(f"{d}/resnet_50_1by2_nsfw.caffemodel")
    mean = np.array([104, 117, 123], dtype=np.float32)
    x = nchw(bgr_image("cat.jpg", 224, 224) - mean, bgr_image("fish-bike.jpg", 224, 224) - mean)
    a, b = ours(proto, weights, x, ["prob"]), cv2_forward(proto, weights, x, ["prob"])
    assert_same(a, b)
    assert a[0].shape == (2, 2)


def test_squeezenet_matches_cv2_and_reference_top5():
    d = "models/squeezenet_v1.0_deepcompression"
    proto = asset(f"{d}/SqueezeNet_deploy.prototxt")
    weights = asset(f"{d}/squeezenet_v1.0_deepcompression_decoded.caffemodel")
    mean = np.array([104, 117, 123], dtype=np.float32)
    x = nchw(bgr_image("cat.jpg", 227, 227) - mean, bgr_image("fish-bike.jpg", 227, 227) - mean)
    net = caffe.Net(str(proto), caffe.TEST)
    out = net.outputs
    a, b = ours(proto, weights, x, out), cv2_forward(proto, weights, x, out)
    assert_same(a, b)


@pytest.mark.parametrize(
    ("name", "shape", "outputs"),
    [
        ("det1", (1, 3, 120, 160), ["conv4-2", "prob1"]),
        ("det2", (2, 3, 24, 24), ["conv5-2", "prob1"]),
        ("det3", (2, 3, 48, 48), ["conv6-2", "conv6-3", "prob1"]),
        ("det4", (2, 15, 24, 24), ["fc5_1", "fc5_2", "fc5_3", "fc5_4", "fc5_5"]),
    ],
)
def test_mtcnn_matches_cv2(name: str, shape: tuple[int, ...], outputs: list[str]):
    d = "models/mtcnn_face_caffe"
    proto, weights = asset(f"{d}/{name}.prototxt"), asset(f"{d}/{name}.caffemodel")
    img = cv2.imread(str(asset(f"{d}/test1.jpg")), cv2.IMREAD_COLOR).astype(np.float32)
    crops = []
    for k in range(shape[0]):
        patch = cv2.resize(img[k * 10 :, k * 7 :], (shape[3], shape[2]))[:, :, ::-1]  # RGB, as MTCNN
        crops.append(np.concatenate([patch.transpose(2, 0, 1)] * (shape[1] // 3), axis=0))
    x = np.ascontiguousarray((np.stack(crops) - 127.5) * 0.0078125, dtype=np.float32)
    net_out = ours(proto, weights, x, outputs)
    ref = cv2_forward(proto, weights, x, outputs)
    for a, b in zip(net_out, ref, strict=True):
        assert np.abs(a - b.reshape(a.shape)).max() <= 1e-4


def mnist_test_set() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(asset("mnist/t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(asset("mnist/t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    return images, labels


@pytest.mark.parametrize(
    ("folder", "weights"),
    [
        ("lenet_mnist_newformat", "lenet_iter_10000.caffemodel"),
        ("lenet_mnist_v1format_2014", "lenet_iter_10000.caffemodel"),
    ],
)
def test_lenet_scores_on_mnist_and_matches_cv2(folder: str, weights: str):
    proto, w = asset(f"models/{folder}/lenet.prototxt"), asset(f"models/{folder}/{weights}")
    images, labels = mnist_test_set()
    x = images.astype(np.float32) * 0.00390625
    net = caffe.Net(str(proto), caffe.TEST, weights=str(w))
    name = net.inputs[0]
    net.blobs[name].reshape(1000, 1, 28, 28)
    net.reshape()
    correct = 0
    for i in range(0, len(x), 1000):
        prob = net.forward(**{name: x[i : i + 1000]})["prob"]
        correct += int((prob.argmax(1) == labels[i : i + 1000]).sum())
    accuracy = correct / len(x)
    assert accuracy >= 0.99, accuracy
    a = ours(proto, w, x[:64], ["prob"])
    b = cv2_forward(proto, w, x[:64], ["prob"])
    assert_same(a, b)


def test_squeezenet_scores_match_the_independent_numpy_reference():
    """REFERENCE_top5_numpy.txt: pre-softmax scores from a NumPy forward pass written by someone else."""
    from PIL import Image

    d = "models/squeezenet_v1.0_deepcompression"
    lines = asset(f"{d}/REFERENCE_top5_numpy.txt").read_text().splitlines()
    expected: dict[str, list[tuple[float, str]]] = {}
    for line in lines:
        if line.startswith("== "):
            current = expected.setdefault(line[3:].strip(), [])
        elif line and not line.startswith("#"):
            score, synset = line.split(" ", 2)[:2]
            current.append((float(score), synset))
    labels = [w.split(" ", 1)[0] for w in asset("models/imagenet-common/synset_words.txt").read_text().splitlines()]
    net = caffe.Net(
        str(asset(f"{d}/SqueezeNet_deploy.prototxt")),
        caffe.TEST,
        weights=str(asset(f"{d}/squeezenet_v1.0_deepcompression_decoded.caffemodel")),
    )
    mean = np.array([104, 117, 123], dtype=np.float32)
    for image, top5 in expected.items():
        rgb = Image.open(asset(f"{IMAGES}/{image}")).convert("RGB").resize((227, 227), Image.BILINEAR)
        bgr = np.asarray(rgb, dtype=np.float32)[:, :, ::-1] - mean
        scores = net.forward(data=nchw(bgr))[net.outputs[0]].reshape(-1)
        order = np.argsort(-scores)[:5]
        assert [labels[k] for k in order] == [s for _, s in top5]
        np.testing.assert_allclose(scores[order], [v for v, _ in top5], atol=2e-3)
