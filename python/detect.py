#!/usr/bin/env python
"""pycaffe's detect.py: classify windows of images (R-CNN style) with ``caffe.Detector``; save them as CSV or HDF5.

usage: detect.py input_file output_file --model_def DEPLOY --pretrained_model WEIGHTS [--crop_mode list]
       [--context_pad 16] [--mean_file MEAN] [--raw_scale 255] [--channel_swap 2,1,0] [--input_scale S] [--gpu]

``--crop_mode=list``: ``input_file`` is a CSV with a header and rows ``filename,ymin,xmin,ymax,xmax``.
``--crop_mode=selective_search``: a text file of image paths, windows from Selective Search (needs the
``selective_search_ijcv_with_python`` package and MATLAB). Output: ``.csv`` (``filename,ymin,xmin,ymax,
xmax,class0,...``) or ``.h5`` (datasets ``filename``, ``window``, ``prediction``; pycaffe wrote a pandas
frame there, pandas is not needed here). The mean file (.npy or .binaryproto) is used as an image.
"""

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np

try:
    import caffe
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import caffe

from caffe.deploy import read_mean
from caffe.errors import CaffeError, DataError
from caffe.protoio import atomic_write

COORDS = ["ymin", "xmin", "ymax", "xmax"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("input_file", help="Input .csv of windows (list) or .txt of image paths (selective_search).")
    p.add_argument("output_file", help="Output .csv or .h5 filename.")
    p.add_argument("--model_def", required=True, help="Model definition file.")
    p.add_argument("--pretrained_model", required=True, help="Trained model weights file.")
    p.add_argument("--crop_mode", default="selective_search", choices=["list", "selective_search"])
    p.add_argument("--gpu", action="store_true", help="Switch for gpu computation.")
    p.add_argument("--mean_file", default=None, help="Data set image mean (.npy or .binaryproto).")
    p.add_argument("--input_scale", type=float, help="Multiply input features by this scale after the mean.")
    p.add_argument("--raw_scale", type=float, default=255.0, help="Multiply raw input by this before the mean.")
    p.add_argument("--channel_swap", default="2,1,0", help="Order to permute input channels (RGB -> BGR).")
    p.add_argument("--context_pad", type=int, default=16, help="Amount of surrounding context to collect.")
    return p.parse_args(argv)


def read_windows(path):
    """[(filename, windows array N x 4), ...] from a CSV with a header filename,ymin,xmin,ymax,xmax."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(["filename", *COORDS]) - set(rows[0]):
        raise DataError(f"{path}: expected a CSV with the header filename,{','.join(COORDS)}")
    grouped = {}
    for line, row in enumerate(rows, 2):
        try:
            grouped.setdefault(row["filename"], []).append([float(row[c]) for c in COORDS])
        except (TypeError, ValueError):
            raise DataError(f"{path}:{line}: window coordinates must be numbers") from None
    return [(name, np.array(w)) for name, w in grouped.items()]


def write_detections(path, detections):
    if path.endswith(".h5"):
        import h5py

        with h5py.File(path, "w") as f:  # h5py writes in place; the predictions are small
            f["filename"] = np.array([str(d["filename"]) for d in detections], dtype=h5py.string_dtype())
            f["window"] = np.array([d["window"] for d in detections], dtype=np.float64).reshape(-1, 4)
            f["prediction"] = np.array([d["prediction"] for d in detections], dtype=np.float32)
        return
    text = io.StringIO()
    out = csv.writer(text)
    classes = len(detections[0]["prediction"]) if detections else 0
    out.writerow(["filename", *COORDS, *(f"class{k}" for k in range(classes))])
    for d in detections:
        out.writerow([d["filename"], *(f"{v:g}" for v in d["window"]), *(f"{v:.6g}" for v in d["prediction"])])
    atomic_write(path, text.getvalue().encode("utf-8"))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    mean = read_mean(args.mean_file) if args.mean_file else None
    channel_swap = [int(s) for s in args.channel_swap.split(",")] if args.channel_swap else None
    if args.gpu:
        caffe.set_mode_gpu()
        print("GPU mode")
    else:
        caffe.set_mode_cpu()
        print("CPU mode")
    detector = caffe.Detector(
        args.model_def,
        args.pretrained_model,
        mean=mean,
        input_scale=args.input_scale,
        raw_scale=args.raw_scale,
        channel_swap=channel_swap,
        context_pad=args.context_pad,
    )
    start = time.time()
    if args.crop_mode == "list":
        detections = detector.detect_windows(read_windows(args.input_file))
    else:
        images = [line.strip() for line in Path(args.input_file).read_text().splitlines() if line.strip()]
        detections = detector.detect_selective_search(images)
    print(f"Processed {len(detections)} windows in {time.time() - start:.3f} s.")
    write_detections(args.output_file, detections)
    print(f"Saved to {args.output_file}.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CaffeError as e:
        print(f"detect.py: {e}", file=sys.stderr)
        sys.exit(1)
