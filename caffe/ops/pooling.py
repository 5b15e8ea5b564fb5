"""MAX pooling over strided views: each output is the maximum of its window, taken separably (the column
offsets, then the row offsets) as strided slices reduced with ``torch.maximum`` (vectorized over the whole
output).

On the CPU ATen's NCHW ``max_pool2d`` walks each window in a scalar loop; this is 3-6x faster for
Caffe's usual 2x2 and 3x3 windows (measured in ``benchmarks/train.py``'s notes). The gradient follows
Caffe's rule: each window's diff goes to its *first* maximum in scan order (row, then column).

Overlapping windows that need a gradient (AlexNet's and GoogLeNet's 3x3/2, GoogLeNet's 3x3/1) run ATen's
kernel on a channels-last copy instead (:func:`max_pool2d_with_indices`), where it is vectorized over the
channels: 2.5-4x faster with the copies included (GoogLeNet's pool1, batch 10: 31.6 -> 8.3 ms; a 3x3/1
pool of 480 channels at 28x28: 49.8 -> 19 ms); its backward is ATen's NCHW scatter by the same indices.

Under ``torch.compile`` on the CPU, MAX pooling that needs a gradient is ATen's kernel too, as an operator
of its own (:func:`captured_max_pool2d`): inductor's generated forward-with-indices and backward ran
1.2-3.6x slower than ATen's channels-last kernels on LeNet's, CaffeNet's, ResNet-50's and GoogLeNet's pools
(``benchmarks/compiled_ops.py``); whole compiled steps 1.02-1.12x faster (``docs/benchmarks.md``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from caffe.ops import capturing, compiled_cpu_training, opaque_operator

MAX_WINDOW = 64  # larger windows (global pooling) keep ATen's kernel


def _offsets(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], out: tuple[int, int]
) -> Iterator[torch.Tensor]:
    """The k*k strided views of ``x`` (…, H, W), one per window offset, in scan order."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
    for di in range(kh):
        for dj in range(kw):
            yield x[..., di : di + sh * (oh - 1) + 1 : sh, dj : dj + sw * (ow - 1) + 1 : sw]


def _maximum(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """The windows' maxima, separably: over the ``kw`` column offsets into (…, H, out_w), then over the ``kh``
    row offsets of that (kh + kw passes, not kh * kw over the input: 2.5-3.4x faster on 3x3 windows of large
    inputs, which are memory-bound, e.g. 36 -> 11 ms for SqueezeNet's pool1 at batch 10)."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
    if kh * kw <= kh + kw:  # 2x2 (LeNet's) or thinner: the offsets directly, one copy fewer
        views = _offsets(x, kernel, stride, out)
        y = next(views).clone()
        for view in views:
            torch.maximum(y, view, out=y)
        return y
    last_col, last_row = sw * (ow - 1) + 1, sh * (oh - 1) + 1
    columns = x[..., :, 0:last_col:sw].clone()
    for dj in range(1, kw):
        torch.maximum(columns, x[..., :, dj : dj + last_col : sw], out=columns)
    y = columns[..., 0:last_row:sh, :].clone()
    for di in range(1, kh):
        torch.maximum(y, columns[..., di : di + last_row : sh, :], out=y)
    return y


class _TilingMaxPool(torch.autograd.Function):
    """Non-overlapping windows (stride == kernel): every input position lies in at most one window."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        y = _maximum(x, kernel, kernel, out)
        ctx.save_for_backward(x, y)
        ctx.kernel = kernel
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        x, y = ctx.saved_tensors
        kernel = ctx.kernel
        out = tuple(y.shape[-2:])
        covered = all(n == o * k for n, o, k in zip(x.shape[-2:], out, kernel, strict=True))
        dx = torch.empty_like(x) if covered else torch.zeros_like(x)
        free = torch.ones(y.shape, dtype=torch.bool, device=y.device)  # windows whose maximum is not yet taken
        for view, target in zip(_offsets(x, kernel, kernel, out), _offsets(dx, kernel, kernel, out), strict=True):
            first = view == y
            first &= free
            free ^= first
            torch.mul(dy, first, out=target)
        return dx, None, None


class _ChannelsLastMaxPool(torch.autograd.Function):
    """ATen's MAX pooling of an NCHW input through a channels-last copy; top and indices in NCHW."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int], ceil: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y, indices = torch.nn.functional.max_pool2d(
            x.contiguous(memory_format=torch.channels_last), kernel, stride, pad, ceil_mode=ceil, return_indices=True
        )
        indices = indices.contiguous()
        ctx.save_for_backward(x, indices)  # x: the bottom, alive anyway (ATen's own pooling keeps it too)
        ctx.geometry = (kernel, stride, pad, ceil)
        ctx.mark_non_differentiable(indices)
        return y.contiguous(), indices

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, indices = ctx.saved_tensors
        kernel, stride, pad, ceil = ctx.geometry
        dx = torch.ops.aten.max_pool2d_with_indices_backward(
            dy.contiguous(), x, list(kernel), list(stride), list(pad), [1, 1], ceil, indices
        )
        return dx, None, None, None, None


def _aten_max_pool2d(
    x: torch.Tensor, kernel: list[int], stride: list[int], pad: list[int], ceil: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """ATen's MAX pooling with indices of a 4-D ``x``, on a channels-last copy unless it is one (where ATen's
    CPU kernel is vectorized over the channels): the top and indices in that layout. Also the operator's fake
    (shapes and strides while tracing): ATen's meta kernels compute the same layout."""
    x = x.contiguous(memory_format=torch.channels_last)
    return torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, pad, [1, 1], ceil)


