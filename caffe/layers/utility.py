"""Utility layers: blob plumbing (split, concat, slice, reshape, ...), reductions and Softmax.

All follow Caffe master. Where Caffe shares memory between bottom and top (Flatten, Reshape, a
one-bottom Concat, a one-top Slice) the top is a view of the bottom; otherwise tops are fresh,
contiguous tensors (Slice along axis 0 yields contiguous views). Backward is autograd of
``forward`` except where noted: the index bottoms of BatchReindex and Filter and the whole of
ArgMax and Silence carry no gradient.

Notes on Caffe's rules that are easy to get wrong:

* Eltwise MAX (CPU rule, the reference): bottom 0 wins over bottom 1 only if strictly greater (so a
  tie between the first two goes to bottom 1); every later bottom must be strictly greater than
  the running maximum to take over (ties stay with the earlier bottom). The gradient goes to the
  winning bottom only. Caffe's GPU kernel differs (later bottoms also win ties); we follow the CPU.
* Eltwise PROD: the gradient is the product of the other bottoms (``stable_prod_grad: true``,
  Caffe's default). With ``stable_prod_grad: false`` Caffe computes top/bottom, which equals it
  except where a bottom is 0 (Caffe then gives NaN/inf); we always give the exact product.
* ArgMax orders (value, index) pairs descending, so equal values come out largest index first.
* Filter's tops have a data-dependent first dimension: its forward cannot be traced with a fixed
  shape. Its first reshape gives the bottoms' full batch size (as Caffe's does); later reshapes,
  like Caffe's, count the selector's nonzero entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch

from caffe.blob import Shape
from caffe.errors import CaffeError
from caffe.layer import BatchSizeFixed, ExportForward, Layer, register
from caffe.ops import capturing
from caffe.proto import caffe_pb2 as pb


# ---------------------------------------------------------------------------- shared helpers
def _fmt(shape: Sequence[int]) -> str:
    """A shape as ``(2, 3, 4)`` with its count, for messages."""
    dims = ", ".join(str(int(d)) for d in shape)
    return f"({dims}) (count {math.prod(shape)})"


def _axis(layer: Layer, value: int, shape: Shape, field: str) -> int:
    """Caffe's CanonicalAxisIndex for ``field`` against a bottom of ``shape``."""
    n = len(shape)
    if not -n <= value < n:
        raise layer.shape_error(f"{field} {value} is out of range for bottom shape {_fmt(shape)} with {n} axes")
    return value % n


def _legacy_axis(layer: Layer, param: object, legacy: str, shape: Shape) -> int:
    """The axis of Concat/Slice: ``axis`` (may be negative) or the deprecated unsigned ``legacy`` field."""
    if param.HasField(legacy):  # type: ignore[attr-defined]
        value = int(getattr(param, legacy))
        if value >= len(shape):
            raise layer.shape_error(f"{legacy} {value} is out of range for bottom shape {_fmt(shape)}")
        return value
    return _axis(layer, int(param.axis), shape, "axis")  # type: ignore[attr-defined]


def _check_axis_fields(layer: Layer, param: object, legacy: str) -> None:
    if param.HasField("axis") and param.HasField(legacy):  # type: ignore[attr-defined]
        raise layer.error(f"either axis or {legacy} should be specified, not both")


def _check_not_in_place(layer: Layer) -> None:
    if layer.tops and layer.bottoms and layer.tops[0] is layer.bottoms[0]:
        raise layer.error("does not allow in-place computation (top and bottom are the same blob)")


def _validating() -> bool:
    """Whether value checks (which read tensor data) may run: not while tracing or compiling."""
    return not capturing()


