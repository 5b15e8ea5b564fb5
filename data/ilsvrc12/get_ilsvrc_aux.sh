#!/usr/bin/env bash
# Fetch the auxiliary files of the ImageNet (ILSVRC12) example into data/ilsvrc12
# (not the images themselves):
#   synset_words.txt, synsets.txt, det_synset_words.txt  synset ids and names
#   imagenet_mean.binaryproto                             the mean image
#   train.txt, val.txt, test.txt                          the splits, with labels
#   imagenet.bet.pickle                                   ImageNet's graph and infogain
# They come in caffe_ilsvrc12.tar.gz from dl.caffe.berkeleyvision.org.
#
# Offline: CAFFE_DATA_MIRROR=/folder ./data/ilsvrc12/get_ilsvrc_aux.sh, where the
# folder holds either caffe_ilsvrc12.tar.gz or the unpacked files (those present
# are copied, the missing ones are named).
set -e

TARBALL=caffe_ilsvrc12.tar.gz
URL="http://dl.caffe.berkeleyvision.org/$TARBALL"
FILES="synset_words.txt synsets.txt det_synset_words.txt imagenet_mean.binaryproto train.txt val.txt test.txt imagenet.bet.pickle"

# A relative mirror folder is relative to where the script was started.
MIRROR_DIR=""
case "$CAFFE_DATA_MIRROR" in
    "" | http://* | https://* | HTTP://* | HTTPS://*) ;;
    file://*) MIRROR_DIR="${CAFFE_DATA_MIRROR#file://}" ;;
    *) MIRROR_DIR="$CAFFE_DATA_MIRROR" ;;
esac
if [ -n "$MIRROR_DIR" ]; then
    if [ ! -d "$MIRROR_DIR" ]; then
        echo "Error: CAFFE_DATA_MIRROR is not a folder: $MIRROR_DIR" >&2
        exit 1
    fi
    MIRROR_DIR="$(cd "$MIRROR_DIR" && pwd -P)"
    export CAFFE_DATA_MIRROR="$MIRROR_DIR"
fi

DIR="$(cd "$(dirname "$0")" && pwd -P)"
cd "$DIR"

if ! command -v caffe > /dev/null 2>&1; then
    echo "Error: the 'caffe' command is not on PATH (install neocaffe: pip install -e .)" >&2
    exit 1
fi

if [ -n "$MIRROR_DIR" ] && [ ! -e "$MIRROR_DIR/$TARBALL" ]; then
    echo "Copying from $MIRROR_DIR..."
    copied=""
    missing=""
    for f in $FILES; do
        if [ -f "$MIRROR_DIR/$f" ]; then
            cp -f "$MIRROR_DIR/$f" "$f.part"
            mv -f "$f.part" "$f"
            copied="$copied $f"
        else
            missing="$missing $f"
        fi
    done
    if [ -z "$copied" ]; then
        echo "Error: neither $TARBALL nor any of its files is in $MIRROR_DIR" >&2
        exit 1
    fi
    echo "Copied:$copied"
    if [ -n "$missing" ]; then
        echo "Warning: not in the mirror, so not here:$missing" >&2
    fi
else
    echo "Downloading..."
    caffe download_data "$URL"
    echo "Unzipping..."
    tar -xzf "$TARBALL" && rm -f "$TARBALL"
fi

echo "Done."
