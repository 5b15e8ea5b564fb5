#!/usr/bin/env sh
# Download a model folder published as a GitHub Gist into <dirname>/<gist_id>
# (default <dirname>: ./models; a '/' in the id, as in user/id, becomes '-').
#   scripts/download_model_from_gist.sh <gist_id> [dirname]
# This runs `caffe zoo fetch_gist`; CAFFE_GIST_API points it at another API server.

if [ -z "$1" ]; then
    echo "usage: download_model_from_gist.sh <gist_id> [dirname]" >&2
    exit 1
fi
if ! command -v caffe > /dev/null 2>&1; then
    echo "Error: the 'caffe' command is not on PATH (install neocaffe: pip install -e .)" >&2
    exit 1
fi
exec caffe zoo fetch_gist "$1" "${2:-./models}"
