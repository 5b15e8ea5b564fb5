"""pycaffe's conveniences on ``caffe.Net`` (Caffe's ``python/caffe/pycaffe.py``), over its public graph API.

The OrderedDict views (``blobs``, ``params``, ``layer_dict``, ``top_names``, ``bottom_names``), the input and
output names, pycaffe's underscore aliases, and ``forward_all``/``forward_backward_all`` over inputs of any
length in batches of the net's batch size. :class:`PycaffeNet` is a base of ``caffe.net.Net``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from caffe.blob import Blob
    from caffe.layer import Layer


class Gathered:
    """Arrays gathered over batches: per-item outputs item by item, scalars (losses) once per batch."""

    def __init__(self, names: Iterable[str]) -> None:
        self.items: dict[str, list[np.ndarray]] = {name: [] for name in names}
        self.scalars: set[str] = set()

    def add(self, arrays: Mapping[str, np.ndarray]) -> None:
        for name, arr in arrays.items():
            if arr.ndim:
                self.items[name].extend(arr.copy())
            else:
                self.scalars.add(name)
                self.items[name].append(arr.copy())

    def stacked(self, num: int | None) -> dict[str, np.ndarray]:
        """Stack everything; per-item outputs are cut to ``num`` (dropping the last batch's padding)."""
        return {
            name: np.asarray(v) if name in self.scalars or num is None else np.asarray(v)[:num]
            for name, v in self.items.items()
        }


def batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """``arrays`` (equal lengths) cut into batches of ``batch_size``; the last one padded with zeros."""
    num = len(next(iter(arrays.values())))
    for i in range(0, num - num % batch_size, batch_size):
        yield {name: arr[i : i + batch_size] for name, arr in arrays.items()}
    rem = num % batch_size
    if rem:
        padded = {}
        for name, arr in arrays.items():
            pad = np.zeros((batch_size - rem, *arr.shape[1:]), dtype=arr.dtype)
            padded[name] = np.concatenate([arr[-rem:], pad])
        yield padded


class PycaffeNet:
    """pycaffe's properties and batched passes, built on the graph API ``Net`` defines."""

    if TYPE_CHECKING:  # Net's graph API and pycaffe's forward/backward, which these build on
        host_layers: list[Layer]
        layer_names: list[str]
        blob_list: list[Blob]
        blob_names: list[str]
        input_ids: list[int]
        output_ids: list[int]

        def bottom_ids(self, i: int) -> list[int]: ...
        def top_ids(self, i: int) -> list[int]: ...
        def forward(self, blobs: Iterable[str] | None = None, **kwargs: Any) -> dict[str, np.ndarray]: ...
        def backward(self, diffs: Iterable[str] | None = None, **kwargs: Any) -> dict[str, np.ndarray]: ...

    @property
    def layers(self) -> list[Any]:
        """The layers; a Python layer appears as the user's own object, as in pycaffe."""
        return [getattr(layer, "impl", layer) for layer in self.host_layers]

    @property
    def blobs(self) -> OrderedDict[str, Blob]:
        return OrderedDict(zip(self.blob_names, self.blob_list, strict=True))

    @property
    def layer_dict(self) -> OrderedDict[str, Any]:
        return OrderedDict(zip(self.layer_names, self.layers, strict=True))

    @property
    def params(self) -> OrderedDict[str, list[Blob]]:
        return OrderedDict(
            (name, layer.blobs) for name, layer in zip(self.layer_names, self.host_layers, strict=True) if layer.blobs
        )

    @property
    def inputs(self) -> list[str]:
        names = self.blob_names
        return [names[i] for i in self.input_ids]

    @property
    def outputs(self) -> list[str]:
        names = self.blob_names
        return [names[i] for i in self.output_ids]

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        names = self.blob_names
        return OrderedDict((n, [names[t] for t in self.top_ids(i)]) for i, n in enumerate(self.layer_names))

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        names = self.blob_names
        return OrderedDict((n, [names[b] for b in self.bottom_ids(i)]) for i, n in enumerate(self.layer_names))

    # pycaffe's underscore names for the graph API
    @property
    def _layer_names_list(self) -> list[str]:
        return self.layer_names

    @property
    def _inputs(self) -> list[int]:
        return self.input_ids

    @property
    def _outputs(self) -> list[int]:
        return self.output_ids

    def _top_ids_of(self, i: int) -> list[int]:
        return self.top_ids(i)

    def _bottom_ids_of(self, i: int) -> list[int]:
        return self.bottom_ids(i)

    def _batch(self, arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        return batches(arrays, self.blob_list[0].shape[0])

    def forward_all(self, blobs: Iterable[str] | None = None, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Run forward over inputs of any length in batches of the net's batch size."""
        blobs = list(blobs or [])
        kwargs = {k: np.asarray(v) for k, v in kwargs.items()}
        outs = Gathered(set(self.outputs + blobs))
        for batch in self._batch(kwargs):
            outs.add(self.forward(blobs=blobs, **batch))
        return outs.stacked(len(next(iter(kwargs.values()))))

    def forward_backward_all(
        self, blobs: Iterable[str] | None = None, diffs: Iterable[str] | None = None, **kwargs: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Forward and backward in batches; inputs and output diffs as keyword arrays."""
        blobs, diffs = list(blobs or []), list(diffs or [])
        kwargs = {k: np.asarray(v) for k, v in kwargs.items()}
        outs = Gathered(set(self.outputs + blobs))
        grads = Gathered(set(self.inputs + diffs))
        fwd = {k: kwargs[k] for k in self.inputs if k in kwargs}
        bwd = {k: kwargs[k] for k in self.outputs if k in kwargs}
        f_batches = self._batch(fwd) if fwd else iter(())
        b_batches = self._batch(bwd) if bwd else iter(())
        for fb, bb in zip_longest(f_batches, b_batches, fillvalue={}):
            outs.add(self.forward(blobs=blobs, **fb))
            grads.add(self.backward(diffs=diffs, **bb))
        num = len(next(iter(kwargs.values()))) if kwargs else None
        return outs.stacked(num), grads.stacked(num)
