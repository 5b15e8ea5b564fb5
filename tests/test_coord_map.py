"""caffe.coord_map: maps through Convolution/Pooling/Deconvolution/Crop against hand-computed offsets,
and crops checked on real forwards."""

from __future__ import annotations

import numpy as np
import pytest

import caffe
from caffe import coord_map as cm
from caffe.net_spec import layers as L
from caffe.net_spec import params as P


def fcn_like() -> caffe.NetSpec:
    """FCN-32s in miniature: padded conv/pool stack, 1x1 score, x4 deconvolution back to the input."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 64, 64]))
    n.conv1 = L.Convolution(n.data, num_output=2, kernel_size=3, pad=100)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, num_output=2, kernel_size=3, pad=1)
    n.pool2 = L.Pooling(n.conv2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.score = L.Convolution(n.pool2, num_output=3, kernel_size=1)
    n.upscore = L.Deconvolution(n.score, convolution_param=dict(num_output=3, kernel_size=8, stride=4, bias_term=False))
    return n


def test_fcn_crop_offset_is_the_hand_computed_one():
    # data x -> conv1 (k3 p100): x + 99 -> pool1 (k2 s2): (x + 99)/2 - 1/4 -> conv2 (k3 p1): same
    # -> pool2: (x + 99)/4 - 3/8 -> score (k1): same -> upscore (k8 s4): 4 ((x + 99)/4 - 3/8) + 7/2 = x + 101
    n = fcn_like()
    axis, a, b = cm.coord_map_from_to(n.upscore, n.data)
    assert axis == 1 and np.all(a == 1) and np.all(b == -101)
    axis, a, b = cm.coord_map_from_to(n.data, n.upscore)
    assert axis == 1 and np.all(a == 1) and np.all(b == 101)
    n.crop = cm.crop(n.upscore, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["upscore", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [101]
    net = caffe.Net(n.to_proto(), caffe.TEST)
    assert net.blobs["upscore"].data.shape == (1, 3, 268, 268)  # (66 - 1) * 4 + 8
    assert net.blobs["crop"].data.shape == (1, 3, 64, 64)


def delta_weights(net: caffe.Net, name: str) -> None:
    """A 3x3 kernel that is 1 at its centre: output pixel = the input pixel under the kernel's centre."""
    w = net.params[name][0].data
    w[...] = 0
    w[:, :, 1, 1] = 1
    if len(net.params[name]) > 1:
        net.params[name][1].data[...] = 0


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_crop_aligns_pixels_in_a_forward(kind: str):
    """Centre-tap kernels move no pixel, so the crop that coord_map computes must undo the border exactly."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 9, 9]))
    n.filt = getattr(L, kind)(n.data, num_output=1, kernel_size=3)
    small, big = ("filt", "data") if kind == "Convolution" else ("data", "filt")
    n.crop = cm.crop(n[big], n[small])
    assert list(n.to_proto().layer[-1].crop_param.offset) == [1]
    net = caffe.Net(n.to_proto(), caffe.TEST)
    delta_weights(net, "filt")
    x = np.random.default_rng(0).standard_normal((1, 1, 9, 9)).astype(np.float32)
    out = net.forward(data=x)
    np.testing.assert_array_equal(out["crop"], net.blobs[small].data)


def test_rectangular_dilated_and_legacy_parameters():
    data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    rect = L.Convolution(data, num_output=1, kernel_size=[3, 5], stride=[1, 2], pad=[0, 1])
    axis, a, b = cm.coord_map(rect.fn)
    assert axis == 1
    np.testing.assert_array_equal(a, [1, 0.5])
    np.testing.assert_array_equal(b, [-1, -0.5])  # (pad - (k - 1)/2) / stride
    dilated = L.Convolution(data, num_output=1, kernel_size=3, dilation=2)
    assert np.all(cm.coord_map(dilated.fn)[2] == -2)  # effective kernel 5
    legacy = L.Convolution(data, num_output=1, kernel_h=3, kernel_w=5, pad_h=1)
    np.testing.assert_array_equal(cm.coord_map(legacy.fn)[2], [0, -2])
    pool = L.Pooling(data, pooling_param=dict(kernel_size=3, stride=2, pad=1))
    axis, a, b = cm.coord_map(pool.fn)
    assert (axis, float(a[0]), float(b[0])) == (1, 0.5, 0.0)
    deconv = L.Deconvolution(data, convolution_param=dict(num_output=1, kernel_size=4, stride=2, pad=1))
    axis, a, b = cm.coord_map(deconv.fn)
    assert (axis, float(a[0]), float(b[0])) == (1, 2.0, 0.5)


def test_pass_through_layers_and_crop_of_crop():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.aux1 = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.aux2 = L.Input(shape=dict(dim=[1, 1, 12, 12]))
    n.bn = L.BatchNorm(n.data)
    n.act = L.ReLU(n.bn)
    n.crop1 = L.Crop(n.act, n.aux1, crop_param=dict(axis=2, offset=[2]))
    n.crop2 = L.Crop(n.crop1, n.aux2, offset=[1, 3])
    axis, a, b = cm.coord_map_from_to(n.crop2, n.data)
    assert axis == 1 and np.all(a == 1)
    np.testing.assert_array_equal(b, [3, 5])
    assert cm.coord_map_from_to(n.act, n.data) == (None, 1, 0)


def test_compose_and_inverse():
    axis, a, b = cm.compose((1, np.array([2.0]), np.array([1.0])), (None, 1, 0.5))
    assert (axis, float(a[0]), float(b[0])) == (1, 2.0, 2.0)  # 2 (x + 0.5) + 1
    axis, a, b = cm.inverse((1, np.array([4.0]), np.array([2.0])))
    assert (axis, float(a[0]), float(b[0])) == (1, 0.25, -0.5)
    with pytest.raises(cm.AxisMismatchException):
        cm.compose((1, 1, 0), (2, 1, 0))


def test_errors():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.other = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.pool = L.Pooling(n.data, kernel_size=2, stride=2)
    n.padded = L.Convolution(n.data, num_output=1, kernel_size=3, pad=2)
    n.even = L.Convolution(n.data, num_output=1, kernel_size=2)
    with pytest.raises(RuntimeError, match="Could not compute map between tops"):
        cm.coord_map_from_to(n.pool, n.other)
    with pytest.raises(AssertionError, match="scale mismatch"):
        cm.crop(n.data, n.pool)
    with pytest.raises(AssertionError, match="cannot crop negative offset"):
        cm.crop(n.data, n.padded)
    with pytest.raises(AssertionError, match="cannot crop noninteger offset"):
        cm.crop(n.data, n.even)
    with pytest.raises(cm.UndefinedMapException, match="InnerProduct"):
        cm.coord_map(L.InnerProduct(n.data, num_output=2).fn)
    with pytest.raises(cm.UndefinedMapException, match="global pooling"):
        cm.coord_map(L.Pooling(n.data, global_pooling=True).fn)
