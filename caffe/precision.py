"""Reduced-precision training (beyond Caffe, opt-in): ``fp32`` (default, Caffe's numerics), ``bf16``, ``fp16``.

With ``bf16`` or ``fp16`` the compiled training step runs its layers under ``torch.autocast``: matrix
products and convolutions in the reduced type, reductions, losses and the solver's update in float32
(the learnable blobs, their diffs and the solver's history stay float32, so snapshots are ordinary
Caffe files). ``fp16``'s narrow range needs loss scaling (:class:`LossScaler`): the loss is multiplied
before the backward, the diffs divided after it, and an iteration whose diffs overflowed is skipped
(the scale halves); the scale grows again after a run of good iterations. Choose with ``caffe train
--precision``, ``caffe.get_solver(..., precision=...)`` or ``CAFFE_PRECISION``.
"""

from __future__ import annotations

import math

import torch

from caffe.util.choice import Choice

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


PRECISION = Choice("training precision", PRECISIONS, "CAFFE_PRECISION", "fp32")


def check_precision(name: str) -> str:
    return PRECISION.check(name)


def set_precision(name: str) -> None:
    """Choose the training precision of solvers built from now on: 'fp32' (default), 'bf16', 'fp16'."""
    PRECISION.set(name)


def precision() -> str:
    return PRECISION.value


def autocast_dtype(name: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` computes in for precision ``name`` (None: float32 throughout)."""
    return _DTYPES.get(check_precision(name))


class LossScaler:
    """Dynamic loss scale for fp16 training: halves on an overflow, doubles after ``growth_interval``
    iterations without one."""

    def __init__(self, scale: float = 2.0**16, growth_interval: int = 2000) -> None:
        self.scale = float(scale)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0

    def state(self) -> tuple[float, int]:
        """(scale, good iterations since the last change): what a snapshot keeps for an exact resume."""
        return self.scale, self.good_steps

    def load_state(self, scale: float, good_steps: int) -> None:
        if not (math.isfinite(scale) and scale > 0 and good_steps >= 0):
            raise ValueError(f"not a loss scale: {scale}, {good_steps} good iterations")
        self.scale, self.good_steps = float(scale), int(good_steps)

    def diffs_finite(self, diffs: list[torch.Tensor]) -> bool:
        """Whether every value of ``diffs`` is finite; moves the scale accordingly."""
        finite = bool(torch.stack([d.isfinite().all() for d in diffs]).all()) if diffs else True
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= 2.0
                self.good_steps = 0
        else:
            self.scale /= 2.0
            self.good_steps = 0
        return finite
