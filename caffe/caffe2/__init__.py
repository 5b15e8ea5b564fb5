"""Caffe2 models: run the Caffe2 model zoo's ``init_net.pb`` + ``predict_net.pb`` and convert both ways.

* :mod:`caffe.caffe2.io` - NetDef readers/writers (binary and text, bounded), tensors, ``value_info.json``;
* :mod:`caffe.caffe2.to_caffe` - a Caffe2 net and its weights as a Caffe deploy net and weights;
* :mod:`caffe.caffe2.from_caffe` - a Caffe deploy net and weights as Caffe2 init and predict nets;
* :mod:`caffe.caffe2.geometry` - the pooling arithmetic of both (rounding, AveragePool divisors);
* :mod:`caffe.caffe2.model` - model folders, conversion to files; here, what builds a :class:`caffe.Net`:
  :func:`load_net` and :func:`caffe_to_caffe2`.

``caffe.Net(folder)`` builds a Caffe2 model folder directly (TEST phase unless given, with its weights);
``caffe.caffe2.load_net(folder, input_shape=...)`` also takes an input shape. ``caffe classify``/``serve`` and the
studio reach Caffe2 folders through :func:`caffe.deploy.find_model`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from caffe.caffe2.errors import Caffe2Error, UnsupportedOperatorError
from caffe.caffe2.from_caffe import Caffe2Model, from_caffe
from caffe.caffe2.io import init_blobs, parse_netdef, read_netdef, read_value_info, write_netdef
from caffe.caffe2.model import (
    convert_caffe2,
    find_caffe2_files,
    is_caffe2_folder,
    write_caffe,
    write_caffe2,
)

if TYPE_CHECKING:
    from caffe.net import Net


def load_net(folder: str | os.PathLike, phase: int | None = None, input_shape: list[int] | None = None) -> Net:
    """A :class:`caffe.Net` (TEST phase by default) of the Caffe2 model folder ``folder``, with its weights;
    ``input_shape`` wins over its ``value_info.json``."""
    from caffe.common import TEST
    from caffe.net import Net

    deploy, weights = convert_caffe2(find_caffe2_files(folder), input_shape)
    net = Net(deploy, TEST if phase is None else phase)
    net.copy_from(weights)
    return net


def caffe_to_caffe2(deploy: str | os.PathLike, weights: str | os.PathLike | None) -> Caffe2Model:
    """The Caffe2 model of a Caffe deploy prototxt and its weights (.caffemodel or .h5)."""
    from caffe.common import TEST
    from caffe.net import Net
    from caffe.protoio import read_net_param

    param = read_net_param(deploy)
    net = Net(param, TEST)
    if weights is not None:
        net.copy_from(weights)
    return from_caffe(param, net, str(deploy))


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
