"""Tongcheng/caffe's memory-efficient DenseNet block, ``DenseBlock``, as senlinuc/caffe_ocr's DenseNet nets use it.

One layer holds a whole dense block of ``numTransition`` transitions on an (N, C, H, W) bottom (C is the bottom's
channels: caffe_ocr reads ``initChannel`` from the bottom). Transition i takes the C + i * growthRate channels
made so far through batch normalization, ReLU and a 3 x 3 convolution (padding 1, stride 1: the fork's cuDNN
descriptor, whatever the convolution fields say) to ``growthRate`` new channels appended to them; with
``use_BC`` a 1 x 1 convolution to 4 * growthRate channels, its own batch normalization and ReLU come before the
3 x 3 one. The top is the C + numTransition * growthRate channels.

The numbers follow the fork's GPU code, with which its models were trained:

* its convolutions are cuDNN's ``CUDNN_CONVOLUTION`` mode, true convolutions: the 3 x 3 kernels are applied
  flipped (its CPU code agrees), no bias;
* batch normalization in TEST uses the stored mean and variance as they are (eps 1e-5, cuDNN's minimum);
  in TRAIN the batch's statistics (biased variance), and the stored ones move by ``moving_average_fraction``
  towards the batch mean and unbiased variance;
* ``use_dropout`` drops the new channels in TRAIN (``dropout_amount``).

Blobs, for transitions i (n = numTransition): the 3 x 3 filters [0, n), BN scalers [n, 2n), biases [2n, 3n),
means [3n, 4n), variances [4n, 5n); with ``use_BC`` the 1 x 1 filters [5n, 6n), their BN scalers, biases, means
and variances up to 10n; then one blob of one value (the fork's, unused). The statistics are never learned
(lr_mult 0, written into the layer's ParamSpecs as the fork does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caffe.blob import Shape
from caffe.common import TRAIN
from caffe.layer import Layer, register
from caffe.proto import caffe_pb2 as pb

BN_EPS = 1e-5  # cuDNN's CUDNN_BN_MIN_EPSILON, which the fork passes


@register("DenseBlock")
class DenseBlockLayer(Layer):
    """A dense block of BN-ReLU-(1 x 1 conv-BN-ReLU-)3 x 3 conv transitions, each appending its channels."""

    exact_num_bottom, exact_num_top = 1, 1
    traceable = False  # TRAIN updates the stored statistics
    draws_random = True  # use_dropout

    def layer_setup(self, bottom: list[Shape]) -> None:
        p = self.layer_param.denseblock_param
        if len(bottom[0]) != 4:
            raise self.shape_error(f"needs an (N, C, H, W) bottom, got shape {tuple(bottom[0])}")
        self._n, self._growth, self._bc = int(p.numTransition), int(p.growthRate), bool(p.use_BC)
        if self._n < 1 or self._growth < 1:
            raise self.error(f"numTransition ({self._n}) and growthRate ({self._growth}) must be positive")
        if not 0 <= p.dropout_amount < 1:
            raise self.error(f"dropout_amount must be in [0, 1), got {p.dropout_amount:g}")
        self._channels = int(bottom[0][1])
        n, g = self._n, self._growth
        ins = [self._channels + i * g for i in range(n)]
        zero, one = pb.FillerParameter(type="constant", value=0), pb.FillerParameter(type="constant", value=1)
        for c in ins:
            self.add_param((g, 4 * g if self._bc else c, 3, 3), p.Filter_Filler)
        for filler in (p.BN_Scaler_Filler, p.BN_Bias_Filler, zero, one):
            for c in ins:
                self.add_param((1, c, 1, 1), filler)
        if self._bc:
            for c in ins:
                self.add_param((4 * g, c, 1, 1), p.Filter_Filler)
            for filler in (p.BN_Scaler_Filler, p.BN_Bias_Filler, zero, one):
                for _ in ins:
                    self.add_param((1, 4 * g, 1, 1), filler)
        self.add_param((1,), zero)
        # the statistics and the last blob: lr_mult 0 (the fork's specs)
        statistics = [*range(3 * n, 5 * n), *(range(8 * n, 10 * n) if self._bc else ()), len(self.blobs) - 1]
        specs = self.layer_param.param
        while len(specs) < len(self.blobs):
            specs.add()
        for i in statistics:
            specs[i].lr_mult, specs[i].decay_mult = 0.0, 0.0

    def reshape(self, bottom: list[Shape]) -> list[Shape]:
        if len(bottom[0]) != 4 or bottom[0][1] != self._channels:
            raise self.shape_error(f"was set up for (N, {self._channels}, H, W) bottoms, got shape {tuple(bottom[0])}")
        n, _, h, w = bottom[0]
        return [(n, self._channels + self._n * self._growth, h, w)]

    def _bn(self, x: torch.Tensor, first: int, i: int) -> torch.Tensor:
        """Batch normalization of transition i with the blobs from ``first`` (scaler, bias, mean, variance)."""
        n = self._n
        scale, bias, mean, var = (self.param_tensor(first + k * n + i).reshape(-1) for k in range(4))
        if self.phase != TRAIN:
            return F.batch_norm(x, mean.detach(), var.detach(), scale, bias, training=False, eps=BN_EPS)
        batch_mean, batch_var = x.new_zeros(mean.shape), x.new_zeros(var.shape)
        top = F.batch_norm(x, batch_mean, batch_var, scale, bias, training=True, momentum=1.0, eps=BN_EPS)
        f = float(self.layer_param.denseblock_param.moving_average_fraction)
        with torch.no_grad():  # the batch's mean and unbiased variance (torch's running update at momentum 1)
            for k, stat in ((2, batch_mean), (3, batch_var)):
                stored = self.blobs[first + k * n + i].mutable_tensor.view(-1)
                stored.mul_(1 - f).add_(stat.to(stored.dtype), alpha=f)
        return top

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.layer_param.denseblock_param
        n = self._n
        features = bottom[0]
        dropout = self.phase == TRAIN and p.use_dropout and p.dropout_amount > 0
        for i in range(n):
            y = F.relu(self._bn(features, n, i))
            if self._bc:
                y = F.relu(self._bn(F.conv2d(y, self.param_tensor(5 * n + i)), 6 * n, i))
            y = F.conv2d(y, self.param_tensor(i).flip(2, 3), padding=1)  # cuDNN's true convolution
            if dropout:
                y = F.dropout(y, float(p.dropout_amount), training=True)
            features = torch.cat([features, y], dim=1)
        return [features]
