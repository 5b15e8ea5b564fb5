#!/usr/bin/env bash
# Turn the CIFAR-10 binary batches into the databases and the mean image the CIFAR-10 nets read:
# examples/cifar10/cifar10_{train,test}_${DBTYPE} and examples/cifar10/mean.binaryproto.
# Needs data_batch_1.bin .. data_batch_5.bin and test_batch.bin in data/cifar10 (the "binary
# version" of CIFAR-10, as Caffe's data/cifar10/get_cifar10.sh unpacks it). From the Caffe root:
#     ./examples/cifar10/create_cifar10.sh
set -e

EXAMPLE=examples/cifar10
DATA=data/cifar10
DBTYPE=lmdb

if [ ! -d "$DATA" ] || [ ! -d "$EXAMPLE" ]; then
    echo "Error: run this script from the Caffe root (no $DATA or $EXAMPLE folder in $(pwd))" >&2
    exit 1
fi
if ! command -v caffe > /dev/null 2>&1; then
    echo "Error: the 'caffe' command is not on PATH (install neocaffe: pip install -e .)" >&2
    exit 1
fi

echo "Creating $DBTYPE..."

rm -rf "$EXAMPLE/cifar10_train_$DBTYPE" "$EXAMPLE/cifar10_test_$DBTYPE"

caffe convert_cifar_data "$DATA" "$EXAMPLE" "$DBTYPE"

echo "Computing image mean..."

caffe compute_image_mean --backend=$DBTYPE \
    "$EXAMPLE/cifar10_train_$DBTYPE" "$EXAMPLE/mean.binaryproto"

echo "Done."
