"""Normalization layers (LRN, MVN, BatchNorm) against NumPy versions of Caffe's formulas."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from capture import compiled_without_grad, eager_and_compiled_grads
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.ops.channel_window import channel_window_sum


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _run(net: caffe.Net, x: np.ndarray) -> np.ndarray:
    set_inputs(net, {"x": x})
    net.forward()
    return net.blobs["y"].data.copy()


def _f32(value: float) -> float:
    """A float proto field as the layer reads it."""
    return float(np.float32(value))


# ---------------------------------------------------------------------------- LRN
def _lrn_reference(x: np.ndarray, size: int, alpha: float, beta: float, k: float, across: bool) -> np.ndarray:
    """Caffe's LRN, element by element: windows clipped at the borders, divisor size (or size^2)."""
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    top = np.empty_like(x)
    for i in np.ndindex(n, c, h, w):
        b, ch, r, col = i
        if across:
            window = x[b, max(ch - pre, 0) : min(ch - pre + size, c), r, col]
            scale = k + alpha / size * np.sum(window**2)
        else:  # split/square/AVE pool/power(shift 1)/product: k plays no part
            window = x[b, ch, max(r - pre, 0) : min(r - pre + size, h), max(col - pre, 0) : min(col - pre + size, w)]
            scale = 1.0 + alpha / (size * size) * np.sum(window**2)
        top[i] = x[i] * scale**-beta
    return top


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize(
    ("size", "alpha", "beta", "k", "shape"),
    [
        (5, 1.0, 0.75, 1.0, (2, 7, 4, 5)),
        (3, 2.5, 0.6, 2.0, (2, 7, 4, 5)),
        (7, 3.0, 0.75, 1.5, (1, 3, 2, 3)),  # window wider than the blob
    ],
)
def test_lrn_forward_and_gradient(region, size, alpha, beta, k, shape):
    text = (
        f'type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} '
        f"norm_region: {region} }}"
    )
    net = layer_net(text, {"x": shape})
    x = _rand(*shape)
    expect = _lrn_reference(x, size, _f32(alpha), _f32(beta), _f32(k), region == "ACROSS_CHANNELS")
    np.testing.assert_allclose(_run(net, x), expect, rtol=1e-12, atol=1e-14)
    check_gradient(net, {"x": x}, max_elements=150)


def test_lrn_errors():
    with pytest.raises(caffe.LayerError, match="local_size must be odd, got 4"):
        layer_net('type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 }', {"x": (1, 5, 3, 3)})
    with pytest.raises(caffe.ShapeError, match="4 axes"):
        layer_net('type: "LRN" bottom: "x" top: "y"', {"x": (2, 5, 3)})


# ---------------------------------------------------------------------------- MVN
def _mvn_reference(x: np.ndarray, normalize_variance: bool, across: bool, eps: float) -> np.ndarray:
    shape4 = x.shape + (1,) * (4 - x.ndim)
    rows = x.reshape(shape4[0] if across else shape4[0] * shape4[1], -1)
    centred = rows - rows.mean(axis=1, keepdims=True)
    if normalize_variance:
        centred = centred / (np.sqrt(np.mean(centred**2, axis=1, keepdims=True)) + eps)  # eps after the sqrt
    return centred.reshape(shape4)


def _mvn(normalize_variance: bool = True, across: bool = False, eps: str = "") -> str:
    return (
        f'type: "MVN" bottom: "x" top: "y" mvn_param {{ normalize_variance: {str(normalize_variance).lower()} '
        f"across_channels: {str(across).lower()} {eps} }}"
    )


@pytest.mark.parametrize("normalize_variance", [True, False])
@pytest.mark.parametrize("across", [False, True])
def test_mvn_forward_and_gradient(normalize_variance, across):
    shape = (2, 3, 4, 3)
    net = layer_net(_mvn(normalize_variance, across), {"x": shape})
    x = _rand(*shape) * 2 + 1
    expect = _mvn_reference(x, normalize_variance, across, _f32(1e-9))
    np.testing.assert_allclose(_run(net, x), expect, rtol=1e-12, atol=1e-13)
    check_gradient(net, {"x": x}, max_elements=120)


def test_mvn_eps_is_added_after_the_square_root():
    net = layer_net(_mvn(eps="eps: 0.5"), {"x": (2, 2, 3, 3)})
    x = _rand(2, 2, 3, 3) * 0.3
    y = _run(net, x)
    np.testing.assert_allclose(y, _mvn_reference(x, True, False, 0.5), rtol=1e-12, atol=1e-14)
    centred = x - x.mean(axis=(2, 3), keepdims=True)
    inside = centred / np.sqrt(np.mean(centred**2, axis=(2, 3), keepdims=True) + 0.5)
    assert np.max(np.abs(y - inside)) > 1e-2


