"""Training layers of the face recognition forks, with each fork's rules (their hand-written backward passes).

* ``CenterLoss`` -- ydwen/caffe-face (Wen et al., ECCV 2016). Bottoms: features (flattened from
  ``center_loss_param.axis``) and labels (one per item); one learned blob, the centers ``(num_output, K)``.
  The loss is ``sum_i |x_i - c_{y_i}|^2 / (2M)`` over the batch of M. The features' gradient is
  ``(x_i - c_{y_i}) / M`` times the top's diff (the loss weight); the centers' "gradient" is the fork's
  update rule, ``sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)`` with ``n_j`` the batch's items of class j,
  whatever the loss weight (the centers learn at the solver's rate through their ``lr_mult``).
* ``MarginInnerProduct`` -- wy1iu/sphereface (A-Softmax, Liu et al., CVPR 2017). Bottoms: features and
  labels; one learned blob, the weights ``(num_output, K)``, whose rows every forward first scales to unit
  length, in place (so snapshots hold them normalized, as the fork's do). Each forward counts an
  iteration and sets ``lambda = max(base * (1 + gamma * iteration)^-power, lambda_min)`` (the optional
  second top). With ``cos = x.w_j / |x|``, the label's output is ``|x| psi(theta)`` (``psi`` the fork's
  piecewise ``(-1)^k cos(m theta) - 2k`` for margin m = 2, 3, 4, from sign tests on ``cos``), mixed as
  ``(|x| psi + lambda x.w) / (1 + lambda)``; the other outputs are ``x.w_j``; ``SINGLE`` (m = 1) is the
  plain product. The backward is the fork's: the weights get ``top_diff^T x``; the features get the plain
  product's gradient for non-label outputs and, for the label's, the fork's two coefficients on ``w`` and
  ``x`` scaled to unit length -- not the derivative of the forward, which a finite-difference check would
  not confirm.

* happynear/caffe-windows (NormFace; AM-Softmax, Wang et al. 2018), its field numbers:

  - ``Normalize`` with ``normalize_param`` (or with neither it nor SSD's ``norm_param``): each item's channels
    at each position divided by ``sqrt(sum x^2 + 1e-6)`` (``L2``) or ``sum |x| + 1e-6`` (``L1``), no learned
    blob, a 4-axis top whatever the bottom (the fork's); an optional second top holds the norms, whose diff
    flows back only with ``bp_norm``. The fork's backward is the exact derivative, so autograd's is too.
  - ``InnerProduct`` with ``normalize: true``: the stored weight rows (as laid out in memory, N rows of K) are
    scaled in place to unit length, ``w / sqrt(|w|^2 + 1e-6)``, before every forward, then the plain
    product; the weights' gradient is the plain product's (:class:`caffe.layers.core.NormalizedInnerProductLayer`).
  - ``LabelSpecificAdd``: bottoms, the outputs (one row per item) and the labels. In TRAIN each item's output
    at its label gets ``bias`` added when it is above ``-bias`` (AM-Softmax's ``cos - m`` with ``bias: -m``,
    kept at 0 or more); in TEST nothing is added (the fork's ``transform_test`` never changes that). With
    ``bias_base`` the margin anneals each forward (``_annealed_bias``); a second top holds it. The gradient
    passes through unchanged.
  - ``Flip`` (``flip_param`` 212): the image mirrored along its width and/or height; the authors' deploy nets
    sum the features of a face and of its mirror.

The forks' ``center_loss_param`` and ``margin_inner_product_param`` are both field 147 there, BVLC's
``swish_param``; here they are 1147 and 2147 (prototxts name them).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from caffe.blob import Shape
from caffe.layer import Layer, register
from caffe.layers.loss import LossLayer, _LabelledLayer
from caffe.proto import caffe_pb2 as pb


def _items(layer: Layer, bottom: list[Shape], axis: int, features: int, blob: str) -> int:
    """The items of features (bottom 0 flattened from ``axis``, ``features`` long, as ``blob`` expects) with
    one label each (bottom 1)."""
    found = math.prod(bottom[0][axis:])
    if found != features:
        raise layer.shape_error(
            f"bottom shape {tuple(bottom[0])} flattens from axis {axis} to {found} features, the {blob} expect "
            f"{features}"
        )
    items = math.prod(bottom[0][:axis])
    label = tuple(bottom[1])
    if math.prod(label) != items or (len(label) > 1 and math.prod(label[1:]) != 1):
        raise layer.shape_error(
            f"the label blob must hold one label per item ({items} items for bottom shape {tuple(bottom[0])}), "
            f"got shape {label}"
        )
    return items


class _CenterLossFunction(torch.autograd.Function):
    """caffe-face's loss with its backward: the features' true gradient, the centers' update rule."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d = x - centers[labels]
        ctx.save_for_backward(d, labels)
        ctx.num_centers = centers.shape[0]
        return (d * d).sum() / max(x.shape[0], 1) / 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        d, labels = ctx.saved_tensors
        grad_x = d * (grad / max(d.shape[0], 1)) if ctx.needs_input_grad[0] else None
        grad_centers = None
        if ctx.needs_input_grad[1]:  # the fork's rule ignores the loss weight
            pulled = torch.zeros(ctx.num_centers, d.shape[1], dtype=d.dtype, device=d.device).index_add_(0, labels, -d)
            ones = torch.ones(labels.shape, dtype=d.dtype, device=d.device)
            counts = torch.zeros(ctx.num_centers, dtype=d.dtype, device=d.device).index_add_(0, labels, ones)
            grad_centers = pulled / (1 + counts)[:, None]
        return grad_x, grad_centers, None


