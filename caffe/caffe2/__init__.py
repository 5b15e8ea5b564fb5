"""Caffe2 models: run the Caffe2 model zoo's ``init_net.pb`` + ``predict_net.pb`` and convert both ways.

* :mod:`caffe.caffe2.io` - NetDef readers/writers (binary and text, bounded), tensors, ``value_info.json``;
* :mod:`caffe.caffe2.to_caffe` - a Caffe2 net and its weights as a Caffe deploy net and weights;
* :mod:`caffe.caffe2.from_caffe` - a Caffe deploy net and weights as Caffe2 init and predict nets;
* :mod:`caffe.caffe2.geometry` - the pooling arithmetic of both (rounding, AveragePool divisors);
* :mod:`caffe.caffe2.model` - model folders: :func:`load_net` (a :class:`caffe.Net`), conversion to files.

``caffe.caffe2.load_net(folder)`` is the explicit pycaffe entry for a Caffe2 folder (``caffe.Net`` keeps
its signature); ``caffe classify``/``serve`` and the studio reach Caffe2 folders through
:func:`caffe.deploy.find_model`.
"""

from caffe.caffe2.errors import Caffe2Error, UnsupportedOperatorError
from caffe.caffe2.io import init_blobs, parse_netdef, read_netdef, read_value_info, write_netdef
from caffe.caffe2.model import (
    caffe_to_caffe2,
    convert_caffe2,
    find_caffe2_files,
    is_caffe2_folder,
    load_net,
    write_caffe,
    write_caffe2,
)

__all__ = [
    "Caffe2Error",
    "UnsupportedOperatorError",
    "caffe_to_caffe2",
    "convert_caffe2",
    "find_caffe2_files",
    "init_blobs",
    "is_caffe2_folder",
    "load_net",
    "parse_netdef",
    "read_netdef",
    "read_value_info",
    "write_caffe",
    "write_caffe2",
    "write_netdef",
]
