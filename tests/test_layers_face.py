"""The face recognition forks' training layers: caffe-face's CenterLoss and SphereFace's MarginInnerProduct.

Values against the papers' formulas computed here in NumPy (A-Softmax's psi from arccos, not the fork's sign
tests); backward passes against the forks' hand-written rules, written out again here element by element,
and against finite differences where the fork's gradient is the true one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.proto import caffe_pb2 as pb

RNG = np.random.default_rng(11)


def run(text: str, values: dict[str, np.ndarray], phase: int = caffe.TRAIN) -> caffe.Net:
    net = layer_net(text, {k: v.shape for k, v in values.items()}, phase=phase)
    set_inputs(net, values)
    net.forward()
    return net


# ------------------------------------------------------------------------------------------- CenterLoss
CENTER = 'type: "CenterLoss" bottom: "x" bottom: "y" top: "loss" center_loss_param { num_output: 4 }'


def test_fields_are_moved_off_bvlc_swish_param():
    fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    assert fields["swish_param"].number == 147  # what both forks' 147 is in BVLC's schema
    assert fields["center_loss_param"].number == 1147
    assert fields["margin_inner_product_param"].number == 2147


def test_center_loss_value_feature_gradient_and_the_forks_center_rule():
    x = RNG.normal(0, 1, (6, 3))
    y = np.array([0, 2, 2, 1, 2, 0], float)
    net = layer_net(CENTER + " loss_weight: 0.5", {"x": x.shape, "y": y.shape})
    centers = RNG.normal(0, 1, (4, 3))
    net.params["layer"][0].data[...] = centers
    set_inputs(net, {"x": x, "y": y})
    net.forward()
    d = x - centers[y.astype(int)]
    np.testing.assert_allclose(net.blobs["loss"].data, (d * d).sum() / 6 / 2, rtol=1e-12)
    net.clear_param_diffs()
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, 0.5 * d / 6, rtol=1e-12)  # scaled by the loss weight
    expected = np.zeros((4, 3))
    for j in range(4):  # the fork's loop: sum over its items of (c_j - x_i), over 1 + their count
        mine = [i for i in range(6) if int(y[i]) == j]
        expected[j] = sum((centers[j] - x[i] for i in mine), np.zeros(3)) / (1 + len(mine))
    np.testing.assert_allclose(net.params["layer"][0].diff, expected, rtol=1e-12)  # not scaled by it
    assert not net.params["layer"][0].diff[3].any()  # class 3 is absent from the batch


def test_center_loss_feature_gradient_is_the_true_one():
    x, y = RNG.normal(0, 1, (5, 2, 2)), np.array([1, 0, 3, 3, 2], float).reshape(5, 1, 1, 1)
    net = layer_net(CENTER, {"x": x.shape, "y": y.shape})
    check_gradient(net, {"x": x, "y": y}, check_bottoms=["x"], check_params=False)


def test_center_loss_centers_move_to_their_class_means_under_the_solver(tmp_path):
    x = np.vstack([RNG.normal(2, 0.1, (4, 3)), RNG.normal(-2, 0.1, (4, 3))])
    y = np.array([0] * 4 + [1] * 4, float)
    net_text = f"""
    layer {{ name: "x" type: "Input" top: "x" top: "y" input_param {{ shape {{ dim: 8 dim: 3 }} shape {{ dim: 8 }} }} }}
    layer {{ name: "c" {CENTER.replace("num_output: 4", "num_output: 2")} }}
    """
    (tmp_path / "net.prototxt").write_text(net_text)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.5 lr_policy: "fixed" max_iter: 100 snapshot_after_train: false'
    )
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    solver.net.blobs["x"].data[...] = x
    solver.net.blobs["y"].data[...] = y
    start = solver.net.params["c"][0].data.copy()
    solver.step(1)
    rule = np.stack([(4 * start[j] - x[y == j].sum(0)) / 5 for j in range(2)])
    np.testing.assert_allclose(solver.net.params["c"][0].data, start - 0.5 * rule, rtol=1e-5)
    solver.step(30)
    means = np.stack([x[y == j].mean(0) for j in range(2)])
    np.testing.assert_allclose(solver.net.params["c"][0].data, means, atol=1e-3)


@pytest.mark.parametrize(
    ("text", "shapes", "match"),
    [
        (CENTER.replace("num_output: 4", ""), {"x": (2, 3), "y": (2,)}, "num_output must be given"),
        (CENTER, {"x": (2, 3), "y": (2, 2)}, r"one label per item.*\(2, 2\)"),
        (CENTER, {"x": (2, 3), "y": (3,)}, "same first dimension"),
    ],
)
def test_center_loss_checks(text, shapes, match):
    with pytest.raises(caffe.CaffeError, match=match):
        layer_net(text, shapes)


def test_center_loss_label_out_of_range_names_the_value():
    with pytest.raises(caffe.CaffeError, match=r"label value 4"):
        run(CENTER, {"x": RNG.normal(0, 1, (2, 3)), "y": np.array([0.0, 4.0])})


# ----------------------------------------------------------------------------------- MarginInnerProduct
TYPES = {"SINGLE": 1, "DOUBLE": 2, "TRIPLE": 3, "QUADRUPLE": 4}


def margin_text(kind: str, extra: str = "") -> str:
    return (
        'type: "MarginInnerProduct" bottom: "x" bottom: "y" top: "out" top: "lambda" '
        f'margin_inner_product_param {{ num_output: 5 type: {kind} weight_filler {{ type: "gaussian" std: 1 }} '
        f"{extra} }}"
    )


def psi(cos: np.ndarray, m: int) -> np.ndarray:
    """A-Softmax's monotone psi(theta) = (-1)^k cos(m theta) - 2k on [k pi/m, (k+1) pi/m]."""
    theta = np.arccos(np.clip(cos, -1, 1))
    k = np.floor(m * theta / math.pi)
    return (-1) ** k * np.cos(m * theta) - 2 * k


