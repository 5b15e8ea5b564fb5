"""Neuron layers: forward against NumPy formulas from Caffe's definitions, Caffe's gradients
(finite differences in float64, and exact values at the kinks), in-place use, Dropout, bad parameters."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.proto import caffe_pb2 as pb

SHAPE = (2, 3, 4, 5)


def normal(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def positive_argument(shift=0.0, scale=1.0, lo=0.5, hi=2.0):
    """x such that shift + scale * x lies in [lo, hi] (Log, fractional powers)."""

    def gen(shape=SHAPE, seed=0):
        u = np.random.default_rng(seed).uniform(lo, hi, shape)
        return (u - shift) / scale

    return gen


def away_from(points, margin=0.02, base=normal):
    """Normal data moved at least ``margin`` away from each kink in ``points``."""

    def gen(shape=SHAPE, seed=0):
        x = base(shape, seed)
        for p in points:
            near = np.abs(x - p) < margin
            x[near] = p + np.where(x[near] >= p, 2 * margin, -2 * margin)
        return x

    return gen


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def net_for(text, shape=SHAPE, phase=caffe.TEST, dtype=torch.float64, top="y"):
    return layer_net(f'{text} bottom: "x" top: "{top}"', {"x": shape}, phase=phase, dtype=dtype)


def forward(net, x, top="y"):
    set_inputs(net, {"x": x})
    net.forward()
    return net.blobs[top].data.copy()


def backward(net, x, dy, top="y"):
    forward(net, x, top)
    return net.backward(**{top: dy})["x"].copy()


# (id, layer text, NumPy forward, input generator, kink for the gradient check)
Case = tuple[str, str, Callable[[np.ndarray], np.ndarray], Callable[..., np.ndarray], float | None]
CASES: list[Case] = [
    ("relu", 'type: "ReLU"', lambda x: np.maximum(x, 0), normal, 0.0),
    (
        "relu_leaky",
        'type: "ReLU" relu_param { negative_slope: 0.3 }',
        lambda x: np.maximum(x, 0) + np.float32(0.3) * np.minimum(x, 0),
        normal,
        0.0,
    ),
    (
        "elu",
        'type: "ELU" elu_param { alpha: 0.5 }',
        lambda x: np.maximum(x, 0) + 0.5 * (np.exp(np.minimum(x, 0)) - 1),
        normal,
        0.0,
    ),
    ("elu_default", 'type: "ELU"', lambda x: np.where(x > 0, x, np.exp(x) - 1), normal, None),
    ("sigmoid", 'type: "Sigmoid"', sigmoid, normal, None),
    ("tanh", 'type: "TanH"', np.tanh, normal, None),
    ("absval", 'type: "AbsVal"', np.abs, normal, 0.0),
    ("bnll", 'type: "BNLL"', lambda x: np.logaddexp(0.0, x), lambda shape=SHAPE, seed=0: 4 * normal(shape, seed), None),
    (
        "threshold",
        'type: "Threshold" threshold_param { threshold: 0.25 }',
        lambda x: (x > 0.25).astype(x.dtype),
        normal,
        0.25,
    ),
    (
        "clip",
        'type: "Clip" clip_param { min: -0.5 max: 0.75 }',
        lambda x: np.clip(x, -0.5, 0.75),
        away_from([-0.5, 0.75]),
        None,
    ),
    ("swish", 'type: "Swish"', lambda x: x * sigmoid(x), normal, None),
    ("swish_beta", 'type: "Swish" swish_param { beta: 1.5 }', lambda x: x * sigmoid(1.5 * x), normal, None),
    ("swish_linear", 'type: "Swish" swish_param { beta: 0 }', lambda x: x / 2, normal, None),
    ("power_identity", 'type: "Power"', lambda x: x, normal, None),
    (
        "power_square",
        'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
        lambda x: (1 + 0.5 * x) ** 2,
        normal,
        None,
    ),
    (
        "power_linear",
        'type: "Power" power_param { power: 1 scale: -2 shift: 0.5 }',
        lambda x: 0.5 - 2 * x,
        normal,
        None,
    ),
    ("power_cube_noshift", 'type: "Power" power_param { power: 3 }', lambda x: x**3, normal, None),
    (
        "power_fractional",
        'type: "Power" power_param { power: 0.375 scale: 0.75 shift: 2.5 }',
        lambda x: (2.5 + 0.75 * x) ** 0.375,
        positive_argument(2.5, 0.75),
        None,
    ),
    (
        "power_negative",
        'type: "Power" power_param { power: -1.5 }',
        lambda x: x**-1.5,
        positive_argument(),
        None,
    ),
    (
        "power_zero",
        'type: "Power" power_param { power: 0 scale: 3 shift: 2 }',
        lambda x: np.ones_like(x),
        normal,
        None,
    ),
    (
        "power_scale_zero",
        'type: "Power" power_param { power: 3 scale: 0 shift: 2 }',
        lambda x: np.full_like(x, 8.0),
        normal,
        None,
    ),
    ("exp", 'type: "Exp"', np.exp, normal, None),
    ("exp_shift", 'type: "Exp" exp_param { shift: 1 }', lambda x: np.exp(1 + x), normal, None),
    ("exp_base2", 'type: "Exp" exp_param { base: 2 }', lambda x: 2.0**x, normal, None),
    (
        "exp_base2_shift1_scale3",
        'type: "Exp" exp_param { base: 2 shift: 1 scale: 3 }',
        lambda x: 2.0 ** (1 + 3 * x),
        normal,
        None,
    ),
    ("exp_base_half", 'type: "Exp" exp_param { base: 0.5 scale: -1 }', lambda x: 0.5**-x, normal, None),
    ("log", 'type: "Log"', np.log, positive_argument(), None),
    ("log_base2", 'type: "Log" log_param { base: 2 }', np.log2, positive_argument(), None),
    (
        "log_base2_shift1_scale3",
        'type: "Log" log_param { base: 2 shift: 1 scale: 3 }',
        lambda x: np.log2(1 + 3 * x),
        positive_argument(1, 3),
        None,
    ),
    (
        "log_base10_scale_negative",
        'type: "Log" log_param { base: 10 shift: 2 scale: -0.5 }',
        lambda x: np.log10(2 - 0.5 * x),
        positive_argument(2, -0.5),
        None,
    ),
    ("dropout_test", 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }', lambda x: x, normal, None),
]
IDS = [c[0] for c in CASES]


def test_every_neuron_type_is_registered():
    expected = {
        "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log", "BNLL",
        "Threshold", "Clip", "Swish", "Dropout",
    }  # fmt: skip
    assert expected <= set(caffe.layer_type_list())


@pytest.mark.parametrize(("text", "ref", "gen"), [c[1:4] for c in CASES], ids=IDS)
def test_forward_matches_caffe_formula(text, ref, gen):
    x = gen()
    net = net_for(text)
    np.testing.assert_allclose(forward(net, x), ref(x), rtol=1e-12, atol=1e-14)
    assert net.blobs["y"].shape == SHAPE


@pytest.mark.parametrize(("text", "gen", "kink"), [(c[1], c[3], c[4]) for c in CASES], ids=IDS)
def test_gradient(text, gen, kink):
    net = net_for(text)
    check_gradient(net, {"x": gen()}, kink=kink, kink_range=0.01 if kink is not None else -1.0)


# ---------------------------------------------------------------------------- Caffe's values at kinks
@pytest.mark.parametrize(
    ("text", "x", "dx"),
    [
        ('type: "ReLU"', [-1.0, 0.0, 2.0], [0.0, 0.0, 1.0]),
        ('type: "ReLU" relu_param { negative_slope: 0.25 }', [-1.0, 0.0, 2.0], [0.25, 0.25, 1.0]),
        ('type: "ELU" elu_param { alpha: 0.5 }', [-1.0, 0.0, 2.0], [0.5 * math.exp(-1), 0.5, 1.0]),
        ('type: "ELU" elu_param { alpha: 0 }', [-1.0, 0.0, 2.0], [0.0, 0.0, 1.0]),
        ('type: "AbsVal"', [-2.0, 0.0, 3.0], [-1.0, 0.0, 1.0]),
        ('type: "Clip" clip_param { min: -1 max: 1 }', [-2.0, -1.0, 0.0, 1.0, 2.0], [0.0, 1.0, 1.0, 1.0, 0.0]),
        ('type: "Clip" clip_param { min: 1 max: -1 }', [-2.0, 0.0, 2.0], [0.0, 0.0, 0.0]),
        ('type: "BNLL"', [0.0, 60.0, -1000.0, 1000.0], [0.5, 1.0, 0.0, 1.0]),
        ('type: "Threshold"', [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]),
        ('type: "Power" power_param { power: 0 }', [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]),
        ('type: "Power" power_param { power: 3 }', [-1.0, 0.0, 2.0], [3.0, 0.0, 12.0]),
        ('type: "Power" power_param { power: 1 scale: 3 }', [-1.0, 0.0, 2.0], [3.0, 3.0, 3.0]),
    ],
    ids=[
        "relu",
        "relu_leaky",
        "elu",
        "elu_alpha0",
        "absval",
        "clip_closed",
        "clip_min_gt_max",
        "bnll",
        "threshold",
        "power0",
        "power3_at_0",
        "power1",
    ],
)
def test_gradient_at_special_points(text, x, dx):
    x = np.array([x])
    dy = np.full_like(x, 2.0)
    np.testing.assert_allclose(backward(net_for(text, x.shape), x, dy), 2.0 * np.array([dx]), rtol=1e-14)


def test_bnll_is_stable_for_large_inputs():
    x = np.array([[-1000.0, -60.0, 0.0, 60.0, 1000.0]])
    for dtype in (torch.float32, torch.float64):
        y = forward(net_for('type: "BNLL"', x.shape, dtype=dtype), x.astype(np.float32))
        np.testing.assert_allclose(y, [[0.0, math.exp(-60), math.log(2), 60.0, 1000.0]], rtol=1e-6)


def test_sigmoid_saturates_like_caffe_in_float32():
    x = np.array([[-40.0, -1.0, 0.0, 1.0, 40.0]], dtype=np.float32)
    y = forward(net_for('type: "Sigmoid"', x.shape, dtype=torch.float32), x)
    assert y[0, 0] == 0.0 and y[0, -1] == 1.0  # 0.5 * tanh(0.5 x) + 0.5, as Caffe computes it
    np.testing.assert_allclose(y, sigmoid(x.astype(np.float64)), atol=1e-7)


def test_threshold_is_strict():
    x = np.array([[0.49, 0.5, 0.51]])
    y = forward(net_for('type: "Threshold" threshold_param { threshold: 0.5 }', x.shape), x)
    np.testing.assert_array_equal(y, [[0.0, 0.0, 1.0]])


def test_log_of_non_positive_argument_is_nan_not_an_error():
    x = np.array([[-1.0, 0.0, 1.0]])
    with np.errstate(all="ignore"):
        y = forward(net_for('type: "Log"', x.shape), x)
    assert np.isnan(y[0, 0]) and y[0, 1] == -np.inf and y[0, 2] == 0.0


def test_power_of_negative_base_with_fractional_power_is_nan():
    x = np.array([[-4.0, 4.0]])
    y = forward(net_for('type: "Power" power_param { power: 0.5 }', x.shape), x)
    assert np.isnan(y[0, 0]) and y[0, 1] == 2.0


def test_constant_top_overwrites_stale_bottom_diff():
    net = net_for('type: "Power" power_param { power: 0 }', (1, 3))
    forward(net, np.ones((1, 3)))
    net.blobs["x"].diff[...] = 7.0
    np.testing.assert_array_equal(net.backward(y=np.ones((1, 3)))["x"], 0.0)


# ---------------------------------------------------------------------------- PReLU
def prelu_ref(x, slopes):
    a = np.asarray(slopes).reshape((1, -1) + (1,) * (x.ndim - 2)) if np.size(slopes) > 1 else slopes
    return np.maximum(x, 0) + a * np.minimum(x, 0)


def test_prelu_default_slope_and_blob_shapes():
    net = net_for('name: "p" type: "PReLU"')
    assert net.params["p"][0].shape == (3,)
    np.testing.assert_array_equal(net.params["p"][0].data, np.float64(np.float32(0.25)))
    shared = net_for('name: "p" type: "PReLU" prelu_param { channel_shared: true }')
    assert shared.params["p"][0].shape == ()
    filled = net_for('name: "p" type: "PReLU" prelu_param { filler { type: "constant" value: 0.5 } }')
    np.testing.assert_array_equal(filled.params["p"][0].data, 0.5)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_forward_and_gradient(shared):
    text = (
        f'name: "p" type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} '
        'filler { type: "gaussian" std: 0.5 } }'
    )
    net = net_for(text)
    x = normal()
    slopes = net.params["p"][0].data.copy()
    np.testing.assert_allclose(forward(net, x), prelu_ref(x, slopes), rtol=1e-14)
    check_gradient(net, {"x": x}, kink=0.0, kink_range=0.01)  # bottom and slope


def test_prelu_on_two_axes():
    x = normal((4, 3))
    net = net_for('name: "p" type: "PReLU" prelu_param { filler { type: "uniform" min: 0.1 max: 0.9 } }', x.shape)
    np.testing.assert_allclose(forward(net, x), prelu_ref(x, net.params["p"][0].data), rtol=1e-14)
    check_gradient(net, {"x": x}, kink=0.0, kink_range=0.01)


def test_prelu_gradients_at_zero_follow_caffe():
    x = np.array([[[-2.0, 0.0, 3.0]], [[0.0, -1.0, 0.0]]])  # shape (2, 1, 3)
    net = net_for('name: "p" type: "PReLU" prelu_param { filler { type: "constant" value: 0.2 } }', x.shape)
    dy = np.arange(1.0, 7.0).reshape(x.shape)
    dx = backward(net, x, dy)
    np.testing.assert_allclose(dx, dy * np.where(x > 0, 1.0, np.float32(0.2)), rtol=1e-14)
    np.testing.assert_allclose(net.params["p"][0].diff, [np.sum(dy * x * (x <= 0))], rtol=1e-14)


def test_prelu_matches_leaky_relu():
    x = normal()
    dy = normal(seed=1)
    prelu = net_for('type: "PReLU"')
    relu = net_for('type: "ReLU" relu_param { negative_slope: 0.25 }')
    np.testing.assert_allclose(forward(prelu, x), forward(relu, x), rtol=1e-14)
    np.testing.assert_allclose(backward(prelu, x, dy), backward(relu, x, dy), rtol=1e-14)


def test_prelu_inline_slopes_keep_their_shape():
    net = net_for('name: "p" type: "PReLU" blobs { shape { dim: 3 } data: 0.1 data: 0.2 data: 0.3 }')
    np.testing.assert_allclose(net.params["p"][0].data, [0.1, 0.2, 0.3], rtol=1e-7)
    shared = net_for(
        'name: "p" type: "PReLU" prelu_param { channel_shared: true } blobs { shape { dim: 1 } data: 0.5 }'
    )
    assert shared.params["p"][0].shape == (1,)  # Caffe only checks the count
    x = normal()
    np.testing.assert_allclose(forward(shared, x), prelu_ref(x, 0.5), rtol=1e-14)


# ---------------------------------------------------------------------------- Dropout
def dropout_net(ratio=None, shape=SHAPE, phase=caffe.TRAIN):
    param = f"dropout_param {{ dropout_ratio: {ratio} }}" if ratio is not None else ""
    return net_for(f'type: "Dropout" {param}', shape, phase=phase)


def reseed_before_dropout(net, seed=5):
    """Caffe's GradientChecker reseeds before every forward, so each one draws the same mask."""
    last = len(net.layers) - 1
    net.before_forward(lambda i: caffe.set_random_seed(seed) if i == last else None)


