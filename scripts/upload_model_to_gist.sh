#!/usr/bin/env sh
# Publish a model folder's text files (not *.caffemodel*, not binary files) as a GitHub Gist,
# or update the Gist named by gist_id in <dirname>/readme.md. A new Gist's id is written
# into the readme. The token comes from $GITHUB_TOKEN (it needs the gist scope).
#   scripts/upload_model_to_gist.sh <dirname>
# This runs `caffe zoo publish`; CAFFE_GIST_API points it at another API server.

if [ -z "$1" ] || [ ! -f "$1/readme.md" ]; then
    echo "usage: upload_model_to_gist.sh <dirname>" >&2
    echo "  <dirname>/readme.md must exist" >&2
    exit 1
fi
if ! command -v caffe > /dev/null 2>&1; then
    echo "Error: the 'caffe' command is not on PATH (install neocaffe: pip install -e .)" >&2
    exit 1
fi
dir="$1"
shift
exec caffe zoo publish "$dir" "$@"
