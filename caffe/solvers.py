"""The six update rules of Caffe, with its exact equations (learning rate inside the history).

Each rule updates a *group* of parameters that share one local rate ``r = lr * lr_mult``: ``grads``
are their diffs after normalization and regularization, ``history[k]`` the k-th history blob of each;
the rule leaves the step to subtract in the diffs, and the solver then does ``w -= diff``. The rules
are written with ``torch._foreach_*`` operations over the whole group (one call per operation, not a
Python loop per blob); on the CPU these run the very kernels of the per-tensor operations, so the
numbers are those of Caffe's per-blob loop. History blobs are kept in Caffe's order (AdaDelta and
Adam: all first-moment blobs, then all second ones), so ``.solverstate`` files interchange with Caffe's.
"""

from __future__ import annotations

import math

import torch

from caffe.errors import SolverError
from caffe.solver import Solver, register_solver

Tensors = list[torch.Tensor]


def _squares(grads: Tensors) -> Tensors:
    return torch._foreach_mul(grads, grads)


def _decay_into(history: Tensors, values: Tensors, decay: float) -> None:
    """``h = decay * h + (1 - decay) * values``."""
    torch._foreach_mul_(history, decay)
    torch._foreach_add_(history, values, alpha=1.0 - decay)


def _divide_by_root(grads: Tensors, history: Tensors, delta: float) -> None:
    """``g /= sqrt(h) + delta``."""
    denominators = torch._foreach_sqrt(history)
    torch._foreach_add_(denominators, delta)
    torch._foreach_div_(grads, denominators)


@register_solver("SGD")
class SGDSolver(Solver):
    """``h = momentum * h + r * g; diff = h``."""

    @property
    def lr(self) -> float:
        """The learning rate of the current iteration (pycaffe master's ``SGDSolver.lr``)."""
        return self.learning_rate()

    def update_rule(self, grads: Tensors, history: list[Tensors], rate: float) -> None:
        (h,) = history
        torch._foreach_mul_(h, self.param.momentum)
        torch._foreach_add_(h, grads, alpha=rate)
        torch._foreach_copy_(grads, h)


@register_solver("Nesterov")
class NesterovSolver(Solver):
    """``h' = momentum * h + r * g; diff = (1 + momentum) * h' - momentum * h``."""

    def update_rule(self, grads: Tensors, history: list[Tensors], rate: float) -> None:
        momentum = self.param.momentum
        (h,) = history
        previous = [t.clone() for t in h]
        torch._foreach_mul_(h, momentum)
        torch._foreach_add_(h, grads, alpha=rate)
        torch._foreach_copy_(grads, h)
        torch._foreach_mul_(grads, 1.0 + momentum)
        torch._foreach_sub_(grads, previous, alpha=momentum)


class _NoMomentum(Solver):
    """AdaGrad and RMSProp: Caffe refuses a momentum."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if self.param.momentum != 0:
            raise SolverError(f"{self.source}: momentum cannot be used with {self.type_name}")


@register_solver("AdaGrad")
class AdaGradSolver(_NoMomentum):
    """``h += g^2; diff = r * g / (sqrt(h) + delta)``."""

    def update_rule(self, grads: Tensors, history: list[Tensors], rate: float) -> None:
        (h,) = history
        torch._foreach_add_(h, _squares(grads))
        _divide_by_root(grads, h, self.param.delta)
        torch._foreach_mul_(grads, rate)


@register_solver("RMSProp")
class RMSPropSolver(_NoMomentum):
    """``h = rms_decay * h + (1 - rms_decay) * g^2; diff = r * g / (sqrt(h) + delta)``."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if not 0 <= self.param.rms_decay < 1:
            raise SolverError(f"{self.source}: rms_decay should lie in [0, 1), got {self.param.rms_decay:g}")

    def update_rule(self, grads: Tensors, history: list[Tensors], rate: float) -> None:
        (h,) = history
        _decay_into(h, _squares(grads), self.param.rms_decay)
        _divide_by_root(grads, h, self.param.delta)
        torch._foreach_mul_(grads, rate)


@register_solver("AdaDelta")
class AdaDeltaSolver(Solver):
    """``h1 = m h1 + (1-m) g^2; u = g sqrt((h2 + delta) / (h1 + delta)); h2 = m h2 + (1-m) u^2; diff = r u``."""

    history_per_param = 2

    def update_rule(self, grads: Tensors, history: list[Tensors], rate: float) -> None:
        m, delta = self.param.momentum, self.param.delta
        h1, h2 = history
        _decay_into(h1, _squares(grads), m)
        ratio = torch._foreach_add(h2, delta)
        torch._foreach_div_(ratio, torch._foreach_add(h1, delta))
        torch._foreach_sqrt_(ratio)
        torch._foreach_mul_(grads, ratio)
        _decay_into(h2, _squares(grads), m)
        torch._foreach_mul_(grads, rate)


@register_solver("Adam")
class AdamSolver(Solver):
    """``m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; diff = r sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps)``."""

    history_per_param = 2

    def update_rule(self, grads: Tensors, history: list[Tensors], rate: float) -> None:
        b1, b2 = self.param.momentum, self.param.momentum2
        t = self.iter + 1
        correction = math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        m, v = history
        _decay_into(m, grads, b1)
        _decay_into(v, _squares(grads), b2)
        torch._foreach_copy_(grads, m)
        _divide_by_root(grads, v, self.param.delta)
        torch._foreach_mul_(grads, rate * correction)