def test_mvn_backward_is_caffes():
    """With a large eps Caffe's backward is not the exact derivative; we reproduce Caffe's formula."""
    shape = (2, 2, 3, 4)
    net = layer_net(_mvn(eps="eps: 0.5"), {"x": shape})
    x, g = _rand(*shape), _rand(*shape, seed=3)
    y = _run(net, x)
    net.blobs["y"].diff[...] = g
    net.backward()
    rows_y, rows_g = y.reshape(4, -1), g.reshape(4, -1)
    dim = rows_y.shape[1]
    centred = x.reshape(4, -1) - x.reshape(4, -1).mean(axis=1, keepdims=True)
    denom = np.sqrt(np.mean(centred**2, axis=1, keepdims=True)) + 0.5
    caffe_diff = (
        rows_g - rows_g.sum(1, keepdims=True) / dim - rows_y * (rows_y * rows_g).sum(1, keepdims=True) / dim
    ) / denom
    np.testing.assert_allclose(net.blobs["x"].diff, caffe_diff.reshape(shape), rtol=1e-10, atol=1e-12)


def test_mvn_top_has_caffes_4_axis_shape():
    net = layer_net(_mvn(across=True), {"x": (3, 5)})
    assert net.blobs["y"].shape == (3, 5, 1, 1)
    x = _rand(3, 5)
    np.testing.assert_allclose(_run(net, x), _mvn_reference(x, True, True, _f32(1e-9)), rtol=1e-12)
    with pytest.raises(caffe.ShapeError, match="at most 4 axes"):
        layer_net(_mvn(), {"x": (1, 2, 3, 4, 5)})


# ---------------------------------------------------------------------------- BatchNorm
BN = 'type: "BatchNorm" bottom: "x" top: "y"'
EPS = _f32(1e-5)
MAF = _f32(0.999)


def _bn_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    axes = (0, *range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes)


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape(1, -1, *(1,) * (ndim - 2))


@pytest.mark.parametrize("shape", [(5, 2, 3, 4), (6, 3), (4, 3, 5)])
def test_batch_norm_train_uses_batch_stats_and_updates_blobs(shape):
    net = layer_net(BN, {"x": shape}, phase=caffe.TRAIN)
    blobs = net.layers[-1].blobs
    assert [b.shape for b in blobs] == [(shape[1],), (shape[1],), (1,)]
    m0, v0, s0 = _rand(shape[1], seed=5), np.abs(_rand(shape[1], seed=6)), 3.0
    blobs[0].data[...], blobs[1].data[...], blobs[2].data[...] = m0, v0, s0
    x = _rand(*shape) * 3 + 2
    mean, var = _bn_stats(x)
    y = _run(net, x)
    nd = len(shape)
    np.testing.assert_allclose(y, (x - _per_channel(mean, nd)) / np.sqrt(_per_channel(var, nd) + EPS), rtol=1e-10)
    m = x.size // shape[1]
    np.testing.assert_allclose(blobs[2].data, [MAF * s0 + 1], rtol=1e-14)
    np.testing.assert_allclose(blobs[0].data, MAF * m0 + mean, rtol=1e-12)
    np.testing.assert_allclose(blobs[1].data, MAF * v0 + m / (m - 1) * var, rtol=1e-12)
    # a second pass accumulates again
    x2 = _rand(*shape, seed=9)
    mean2, var2 = _bn_stats(x2)
    _run(net, x2)
    np.testing.assert_allclose(blobs[2].data, [MAF * (MAF * s0 + 1) + 1], rtol=1e-14)
    np.testing.assert_allclose(blobs[0].data, MAF * (MAF * m0 + mean) + mean2, rtol=1e-12)
    np.testing.assert_allclose(blobs[1].data, MAF * (MAF * v0 + m / (m - 1) * var) + m / (m - 1) * var2, rtol=1e-12)


def test_batch_norm_one_value_per_channel():
    net = layer_net(BN + " batch_norm_param { moving_average_fraction: 0.5 }", {"x": (1, 3)}, phase=caffe.TRAIN)
    x = _rand(1, 3)
    np.testing.assert_array_equal(_run(net, x), 0.0)
    blobs = net.layers[-1].blobs
    np.testing.assert_allclose(blobs[0].data, x[0])
    np.testing.assert_array_equal(blobs[1].data, 0.0)  # no m/(m-1) correction when m == 1
    np.testing.assert_array_equal(blobs[2].data, [1.0])
    layer = net.layers[-1]  # its statistics move on again below
    xt = torch.from_numpy(x).requires_grad_()
    (top,) = layer.forward([xt])
    top.backward(torch.ones_like(top))
    np.testing.assert_array_equal(xt.grad.numpy(), 0.0)  # Caffe's (dy - mean dy - mean(dy*y)*y)/std: 0 at m == 1


