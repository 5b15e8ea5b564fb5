"""The errors of :mod:`caffe.caffe2`."""

from __future__ import annotations

from caffe.errors import CaffeError


class Caffe2Error(CaffeError):
    """A Caffe2 net or model folder that cannot be read or converted as asked."""


class UnsupportedOperatorError(Caffe2Error):
    """A Caffe2 operator (or Caffe layer, converting the other way) that has no counterpart."""