# ---------------------------------------------------------------------------- Split
@register("Split")
class SplitLayer(Layer):
    """Fan-out inserted by the Net: every top aliases the bottom; backward sums the top diffs."""

    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return [bottom[0]] * len(self.tops)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        # The tops share the bottom's data, as in Caffe; when gradients are recorded the Net gives
        # each top its own view. (A view here would give a batch-1 tensor an odd batch stride,
        # which sends channels-last pooling down PyTorch's slow NCHW kernel.)
        return [bottom[0]] * len(self.tops)

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size."""
        return None


# ---------------------------------------------------------------------------- views of the bottom
class _ViewLayer(Layer):
    """A layer whose top is the bottom's data under another shape (Caffe's ShareData/ShareDiff)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def top_shape(self, shape: Shape) -> Shape:
        raise NotImplementedError

    def layer_setup(self, bottom: list[Shape]) -> None:
        _check_not_in_place(self)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self._shape = self.top_shape(bottom[0])
        return [self._shape]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [bottom[0].reshape(self._shape)]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """With a dynamic batch ``reshape(-1, *rest)``, where the top's axis 0 follows the bottom's."""
        if not dynamic_batch:
            return None
        bottom = tuple(self.bottom_shapes[0])
        top = tuple(self.top_shape(bottom))
        try:
            probe = (bottom[0] + 1, *bottom[1:]) if bottom else None
            other = tuple(self.top_shape(probe)) if probe else None
        except CaffeError:
            other = None
        if not top or other is None or other[0] != bottom[0] + 1 or other[1:] != top[1:] or top[0] != bottom[0]:
            raise BatchSizeFixed("its top's first axis does not follow the batch size")
        rest = top[1:]
        return lambda b: [b[0].reshape(-1, *rest)]


@register("Flatten")
class FlattenLayer(_ViewLayer):
    """Collapse axes ``axis`` .. ``end_axis`` (inclusive, negative allowed) into one."""

    def top_shape(self, shape: Shape) -> Shape:
        p = self.layer_param.flatten_param
        start = _axis(self, p.axis, shape, "flatten_param.axis")
        end = _axis(self, p.end_axis, shape, "flatten_param.end_axis")
        if end < start:
            raise self.shape_error(
                f"flatten_param.end_axis {p.end_axis} comes before axis {p.axis} for bottom shape {_fmt(shape)}"
            )
        return (*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])


