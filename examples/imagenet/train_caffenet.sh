#!/usr/bin/env bash
# Train the BVLC Reference CaffeNet on ImageNet (models/bvlc_reference_caffenet/solver.prototxt).
# Run from the Caffe root once examples/imagenet/create_imagenet.sh and make_imagenet_mean.sh have
# made the LMDBs and data/ilsvrc12/imagenet_mean.binaryproto; arguments are passed on to
# `caffe train` (e.g. --gpu=0). Snapshots every 10,000 iterations:
# models/bvlc_reference_caffenet/caffenet_train_iter_N.{caffemodel,solverstate}.
set -e

SOLVER=models/bvlc_reference_caffenet/solver.prototxt
if [ ! -f "$SOLVER" ]; then
    echo "Error: run this script from the Caffe root (no $SOLVER in $(pwd))" >&2
    exit 1
fi

caffe train --solver="$SOLVER" "$@"
