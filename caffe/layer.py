"""Layer: the unit of computation, and the one registry of layer types.

A layer is configured entirely by its ``LayerParameter``. Subclasses implement three things:

* ``layer_setup(bottom_shapes)``: read parameters, validate them, create learnable blobs with
  :meth:`Layer.add_param` (which honours weights given inline in the prototxt);
* ``reshape(bottom_shapes) -> top_shapes``: shape inference and validation, called at set-up and
  whenever an input shape changes;
* ``forward(bottom_tensors) -> top_tensors``: the computation as torch operations.

Backward is derived by autograd from ``forward``; layers whose Caffe gradient is not the gradient
of their forward (or that have none) express that inside ``forward`` (``detach``, a custom
``torch.autograd.Function``). The :class:`~caffe.net.Net` decides which gradients are needed.

The registry is filled by the families in ``caffe.layers`` as they are imported (``@register``);
``import caffe`` imports them all, so this module never imports its subclasses.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

import torch

from caffe.blob import Blob, Shape, blob_proto_to_tensor
from caffe.errors import LayerError, ShapeError, UnknownLayerTypeError, layer_context
from caffe.fillers import fill
from caffe.limits import check_blob
from caffe.proto import caffe_pb2 as pb

_REGISTRY: dict[str, type[Layer]] = {}

L = TypeVar("L", bound="type[Layer]")
ExportForward = Callable[[list[torch.Tensor]], list[torch.Tensor]]


class BatchSizeFixed(LayerError):
    """A layer's answer to :meth:`Layer.export_forward` with ``dynamic_batch``: its forward fixes the batch
    size; the message says why."""


def register(*type_names: str) -> Callable[[L], L]:
    """Class decorator: register a layer class under one or more ``type`` strings."""

    def deco(cls: L) -> L:
        for name in type_names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise RuntimeError(f"layer type '{name}' registered twice")
            _REGISTRY[name] = cls
        if "type" not in cls.__dict__:  # a subclass registered under its own name reports that name
            cls.type = type_names[0]
        return cls

    return deco


def layer_type_list() -> list[str]:
    """Every registered layer type, sorted (pycaffe's ``caffe.layer_type_list()``)."""
    return sorted(_REGISTRY)


#: Layer types of Caffe's forks that neocaffe does not implement, and who defines them (named in the error).
FORK_TYPES: dict[str, str] = {
    "Region": "the YOLOv2 Caffe ports, darknet's region layer",
    "ROIAlign": "Mask R-CNN Caffe ports, after Caffe2/Detectron's RoIAlign",
}


_HINTED_LENGTH = 64  # longer type names get no "did you mean" (difflib's matching is quadratic in the length)


def short_name(name: str, limit: int = 100) -> str:
    """``name`` for a message: cut short, with its length, when it is long (a mangled file's)."""
    return name if len(name) <= limit else f"{name[: limit - 40]}... ({len(name)} characters)"


def unknown_type_message(type_name: str, layer_name: str) -> str:
    """Caffe's unknown-type error, with the fork that defines the type or the closest known types."""
    fork = FORK_TYPES.get(type_name)
    where = f"layer '{short_name(layer_name)}' has unknown type '{short_name(type_name)}'"
    if fork is not None:
        return f"{where} (a Caffe fork's type, from {fork})"
    scored = sorted(
        ((difflib.SequenceMatcher(None, type_name, known).ratio(), known) for known in _REGISTRY), reverse=True
    ) if len(type_name) <= _HINTED_LENGTH else []  # fmt: skip
    # the types about as close as the closest one (a typo of InnerProduct is not MarginInnerProduct)
    close = [known for score, known in scored[:3] if score >= 0.5 and score >= scored[0][0] - 0.1] if scored else []
    if not close:
        lowered = {k.lower(): k for k in _REGISTRY}
        close = [lowered[type_name.lower()]] if type_name.lower() in lowered else []
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{where}{hint}"


def layer_class(type_name: str, layer_name: str = "?") -> type[Layer]:
    """The class registered for ``type_name``; an UnknownLayerTypeError naming the layer otherwise."""
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise UnknownLayerTypeError(unknown_type_message(type_name, layer_name))
    return cls


def create_layer(param: pb.LayerParameter) -> Layer:
    """Instantiate the registered class for ``param.type``."""
    return layer_class(param.type, param.name)(param)


class Layer:
    """Base of all layers; see the module docstring for the three methods a layer implements."""

    type: ClassVar[str] = ""
    # Blob-count rules (Caffe's Exact/Min/MaxNum{Bottom,Top}Blobs); None = unchecked.
    exact_num_bottom: ClassVar[int | None] = None
    min_bottom: ClassVar[int | None] = None
    max_bottom: ClassVar[int | None] = None
    exact_num_top: ClassVar[int | None] = None
    min_top: ClassVar[int | None] = None
    max_top: ClassVar[int | None] = None
    equal_num_bottom_top: ClassVar[bool] = False
    auto_top_blobs: ClassVar[bool] = False
    # Loss layers put loss_weight 1 on their first top unless the prototxt says otherwise.
    is_loss: ClassVar[bool] = False

    def __init__(self, param: pb.LayerParameter) -> None:
        self.layer_param = param
        self.name: str = param.name
        self.phase: int = param.phase
        if param.type != self.type and _REGISTRY.get(param.type) is type(self):
            self.type = param.type  # a class registered under several names reports the prototxt's
        self.blobs: list[Blob] = []
        self.param_propagate_down: list[bool] = []
        self.loss_weights: list[float] = []
        # Bound by the Net: the blobs this layer reads and writes.
        self.bottoms: list[Blob] = []
        self.tops: list[Blob] = []
        self._last_bottom_shapes: list[Shape] | None = None
        self._top_shapes: list[Shape] = []
        # The training's (iteration, stop iteration), set by the solver before each iteration (Net.set_progress; the
        # forks' Layer::set_iter); (0, 0) outside a solver. Layers reading it are not traceable.
        self.progress: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------------ subclass API
    def layer_setup(self, bottom: list[Shape]) -> None:
        """Read and check parameters; create learnable blobs. Default: nothing."""

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        """Return the top shapes for these bottom shapes (raise ShapeError if incompatible)."""
        raise NotImplementedError

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        """Compute the tops from the bottoms with torch operations."""
        raise NotImplementedError

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Whether ``force_backward`` may compute a gradient for this bottom (labels: no)."""
        return True

    # ------------------------------------------------------------------ fusion hooks (inference engine)
    # A layer that the inference engine may fold into a preceding convolution describes itself here;
    # the defaults say "not foldable".
    traceable: ClassVar[bool] = True  # forward is pure tensor code (no Python-side state per call)
    # forward is not traceable, but export_forward gives a form that is (exported as that form)
    export_traceable: ClassVar[bool] = False
    draws_random: ClassVar[bool] = False  # forward draws from torch's random numbers (snapshots keep their state)

    def channel_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """If this layer is ``y = x * a[c] + b[c]`` along axis 1 in the current phase, return (a, b)."""
        return None

    def pointwise_activation(self) -> tuple[str, list[float]] | None:
        """If this layer is an element-wise activation oneDNN can fuse, its (name, scalars)."""
        return None

    # ------------------------------------------------------------------ export form (caffe.export)
    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """The forward an exported graph traces instead of :meth:`forward` (the same values in exportable
        ops); None: :meth:`forward` traces as it is. ``onnx``: the graph is ONNX; ``dynamic_batch``: it must
        run for any batch size, and a layer whose forward fixes the batch size raises :class:`BatchSizeFixed`
        saying why. Default: no form, and a batch fixed at set-up (batch-free layers say otherwise)."""
        if dynamic_batch:
            raise BatchSizeFixed(f"its forward computes with the {self.type} layer's set-up batch size")
        return None

    # ------------------------------------------------------------------ helpers for subclasses
    def error(self, message: str, cls: type[LayerError] = LayerError) -> LayerError:
        """An exception naming this layer."""
        return cls(f"{layer_context(self.name, self.type)}: {message}")

    def shape_error(self, message: str) -> ShapeError:
        return self.error(message, ShapeError)  # type: ignore[return-value]

    def legacy_shape(self, shape: Shape, what: str = "a bottom") -> tuple[int, int, int, int]:
        """Caffe's legacy (num, channels, height, width) of ``shape``: missing trailing axes are 1; more than 4
        axes is a ShapeError naming ``what`` (Caffe's LegacyShape CHECK)."""
        if len(shape) > 4:
            raise self.shape_error(
                f"needs {what} of at most 4 axes (num, channels, height, width), got shape {tuple(shape)}"
            )
        n, c, h, w = (*shape, *(1,) * (4 - len(shape)))
        return int(n), int(c), int(h), int(w)

    def require(self, condition: bool, message: str) -> None:
        if not condition:
            raise self.error(message)

    def add_param(self, shape: Sequence[int], filler: pb.FillerParameter | None) -> Blob:
        """Create the next learnable blob, filled by ``filler``, unless the prototxt carries it."""
        index = len(self.blobs)
        shape = tuple(int(s) for s in shape)
        if min(shape, default=0) >= 0:  # a negative one is the filler's error, as before
            check_blob(shape, 4, f"layer '{self.name}' ({self.type}) param {index}")
        if index < len(self.layer_param.blobs):
            value = blob_proto_to_tensor(self.layer_param.blobs[index], expect=shape, where=f"{self.name} blob {index}")
        else:
            value = fill(filler if filler is not None else pb.FillerParameter(), shape)
        blob = Blob.from_tensor(value)
        self.blobs.append(blob)
        return blob

    def param_tensor(self, index: int) -> torch.Tensor:
        """The compute-side tensor of learnable blob ``index``."""
        return self.blobs[index].tensor

    @staticmethod
    def canonical_axis(axis: int, num_axes: int) -> int:
        return axis + num_axes if axis < 0 else axis

    def check_axis(self, axis: int, num_axes: int, what: str = "axis") -> int:
        if not -num_axes <= axis < max(num_axes, 1) and not (num_axes == 0 and axis == 0):
            raise self.shape_error(f"{what} {axis} is out of range for a {num_axes}-axis bottom")
        return self.canonical_axis(axis, num_axes)

    # ------------------------------------------------------------------ used by the Net
    def check_blob_counts(self, num_bottom: int, num_top: int) -> None:
        def check(actual: int, what: str, exact: int | None, lo: int | None, hi: int | None) -> None:
            if exact is not None and actual != exact:
                raise self.error(f"takes exactly {exact} {what} blob(s), got {actual}")
            if lo is not None and actual < lo:
                raise self.error(f"takes at least {lo} {what} blob(s), got {actual}")
            if hi is not None and actual > hi:
                raise self.error(f"takes at most {hi} {what} blob(s), got {actual}")

        check(num_bottom, "bottom", self.exact_num_bottom, self.min_bottom, self.max_bottom)
        check(num_top, "top", self.exact_num_top, self.min_top, self.max_top)
        if self.equal_num_bottom_top and num_bottom != num_top:
            raise self.error(f"needs as many tops as bottoms, got {num_bottom} bottom(s) and {num_top} top(s)")

    def setup(self, bottom: list[Shape], num_top: int) -> list[Shape]:
        """Caffe's SetUp: check counts, layer_setup, reshape, loss weights. Returns top shapes."""
        self.check_blob_counts(len(bottom), num_top)
        self.layer_setup(bottom)
        tops = self.checked_reshape(bottom)
        self.set_loss_weights(num_top)
        self.param_propagate_down = [True] * len(self.blobs)
        return tops

    @property
    def bottom_shapes(self) -> list[Shape] | None:
        """The bottom shapes of the last reshape (None before set-up)."""
        return self._last_bottom_shapes

    def checked_reshape(self, bottom: list[Shape]) -> list[Shape]:
        tops = [tuple(int(d) for d in s) for s in self.reshape(bottom)]
        self._last_bottom_shapes = list(bottom)
        self._top_shapes = tops
        return tops

    def set_loss_weights(self, num_top: int) -> None:
        weights = list(self.layer_param.loss_weight)
        if not weights and self.is_loss:
            weights = [1.0]
        if len(weights) > num_top:
            raise self.error(f"loss_weight given {len(weights)} times but the layer has {num_top} top(s)")
        if weights and len(weights) != num_top and not self.is_loss:
            raise self.error("loss_weight must be unspecified or specified once per top blob")
        self.loss_weights = weights + [0.0] * (num_top - len(weights))

    def loss(self, top_index: int) -> float:
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    def __repr__(self) -> str:
        return f"<caffe.Layer '{self.name}' type={self.type}>"
