"""MobileNet-YOLO's ``AssistedExcitation`` (eric612/MobileNet-YOLO, after "Assisted Excitation of Activations",
Derakhshani et al. 2019): during training, the feature map is brightened inside the label boxes, less and less as
the training goes on.

Bottoms: the features ``N x C x H x W``, the YOLO labels (``AnnotatedData`` with ``yolo_data_type: 1``, rows
``[class, x, y, w, h]`` per image, ended by an x of 0) and a map ``N x H x W`` (the port's nets give the channel
mean: Permute, then Reduction MEAN). Top: the features plus, in every channel, ``alpha`` times the map inside the
boxes (cells ``[int((x - w/2) W), int((x + w/2) W + 0.95))`` in x, the same in y; at least one cell, inside the
map), with ``alpha = cos(pi/2 iteration / (0.75 stop))`` clipped to [0, 1] from the solver's progress (1 outside
a solver). The gradient goes to the features unchanged; none to the labels or the map (as the port's).

One difference: the port's loop adds the first image's mask to every image of a batch. It reads the mask buffer
from its start, and the later images' boxes are written further on, so only image 0 is excited. Here each image
gets its own boxes' mask.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from caffe.blob import Shape
from caffe.layer import Layer, register


def excitation_weight(iteration: int, stop: int) -> float:
    """The port's ``alpha``: cos(pi/2 iteration / (0.75 stop)) clipped to [0, 1]; 1 without a run."""
    if stop <= 0:
        return 1.0
    return min(max(math.cos(iteration / (0.75 * stop) * math.pi / 2), 0.0), 1.0)


def box_cells(row: np.ndarray, height: int, width: int) -> tuple[slice, slice]:
    """The (rows, columns) a label box ``[class, x, y, w, h]`` covers, as the port rounds them."""
    x, y, w, h = (float(v) for v in row[1:5])
    left = min(max(int((x - w / 2) * width), 0), width - 1)
    top = min(max(int((y - h / 2) * height), 0), height - 1)
    right = min(max(int((x + w / 2) * width + 0.95), left + 1), width)
    bottom = min(max(int((y + h / 2) * height + 0.95), top + 1), height)
    return slice(top, bottom), slice(left, right)


@register("AssistedExcitation")
class AssistedExcitationLayer(Layer):
    """See the module docstring."""

    exact_num_bottom = 3
    exact_num_top = 1
    traceable = False  # reads the labels and the solver's progress

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        x, label, plane = bottom
        if len(x) != 4:
            raise self.shape_error(f"bottom 0 must be N x C x H x W, got {tuple(x)}")
        n, _, h, w = x
        if not label or label[0] != n or math.prod(label[1:]) % 5:
            raise self.shape_error(
                f"bottom 1 must hold rows [class, x, y, w, h] per image (N = {n}), got {tuple(label)}"
            )
        if not plane or plane[0] != n or math.prod(plane[1:]) != h * w:
            raise self.shape_error(f"bottom 2 must hold one H x W map per image ({n} x {h} x {w}), got {tuple(plane)}")
        return [tuple(x)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x, label, plane = bottom
        n, _, h, w = x.shape
        rows = label.detach().to("cpu", torch.float32).numpy().reshape(n, -1, 5)
        maps = plane.detach().to("cpu", torch.float32).numpy().reshape(n, h, w)
        alpha = np.float32(excitation_weight(*self.progress))
        mask = np.zeros((n, h, w), dtype=np.float32)
        for b in range(n):
            for row in rows[b]:
                if row[1] == 0:
                    break
                if not np.isfinite(row[1:5]).all():
                    raise self.error(f"image {b}: a label box is not finite: {row.tolist()}")
                cells = box_cells(row, h, w)
                mask[b][cells] = alpha * maps[b][cells]
        excitation = torch.from_numpy(mask).to(x.device, x.dtype)[:, None]
        return [x + excitation]
