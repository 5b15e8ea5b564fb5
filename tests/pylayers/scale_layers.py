"""Python layers used by the tests (imported through python_param.module)."""

import numpy as np

import caffe


class TimesParam(caffe.Layer):
    """top = bottom * k, where k comes from param_str; remembers the phase it was built in."""

    def setup(self, bottom, top):
        self.k = float(self.param_str or 1)
        self.setup_phase = self.phase

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.k

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.k


class LearnedScale(caffe.Layer):
    """top = bottom * w with a learnable per-channel w (a parameter blob added in setup)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(bottom[0].shape[1])
        self.blobs[0].data[...] = 2.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data[None, :]

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += np.sum(top[0].diff * bottom[0].data, axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data[None, :]


class Broken(caffe.Layer):
    def setup(self, bottom, top):
        raise ValueError("bad param_str")


class TorchNoise(caffe.Layer):
    """top = bottom + small noise drawn from torch's random numbers (a user layer that draws)."""

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        import torch

        top[0].data[...] = bottom[0].data + 0.01 * torch.rand(bottom[0].data.shape).numpy()

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff
