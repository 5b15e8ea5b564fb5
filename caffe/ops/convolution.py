"""2-D convolution whose weight gradient may run as a forward convolution over the batch axis.

The weight gradient of ``y = conv2d(x, w)`` is a correlation of the input with the top's gradient,
summed over the batch: ``dw[o, c] = sum_n x[n, c] (*) dy[n, o]``. Read with batch and channels swapped,
that is itself a forward convolution: the input ``x`` as (C, N, H, W), the "filters" ``dy`` as
(O, N, out_h, out_w) dilated by the stride, the output (C, O, kh, kw). Caffe computes it with im2col and a
GEMM; ATen's CPU backward (oneDNN) has a dedicated kernel, which for some shapes is several times slower
than its own forward convolution: LeNet's two layers at batch 64 (1 and 20 input channels, small images)
took 2.7x and 1.5x as long; for others (1x1 kernels, large images) the forward form is the slower one.

No rule of thumb picks well across shapes (a 1-channel 28x28 input: 2.7x faster; a 1-channel 64x64
one with a 3x3 kernel: 3x slower), so ``auto`` times both kernels once per shape on this machine (after a
warm-up call each, up to 5 calls each, fewer for large shapes or a clear winner) and keeps the answer
beside inductor's cache: every later process on the machine
(a resumed run, a test's second run) makes the same choice, and so computes the same numbers.
``CAFFE_CONV_WEIGHT_GRAD`` (``auto``, ``aten`` or ``swapped``) overrides it. ``docs/benchmarks.md``
has the measurements.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from caffe.ops import opaque_operator
from caffe.util import machine
from caffe.util.choice import Choice
from caffe.util.inductor import inductor_cache_dir

log = logging.getLogger(__name__)

Pair = tuple[int, int]

WEIGHT_GRAD = Choice(
    "convolution weight-gradient kernel", ("auto", "aten", "swapped"), "CAFFE_CONV_WEIGHT_GRAD", "auto"
)
SPEEDUP_NEEDED = 1.15  # the forward form is chosen only when measured clearly faster (timing noise)
MAX_PROBE_MS = 100.0  # a round of both kernels taking longer settles it (large shapes: one timed call each)
ROUNDS = 5  # timed calls of each kernel at most; the fastest counts
CLEAR_MARGIN = 1.3  # a round in which one kernel took this much longer than the other settles it
PROBE_VERSION = 2  # part of a record's name: a changed probe measures again

ShapeKey = tuple[tuple[int, ...], tuple[int, ...], Pair, Pair, Pair]  # input, weight, stride, pad, dilation
_chosen: dict[ShapeKey, str] = {}  # this process's choices


class _SwappedWeightGrad(torch.autograd.Function):
    """``F.conv2d`` (groups 1) whose backward computes the weight gradient as a forward convolution."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Pair, pad: Pair, dil: Pair
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, pad, dil)
        return F.conv2d(x, weight, bias, stride, pad, dil)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, pad, dil = ctx.geometry
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _aten_backward(dy, x, weight, stride, pad, dil, input_grad=True)
        if ctx.needs_input_grad[1]:
            grad = swapped_weight_grad if torch.compiler.is_compiling() else _weight_grad_as_forward
            dw = grad(x, dy, list(weight.shape[2:]), list(stride), list(pad), list(dil))
        if ctx.needs_input_grad[2]:  # False when there is no bias
            db = dy.sum((0, 2, 3))
        return dx, dw, db, None, None, None


def _weight_grad_as_forward(
    x: torch.Tensor, dy: torch.Tensor, kernel: list[int], stride: list[int], pad: list[int], dil: list[int]
) -> torch.Tensor:
    """The gradient of ``conv2d(x, w, stride, pad, dil)``'s weight (O, C, *kernel) given the top's ``dy``,
    as one forward convolution of ``x`` read as (C, N, H, W) with ``dy`` read as (O, N, out_h, out_w)."""
    z = F.conv2d(x.transpose(0, 1), dy.transpose(0, 1), None, dil, pad, stride)  # (C, O, >= kh, >= kw)
    return z[:, :, : kernel[0], : kernel[1]].transpose(0, 1).contiguous()


# The same as an operator of its own, for compiled code: inductor calls it as it is instead of re-laying out
# its convolution's operands (channels-last copies of the transposed tensors ran slower than the transposed
# views; its inputs keep their traced layout: a flexible one measured no faster). Eager code calls the function
# itself: a custom operator's first call imports dynamo (1.8 s).
swapped_weight_grad = opaque_operator("swapped_weight_grad", _weight_grad_as_forward, flexible_layout=False)


def aten_weight_grad(
    x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, stride: Pair, pad: Pair, dil: Pair
) -> torch.Tensor:
    """ATen's own weight gradient of the same convolution (oneDNN's backward-weights kernel on the CPU)."""
    return _aten_backward(dy, x, weight, stride, pad, dil, input_grad=False)