@register("Reshape")
class ReshapeLayer(_ViewLayer):
    """``reshape_param.shape`` over axes [axis, axis + num_axes): 0 copies a dim, one -1 is inferred."""

    def layer_setup(self, bottom: list[Shape]) -> None:
        super().layer_setup(bottom)
        p = self.layer_param.reshape_param
        self._dims = tuple(int(d) for d in p.shape.dim)
        if any(d < -1 for d in self._dims):
            raise self.error(f"reshape_param.shape {self._dims} has a dimension below -1")
        if self._dims.count(-1) > 1:
            raise self.error(
                f"reshape_param.shape {self._dims} contains more than one -1; at most one dimension may be inferred"
            )
        if p.num_axes < -1:
            raise self.error(f"reshape_param.num_axes must be >= 0, or -1 for all, got {p.num_axes}")

    def top_shape(self, shape: Shape) -> Shape:
        p = self.layer_param.reshape_param
        n = len(shape)
        start = p.axis if p.axis >= 0 else n + p.axis + 1  # Caffe: -1 means "after the last axis"
        if not 0 <= start <= n:
            raise self.shape_error(f"reshape_param.axis {p.axis} is out of range for bottom shape {_fmt(shape)}")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.shape_error(
                f"reshape_param.axis {p.axis} + num_axes {p.num_axes} is out of range for bottom shape {_fmt(shape)}"
            )
        new = list(self._dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= n:
                    raise self.shape_error(
                        f"reshape_param.shape {self._dims} has a 0 at position {i} but bottom shape "
                        f"{_fmt(shape)} has no axis {start + i} to copy"
                    )
                new[i] = shape[start + i]
        kept = math.prod(shape[:start]) * math.prod(shape[end:])
        count = math.prod(shape)
        if -1 in new:
            known = kept * math.prod(d for d in new if d != -1)
            if known == 0 or count % known:
                raise self.shape_error(
                    f"cannot infer the -1 of reshape_param.shape {self._dims}: bottom shape {_fmt(shape)} is not "
                    f"divisible by the product of the other dimensions ({known})"
                )
            new[new.index(-1)] = count // known
        top = (*shape[:start], *new, *shape[end:])
        if math.prod(top) != count:
            raise self.shape_error(
                f"reshape_param.shape {self._dims} turns bottom shape {_fmt(shape)} into {_fmt(top)}: counts differ"
            )
        return top


# ---------------------------------------------------------------------------- joining and splitting
@register("Concat")
class ConcatLayer(Layer):
    """Join the bottoms along ``axis`` (or the deprecated ``concat_dim``)."""

    min_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        _check_axis_fields(self, self.layer_param.concat_param, "concat_dim")

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        first = bottom[0]
        self._axis = axis = _legacy_axis(self, self.layer_param.concat_param, "concat_dim", first)
        total = 0
        for i, s in enumerate(bottom):
            if len(s) != len(first) or s[:axis] != first[:axis] or s[axis + 1 :] != first[axis + 1 :]:
                raise self.shape_error(
                    f"bottom[{i}] shape {_fmt(s)} does not match bottom[0] shape {_fmt(first)} "
                    f"outside the concatenation axis {axis}"
                )
            total += s[axis]
        return [(*first[:axis], total, *first[axis + 1 :])]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(bottom) == 1:
            return [bottom[0]]
        return [torch.cat(bottom, dim=self._axis)]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size unless it joins along the batch axis."""
        if dynamic_batch and self._axis == 0 and len(self.bottoms) > 1:
            raise BatchSizeFixed("it concatenates along the batch axis")
        return None


@register("Slice")
class SliceLayer(Layer):
    """Cut the bottom along ``axis`` (or ``slice_dim``) at ``slice_point``s, or into equal parts."""

    exact_num_bottom = 1
    min_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.slice_param
        _check_axis_fields(self, p, "slice_dim")
        points = [int(x) for x in p.slice_point]
        prev = 0
        for x in points:
            if x <= prev:
                raise self.error(f"slice_point {points} must be strictly increasing and positive ({x} after {prev})")
            prev = x
        if points and len(points) != len(self.tops) - 1:
            raise self.error(f"{len(points)} slice_point(s) {points} need {len(points) + 1} tops, got {len(self.tops)}")
        self._points = points

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        shape = bottom[0]
        self._axis = axis = _legacy_axis(self, self.layer_param.slice_param, "slice_dim", shape)
        dim, num_top = shape[axis], len(self.tops)
        if self._points:
            if self._points[-1] > dim or num_top > dim:
                raise self.shape_error(
                    f"slice_point {self._points} is out of range for axis {axis} of bottom shape {_fmt(shape)}"
                )
            bounds = [0, *self._points, dim]
            sizes = [b - a for a, b in pairwise(bounds)]
        else:
            if dim % num_top:
                raise self.shape_error(
                    f"{num_top} tops do not evenly divide axis {axis} (size {dim}) of bottom shape {_fmt(shape)}"
                )
            sizes = [dim // num_top] * num_top
        self._sizes = sizes
        return [(*shape[:axis], s, *shape[axis + 1 :]) for s in sizes]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(self._sizes) == 1:
            return [bottom[0]]
        return [t.contiguous() for t in torch.split(bottom[0], self._sizes, dim=self._axis)]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size unless it cuts along the batch axis."""
        if dynamic_batch and self._axis == 0 and len(self.tops) > 1:
            raise BatchSizeFixed("it slices along the batch axis")
        return None


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """top[i] = bottom[0][bottom[1][i]]; repeated indices accumulate their gradients."""

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[1]) != 1:
            raise self.shape_error(f"the index bottom must have 1 axis, got shape {_fmt(bottom[1])}")
        if not bottom[0]:
            raise self.shape_error("the data bottom must have at least 1 axis")
        return [(bottom[1][0], *bottom[0][1:])]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        data, index = bottom[0], bottom[1].detach()
        if _validating() and index.numel():
            lo, hi = float(index.min()), float(index.max())
            if lo < 0 or hi >= data.shape[0]:
                raise self.error(
                    f"index values must lie in [0, {data.shape[0]}) for bottom[0] shape {_fmt(tuple(data.shape))}, "
                    f"got values from {lo:g} to {hi:g}"
                )
        return [data.index_select(0, index.long())]


