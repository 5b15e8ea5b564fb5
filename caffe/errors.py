"""Exception classes: every error a user can cause is one of these, with a one-line message.

The message names what is at fault (file:line:column, layer, blob, shape) so that a user
never has to read a traceback from deep inside torch or protobuf.

Every one is also a ``RuntimeError``: pycaffe reports what Caffe's C++ side rejects (a net, a layer's
setup, a Python layer's exception, weights, a solver) as ``RuntimeError``, and code written for pycaffe
catches that.
"""

from __future__ import annotations


class CaffeError(RuntimeError):
    """Base class of every error raised by neocaffe for bad input or bad use (a ``RuntimeError``, as pycaffe's)."""


class ParseError(CaffeError):
    """A prototxt or binary proto file that cannot be read."""


class UnknownLayerTypeError(CaffeError):
    """A layer whose ``type`` is not registered."""


class NetError(CaffeError):
    """A net definition that cannot be built: missing bottoms, duplicate tops, bad rules."""


class LayerError(CaffeError):
    """A layer whose parameters or inputs are invalid."""


class ShapeError(LayerError):
    """Incompatible blob shapes."""


class WeightsError(CaffeError):
    """A weights file (.caffemodel, .h5) that is unreadable or does not fit the net."""


class DataError(CaffeError):
    """A database, image, list file or data source that cannot be read as asked."""


class SolverError(CaffeError):
    """A solver definition or state that cannot be used."""


class DeviceError(CaffeError):
    """A device request that this machine cannot satisfy (e.g. GPU mode without CUDA)."""


def layer_context(layer_name: str, layer_type: str) -> str:
    """Render the standard ``layer 'name' (Type)`` prefix used in messages."""
    return f"layer '{layer_name}' ({layer_type})"
