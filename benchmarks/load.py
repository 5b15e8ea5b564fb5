"""Time to read a model: parse the prototxt, build the Net, load the .caffemodel, against cv2.dnn.

    python benchmarks/load.py [--no-write]

The peer is OpenCV's Caffe importer (``cv2.dnn.readNetFromCaffe``) reading the same two files in
the same process; the table goes to docs/benchmarks.md ("Loading models").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2
from common import assets_dir, machine_info, median, write_docs_section

import caffe
from caffe.protoio import read_net_param_binary

SECTION = "## Loading models"
MODELS = {
    "ResNet-50 1by2 (open_nsfw)": (
        "models/open_nsfw_resnet50_1by2",
        "deploy.prototxt",
        "resnet_50_1by2_nsfw.caffemodel",
    ),
    "SqueezeNet v1.0": (
        "models/squeezenet_v1.0_deepcompression",
        "SqueezeNet_deploy.prototxt",
        "squeezenet_v1.0_deepcompression_decoded.caffemodel",
    ),
    "LeNet (V1 format, upgraded)": (
        "models/lenet_mnist_v1format_2014",
        "lenet.prototxt",
        "lenet_iter_10000.caffemodel",
    ),
}


def best_of(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    root = assets_dir()
    rows = []
    for name, (folder, proto, weights) in MODELS.items():
        p, w = root / folder / proto, root / folder / weights
        size_mb = w.stat().st_size / 1e6
        parse = best_of(lambda w=w: read_net_param_binary(w), args.repeat)
        ours = best_of(lambda p=p, w=w: caffe.Net(str(p), caffe.TEST, weights=str(w)), args.repeat)
        peer = best_of(lambda p=p, w=w: cv2.dnn.readNetFromCaffe(str(p), str(w)), args.repeat)
        rows.append((name, size_mb, parse, ours, peer))
        print(
            f"{name}: {size_mb:.1f} MB; parse {parse[1] * 1e3:.0f} ms; Net+weights {ours[1] * 1e3:.0f} ms; "
            f"cv2 {peer[1] * 1e3:.0f} ms",
            flush=True,
        )
    info = machine_info()
    lines = [
        SECTION,
        "",
        f"Reproduce with `python benchmarks/load.py`. Machine: {info['cpu']}, {info['cores']} cores; "
        f"torch {info['torch']}, OpenCV {info['opencv']}, protobuf backend upb.",
        "Median (min) of "
        f"{args.repeat} repeats, in ms: reading the binary NetParameter (protobuf's upb backend, blobs to "
        "NumPy), building the Net from the prototxt and copying the weights in, and cv2.dnn reading both files.",
        "",
        "| model | caffemodel MB | parse caffemodel | caffe.Net(..., weights=) | cv2.dnn.readNetFromCaffe "
        "| ours / cv2 |",
        "|---|---|---|---|---|---|",
    ]
    for name, size_mb, parse, ours, peer in rows:
        lines.append(
            f"| {name} | {size_mb:.1f} | {parse[1] * 1e3:.0f} ({parse[0] * 1e3:.0f}) | "
            f"{ours[1] * 1e3:.0f} ({ours[0] * 1e3:.0f}) | {peer[1] * 1e3:.0f} ({peer[0] * 1e3:.0f}) | "
            f"{ours[1] / peer[1]:.2f}x |"
        )
    if not args.no_write:
        write_docs_section(SECTION, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
