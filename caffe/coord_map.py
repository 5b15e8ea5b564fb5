"""Spatial correspondence between NetSpec tops (pycaffe's ``caffe.coord_map``), e.g. FCN's Crop offsets.

A coordinate map is ``(axis, a, b)``: a point at coordinate ``x`` of a layer's input lies at
``a * x + b`` in its output, along every spatial axis after ``axis`` (``a`` and ``b`` are NumPy arrays,
one entry per spatial axis, or scalars; ``axis`` is None for layers that map every axis identically).

* Convolution / Pooling / Im2col (kernel ``k``, stride ``s``, pad ``p``, dilation ``d``, ``k' = (k-1)d+1``):
  ``a = 1/s``, ``b = (p - (k'-1)/2) / s``;
* Deconvolution: the inverse, ``a = s``, ``b = (k'-1)/2 - p``;
* Crop (``axis``, ``offset``): ``a = 1``, ``b = -offset``, on the axes from ``axis`` on;
* element-wise layers (ReLU, BatchNorm, Eltwise, Dropout ...): the identity ``(None, 1, 0)``;
* any other layer: :class:`UndefinedMapException` (the walk between two tops stops there).

:func:`crop` makes the Crop layer that aligns a top with a reference top:
``n.score = crop(n.upscore, n.data)``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from caffe.net_spec import Function, Top
from caffe.net_spec import layers as L

PASS_THROUGH_LAYERS = [
    "AbsVal",
    "BatchNorm",
    "Bias",
    "BNLL",
    "Clip",
    "Dropout",
    "Eltwise",
    "ELU",
    "Exp",
    "Log",
    "LRN",
    "MVN",
    "Power",
    "PReLU",
    "ReLU",
    "Scale",
    "Sigmoid",
    "Split",
    "Swish",
    "TanH",
    "Threshold",
]

CoordMap = tuple[Any, Any, Any]


class UndefinedMapException(Exception):
    """The layer has no coordinate mapping (it is not spatial, or not supported)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes and cannot be composed."""


def _vector(value: Any) -> np.ndarray:
    return np.array(value, ndmin=1)


def _spatial(params: dict[str, Any], name: str, default: int) -> np.ndarray:
    """``name`` (e.g. ``kernel_size``) as an array, from ``name`` or from legacy ``name_h``/``name_w``."""
    stem = "kernel" if name == "kernel_size" else name
    if name in params:
        return _vector(params[name])
    h, w = params.get(f"{stem}_h"), params.get(f"{stem}_w")
    if h is not None or w is not None:
        return _vector([default if h is None else h, default if w is None else w])
    return _vector(default)


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(axis, stride, effective kernel size, pad)`` of a Convolution, Deconvolution, Im2col or
    Pooling layer, read from its ``convolution_param`` dict or its keyword arguments."""
    params = fn.params.get("convolution_param", fn.params)
    if fn.type_name == "Pooling":
        params = fn.params.get("pooling_param", params)
    if params.get("global_pooling"):
        raise UndefinedMapException(f"{fn.type_name}: global pooling has no coordinate map")
    if "kernel_size" not in params and "kernel_h" not in params and "kernel_w" not in params:
        raise UndefinedMapException(f"{fn.type_name}: no kernel size given")
    axis = params.get("axis", 1)
    kernel = _spatial(params, "kernel_size", 1)
    dilation = _vector(params.get("dilation", 1))
    stride = _spatial(params, "stride", 1)
    pad = _spatial(params, "pad", 0)
    return axis, stride, (kernel - 1) * dilation + 1, pad


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """``(axis, offset)`` of a Crop layer (defaults: axis 2, offset 0)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), _vector(params.get("offset", 0))


def coord_map(fn: Function) -> CoordMap:
    """The ``(axis, a, b)`` map from the inputs of layer ``fn`` to its outputs (see the module docstring)."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # maps are keyed by the last non-spatial axis
    raise UndefinedMapException(f"no coordinate map for {fn.type_name} layers")


def compose(base_map: CoordMap, next_map: CoordMap) -> CoordMap:
    """``base`` after ``next``: ``x -> base(next(x))``, i.e. scale ``a1 a2`` and shift ``a1 b2 + b1``
    (AxisMismatchException when both maps name different axes)."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException(f"cannot compose maps on axis {ax1} and axis {ax2}")
    return axis, a1 * a2, a1 * b2 + b1


def inverse(coord_map: CoordMap) -> CoordMap:
    """The inverse map: ``(1/a, -b/a)``."""
    axis, a, b = coord_map
    return axis, 1 / a, -b / a


def _mappable_bottoms(top: Top) -> tuple[Top, ...]:
    """The bottoms to walk through: all of them, except a Crop's second (reference-shape) bottom."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _ancestor_maps(top: Top) -> dict[Top, CoordMap]:
    """Every top reachable backwards from ``top`` through mappable layers, with its map into ``top``."""
    maps: dict[Top, CoordMap] = {top: (None, 1, 0)}
    queue = deque([top])
    while queue:
        current = queue.popleft()
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(current):
            if bottom not in maps:
                maps[bottom] = compose(maps[current], step)
                queue.append(bottom)
    return maps


def coord_map_from_to(top_from: Top, top_to: Top) -> CoordMap:
    """The map taking coordinates of ``top_from`` to coordinates of ``top_to``, through their nearest
    common ancestor top. RuntimeError when they share no ancestor through spatial layers."""
    from_maps = _ancestor_maps(top_from)
    to_maps: dict[Top, CoordMap] = {top_to: (None, 1, 0)}
    queue = deque([top_to])
    while queue:
        current = queue.popleft()
        if current in from_maps:
            return compose(to_maps[current], inverse(from_maps[current]))
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(current):
            if bottom not in to_maps:
                to_maps[bottom] = compose(to_maps[current], step)
                queue.append(bottom)
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def _check(condition: Any, message: str) -> None:
    if not np.all(condition):
        raise AssertionError(message)


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer cropping ``top_from`` to the extent of ``top_to``, with the axis and offsets that
    align them (AssertionError when the scales differ or the offsets are negative or fractional)."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    _check(np.asarray(a) == 1, f"scale mismatch on crop (a = {a})")
    _check(np.asarray(b) <= 0, f"cannot crop negative offset (b = {b})")
    _check(np.round(b) == b, f"cannot crop noninteger offset (b = {b})")
    offset = [int(v) for v in np.atleast_1d(-np.round(b))]
    if axis is None:  # only element-wise layers in between: crop the spatial axes, by nothing
        axis = 1
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=offset))
