#!/usr/bin/env bash
# Create the ImageNet LMDBs examples/imagenet/ilsvrc12_{train,val}_lmdb from the
# image folders and the lists data/ilsvrc12/{train,val}.txt (get_ilsvrc_aux.sh).
# Run it from the Caffe root. Set the image folders here or in the environment:
#     TRAIN_DATA_ROOT=/data/imagenet/train/ VAL_DATA_ROOT=/data/imagenet/val/ \
#         RESIZE=true ./examples/imagenet/create_imagenet.sh
set -e

EXAMPLE="${EXAMPLE:-examples/imagenet}"
DATA="${DATA:-data/ilsvrc12}"

TRAIN_DATA_ROOT="${TRAIN_DATA_ROOT:-/path/to/imagenet/train/}"
VAL_DATA_ROOT="${VAL_DATA_ROOT:-/path/to/imagenet/val/}"

# RESIZE=true resizes the images to 256x256. Keep it false if they were
# resized beforehand with another tool.
RESIZE="${RESIZE:-false}"
case "$RESIZE" in
    true | TRUE | True | 1 | yes)
        RESIZE_HEIGHT=256
        RESIZE_WIDTH=256 ;;
    *)
        RESIZE_HEIGHT=0
        RESIZE_WIDTH=0 ;;
esac

if [ ! -d "$TRAIN_DATA_ROOT" ]; then
    echo "Error: TRAIN_DATA_ROOT is not a path to a directory: $TRAIN_DATA_ROOT"
    echo "Set the TRAIN_DATA_ROOT variable in create_imagenet.sh (or the environment) to the path" \
         "where the ImageNet training data is stored."
    exit 1
fi

if [ ! -d "$VAL_DATA_ROOT" ]; then
    echo "Error: VAL_DATA_ROOT is not a path to a directory: $VAL_DATA_ROOT"
    echo "Set the VAL_DATA_ROOT variable in create_imagenet.sh (or the environment) to the path" \
         "where the ImageNet validation data is stored."
    exit 1
fi

if ! command -v caffe > /dev/null 2>&1; then
    echo "Error: the 'caffe' command is not on PATH (install neocaffe: pip install -e .)" >&2
    exit 1
fi

echo "Creating train lmdb..."

GLOG_logtostderr=1 caffe convert_imageset \
    --resize_height=$RESIZE_HEIGHT \
    --resize_width=$RESIZE_WIDTH \
    --shuffle \
    "$TRAIN_DATA_ROOT" \
    "$DATA/train.txt" \
    "$EXAMPLE/ilsvrc12_train_lmdb"

echo "Creating val lmdb..."

GLOG_logtostderr=1 caffe convert_imageset \
    --resize_height=$RESIZE_HEIGHT \
    --resize_width=$RESIZE_WIDTH \
    --shuffle \
    "$VAL_DATA_ROOT" \
    "$DATA/val.txt" \
    "$EXAMPLE/ilsvrc12_val_lmdb"

echo "Done."