def _aten_max_pool2d_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    indices: torch.Tensor,
    kernel: list[int],
    stride: list[int],
    pad: list[int],
    ceil: bool,
) -> torch.Tensor:
    """The gradient of :func:`_aten_max_pool2d`: each window's diff added at its first maximum (ATen's
    scatter, in ``x``'s layout)."""
    return torch.ops.aten.max_pool2d_with_indices_backward(dy, x, kernel, stride, pad, [1, 1], ceil, indices)


# Operators of their own, so that inductor calls ATen's kernels instead of generating its slower ones.
captured_max_pool2d = opaque_operator("max_pool2d", _aten_max_pool2d)
captured_max_pool2d_backward = opaque_operator("max_pool2d_backward", _aten_max_pool2d_backward)


def _keep_for_backward(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, kernel, stride, pad, ceil = inputs
    ctx.save_for_backward(x, output[1])
    ctx.geometry = (kernel, stride, pad, ceil)
    ctx.mark_non_differentiable(output[1])


def _captured_backward(ctx: Any, dy: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, indices = ctx.saved_tensors
    return captured_max_pool2d_backward(dy, x, indices, *ctx.geometry), None, None, None, None


captured_max_pool2d.register_autograd(_captured_backward, setup_context=_keep_for_backward)


def max_pool2d_with_indices(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int] = (0, 0), ceil: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil, return_indices=True)``, the same values, indices
    (each window's first maximum in scan order) and gradient, for an NCHW CPU ``x``: computed on a channels-last
    copy, where ATen's kernel is vectorized over the channels (:func:`captured_max_pool2d` when compiled
    for training; ATen's own call when traced, or compiled without a gradient)."""
    if compiled_cpu_training(x):
        return captured_max_pool2d(x, list(kernel), list(stride), list(pad), ceil)
    if x.dim() != 4 or aten_pools_faster(x) or capturing():
        return torch.nn.functional.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil, return_indices=True)
    return _ChannelsLastMaxPool.apply(x, kernel, stride, pad, ceil)


def aten_pools_faster(x: torch.Tensor) -> bool:
    """Whether ATen's kernel is the faster one for ``x``: off the CPU, and for channels-last (or other
    non-NCHW) layouts, where ATen's CPU kernel is vectorized over channels (0.20 vs 0.23 ms on a
    64x112x112 channels-last input; NCHW: 3.8 vs 1.0 ms)."""
    return x.device.type != "cpu" or not x.is_contiguous()


def max_pool2d(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """MAX pooling of (N, C, H, W) ``x`` (already padded) into ``out`` = (out_h, out_w) windows without
    padding, floor rounding: ATen's ``max_pool2d(x, kernel, stride)``, faster on the CPU (ATen's itself
    when traced or compiled). Its gradient when ``x`` needs one is Caffe's (to the first maximum): by
    the tiling kernel for stride == kernel, by :func:`max_pool2d_with_indices` otherwise (and when compiled)."""
    if compiled_cpu_training(x) and min(out) > 0:
        return max_pool2d_with_indices(x, kernel, stride)[0]
    if aten_pools_faster(x) or kernel[0] * kernel[1] > MAX_WINDOW or min(out) <= 0 or capturing():
        return torch.nn.functional.max_pool2d(x, kernel, stride)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return _maximum(x, kernel, stride, out)
    if kernel == stride:
        return _TilingMaxPool.apply(x, kernel, out)
    return max_pool2d_with_indices(x, kernel, stride)[0]
