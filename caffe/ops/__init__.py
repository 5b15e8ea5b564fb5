"""Numerical kernels the layers call where PyTorch's own is slow for Caffe's shapes (maths only: no
configuration, no blobs)."""

from __future__ import annotations

import torch


def capturing() -> bool:
    """Traced (ONNX/TorchScript export) or compiled: plain ATen operators, which exporters and inductor know,
    instead of a kernel's eager tricks (in-place views, custom autograd Functions, value checks)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()
