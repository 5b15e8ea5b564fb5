#!/usr/bin/env python
"""Draw a graph of the net architecture (pycaffe's script; the same as ``caffe draw_net``).

usage: draw_net.py input_net_proto_file output_image_file [--rankdir=LR] [--phase=TRAIN|TEST|ALL] [--display_lrm]
"""

import sys
from pathlib import Path

try:
    import caffe  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caffe.tools.cli import main


def run() -> int:
    return main(["draw_net", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(run())
