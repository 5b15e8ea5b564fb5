"""``caffe time --engine compiled``: each layer's forward and backward with its forward compiled alone.

Every layer the compiled training step would capture gets its own ``torch.compile`` (``dynamic=False``,
inductor's ``fallback_random`` option as in ``caffe.train_step``), run on the bottoms the eager benchmark left
in the net; its backward is autograd's through the compiled forward, seeded with the tops' diffs of
the eager pass. Data layers, layers with their own backward (Python layers), untraceable layers and
layers whose compile fails stay eager: :func:`time_compiled_layers` says why instead of a figure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from caffe.train_step import has_own_backward
from caffe.util.inductor import compiled, cpp_compiler_found

if TYPE_CHECKING:
    from caffe.net import Net

log = logging.getLogger("caffe")


@dataclass(frozen=True)
class CompiledLayerTime:
    """A layer's average compiled forward and backward, in ms (backward None: the layer needs none)."""

    forward: float
    backward: float | None


def eager_only_reason(net: Net, i: int) -> str | None:
    """Why layer ``i`` is not compiled on its own (None: it is)."""
    layer = net.host_layers[i]
    if not net.bottom_ids(i):
        return "data layer"
    if net.device.type == "cpu" and not cpp_compiler_found():
        return "no C++ compiler"
    if has_own_backward(layer):
        return "own backward"
    if not layer.traceable:
        return "not traceable"
    return None


def time_compiled_layers(net: Net, iterations: int, sync: Callable[[], None]) -> list[CompiledLayerTime | str]:
    """Per layer, its compiled figures or why it has none; the net's data blobs are left as they were
    (a layer's in-place statistics, e.g. BatchNorm's, move on as in training)."""
    limit = max(torch._dynamo.config.recompile_limit, 2 * net.num_layers)  # one code object, many layers
    total = max(torch._dynamo.config.accumulated_recompile_limit, 4 * net.num_layers)
    params = [blob.tensor for blob in net.learnable_params]
    saved = [t.grad for t in params]
    results: list[CompiledLayerTime | str] = []
    try:
        with torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=total):
            for i in range(net.num_layers):
                reason = eager_only_reason(net, i)
                if reason is None:
                    try:
                        results.append(_time_layer(net, i, iterations, sync))
                        continue
                    except Exception as exc:
                        layer = net.host_layers[i]
                        log.warning(
                            "Layer '%s' (%s) timed eagerly only: its compiled forward or backward failed (%s: %s)",
                            layer.name,
                            layer.type,
                            type(exc).__name__,
                            str(exc).splitlines()[0] if str(exc) else "",
                        )
                        reason = "compile failed"
                results.append(reason)
    finally:
        for t, grad in zip(params, saved, strict=True):  # autograd.backward accumulated into the leaves
            t.grad = grad
    return results


def _time_layer(net: Net, i: int, iterations: int, sync: Callable[[], None]) -> CompiledLayerTime:
    layer = net.host_layers[i]
    blobs = net.blob_list
    needs_backward = net.layer_need_backward[i]
    wants_diff = [needs_backward and need for need in net.bottom_need_backward[i]]
    bottom_ids, top_ids = net.bottom_ids(i), net.top_ids(i)
    function = compiled(layer.forward, fallback_random=True)

    def forward() -> list[torch.Tensor]:
        bottoms = [blobs[b].tensor.detach().requires_grad_(w) for b, w in zip(bottom_ids, wants_diff, strict=True)]
        outputs = function(bottoms)
        for blob in layer.blobs:  # e.g. BatchNorm's statistics, updated in place by the compiled forward
            blob.mark_modified()
        return outputs

    def backward(outputs: list[torch.Tensor]) -> bool:
        roots, seeds = [], []
        for tid, out in zip(top_ids, outputs, strict=True):
            if out.requires_grad:
                blob = blobs[tid]
                diff = blob.grad if blob.has_diff() and blob.grad.numel() == out.numel() else None
                roots.append(out)
                seeds.append(torch.ones_like(out) if diff is None else diff.reshape(out.shape).to(out.dtype))
        if not (needs_backward and roots):
            return False
        torch.autograd.backward(roots, grad_tensors=seeds)
        return True

    clock = time.perf_counter
    for _ in range(2):  # compiles (forward and backward graphs), then one run to warm up
        backward(forward())
    sync()
    forward_time = backward_time = 0.0
    has_backward = False
    for _ in range(iterations):
        start = clock()
        outputs = forward()
        sync()
        forward_time += clock() - start
        start = clock()
        has_backward = backward(outputs)
        sync()
        backward_time += clock() - start
    return CompiledLayerTime(
        forward_time * 1e3 / iterations, backward_time * 1e3 / iterations if has_backward else None
    )
