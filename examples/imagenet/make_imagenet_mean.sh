#!/usr/bin/env bash
# Compute the mean image of the ImageNet training LMDB (made by create_imagenet.sh)
# into data/ilsvrc12/imagenet_mean.binaryproto. Run it from the Caffe root.
# (get_ilsvrc_aux.sh also fetches a ready-made imagenet_mean.binaryproto.)
set -e

EXAMPLE="${EXAMPLE:-examples/imagenet}"
DATA="${DATA:-data/ilsvrc12}"

if ! command -v caffe > /dev/null 2>&1; then
    echo "Error: the 'caffe' command is not on PATH (install neocaffe: pip install -e .)" >&2
    exit 1
fi

caffe compute_image_mean "$EXAMPLE/ilsvrc12_train_lmdb" \
    "$DATA/imagenet_mean.binaryproto"

echo "Done."
