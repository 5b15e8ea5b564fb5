#!/usr/bin/env bash
# Train the MNIST autoencoder with examples/mnist/mnist_autoencoder_solver_adagrad.prototxt.
# Run it from the Caffe root once the MNIST LMDBs exist (./examples/mnist/create_mnist.sh);
# arguments are passed on to `caffe train`.
set -e

SOLVER=examples/mnist/mnist_autoencoder_solver_adagrad.prototxt
if [ ! -f "$SOLVER" ]; then
    echo "Error: run this script from the Caffe root (no $SOLVER in $(pwd))" >&2
    exit 1
fi

caffe train --solver="$SOLVER" "$@"