@register("CenterLoss")
class CenterLossLayer(LossLayer):
    """ydwen/caffe-face's center loss; see the module docstring."""

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.center_loss_param
        self.require(p.num_output > 0, f"center_loss_param.num_output must be given and positive, got {p.num_output}")
        self.axis = self.check_axis(p.axis, len(bottom[0]), "center_loss_param.axis")
        self.features = math.prod(bottom[0][self.axis :])
        self.add_param((int(p.num_output), self.features), p.center_filler)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.check_first_dim(bottom)
        self.items = _items(self, bottom, self.axis, self.features, "centers")
        return [()]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        centers = self.param_tensor(0)
        labels = bottom[1].reshape(self.items)
        index, _, _ = self.class_labels(labels, centers.shape[0], "(center_loss_param.num_output)")
        x = bottom[0].reshape(self.items, self.features)
        return [_CenterLossFunction.apply(x, centers, index)]


Margin = pb.MarginInnerProductParameter


def _psi_and_coefficients(cos: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the label's cosines: the fork's ``psi`` and its backward's coefficient on ``w`` and on ``x`` (the latter
    times ``-|x|``), per margin type. Signs as ``caffe_cpu_sign``: -1, 0 or 1, as ``torch.sign``."""
    s0 = torch.sign(cos)
    c2 = cos * cos
    if margin == Margin.DOUBLE:
        psi = 2 * s0 * c2 - 1
        return psi, 4 * s0 * cos, 2 * s0 * c2 + 1
    if margin == Margin.TRIPLE:
        s1 = torch.sign(cos.abs() - 0.5)
        s2 = s0 * (1 + s1) - 2
        c3 = c2 * cos
        return s1 * (4 * c3 - 3 * cos) + s2, s1 * (12 * c2 - 3), 8 * s1 * c3 - s2
    s3 = s0 * torch.sign(2 * c2 - 1)
    s4 = 2 * s0 + s3 - 3
    c4 = c2 * c2
    return s3 * (8 * c4 - 8 * c2 + 1) + s4, s3 * (32 * c2 * cos - 16 * cos), s3 * (24 * c4 - 8 * c2 - 1) - s4


class _MarginProductFunction(torch.autograd.Function):
    """sphereface's margin inner product with its hand-written backward (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, margin: int, lam: float
    ) -> torch.Tensor:
        product = x @ weight.t()
        ctx.save_for_backward(x, weight, labels)
        ctx.margin, ctx.lam = margin, lam
        if margin == Margin.SINGLE:
            return product
        rows = torch.arange(x.shape[0], device=x.device)
        norm = x.norm(dim=1)
        target = product[rows, labels]
        cos = target / norm
        psi, coeff_w, coeff_x = _psi_and_coefficients(cos, margin)
        ctx.cos_terms = (norm, coeff_w, coeff_x)
        out = product.clone()
        out[rows, labels] = (norm * psi + lam * target) / (1 + lam)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, labels = ctx.saved_tensors
        grad_w = grad.t() @ x if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            if ctx.margin == Margin.SINGLE:
                grad_x = grad @ weight
            else:
                lam = ctx.lam
                norm, coeff_w, coeff_x = ctx.cos_terms
                rows = torch.arange(x.shape[0], device=x.device)
                g_label = grad[rows, labels]
                others = grad.clone()
                others[rows, labels] = 0
                coeff_x = -coeff_x / norm
                length = torch.sqrt(coeff_w * coeff_w + coeff_x * coeff_x)
                scale = g_label / (1 + lam) / length
                grad_x = (
                    others @ weight / (1 + lam)
                    + (scale * coeff_w)[:, None] * weight[labels]
                    + (scale * coeff_x)[:, None] * x
                    + grad @ weight * (lam / (1 + lam))
                )
        return grad_x, grad_w, None, None, None


