#!/usr/bin/env bash
# Fetch the MNIST data set (four idx files) into data/mnist and unpack it.
#
# Usage (from anywhere, usually the Caffe root):  ./data/mnist/get_mnist.sh
# Offline: CAFFE_DATA_MIRROR=/folder/with/the/.gz/files ./data/mnist/get_mnist.sh
# Each file is checked against its published MD5/SHA1; a download interrupted
# half-way is resumed on the next run.
set -e

# A mirror folder given as a relative path is relative to where the script was started.
case "$CAFFE_DATA_MIRROR" in
    "" | http://* | https://* | HTTP://* | HTTPS://* | file://*) ;;
    *)
        if [ ! -d "$CAFFE_DATA_MIRROR" ]; then
            echo "Error: CAFFE_DATA_MIRROR is not a folder: $CAFFE_DATA_MIRROR" >&2
            exit 1
        fi
        CAFFE_DATA_MIRROR="$(cd "$CAFFE_DATA_MIRROR" && pwd -P)"
        export CAFFE_DATA_MIRROR ;;
esac

DIR="$(cd "$(dirname "$0")" && pwd -P)"
cd "$DIR"

if ! command -v caffe > /dev/null 2>&1; then
    echo "Error: the 'caffe' command is not on PATH (install neocaffe: pip install -e .)" >&2
    exit 1
fi

echo "Downloading..."

urls=""
for fname in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
do
    if [ ! -e "$fname" ]; then
        urls="$urls http://yann.lecun.com/exdb/mnist/${fname}.gz"
    fi
done
if [ -n "$urls" ]; then
    # one command for all (starting the tool costs a second or two)
    caffe download_data --gunzip $urls
fi

echo "Done."
