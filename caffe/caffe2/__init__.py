"""Caffe2 models: read the Caffe2 model zoo's ``init_net.pb`` + ``predict_net.pb`` and convert both ways.

* :mod:`caffe.caffe2.io` - NetDef readers/writers (binary and text, bounded), tensors, ``value_info.json``;
* :mod:`caffe.caffe2.to_caffe` - a Caffe2 net and its weights as a Caffe deploy net and ``.caffemodel``;
"""

from caffe.caffe2.errors import Caffe2Error, UnsupportedOperatorError
from caffe.caffe2.io import init_blobs, parse_netdef, read_netdef, read_value_info, write_netdef

__all__ = [
    "Caffe2Error",
    "UnsupportedOperatorError",
    "init_blobs",
    "parse_netdef",
    "read_netdef",
    "read_value_info",
    "write_netdef",
]
