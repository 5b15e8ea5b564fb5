#!/usr/bin/env bash
# Turn the MNIST files in data/mnist into the databases the LeNet example reads:
# examples/mnist/mnist_train_${BACKEND} and examples/mnist/mnist_test_${BACKEND}.
# Run it from the Caffe root, after ./data/mnist/get_mnist.sh:
#     ./examples/mnist/create_mnist.sh
# Edit BACKEND to write LevelDB databases instead.
set -e

EXAMPLE=examples/mnist
DATA=data/mnist

BACKEND="lmdb"

if [ ! -d "$DATA" ] || [ ! -d "$EXAMPLE" ]; then
    echo "Error: run this script from the Caffe root (no $DATA or $EXAMPLE folder in $(pwd))" >&2
    exit 1
fi
if ! command -v caffe > /dev/null 2>&1; then
    echo "Error: the 'caffe' command is not on PATH (install neocaffe: pip install -e .)" >&2
    exit 1
fi

echo "Creating ${BACKEND}..."

rm -rf "$EXAMPLE/mnist_train_${BACKEND}"
rm -rf "$EXAMPLE/mnist_test_${BACKEND}"

caffe convert_mnist_data "$DATA/train-images-idx3-ubyte" \
    "$DATA/train-labels-idx1-ubyte" "$EXAMPLE/mnist_train_${BACKEND}" --backend=${BACKEND}
caffe convert_mnist_data "$DATA/t10k-images-idx3-ubyte" \
    "$DATA/t10k-labels-idx1-ubyte" "$EXAMPLE/mnist_test_${BACKEND}" --backend=${BACKEND}

echo "Done."
