"""Core layers: InnerProduct, Embed, Scale, Bias and Parameter.

Scale and Bias share one broadcast rule (:class:`_BroadcastOperand`): an operand blob whose shape
equals ``bottom[0].shape[axis:axis + operand.ndim]`` is applied to every position of the other
axes (a zero-axis operand is a scalar, whatever ``axis`` says).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffe.blob import Shape
from caffe.layer import BatchSizeFixed, ExportForward, Layer, register
from caffe.proto import caffe_pb2 as pb


# ---------------------------------------------------------------------------- InnerProduct
@register("InnerProduct")
class InnerProductLayer(Layer):
    """``top = bottom (flattened from axis on) x W^T + b``; W is (N, K), or (K, N) with ``transpose``.
    With happynear/caffe-windows' ``normalize: true`` the layer is a :class:`NormalizedInnerProductLayer`."""

    exact_num_bottom, exact_num_top = 1, 1

    def __new__(cls, param: pb.LayerParameter) -> InnerProductLayer:
        if cls is InnerProductLayer and param.inner_product_param.normalize:
            return super().__new__(NormalizedInnerProductLayer)
        return super().__new__(cls)

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.inner_product_param
        self.require(p.num_output > 0, f"inner_product_param.num_output must be given and positive, got {p.num_output}")
        self._n = int(p.num_output)
        self._axis = self.check_axis(p.axis, len(bottom[0]), "inner_product_param.axis")
        self._k = math.prod(bottom[0][self._axis :])
        self._bias_term = p.bias_term
        self._transpose = p.transpose
        shape = (self._k, self._n) if self._transpose else (self._n, self._k)
        self.add_param(shape, p.weight_filler)
        if self._bias_term:
            self.add_param((self._n,), p.bias_filler)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        axis = self.check_axis(self.layer_param.inner_product_param.axis, len(bottom[0]), "inner_product_param.axis")
        k = math.prod(bottom[0][axis:])
        if k != self._k:
            raise self.shape_error(
                f"input size incompatible with inner product parameters: bottom shape {bottom[0]} flattens "
                f"from axis {axis} to {k} inputs, the weights expect {self._k}"
            )
        self._axis = axis
        return [(*bottom[0][:axis], self._n)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0].reshape(*bottom[0].shape[: self._axis], self._k)
        weight = self.param_tensor(0)
        bias = self.param_tensor(1) if self._bias_term else None
        if self._transpose:
            y = x @ weight if bias is None else torch.addmm(bias, x.reshape(-1, self._k), weight)
        else:
            y = F.linear(x, weight, bias)
        return [y.reshape(*bottom[0].shape[: self._axis], self._n)]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size unless the product starts at axis 0."""
        if dynamic_batch and self._axis == 0:
            raise BatchSizeFixed("it works along the batch axis")
        return None


NORMALIZE_EPS = 1e-6  # happynear/caffe-windows' (its CPU code), added to each weight row's sum of squares


class NormalizedInnerProductLayer(InnerProductLayer):
    """happynear/caffe-windows' (NormFace, AM-Softmax) ``normalize: true``: before every forward the stored
    weights, as N rows of K in memory, are scaled in place to unit length (``w / sqrt(|w|^2 + 1e-6)``), so
    snapshots hold them normalized as the fork's do; then the plain product, whose gradient the weights get
    (the fork's backward, not the normalization's derivative)."""

    traceable = False  # changes its weights on each forward

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            rows = self.blobs[0].mutable_tensor.view(self._n, self._k)
            rows.div_((rows.square().sum(dim=1, keepdim=True) + NORMALIZE_EPS).sqrt())
        return super().forward(bottom)


# ---------------------------------------------------------------------------- Embed
@register("Embed")
class EmbedLayer(Layer):
    """A lookup table: each (integer-valued) bottom element selects a row of the (input_dim, N) weight."""

    exact_num_bottom, exact_num_top = 1, 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.embed_param
        self.require(p.num_output > 0, f"embed_param.num_output must be given and positive, got {p.num_output}")
        self.require(p.input_dim > 0, f"embed_param.input_dim must be given and positive, got {p.input_dim}")
        self._n, self._k, self._bias_term = int(p.num_output), int(p.input_dim), p.bias_term
        self.add_param((self._k, self._n), p.weight_filler)
        if self._bias_term:
            self.add_param((self._n,), p.bias_filler)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return [(*bottom[0], self._n)]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False  # Caffe: "Can't backpropagate to EmbedLayer input"

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        # Indices are truncated toward zero, as Caffe's static_cast<int>; no gradient reaches them.
        index = bottom[0].detach().long()
        if not torch.jit.is_tracing() and index.numel():
            bad = (index < 0) | (index >= self._k)
            if bool(bad.any()):
                value = bottom[0].detach()[bad].reshape(-1)[0].item()
                raise self.error(
                    f"index {value:g} out of range for embed_param.input_dim {self._k} (valid: 0..{self._k - 1})"
                )
        y = F.embedding(index, self.param_tensor(0))
        if self._bias_term:
            y = y + self.param_tensor(1)
        return [y]


# ---------------------------------------------------------------------------- Scale / Bias
class _BroadcastOperand(Layer):
    """Shared by Scale and Bias: an operand (bottom[1] or a learned blob) broadcast along bottom[0].

    Subclasses name their parameter message (``_param_field``), may change the learned operand's
    default filler (``_operand_filler``) and combine ``_operand_tensor`` with the input in ``forward``.
    """

    min_bottom, max_bottom, exact_num_top = 1, 2, 1
    _param_field = ""
    _operand = ""

    @property
    def _param(self) -> pb.ScaleParameter | pb.BiasParameter:
        return getattr(self.layer_param, self._param_field)

    def _learned_shape(self, bottom0: Shape, axis: int, num_axes: int) -> Shape:
        """Shape of a learned operand covering ``num_axes`` axes of bottom[0] from ``axis`` (-1: to the end)."""
        field = self._param_field
        if num_axes < -1:
            raise self.error(f"{field}.num_axes must be non-negative, or -1 to extend to the end, got {num_axes}")
        start = self.check_axis(axis, len(bottom0), f"{field}.axis")
        if num_axes >= 0 and start + num_axes > len(bottom0):
            raise self.shape_error(
                f"{self._operand} blob's shape extends past bottom[0]'s shape {bottom0} when applied starting with "
                f"axis {start} over {field}.num_axes {num_axes} axes"
            )
        return bottom0[start:] if num_axes == -1 else bottom0[start : start + num_axes]

    def _view_shape(self, bottom0: Shape, operand: Shape, what: str) -> Shape:
        """The shape to view the operand as so that it broadcasts against bottom[0] (checks the match)."""
        if not operand:
            return ()
        axis = self.check_axis(self._param.axis, len(bottom0), f"{self._param_field}.axis")
        if axis + len(operand) > len(bottom0) or bottom0[axis : axis + len(operand)] != tuple(operand):
            raise self.shape_error(
                f"{what} shape {tuple(operand)} does not match bottom[0] shape {bottom0} from "
                f"{self._param_field}.axis {axis} (expected {bottom0[axis : axis + len(operand)]})"
            )
        return (1,) * axis + tuple(operand) + (1,) * (len(bottom0) - axis - len(operand))

    def _add_operand_param(self, bottom: list[Shape]) -> None:
        """With one bottom, the operand is learned blob 0."""
        if len(bottom) == 1:
            p = self._param
            shape = self._learned_shape(bottom[0], p.axis, p.num_axes)
            self.add_param(shape, self._operand_filler())

    def _operand_filler(self) -> pb.FillerParameter:
        return self._param.filler

    def _per_channel(self) -> bool:
        """Whether the operand is a learned blob of one value per channel of axis 1."""
        view = self._operand_view
        return len(self.bottoms) == 1 and len(view) >= 2 and view[0] == 1 and math.prod(view) == view[1]

    def _operand_tensor(self, bottom: list[torch.Tensor]) -> torch.Tensor:
        operand = bottom[1] if len(bottom) > 1 else self.param_tensor(0)
        return operand.reshape(self._operand_view)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        operand = bottom[1] if len(bottom) > 1 else self.blobs[0].shape
        what = f"{self._operand} bottom[1]" if len(bottom) > 1 else f"{self._operand} parameter"
        self._operand_view = self._view_shape(bottom[0], operand, what)
        return [bottom[0]]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size unless the operand covers the batch axis."""
        if dynamic_batch and self._operand_view and self._operand_view[0] != 1:
            raise BatchSizeFixed("its operand covers the batch axis")
        return None