def test_batch_norm_global_stats_divide_by_the_scale_factor():
    net = layer_net(BN, {"x": (3, 4, 2, 2)}, phase=caffe.TEST)
    blobs = net.layers[-1].blobs
    s = 999.9004983
    mean, var = _rand(4, seed=1), np.abs(_rand(4, seed=2)) + 0.1
    blobs[0].data[...], blobs[1].data[...], blobs[2].data[...] = mean * s, var * s, s
    x = _rand(3, 4, 2, 2)
    expect = (x - _per_channel(mean, 4)) / np.sqrt(_per_channel(var, 4) + EPS)
    np.testing.assert_allclose(_run(net, x), expect, rtol=1e-10)
    np.testing.assert_array_equal(blobs[2].data, [s])  # nothing updated
    # s == 0: Caffe's scale factor is 0, so mean = var = 0
    blobs[2].data[...] = 0.0
    np.testing.assert_allclose(_run(net, x), x / np.sqrt(EPS), rtol=1e-12)


@pytest.mark.parametrize(
    ("phase", "setting", "global_stats"),
    [
        (caffe.TRAIN, "", False),
        (caffe.TEST, "", True),
        (caffe.TRAIN, "use_global_stats: true", True),
        (caffe.TEST, "use_global_stats: false", False),
    ],
)
def test_batch_norm_use_global_stats_default_by_phase(phase, setting, global_stats):
    net = layer_net(f"{BN} batch_norm_param {{ {setting} }}", {"x": (4, 2, 3)}, phase=phase)
    blobs = net.layers[-1].blobs
    blobs[0].data[...], blobs[1].data[...], blobs[2].data[...] = [2.0, -4.0], [8.0, 18.0], 2.0
    x = _rand(4, 2, 3)
    y = _run(net, x)
    if global_stats:
        expect = (x - np.array([1.0, -2.0])[:, None]) / np.sqrt(np.array([4.0, 9.0])[:, None] + EPS)
        np.testing.assert_array_equal(blobs[2].data, [2.0])
    else:
        mean, var = _bn_stats(x)
        expect = (x - mean[:, None]) / np.sqrt(var[:, None] + EPS)
        np.testing.assert_allclose(blobs[2].data, [2.0 * MAF + 1])
    np.testing.assert_allclose(y, expect, rtol=1e-10)


def test_batch_norm_adds_zero_lr_mult_param_specs():
    net = layer_net(BN, {"x": (2, 3)}, phase=caffe.TRAIN, force_backward=False)
    layer = net.layers[-1]
    assert [p.lr_mult for p in layer.layer_param.param] == [0.0, 0.0, 0.0]
    assert net.params_lr == [0.0, 0.0, 0.0]
    assert net.layer_need_backward[-1] is False
    saved = next(lp for lp in net.to_proto().layer if lp.type == "BatchNorm")
    assert [p.lr_mult for p in saved.param] == [0.0, 0.0, 0.0]


def test_batch_norm_nonzero_lr_mult_is_forced_to_zero(caplog):
    text = f"{BN} param {{ lr_mult: 0 }} param {{ lr_mult: 1 }}"
    with caplog.at_level(logging.WARNING, logger="caffe"):
        net = layer_net(text, {"x": (2, 3)}, phase=caffe.TRAIN, force_backward=False)
    assert "lr_mult" in caplog.text and "param 1" in caplog.text
    assert [p.lr_mult for p in net.layers[-1].layer_param.param] == [0.0, 0.0, 0.0]
    assert net.params_lr == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 2)])
def test_batch_norm_batch_stats_gradient(shape):
    net = layer_net(BN, {"x": shape}, phase=caffe.TRAIN)
    check_gradient(net, {"x": _rand(*shape) * 2 + 1}, max_elements=100)
    for blob in net.layers[-1].blobs:  # statistics never receive a gradient
        np.testing.assert_array_equal(blob.diff, 0.0)


def test_batch_norm_global_stats_gradient():
    net = layer_net(BN, {"x": (3, 2, 2, 3)}, phase=caffe.TEST)
    blobs = net.layers[-1].blobs
    blobs[0].data[...], blobs[1].data[...], blobs[2].data[...] = [1.0, -2.0], [3.0, 0.5], 2.0
    # the statistics are constants (Caffe computes no gradient for them)
    check_gradient(net, {"x": _rand(3, 2, 2, 3)}, check_params=False)
    for blob in blobs:
        np.testing.assert_array_equal(blob.diff, 0.0)


