"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP and Crop, with Caffe master's rules.

Shared machinery:

* :func:`conv_geometry` reads the spatial geometry of a ``ConvolutionParameter`` (kernel, stride, pad
  and dilation from the repeated fields or the 2-D ``*_h``/``*_w`` fields) for Convolution,
  Deconvolution and Im2col.
* :class:`PoolPlan` is one planned 2-D pooling (MAX, AVE or STOCHASTIC) for a fixed input size, with
  Caffe's output size and window rules; Pooling and SPP both run through it.

Numerics follow Caffe exactly where torch's native op agrees with Caffe's formula (checked by the
tests against NumPy transcriptions of Caffe's loops) and fall back to an explicit pad + native op +
per-window divisor where it does not (e.g. pooling pad > kernel/2, which torch rejects, or a
ceil-mode window lying wholly outside an unpadded input, which torch drops and Caffe keeps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from caffe.blob import Shape
from caffe.common import TRAIN
from caffe.layer import BatchSizeFixed, ExportForward, Layer, register
from caffe.ops import compiled_cpu_training
from caffe.ops.convolution import conv2d
from caffe.ops.pooling import aten_pools_faster, max_pool2d, max_pool2d_with_indices
from caffe.proto import caffe_pb2 as pb

FLT_MAX = float(np.finfo(np.float32).max)

MAX = pb.PoolingParameter.MAX
AVE = pb.PoolingParameter.AVE
STOCHASTIC = pb.PoolingParameter.STOCHASTIC
_POOL_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}


# ============================================================================ convolution geometry
@dataclass(frozen=True)
class ConvGeometry:
    """Channel axis and per-spatial-axis kernel, stride, pad and dilation of a convolution-like layer."""

    axis: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def num_spatial(self) -> int:
        return len(self.kernel)

    @property
    def extent(self) -> tuple[int, ...]:
        """The dilated kernel size per spatial axis."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    def conv_output(self, layer: Layer, shape: Shape) -> tuple[int, ...]:
        """Caffe's convolution output size, (in + 2*pad - extent) / stride + 1 per spatial axis, with C++'s
        division (toward zero): a kernel overhanging the padded input by less than a stride still gives 1
        (its missing rows read as zeros, as Caffe's im2col does); a size <= 0 is refused."""
        spatial = shape[self.axis + 1 :]
        out = tuple(_trunc_div(n + 2 * p - e, s) + 1 for n, p, e, s in zip(spatial, self.pad, self.extent, self.stride))
        if any(o <= 0 for o in out):
            raise layer.shape_error(
                f"input spatial size {list(spatial)} (bottom shape {list(shape)}) plus 2*pad {list(self.pad)} "
                f"is smaller than the (dilated) kernel {list(self.extent)} by a stride or more "
                f"(Caffe's output size {list(out)})"
            )
        return out

    def tail_pad(self, shape: Shape, out: Sequence[int]) -> tuple[int, ...]:
        """Zeros to add after each spatial axis so that ``out`` windows fit (nonzero only when the kernel
        overhangs the padded input, see :meth:`conv_output`)."""
        spatial = shape[self.axis + 1 :]
        return tuple(
            max(0, (o - 1) * s + e - n - 2 * p)
            for n, o, s, e, p in zip(spatial, out, self.stride, self.extent, self.pad)
        )

    def deconv_output(self, layer: Layer, shape: Shape) -> tuple[int, ...]:
        """Caffe's deconvolution output size, stride*(in - 1) + extent - 2*pad, per spatial axis."""
        spatial = shape[self.axis + 1 :]
        out = tuple(s * (n - 1) + e - 2 * p for n, p, e, s in zip(spatial, self.pad, self.extent, self.stride))
        if any(o <= 0 for o in out):
            raise layer.shape_error(
                f"deconvolution of input spatial size {list(spatial)} (bottom shape {list(shape)}) with kernel "
                f"{list(self.kernel)}, stride {list(self.stride)}, pad {list(self.pad)} gives output size {list(out)}"
            )
        return out

    def check_bottom(self, layer: Layer, shape: Shape) -> None:
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise layer.shape_error(
                f"bottom shape {list(shape)} has {len(shape)} axes; the layer was set up for "
                f"{self.axis + 1 + self.num_spatial} (channel axis {self.axis}, {self.num_spatial} spatial)"
            )


def _trunc_div(a: int, b: int) -> int:
    """C++ integer division (rounds toward zero)."""
    return a // b if a >= 0 else -(-a // b)


def _pad_tail(x: torch.Tensor, tail: Sequence[int]) -> torch.Tensor:
    """Zero-pad the end of the last ``len(tail)`` axes of ``x``."""
    if not any(tail):
        return x
    return F.pad(x, [v for t in reversed(tail) for v in (0, t)])


def _spatial_field(
    layer: Layer, p: pb.ConvolutionParameter, name: str, hw: str | None, n: int, default: int | None
) -> tuple[int, ...]:
    """One geometry field: the repeated ``name`` (once or once per spatial axis) or ``hw``_h/``hw``_w."""
    values = list(getattr(p, name))
    if n == 0 and len(values) <= 1 and not (hw is not None and (p.HasField(f"{hw}_h") or p.HasField(f"{hw}_w"))):
        return ()  # 0-D convolution (a channel-wise inner product): nothing spatial to configure
    if hw is not None and (p.HasField(f"{hw}_h") or p.HasField(f"{hw}_w")):
        if n != 2:
            raise layer.error(f"{hw}_h & {hw}_w can only be used for 2-D convolution; the bottom has {n} spatial axes")
        if values:
            raise layer.error(f"either {name} or {hw}_h/{hw}_w should be specified, not both")
        return (int(getattr(p, f"{hw}_h")), int(getattr(p, f"{hw}_w")))
    if not values:
        if default is None:
            alt = f" (or {hw}_h and {hw}_w)" if hw is not None else ""
            raise layer.error(f"{name} must be specified{alt}")
        return (default,) * n
    if len(values) not in (1, n):
        raise layer.error(
            f"{name} must be specified once, or once per spatial dimension ({name} specified "
            f"{len(values)} times; {n} spatial dims)"
        )
    return tuple(int(v) for v in (values * n if len(values) == 1 else values))


def conv_geometry(
    layer: Layer, p: pb.ConvolutionParameter, shape: Shape, min_spatial: int = 1, max_spatial: int | None = None
) -> ConvGeometry:
    """Parse and validate the geometry of ``p`` for a bottom of ``shape`` (channel axis at ``p.axis``)."""
    axis = layer.check_axis(p.axis, len(shape), "convolution_param.axis")
    n = len(shape) - axis - 1
    if n < min_spatial:
        raise layer.shape_error(
            f"bottom shape {list(shape)} has no spatial axis after the channel axis {axis} (convolution_param.axis)"
        )
    if max_spatial is not None and n > max_spatial:
        raise layer.shape_error(
            f"{layer.type} supports 1, 2 or 3 spatial axes; bottom shape {list(shape)} has {n} after "
            f"the channel axis {axis}"
        )
    kernel = _spatial_field(layer, p, "kernel_size", "kernel", n, None)
    stride = _spatial_field(layer, p, "stride", "stride", n, 1)
    pad = _spatial_field(layer, p, "pad", "pad", n, 0)
    dilation = _spatial_field(layer, p, "dilation", None, n, 1)
    for what, values in (("kernel_size (kernel_h/kernel_w)", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v <= 0 for v in values):
            raise layer.error(f"{what} must be nonzero, got {list(values)}")
    return ConvGeometry(axis, kernel, stride, pad, dilation)


def _batch_view(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(lead..., C, spatial...) -> (count(lead), C, spatial...): Caffe's num = count(0, axis)."""
    return x if axis == 1 else x.reshape((-1, *x.shape[axis:]))


def _unbatch(y: torch.Tensor, lead: Sequence[int], axis: int) -> torch.Tensor:
    return y if axis == 1 else y.reshape((*lead, *y.shape[1:]))


# ============================================================================ Convolution / Deconvolution
_CONV = {1: F.conv1d, 2: conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _ConvolutionBase(Layer):
    """Convolution and Deconvolution: parameters, blob shapes and shape rules (Caffe's BaseConvolutionLayer).

    ``tail_padding`` (after reshape): zeros appended at the end of each spatial axis, where a kernel
    overhangs a tiny input and Caffe's truncating output size still gives a window.
    """

    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True
    transposed = False

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.convolution_param
        g = conv_geometry(self, p, bottom[0], min_spatial=0, max_spatial=3)
        self.geometry = g
        self.channels = bottom[0][g.axis]
        self.num_output = int(p.num_output)
        self.group = int(p.group)
        self.bias_term = bool(p.bias_term)
        if self.num_output <= 0:
            raise self.error(f"convolution_param.num_output must be > 0, got {self.num_output}")
        if self.group <= 0:
            raise self.error(f"convolution_param.group must be > 0, got {self.group}")
        if self.channels % self.group:
            raise self.error(
                f"group {self.group} does not divide the {self.channels} input channels "
                f"(bottom shape {list(bottom[0])}, channel axis {g.axis})"
            )
        if self.num_output % self.group:
            raise self.error(f"num_output {self.num_output} is not a multiple of group {self.group}")
        given = len(self.layer_param.blobs)
        if given and given != 1 + self.bias_term:
            raise self.error(
                f"incorrect number of weight blobs: {given} given, expected {1 + self.bias_term} "
                f"(bias_term: {str(self.bias_term).lower()})"
            )
        if self.transposed:
            weight_shape = (self.channels, self.num_output // self.group, *g.kernel)
        else:
            weight_shape = (self.num_output, self.channels // self.group, *g.kernel)
        self.add_param(weight_shape, p.weight_filler)
        if self.bias_term:
            self.add_param((self.num_output,), p.bias_filler)
        # 0 spatial axes (Caffe's 0-D convolution) runs as a 1-D convolution over a length-1 axis.
        self._zero_d = g.num_spatial == 0
        one = (1,) if self._zero_d else ()
        self._fn: Callable[..., torch.Tensor] = (_DECONV if self.transposed else _CONV)[max(g.num_spatial, 1)]
        self._kwargs = {
            "stride": g.stride + one,
            "padding": g.pad + (0,) * len(one),
            "dilation": g.dilation + one,
            "groups": self.group,
        }

    def output_spatial(self, shape: Shape) -> tuple[int, ...]:
        return self.geometry.conv_output(self, shape)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        g = self.geometry
        shape = bottom[0]
        g.check_bottom(self, shape)
        if shape[g.axis] != self.channels:
            raise self.shape_error(
                f"input size incompatible with convolution kernel: bottom shape {list(shape)} has "
                f"{shape[g.axis]} channels at axis {g.axis}, the weights expect {self.channels}"
            )
        for j, other in enumerate(bottom[1:], start=1):
            if other != shape:
                raise self.shape_error(f"shape mismatch - bottom[0]: {list(shape)} vs. bottom[{j}]: {list(other)}")
        out = self.output_spatial(shape)
        self.tail_padding = () if self.transposed else g.tail_pad(shape, out)
        top = (*shape[: g.axis], self.num_output, *out)
        return [top] * len(bottom)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        weight = self.param_tensor(0)
        bias = self.param_tensor(1) if self.bias_term else None
        axis = self.geometry.axis
        if self._zero_d:
            weight = weight.unsqueeze(-1)
        tops = []
        for x in bottom:
            xb = _pad_tail(_batch_view(x, axis), self.tail_padding)
            if self._zero_d:
                y = self._fn(xb.unsqueeze(-1), weight, bias, **self._kwargs).squeeze(-1)
            else:
                y = self._fn(xb, weight, bias, **self._kwargs)
            tops.append(_unbatch(y, x.shape[:axis], axis))
        return tops

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size."""
        return None


@register("Convolution")
class ConvolutionLayer(_ConvolutionBase):
    """N-d convolution (1, 2 or 3 spatial axes); weight (num_output, C/group, *kernel), bias (num_output,)."""


@register("Deconvolution")
class DeconvolutionLayer(_ConvolutionBase):
    """Transposed convolution; weight (C, num_output/group, *kernel), bias (num_output,)."""

    transposed = True

    def output_spatial(self, shape: Shape) -> tuple[int, ...]:
        return self.geometry.deconv_output(self, shape)


# ============================================================================ Im2col
def im2col(x: torch.Tensor, g: ConvGeometry, out: Sequence[int]) -> torch.Tensor:
    """Caffe's im2col on (lead..., C, spatial...): (lead..., C*prod(kernel), out...), rows ordered (c, k...)."""
    lead = x.shape[: g.axis]
    x = _batch_view(x, g.axis)
    num, channels = x.shape[0], x.shape[1]
    rows = channels * math.prod(g.kernel)
    n = g.num_spatial
    if n <= 2:
        one = (1,) if n == 1 else ()
        x2 = x.unsqueeze(2) if n == 1 else x
        cols = F.unfold(
            x2,
            one + g.kernel,
            dilation=one + g.dilation,
            padding=(0,) * len(one) + g.pad,
            stride=one + g.stride,
        )
        y = cols.view(num, rows, *out)
    else:
        pads = [v for i in reversed(range(n)) for v in (g.pad[i], g.pad[i])]
        v = F.pad(x, pads) if any(g.pad) else x
        for i in range(n):
            v = v.unfold(2 + i, g.extent[i], g.stride[i])
        if any(d > 1 for d in g.dilation):
            v = v[(..., *(slice(None, None, d) for d in g.dilation))]
        perm = [0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n)]
        y = v.permute(perm).reshape(num, rows, *out)
    return _unbatch(y, lead, g.axis)


@register("Im2col")
class Im2colLayer(Layer):
    """The column buffer of a convolution as a blob: C*prod(kernel) rows, channel-major then kernel offset."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        self.geometry = conv_geometry(self, self.layer_param.convolution_param, bottom[0])

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        g = self.geometry
        shape = bottom[0]
        g.check_bottom(self, shape)
        self._out = g.conv_output(self, shape)
        self._tail = g.tail_pad(shape, self._out)
        return [(*shape[: g.axis], shape[g.axis] * math.prod(g.kernel), *self._out)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [im2col(_pad_tail(bottom[0], self._tail), self.geometry, self._out)]


# ============================================================================ pooling (shared by Pooling and SPP)
def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def caffe_pool_output(size: int, kernel: int, stride: int, pad: int, ceil: bool, padded: bool) -> int:
    """Caffe's pooled size: ceil or floor of (size + 2*pad - kernel)/stride, + 1 (a negative span rounds
    the same way: 2x2/2 over 1x1 gives 1 with ceil, 0 with floor); when the layer has any padding
    (``padded``: pad_h or pad_w nonzero, on both axes alike), a last window starting in the
    bottom/right padding is dropped."""
    span = size + 2 * pad - kernel
    out = (_ceil_div(span, stride) if ceil else span // stride) + 1
    if padded and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_pool_output(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """The size torch's max/avg_pool2d produce (they drop a last window starting in the padding even
    when pad is 0, which Caffe does not)."""
    out = (size + 2 * pad - kernel + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def check_pool_config(
    layer: Layer, method: int, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], where: str = ""
) -> None:
    """Caffe's PoolingLayer parameter rules (``where`` prefixes the message, e.g. an SPP level)."""
    if any(k <= 0 for k in kernel):
        raise layer.error(f"{where}kernel size must be nonzero, got {list(kernel)}")
    if any(s <= 0 for s in stride):
        raise layer.error(f"{where}stride must be nonzero, got {list(stride)}")
    if any(pad):
        if method not in (MAX, AVE):
            raise layer.error(
                f"{where}padding (pad {list(pad)}) is implemented only for AVE and MAX pooling, "
                f"not {_POOL_NAMES.get(method, method)}"
            )
        if any(p >= k for p, k in zip(pad, kernel)):
            raise layer.error(f"{where}pad {list(pad)} must be smaller than the kernel {list(kernel)}")


def pool_ceil_mode(layer: Layer, p: pb.PoolingParameter) -> bool:
    """Ceil (True) or floor rounding: BVLC master's ``round_mode`` or the forks' ``ceil_mode`` (BVLC PR
    #3057: DenseNet, DPN, ResNeXt prototxts); both given must agree."""
    ceil = p.round_mode == pb.PoolingParameter.CEIL
    if p.HasField("ceil_mode"):
        if p.HasField("round_mode") and p.ceil_mode != ceil:
            raise layer.error(
                f"ceil_mode: {str(p.ceil_mode).lower()} contradicts round_mode: "
                f"{pb.PoolingParameter.RoundMode.Name(p.round_mode)}"
            )
        ceil = p.ceil_mode
    return ceil


class PoolPlan:
    """A 2-D pooling of an (N, C, H, W) input of fixed H, W with Caffe's sizes and window rules."""

    def __init__(
        self,
        layer: Layer,
        method: int,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        pad: tuple[int, int],
        ceil: bool,
        in_hw: tuple[int, int],
        is_global: bool = False,
        where: str = "",
    ) -> None:
        if method not in _POOL_NAMES:
            raise layer.error(f"unknown pooling method {method}")
        check_pool_config(layer, method, kernel, stride, pad, where)
        self.method, self.kernel, self.stride, self.pad, self.ceil = method, kernel, stride, pad, ceil
        self.in_hw = in_hw
        self.is_global = is_global
        padded = any(pad)
        # A window larger than the input builds, as in Caffe (2x2/2 over 1x1 gives 1x1); only a size
        # <= 0 is refused (Caffe's negative size fails its blob check; an empty top cannot pool).
        self.out = tuple(caffe_pool_output(n, k, s, p, ceil, padded) for n, k, s, p in zip(in_hw, kernel, stride, pad))
        if min(self.out) <= 0:
            raise layer.shape_error(
                f"{where}input spatial size {list(in_hw)} plus 2*pad {list(pad)} is smaller than the kernel "
                f"{list(kernel)} by too much: pooled size {list(self.out)} (stride {list(stride)}, "
                f"{'ceil' if ceil else 'floor'} rounding)"
            )
        torch_out = tuple(_torch_pool_output(n, k, s, p, ceil) for n, k, s, p in zip(in_hw, kernel, stride, pad))
        # torch's pooling = Caffe's when it accepts the pad and produces Caffe's output size (then the
        # window clipping, the MAX tie rule and the AVE divisor clipped to [-pad, size+pad) coincide).
        self.native = method != STOCHASTIC and torch_out == self.out and all(p <= k // 2 for p, k in zip(pad, kernel))
        # Otherwise: pad explicitly so that the windows tile the padded input exactly.
        lo = pad if method != STOCHASTIC else (0, 0)
        hi = tuple((o - 1) * s + k - n - p for o, s, k, n, p in zip(self.out, stride, kernel, in_hw, lo))
        self.pad_lo = lo
        self.explicit_pad = [lo[1], hi[1], lo[0], hi[0]]
        self.needs_pad = any(self.explicit_pad)
        # Caffe keeps a ceil-mode window that starts past an unpadded image (stride > kernel): it is empty.
        self.has_empty = any((o - 1) * st - p >= n for o, st, p, n in zip(self.out, stride, pad, in_hw))

    def _window_starts(self, dim: int, device: torch.device) -> torch.Tensor:
        return torch.arange(self.out[dim], device=device) * self.stride[dim] - self.pad[dim]

    def empty_windows(self, device: torch.device) -> torch.Tensor:
        """(out_h, out_w) bool: windows lying wholly outside the image."""
        rows, cols = (self._window_starts(d, device) >= self.in_hw[d] for d in (0, 1))
        return rows[:, None] | cols[None, :]

    def caffe_divisor(self, x: torch.Tensor) -> torch.Tensor:
        """Caffe's AVE pool_size per window: the window clipped to [-pad, size + pad), counted before
        clipping to the image (an empty window past the image gets a size <= 0, as in Caffe)."""
        sizes = []
        for d in (0, 1):
            start = self._window_starts(d, x.device)
            sizes.append(torch.clamp(start + self.kernel[d], max=self.in_hw[d] + self.pad[d]) - start)
        return (sizes[0][:, None] * sizes[1][None, :]).to(x.dtype)

    def _padded(self, x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        return F.pad(x, self.explicit_pad, value=value) if self.needs_pad else x

    def __call__(
        self, x: torch.Tensor, train: bool, want_mask: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.method == MAX:
            return self._max(x, want_mask)
        if self.method == AVE:
            return self._ave(x), None
        return (self._stochastic_train(x) if train else self._stochastic_test(x)), None

    def onnx_forward(self) -> ExportForward | None:
        """MAX/AVE pooling in ops whose ONNX semantics are unambiguous: an explicit pad, then a plain MaxPool
        or AveragePool (AVE rescaled per window where windows overhang), never AveragePool with ``ceil_mode``;
        None where the layer's own forward already is such ops."""
        if self.method not in (MAX, AVE) or self.is_global:
            return None
        kernel, stride = self.kernel, self.stride
        left, right, top, bottom = self.explicit_pad
        explicit = [left, max(right, 0), top, max(bottom, 0)]  # a negative pad only drops what floor mode drops
        if self.method == MAX:
            if self.native:
                return None  # MaxPool(pads, ceil_mode) computes Caffe's windows and sizes here
            empty = self.empty_windows(torch.device("cpu")) if self.has_empty else None

            def max_pool(b: list[torch.Tensor]) -> list[torch.Tensor]:
                x = F.pad(b[0], explicit, value=float("-inf")) if any(explicit) else b[0]
                y = F.max_pool2d(x, kernel, stride)
                if empty is not None:
                    y = y.masked_fill(empty.to(y.device), -FLT_MAX)
                return [y]

            return max_pool
        full = kernel[0] * kernel[1]
        divisor = self.caffe_divisor(torch.empty(0, dtype=torch.float64))
        uniform = bool((divisor == full).all())
        if uniform and self.native:
            pad = self.pad
            return lambda b: [F.avg_pool2d(b[0], kernel, stride, pad, ceil_mode=False, count_include_pad=True)]
        rescale = None if uniform else (full / divisor)

        def ave_pool(b: list[torch.Tensor]) -> list[torch.Tensor]:
            x = F.pad(b[0], explicit) if any(explicit) else b[0]
            y = F.avg_pool2d(x, kernel, stride)
            if rescale is not None:
                y = y * rescale.to(y.dtype).to(y.device)
            return [y]

        return ave_pool

    # -------------------------------------------------------------- MAX
    def _max(self, x: torch.Tensor, want_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.native and want_mask:
            y, idx = max_pool2d_with_indices(x, self.kernel, self.stride, self.pad, self.ceil)
            return y, idx.to(x.dtype)
        if self.native and aten_pools_faster(x) and not compiled_cpu_training(x):
            # no padded copy: ATen's windows are Caffe's here
            return F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil), None
        if self.native and self.kernel != self.stride and x.requires_grad and torch.is_grad_enabled():
            # overlapping windows with a gradient: ATen's vectorized channels-last kernel, no padded copy
            return max_pool2d_with_indices(x, self.kernel, self.stride, self.pad, self.ceil)[0], None
        xp = self._padded(x, float("-inf"))
        if want_mask:
            y, idx = F.max_pool2d(xp, self.kernel, self.stride, return_indices=True)
            wp = xp.shape[-1]
            rows = torch.div(idx, wp, rounding_mode="floor") - self.pad_lo[0]
            cols = idx.remainder(wp) - self.pad_lo[1]
            mask: torch.Tensor | None = rows * self.in_hw[1] + cols
        else:
            y, mask = max_pool2d(xp, self.kernel, self.stride, self.out), None
        if self.has_empty:
            # A window wholly outside the image: Caffe leaves -FLT_MAX and index -1 (and no gradient).
            empty = self.empty_windows(x.device)
            y = y.masked_fill(empty, -FLT_MAX)
            if mask is not None:
                mask = mask.masked_fill(empty, -1)
        return y, (mask.to(x.dtype) if mask is not None else None)

    # -------------------------------------------------------------- AVE
    def _ave(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_global:
            return x.mean(dim=(-2, -1), keepdim=True)
        if self.native:
            return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, count_include_pad=True)
        sums = F.avg_pool2d(self._padded(x), self.kernel, self.stride, divisor_override=1)
        return sums / self.caffe_divisor(x)

    # -------------------------------------------------------------- STOCHASTIC
    def _stochastic_test(self, x: torch.Tensor) -> torch.Tensor:
        """sum(x^2) / sum(x) over each window (clipped to the image); 0 where the sum is not positive."""
        xp = self._padded(x)
        s1 = F.avg_pool2d(xp, self.kernel, self.stride, divisor_override=1)
        s2 = F.avg_pool2d(xp * xp, self.kernel, self.stride, divisor_override=1)
        positive = s1 > 0
        return torch.where(positive, s2 / torch.where(positive, s1, torch.ones_like(s1)), torch.zeros_like(s1))

    def _stochastic_train(self, x: torch.Tensor) -> torch.Tensor:
        """Sample one position per window with probability value/sum (Caffe's cumulative-sum rule: the
        first position whose running sum reaches u * sum, u ~ U[0, 1)); output its value."""
        num, channels = x.shape[0], x.shape[1]
        k = self.kernel[0] * self.kernel[1]
        cols = F.unfold(self._padded(x), self.kernel, stride=self.stride)
        cols = cols.view(num, channels, k, cols.shape[-1])
        running = cols.detach().cumsum(2)
        u = torch.rand((num, channels, 1, cols.shape[-1]), dtype=x.dtype, device=x.device)
        reached = (running >= u * running[:, :, -1:, :]).to(torch.int32)
        pick = reached.argmax(dim=2, keepdim=True)
        return cols.gather(2, pick).view(num, channels, *self.out)


@register("Pooling")
class PoolingLayer(Layer):
    """2-D MAX / AVE / STOCHASTIC pooling on (N, C, H, W); MAX may write the argmax (h*W + w) to a second top."""

    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def check_blob_counts(self, num_bottom: int, num_top: int) -> None:
        super().check_blob_counts(num_bottom, num_top)
        method = self.layer_param.pooling_param.pool
        if num_top > 1 and method != MAX:
            raise self.error(
                f"only MAX pooling can have a second top (the argmax mask); pool is {_POOL_NAMES.get(method, method)}"
            )
        self._want_mask = num_top > 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.pooling_param
        has = p.HasField
        self.is_global = p.global_pooling
        if self.is_global:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.error(
                    "with global_pooling: true the kernel size (kernel_size/kernel_h/kernel_w) cannot be set"
                )
            self.kernel: tuple[int, int] | None = None
        else:
            if has("kernel_size") and (has("kernel_h") or has("kernel_w")):
                raise self.error("filter size is kernel_size OR kernel_h and kernel_w; not both")
            if not has("kernel_size") and not (has("kernel_h") and has("kernel_w")):
                raise self.error("kernel_size must be specified (or both kernel_h and kernel_w for non-square filters)")
            self.kernel = (p.kernel_size,) * 2 if has("kernel_size") else (p.kernel_h, p.kernel_w)
        if has("pad_h") != has("pad_w") or (has("pad") and has("pad_h")):
            raise self.error("pad is pad OR pad_h and pad_w (both) are required")
        if has("stride_h") != has("stride_w") or (has("stride") and has("stride_h")):
            raise self.error("stride is stride OR stride_h and stride_w (both) are required")
        self.pad = (p.pad_h, p.pad_w) if has("pad_h") else (p.pad, p.pad)
        self.stride = (p.stride_h, p.stride_w) if has("stride_h") else (p.stride, p.stride)
        if self.is_global and (any(self.pad) or self.stride != (1, 1)):
            raise self.error(
                f"with global_pooling: true only pad = 0 and stride = 1 are allowed (pad {list(self.pad)}, "
                f"stride {list(self.stride)})"
            )
        if p.round_mode not in (pb.PoolingParameter.CEIL, pb.PoolingParameter.FLOOR):
            raise self.error(f"unknown round_mode {p.round_mode}")
        self.ceil = pool_ceil_mode(self, p)
        if self.kernel is not None:
            check_pool_config(self, p.pool, self.kernel, self.stride, self.pad)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        shape = bottom[0]
        if len(shape) != 4:
            raise self.shape_error(
                f"input must have 4 axes, corresponding to (num, channels, height, width); got shape {list(shape)}"
            )
        hw = (shape[2], shape[3])
        p = self.layer_param.pooling_param
        self.plan = PoolPlan(
            self,
            p.pool,
            hw if self.kernel is None else self.kernel,
            self.stride,
            self.pad,
            self.ceil,
            hw,
            is_global=self.is_global,
        )
        top = (shape[0], shape[1], *self.plan.out)
        return [top] * (2 if self._want_mask else 1)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        y, mask = self.plan(bottom[0], self.phase == TRAIN, self._want_mask)
        return [y] if mask is None else [y, mask]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """For ONNX, the plan's explicit form (:meth:`PoolPlan.onnx_forward`) unless a mask top is written;
        any batch size."""
        return self.plan.onnx_forward() if onnx and not self._want_mask else None


@register("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling: level i pools into 2^i x 2^i bins; levels flattened and concatenated."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.spp_param
        self.height = int(p.pyramid_height)
        if self.height < 1:
            raise self.error(f"spp_param.pyramid_height must be >= 1, got {self.height}")
        if p.pool not in _POOL_NAMES:
            raise self.error(f"unknown spp_param.pool {p.pool}")

    @staticmethod
    def level_geometry(level: int, hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(kernel, pad) of pyramid level ``level`` (stride = kernel), as Caffe's SPP computes them."""
        bins = 2**level
        kernel = tuple(_ceil_div(n, bins) for n in hw)
        pad = tuple((k * bins - n + 1) // 2 for k, n in zip(kernel, hw))
        return kernel, pad  # type: ignore[return-value]

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        shape = bottom[0]
        if len(shape) != 4:
            raise self.shape_error(
                f"input must have 4 axes, corresponding to (num, channels, height, width); got shape {list(shape)}"
            )
        hw = (shape[2], shape[3])
        if min(hw) <= 0:
            raise self.shape_error(f"input dimensions cannot be zero: bottom shape {list(shape)}")
        self.plans = []
        for level in range(self.height):
            kernel, pad = self.level_geometry(level, hw)
            where = f"pyramid level {level} ({2**level}x{2**level} bins of a {hw[0]}x{hw[1]} input): "
            self.plans.append(
                PoolPlan(self, self.layer_param.spp_param.pool, kernel, kernel, pad, True, hw, where=where)
            )
        if self.height == 1:
            return [(shape[0], shape[1], *self.plans[0].out)]
        return [(shape[0], sum(shape[1] * math.prod(plan.out) for plan in self.plans))]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        # Caffe builds the inner pooling layers from a fresh LayerParameter, whose phase is TRAIN:
        # STOCHASTIC SPP samples in both phases.
        pooled = [plan(x, train=True)[0] for plan in self.plans]
        if self.height == 1:
            return pooled
        return [torch.cat([y.reshape(y.shape[0], -1) for y in pooled], dim=1)]


# ============================================================================ Crop
@register("Crop")
class CropLayer(Layer):
    """bottom[0] cropped to bottom[1]'s shape on the axes from ``axis`` on, starting at ``offset``."""

    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.crop_param
        ndim = len(bottom[0])
        self.axis = self.check_axis(p.axis, ndim, "crop_param.axis")
        if len(p.offset) > 1 and self.axis + len(p.offset) != ndim:
            raise self.error(
                f"number of offset values specified ({len(p.offset)}) must be equal to the number of "
                f"dimensions following axis {self.axis} ({ndim - self.axis})"
            )

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        data, ref = bottom
        offsets = list(self.layer_param.crop_param.offset)
        ndim = len(data)
        if len(ref) < ndim:
            raise self.shape_error(f"reference bottom[1] shape {list(ref)} has fewer axes than bottom[0] {list(data)}")
        if self.axis >= ndim or (len(offsets) > 1 and self.axis + len(offsets) != ndim):
            raise self.shape_error(f"crop axis {self.axis} / offsets {offsets} do not fit bottom[0] shape {list(data)}")
        top, index = [], []
        for i in range(ndim):
            if i < self.axis:
                top.append(data[i])
                index.append(slice(None))
                continue
            off = offsets[0] if len(offsets) == 1 else offsets[i - self.axis] if offsets else 0
            if data[i] - off < ref[i]:
                raise self.shape_error(
                    f"the crop for dimension {i} is out-of-bounds with size {ref[i]} and offset {off} "
                    f"(bottom[0] shape {list(data)}, bottom[1] shape {list(ref)})"
                )
            top.append(ref[i])
            index.append(slice(off, off + ref[i]))
        self._index = tuple(index)
        return [tuple(top)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        # A copy, as Caffe's: the top owns its memory (writes to it must not reach bottom[0]).
        return [bottom[0][self._index].contiguous()]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size unless the crop starts at the batch axis."""
        if dynamic_batch and self.axis == 0:
            raise BatchSizeFixed("it works along the batch axis")
        return None
