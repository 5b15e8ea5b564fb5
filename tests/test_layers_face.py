"""The face recognition forks' training layers: caffe-face's CenterLoss, SphereFace's MarginInnerProduct, and
happynear/caffe-windows' NormFace / AM-Softmax layers (Normalize, InnerProduct's normalize, LabelSpecificAdd).

Values against the papers' formulas computed here in NumPy (A-Softmax's psi from arccos, not the fork's sign
tests); backward passes against the forks' hand-written rules, written out again here element by element,
and against finite differences where the fork's gradient is the true one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import check_gradient, layer_net, run_layer, set_inputs

import caffe
from caffe.proto import caffe_pb2 as pb

RNG = np.random.default_rng(11)


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
        run_layer(CENTER, {"x": RNG.normal(0, 1, (2, 3)), "y": np.array([0.0, 4.0])})


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


# ------------------------------------------------------------------------------ happynear/caffe-windows (AM-Softmax)
def test_happynears_fields_keep_the_forks_numbers():
    fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    assert fields["normalize_param"].number == 214 and fields["label_specific_add_param"].number == 241
    assert fields["norm_param"].number == 206  # SSD's Normalize keeps its own
    assert pb.InnerProductParameter.DESCRIPTOR.fields_by_name["normalize"].number == 7


def test_normface_normalize_divides_each_positions_channels_by_their_norm():
    """Per item and position, over the channels: L2 with 1e-6 under the root, L1 with 1e-6 added; a 2-axis bottom
    gets a 4-axis top as in the fork; the second top holds the norms; a Normalize with norm_param is still SSD's."""
    x = np.array([[3.0, 1.0], [4.0, 0.0]]).reshape(1, 2, 1, 2)  # positions (3, 4) and (1, 0)
    net = run_layer('type: "Normalize" bottom: "x" top: "y" top: "norm"', {"x": x})
    np.testing.assert_allclose(net.blobs["norm"].data.ravel(), np.sqrt([25 + 1e-6, 1 + 1e-6]), rtol=1e-12)
    np.testing.assert_allclose(net.blobs["y"].data[0, :, 0], [[3, 1], [4, 0]] / net.blobs["norm"].data[0, 0, 0])
    assert not net.params  # no learned scale
    net = run_layer('type: "Normalize" bottom: "x" top: "y" normalize_param { normalize_type: "L1" }', {"x": -x})
    np.testing.assert_allclose(net.blobs["y"].data[0, :, 0, 0], [-3 / (7 + 1e-6), -4 / (7 + 1e-6)], rtol=1e-12)
    flat = RNG.normal(0, 1, (3, 5))
    net = run_layer('type: "Normalize" bottom: "x" top: "y"', {"x": flat})
    assert net.blobs["y"].data.shape == (3, 5, 1, 1)
    np.testing.assert_allclose(
        net.blobs["y"].data.reshape(3, 5), flat / np.sqrt((flat**2).sum(1, keepdims=True) + 1e-6), rtol=1e-12
    )
    ssd = run_layer('type: "Normalize" bottom: "x" top: "y" norm_param { across_spatial: true }', {"x": x})
    assert len(ssd.params["layer"]) == 1 and np.isclose(np.square(ssd.blobs["y"].data).sum(), 1.0)


@pytest.mark.parametrize("kind", ["L2", "L1"])
def test_normface_normalize_gradient_is_the_true_one(kind):
    x = RNG.normal(0, 1, (2, 3, 2, 2))
    x[np.abs(x) < 0.05] = 0.3  # L1's kink at 0
    text = f'type: "Normalize" bottom: "x" top: "y" normalize_param {{ normalize_type: "{kind}" }}'
    check_gradient(layer_net(text, {"x": x.shape}), {"x": x})
    with_norm = text.replace('top: "y"', 'top: "y" top: "norm"').replace("}", "bp_norm: true }")
    check_gradient(layer_net(with_norm, {"x": x.shape}), {"x": x})


