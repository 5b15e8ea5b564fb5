"""The seven weight fillers of Caffe (``FillerParameter.type``), with ``variance_norm``.

Fills happen on the CPU with torch's global generator, so ``caffe.set_random_seed`` makes them
repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from caffe.errors import LayerError
from caffe.proto import caffe_pb2 as pb

Filler = Callable[[pb.FillerParameter, tuple[int, ...], torch.dtype], torch.Tensor]
_FILLERS: dict[str, Filler] = {}


def _filler(name: str) -> Callable[[Filler], Filler]:
    def register(fn: Filler) -> Filler:
        _FILLERS[name] = fn
        return fn

    return register


def _no_sparse(p: pb.FillerParameter) -> None:
    if p.sparse != -1:
        raise LayerError(f"filler '{p.type}' does not support sparse (sparse: {p.sparse})")


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    count = math.prod(shape)
    fan_in = count / (shape[0] if shape else 1)
    fan_out = count / shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_n(p: pb.FillerParameter, shape: tuple[int, ...]) -> float:
    fan_in, fan_out = _fans(shape)
    if p.variance_norm == pb.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if p.variance_norm == pb.FillerParameter.FAN_OUT:
        return fan_out
    return fan_in


@_filler("constant")
def constant(p: pb.FillerParameter, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    _no_sparse(p)
    return torch.full(shape, p.value, dtype=dtype)


@_filler("uniform")
def uniform(p: pb.FillerParameter, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    _no_sparse(p)
    return torch.empty(shape, dtype=dtype).uniform_(p.min, p.max)


@_filler("gaussian")
def gaussian(p: pb.FillerParameter, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype).normal_(p.mean, p.std)
    if p.sparse < -1:
        raise LayerError(f"gaussian filler: sparse must be >= -1, got {p.sparse}")
    if p.sparse >= 0:
        keep = min(1.0, p.sparse / (shape[0] if shape else 1))
        out *= torch.bernoulli(torch.full(shape, keep, dtype=dtype))
    return out


@_filler("positive_unitball")
def positive_unitball(p: pb.FillerParameter, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    _no_sparse(p)
    out = torch.rand(shape, dtype=dtype)
    rows = out.reshape(shape[0] if shape else 1, -1)
    rows /= rows.sum(dim=1, keepdim=True)
    return out


@_filler("xavier")
def xavier(p: pb.FillerParameter, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    _no_sparse(p)
    scale = math.sqrt(3.0 / _variance_n(p, shape))
    return torch.empty(shape, dtype=dtype).uniform_(-scale, scale)


@_filler("msra")
def msra(p: pb.FillerParameter, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    _no_sparse(p)
    std = math.sqrt(2.0 / _variance_n(p, shape))
    return torch.empty(shape, dtype=dtype).normal_(0.0, std)


@_filler("bilinear")
def bilinear(p: pb.FillerParameter, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Upsampling kernel for Deconvolution: (1 - |x/f - c|)(1 - |y/f - c|) on a square kernel."""
    _no_sparse(p)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise LayerError(f"bilinear filler needs a 4-axis blob with a square kernel, got shape {shape}")
    width = shape[3]
    f = math.ceil(width / 2.0)
    c = (width - 1) / (2.0 * f)
    ramp = 1 - torch.abs(torch.arange(width, dtype=torch.float64) / f - c)
    kernel = (ramp[:, None] * ramp[None, :]).to(dtype)
    return kernel.expand(shape).clone()


def fill(param: pb.FillerParameter, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A new CPU tensor of ``shape`` filled as ``param`` says."""
    fn = _FILLERS.get(param.type)
    if fn is None:
        raise LayerError(f"unknown filler type '{param.type}' (known: {', '.join(sorted(_FILLERS))})")
    if math.prod(shape) == 0:
        return torch.zeros(shape, dtype=dtype)
    return fn(param, tuple(shape), dtype)


def filler_types() -> list[str]:
    return sorted(_FILLERS)
