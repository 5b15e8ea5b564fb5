"""Python layers: ``type: "Python"`` with ``python_param { module layer param_str }``.

The user writes a subclass of :class:`caffe.Layer` (the class below, as in pycaffe) with
``setup/reshape/forward/backward`` working on :class:`~caffe.blob.Blob` lists; ``self.param_str``
and ``self.phase`` are set before ``setup``; ``self.blobs.add_blob(*shape)`` adds learnable blobs.
Its ``backward`` is called by autograd with the top diffs filled in and must write bottom diffs
(and may accumulate into its parameter diffs), exactly as with Caffe's ``PythonLayer``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import torch

from caffe.blob import Blob, Shape
from caffe.layer import Layer as _Layer
from caffe.layer import register
from caffe.proto import caffe_pb2 as pb

#: The flag with which an operator lets a server (``caffe studio``, ``caffe serve``) run Python layers.
CONSENT_FLAG = "--allow_python_layers"


def python_layers(param: pb.NetParameter) -> list[pb.LayerParameter]:
    """The net's ``Python`` layers."""
    return [layer for layer in param.layer if layer.type == "Python"]


def consent_refusal(param: pb.NetParameter, source: str, allowed: bool, server: str) -> str | None:
    """Why ``server``, unless its operator allowed Python layers, must refuse the net ``param`` read from
    ``source`` (its first Python layer named); None when it may run it."""
    found = python_layers(param)
    if not found or allowed:
        return None
    layer = found[0]
    return (
        f"{source}: layer '{layer.name}' is a Python layer (module '{layer.python_param.module}'); "
        f"Python layers run only when {server} is started with {CONSENT_FLAG}"
    )


class BlobVec(list):
    """pycaffe's BlobVec: a list of blobs with ``add_blob(*shape)``."""

    def add_blob(self, *shape: int) -> None:
        self.append(Blob(shape))


class Layer:
    """Base class of user Python layers (pycaffe's ``caffe.Layer``)."""

    type = "Python"

    def __init__(self, param: pb.LayerParameter | None = None) -> None:
        self.layer_param = param
        self.param_str: str = param.python_param.param_str if param is not None else ""
        self.phase: int = param.phase if param is not None else 0
        self.blobs: BlobVec = BlobVec()

    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Check parameters, add learnable blobs."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Reshape the tops for the current bottom shapes."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Write ``top[i].data`` from ``bottom[i].data``."""

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """Write ``bottom[i].diff`` from ``top[i].diff`` where ``propagate_down[i]``."""


def _import_module(name: str, search: list[Path]) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as first:
        if first.name != name.split(".")[0] and first.name != name:
            raise
        for folder in search:
            if str(folder) not in sys.path and (folder / (name.split(".")[0] + ".py")).exists():
                sys.path.append(str(folder))
                return importlib.import_module(name)
        raise


class _PythonForward(torch.autograd.Function):
    """Runs the user's forward on the blobs; its backward runs the user's backward."""

    @staticmethod
    def forward(ctx: Any, host: PythonLayer, *bottom: torch.Tensor) -> tuple[torch.Tensor, ...]:
        impl = host.impl
        impl.reshape(host.bottoms, host.tops)
        impl.forward(host.bottoms, host.tops)
        ctx.host = host
        return tuple(top.tensor.detach() for top in host.tops)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        host: PythonLayer = ctx.host
        for top, g in zip(host.tops, grads, strict=True):
            top.grad = g
        propagate = [bool(n) for n in ctx.needs_input_grad[1:]]
        in_place = {id(top) for top in host.tops}
        for b, need in zip(host.bottoms, propagate, strict=True):
            if need and id(b) not in in_place:  # an in-place bottom's diff is its top's, as in Caffe
                b.grad = torch.zeros(b.shape, dtype=b.dtype, device=b.device)
        host.impl.backward(host.tops, propagate, host.bottoms)
        out: list[torch.Tensor | None] = [None]
        for b, need in zip(host.bottoms, propagate, strict=True):
            out.append(b.grad.clone() if need else None)
        return tuple(out)


@register("Python")
class PythonLayer(_Layer):
    """Hosts a user's :class:`Layer` subclass inside a Net."""

    traceable = False  # per-call state or data-dependent shapes: never compiled
    draws_random = True  # user code may draw torch random numbers: snapshots keep the RNG state to be safe

    def __init__(self, param: pb.LayerParameter) -> None:
        super().__init__(param)
        pp = param.python_param
        if not pp.module or not pp.layer:
            raise self.error("python_param needs both 'module' and 'layer'")
        try:
            module = _import_module(pp.module, [Path.cwd()])
        except Exception as e:  # the user's module may fail in any way while importing
            raise self.error(f"cannot import Python module '{pp.module}': {type(e).__name__}: {e}") from None
        cls = getattr(module, pp.layer, None)
        if cls is None:
            raise self.error(f"Python module '{pp.module}' has no class '{pp.layer}'")
        self.impl: Layer = cls(param)
        self.impl.param_str = pp.param_str
        self.impl.phase = param.phase
        if not hasattr(self.impl, "blobs"):
            self.impl.blobs = BlobVec()
        for proto in param.blobs:
            from caffe.weights import blob_proto_to_tensor

            self.impl.blobs.append(Blob.from_tensor(blob_proto_to_tensor(proto)))
        self.blobs = self.impl.blobs

    def setup(self, bottom: list[Shape], num_top: int) -> list[Shape]:
        self.check_blob_counts(len(bottom), num_top)
        self.impl.setup(self.bottoms, self.tops)
        self.impl.reshape(self.bottoms, self.tops)
        self.set_loss_weights(num_top)
        self.param_propagate_down = [True] * len(self.blobs)
        self._last_bottom_shapes = list(bottom)
        self._top_shapes = [t.shape for t in self.tops]
        return self._top_shapes

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.impl.reshape(self.bottoms, self.tops)
        return [t.shape for t in self.tops]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(_PythonForward.apply(self, *bottom))
