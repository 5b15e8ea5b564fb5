#!/usr/bin/env python
"""pycaffe's classify.py: classify an image, a folder of images or a .npy of images; save the predictions (.npy).

usage: classify.py input_file output_file --model_def DEPLOY --pretrained_model WEIGHTS [--gpu] [--center_only]
       [--images_dim 256,256] [--mean_file MEAN] [--input_scale S] [--raw_scale 255] [--channel_swap 2,1,0]
       [--ext jpg]

As pycaffe's script: images are loaded with ``caffe.io.load_image``, resized to ``--images_dim`` and
classified by ``caffe.Classifier`` (10 crops averaged unless ``--center_only``); the mean is the
per-channel mean of ``--mean_file`` (a .npy as pycaffe's, or a .binaryproto). pycaffe's defaults pointed
into a Caffe checkout; here ``--model_def`` and ``--pretrained_model`` are required and the mean is
optional. For top-k output, URLs, videos and model archives, use ``caffe classify``.
"""

import argparse
import glob
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    import caffe
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import caffe

from caffe.deploy import channel_mean, read_mean
from caffe.errors import CaffeError
from caffe.protoio import atomic_write


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("input_file", help="Input image, directory, or npy.")
    p.add_argument("output_file", help="Output npy filename.")
    p.add_argument("--model_def", required=True, help="Model definition file.")
    p.add_argument("--pretrained_model", required=True, help="Trained model weights file.")
    p.add_argument("--gpu", action="store_true", help="Switch for gpu computation.")
    p.add_argument("--center_only", action="store_true", help="Classify the center crop only (else 10 crops).")
    p.add_argument("--images_dim", default="256,256", help="Canonical 'height,width' of the input images.")
    p.add_argument("--mean_file", default=None, help="Data set image mean (.npy of K x H x W, or .binaryproto).")
    p.add_argument("--input_scale", type=float, help="Multiply input features by this scale after the mean.")
    p.add_argument("--raw_scale", type=float, default=255.0, help="Multiply raw input by this before the mean.")
    p.add_argument("--channel_swap", default="2,1,0", help="Order to permute input channels (RGB -> BGR).")
    p.add_argument("--ext", default="jpg", help="Image file extension to take as input when a directory is given.")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    image_dims = [int(s) for s in args.images_dim.split(",")]
    mean = channel_mean(read_mean(args.mean_file)) if args.mean_file else None
    channel_swap = [int(s) for s in args.channel_swap.split(",")] if args.channel_swap else None
    if args.gpu:
        caffe.set_mode_gpu()
        print("GPU mode")
    else:
        caffe.set_mode_cpu()
        print("CPU mode")
    classifier = caffe.Classifier(
        args.model_def,
        args.pretrained_model,
        image_dims=image_dims,
        mean=mean,
        input_scale=args.input_scale,
        raw_scale=args.raw_scale,
        channel_swap=channel_swap,
    )
    path = os.path.expanduser(args.input_file)
    if path.endswith("npy"):
        print(f"Loading file: {path}")
        inputs = np.load(path)
    elif os.path.isdir(path):
        print(f"Loading folder: {path}")
        inputs = [caffe.io.load_image(f) for f in sorted(glob.glob(os.path.join(path, "*." + args.ext)))]
    else:
        print(f"Loading file: {path}")
        inputs = [caffe.io.load_image(path)]
    print(f"Classifying {len(inputs)} inputs.")
    start = time.time()
    predictions = classifier.predict(inputs, not args.center_only)
    print(f"Done in {time.time() - start:.2f} s.")
    output = args.output_file if args.output_file.endswith(".npy") else args.output_file + ".npy"  # as np.save
    print(f"Saving results into {output}")
    buf = io.BytesIO()
    np.save(buf, predictions)
    atomic_write(output, buf.getvalue())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CaffeError as e:
        print(f"classify.py: {e}", file=sys.stderr)
        sys.exit(1)
