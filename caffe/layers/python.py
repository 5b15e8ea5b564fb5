"""Python layers: ``type: "Python"`` with ``python_param { module layer param_str }``.

The user writes a subclass of :class:`caffe.Layer` (the class below, as in pycaffe) with
``setup/reshape/forward/backward`` working on :class:`~caffe.blob.Blob` lists; ``self.param_str``
(also as ``self.param_str_``, its name in pycaffe until 2015) and ``self.phase`` are set before
``setup``; ``self.blobs.add_blob(*shape)`` adds learnable blobs.
The Net calls its ``backward(top, propagate_down, bottom)`` directly with the blobs, the top diffs
filled in; it must write bottom diffs (and may accumulate into its parameter diffs), exactly as with
Caffe's ``PythonLayer``. An exception from the user's code reaches the caller as a
:class:`~caffe.errors.LayerError` naming the layer (a ``RuntimeError``, as in pycaffe).

Forks' modules built in: the Caffe forks' test nets name Python layers their users never ship
(py-faster-rcnn's and R-FCN's ``rpn.proposal_layer.ProposalLayer``; DIGITS' DetectNet layers from
NVIDIA/caffe's ``caffe.layers.detectnet``, which can only be neocaffe's). Rather than installing a
top-level ``rpn`` package into site-packages (a name any user project may own), a layer whose
module is in :data:`BUILTIN_MODULES` and cannot be found is built as neocaffe's own native layer
(``param_str`` read as the fork reads it). That code is neocaffe's, so such a layer is not a
"Python layer" for the consent rule (:func:`python_layers` leaves it out). A module the user can
import still wins, as in Caffe, which imports it: then it is a Python layer like any other.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from caffe.blob import Blob, Shape, blob_proto_to_tensor
from caffe.errors import CaffeError, LayerError, layer_context
from caffe.layer import Layer as _Layer
from caffe.layer import register
from caffe.proto import caffe_pb2 as pb

log = logging.getLogger(__name__)

#: The flag with which an operator lets a server (``caffe studio``, ``caffe serve``) run Python layers.
CONSENT_FLAG = "--allow_python_layers"


#: (module, class) of forks' Python layers -> the registered native type built in their place.
BUILTIN_MODULES: dict[tuple[str, str], str] = {
    ("rpn.proposal_layer", "ProposalLayer"): "Proposal",
    # NVIDIA/caffe's own Python package (DIGITS' DetectNet): under ``caffe``, which is neocaffe here
    ("caffe.layers.detectnet.clustering", "ClusterDetections"): "ClusterDetections",
    ("caffe.layers.detectnet.clustering", "ClusterGroundtruth"): "ClusterGroundtruth",
    ("caffe.layers.detectnet.mean_ap", "ScoreDetections"): "ScoreDetections",
    ("caffe.layers.detectnet.mean_ap", "mAP"): "DetectNetMAP",
}

#: Forks' Python modules with no built-in counterpart (training-time layers), named in import errors.
_KNOWN_FORK_MODULES = {
    "rpn.anchor_target_layer": "py-faster-rcnn's RPN training layer (rbgirshick/py-faster-rcnn lib/)",
    "rpn.proposal_target_layer": "py-faster-rcnn's RPN training layer (rbgirshick/py-faster-rcnn lib/)",
    "roi_data_layer.layer": "py-faster-rcnn's training data layer (rbgirshick/py-faster-rcnn lib/)",
}


def _findable(module: str, search: list[Path]) -> bool:
    """Whether ``module``'s top-level package can be imported (found without running any of its code)."""
    top = module.split(".")[0]
    if top in sys.modules:
        return True
    try:
        if importlib.util.find_spec(top) is not None:
            return True
    except (ImportError, ValueError):
        return True  # something answers to the name: leave it to the import
    return any((folder / f"{top}.py").exists() for folder in search)


def builtin_type(pp: pb.PythonParameter, search: list[Path] | None = None) -> str | None:
    """The native type built for this ``python_param`` (a fork's module that is not importable), else None."""
    native = BUILTIN_MODULES.get((pp.module, pp.layer))
    if native is None:
        return None
    if pp.module.startswith("caffe."):
        return native  # a fork's module inside its own caffe package: the name is neocaffe's, so is the layer
    return None if _findable(pp.module, [Path.cwd()] if search is None else search) else native