def test_normface_normalize_without_bp_norm_ignores_the_norms_diff():
    x = RNG.normal(0, 1, (2, 4))
    net = layer_net('type: "Normalize" bottom: "x" top: "y" top: "norm"', {"x": x.shape})
    set_inputs(net, {"x": x})
    net.forward()
    dy = RNG.normal(0, 1, (2, 4, 1, 1))
    net.blobs["y"].diff[...] = dy
    net.blobs["norm"].diff[...] = 100.0
    net.backward()
    y, n = net.blobs["y"].data.reshape(2, 4), net.blobs["norm"].data.reshape(2, 1)
    g = dy.reshape(2, 4)
    expected = (g - y * (y * g).sum(1, keepdims=True)) / n  # the fork's rule, the norms' diff left out
    np.testing.assert_allclose(net.blobs["x"].diff, expected, rtol=1e-10)


def _normalized_ip(extra: str = "") -> str:
    return (
        'type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 normalize: true '
        f'weight_filler {{ type: "gaussian" std: 2 }} {extra} }}'
    )


def test_normalized_inner_product_scales_its_stored_rows_and_keeps_the_plain_gradient(tmp_path):
    """Before the product the stored rows become w / sqrt(|w|^2 + 1e-6) (a snapshot holds them so); the
    weights' diff is dy^T x with those rows, x's is dy W: the fork's backward, not the normalization's."""
    x = RNG.normal(0, 1, (4, 5))
    net = layer_net(_normalized_ip(), {"x": x.shape}, phase=caffe.TRAIN)
    w0 = net.params["layer"][0].data.copy()
    b0 = net.params["layer"][1].data.copy()
    set_inputs(net, {"x": x})
    net.forward()
    w = w0 / np.sqrt((w0**2).sum(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(net.params["layer"][0].data, w, rtol=1e-12)
    np.testing.assert_allclose(net.blobs["y"].data, x @ w.T + b0, rtol=1e-12)
    dy = RNG.normal(0, 1, (4, 3))
    net.clear_param_diffs()
    net.blobs["y"].diff[...] = dy
    net.backward()  # after pycaffe's forward without gradients this records the layer again: rows scaled anew
    np.testing.assert_allclose(net.params["layer"][0].diff, dy.T @ x, rtol=1e-12)
    np.testing.assert_allclose(net.blobs["x"].diff, dy @ w, rtol=1e-5)  # |w|^2 = 1 - 1e-6 the second time
    net.save(str(tmp_path / "w.caffemodel"))
    again = caffe.Net(str(_net_file(tmp_path, x.shape)), str(tmp_path / "w.caffemodel"), caffe.TEST)
    np.testing.assert_allclose(again.params["layer"][0].data, w, rtol=1e-6)  # float32 on disk
    assert type(net.layers[-1]).__name__ == "NormalizedInnerProductLayer" and net.layers[-1].type == "InnerProduct"


def _net_file(folder, shape) -> str:
    dims = "".join(f" dim: {d}" for d in shape)
    path = folder / "ip.prototxt"
    path.write_text(
        f'layer {{ name: "input" type: "Input" top: "x" input_param {{ shape {{{dims} }} }} }}'
        f' layer {{ name: "layer" {_normalized_ip()} }}'
    )
    return str(path)


def test_normalized_inner_product_with_transpose_scales_the_rows_as_laid_out_in_memory():
    """The fork scales N rows of K values in memory order, whatever ``transpose`` says (the (K, N) blob read as
    N rows of K)."""
    x = RNG.normal(0, 1, (2, 4))
    net = layer_net(_normalized_ip("transpose: true bias_term: false"), {"x": x.shape})
    w0 = net.params["layer"][0].data.copy()
    assert w0.shape == (4, 3)
    set_inputs(net, {"x": x})
    net.forward()
    rows = w0.reshape(3, 4)
    stored = (rows / np.sqrt((rows**2).sum(1, keepdims=True) + 1e-6)).reshape(4, 3)
    np.testing.assert_allclose(net.params["layer"][0].data, stored, rtol=1e-12)
    np.testing.assert_allclose(net.blobs["y"].data, x @ stored, rtol=1e-12)


MARGIN = 'type: "LabelSpecificAdd" bottom: "s" bottom: "y" top: "t" label_specific_add_param { bias: -0.35 }'


def test_label_specific_add_subtracts_the_margin_at_the_label_in_train_only():
    """AM-Softmax's cos - m at each item's label, only where cos is above m (the fork's test); other outputs and
    the TEST phase unchanged; the gradient passes through as is."""
    s = np.array([[0.9, 0.5, -0.2], [0.1, 0.2, 0.3], [0.4, 0.34, 0.0]])
    y = np.array([0, 1, 1], float)
    net = layer_net(MARGIN, {"s": s.shape, "y": y.shape}, phase=caffe.TRAIN)
    set_inputs(net, {"s": s, "y": y})
    net.forward()
    expected = s.copy()
    expected[0, 0] += np.float32(-0.35)  # 0.9 > 0.35; 0.2 and 0.34 are not above 0.35
    np.testing.assert_allclose(net.blobs["t"].data, expected, rtol=1e-12)
    dt = RNG.normal(0, 1, s.shape)
    net.blobs["t"].diff[...] = dt
    net.backward()
    np.testing.assert_array_equal(net.blobs["s"].diff, dt)
    test = run_layer(MARGIN, {"s": s, "y": y}, phase=caffe.TEST)
    np.testing.assert_array_equal(test.blobs["t"].data, s)


def test_label_specific_add_anneals_its_margin_per_forward():
    """bias = clamp(base + (1 + gamma * it)^power - 1, bias_min, bias_max), it counted per forward from
    ``iteration``; the second top shows it."""
    text = MARGIN.replace('top: "t"', 'top: "t" top: "m"').replace(
        "bias: -0.35", "bias_base: -0.6 bias_gamma: 0.1 bias_power: 2 bias_min: -0.45 bias_max: -0.2 iteration: 0"
    )
    s, y = np.full((2, 3), 0.9), np.array([2, 0], float)
    net = layer_net(text, {"s": s.shape, "y": y.shape}, phase=caffe.TRAIN)
    set_inputs(net, {"s": s, "y": y})
    seen = []
    for it in (0, 1, 2):
        net.forward()
        bias = min(max(-0.6 + (1 + 0.1 * it) ** 2 - 1, -0.45), -0.2)
        seen.append(float(net.blobs["m"].data[0]))
        assert seen[-1] == pytest.approx(bias, rel=1e-6)
        assert net.blobs["t"].data[0, 2] == pytest.approx(0.9 + bias, rel=1e-6)
        assert net.blobs["t"].data[0, 0] == 0.9  # not the label
    assert seen == pytest.approx([-0.45, -0.39, -0.2], rel=1e-5)  # under the floor, annealed, at the ceiling


def test_label_specific_add_checks():
    with pytest.raises(caffe.CaffeError, match="one label per item"):
        layer_net(MARGIN, {"s": (2, 3), "y": (3,)})
    with pytest.raises(caffe.CaffeError, match=r"label value 3 .*outside \[0, 3\)"):
        run_layer(MARGIN, {"s": np.zeros((2, 3)), "y": np.array([0, 3], float)})


def test_am_softmax_trains_two_clusters_apart(tmp_path):
    """AM-Softmax's head as the authors' face_train_test.prototxt writes it (features -> Normalize ->
    normalized InnerProduct -> LabelSpecificAdd -0.35 -> Scale 30, not learned -> SoftmaxWithLoss), on two
    classes of 2-D points: SGD lowers the loss, and the normalized class rows point to their classes."""
    x = np.vstack([RNG.normal((2, 1), 0.3, (8, 2)), RNG.normal((-1, -2), 0.3, (8, 2))])
    y = np.array([0] * 8 + [1] * 8, float)
    (tmp_path / "net.prototxt").write_text("""
    layer { name: "x" type: "Input" top: "x" top: "y" input_param { shape { dim: 16 dim: 2 } shape { dim: 16 } } }
    layer { name: "norm1" type: "Normalize" bottom: "x" top: "norm1" }
    layer { name: "fc6" type: "InnerProduct" bottom: "norm1" top: "fc6" param { lr_mult: 1 }
            inner_product_param { num_output: 2 normalize: true bias_term: false weight_filler { type: "xavier" } } }
    layer { name: "margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "y" top: "fc6_margin"
            label_specific_add_param { bias: -0.35 } }
    layer { name: "scale" type: "Scale" bottom: "fc6_margin" top: "fc6_scaled" param { lr_mult: 0 decay_mult: 0 }
            scale_param { filler { type: "constant" value: 30 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc6_scaled" bottom: "y" top: "loss" }
    """)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 100 '
        "random_seed: 3 snapshot_after_train: false"
    )
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    solver.net.blobs["x"].data[...] = x
    solver.net.blobs["y"].data[...] = y
    solver.step(1)
    first = float(solver.net.blobs["loss"].data)
    solver.step(40)
    assert float(solver.net.blobs["loss"].data) < first / 4
    rows = solver.net.params["fc6"][0].data
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=0.05)  # normalized before each forward
    centres = np.stack([x[:8].mean(0), x[8:].mean(0)])
    cos = (rows @ centres.T) / np.linalg.norm(centres, axis=1)
    assert cos[0, 0] > cos[0, 1] and cos[1, 1] > cos[1, 0]


