"""Tongcheng/caffe's DenseBlock (senlinuc/caffe_ocr's DenseNet text recognisers).

Independent truth: the same block written out with BVLC layers (BatchNorm with the stored statistics, Scale,
ReLU, Convolution with each kernel turned half a turn in NumPy, Concat), one output value by the fork's own
convolution formula, the statistics' update by hand, and finite differences in TRAIN.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from gradcheck import check_gradient, layer_net, run_layer, set_inputs

import caffe
from caffe.errors import LayerError
from caffe.proto import caffe_pb2 as pb

RNG = np.random.default_rng(17)


def block(n: int, g: int, bc: bool = False, extra: str = "") -> str:
    return (
        f'type: "DenseBlock" bottom: "x" top: "y" denseblock_param {{ numTransition: {n} initChannel: 99 '
        f'growthRate: {g} use_BC: {str(bc).lower()} Filter_Filler {{ type: "gaussian" std: 0.3 }} '
        f'BN_Scaler_Filler {{ type: "uniform" min: 0.5 max: 1.5 }} '
        f'BN_Bias_Filler {{ type: "uniform" min: -0.2 max: 0.2 }} '
        f"{extra} }}"
    )


def randomize_statistics(net: caffe.Net, n: int, bc: bool) -> None:
    blobs = net.params["layer"]
    for first in (3 * n, 8 * n) if bc else (3 * n,):
        for i in range(n):
            blobs[first + i].data[...] = RNG.normal(0, 0.5, blobs[first + i].data.shape)
            blobs[first + n + i].data[...] = RNG.uniform(0.5, 2, blobs[first + n + i].data.shape)


def bvlc_block(x: np.ndarray, blobs: list[np.ndarray], n: int, g: int, bc: bool) -> np.ndarray:
    """The block as a BVLC net: BatchNorm (stored statistics, eps 1e-5) + Scale + ReLU + Convolution + Concat."""
    dims = " ".join(f"dim: {d}" for d in x.shape)
    layers = [f'layer {{ name: "in" type: "Input" top: "f0" input_param {{ shape {{ {dims} }} }} }}']
    values: dict[str, list[np.ndarray]] = {}

    def bn_relu(name: str, bottom: str, first: int, i: int) -> str:
        layers.append(
            f'layer {{ name: "{name}_bn" type: "BatchNorm" bottom: "{bottom}" top: "{name}_bn" '
            "batch_norm_param { use_global_stats: true eps: 1e-5 } }"
        )
        layers.append(
            f'layer {{ name: "{name}_sc" type: "Scale" bottom: "{name}_bn" top: "{name}_bn" '
            "scale_param { bias_term: true } }"
        )
        layers.append(f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}_bn" top: "{name}_bn" }}')
        values[f"{name}_bn"] = [blobs[first + 2 * n + i].ravel(), blobs[first + 3 * n + i].ravel(), np.ones(1)]
        values[f"{name}_sc"] = [blobs[first + i].ravel(), blobs[first + n + i].ravel()]
        return f"{name}_bn"

    features = "f0"
    for i in range(n):
        y = bn_relu(f"t{i}", features, n, i)
        if bc:
            layers.append(
                f'layer {{ name: "t{i}_c1" type: "Convolution" bottom: "{y}" top: "t{i}_c1" '
                f"convolution_param {{ num_output: {4 * g} kernel_size: 1 bias_term: false }} }}"
            )
            values[f"t{i}_c1"] = [blobs[5 * n + i]]
            y = bn_relu(f"t{i}b", f"t{i}_c1", 6 * n, i)
        layers.append(
            f'layer {{ name: "t{i}_c3" type: "Convolution" bottom: "{y}" top: "t{i}_c3" '
            f"convolution_param {{ num_output: {g} kernel_size: 3 pad: 1 bias_term: false }} }}"
        )
        values[f"t{i}_c3"] = [blobs[i][:, :, ::-1, ::-1]]  # the fork's kernels are convolved, not correlated
        layers.append(
            f'layer {{ name: "cat{i}" type: "Concat" bottom: "{features}" bottom: "t{i}_c3" top: "f{i + 1}" }}'
        )
        features = f"f{i + 1}"
    param = pb.NetParameter()
    text_format.Parse("\n".join(layers), param)
    net = caffe.Net(param, caffe.TEST, dtype=torch.float64)
    for name, arrays in values.items():
        for blob, value in zip(net.params[name], arrays, strict=True):
            blob.data[...] = value.reshape(blob.data.shape)
    return net.forward(f0=x)[features].copy()


def test_field_is_moved_off_bvlc_swish_param():
    fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    assert fields["swish_param"].number == 147 and fields["denseblock_param"].number == 3147


@pytest.mark.parametrize("bc", [False, True])
def test_test_phase_equals_the_block_written_with_bvlc_layers(bc: bool):
    n, g = 3, 2
    x = RNG.normal(0, 1, (2, 4, 5, 6))
    net = layer_net(block(n, g, bc), {"x": x.shape}, phase=caffe.TEST)
    randomize_statistics(net, n, bc)
    set_inputs(net, {"x": x})
    y = net.forward()["y"]
    blobs = [b.data.copy() for b in net.params["layer"]]
    assert len(blobs) == (10 if bc else 5) * n + 1 and y.shape == (2, 4 + n * g, 5, 6)
    assert blobs[0].shape == ((g, 4 * g, 3, 3) if bc else (g, 4, 3, 3)) and blobs[n].shape == (1, 4, 1, 1)
    np.testing.assert_allclose(y, bvlc_block(x, blobs, n, g, bc), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(y[:, :4], x)  # the bottom comes first, unchanged


def test_one_value_by_the_forks_convolution_formula():
    x = RNG.normal(0, 1, (1, 2, 4, 4))
    net = run_layer(block(1, 1), {"x": x}, caffe.TEST)
    w, scale, bias, mean, var = (b.data for b in net.params["layer"][:5])
    a = np.maximum(scale * (x - mean) / np.sqrt(var + 1e-5) + bias, 0)[0]
    h, col = 1, 2
    expected = sum(  # output(h, w) += W[fx, fy] * in(h + 1 - fx, w + 1 - fy), zero outside
        w[0, c, fx, fy] * a[c, h + 1 - fx, col + 1 - fy] for c in range(2) for fx in range(3) for fy in range(3)
    )
    assert net.blobs["y"].data[0, 2, h, col] == pytest.approx(expected, rel=1e-10)


def test_train_uses_batch_statistics_and_moves_the_stored_ones():
    n, g = 2, 2
    x = RNG.normal(1, 2, (3, 3, 4, 5))
    net = layer_net(block(n, g, extra="moving_average_fraction: 0.25"), {"x": x.shape}, phase=caffe.TRAIN)
    randomize_statistics(net, n, False)
    before = [b.data.copy() for b in net.params["layer"]]
    set_inputs(net, {"x": x})
    y = net.forward()["y"]
    scale, bias = before[n].reshape(-1), before[2 * n].reshape(-1)
    batch_mean, batch_var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    normalized = (x - batch_mean[:, None, None]) / np.sqrt(batch_var[:, None, None] + 1e-5)
    first = np.maximum(scale[:, None, None] * normalized + bias[:, None, None], 0)
    unbiased = batch_var * x[:, 0].size / (x[:, 0].size - 1)
    after = net.params["layer"]
    np.testing.assert_allclose(after[3 * n].data.ravel(), 0.75 * before[3 * n].ravel() + 0.25 * batch_mean, rtol=1e-10)
    np.testing.assert_allclose(after[4 * n].data.ravel(), 0.75 * before[4 * n].ravel() + 0.25 * unbiased, rtol=1e-10)
    conv = fork_convolution(first, before[0])
    np.testing.assert_allclose(y[:, 3 : 3 + g], conv, rtol=1e-9, atol=1e-12)


def fork_convolution(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The fork's convolution of (N, C, H, W) ``a`` with (G, C, 3, 3) ``w``, padding 1, by its formula."""
    padded = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((a.shape[0], w.shape[0], a.shape[2], a.shape[3]))
    for fx in range(3):
        for fy in range(3):  # in(h + 1 - fx) is padded[h + 2 - fx]
            window = padded[:, :, 2 - fx : 2 - fx + a.shape[2], 2 - fy : 2 - fy + a.shape[3]]
            out += np.einsum("nchw,gc->nghw", window, w[:, :, fx, fy])
    return out


def test_train_gradient_and_the_statistics_are_never_learned():
    net = layer_net(block(2, 2, True), {"x": (2, 3, 3, 4)}, phase=caffe.TRAIN)
    specs = net.layer_dict["layer"].layer_param.param
    n = 2
    frozen = {i for i, s in enumerate(specs) if s.lr_mult == 0 and s.decay_mult == 0}
    assert frozen == {*range(3 * n, 5 * n), *range(8 * n, 10 * n), 10 * n}
    check_gradient(net, {"x": RNG.normal(0, 1, (2, 3, 3, 4))}, max_elements=60, threshold=1e-4)


def test_bad_parameters_are_named():
    with pytest.raises(LayerError, match="numTransition"):
        layer_net(block(0, 2), {"x": (1, 2, 3, 3)})
    with pytest.raises(caffe.errors.ShapeError, match=r"\(N, C, H, W\) bottom"):
        layer_net(block(1, 2), {"x": (1, 2, 3)})
