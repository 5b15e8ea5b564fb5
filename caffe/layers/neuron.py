"""Neuron layers: element-wise functions of one bottom, and Dropout.

ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, Power, Exp, Log, BNLL, Threshold, Clip, Swish, Dropout.
Each takes exactly one bottom and gives one top of the same shape; each may run in place.

Gradients are Caffe's ``Backward_cpu`` values, including at the kinks: ReLU/PReLU/ELU treat
``x <= 0`` as the negative side, AbsVal uses sign(0) = 0, Clip passes the gradient on the closed
interval ``[min, max]``, BNLL's gradient is exp(x)/(1+exp(x)) with x capped at 50, and Threshold
has none. Power, Exp and Log read the same ``scale``/``shift`` pair (and Exp/Log a ``base``) through
one small base class and, like Caffe, skip the multiply/add steps whose constant is the identity.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from caffe.blob import Shape, proto_shape
from caffe.common import TRAIN
from caffe.layer import ExportForward, Layer, register
from caffe.proto import caffe_pb2 as pb

# Caffe's BNLL caps x at this value in the gradient's exp(x) (and softplus is linear beyond it).
_BNLL_THRESHOLD = 50.0


def caffe_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Caffe's sigmoid, 0.5 * tanh(0.5 x) + 0.5: exactly 0 and 1 where tanh saturates."""
    return torch.tanh(x * 0.5) * 0.5 + 0.5


def _real_pow(a: float, b: float) -> float:
    """a ** b as C's pow: nan for a negative base with a fractional power, inf on overflow."""
    with np.errstate(all="ignore"):
        return float(np.power(np.float64(a), np.float64(b)))


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; subclasses implement :meth:`compute`."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return [bottom[0]]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.compute(bottom[0])]

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """Element-wise: ``forward`` traces as is, for any batch size."""
        return None


@register("ReLU")
class ReLULayer(NeuronLayer):
    """max(x, 0) + negative_slope * min(x, 0); the gradient at 0 is negative_slope."""

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.negative_slope = float(self.layer_param.relu_param.negative_slope)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0:
            return F.relu(x)
        return F.leaky_relu(x, self.negative_slope)

    def pointwise_activation(self) -> tuple[str, list[float]] | None:
        return ("relu", []) if self.negative_slope == 0 else ("leaky_relu", [self.negative_slope])


@register("PReLU")
class PReLULayer(NeuronLayer):
    """ReLU with a learnable negative slope per channel (axis 1), or one shared by all channels."""

    def _check_axes(self, shape: Shape) -> None:
        if len(shape) < 2:
            raise self.shape_error(
                f"the bottom must have at least 2 axes (PReLU learns one slope per channel, axis 1), got shape {shape}"
            )

    def layer_setup(self, bottom: list[Shape]) -> None:
        self._check_axes(bottom[0])
        p = self.layer_param.prelu_param
        self.channel_shared = bool(p.channel_shared)
        channels = bottom[0][1]
        shape: Shape = () if self.channel_shared else (channels,)
        if len(self.layer_param.blobs):
            # Caffe keeps the shape of a slope given inline and only checks its count.
            given = proto_shape(self.layer_param.blobs[0])
            if math.prod(given) != math.prod(shape):
                what = "1 (channel_shared)" if self.channel_shared else f"{channels} (one per channel)"
                raise self.error(
                    f"negative slope size is inconsistent with prototxt config: blob 0 has shape {given} "
                    f"({math.prod(given)} values), expected {what}"
                )
            shape = given
        filler = p.filler if p.HasField("filler") else pb.FillerParameter(type="constant", value=0.25)
        self.add_param(shape, filler)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self._check_axes(bottom[0])
        if not self.channel_shared and bottom[0][1] != self.blobs[0].count:
            raise self.shape_error(
                f"bottom shape {bottom[0]} has {bottom[0][1]} channels but the layer learns "
                f"{self.blobs[0].count} slopes"
            )
        return [bottom[0]]

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.param_tensor(0).reshape(-1))


@register("ELU")
class ELULayer(NeuronLayer):
    """x for x > 0, alpha * (exp(x) - 1) otherwise; the gradient at 0 is alpha."""

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.alpha = float(self.layer_param.elu_param.alpha)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x, self.alpha)


@register("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """1 / (1 + exp(-x)), computed as Caffe does, 0.5 * tanh(0.5 x) + 0.5."""

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return caffe_sigmoid(x)


@register("TanH")
class TanHLayer(NeuronLayer):
    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


@register("AbsVal")
class AbsValLayer(NeuronLayer):
    """|x|; the gradient is sign(x), 0 at 0."""

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


@register("BNLL")
class BNLLLayer(NeuronLayer):
    """log(1 + exp(x)) without overflow; gradient exp(x) / (1 + exp(x)), x capped at 50 as in Caffe."""

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        # softplus is x beyond the threshold (where log(1 + exp(-x)) < 2e-22 vanishes in any
        # float type) and log1p(exp(x)) below it; its gradient is Caffe's expression exactly.
        return F.softplus(x, beta=1.0, threshold=_BNLL_THRESHOLD)


@register("Threshold")
class ThresholdLayer(NeuronLayer):
    """1 where x > threshold, else 0. Not differentiable: no gradient reaches the bottom."""

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.threshold = float(self.layer_param.threshold_param.threshold)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return (x.detach() > self.threshold).to(x.dtype)


@register("Clip")
class ClipLayer(NeuronLayer):
    """max(min, min(x, max)); the gradient passes where min <= x <= max."""

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.clip_param
        missing = [f for f in ("min", "max") if not p.HasField(f)]
        if missing:
            raise self.error(f"clip_param.{' and clip_param.'.join(missing)} is required but not given")
        self.min, self.max = float(p.min), float(p.max)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.min > self.max:
            # Caffe's max(min, min(x, max)) is then min everywhere, with no gradient.
            return torch.full_like(x, self.min)
        return torch.clamp(x, self.min, self.max)


@register("Swish")
class SwishLayer(NeuronLayer):
    """x * sigmoid(beta * x), with Caffe's sigmoid."""

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.beta = float(self.layer_param.swish_param.beta)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return x * caffe_sigmoid(x if self.beta == 1 else x * self.beta)


class _ShiftScaleLayer(NeuronLayer):
    """Power, Exp and Log: functions of shift + scale * x, configured by ``<param_field>``."""

    param_field: ClassVar[str] = ""

    @property
    def _param(self) -> pb.PowerParameter | pb.ExpParameter | pb.LogParameter:
        return getattr(self.layer_param, self.param_field)

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.scale = float(self._param.scale)
        self.shift = float(self._param.shift)

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        """shift + scale * x, skipping the identity steps as Caffe does."""
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        return x

    def log_base(self) -> float:
        """ln(base), 1 for the default base -1 (e); the base must be strictly positive."""
        base = float(self._param.base)
        if base == -1:
            return 1.0
        if not base > 0:
            raise self.error(f"{self.param_field}.base must be strictly positive (or -1 for e), got {base:g}")
        log_base = math.log(base)
        if not math.isfinite(log_base):
            raise self.error(f"{self.param_field}.base {base:g} gives a non-finite log(base) = {log_base:g}")
        return log_base


@register("Power")
class PowerLayer(_ShiftScaleLayer):
    """(shift + scale * x) ^ power. With power * scale == 0 the top is a constant with zero gradient."""

    param_field = "power_param"

    def layer_setup(self, bottom: list[Shape]) -> None:
        super().layer_setup(bottom)
        self.power = float(self._param.power)
        self.constant = self.power * self.scale == 0
        self.constant_value = 1.0 if self.power == 0 else _real_pow(self.shift, self.power)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.constant:
            return torch.full_like(x, self.constant_value)
        u = self.affine(x)
        return u if self.power == 1 else torch.pow(u, self.power)


@register("Exp")
class ExpLayer(_ShiftScaleLayer):
    """base ^ (shift + scale * x), computed as Caffe does: base^shift * exp(ln(base) * scale * x)."""

    param_field = "exp_param"

    def layer_setup(self, bottom: list[Shape]) -> None:
        super().layer_setup(bottom)
        self.inner_scale = self.log_base() * self.scale
        base = float(self._param.base)
        self.outer_scale = 1.0 if self.shift == 0 else _real_pow(math.e if base == -1 else base, self.shift)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x if self.inner_scale == 1 else x * self.inner_scale)
        return y if self.outer_scale == 1 else y * self.outer_scale


@register("Log")
class LogLayer(_ShiftScaleLayer):
    """log_base(shift + scale * x); a non-positive argument gives nan / -inf, as in Caffe."""

    param_field = "log_param"

    def layer_setup(self, bottom: list[Shape]) -> None:
        super().layer_setup(bottom)
        log_base = self.log_base()
        if log_base == 0:
            raise self.error("log_param.base 1 gives 1 / log(base) = inf (no logarithm to base 1)")
        self.base_scale = 1.0 / log_base

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.log(self.affine(x))
        return y if self.base_scale == 1 else y * self.base_scale


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """TRAIN: keep each value with probability 1 - dropout_ratio and scale it by 1 / (1 - ratio).

    TEST: identity. The backward uses the forward's mask and scale. caffe-fast-rcnn's
    ``scale_train: false`` moves the scale to TEST: kept values unscaled, TEST multiplies by 1 - ratio.
    """

    draws_random = True

    def layer_setup(self, bottom: list[Shape]) -> None:
        ratio = float(self.layer_param.dropout_param.dropout_ratio)
        if not 0 <= ratio < 1:
            raise self.error(f"dropout_param.dropout_ratio must be in [0, 1), got {ratio:g}")
        self.ratio = ratio
        self.scale_train = bool(self.layer_param.dropout_param.scale_train)
        self.scale = 1.0 / (1.0 - ratio) if self.scale_train else 1.0

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.phase != TRAIN:
            return x if self.scale_train else x * (1.0 - self.ratio)
        # Caffe's Bernoulli draw, u < 1 - ratio for u ~ U[0, 1): torch's bernoulli_ on the CPU draws 4x slower
        keep = torch.rand(x.shape, dtype=x.dtype, device=x.device) < (1.0 - self.ratio)
        return x * keep * self.scale  # Caffe: bottom * mask * scale