@register("Filter")
class FilterLayer(Layer):
    """Keep the items (axis 0) of every bottom but the last where the last bottom (selector) is nonzero.

    The tops' first dimension depends on the selector's values: this layer cannot be traced.
    """

    traceable = False  # per-call state or data-dependent shapes: never compiled

    min_bottom = 2
    min_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != len(self.layer_param.bottom) - 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        if len(self.tops) != len(bottom) - 1:
            raise self.error(
                f"needs one top per filtered bottom: {len(bottom)} bottoms (the last is the selector) "
                f"but {len(self.tops)} top(s)"
            )
        self._first_reshape = True

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        sel = bottom[-1]
        if not sel or any(d != 1 for d in sel[1:]):
            raise self.shape_error(f"the selector's dimensions must be singletons except the first, got {_fmt(sel)}")
        for i, s in enumerate(bottom[:-1]):
            if not s or s[0] != sel[0]:
                raise self.shape_error(
                    f"bottom[{i}] shape {_fmt(s)} must have the selector's first dimension (selector {_fmt(sel)})"
                )
        num = sel[0]
        if self._first_reshape:
            self._first_reshape = False
        elif self.bottoms and self.bottoms[-1].shape == sel:
            num = int(torch.count_nonzero(self.bottoms[-1].tensor.detach()))
        return [(num, *s[1:]) for s in bottom[:-1]]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        keep = torch.nonzero(bottom[-1].detach().reshape(-1)).reshape(-1)
        return [b.index_select(0, keep) for b in bottom[:-1]]


@register("Tile")
class TileLayer(Layer):
    """Repeat the bottom ``tiles`` times along ``axis`` (each block of axes ``axis..`` copied whole)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.tile_param
        if not p.HasField("tiles"):
            raise self.error("tile_param.tiles must be specified")
        if p.tiles <= 0:
            raise self.error(f"tile_param.tiles must be positive, got {p.tiles}")

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        shape = bottom[0]
        self._axis = axis = _axis(self, self.layer_param.tile_param.axis, shape, "tile_param.axis")
        return [(*shape[:axis], shape[axis] * self.layer_param.tile_param.tiles, *shape[axis + 1 :])]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        reps = [1] * bottom[0].dim()
        reps[self._axis] = self.layer_param.tile_param.tiles
        return [bottom[0].repeat(reps)]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size unless ``axis`` is the batch axis."""
        if dynamic_batch and self._axis == 0:
            raise BatchSizeFixed("it works along the batch axis")
        return None


# ---------------------------------------------------------------------------- element-wise and reductions
_ELTWISE = pb.EltwiseParameter


