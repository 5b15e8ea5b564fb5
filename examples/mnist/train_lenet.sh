#!/usr/bin/env bash
# Train LeNet on MNIST: the last step of the MNIST tutorial. From the Caffe root, after
#     ./data/mnist/get_mnist.sh && ./examples/mnist/create_mnist.sh
# run ./examples/mnist/train_lenet.sh; arguments are passed on to `caffe train`
# (--gpu=0, --snapshot=examples/mnist/lenet_iter_5000.solverstate to resume, ...).
#
# lenet_solver.prototxt keeps Caffe's `solver_mode: GPU`: where CUDA exists the training runs on
# GPU `device_id` (0), as in Caffe. Where it does not, neocaffe trains on the CPU instead of
# failing, and the log says so: "Use CPU." and "solver_mode is GPU, but ... training on the CPU".
# Setting `solver_mode: CPU` in the solver, as the tutorial suggests, trains on the CPU everywhere.
# Snapshots: examples/mnist/lenet_iter_5000 and _10000 (.caffemodel and .solverstate).
set -e

SOLVER=examples/mnist/lenet_solver.prototxt
if [ ! -f "$SOLVER" ]; then
    echo "Error: run this script from the Caffe root (no $SOLVER in $(pwd))" >&2
    exit 1
fi

caffe train --solver="$SOLVER" "$@"