@pytest.mark.parametrize(("ratio", "scale"), [(None, 2.0), (0.3, 1 / (1 - float(np.float32(0.3)))), (0.75, 4.0)])
def test_dropout_train_scales_kept_values_and_reuses_the_mask(ratio, scale):
    net = dropout_net(ratio, (100, 100))
    p = 0.5 if ratio is None else ratio
    x = np.ones((100, 100))
    caffe.set_random_seed(1701)
    y = forward(net, x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], scale, rtol=1e-15)
    assert abs(kept.mean() - (1 - p)) < 0.02
    dy = normal((100, 100))
    dx = net.backward(y=dy)["x"]
    np.testing.assert_allclose(dx, dy * kept * scale, rtol=1e-15)


def test_dropout_masks_follow_the_seed():
    net = dropout_net(0.5, (50, 50))
    x = np.ones((50, 50))
    caffe.set_random_seed(3)
    a = forward(net, x)
    b = forward(net, x)
    caffe.set_random_seed(3)
    c = forward(net, x)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_dropout_train_gradient():
    net = dropout_net(0.4)
    reseed_before_dropout(net)
    check_gradient(net, {"x": normal()})


def test_dropout_ratio_zero_is_identity_in_train():
    x = normal()
    np.testing.assert_array_equal(forward(dropout_net(0), x), x)


