"""Compile a function with dynamo's recording AOT backend (no inductor: fast) and return what it captured."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._dynamo.testing import AotEagerAndRecordGraphs


def eager_and_compiled_grads(
    loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, str, str]:
    """``loss``'s gradient at ``x`` eagerly and compiled, and the compiled forward and backward graphs' code."""
    eager = x.clone().requires_grad_()
    loss(eager).backward()
    torch._dynamo.reset()
    recorder = AotEagerAndRecordGraphs()
    compiled = x.clone().requires_grad_()
    try:
        torch.compile(loss, fullgraph=True, backend=recorder)(compiled).backward()
    finally:
        torch._dynamo.reset()
    (forward,), (backward,) = recorder.fw_graphs, recorder.bw_graphs
    return eager.grad, compiled.grad, forward.code, backward.code


def compiled_without_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """``fn(x)`` compiled under ``torch.no_grad()`` and the captured graph's code."""
    torch._dynamo.reset()
    recorder = AotEagerAndRecordGraphs()
    try:
        with torch.no_grad():
            out = torch.compile(fn, backend=recorder)(x)
    finally:
        torch._dynamo.reset()
    return out, recorder.graphs[0].code
