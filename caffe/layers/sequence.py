"""The OCR forks' sequence plumbing: senlinuc/caffe_ocr's Transpose, Reverse and ReverseTime, and
jolibrain/caffe's (DeepDetect's) ContinuationIndicator.

A text recogniser's convolutions end in an (N, C, 1, W) map; these layers turn it into the (T, N, C) time-major
sequence that the LSTMs and the CTC loss read, and run a backward LSTM on reversed time:

* ``Transpose`` -- top axis i is bottom axis ``transpose_param.dim[i]``; ``dim`` names every axis once.
* ``Reverse`` -- the bottom flipped along ``reverse_param.axis`` (0, time, by default).
* ``ReverseTime`` -- bottoms: a (T, N, ...) sequence and each stream's length (N values); stream n's first
  ``length[n]`` steps reversed in place of each other; the steps after them are copied with
  ``reverse_time_param.copy_remaining`` and zero otherwise (the fork leaves them unwritten).

* ``ContinuationIndicator`` -- the (time_step, N) sequence continuation indicators that BVLC's LSTM reads as
  its second bottom: 0 at step 0, 1 after it. N is ``continuation_indicator_param.batch_size`` when set (the
  fork's first version, which has no bottom), else the bottom's size along ``axis`` (its later one); the
  bottom's values are not read.

Their backward passes are the same moves applied to the top's diff (ContinuationIndicator has none).
"""

from __future__ import annotations

import torch

from caffe.blob import Shape
from caffe.layer import ExportForward, Layer, register


@register("Transpose")
class TransposeLayer(Layer):
    """Reorder every axis: top axis i is bottom axis ``dim[i]``."""

    exact_num_bottom, exact_num_top = 1, 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        dims = [int(d) for d in self.layer_param.transpose_param.dim]
        if sorted(dims) != list(range(len(bottom[0]))):
            raise self.shape_error(
                f"transpose_param.dim {dims} must name each of the bottom's {len(bottom[0])} axes once "
                f"(bottom shape {tuple(bottom[0])})"
            )
        self._dims = tuple(dims)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[0]) != len(self._dims):
            raise self.shape_error(f"was set up for {len(self._dims)} axes, got bottom shape {tuple(bottom[0])}")
        return [tuple(bottom[0][d] for d in self._dims)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [bottom[0].permute(self._dims).contiguous()]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size."""
        return None


@register("Reverse")
class ReverseLayer(Layer):
    """The bottom flipped along ``reverse_param.axis``."""

    exact_num_bottom, exact_num_top = 1, 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        self._axis = self.check_axis(int(self.layer_param.reverse_param.axis), len(bottom[0]), "reverse_param.axis")

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.check_axis(self._axis, len(bottom[0]), "reverse_param.axis")
        return [tuple(bottom[0])]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [bottom[0].flip(self._axis)]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size."""
        return None


@register("ReverseTime")
class ReverseTimeLayer(Layer):
    """Each stream's steps reversed within its own length (bottoms: sequence (T, N, ...), lengths (N))."""

    exact_num_bottom, exact_num_top = 2, 1
    traceable = False  # the lengths are read as numbers

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        x, lengths = bottom
        if len(x) < 2:
            raise self.shape_error(f"bottom 0 must be (T, N, ...), got shape {tuple(x)}")
        if len(lengths) != 1 or lengths[0] != x[1]:
            raise self.shape_error(
                f"bottom 1 must hold one length per stream: shape ({x[1]},) for a sequence of shape {tuple(x)}, "
                f"got {tuple(lengths)}"
            )
        return [tuple(x)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x, lengths = bottom[0], bottom[1].detach()
        steps = x.shape[0]
        length = lengths.to(torch.long)  # the fork's int conversion (toward zero)
        if bool(((length < 0) | (length > steps)).any()):
            bad = int(((length < 0) | (length > steps)).nonzero()[0, 0])
            raise self.error(f"stream {bad} has length {float(lengths[bad]):g}, outside [0, {steps}] steps")
        t = torch.arange(steps, device=x.device).unsqueeze(1)  # (T, 1)
        inside = t < length.unsqueeze(0)  # (T, N)
        source = torch.where(inside, length.unsqueeze(0) - 1 - t, t)  # top step t reads bottom step source[t, n]
        index = source.reshape(steps, -1, *([1] * (x.dim() - 2))).expand_as(x)
        out = x.gather(0, index)
        if not self.layer_param.reverse_time_param.copy_remaining:
            mask = inside.reshape(steps, -1, *([1] * (x.dim() - 2)))
            out = torch.where(mask, out, torch.zeros_like(out))
        return [out]


@register("ContinuationIndicator")
class ContinuationIndicatorLayer(Layer):
    """(time_step, N) continuation indicators: 0 at the first step, 1 after it."""

    min_bottom, max_bottom = 0, 1
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def layer_setup(self, bottom: list[Shape]) -> None:
        param = self.layer_param.continuation_indicator_param
        self._steps, self._batch = int(param.time_step), int(param.batch_size)
        if self._steps <= 0:
            raise self.error("continuation_indicator_param.time_step must be set (> 0)")
        if not self._batch:
            if not bottom:
                raise self.error("without a bottom, continuation_indicator_param.batch_size must be set (> 0)")
            self._axis = self.check_axis(int(param.axis), len(bottom[0]), "continuation_indicator_param.axis")

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        items = self._batch or int(bottom[0][self.check_axis(self._axis, len(bottom[0]))])
        if items <= 0:
            raise self.shape_error(f"the batch size (bottom axis {self._axis}) is 0 (bottom shape {tuple(bottom[0])})")
        return [(self._steps, items)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        top = self.tops[0]
        items = self._batch or bottom[0].shape[self._axis]
        out = torch.ones(self._steps, items, dtype=top.dtype, device=top.device)
        out[0] = 0
        return [out]
