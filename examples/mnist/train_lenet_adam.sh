#!/usr/bin/env bash
# Train LeNet on MNIST with examples/mnist/lenet_solver_adam.prototxt (see train_lenet.sh: run it
# from the Caffe root once the MNIST LMDBs exist; arguments are passed on to `caffe train`).
set -e

SOLVER=examples/mnist/lenet_solver_adam.prototxt
if [ ! -f "$SOLVER" ]; then
    echo "Error: run this script from the Caffe root (no $SOLVER in $(pwd))" >&2
    exit 1
fi

caffe train --solver="$SOLVER" "$@"
