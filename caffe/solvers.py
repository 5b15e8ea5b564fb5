"""The six update rules of Caffe, with its exact equations (learning rate inside the history).

In each, ``g`` is the parameter's diff after normalization and regularization and ``r`` the local
rate (``lr * lr_mult``); the rule leaves the step to subtract in the diff, and the solver then does
``w -= diff``. History blobs are kept in Caffe's order (AdaDelta and Adam: all first-moment blobs,
then all second ones), so ``.solverstate`` files interchange with Caffe's.
"""

from __future__ import annotations

import math

import torch

from caffe.blob import Blob
from caffe.errors import SolverError
from caffe.solver import Solver, register_solver


@register_solver("SGD")
class SGDSolver(Solver):
    """``h = momentum * h + r * g; diff = h``."""

    @property
    def lr(self) -> float:
        """The learning rate of the current iteration (pycaffe master's ``SGDSolver.lr``)."""
        return self.learning_rate()

    def compute_update_value(self, i: int, blob: Blob, rate: float) -> None:
        h = self.history[i].mutable_tensor
        h.mul_(self.param.momentum).add_(blob.grad, alpha=self.local_rate(i, rate))
        blob.mutable_grad.copy_(h)


@register_solver("Nesterov")
class NesterovSolver(Solver):
    """``h' = momentum * h + r * g; diff = (1 + momentum) * h' - momentum * h``."""

    def compute_update_value(self, i: int, blob: Blob, rate: float) -> None:
        momentum = self.param.momentum
        h = self.history[i].mutable_tensor
        previous = h.clone()
        h.mul_(momentum).add_(blob.grad, alpha=self.local_rate(i, rate))
        blob.mutable_grad.copy_(h).mul_(1.0 + momentum).sub_(previous, alpha=momentum)


class _NoMomentum(Solver):
    """AdaGrad and RMSProp: Caffe refuses a momentum."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if self.param.momentum != 0:
            raise SolverError(f"{self.source}: momentum cannot be used with {self.type_name}")


@register_solver("AdaGrad")
class AdaGradSolver(_NoMomentum):
    """``h += g^2; diff = r * g / (sqrt(h) + delta)``."""

    def compute_update_value(self, i: int, blob: Blob, rate: float) -> None:
        g = blob.mutable_grad
        h = self.history[i].mutable_tensor
        h.add_(g * g)
        g.div_(h.sqrt().add_(self.param.delta)).mul_(self.local_rate(i, rate))


@register_solver("RMSProp")
class RMSPropSolver(_NoMomentum):
    """``h = rms_decay * h + (1 - rms_decay) * g^2; diff = r * g / (sqrt(h) + delta)``."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if not 0 <= self.param.rms_decay < 1:
            raise SolverError(f"{self.source}: rms_decay should lie in [0, 1), got {self.param.rms_decay:g}")

    def compute_update_value(self, i: int, blob: Blob, rate: float) -> None:
        decay = self.param.rms_decay
        g = blob.mutable_grad
        h = self.history[i].mutable_tensor
        h.mul_(decay).add_(g * g, alpha=1.0 - decay)
        g.div_(h.sqrt().add_(self.param.delta)).mul_(self.local_rate(i, rate))


@register_solver("AdaDelta")
class AdaDeltaSolver(Solver):
    """``h1 = m h1 + (1-m) g^2; u = g sqrt((h2 + delta) / (h1 + delta)); h2 = m h2 + (1-m) u^2; diff = r u``."""

    history_per_param = 2

    def compute_update_value(self, i: int, blob: Blob, rate: float) -> None:
        m, delta = self.param.momentum, self.param.delta
        n = len(self.net.learnable_params)
        g = blob.mutable_grad
        h1, h2 = self.history[i].mutable_tensor, self.history[n + i].mutable_tensor
        h1.mul_(m).add_(g * g, alpha=1.0 - m)
        g.mul_(((h2 + delta) / (h1 + delta)).sqrt_())
        h2.mul_(m).add_(g * g, alpha=1.0 - m)
        g.mul_(self.local_rate(i, rate))


@register_solver("Adam")
class AdamSolver(Solver):
    """``m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; diff = r sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps)``."""

    history_per_param = 2

    def compute_update_value(self, i: int, blob: Blob, rate: float) -> None:
        b1, b2 = self.param.momentum, self.param.momentum2
        n = len(self.net.learnable_params)
        t = self.iter + 1
        correction = math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        g = blob.mutable_grad
        m, v = self.history[i].mutable_tensor, self.history[n + i].mutable_tensor
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        v.mul_(b2).add_(g * g, alpha=1.0 - b2)
        torch.div(m, v.sqrt().add_(self.param.delta), out=g)
        g.mul_(self.local_rate(i, rate) * correction)
