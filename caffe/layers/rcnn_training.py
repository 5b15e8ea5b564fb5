"""Training layers of the R-CNN family's Caffe forks, with each fork's rules.

* ``SmoothL1Loss`` -- the box-regression loss. Three forks share the name; the bottom count tells them apart:

  - 2 or 4 bottoms, rbgirshick/caffe-fast-rcnn (py-faster-rcnn, and py-R-FCN's Microsoft/caffe): predictions,
    targets and optionally inside and outside weights; ``sum(w_out * f(w_in * d)) / N`` for ``d = b0 - b1``,
    ``f`` :func:`~caffe.layers.loss.smooth_l1` with ``smooth_l1_loss_param.sigma``, ``N`` the first dimension;
    the gradient is the true one. With 2 bottoms and an explicit ``loss_param`` normalization, the divisor is
    caffe-rfcn's (below).
  - 3 bottoms, weiliu89/caffe ``ssd`` and daijifeng001/caffe-rfcn: predictions, targets and one weight inside
    ``f`` (sigma 1: neither fork reads sigma, so a sigma here is refused); the gradient is
    ``f'(w * d)`` scaled, without the factor ``w`` (both forks' backward; equal to the true gradient for
    0/1 weights). The divisor is caffe-rfcn's: ``loss_param`` normalization FULL or VALID ``N * H * W``
    (the default), BATCH_SIZE ``N``, PRE_FIXED ``pre_fixed_normalizer``, NONE 1, never below 1 -- for the
    N x C blobs of SSD, ``N`` as in that fork.
  - An optional second top (caffe-rfcn) gives each position's loss before normalization, the sum over
    channels, shaped ``(N, 1, H, W)``.

* ``SmoothL1LossOHEM`` -- Microsoft/caffe's name for caffe-rfcn's 2-3 bottom form (py-R-FCN's OHEM nets).
* ``BoxAnnotatorOHEM`` -- R-FCN's online hard example mining (caffe-rfcn, Microsoft/caffe). Bottoms: ROIs
  ``(R, 5, H, W)``, each ROI's loss ``(R, 1, H, W)``, labels ``(R, 1, H, W)`` and box-loss weights
  ``(R, C, H, W)``. The ROIs are taken by descending loss (ties in index order; the fork's unstable sort
  leaves them unspecified), at most ``roi_per_img`` per image (the ROI's first value, truncated); tops are the
  labels of the taken ROIs (``ignore_label`` elsewhere) and their box-loss weights (0 elsewhere). No gradient.

``SoftmaxWithLossOHEM`` is :class:`~caffe.layers.loss.SoftmaxWithLossLayer` (its third top is the per-position
loss). The forks' CPU code of all three was ``NOT_IMPLEMENTED``; here they run on every device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from caffe.blob import Shape
from caffe.layer import Layer, register
from caffe.layers.loss import BVLC_MODES, PRE_FIXED, VALID, LossLayer, smooth_l1

_RFCN_MODES = (*BVLC_MODES, PRE_FIXED)


@register("SmoothL1Loss")
class SmoothL1LossLayer(LossLayer):
    """The R-CNN forks' Smooth L1 box-regression loss; see the module docstring for each fork's rule."""

    exact_num_bottom = None
    min_bottom, max_bottom = 2, 4
    exact_num_top = None
    min_top, max_top = 1, 2
    no_grad_bottoms = (2, 3)
    rfcn_divisor = False  # whether the divisor always follows caffe-rfcn (SmoothL1LossOHEM)

    def layer_setup(self, bottom: list[Shape]) -> None:
        param = self.layer_param
        sigma = float(param.smooth_l1_loss_param.sigma)
        self.weight_inside = len(bottom) == 3  # the SSD / caffe-rfcn form
        if (self.weight_inside or self.rfcn_divisor) and param.smooth_l1_loss_param.HasField("sigma") and sigma != 1:
            raise self.error(
                f"smooth_l1_loss_param.sigma {sigma:g} is read only by caffe-fast-rcnn's SmoothL1Loss "
                "with 2 or 4 bottoms; this form (SSD's, R-FCN's) has none"
            )
        self.sigma2 = sigma * sigma
        lp = param.loss_param
        self.rfcn = (
            self.rfcn_divisor
            or self.weight_inside
            or (len(bottom) == 2 and (lp.HasField("normalization") or lp.HasField("normalize")))
        )
        self.mode = self.read_normalization(VALID, _RFCN_MODES) if self.rfcn else VALID
        self.fixed = float(lp.pre_fixed_normalizer)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self.check_first_dim(bottom)
        dims = [self.legacy_shape(s, f"bottom[{i}]") for i, s in enumerate(bottom)]
        for i, d in enumerate(dims[1:], 1):
            if d[1:] != dims[0][1:] or math.prod(bottom[i]) != math.prod(bottom[0]):
                raise self.shape_error(
                    f"bottom[{i}] must have the shape of bottom[0]: bottom[0] has shape {tuple(bottom[0])}, "
                    f"bottom[{i}] has shape {tuple(bottom[i])}"
                )
        n, _, h, w = dims[0]
        self.dims4 = dims[0]
        self.divisor = (
            self.normalizer(self.mode, n, h * w, None, torch.float64, self.fixed) if self.rfcn else float(max(n, 1))
        )
        return [(), (n, 1, h, w)][: len(self.tops)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        shape = self.dims4
        d = bottom[0].reshape(shape) - bottom[1].reshape(shape)
        if len(bottom) == 4:
            d = d * bottom[2].detach().reshape(shape)
        elif len(bottom) == 3:  # the forks' gradient omits the weight: d keeps its own under w * d's value
            d = d + (d * bottom[2].detach().reshape(shape) - d).detach()
        errors = smooth_l1(d, self.sigma2)
        if len(bottom) == 4:
            errors = errors * bottom[3].detach().reshape(shape)
        loss = errors.sum() / self.divisor
        if len(self.tops) == 1:
            return [loss]
        return [loss, errors.detach().sum(dim=1, keepdim=True)]


@register("SmoothL1LossOHEM")
class SmoothL1LossOHEMLayer(SmoothL1LossLayer):
    """Microsoft/caffe's SmoothL1LossOHEM: caffe-rfcn's SmoothL1Loss (2-3 bottoms, loss_param's divisor)."""

    max_bottom = 3
    rfcn_divisor = True


@register("BoxAnnotatorOHEM")
class BoxAnnotatorOHEMLayer(Layer):
    """R-FCN's online hard example mining: see the module docstring."""

    exact_num_bottom = 4
    exact_num_top = 2
    traceable = False  # the choice depends on the loss values

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.box_annotator_ohem_param
        if not p.HasField("roi_per_img") or p.roi_per_img <= 0:
            raise self.error("box_annotator_ohem_param.roi_per_img must be given and positive")
        self.roi_per_img = int(p.roi_per_img)
        self.ignore_label = float(p.ignore_label)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        rois, loss, labels, weights = (self.legacy_shape(s, f"bottom[{i}]") for i, s in enumerate(bottom))
        n, _, h, w = rois
        if rois[1] != 5:
            raise self.shape_error(f"the ROIs (bottom[0]) must have 5 channels, got shape {tuple(bottom[0])}")
        for i, (what, d) in enumerate((("per-ROI loss", loss), ("labels", labels)), 1):
            if d != (n, 1, h, w):
                raise self.shape_error(
                    f"the {what} (bottom[{i}]) must have shape {(n, 1, h, w)} for ROIs of shape "
                    f"{tuple(bottom[0])}, got {tuple(bottom[i])}"
                )
        if (weights[0], weights[2], weights[3]) != (n, h, w):
            raise self.shape_error(
                f"the box-loss weights (bottom[3]) must have shape ({n}, C, {h}, {w}) for ROIs of shape "
                f"{tuple(bottom[0])}, got {tuple(bottom[3])}"
            )
        self.legacy = (rois, weights)
        return [(n, 1, h, w), weights]  # 4-axis tops, as the fork reshapes them

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        (n, _, h, w), (_, channels, _, _) = self.legacy
        rois = bottom[0].detach().reshape(n, 5, h * w)[:, 0].reshape(-1).to("cpu", torch.float64).numpy()
        loss = bottom[1].detach().reshape(-1).to("cpu", torch.float64).numpy()
        if not np.isfinite(rois).all() or (rois.size and rois.min() <= -1):
            bad = rois[~np.isfinite(rois) | (rois <= -1)][0]
            raise self.error(f"ROI batch indices must be finite and not negative, got {bad}")
        # each distinct image gets its budget (the fork sizes a table by the largest index)
        _, images = np.unique(np.trunc(rois), return_inverse=True)
        order = np.argsort(-loss, kind="stable")
        taken = np.zeros(loss.size, dtype=bool)
        left = np.full(int(images.max()) + 1 if images.size else 0, self.roi_per_img)
        for index in order:
            image = images[index]
            if left[image] > 0:
                left[image] -= 1
                taken[index] = True
        keep = torch.from_numpy(taken).to(bottom[2].device)
        labels = bottom[2].detach().reshape(-1)
        top_labels = torch.where(keep, labels, torch.full_like(labels, self.ignore_label))
        weights = bottom[3].detach().reshape(n, channels, h * w)
        top_weights = torch.where(keep.reshape(n, 1, h * w), weights, torch.zeros_like(weights))
        return [top_labels.reshape(n, 1, h, w), top_weights.reshape(n, channels, h, w)]
