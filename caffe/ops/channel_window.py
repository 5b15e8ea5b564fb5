"""LRN's ACROSS_CHANNELS normalization: a sum over a window of neighbouring channels, ``out[:, c] =
x[:, c - pad] + ... + x[:, c + pad]`` with zeros beyond the first and last channel.

:func:`lrn_across_channels` is the whole of LRN's ACROSS_CHANNELS normalization with Caffe's own backward
(``dx = dy * scale^-beta - 2 * alpha * beta / size * x * window_sum(dy * y / scale)``) on a few reused
buffers instead of autograd's graph of a dozen full-size temporaries: forward + backward about twice as
fast (GoogLeNet's norm2, batch 10: 61 -> 36 ms; CaffeNet's norm1, batch 32: 16.5 -> 8.4 ms). Eagerly the
window is ``2 * pad`` in-place adds of channel-shifted views into one copy (5.3 ms for that norm2 where the
banded 1x1 convolution it replaces took 37 ms); traced, or compiled without a gradient, the plain formula
with :func:`channel_window_sum` (slices of a zero-padded copy, which inductor fuses into one loop). Compiled
for training on the CPU, the same forward and backward run as operators of their own
(``caffe::lrn_across_channels``): inductor's fused loops for the formula and its gradient took 2.5-3.4x as
long as these on CaffeNet's and GoogLeNet's norms (``benchmarks/compiled_ops.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from caffe.ops import capturing, compiled_cpu_training, opaque_operator


def _shifted_sum(x: torch.Tensor, pad: int) -> torch.Tensor:
    out = x.clone()
    for d in range(1, pad + 1):
        out[:, d:] += x[:, :-d]
        out[:, :-d] += x[:, d:]
    return out


def channel_window_sum(x: torch.Tensor, pad: int) -> torch.Tensor:
    """For (N, C, ...) ``x``: each channel's sum with its ``pad`` neighbours on either side (zero padded), in
    plain ops (the traced and compiled form; eagerly :func:`lrn_across_channels` sums in place)."""
    if pad <= 0:
        return x.clone()
    channels = x.shape[1]
    padded = F.pad(x, (0, 0) * (x.dim() - 2) + (pad, pad))
    return sum(padded[:, d : d + channels] for d in range(1, 2 * pad + 1)) + padded[:, :channels]


def _lrn_forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top, the scale ``k + alpha / size * window_sum(x^2)`` and its power ``scale^-beta``."""
    scale = _shifted_sum(x * x, (size - 1) // 2).mul_(alpha / size).add_(k)
    powed = torch.pow(scale, -beta)
    return x * powed, scale, powed


def _lrn_backward(
    dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, powed: torch.Tensor, size: int, alpha: float, beta: float
) -> torch.Tensor:
    """Caffe's LRN gradient from the forward's scale and power (the top itself is not needed)."""
    ratios = (dy * x).mul_(powed).div_(scale)  # dy * top / scale
    dx = _shifted_sum(ratios, (size - 1) // 2).mul_(x).mul_(-2.0 * alpha * beta / size)
    return dx.addcmul_(dy, powed)


class _LRNAcrossChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:  # type: ignore[override]
        top, scale, powed = _lrn_forward(x, size, alpha, beta, k)
        # The top is not kept: a layer after this one may write it in place.
        ctx.save_for_backward(x, scale, powed)
        ctx.geometry = (size, alpha, beta)
        return top

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return _lrn_backward(dy, *ctx.saved_tensors, *ctx.geometry), None, None, None, None


# The same kernels as operators of their own, for compiled training.
captured_lrn = opaque_operator("lrn_across_channels", _lrn_forward)
captured_lrn_backward = opaque_operator("lrn_across_channels_backward", _lrn_backward)


def _keep_for_backward(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    x, size, alpha, beta, _ = inputs
    ctx.save_for_backward(x, output[1], output[2])
    ctx.geometry = (size, alpha, beta)
    ctx.mark_non_differentiable(output[1], output[2])


def _captured_backward(ctx: Any, dy: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    return captured_lrn_backward(dy, *ctx.saved_tensors, *ctx.geometry), None, None, None, None


captured_lrn.register_autograd(_captured_backward, setup_context=_keep_for_backward)


def lrn_across_channels(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Caffe's LRN across channels of (N, C, ...) ``x``: ``x * (k + alpha / size * window_sum(x^2))^-beta``,
    the window ``size`` channels centred on each (zero padded); Caffe's backward."""
    if compiled_cpu_training(x):
        return captured_lrn(x, size, alpha, beta, k)[0]
    if capturing():
        scale = channel_window_sum(x * x, (size - 1) // 2) * (alpha / size) + k
        return x * scale.pow(-beta)
    return _LRNAcrossChannels.apply(x, size, alpha, beta, k)
