"""Process-wide state, as Caffe's ``Caffe`` singleton: the compute mode, the GPU id, the RNG seed and the
precision new nets compute in."""

from __future__ import annotations

import ctypes
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

from caffe.errors import DeviceError

TRAIN = 0
TEST = 1


@dataclass
class _State:
    mode: str = "CPU"
    device_id: int = 0
    seed: int | None = None
    dtype: torch.dtype = torch.float32


_state = _State()

_DTYPES = {"float": torch.float32, "float32": torch.float32, "double": torch.float64, "float64": torch.float64}


def cuda_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def set_mode_cpu() -> None:
    """Run nets on the CPU (the default)."""
    _state.mode = "CPU"


def set_mode_gpu() -> None:
    """Run nets on the current GPU (see :func:`set_device`); a clear error when there is no CUDA device."""
    if not cuda_available():
        raise DeviceError(
            "set_mode_gpu: no CUDA device is available on this machine "
            "(torch.cuda.is_available() is False); use caffe.set_mode_cpu()"
        )
    _state.mode = "GPU"
    _float32_like_caffe()


def _float32_like_caffe() -> None:
    """Convolutions in true float32 on the GPU, as Caffe's cuDNN and the CPU compute them: PyTorch lets cuDNN
    use TF32 (10-bit mantissa, ~1e-3 relative) by default. ``CAFFE_ALLOW_TF32=1`` keeps PyTorch's default."""
    if os.environ.get("CAFFE_ALLOW_TF32", "0") != "1":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def set_device(device_id: int) -> None:
    """Choose the GPU used in GPU mode."""
    device_id = int(device_id)
    if cuda_available() and not 0 <= device_id < torch.cuda.device_count():
        raise DeviceError(
            f"set_device: GPU {device_id} does not exist (this machine has {torch.cuda.device_count()} CUDA device(s))"
        )
    _state.device_id = device_id
    if cuda_available():
        torch.cuda.set_device(device_id)  # as cudaSetDevice: this process's collectives and new tensors go there


def mode() -> str:
    return _state.mode


def device() -> torch.device:
    """The torch device that new work runs on under the current mode."""
    if _state.mode == "GPU":
        return torch.device("cuda", _state.device_id)
    return torch.device("cpu")


def set_random_seed(seed: int) -> None:
    """Seed every random source used by fillers, dropout, data shuffling and sampling."""
    seed = int(seed)
    _state.seed = seed
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


def random_seed() -> int | None:
    return _state.seed


def set_dtype(dtype: str | torch.dtype) -> None:
    """The precision of the nets built from now on: ``"float"`` (Caffe's, the default) or ``"double"``
    (Caffe's ``Dtype=double`` instantiation: for gradient checks and exact comparisons). Snapshots of double
    nets hold ``double_data``, as Caffe's double blobs write them."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        _state.dtype = dtype
        return
    if not isinstance(dtype, str) or dtype.lower() not in _DTYPES:
        raise ValueError(f"dtype must be 'float' or 'double', got {dtype!r}")
    _state.dtype = _DTYPES[dtype.lower()]


def dtype() -> torch.dtype:
    """The precision new nets compute in (``torch.float32`` unless :func:`set_dtype` chose double)."""
    return _state.dtype


_allocator_tuned = False


def tune_allocator() -> bool:
    """Keep large freed blocks in the process instead of unmapping them (glibc only; once).

    glibc serves allocations above its mmap threshold (at most 32 MB by default) with fresh pages
    and unmaps them on free, so every forward pass of a large batch page-faults its activations
    anew; measured on SqueezeNet at batch 32 that is a third of the time. Raising the threshold
    and the trim threshold keeps that memory mapped (the process keeps its peak footprint).
    Set ``CAFFE_MALLOC_TUNING=0`` to leave the allocator alone.
    """
    global _allocator_tuned
    if _allocator_tuned or os.environ.get("CAFFE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    _allocator_tuned = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        return libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
    except (OSError, AttributeError):  # not glibc
        return False