@register("Eltwise")
class EltwiseLayer(Layer):
    """PROD, SUM (with one ``coeff`` per bottom) or MAX of equally shaped bottoms."""

    min_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.eltwise_param
        if len(p.coeff) not in (0, len(bottom)):
            raise self.error(f"takes one coefficient per bottom blob: {len(bottom)} bottoms but {len(p.coeff)} coeff")
        if p.operation == _ELTWISE.PROD and len(p.coeff):
            raise self.error("only takes coefficients for summation (operation SUM), not PROD")
        self._op = p.operation
        self._coeffs = [float(c) for c in p.coeff] or [1.0] * len(bottom)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        for i, s in enumerate(bottom[1:], start=1):
            if s != bottom[0]:
                raise self.shape_error(f"bottom[0] shape {_fmt(bottom[0])} and bottom[{i}] shape {_fmt(s)} differ")
        return [bottom[0]]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._op == _ELTWISE.PROD:
            out = bottom[0] * bottom[1]
            for b in bottom[2:]:
                out = out * b
        elif self._op == _ELTWISE.SUM:
            out = None
            for c, b in zip(self._coeffs, bottom):
                term = b if c == 1.0 else b * c
                out = term if out is None else out + term
        else:
            # Caffe's CPU rule; chained torch.where routes each element's gradient to the winner.
            out = torch.where(bottom[0] > bottom[1], bottom[0], bottom[1])
            for b in bottom[2:]:
                out = torch.where(b > out, b, out)
        return [out]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size."""
        return None


_REDUCTION = pb.ReductionParameter


@register("Reduction")
class ReductionLayer(Layer):
    """SUM, ASUM, SUMSQ or MEAN over all axes from ``axis`` on, times ``coeff``; top shape bottom[:axis]."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        shape = bottom[0]
        self._axis = axis = _axis(self, self.layer_param.reduction_param.axis, shape, "reduction_param.axis")
        self._dim = math.prod(shape[axis:])
        return [shape[:axis]]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.layer_param.reduction_param
        x = bottom[0].flatten(self._axis)
        op = p.operation
        if op == _REDUCTION.ASUM:
            out = x.abs().sum(-1)
        elif op == _REDUCTION.SUMSQ:
            out = (x * x).sum(-1)
        else:
            out = x.sum(-1)
        coeff = float(p.coeff)
        if op == _REDUCTION.MEAN:
            coeff /= self._dim  # Caffe scales the sum by coeff / dim
        return [out if coeff == 1.0 else out * coeff]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size unless ``axis`` is the batch axis."""
        if dynamic_batch and self._axis == 0:
            raise BatchSizeFixed("it works along the batch axis")
        return None


@register("Softmax")
class SoftmaxLayer(Layer):
    """Softmax over ``axis`` (max-subtracted, numerically stable)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self._axis = _axis(self, self.layer_param.softmax_param.axis, bottom[0], "softmax_param.axis")
        return [bottom[0]]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.softmax(bottom[0], dim=self._axis)]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size."""
        return None


@register("ArgMax")
class ArgMaxLayer(Layer):
    """Indices (and optionally values) of the ``top_k`` largest entries; no gradient.

    Without ``axis`` each item is flattened and the top is N x (1 or 2) x top_k (padded with
    singleton axes to the bottom's rank), indices first then values. With ``axis`` the top is the
    bottom with ``top_k`` entries along ``axis``: values if ``out_max_val`` else indices.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def layer_setup(self, bottom: list[Shape]) -> None:
        if self.layer_param.argmax_param.top_k < 1:
            raise self.error("argmax_param.top_k must not be less than 1")

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        p = self.layer_param.argmax_param
        shape, k = bottom[0], p.top_k
        if p.HasField("axis"):
            self._axis: int | None = _axis(self, p.axis, shape, "argmax_param.axis")
            dim, where = shape[self._axis], f"axis {self._axis}"
        else:
            self._axis = None
            dim, where = math.prod(shape[1:]), "each flattened item"
        if k > dim:
            raise self.shape_error(
                f"argmax_param.top_k {k} is larger than the {dim} values along {where} of bottom shape {_fmt(shape)}"
            )
        if self._axis is not None:
            return [(*shape[: self._axis], k, *shape[self._axis + 1 :])]
        self._flat_shape = (shape[0], 2 if p.out_max_val else 1, k, *[1] * (len(shape) - 3))
        return [self._flat_shape]

    def _top_k(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k largest along the last axis, equal values ordered by larger index first."""
        dim = x.shape[-1]
        flipped = x.flip(-1)  # a stable descending order on the flipped axis puts larger indices first
        if k == 1:
            values, pos = flipped.max(-1, keepdim=True)
        else:
            values, pos = torch.sort(flipped, dim=-1, descending=True, stable=True)
            values, pos = values[..., :k], pos[..., :k]
        return values, (dim - 1) - pos

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.layer_param.argmax_param
        x = bottom[0].detach()
        if self._axis is None:
            values, index = self._top_k(x.reshape(x.shape[0], -1), p.top_k)
            out = index.to(x.dtype).unsqueeze(1)
            if p.out_max_val:
                out = torch.cat([out, values.unsqueeze(1)], dim=1)
            return [out.reshape(self._flat_shape)]
        values, index = self._top_k(x.movedim(self._axis, -1), p.top_k)
        out = values if p.out_max_val else index.to(x.dtype)
        return [out.movedim(-1, self._axis).contiguous()]


@register("Silence")
class SilenceLayer(Layer):
    """Consumes its bottoms and produces nothing (their gradient is zero)."""

    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        return []

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return []

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """``forward`` traces as is, for any batch size."""
        return None