@register("Bias")
class BiasLayer(_BroadcastOperand):
    """``top = bottom[0] + b``, b = bottom[1] or a learned blob, broadcast from ``axis``."""

    _param_field, _operand = "bias_param", "bias"

    def layer_setup(self, bottom: list[Shape]) -> None:
        self._add_operand_param(bottom)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [bottom[0] + self._operand_tensor(bottom)]

    def channel_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._per_channel():
            return None
        beta = self.param_tensor(0).detach().double()
        return torch.ones_like(beta), beta


@register("Scale")
class ScaleLayer(_BroadcastOperand):
    """``top = bottom[0] * s (+ b)``: s = bottom[1] or learned blob 0; b (``bias_term``) the last blob.

    The bias follows Caffe's internal Bias layer: same ``axis``, and as many axes as the scale
    (bottom[1]'s axes, or ``num_axes``).
    """

    _param_field, _operand = "scale_param", "scale"

    def _operand_filler(self) -> pb.FillerParameter:
        p = self.layer_param.scale_param
        if p.HasField("filler"):
            return p.filler
        return pb.FillerParameter(type="constant", value=1.0)

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.scale_param
        self._add_operand_param(bottom)
        self._bias_term = p.bias_term
        if self._bias_term:
            num_axes = len(bottom[1]) if len(bottom) > 1 else p.num_axes
            self.add_param(self._learned_shape(bottom[0], p.axis, num_axes), p.bias_filler)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        tops = super().reshape(bottom)
        if self._bias_term:
            self._bias_view = self._view_shape(bottom[0], self.blobs[-1].shape, "bias parameter")
        return tops

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        scale = self._operand_tensor(bottom)
        if self._bias_term:
            return [torch.addcmul(self.param_tensor(len(self.blobs) - 1).reshape(self._bias_view), bottom[0], scale)]
        return [bottom[0] * scale]

    def channel_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._per_channel():
            return None
        gamma = self.param_tensor(0).detach().double()
        beta = self.param_tensor(1).detach().double() if self._bias_term else torch.zeros_like(gamma)
        return gamma, beta


# ---------------------------------------------------------------------------- Parameter
@register("Parameter")
class ParameterLayer(Layer):
    """No bottom; its one top is its learnable blob of ``parameter_param.shape``."""

    exact_num_bottom, exact_num_top = 0, 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        self._shape = tuple(int(d) for d in self.layer_param.parameter_param.shape.dim)
        self.add_param(self._shape, None)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return [self._shape]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        param = self.param_tensor(0)
        return [param.view_as(param)]
