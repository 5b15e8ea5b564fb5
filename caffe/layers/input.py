"""Feeding layers that need no files: Input, DummyData and MemoryData."""

from __future__ import annotations

import numpy as np
import torch

from caffe.blob import Shape
from caffe.errors import layer_context
from caffe.fillers import fill
from caffe.layer import Layer, register
from caffe.limits import check_blob
from caffe.proto import caffe_pb2 as pb


def _check_once_or_per_top(layer: Layer, what: str, given: int, num_top: int, allow_zero: bool = False) -> None:
    ok = given in (1, num_top) or (allow_zero and given == 0)
    if not ok:
        once = "once, once per top blob, or not at all" if allow_zero else "once or once per top blob"
        raise layer.error(f"must specify '{what}' {once}: {num_top} tops vs. {given} given")


@register("Input")
class InputLayer(Layer):
    """Placeholder tops whose shapes come from ``input_param.shape`` (or are set by the user)."""

    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        shapes = self.layer_param.input_param.shape
        _check_once_or_per_top(self, "shape", len(shapes), len(self.tops), allow_zero=True)
        for i, top in enumerate(self.tops):
            if shapes:
                dims = tuple(shapes[0 if len(shapes) == 1 else i].dim)
                if min(dims, default=0) >= 0:  # a negative one is Blob.reshape's ShapeError
                    what = f"{layer_context(self.name, self.type)} top '{self.layer_param.top[i]}'"
                    check_blob(dims, top.dtype.itemsize, what)
                top.reshape(dims)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return [top.shape for top in self.tops]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [top.tensor for top in self.tops]


@register("DummyData")
class DummyDataLayer(Layer):
    """Tops of given shapes filled by fillers; constant fillers fill once, others every forward."""

    draws_random = True
    traceable = False  # per-call state or data-dependent shapes: never compiled

    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.dummy_data_param
        num_top = len(self.tops)
        if len(p.data_filler) not in (0, 1, num_top):
            raise self.error(
                f"number of data fillers must be 0, 1 or equal to the number of tops: "
                f"{num_top}; you specified {len(p.data_filler)}"
            )
        legacy = len(p.num) or len(p.channels) or len(p.height) or len(p.width)
        shapes: list[Shape] = []
        if legacy:
            if len(p.shape):
                raise self.error("both shape and legacy fields (num/channels/height/width) were specified")
            for field in ("num", "channels", "height", "width"):
                _check_once_or_per_top(self, field, len(getattr(p, field)), num_top)
            for i in range(num_top):
                dims = [
                    getattr(p, f)[0 if len(getattr(p, f)) == 1 else i] for f in ("num", "channels", "height", "width")
                ]
                shapes.append(tuple(dims))
        else:
            _check_once_or_per_top(self, "shape", len(p.shape), num_top)
            shapes = [tuple(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(num_top)]
        if len(p.data_filler) > 1:
            self._fillers = list(p.data_filler)
        else:
            default = pb.FillerParameter(type="constant", value=0)
            self._fillers = [p.data_filler[0] if len(p.data_filler) else default] * num_top
        for i, dims in enumerate(shapes):  # refused before the fillers allocate them
            if min(dims, default=0) >= 0:  # a negative one is the filler's error
                what = f"{layer_context(self.name, self.type)} top '{self.layer_param.top[i]}'"
                check_blob(dims, self.tops[i].dtype.itemsize, what)
        self._shapes = shapes
        self._values = [fill(f, s) for f, s in zip(self._fillers, shapes, strict=True)]

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return list(self._shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, (f, s) in enumerate(zip(self._fillers, self._shapes, strict=True)):
            if f.type != "constant":
                self._values[i] = fill(f, s)
            top = self.tops[i]
            out.append(self._values[i].to(device=top.device, dtype=top.dtype))
        return out


@register("MemoryData")
class MemoryDataLayer(Layer):
    """Serves batches from arrays given with ``Net.set_input_arrays(data, labels)``."""

    traceable = False  # per-call state or data-dependent shapes: never compiled

    exact_num_bottom = 0
    exact_num_top = 2

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.memory_data_param
        self.batch_size, self.channels, self.height, self.width = p.batch_size, p.channels, p.height, p.width
        if self.batch_size * self.channels * self.height * self.width <= 0:
            raise self.error(
                "batch_size, channels, height, and width must be specified and positive in memory_data_param"
            )
        self._data: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._pos = 0

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return [(self.batch_size, self.channels, self.height, self.width), (self.batch_size,)]

    def reset(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Caffe's MemoryDataLayer::Reset with pycaffe's array checks."""
        for name, arr, dims in (
            ("data array", data, (self.channels, self.height, self.width)),
            ("labels array", labels, (1, 1, 1)),
        ):
            if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
                raise self.error(f"{name} must be C contiguous")
            if arr.ndim != 4:
                raise self.error(f"{name} must be 4-d, got shape {arr.shape}")
            if arr.dtype != np.float32:
                raise self.error(f"{name} must be float32, got {arr.dtype}")
            if arr.shape[1:] != dims:
                raise self.error(f"{name} has shape {arr.shape}; expected N x {' x '.join(map(str, dims))}")
        if data.shape[0] != labels.shape[0]:
            raise self.error("data and labels must have the same first dimension")
        if data.shape[0] % self.batch_size:
            raise self.error(
                f"first dimensions of input arrays must be a multiple of batch size {self.batch_size}, "
                f"got {data.shape[0]}"
            )
        if self.layer_param.HasField("transform_param"):
            import logging

            logging.getLogger("caffe").warning("%s does not transform array data on Reset()", self.type)
        self._data, self._labels, self._pos = data, labels.reshape(-1), 0

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._data is None or self._labels is None:
            raise self.error("MemoryDataLayer needs to be initialized by calling Net.set_input_arrays(data, labels)")
        s = slice(self._pos, self._pos + self.batch_size)
        data = torch.from_numpy(self._data[s].copy())
        labels = torch.from_numpy(self._labels[s].copy())
        self._pos = (self._pos + self.batch_size) % len(self._data)
        dev, dt = self.tops[0].device, self.tops[0].dtype
        return [data.to(device=dev, dtype=dt), labels.to(device=dev, dtype=dt)]