def python_layers(param: pb.NetParameter) -> list[pb.LayerParameter]:
    """The net's ``Python`` layers that run user code (not those built in, see the module docstring)."""
    return [layer for layer in param.layer if layer.type == "Python" and builtin_type(layer.python_param) is None]


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
        self.param_str_: str = self.param_str  # the name pycaffe used before 2015 (py-faster-rcnn reads it)
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


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@register("Python")
class PythonLayer(_Layer):
    """Hosts a user's :class:`Layer` subclass inside a Net."""

    traceable = False  # per-call state or data-dependent shapes: never compiled
    draws_random = True  # user code may draw torch random numbers: snapshots keep the RNG state to be safe

    def __new__(cls, param: pb.LayerParameter) -> Any:
        """A fork's module that is not importable builds the native layer instead (see the module)."""
        native = builtin_type(param.python_param)
        if native is None:
            return super().__new__(cls)
        from caffe.layer import layer_class

        log.info(
            "layer '%s': Python module '%s' is not importable; using neocaffe's built-in %s",
            param.name, param.python_param.module, native,
        )  # fmt: skip
        return layer_class(native, param.name)(param)

    def __init__(self, param: pb.LayerParameter) -> None:
        super().__init__(param)
        pp = param.python_param
        if not pp.module or not pp.layer:
            raise self.error("python_param needs both 'module' and 'layer'")
        try:
            module = _import_module(pp.module, [Path.cwd()])
        except Exception as e:  # the user's module may fail in any way while importing
            known = _KNOWN_FORK_MODULES.get(pp.module)
            hint = f" ({known}; not built into neocaffe: ship the module to use it)" if known else ""
            raise self.error(f"cannot import Python module '{pp.module}': {type(e).__name__}: {e}{hint}") from None
        cls = getattr(module, pp.layer, None)
        if cls is None:
            raise self.error(f"Python module '{pp.module}' has no class '{pp.layer}'")
        self.impl: Layer = self._user("construction", cls, param)
        self.impl.param_str = pp.param_str
        self.impl.param_str_ = pp.param_str  # pycaffe's name before 2015, still read by py-faster-rcnn's layers
        self.impl.phase = param.phase
        if not hasattr(self.impl, "blobs"):
            self.impl.blobs = BlobVec()
        for proto in param.blobs:
            self.impl.blobs.append(Blob.from_tensor(blob_proto_to_tensor(proto)))
        self.blobs = self.impl.blobs

    def _user(self, what: str, fn: Any, *args: Any) -> Any:
        """Run the user's ``fn``: any exception it raises becomes a LayerError naming the layer."""
        try:
            return fn(*args)
        except CaffeError:
            raise
        except Exception as e:  # user code may raise anything; pycaffe reports it as a RuntimeError
            raise LayerError(f"{layer_context(self.name, self.type)} {what} failed: {_one_line(e)}") from e

    def setup(self, bottom: list[Shape], num_top: int) -> list[Shape]:
        self.check_blob_counts(len(bottom), num_top)
        self._user("setup", self.impl.setup, self.bottoms, self.tops)
        self._user("reshape", self.impl.reshape, self.bottoms, self.tops)
        self.set_loss_weights(num_top)
        self.param_propagate_down = [True] * len(self.blobs)
        self._last_bottom_shapes = list(bottom)
        self._top_shapes = [t.shape for t in self.tops]
        return self._top_shapes

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self._user("reshape", self.impl.reshape, self.bottoms, self.tops)
        return [t.shape for t in self.tops]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the user's reshape and forward on the blobs; the tops' values, outside any autograd graph."""
        self._user("reshape", self.impl.reshape, self.bottoms, self.tops)
        self._user("forward", self.impl.forward, self.bottoms, self.tops)
        return [top.tensor.detach() for top in self.tops]

    def backward_blobs(self, propagate_down: list[bool]) -> None:
        """Call the user's ``backward(top, propagate_down, bottom)`` with the blobs, the top diffs in place.

        The diffs of the bottoms to compute start at zero, except an in-place bottom's: it is its top's
        diff, which the user's backward reads and overwrites, as in Caffe."""
        tops = {id(top) for top in self.tops}
        for b, need in zip(self.bottoms, propagate_down, strict=True):
            if need and id(b) not in tops:
                b.grad = torch.zeros(b.shape, dtype=b.dtype, device=b.device)
        self._user("backward", self.impl.backward, self.tops, list(propagate_down), self.bottoms)
