#!/usr/bin/env bash
# Train the CIFAR-10 "full" net in three runs: 60,000 iterations at lr 0.001, then 5,000 at 0.0001,
# then 5,000 at 0.00001, each run resuming from the previous one's last snapshot. Run from the Caffe
# root after ./examples/cifar10/create_cifar10.sh; arguments are passed on to every `caffe train`.
# These solvers snapshot in HDF5, so the states to resume from are .solverstate.h5 files.
set -e

EXAMPLE=examples/cifar10
if [ ! -f "$EXAMPLE/cifar10_full_solver.prototxt" ]; then
    echo "Error: run this script from the Caffe root (no $EXAMPLE/cifar10_full_solver.prototxt" \
         "in $(pwd))" >&2
    exit 1
fi

caffe train --solver="$EXAMPLE/cifar10_full_solver.prototxt" "$@"

# learning rate / 10
caffe train --solver="$EXAMPLE/cifar10_full_solver_lr1.prototxt" \
    --snapshot="$EXAMPLE/cifar10_full_iter_60000.solverstate.h5" "$@"

# learning rate / 100
caffe train --solver="$EXAMPLE/cifar10_full_solver_lr2.prototxt" \
    --snapshot="$EXAMPLE/cifar10_full_iter_65000.solverstate.h5" "$@"
