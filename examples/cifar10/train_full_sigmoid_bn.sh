#!/usr/bin/env bash
# Train the CIFAR-10 "full" net with sigmoid units and batch normalization:
#     examples/cifar10/cifar10_full_sigmoid_solver_bn.prototxt
# Run from the Caffe root after ./examples/cifar10/create_cifar10.sh; arguments are passed on to
# `caffe train`.
set -e

SOLVER=examples/cifar10/cifar10_full_sigmoid_solver_bn.prototxt
if [ ! -f "$SOLVER" ]; then
    echo "Error: run this script from the Caffe root (no $SOLVER in $(pwd))" >&2
    exit 1
fi

caffe train --solver="$SOLVER" "$@"
