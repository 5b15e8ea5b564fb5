"""``python -m caffe ...``: the ``caffe`` command."""

import sys

from caffe.tools.cli import main

sys.exit(main())
