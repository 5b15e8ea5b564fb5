"""Normalization layers: LRN, MVN and BatchNorm (Caffe's formulas and Caffe's statistics blobs)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from caffe.blob import Shape
from caffe.common import TEST
from caffe.layer import ExportForward, Layer, register
from caffe.ops.channel_window import lrn_across_channels
from caffe.proto import caffe_pb2 as pb

log = logging.getLogger("caffe")


# ---------------------------------------------------------------------------- LRN
@register("LRN")
class LRNLayer(Layer):
    """Local response normalization, ``top = x * scale^-beta``.

    ACROSS_CHANNELS: ``scale = k + alpha/size * sum of x^2`` over ``size`` neighbouring channels
    (centred, zero padded). WITHIN_CHANNEL, as Caffe composes it (square, AVE pooling of a
    ``size`` x ``size`` window with pad ``(size-1)/2``, power with shift 1): ``scale = 1 +
    alpha/size^2 * sum of x^2`` over the spatial window; ``k`` is not used and the divisor stays
    ``size^2`` at the borders.
    """

    exact_num_bottom, exact_num_top = 1, 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.lrn_param
        self.require(p.local_size % 2 == 1, f"lrn_param.local_size must be odd, got {p.local_size}")
        self._size, self._pad = int(p.local_size), (int(p.local_size) - 1) // 2
        self._alpha, self._beta, self._k = float(p.alpha), float(p.beta), float(p.k)
        self._across = p.norm_region == pb.LRNParameter.ACROSS_CHANNELS

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[0]) != 4:
            raise self.shape_error(f"input must have 4 axes (num, channels, height, width), got shape {bottom[0]}")
        return [bottom[0]]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        if self._across:
            return [lrn_across_channels(x, self._size, self._alpha, self._beta, self._k)]
        mean = F.avg_pool2d(x * x, self._size, stride=1, padding=self._pad, count_include_pad=True)
        return [x * (mean * self._alpha + 1.0).pow(-self._beta)]

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """Per-sample: ``forward`` traces as is, for any batch size."""
        return None


# ---------------------------------------------------------------------------- MVN
@register("MVN")
class MVNLayer(Layer):
    """Mean-variance normalization over H*W per (n, c), or over C*H*W per n with ``across_channels``.

    ``top = (x - mean) / (sqrt(var) + eps)``: eps is added after the square root, as in Caffe. The
    top has Caffe's legacy 4-axis shape (num, channels, height, width).
    """

    exact_num_bottom, exact_num_top = 1, 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.mvn_param
        self._normalize_variance, self._across, self._eps = p.normalize_variance, p.across_channels, float(p.eps)

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self._top_shape = self.legacy_shape(bottom[0])
        self._rows = self._top_shape[0] if self._across else self._top_shape[0] * self._top_shape[1]
        return [self._top_shape]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        rows = bottom[0].reshape(self._rows, -1)
        centred = rows - rows.mean(dim=1, keepdim=True)
        if self._normalize_variance:
            var = (centred * centred).mean(dim=1, keepdim=True)
            denom = var.sqrt() + self._eps
            if denom.requires_grad:
                # Caffe's backward differentiates the denominator as if it were sqrt(var + c): its
                # variance term has (std + eps)^3 where the exact one has std * (std + eps)^2. Same
                # value; the gradient through var is 1 / (2 * denom).
                held = denom.detach()
                denom = held + (var - var.detach()) / (2 * held)
            centred = centred / denom
        return [centred.reshape(self._top_shape)]


# ---------------------------------------------------------------------------- BatchNorm
@register("BatchNorm")
class BatchNormLayer(Layer):
    """Caffe's BatchNorm: no affine part; blobs hold mean*s, var*s and s (the moving-average weight).

    With ``use_global_stats`` (default: TEST phase) the stored statistics, divided by s, are used as
    constants. Otherwise the batch statistics (biased variance) normalize the input and the blobs
    are updated in place: ``s = maf*s + 1``, ``mean_blob = maf*mean_blob + mean``, ``var_blob =
    maf*var_blob + m/(m-1) * var`` with m = count / channels.
    """

    exact_num_bottom, exact_num_top = 1, 1

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.batch_norm_param
        self._maf = float(p.moving_average_fraction)
        self._eps = float(p.eps)
        self._use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else self.phase == TEST
        self._check_shape(bottom[0])
        self._channels = bottom[0][1]
        for _ in range(2):
            self.add_param((self._channels,), None)
        self.add_param((1,), None)
        self._freeze_statistics()

    def _freeze_statistics(self) -> None:
        """Caffe masks the statistics from the solver with lr_mult 0 (written into the net's layer_param)."""
        specs = self.layer_param.param
        for i in range(len(self.blobs)):
            if i == len(specs):
                specs.add().lr_mult = 0.0
            elif specs[i].lr_mult != 0:
                log.warning(
                    "layer '%s' (BatchNorm): param %d has lr_mult %g, but batch normalization statistics cannot "
                    "be learned; using lr_mult 0",
                    self.name,
                    i,
                    specs[i].lr_mult,
                )
                specs[i].lr_mult = 0.0

    def _check_shape(self, shape: Shape) -> None:
        if len(shape) < 2:
            raise self.shape_error(f"needs a bottom with at least 2 axes (num, channels, ...), got shape {shape}")

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        self._check_shape(bottom[0])
        if bottom[0][1] != self._channels:
            raise self.shape_error(
                f"bottom shape {bottom[0]} has {bottom[0][1]} channels, the layer was set up for {self._channels}"
            )
        return [bottom[0]]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        if self._use_global_stats:
            mean, var = self._global_statistics()
            return [F.batch_norm(x, mean, var, training=False, eps=self._eps)]
        m = x.numel() // self._channels
        if m > 1:
            # One pass gives the top and the statistics: with momentum 1 the "running" buffers receive the
            # batch mean and the unbiased variance (m/(m-1) times the biased one: Caffe's correction).
            mean, var = x.new_zeros(self._channels), x.new_zeros(self._channels)
            top = F.batch_norm(x, mean, var, training=True, momentum=1.0, eps=self._eps)
        else:  # one value per channel: torch refuses batch statistics; Caffe gives (x - x) / sqrt(eps)
            dims = [0, *range(2, x.dim())]
            batch_mean = x.mean(dim=dims, keepdim=True)  # in the graph: the top's gradient is Caffe's zero
            centred = x - batch_mean
            top = centred / (centred.pow(2).mean(dim=dims, keepdim=True) + self._eps).sqrt()
            mean = batch_mean.reshape(-1)
            var = torch.zeros_like(mean)  # Caffe's correction is 1 here: the variance of one value
        self._update_statistics(mean, var)
        return [top]

    def _global_statistics(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance), detached and in ``dtype``: the stored sums divided by s (0 where s is 0)."""
        mean, var, s = (self.param_tensor(k).detach() for k in range(3))
        if dtype is not None:
            mean, var, s = mean.to(dtype), var.to(dtype), s.to(dtype)
        factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
        return mean * factor, var * factor

    def channel_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With global statistics BatchNorm is x * a + b per channel: a = 1/sqrt(var + eps), b = -mean * a."""
        if not self._use_global_stats:
            return None
        mean, var = self._global_statistics(torch.float64)
        a = 1.0 / torch.sqrt(var + self._eps)
        return a, -mean * a

    def export_forward(self, *, onnx: bool = False, dynamic_batch: bool = False) -> ExportForward | None:
        """For ONNX, global statistics as one BatchNormalization of constant mean and variance."""
        if not (onnx and self._use_global_stats):
            return None
        with torch.no_grad():
            mean, var = (t.clone() for t in self._global_statistics())
        eps = self._eps
        return lambda b: [F.batch_norm(b[0], mean, var, training=False, eps=eps)]

    def _update_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Caffe's moving sums: s = maf*s + 1, mean_blob = maf*mean_blob + mean, var_blob likewise with
        ``var`` the unbiased batch variance."""
        with torch.no_grad():
            self.blobs[2].mutable_tensor.mul_(self._maf).add_(1.0)
            self.blobs[0].mutable_tensor.mul_(self._maf).add_(mean.detach())
            self.blobs[1].mutable_tensor.mul_(self._maf).add_(var.detach())