def _aten_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Pair, pad: Pair, dil: Pair, input_grad: bool
) -> torch.Tensor:
    """ATen's backward of ``conv2d(x, weight, stride, pad, dil)`` for one gradient: the input's or the weight's."""
    mask = [input_grad, not input_grad, False]
    grads = torch.ops.aten.convolution_backward(dy, x, weight, None, stride, pad, dil, False, [0, 0], 1, mask)
    return grads[0] if input_grad else grads[1]


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d``, the same values and gradients to float rounding; on the CPU its weight gradient runs
    by whichever kernel :func:`weight_grad_kernel` found faster for this shape."""
    if groups == 1 and _candidate(x, weight):
        key = (tuple(x.shape), tuple(weight.shape), tuple(stride), tuple(padding), tuple(dilation))
        if weight_grad_kernel(key) == "swapped":
            return _SwappedWeightGrad.apply(x, weight, bias, stride, padding, dilation)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _candidate(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A float32 CPU convolution whose weight gradient will be taken, outside exports and autocast,
    with a kernel larger than 1x1 (for 1x1 kernels the forward form was 3-10x slower in every net timed)."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.requires_grad
        and torch.is_grad_enabled()
        and tuple(weight.shape[2:]) != (1, 1)
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
    )


def weight_grad_kernel(key: ShapeKey) -> str:
    """``aten`` or ``swapped`` for the convolution ``key`` (input and weight shapes, stride, pad, dilation):
    the setting, or (``auto``) this machine's recorded choice, measured now if there is none. Under
    ``torch.compile`` this runs once, while tracing, and its answer is part of the compiled code."""
    if WEIGHT_GRAD.value != "auto":
        return WEIGHT_GRAD.value
    found = _chosen.get(key)
    if found is None:
        identity = _machine_key(key)
        found = _read_choice(identity) or _store_choice(identity, _measure(*key))
        _chosen[key] = found
    return found


# What torch.compiler.assume_constant_result(weight_grad_kernel) does, without importing dynamo (1.5 s)
# into every `import caffe`: dynamo then calls the function while tracing instead of tracing it.
weight_grad_kernel._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _machine_key(key: ShapeKey) -> str:
    """The file name of ``key``'s choice: the shape with this probe, torch, CPU and thread count."""
    identity = [PROBE_VERSION, torch.__version__, platform.machine(), machine.cpu_model(), torch.get_num_threads()]
    identity += [list(part) for part in key]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def _choices_dir() -> Path:
    return inductor_cache_dir() / "neocaffe" / "conv-weight-grad"


def _read_choice(key: str) -> str | None:
    try:
        value = (_choices_dir() / key).read_text().strip()
    except OSError:
        return None
    return value if value in ("aten", "swapped") else None


def _store_choice(key: str, value: str) -> str:
    """Record ``value`` unless another process recorded this shape first; returns the recorded choice."""
    folder = _choices_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(value)
        try:
            os.link(tmp, folder / key)  # atomic, and never replaces an earlier answer
        except FileExistsError:
            value = _read_choice(key) or value
        finally:
            os.unlink(tmp)
    except OSError as exc:  # a read-only or full disk: this process keeps its own answer
        log.debug("Could not record the convolution kernel choice: %s", exc)
    return value


def _measure(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Pair, pad: Pair, dil: Pair) -> str:
    """Time both weight-gradient kernels on random data of these shapes (no autograd, no side effects)."""
    with torch.no_grad():
        numbers = torch.Generator().manual_seed(0)  # not torch's global generator: seeded runs stay seeded
        x = torch.randn(x_shape, generator=numbers)
        w = torch.randn(w_shape, generator=numbers)
        dy = torch.randn(F.conv2d(x, w, None, stride, pad, dil).shape, generator=numbers)
        kernels = {
            "aten": lambda: aten_weight_grad(x, dy, w, stride, pad, dil),
            "swapped": lambda: _weight_grad_as_forward(x, dy, list(w_shape[2:]), list(stride), list(pad), list(dil)),
        }
        for run in kernels.values():  # warm-up: oneDNN builds its primitives on a shape's first call
            run()
        best = {name: float("inf") for name in kernels}
        for _ in range(ROUNDS):
            spent = 0.0
            for name, run in kernels.items():
                start = time.perf_counter()
                run()
                took = (time.perf_counter() - start) * 1e3
                best[name], spent = min(best[name], took), spent + took
            if spent > MAX_PROBE_MS or max(best.values()) > CLEAR_MARGIN * min(best.values()):
                break
    choice = "swapped" if best["swapped"] * SPEEDUP_NEEDED < best["aten"] else "aten"
    log.info(  # once per shape and machine: the first run's pause explained
        "Timed the convolution weight gradient for input %s, weight %s: ATen's kernel %.2f ms, as a forward "
        "convolution %.2f ms; using %s (recorded for this machine)",
        list(x_shape),
        list(w_shape),
        best["aten"],
        best["swapped"],
        "the forward convolution" if choice == "swapped" else "ATen's",
    )
    return choice