@register("MarginInnerProduct")
class MarginInnerProductLayer(_LabelledLayer):
    """wy1iu/sphereface's A-Softmax inner product; see the module docstring."""

    exact_num_bottom = 2
    min_top, max_top = 1, 2
    exact_num_top = None
    traceable = False  # counts iterations and normalizes its weights in place

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.margin_inner_product_param
        self.require(
            p.num_output > 0, f"margin_inner_product_param.num_output must be given and positive, got {p.num_output}"
        )
        self.margin = int(p.type)
        self.axis = self.check_axis(p.axis, len(bottom[0]), "margin_inner_product_param.axis")
        self.features = math.prod(bottom[0][self.axis :])
        self.iteration = int(p.iteration)
        self.lam = 0.0
        self.add_param((int(p.num_output), self.features), p.weight_filler)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.items = _items(self, bottom, self.axis, self.features, "weights")
        out: Shape = (*bottom[0][: self.axis], self.blobs[0].shape[0])
        return [out, (1,)][: len(self.tops)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.layer_param.margin_inner_product_param
        self.iteration += 1
        lam = float(p.base) * (1.0 + float(p.gamma) * self.iteration) ** (-float(p.power))
        self.lam = max(lam, float(p.lambda_min))
        with torch.no_grad():  # the fork scales the stored rows to unit length before every forward
            stored = self.blobs[0].mutable_tensor
            stored.div_(stored.norm(dim=1, keepdim=True))
        weight = self.param_tensor(0)
        num_output = weight.shape[0]
        index, _, _ = self.class_labels(bottom[1].reshape(self.items), num_output, "(num_output)")
        x = bottom[0].reshape(self.items, self.features)
        out = _MarginProductFunction.apply(x, weight, index, self.margin, self.lam)
        tops = [out.reshape(*bottom[0].shape[: self.axis], num_output)]
        if len(self.tops) == 2:
            tops.append(torch.full((1,), self.lam, dtype=x.dtype, device=x.device))
        return tops


# ---------------------------------------------------------------------------- happynear/caffe-windows
NORMFACE_EPS = 1e-6  # the fork's, added to the sum of squares (L2) or of absolute values (L1)


class NormFaceNormalizeLayer(Layer):
    """happynear/caffe-windows' ``Normalize`` (NormFace, AM-Softmax); see the module docstring. Built for a
    ``Normalize`` layer with ``normalize_param`` or with neither it nor SSD's ``norm_param``
    (:class:`caffe.layers.detection.NormalizeLayer` decides)."""

    type = "Normalize"
    exact_num_bottom = 1
    min_top, max_top = 1, 2
    exact_num_top = None

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.normalize_param
        self.require(p.normalize_type in ("L2", "L1"), f"normalize_param.normalize_type must be L2 or L1, got "
                     f"{p.normalize_type!r}")  # fmt: skip
        self.l2 = p.normalize_type == "L2"
        self.bp_norm = p.bp_norm and len(self.tops) == 2

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        n, c, h, w = self.legacy_shape(bottom[0])  # the fork's top is 4-axis whatever the bottom
        return [(n, c, h, w), (n, 1, h, w)][: len(self.tops)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0].reshape(self.legacy_shape(tuple(bottom[0].shape)))
        if self.l2:
            norm = (x.square().sum(dim=1, keepdim=True) + NORMFACE_EPS).sqrt()
        else:
            norm = x.abs().sum(dim=1, keepdim=True) + NORMFACE_EPS
        tops = [x / norm]
        if len(self.tops) == 2:
            tops.append(norm if self.bp_norm else norm.detach())  # without bp_norm the norms' diff stops here
        return tops


def _annealed_bias(p: pb.LabelSpecificAddParameter, iteration: int) -> float:
    """The fork's annealed margin: clamp(base + (1 + gamma * iteration)^power - 1, bias_min, bias_max)."""
    bias = float(p.bias_base) + (1.0 + float(p.bias_gamma) * iteration) ** float(p.bias_power) - 1.0
    return min(max(bias, float(p.bias_min)), float(p.bias_max))


@register("LabelSpecificAdd")
class LabelSpecificAddLayer(_LabelledLayer):
    """happynear/caffe-windows' AM-Softmax margin; see the module docstring."""

    exact_num_bottom = 2
    min_top, max_top = 1, 2
    exact_num_top = None
    traceable = False  # counts forwards (the annealed margin) and reads the labels

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.label_specific_add_param
        self.bias = float(p.bias)
        self.anneal = p.HasField("bias_base")
        self.iteration = int(p.iteration)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.items = int(bottom[0][0]) if bottom[0] else 1
        self.outputs = math.prod(bottom[0]) // max(self.items, 1)
        if math.prod(bottom[1]) != self.items:
            raise self.shape_error(
                f"the label blob must hold one label per item ({self.items} items for bottom shape "
                f"{tuple(bottom[0])}), got shape {tuple(bottom[1])}"
            )
        return [tuple(bottom[0]), (1,)][: len(self.tops)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        if self.phase == pb.TRAIN:
            if self.anneal:
                self.bias = _annealed_bias(self.layer_param.label_specific_add_param, self.iteration)
                self.iteration += 1
            index, _, _ = self.class_labels(bottom[1].reshape(self.items), self.outputs, "(outputs per item)")
            flat = x.reshape(self.items, self.outputs)
            rows = torch.arange(self.items, device=x.device)
            target = flat[rows, index]
            shift = torch.where(target > -self.bias, self.bias, 0.0).to(x.dtype)  # only above -bias, as the fork
            x = flat.index_put((rows, index), shift, accumulate=True).reshape(x.shape)
        tops = [x]
        if len(self.tops) == 2:
            tops.append(torch.full((1,), self.bias, dtype=x.dtype, device=x.device))
        return tops


@register("Flip")
class FlipLayer(Layer):
    """happynear/caffe-windows' ``Flip``: the (legacy 4-axis) image mirrored along its width (``flip_width``,
    default) and/or its height (``flip_height``); the gradient is flipped back. Its face models' deploy nets
    concatenate an image with its mirror to sum both features."""

    exact_num_bottom, exact_num_top = 1, 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.flip_param
        self.dims = [d for d, on in ((2, p.flip_height), (3, p.flip_width)) if on]

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.legacy_shape(bottom[0])  # at most 4 axes, as the fork's num/channels/height/width
        return [tuple(bottom[0])]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        if not self.dims:
            return [x.clone()]
        legacy = x.reshape(self.legacy_shape(tuple(x.shape)))
        return [torch.flip(legacy, self.dims).reshape(x.shape)]
