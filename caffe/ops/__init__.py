"""Numerical kernels the layers call where PyTorch's own is slow for Caffe's shapes (maths only: no
configuration, no blobs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def capturing() -> bool:
    """Traced (ONNX/TorchScript export) or compiled: plain ATen operators, which exporters and inductor know,
    instead of a kernel's eager tricks (in-place views, custom autograd Functions, value checks)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def compiled_cpu_training(x: torch.Tensor) -> bool:
    """Whether ``x`` (4-D) is inside a ``torch.compile`` capture on the CPU with a gradient to take (not a
    TorchScript/ONNX trace: exporters get plain ATen operators). There, kernels inductor generates slowly
    (MAX pooling, LRN) run as operators of their own that call the eager kernels."""
    return (
        torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.requires_grad
        and torch.is_grad_enabled()
    )


def opaque_operator(name: str, fn: Callable[..., Any], flexible_layout: bool = True) -> Any:
    """``fn`` as the operator ``caffe::<name>``, which inductor calls as it is instead of generating kernels of
    its own, taking its inputs in whatever layout they come (``flexible_layout``; else in the layout they were
    traced with); ``fn`` also gives the shapes and strides while tracing, so it may only allocate and compute
    (no value checks)."""
    tags = (torch.Tag.flexible_layout,) if flexible_layout else ()
    op = torch.library.custom_op(f"caffe::{name}", fn, mutates_args=(), tags=tags)
    op.register_fake(fn)
    return op
