#!/usr/bin/env python
"""Download the trained ``.caffemodel`` of a model folder and check its SHA1.

Usage::

    scripts/download_model_binary.py <dirname> [--mirror=DIR|URL] [--force]

``<dirname>/readme.md`` names the file in its front matter (``caffemodel``, ``caffemodel_url``,
``sha1``). This is ``caffe zoo download <dirname>``: see ``caffe zoo download --help``. Offline,
``CAFFE_MODEL_MIRROR=/folder/with/caffemodels`` (or ``--mirror``) takes the file from there.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from caffe.tools.cli import main
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from caffe.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["zoo", "download", *sys.argv[1:]]))
