"""Caffe's ``debug_info`` log lines: per layer after its forward and backward, per parameter at the update.

Each value is the mean absolute value of a blob's data or diff, as Caffe's ``Net::ForwardDebugInfo``,
``BackwardDebugInfo`` and ``UpdateDebugInfo`` print it; after a full backward, the L1 and L2 norms of all
learnable parameters' data and diffs. The lines are logged as from the net's own calls (``stacklevel``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from caffe.net import Net

log = logging.getLogger("caffe")


def _line(message: str, *args: object, level: int = logging.INFO) -> None:
    """Log one line, attributed to net.py's call of this module (as the lines were net.py's own)."""
    log.log(level, message, *args, stacklevel=3)


def abs_mean(t: torch.Tensor) -> str:
    return f"{float(t.detach().abs().double().mean()) if t.numel() else 0.0:g}"


def forward_info(net: Net, i: int) -> None:
    """Layer ``i``'s tops' data and parameters' data after its forward."""
    name, names, blobs = net.layer_names[i], net.blob_names, net.blob_list
    for tid in net.top_ids(i):
        _line("    [Forward] Layer %s, top blob %s data: %s", name, names[tid], abs_mean(blobs[tid].tensor))
    labels, ids = net.param_display_names, net.param_ids(i)
    for k, blob in enumerate(net.host_layers[i].blobs):
        _line("    [Forward] Layer %s, param blob %s data: %s", name, labels[ids[k]], abs_mean(blob.tensor))


def backward_info(net: Net, i: int) -> None:
    """Layer ``i``'s bottoms' diffs (those it computes) and parameters' diffs after its backward."""
    name, names, blobs = net.layer_names[i], net.blob_names, net.blob_list
    for bid, need in zip(net.bottom_ids(i), net.bottom_need_backward[i], strict=True):
        if need:
            _line("    [Backward] Layer %s, bottom blob %s diff: %s", name, names[bid], abs_mean(blobs[bid].grad))
    layer = net.host_layers[i]
    for k, blob in enumerate(layer.blobs):
        if layer.param_propagate_down[k]:
            _line("    [Backward] Layer %s, param blob %d diff: %s", name, k, abs_mean(blob.grad))


def norms_info(net: Net) -> None:
    """The L1 and L2 norms of all learnable parameters' data and diffs (after a full backward)."""
    data = [b.tensor.detach().double() for b in net.learnable_params]
    diff = [b.grad.detach().double() for b in net.learnable_params]
    _line(
        "    [Backward] All net params (data, diff): L1 norm = (%s, %s); L2 norm = (%s, %s)",
        *(
            f"{v:g}"
            for v in (
                sum(float(t.abs().sum()) for t in data),
                sum(float(t.abs().sum()) for t in diff),
                sum(float(t.pow(2).sum()) for t in data) ** 0.5,
                sum(float(t.pow(2).sum()) for t in diff) ** 0.5,
            )
        ),
        level=logging.ERROR,
    )


def update_info(net: Net) -> None:
    """Each parameter's data and diff (a shared one's diff and owner) before the update."""
    names, labels, owners = net.layer_names, net.param_display_names, net.param_owners
    where = net.param_layer_indices
    for net_id, blob in enumerate(net.param_blobs):
        layer = names[where[net_id][0]]
        owner = owners[net_id]
        if owner < 0:
            _line(
                "    [Update] Layer %s, param %s data: %s; diff: %s",
                layer,
                labels[net_id],
                abs_mean(blob.tensor),
                abs_mean(blob.grad),
            )
        else:
            _line(
                "    [Update] Layer %s, param blob %s (owned by layer %s, param %s) diff: %s",
                layer,
                labels[net_id],
                names[where[owner][0]],
                labels[owner],
                abs_mean(blob.grad),
            )