def lam_at(it: int, base: float, gamma: float, power: float, lambda_min: float) -> float:
    return max(base * (1 + gamma * it) ** (-power), lambda_min)


@pytest.mark.parametrize("kind", list(TYPES))
def test_margin_product_values_and_lambda_schedule(kind):
    x = RNG.normal(0, 1, (6, 4))
    y = np.array([0, 4, 2, 2, 1, 3], float)
    schedule = "base: 1000 gamma: 0.12 power: 1 lambda_min: 5 iteration: 10"
    net = layer_net(margin_text(kind, schedule), {"x": x.shape, "y": y.shape}, phase=caffe.TRAIN)
    set_inputs(net, {"x": x, "y": y})
    for it in (11, 12):
        net.forward()
        assert float(net.blobs["lambda"].data[0]) == pytest.approx(lam_at(it, 1000, 0.12, 1, 5))
    w = net.params["layer"][0].data
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1, rtol=1e-12)  # stored rows normalized in place
    product = x @ w.T
    expected = product.copy()
    m = TYPES[kind]
    if m > 1:
        lam = lam_at(12, 1000, 0.12, 1, 5)
        norm = np.linalg.norm(x, axis=1)
        rows, labels = np.arange(6), y.astype(int)
        target = product[rows, labels]
        expected[rows, labels] = (norm * psi(target / norm, m) + lam * target) / (1 + lam)
    # arccos is ill-conditioned near +-1
    np.testing.assert_allclose(net.blobs["out"].data, expected, rtol=1e-8, atol=1e-10)


def fork_backward(x, w, y, g, m, lam):
    """The fork's Backward_cpu, written out again: returns (bottom diff, weight diff)."""
    grad_w = g.T @ x
    if m == 1:
        return g @ w, grad_w
    grad_x = np.zeros_like(x)
    norm = np.linalg.norm(x, axis=1)
    for i in range(x.shape[0]):
        label = int(y[i])
        for j in range(w.shape[0]):
            if j != label:
                grad_x[i] += g[i, j] / (1 + lam) * w[j]
                continue
            c = x[i] @ w[j] / norm[i]
            s0 = np.sign(c)
            if m == 2:
                cw, cx = 4 * s0 * c, -(2 * s0 * c**2 + 1) / norm[i]
            elif m == 3:
                s1 = np.sign(abs(c) - 0.5)
                s2 = s0 * (1 + s1) - 2
                cw, cx = s1 * (12 * c**2 - 3), -(8 * s1 * c**3 - s2) / norm[i]
            else:
                s3 = s0 * np.sign(2 * c**2 - 1)
                s4 = 2 * s0 + s3 - 3
                cw = s3 * (32 * c**3 - 16 * c)
                cx = -(s3 * (24 * c**4 - 8 * c**2 - 1) - s4) / norm[i]
            length = math.hypot(cw, cx)
            grad_x[i] += g[i, j] / (1 + lam) * (cw / length * w[j] + cx / length * x[i])
    return grad_x + lam / (1 + lam) * (g @ w), grad_w


@pytest.mark.parametrize("kind", list(TYPES))
def test_margin_product_backward_is_the_forks(kind):
    x = RNG.normal(0, 1, (5, 6))
    y = np.array([1, 0, 4, 4, 2], float)
    net = layer_net(margin_text(kind, "base: 10 gamma: 1 power: 2"), {"x": x.shape, "y": y.shape})
    set_inputs(net, {"x": x, "y": y})
    net.forward()
    g = RNG.normal(0, 1, (5, 5))
    net.clear_param_diffs()
    net.blobs["out"].diff[...] = g
    net.backward()
    lam = float(net.blobs["lambda"].data[0])
    assert lam == pytest.approx(10 / 4)
    grad_x, grad_w = fork_backward(x, net.params["layer"][0].data, y, g, TYPES[kind], lam)
    np.testing.assert_allclose(net.blobs["x"].diff, grad_x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(net.params["layer"][0].diff, grad_w, rtol=1e-12)


def test_margin_product_single_is_a_normalized_inner_product_with_true_gradient():
    x, y = RNG.normal(0, 1, (4, 3)), np.array([0, 1, 2, 3], float)
    text = margin_text("SINGLE").replace('top: "lambda" ', "")
    net = layer_net(text, {"x": x.shape, "y": y.shape})
    check_gradient(net, {"x": x, "y": y}, check_bottoms=["x"], check_params=False)


@pytest.mark.parametrize(
    ("text", "shapes", "match"),
    [
        (margin_text("DOUBLE").replace("num_output: 5", ""), {"x": (2, 3), "y": (2,)}, "num_output must be given"),
        (margin_text("DOUBLE"), {"x": (2, 3), "y": (3,)}, r"one label per item"),
    ],
)
def test_margin_product_checks(text, shapes, match):
    with pytest.raises(caffe.CaffeError, match=match):
        layer_net(text, shapes)
