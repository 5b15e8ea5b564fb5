#!/usr/bin/env bash
# Train the CIFAR-10 "quick" net: 4,000 iterations at lr 0.001, then from that snapshot 1,000 more
# at lr 0.0001. Run from the Caffe root after ./examples/cifar10/create_cifar10.sh; arguments are
# passed on to both `caffe train` runs (e.g. --gpu=0).
# Final weights: examples/cifar10/cifar10_quick_iter_5000.caffemodel.h5 (the second solver
# snapshots in HDF5).
set -e

EXAMPLE=examples/cifar10
if [ ! -f "$EXAMPLE/cifar10_quick_solver.prototxt" ]; then
    echo "Error: run this script from the Caffe root (no $EXAMPLE/cifar10_quick_solver.prototxt" \
         "in $(pwd))" >&2
    exit 1
fi

caffe train --solver="$EXAMPLE/cifar10_quick_solver.prototxt" "$@"

# lower the learning rate tenfold for the last 1,000 iterations
caffe train --solver="$EXAMPLE/cifar10_quick_solver_lr1.prototxt" \
    --snapshot="$EXAMPLE/cifar10_quick_iter_4000.solverstate" "$@"