def test_dropout_test_phase_is_identity():
    x, dy = normal(), normal(seed=1)
    net = dropout_net(0.5, phase=caffe.TEST)
    np.testing.assert_array_equal(forward(net, x), x)
    np.testing.assert_array_equal(net.backward(y=dy)["x"], dy)


# ---------------------------------------------------------------------------- in place
INPLACE_CASES = [(c[1], c[3]) for c in CASES] + [
    ('type: "PReLU" prelu_param { filler { type: "gaussian" std: 0.5 } }', normal),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.4 } phase: TRAIN', normal),
]


@pytest.mark.parametrize(("text", "gen"), INPLACE_CASES, ids=[*IDS, "prelu", "dropout_train"])
def test_in_place_matches_separate_top(text, gen):
    """Input -> Power (doubles x) -> the layer, writing its input blob or a new one."""
    x = gen() / 2
    dy = normal(seed=1)
    results = []
    for top in ("h", "out"):
        text_net = (
            'force_backward: true layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 '
            'dim: 4 dim: 5 } } } layer { name: "double" type: "Power" bottom: "x" top: "h" power_param { scale: 2 } } '
            f'layer {{ name: "n" {text} bottom: "h" top: "{top}" }}'
        )
        param = text_format.Parse(text_net, pb.NetParameter())
        caffe.set_random_seed(11)  # the same slopes (PReLU filler) and masks (Dropout) in both nets
        net = caffe.Net(param, caffe.TRAIN if "TRAIN" in text else caffe.TEST, dtype=torch.float64)
        with np.errstate(all="ignore"):
            y = net.forward(x=x)[top].copy()
        dx = net.backward(**{top: dy})["x"].copy()
        pdiff = [b.diff.copy() for b in net.layers[-1].blobs]
        results.append((y, dx, pdiff))
    (y1, dx1, p1), (y2, dx2, p2) = results
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- bad parameters
@pytest.mark.parametrize(
    ("text", "shape", "message"),
    [
        ('type: "Clip" clip_param { min: -1 }', SHAPE, "clip_param.max is required"),
        ('type: "Clip" clip_param { max: 1 }', SHAPE, "clip_param.min is required"),
        ('type: "Clip"', SHAPE, "clip_param.min and clip_param.max"),
        ('type: "PReLU"', (7,), "at least 2 axes"),
        ('type: "PReLU" blobs { shape { dim: 2 } data: 1 data: 2 }', SHAPE, "negative slope size is inconsistent"),
        (
            'type: "PReLU" prelu_param { channel_shared: true } blobs { shape { dim: 3 } data: 1 data: 2 data: 3 }',
            SHAPE,
            "expected 1 (channel_shared)",
        ),
        ('type: "Dropout" dropout_param { dropout_ratio: 1 }', SHAPE, "dropout_ratio must be in [0, 1), got 1"),
        ('type: "Dropout" dropout_param { dropout_ratio: 1.5 }', SHAPE, "dropout_ratio must be in [0, 1)"),
        ('type: "Dropout" dropout_param { dropout_ratio: -0.1 }', SHAPE, "dropout_ratio must be in [0, 1)"),
        ('type: "Exp" exp_param { base: 0 }', SHAPE, "exp_param.base must be strictly positive"),
        ('type: "Exp" exp_param { base: -2 }', SHAPE, "exp_param.base must be strictly positive"),
        ('type: "Exp" exp_param { base: inf }', SHAPE, "non-finite log(base)"),
        ('type: "Log" log_param { base: -0.5 }', SHAPE, "log_param.base must be strictly positive"),
        ('type: "Log" log_param { base: 1 }', SHAPE, "log_param.base 1"),
    ],
    ids=[
        "clip_no_max",
        "clip_no_min",
        "clip_neither",
        "prelu_1_axis",
        "prelu_blob_count",
        "prelu_shared_blob_count",
        "dropout_1",
        "dropout_above_1",
        "dropout_negative",
        "exp_base_0",
        "exp_base_negative",
        "exp_base_inf",
        "log_base_negative",
        "log_base_1",
    ],
)
def test_bad_parameters(text, shape, message):
    with pytest.raises(caffe.LayerError, match="layer 'layer'") as info:
        net_for(text, shape)
    assert message in str(info.value)


def test_neuron_layers_take_one_bottom_and_one_top():
    with pytest.raises(caffe.LayerError, match="exactly 1 bottom"):
        layer_net('type: "ReLU" bottom: "a" bottom: "b" top: "y"', {"a": (2,), "b": (2,)})
    with pytest.raises(caffe.LayerError, match="exactly 1 top"):
        layer_net('type: "TanH" bottom: "a" top: "y" top: "z"', {"a": (2,)})


def test_prelu_rejects_a_channel_change_on_reshape():
    net = net_for('type: "PReLU"')
    with pytest.raises(caffe.ShapeError, match="4 channels but the layer learns 3 slopes"):
        forward(net, normal((2, 4, 4, 5)))


def test_reshape_follows_the_bottom():
    net = net_for('type: "Sigmoid"')
    x = normal((3, 2))
    np.testing.assert_allclose(forward(net, x), sigmoid(x), rtol=1e-12)
    assert net.blobs["y"].shape == (3, 2)