def test_flip_mirrors_width_and_height_and_flips_the_gradient_back():
    x = RNG.normal(0, 1, (2, 3, 4, 5))
    np.testing.assert_array_equal(
        run_layer('type: "Flip" bottom: "x" top: "y"', {"x": x}).blobs["y"].data, x[..., ::-1]
    )
    both = 'type: "Flip" bottom: "x" top: "y" flip_param { flip_height: true }'
    np.testing.assert_array_equal(run_layer(both, {"x": x}).blobs["y"].data, x[:, :, ::-1, ::-1])
    none = 'type: "Flip" bottom: "x" top: "y" flip_param { flip_width: false }'
    np.testing.assert_array_equal(run_layer(none, {"x": x}).blobs["y"].data, x)
    check_gradient(layer_net(both, {"x": x.shape}), {"x": x})


def test_a_mirror_summing_deploy_net_gives_the_normalized_sum_of_both_features(tmp_path):
    """The AM-Softmax authors' deploy form (Flip, Concat on the batch, the trunk, Slice, Eltwise SUM, Normalize
    with normalize_param) equals the trunk run by another net on the image and on its NumPy mirror."""
    trunk = """
    layer { name: "conv" type: "Convolution" bottom: "%s" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "relu" type: "PReLU" bottom: "conv" top: "conv" }
    layer { name: "fc5" type: "InnerProduct" bottom: "conv" top: "fc5"
            inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 } } }
    """
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(
        'input: "data" input_dim: 2 input_dim: 3 input_dim: 7 input_dim: 6\n'
        'layer { name: "flip_data" type: "Flip" bottom: "data" top: "flip_data" }\n'
        'layer { name: "concat_data" type: "Concat" bottom: "data" bottom: "flip_data" top: "concat_data"'
        " concat_param { axis: 0 } }\n"
        + trunk
        % "concat_data"
        + 'layer { name: "slice" type: "Slice" bottom: "fc5" top: "a" top: "b" slice_param { axis: 0 } }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" eltwise_param { operation: SUM } }\n'
        'layer { name: "norm" type: "Normalize" bottom: "s" top: "norm1" normalize_param { normalize_type: "L2" } }\n'
    )
    plain = tmp_path / "plain.prototxt"
    plain.write_text('input: "data" input_dim: 2 input_dim: 3 input_dim: 7 input_dim: 6\n' + trunk % "data")
    net = caffe.Net(str(deploy), caffe.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    alone = caffe.Net(str(plain), str(tmp_path / "w.caffemodel"), caffe.TEST)
    x = RNG.normal(0, 1, (2, 3, 7, 6)).astype(np.float32)
    features = net.forward(data=x)["norm1"].reshape(2, 6)
    total = alone.forward(data=x)["fc5"].copy() + alone.forward(data=np.ascontiguousarray(x[..., ::-1]))["fc5"]
    expected = total / np.sqrt((total**2).sum(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
