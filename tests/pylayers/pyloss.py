"""A Euclidean loss written as a Python layer, for pycaffe's linreg example net (module 'pyloss')."""

import numpy as np

import caffe


class EuclideanLossLayer(caffe.Layer):
    """loss = sum((a - b)^2) / (2 N); gradients to both inputs."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise ValueError("EuclideanLossLayer needs two inputs")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise ValueError("inputs must have the same count")
        self.residual = np.zeros_like(bottom[0].data)
        top[0].reshape()

    def forward(self, bottom, top):
        self.residual[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.residual**2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = sign * self.residual * top[0].diff / bottom[i].num
