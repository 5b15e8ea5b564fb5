"""Layers of Caffe's widely used forks (issue 14), with each fork's own semantics and parameters.

* ``BN`` -- alexgkendall/caffe-segnet's batch normalization (``bn_param.bn_mode`` LEARN: batch
  statistics, E[x^2] - E[x]^2, eps 1e-9; INFERENCE: ``scale * x + shift`` with the statistics folded
  into the two blobs by SegNet's compute_bn_statistics.py). PSPNet's BN (hszhao/PSPNet) shares the type
  and ``bn_param``; it is told apart by its own fields (slope_filler, bias_filler, momentum, eps, frozen,
  engine) or by four blobs (slope, bias, moving mean, moving variance).
* ``Upsample`` -- two forks, one name, told apart by the bottom count: two bottoms (data and the mask
  top of a MAX Pooling) is SegNet's unpooling (``scale``/``scale_h``/``scale_w``/``pad_out_*`` or
  ``upsample_h``/``upsample_w``); one bottom is the YOLOv3 ports' nearest-neighbour upsampling by
  ``scale`` (1 when unset, as in those ports); SegNet-only fields with one bottom are refused.
* ``Interp`` -- PSPNet's align-corners bilinear resize (zoom_factor, shrink_factor, height/width,
  pad_beg/pad_end <= 0 cropping).
* ``ShuffleChannel`` (farmingyard/ShuffleNet), ``Axpy`` (hujie-frank/SENet: a * x + y).
* ``DepthwiseConvolution`` (yonghenglh6/DepthwiseConvolution: Convolution with the prototxt's group)
  and ``ConvolutionDepthwise`` (MobileNet/ShuffleNet ports: one filter per input channel, num_output
  and group ignored, weight (C, 1, kh, kw)).
* ``ReLU6`` (eric612/MobileNet-YOLO): ``min(max(x, 0) + negative_slope * min(x, 0), 6)`` with
  ``relu6_param.negative_slope``; the gradient is the fork's: ``negative_slope`` at and below 0, 0 from 6 on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caffe.blob import Shape
from caffe.common import TEST
from caffe.layer import Layer, register
from caffe.layers.vision import ConvolutionLayer, _pad_tail, conv_geometry
from caffe.proto import caffe_pb2 as pb

LEARN = pb.BNParameter.LEARN
INFERENCE = pb.BNParameter.INFERENCE
_PSPNET_BN_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
_SEGNET_EPS = 1e-9


def _channel_view(v: torch.Tensor, dims: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over an (N, C, ...) tensor of ``dims`` axes."""
    return v.reshape(1, -1, *([1] * (dims - 2)))


def _zero_lr(layer: Layer, indices: tuple[int, ...]) -> None:
    """Mask blobs from the solver with lr_mult 0 (written into the layer's ParamSpecs, as the forks do)."""
    specs = layer.layer_param.param
    while len(specs) <= max(indices):
        specs.add()
    for i in indices:
        specs[i].lr_mult = 0.0
        specs[i].decay_mult = 0.0


