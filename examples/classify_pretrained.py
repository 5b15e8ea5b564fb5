"""Run a real pretrained Caffe model, unchanged: SqueezeNet v1.0 on the tutorial's cat image.

    python examples/classify_pretrained.py [image ...]

Uses the model files in the shared assets (CAFFE_TEST_ASSETS, default ../shared/assets): the
deploy prototxt, the caffemodel, the ImageNet mean and the synset labels, with pycaffe's classic
preprocessing (BGR, 0-255, mean subtracted, 227x227 centre).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

import caffe

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("CAFFE_TEST_ASSETS", ROOT.parent / "shared" / "assets"))
MODEL = ASSETS / "models" / "squeezenet_v1.0_deepcompression"


def load_bgr(path: Path, size: int) -> np.ndarray:
    """Decode an image, resize it bilinearly to size x size and return it as BGR floats in 0..255."""
    from PIL import Image

    try:
        img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    except OSError as e:
        raise SystemExit(f"{path}: cannot read image ({e})") from None
    return np.asarray(img, dtype=np.float32)[:, :, ::-1]


def main(argv: list[str]) -> int:
    images = [Path(a) for a in argv] or [ASSETS / "caffe-ref" / "examples" / "images" / "cat.jpg"]
    net = caffe.Net(
        str(MODEL / "SqueezeNet_deploy.prototxt"),
        caffe.TEST,
        weights=str(MODEL / "squeezenet_v1.0_deepcompression_decoded.caffemodel"),
    )
    labels = (ASSETS / "models" / "imagenet-common" / "synset_words.txt").read_text().splitlines()
    mean = np.array([104.0, 117.0, 123.0], dtype=np.float32)
    size = net.blobs["data"].shape[2]
    net.blobs["data"].reshape(len(images), 3, size, size)
    for i, image in enumerate(images):
        net.blobs["data"].data[i] = (load_bgr(image, size) - mean).transpose(2, 0, 1)
    start = time.perf_counter()
    out = net.forward()
    elapsed = time.perf_counter() - start
    scores = next(iter(out.values())).reshape(len(images), -1)
    for image, s in zip(images, scores, strict=True):
        e = np.exp(s - s.max())
        prob = e / e.sum()
        print(f"{image.name}:")
        for k in np.argsort(-prob)[:5]:
            print(f'  {prob[k]:.4f} - "{labels[k]}"')
    print(f"forward: {elapsed * 1000:.1f} ms for {len(images)} image(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
