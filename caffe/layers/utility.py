"""Utility layers: blob plumbing (split, concat, slice, reshape, ...) and reductions."""

from __future__ import annotations

import torch

from caffe.blob import Shape
from caffe.layer import Layer, register


@register("Split")
class SplitLayer(Layer):
    """Fan-out inserted by the Net: every top aliases the bottom; backward sums the top diffs."""

    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return [bottom[0]] * len(self.tops)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [bottom[0].view_as(bottom[0]) for _ in self.tops]