# ============================================================================ BN (SegNet; PSPNet)
@register("BN")
class BNLayer(Layer):
    """SegNet's BN (2 blobs, bn_mode LEARN/INFERENCE, LEARN may add batch mean/variance tops) or
    PSPNet's BN (4 blobs: slope, bias, moving mean, moving variance; frozen or TEST uses the stored ones)."""

    exact_num_bottom = 1
    min_top = 1
    max_top = 3

    def check_blob_counts(self, num_bottom: int, num_top: int) -> None:
        super().check_blob_counts(num_bottom, num_top)
        self.num_tops = num_top
        if num_top > 1 and (self._is_pspnet() or self.layer_param.bn_param.bn_mode != LEARN):
            raise self.error("only SegNet's bn_mode LEARN has the batch mean and variance tops")

    def _is_pspnet(self) -> bool:
        p = self.layer_param.bn_param
        return any(p.HasField(f) for f in _PSPNET_BN_FIELDS) or len(self.layer_param.blobs) == 4

    def layer_setup(self, bottom: list[Shape]) -> None:
        if len(bottom[0]) < 2:
            raise self.shape_error(f"needs a bottom with at least 2 axes (num, channels, ...), got {list(bottom[0])}")
        p = self.layer_param.bn_param
        self.channels = bottom[0][1]
        shape = (1, self.channels, 1, 1)
        self.pspnet = self._is_pspnet()
        if self.pspnet:
            self.frozen, self.momentum, self.eps = bool(p.frozen), float(p.momentum), float(p.eps)
            self.add_param(shape, p.slope_filler if p.HasField("slope_filler") else p.scale_filler)
            self.add_param(shape, p.bias_filler if p.HasField("bias_filler") else p.shift_filler)
            self.add_param(shape, pb.FillerParameter(type="constant", value=0.0))
            self.add_param(shape, pb.FillerParameter(type="constant", value=1.0 if self.frozen else 0.0))
            _zero_lr(self, (0, 1, 2, 3) if self.frozen else (2, 3))
            self.use_stored = self.frozen or self.phase == TEST
        else:
            if p.bn_mode not in (LEARN, INFERENCE):
                raise self.error(f"unknown bn_mode {p.bn_mode}")
            given = len(self.layer_param.blobs)
            if given not in (0, 2):
                raise self.error(f"SegNet's BN has 2 blobs (scale, shift), {given} given")
            self.add_param(shape, p.scale_filler)
            self.add_param(shape, p.shift_filler)
            self.use_stored = p.bn_mode == INFERENCE

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[0]) < 2 or bottom[0][1] != self.channels:
            raise self.shape_error(f"bottom shape {list(bottom[0])} does not have the {self.channels} channels set up")
        return [bottom[0], *[(1, self.channels, 1, 1)] * (self.num_tops - 1)]

    def _batch_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        if self.pspnet:
            return mean, (x - _channel_view(mean, x.dim())).pow(2).mean(dim=dims)
        return mean, x.pow(2).mean(dim=dims) - mean.pow(2)  # SegNet: E[x^2] - E[x]^2

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        scale, shift = (_channel_view(self.param_tensor(i), x.dim()) for i in (0, 1))
        if not self.pspnet and self.use_stored:
            return [x * scale + shift]
        if self.use_stored:
            mean, var = self.param_tensor(2).detach().reshape(-1), self.param_tensor(3).detach().reshape(-1)
        else:
            mean, var = self._batch_stats(x)
            if self.pspnet:
                self._update_moving(mean.detach(), var.detach())
        eps = self.eps if self.pspnet else _SEGNET_EPS
        top = (x - _channel_view(mean, x.dim())) / _channel_view(torch.sqrt(var + eps), x.dim()) * scale + shift
        return [top, *[t.detach().reshape(1, -1, 1, 1) for t in (mean, var)][: self.num_tops - 1]]

    def _update_moving(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """PSPNet's moving averages: stat = momentum * stat + (1 - momentum) * batch."""
        with torch.no_grad():
            for i, value in ((2, mean), (3, var)):
                blob = self.blobs[i].mutable_tensor
                blob.mul_(self.momentum).add_(value.reshape(blob.shape), alpha=1.0 - self.momentum)

    def channel_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With stored statistics BN is x * a + b per channel (the fused engine folds it into a convolution)."""
        if not self.use_stored:
            return None
        scale, shift = (self.param_tensor(i).detach().double().reshape(-1) for i in (0, 1))
        if not self.pspnet:
            return scale, shift
        mean, var = (self.param_tensor(i).detach().double().reshape(-1) for i in (2, 3))
        a = scale / torch.sqrt(var + self.eps)
        return a, shift - mean * a


# ============================================================================ Upsample (SegNet; YOLOv3 ports)
class _Unpool(torch.autograd.Function):
    """SegNet's unpooling: top[mask[i]] = x[i] per (n, c) plane; backward gathers top's diff at the mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        n, c = x.shape[:2]
        top = x.new_zeros(n, c, out_hw[0] * out_hw[1])
        top.scatter_(2, index, x.reshape(n, c, -1))
        ctx.save_for_backward(index)
        ctx.in_shape = x.shape
        return top.view(n, c, *out_hw)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        n, c = grad.shape[:2]
        return grad.reshape(n, c, -1).gather(2, index).view(ctx.in_shape), None, None


_SEGNET_UPSAMPLE_FIELDS = ("scale_h", "scale_w", "pad_out_h", "pad_out_w", "upsample_h", "upsample_w")


@register("Upsample")
class UpsampleLayer(Layer):
    """Two bottoms (data, MAX pooling mask): SegNet's unpooling; one bottom: the YOLOv3 ports' nearest
    neighbour by ``scale``. The bottom count is the rule that tells the forks apart."""

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.upsample_param
        self.unpool = len(bottom) == 2
        if self.unpool:
            self._setup_segnet(p)
            return
        given = [f for f in _SEGNET_UPSAMPLE_FIELDS if p.HasField(f)]
        if given:
            raise self.error(
                f"{', '.join(given)} belong to SegNet's unpooling, which takes two bottoms (data and the "
                "MAX pooling mask); with one bottom Upsample is the YOLO ports' nearest-neighbour (scale only)"
            )
        self.scale = int(p.scale) if p.HasField("scale") else 1
        if self.scale < 1:
            raise self.error(f"upsample_param.scale must be >= 1, got {self.scale}")

    def _setup_segnet(self, p: pb.UpsampleParameter) -> None:
        has = p.HasField
        if not (
            (has("upsample_h") and has("upsample_w"))
            or (not has("scale") and has("scale_h") and has("scale_w"))
            or (not has("scale_h") and not has("scale_w"))
        ):
            raise self.error("upsample_h & upsample_w are required, else scale OR scale_h & scale_w")
        self.fixed_hw: tuple[int, int] | None = None
        if has("upsample_h") and has("upsample_w"):
            self.fixed_hw = (int(p.upsample_h), int(p.upsample_w))
            if min(self.fixed_hw) <= 1:
                raise self.error(f"upsample_h and upsample_w must be > 1, got {list(self.fixed_hw)}")
            return
        self.scale_hw = (int(p.scale_h), int(p.scale_w)) if has("scale_h") else (int(p.scale),) * 2
        if min(self.scale_hw) <= 1:
            raise self.error(f"the upsampling scale must be > 1, got {list(self.scale_hw)}")
        self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
        for pad, s, axis in zip(self.pad_out, self.scale_hw, "hw"):
            if pad and s != 2:
                raise self.error(f"pad_out_{axis} requires scale_{axis} == 2, got {s}")

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        shape = bottom[0]
        if len(shape) != 4:
            raise self.shape_error(f"input must have 4 axes (num, channels, height, width); got {list(shape)}")
        if not self.unpool:
            return [(*shape[:2], shape[2] * self.scale, shape[3] * self.scale)]
        if bottom[1] != shape:
            raise self.shape_error(f"the mask shape {list(bottom[1])} differs from the data shape {list(shape)}")
        if self.fixed_hw is not None:
            self.out_hw = self.fixed_hw
        else:
            self.out_hw = tuple(n * s - p for n, s, p in zip(shape[2:], self.scale_hw, self.pad_out))  # type: ignore[assignment]
        return [(*shape[:2], *self.out_hw)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        if not self.unpool:
            s = self.scale
            n, c, h, w = x.shape
            return [x[:, :, :, None, :, None].expand(n, c, h, s, w, s).reshape(n, c, h * s, w * s)]
        index = bottom[1].detach().reshape(x.shape[0], x.shape[1], -1).long()
        size = self.out_hw[0] * self.out_hw[1]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
            raise self.error(
                f"mask index out of range [0, {size}) of the {self.out_hw[0]}x{self.out_hw[1]} top: check that "
                "the scale / upsample_h, upsample_w match the pooling layer that made the mask"
            )
        return [_Unpool.apply(x, index, self.out_hw)]


# ============================================================================ Interp (PSPNet)
@register("Interp")
class InterpLayer(Layer):
    """PSPNet's bilinear resize with align-corners sampling; pad_beg/pad_end (<= 0) crop the input first."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.interp_param
        self.pad_beg, self.pad_end = int(p.pad_beg), int(p.pad_end)
        if self.pad_beg > 0 or self.pad_end > 0:
            raise self.error(
                f"only non-positive padding (cropping) is supported: pad_beg {self.pad_beg}, pad_end {self.pad_end}"
            )

    def output_hw(self, hw_eff: tuple[int, int]) -> tuple[int, int]:
        """PSPNet's rules, in its order: shrink only; zoom only; height and width; shrink then zoom."""
        p = self.layer_param.interp_param
        has = p.HasField
        shrink, zoom = int(p.shrink_factor), int(p.zoom_factor)
        if (has("shrink_factor") and shrink < 1) or (has("zoom_factor") and zoom < 1):
            raise self.error(f"shrink_factor and zoom_factor must be >= 1, got {shrink}, {zoom}")
        if has("shrink_factor") == has("zoom_factor") and has("height") and has("width"):
            return int(p.height), int(p.width)
        if not has("shrink_factor") and not has("zoom_factor"):
            raise self.error("interp_param needs zoom_factor, shrink_factor, or height and width")
        h, w = hw_eff
        if has("shrink_factor"):
            h, w = (h - 1) // shrink + 1, (w - 1) // shrink + 1
        if has("zoom_factor"):
            h, w = h + (h - 1) * (zoom - 1), w + (w - 1) * (zoom - 1)
        return h, w

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        shape = bottom[0]
        if len(shape) != 4:
            raise self.shape_error(f"input must have 4 axes (num, channels, height, width); got {list(shape)}")
        crop = self.pad_beg + self.pad_end
        self.hw_eff = (shape[2] + crop, shape[3] + crop)
        self.out_hw = self.output_hw(self.hw_eff)
        if min(self.hw_eff) <= 0 or min(self.out_hw) <= 0:
            raise self.shape_error(
                f"input {list(shape[2:])} cropped to {list(self.hw_eff)} resizes to {list(self.out_hw)}: "
                "sizes must be positive"
            )
        return [(*shape[:2], *self.out_hw)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        b = -self.pad_beg
        x = bottom[0][:, :, b : b + self.hw_eff[0], b : b + self.hw_eff[1]]
        if tuple(self.out_hw) == tuple(self.hw_eff):
            return [x.clone() if x is bottom[0] else x]
        return [F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=True)]


# ============================================================================ ShuffleChannel, Axpy
@register("ShuffleChannel")
class ShuffleChannelLayer(Layer):
    """ShuffleNet's channel shuffle: channels viewed as (group, C/group), transposed, flattened."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.group = int(self.layer_param.shuffle_channel_param.group)
        if self.group <= 0:
            raise self.error(f"shuffle_channel_param.group must be > 0, got {self.group}")

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        shape = bottom[0]
        if len(shape) < 2 or shape[1] % self.group:
            raise self.shape_error(f"group {self.group} does not divide the channels of bottom shape {list(shape)}")
        return [shape]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        n, c = x.shape[:2]
        return [x.reshape(n, self.group, c // self.group, -1).transpose(1, 2).reshape(x.shape)]


@register("Axpy")
class AxpyLayer(Layer):
    """SENet's Axpy: top = a * x + y with a of shape (N, C) or (N, C, 1, 1) scaling x's channels."""

    exact_num_bottom = 3
    exact_num_top = 1

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        a, x, y = bottom
        if len(a) < 2 or len(x) < 2 or a[:2] != x[:2] or (len(a) == 4 and a[2:] != (1, 1)):
            raise self.shape_error(f"the scale bottom {list(a)} must be (N, C) or (N, C, 1, 1) of x {list(x)}")
        if x != y:
            raise self.shape_error(f"x {list(x)} and y {list(y)} must have the same shape")
        return [x]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        a, x, y = bottom
        return [a.reshape(*a.shape[:2], *([1] * (x.dim() - 2))) * x + y]


# ============================================================================ depthwise convolutions
@register("DepthwiseConvolution")
class DepthwiseConvolutionLayer(ConvolutionLayer):
    """yonghenglh6/DepthwiseConvolution: a faster GPU kernel for Convolution with group = channels; the
    maths (and the prototxt's num_output and group) are Convolution's."""

    type = "DepthwiseConvolution"


@register("ConvolutionDepthwise")
class ConvolutionDepthwiseLayer(Layer):
    """One kh x kw filter per input channel (weight (C, 1, kh, kw), bias (C,)); num_output and group are
    ignored, the output has the input's channels; Caffe's truncating output size."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        if len(bottom[0]) != 4:
            raise self.shape_error(f"input must have 4 axes (num, channels, height, width); got {list(bottom[0])}")
        p = self.layer_param.convolution_param
        self.geometry = g = conv_geometry(self, p, bottom[0], min_spatial=2, max_spatial=2)
        self.channels = bottom[0][1]
        self.bias_term = bool(p.bias_term)
        self.add_param((self.channels, 1, *g.kernel), p.weight_filler)
        if self.bias_term:
            self.add_param((self.channels,), p.bias_filler)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        shape, g = bottom[0], self.geometry
        if len(shape) != 4 or shape[1] != self.channels:
            raise self.shape_error(f"bottom shape {list(shape)} does not have the {self.channels} channels set up")
        out = g.conv_output(self, shape)
        self._tail = g.tail_pad(shape, out)
        return [(*shape[:2], *out)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        g = self.geometry
        bias = self.param_tensor(1) if self.bias_term else None
        x = _pad_tail(bottom[0], self._tail)
        return [F.conv2d(x, self.param_tensor(0), bias, g.stride, g.pad, g.dilation, self.channels)]


@register("ReLU6")
class ReLU6Layer(Layer):
    """MobileNet-YOLO's ReLU6 (see the module docstring)."""

    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.negative_slope = float(self.layer_param.relu6_param.negative_slope)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return [bottom[0]]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        y = F.relu(x) if self.negative_slope == 0 else F.leaky_relu(x, self.negative_slope)
        return [torch.where(x < 6, y, torch.full_like(y, 6.0))]  # from 6 on: the constant, gradient 0