def test_batch_norm_errors():
    with pytest.raises(caffe.ShapeError, match="at least 2 axes"):
        layer_net(BN, {"x": (5,)})
    net = layer_net(BN, {"x": (2, 3, 4)})
    net.blobs["x"].reshape(2, 4, 4)
    with pytest.raises(caffe.ShapeError, match="4 channels"):
        net.reshape()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    "text",
    [
        BN,
        'type: "LRN" bottom: "x" top: "y"',
        'type: "LRN" bottom: "x" top: "y" lrn_param { norm_region: WITHIN_CHANNEL }',
        _mvn(),
    ],
)
def test_traceable_in_test_phase(text):
    net = layer_net(text, {"x": (2, 3, 4, 4)}, force_backward=False)
    layer = net.layers[-1]
    for i, blob in enumerate(layer.blobs):
        blob.data[...] = [2.0] if i == 2 else np.arange(1.0, 4.0)
    x = torch.from_numpy(_rand(2, 3, 4, 4))
    with torch.no_grad():
        traced = torch.jit.trace(lambda t: layer.forward([t])[0], (x,))
        torch.testing.assert_close(traced(x * 2), layer.forward([x * 2])[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace: the ONNX exporter's path
@pytest.mark.parametrize(("channels", "pad"), [(7, 2), (5, 1), (3, 3), (1, 2)])
def test_channel_window_sum_traced_and_its_gradient(channels: int, pad: int):
    """LRN's window over channels in plain ops (its traced and compiled form): eager, traced and a sum written
    out agree, and its gradient passes a finite-difference check. (The eager in-place sum is LRN's own, checked
    by test_lrn_forward_and_gradient.)"""
    x = torch.from_numpy(_rand(2, channels, 3, 2))
    expected = torch.stack(
        [x[:, max(c - pad, 0) : c + pad + 1].sum(dim=1) for c in range(channels)], dim=1
    )  # clipped at the ends = zero padded
    torch.testing.assert_close(channel_window_sum(x, pad), expected, rtol=1e-14, atol=0)
    traced = torch.jit.trace(lambda t: channel_window_sum(t, pad), (x,))
    torch.testing.assert_close(traced(x * 3), expected * 3, rtol=1e-14, atol=0)
    assert torch.autograd.gradcheck(lambda t: channel_window_sum(t, pad), (x.clone().requires_grad_(),))


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_captured_lrn_operator_is_caffes_lrn(channels_last: bool):
    """The operator compiled training steps call for LRN across channels (the eager kernels, opaque to inductor):
    Caffe's values (the reference written out) in either input layout, and a gradient passing finite differences."""
    from caffe.ops.channel_window import captured_lrn

    size, alpha, beta, k = 5, 0.3, 0.75, 2.0
    x = torch.from_numpy(_rand(2, 7, 3, 4, seed=4))
    expected = _lrn_reference(x.numpy(), size, alpha, beta, k, across=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(captured_lrn(x, size, alpha, beta, k)[0].numpy(), expected, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda t: captured_lrn(t, size, alpha, beta, k)[0], (x.clone().requires_grad_(),))


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")
def test_compiled_training_runs_lrn_through_the_operator_and_matches_eager():
    """Captured with a gradient, LRN across channels becomes the operator pair (inductor's fused loops for the
    formula and its gradient took 2.5-3.4x as long on CaffeNet's and GoogLeNet's norms); without one, the plain
    formula stays."""
    from caffe.ops.channel_window import lrn_across_channels

    x = torch.from_numpy(_rand(2, 6, 3, 3, seed=5)).float()
    dy = torch.from_numpy(_rand(2, 6, 3, 3, seed=6)).float()
    eager, compiled, forward, backward = eager_and_compiled_grads(
        lambda t: (lrn_across_channels(t * 1.0, 5, 1e-2, 0.75, 1.0) * dy).sum(), x
    )
    assert "caffe.lrn_across_channels" in forward and "caffe.lrn_across_channels_backward" in backward
    assert torch.equal(compiled, eager)  # the same kernels
    top, code = compiled_without_grad(lambda t: lrn_across_channels(t, 5, 1e-2, 0.75, 1.0), x)
    assert "caffe.lrn_across_channels" not in code
    torch.testing.assert_close(top, lrn_across_channels(x, 5, 1e-2, 0.75, 1.0), rtol=1e-6, atol=1e-7)
