"""Training the R-CNN forks' nets: the SmoothL1Loss layer and py-faster-rcnn's end-to-end train.prototxt.

SmoothL1Loss is checked against the forks' formulas computed here in NumPy and against finite
differences; the ZF Faster R-CNN training net (tests/data/forks, verbatim) is built by ``caffe.SGDSolver``
from the fork's own solver and trained with stand-ins for py-faster-rcnn's Python layers
(tests/pylayers/faster_rcnn_stubs.py), the way py-faster-rcnn's ``tools/train_net.py`` drives pycaffe.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from gradcheck import check_gradient, layer_net, run_layer

import caffe
from caffe.proto import caffe_pb2 as pb

FORKS = Path(__file__).parent / "data" / "forks"
ZF_TRAIN = FORKS / "py-faster-rcnn_ZF_faster_rcnn_end2end_train.prototxt"
ZF_SOLVER = FORKS / "py-faster-rcnn_ZF_faster_rcnn_end2end_solver.prototxt"
ZF_TEST = FORKS / "py-faster-rcnn_ZF_faster_rcnn_end2end_test.prototxt"
RFCN_TRAIN = FORKS / "py-R-FCN_ResNet-50_rfcn_end2end_train_agnostic_ohem.prototxt"
RFCN_SOLVER = FORKS / "py-R-FCN_ResNet-50_rfcn_end2end_solver_ohem.prototxt"
RNG = np.random.default_rng(3)


def smooth_l1_ref(x: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    s2 = sigma * sigma
    return np.where(np.abs(x) < 1 / s2, 0.5 * s2 * x * x, np.abs(x) - 0.5 / s2)


def smooth_l1_grad_ref(x: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    s2 = sigma * sigma
    return np.where(np.abs(x) < 1 / s2, s2 * x, np.sign(x))


def away_from_kinks(shape: tuple[int, ...], sigma: float = 1.0) -> np.ndarray:
    """Differences whose magnitudes stay clear of the 1/sigma^2 kink (finite differences straddle it)."""
    k = 1 / (sigma * sigma)
    mag = np.where(RNG.random(shape) < 0.5, RNG.uniform(0.05 * k, 0.8 * k, shape), RNG.uniform(1.2 * k, 3 * k, shape))
    return mag * RNG.choice([-1.0, 1.0], shape)


def loss_text(bottoms: list[str], sigma: float | None = None) -> str:
    text = 'type: "SmoothL1Loss" top: "loss"' + "".join(f' bottom: "{b}"' for b in bottoms)
    return text + (f" smooth_l1_loss_param {{ sigma: {sigma} }}" if sigma is not None else "")


# ------------------------------------------------------------------------------------------- the layer
def test_parameter_has_the_fork_field_number_and_reads_from_text():
    assert pb.LayerParameter.DESCRIPTOR.fields_by_name["smooth_l1_loss_param"].number == 8266712  # caffe-fast-rcnn
    param = text_format.Parse("smooth_l1_loss_param { sigma: 3.0 }", pb.LayerParameter())
    assert param.smooth_l1_loss_param.sigma == 3.0
    assert pb.SmoothL1LossParameter().sigma == 1.0


def test_two_bottoms_is_the_mean_over_items_of_summed_smooth_l1():
    pred, target = RNG.normal(0, 2, (4, 3, 2, 2)), RNG.normal(0, 2, (4, 3, 2, 2))
    net = run_layer(loss_text(["p", "t"]), {"p": pred, "t": target})
    np.testing.assert_allclose(net.blobs["loss"].data, smooth_l1_ref(pred - target).sum() / 4, rtol=1e-12)
    assert net.blobs["loss"].shape == ()
    assert net.blob_loss_weights["loss"] == 1.0  # a loss layer: weight 1 unless told otherwise


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_four_bottoms_fast_rcnn_rule_value_and_true_gradient(sigma):
    shape = (2, 8, 3, 3)
    target = RNG.normal(0, 1, shape)
    inside = RNG.choice([0.0, 1.0, 2.0], shape)
    outside = RNG.uniform(0.1, 1.0, shape)
    # predictions with inside * (pred - target) away from the kink
    pred = target + away_from_kinks(shape, sigma) / np.where(inside == 0, 1, inside)
    values = {"p": pred, "t": target, "wi": inside, "wo": outside}
    text = loss_text(list(values), sigma)
    net = run_layer(text, values)
    z = inside * (pred - target)
    np.testing.assert_allclose(net.blobs["loss"].data, (outside * smooth_l1_ref(z, sigma)).sum() / 2, rtol=1e-12)
    net.blobs["loss"].diff[...] = 1.0
    net.backward()
    expected = outside * inside * smooth_l1_grad_ref(z, sigma) / 2
    np.testing.assert_allclose(net.blobs["p"].diff, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(net.blobs["t"].diff, -expected, rtol=1e-12, atol=1e-15)
    assert net.bottom_need_backward[-1] == [True, True, False, False]  # the weights take no gradient
    check_gradient(layer_net(text, {k: v.shape for k, v in values.items()}), values, check_bottoms=["p", "t"])


def test_three_bottoms_ssd_fork_rule_leaves_the_weight_out_of_the_gradient():
    shape = (3, 4)
    target = RNG.normal(0, 1, shape)
    weight = RNG.choice([0.5, 2.0], shape)
    pred = target + away_from_kinks(shape) / weight
    values = {"p": pred, "t": target, "w": weight}
    net = run_layer(loss_text(list(values)), values)
    z = weight * (pred - target)
    np.testing.assert_allclose(net.blobs["loss"].data, smooth_l1_ref(z).sum() / 3, rtol=1e-12)
    net.blobs["loss"].diff[...] = 1.0
    net.backward()
    # weiliu89/caffe's backward: f'(w * d) / N, without the factor w
    np.testing.assert_allclose(net.blobs["p"].diff, smooth_l1_grad_ref(z) / 3, rtol=1e-12)


def test_sigma_zero_gives_zero_as_the_forks_do():
    values = {"p": RNG.normal(0, 1, (2, 3)), "t": RNG.normal(0, 1, (2, 3))}
    assert float(run_layer(loss_text(["p", "t"], 0.0), values).blobs["loss"].data) == 0.0


def test_boundary_takes_the_linear_branch_as_the_forks_do():
    # |x| == 1/sigma^2 is not < 1/sigma^2: value |x| - 0.5/sigma^2, gradient sign(x)
    values = {"p": np.array([[0.25, -0.25]]), "t": np.zeros((1, 2))}
    net = run_layer(loss_text(["p", "t"], 2.0), values)
    np.testing.assert_allclose(net.blobs["loss"].data, 2 * (0.25 - 0.125))
    net.blobs["loss"].diff[...] = 1.0
    net.backward()
    np.testing.assert_allclose(net.blobs["p"].diff, [[1.0, -1.0]])


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ({"p": (2, 4), "t": (2, 5)}, r"bottom\[1\] must have the shape of bottom\[0\].*\(2, 4\).*\(2, 5\)"),
        ({"p": (2, 4), "t": (2, 4), "wi": (2, 4), "wo": (2, 2, 2)}, r"bottom\[3\].*\(2, 2, 2\)"),
        ({"p": (2, 4), "t": (3, 4)}, r"same first dimension"),
        ({"p": (1, 2, 1, 1, 2), "t": (1, 2, 1, 1, 2)}, r"at most 4 axes"),
    ],
)
def test_shape_mismatches_are_shape_errors_naming_the_shapes(shapes, match):
    with pytest.raises(caffe.ShapeError, match=match):
        layer_net(loss_text(list(shapes)), shapes)


def test_bottom_count_is_checked():
    shapes = {k: (2, 2) for k in "abcde"}
    with pytest.raises(caffe.CaffeError, match=r"SmoothL1Loss.*bottom"):
        layer_net(loss_text(list(shapes)), shapes)


def test_forward_compiles_without_graph_breaks():
    layer = layer_net(loss_text(["p", "t", "wi", "wo"], 3.0), {k: (2, 8) for k in ("p", "t", "wi", "wo")}).layers[-1]
    inputs = [torch.from_numpy(RNG.normal(0, 1, (2, 8))) for _ in range(4)]
    compiled = torch.compile(lambda *a: layer.forward(list(a)), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*inputs)[0], layer.forward(inputs)[0])


# ------------------------------------------------------------------------- R-FCN's forms and OHEM layers
def softmax_losses(scores: np.ndarray, labels: np.ndarray, ignore: int | None = None) -> np.ndarray:
    """Each row's -log softmax at its label (0 where the label is ``ignore``)."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    index = np.where(labels == ignore, 0, labels).astype(int)
    losses = -logp[np.arange(len(labels)), index]
    return np.where(labels == ignore, 0.0, losses)


def test_softmax_loss_third_top_is_each_position_loss_and_ohem_name_is_the_same_layer():
    scores = RNG.normal(0, 2, (6, 4, 1, 1))
    labels = np.array([0, 3, -1, 2, 1, -1], float).reshape(6, 1, 1, 1)
    for kind in ("SoftmaxWithLoss", "SoftmaxWithLossOHEM"):
        text = (
            f'type: "{kind}" bottom: "x" bottom: "y" top: "loss" top: "prob" top: "each" '
            "loss_weight: 1 loss_weight: 0 loss_weight: 0 loss_param { ignore_label: -1 }"
        )
        net = run_layer(text, {"x": scores, "y": labels})
        assert net.layers[-1].type == kind  # one class, two names: each layer reports its prototxt's
        each = softmax_losses(scores.reshape(6, 4), labels.reshape(6), ignore=-1)
        assert net.blobs["each"].shape == (6, 1, 1, 1)
        np.testing.assert_allclose(net.blobs["each"].data.reshape(6), each, rtol=1e-12)
        np.testing.assert_allclose(net.blobs["loss"].data, each.sum() / 4, rtol=1e-12)  # VALID: 4 labelled
        net.blobs["loss"].diff[...] = 1.0
        net.backward()
        assert not net.blobs["x"].diff[[2, 5]].any()


@pytest.mark.parametrize(
    ("normalization", "divisor"),
    [
        ("", 2 * 3 * 2),  # VALID: N * H * W
        ("normalization: FULL", 12),
        ("normalization: BATCH_SIZE", 2),
        ("normalization: NONE", 1),
        ("normalization: PRE_FIXED pre_fixed_normalizer: 128", 128),
        ("normalization: PRE_FIXED pre_fixed_normalizer: 0.5", 1),  # never below 1
    ],
)
def test_rfcn_forms_divide_as_loss_param_says_and_give_per_position_losses(normalization, divisor):
    shape = (2, 8, 3, 2)
    target = RNG.normal(0, 1, shape)
    weight = RNG.choice([0.0, 1.0], shape)
    pred = target + away_from_kinks(shape)
    values = {"p": pred, "t": target, "w": weight}
    errors = smooth_l1_ref(weight * (pred - target))
    for kind in ("SmoothL1Loss", "SmoothL1LossOHEM"):
        text = f'type: "{kind}" bottom: "p" bottom: "t" bottom: "w" top: "loss" top: "each" '
        text += "loss_weight: 1 loss_weight: 0"
        net = run_layer(text + f" loss_param {{ {normalization} }}", values)
        np.testing.assert_allclose(net.blobs["loss"].data, errors.sum() / divisor, rtol=1e-12)
        assert net.blobs["each"].shape == (2, 1, 3, 2)
        np.testing.assert_allclose(net.blobs["each"].data, errors.sum(axis=1, keepdims=True), rtol=1e-12)
        net.blobs["loss"].diff[...] = 1.0
        net.backward()
        np.testing.assert_allclose(net.blobs["p"].diff, smooth_l1_grad_ref(weight * (pred - target)) / divisor)


def test_ohem_form_with_two_bottoms_and_the_fast_rcnn_form_with_explicit_normalization():
    pred, target = RNG.normal(0, 2, (2, 4, 2, 2)), RNG.normal(0, 2, (2, 4, 2, 2))
    errors = smooth_l1_ref(pred - target).sum()
    ohem = run_layer('type: "SmoothL1LossOHEM" bottom: "p" bottom: "t" top: "l"', {"p": pred, "t": target})
    np.testing.assert_allclose(ohem.blobs["l"].data, errors / 8, rtol=1e-12)  # VALID: N * H * W
    plain = run_layer('type: "SmoothL1Loss" bottom: "p" bottom: "t" top: "l"', {"p": pred, "t": target})
    np.testing.assert_allclose(plain.blobs["l"].data, errors / 2, rtol=1e-12)  # caffe-fast-rcnn: N
    text = 'type: "SmoothL1Loss" bottom: "p" bottom: "t" top: "l" loss_param { normalization: NONE }'
    np.testing.assert_allclose(run_layer(text, {"p": pred, "t": target}).blobs["l"].data, errors, rtol=1e-12)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('type: "SmoothL1Loss" bottom: "a" bottom: "b" bottom: "c" smooth_l1_loss_param { sigma: 3 }', "sigma 3"),
        ('type: "SmoothL1LossOHEM" bottom: "a" bottom: "b" smooth_l1_loss_param { sigma: 2 }', "sigma 2"),
        ('type: "SoftmaxWithLoss" bottom: "a" bottom: "c" loss_param { normalization: PRE_FIXED }', "PRE_FIXED"),
        ('type: "SmoothL1LossOHEM" bottom: "a" bottom: "b" bottom: "c" bottom: "d"', "bottom"),
    ],
)
def test_settings_a_fork_does_not_read_are_refused(text, match):
    shapes = {"a": (2, 4), "b": (2, 4), "c": (2,), "d": (2, 4)}
    if "SoftmaxWithLoss" not in text:
        shapes["c"] = (2, 4)
    with pytest.raises(caffe.CaffeError, match=match):
        layer_net(text, {k: v for k, v in shapes.items() if f'"{k}"' in text})


OHEM = 'type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "loss" bottom: "labels" bottom: "w" top: "lo" top: "wo"'


def ohem_inputs(images: list[int], channels: int = 8) -> dict[str, np.ndarray]:
    r = len(images)
    rois = np.hstack([np.array(images, float)[:, None], RNG.uniform(0, 100, (r, 4))]).reshape(r, 5, 1, 1)
    return {
        "rois": rois,
        "loss": RNG.permutation(r).astype(float).reshape(r, 1, 1, 1),  # distinct losses
        "labels": RNG.integers(0, 21, r).astype(float).reshape(r, 1, 1, 1),
        "w": RNG.choice([0.0, 1.0], (r, channels, 1, 1)),
    }


def test_box_annotator_ohem_keeps_each_images_hardest_rois():
    images = [0, 1, 0, 0, 1, 1, 0, 1, 0, 1]
    values = ohem_inputs(images)
    net = run_layer(OHEM + " box_annotator_ohem_param { roi_per_img: 3 }", values)
    loss = values["loss"].reshape(-1)
    keep = np.zeros(len(images), bool)
    for image in (0, 1):
        mine = [i for i, n in enumerate(images) if n == image]
        keep[sorted(mine, key=lambda i: -loss[i])[:3]] = True
    expected_labels = np.where(keep, values["labels"].reshape(-1), -1)
    np.testing.assert_array_equal(net.blobs["lo"].data.reshape(-1), expected_labels)
    np.testing.assert_array_equal(net.blobs["wo"].data, values["w"] * keep[:, None, None, None])
    assert net.blobs["lo"].shape == (10, 1, 1, 1) and net.blobs["wo"].shape == (10, 8, 1, 1)


def test_box_annotator_ohem_ignore_label_budget_larger_than_rois_and_ties():
    values = ohem_inputs([0, 0, 0, 0])
    values["loss"] = np.array([1.0, 2.0, 2.0, 1.0]).reshape(4, 1, 1, 1)
    text = OHEM + " box_annotator_ohem_param { roi_per_img: 2 ignore_label: 255 }"
    got = run_layer(text, values).blobs["lo"].data.reshape(-1)
    np.testing.assert_array_equal(got, [255, *values["labels"].reshape(-1)[1:3], 255])
    everything = run_layer(OHEM + " box_annotator_ohem_param { roi_per_img: 9 }", values)
    np.testing.assert_array_equal(everything.blobs["lo"].data, values["labels"])


@pytest.mark.parametrize(
    ("param", "shapes", "match"),
    [
        ("", None, "roi_per_img must be given"),
        ("roi_per_img: 0", None, "roi_per_img must be given"),
        ("roi_per_img: 2", {"rois": (4, 4, 1, 1)}, r"5 channels.*\(4, 4, 1, 1\)"),
        ("roi_per_img: 2", {"loss": (4, 2, 1, 1)}, r"per-ROI loss \(bottom\[1\]\) must have shape \(4, 1, 1, 1\)"),
        ("roi_per_img: 2", {"w": (3, 8, 1, 1)}, r"box-loss weights \(bottom\[3\]\)"),
    ],
)
def test_box_annotator_ohem_checks_its_parameter_and_shapes(param, shapes, match):
    all_shapes = {"rois": (4, 5, 1, 1), "loss": (4, 1, 1, 1), "labels": (4, 1, 1, 1), "w": (4, 8, 1, 1)}
    all_shapes.update(shapes or {})
    with pytest.raises(caffe.CaffeError, match=match):
        layer_net(OHEM + f" box_annotator_ohem_param {{ {param} }}", all_shapes)


def test_box_annotator_ohem_budgets_any_image_index_and_refuses_bad_ones():
    values = ohem_inputs([0, 0, 0, 0])
    values["rois"][[1, 3], 0] = 1e30  # a huge index is one more image, not a table of 1e30 budgets
    values["loss"] = np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1)
    got = run_layer(OHEM + " box_annotator_ohem_param { roi_per_img: 1 }", values).blobs["lo"].data.reshape(-1)
    np.testing.assert_array_equal(got, [-1, -1, values["labels"].reshape(-1)[2], values["labels"].reshape(-1)[3]])
    for bad in (np.nan, -1.0):
        values["rois"][0, 0] = bad
        with pytest.raises(caffe.CaffeError, match="ROI batch indices must be finite and not negative"):
            run_layer(OHEM + " box_annotator_ohem_param { roi_per_img: 1 }", values)


def test_box_annotator_ohem_takes_no_gradient():
    values = ohem_inputs([0, 0, 1])
    net = layer_net(OHEM + " box_annotator_ohem_param { roi_per_img: 1 }", {k: v.shape for k, v in values.items()})
    assert net.bottom_need_backward[-1] == [False] * 4  # force_backward skips every bottom


# ------------------------------------------------------------------- py-faster-rcnn's end-to-end training
def install_lib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proposals: str, targets: str) -> Iterator[None]:
    """py-faster-rcnn's lib/ layout (roi_data_layer.layer, rpn.*) on sys.path, backed by the stand-ins."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "pylayers"))
    modules = {
        "roi_data_layer/layer.py": ("RoIDataLayer", "RoIDataLayer"),
        "rpn/anchor_target_layer.py": ("AnchorTargetLayer", "AnchorTargetLayer"),
        "rpn/proposal_layer.py": (proposals, "ProposalLayer"),
        "rpn/proposal_target_layer.py": (targets, "ProposalTargetLayer"),
    }
    for path, (stub, name) in modules.items():
        file = tmp_path / "lib" / path
        file.parent.mkdir(parents=True, exist_ok=True)
        (file.parent / "__init__.py").touch()
        file.write_text(f"from faster_rcnn_stubs import {stub} as {name}  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    yield
    for module in list(sys.modules):
        if module.split(".")[0] in ("roi_data_layer", "rpn", "faster_rcnn_stubs"):
            del sys.modules[module]  # later tests must find no 'rpn' package (the built-in Proposal)


@pytest.fixture
def faster_rcnn_lib(tmp_path, monkeypatch):
    yield from install_lib(tmp_path, monkeypatch, "ProposalLayer", "ProposalTargetLayer")


@pytest.fixture
def rfcn_lib(tmp_path, monkeypatch):
    """py-R-FCN's lib/ (the same module names as py-faster-rcnn's), its 4-axis ROI blobs."""
    yield from install_lib(tmp_path, monkeypatch, "RfcnProposalLayer", "RfcnProposalTargetLayer")


def roidb(n: int = 2) -> list[dict]:
    """py-faster-rcnn's roidb entries: image size, (G, 4) boxes and their classes."""
    entries = []
    for i in range(n):
        boxes = np.array([[30 + 10 * i, 40, 110, 150], [130, 20 + 5 * i, 200, 90]], np.float32)
        entries.append({"height": 224, "width": 224, "boxes": boxes, "gt_classes": np.array([3, 15 - i])})
    return entries


def pretrained(net: caffe.Net, seed: int) -> None:
    """Stand-in for the ImageNet ZF weights py-faster-rcnn copies in (the fork's convolutions and fc6/fc7 have
    no fillers: they start at zero): He-scaled Gaussian weights and small biases."""
    rng = np.random.default_rng(seed)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        weight, bias = net.params[name]
        assert not weight.data.any()
        fan_in = weight.count // weight.shape[0]
        weight.data[...] = rng.normal(0, np.sqrt(2 / fan_in), weight.shape)
        bias.data[...] = 0.01


def solver_file(tmp_path: Path, solver: Path = ZF_SOLVER, train: Path = ZF_TRAIN, **overrides: object) -> Path:
    """The fork's solver as py-faster-rcnn's SolverWrapper reads it, train_net pointed at the fixture."""
    param = text_format.Parse(solver.read_text(), pb.SolverParameter())
    param.train_net = str(train)
    param.snapshot_prefix = str(tmp_path / "zf_faster_rcnn")
    for name, value in overrides.items():
        setattr(param, name, value)
    path = tmp_path / "solver.prototxt"
    path.write_text(text_format.MessageToString(param))
    return path


def test_zf_end2end_train_net_losses_and_box_gradient_match_the_fork_formulas(faster_rcnn_lib, tmp_path):
    caffe.set_random_seed(5)
    solver = caffe.SGDSolver(str(solver_file(tmp_path)))
    net = solver.net
    net.layers[0].set_roidb(roidb())  # as py-faster-rcnn's SolverWrapper does
    pretrained(net, 1)
    assert net.layers[0].num_classes == 21  # param_str_ read by the layer

    net.forward()
    b = net.blobs
    rpn_z = b["rpn_bbox_inside_weights"].data * (b["rpn_bbox_pred"].data - b["rpn_bbox_targets"].data)
    rpn_loss = (b["rpn_bbox_outside_weights"].data * smooth_l1_ref(rpn_z, 3.0)).sum() / 1  # N = 1 image
    np.testing.assert_allclose(b["rpn_loss_bbox"].data, rpn_loss, rtol=1e-4)
    z = b["bbox_inside_weights"].data * (b["bbox_pred"].data - b["bbox_targets"].data)
    rois = b["bbox_pred"].shape[0]
    bbox_loss = (b["bbox_outside_weights"].data * smooth_l1_ref(z)).sum() / rois
    np.testing.assert_allclose(b["bbox_loss"].data, bbox_loss, rtol=1e-4)
    assert b["rois"].shape == (16, 5) and b["roi_pool_conv5"].shape == (16, 256, 6, 6)

    # bbox_pred's weights take gradient from loss_bbox alone: W.diff = dL/dpred^T @ fc7
    net.clear_param_diffs()
    net.backward()
    assert b["fc7"].data.any() and b["bbox_inside_weights"].data.any()
    dpred = b["bbox_outside_weights"].data * b["bbox_inside_weights"].data * smooth_l1_grad_ref(z) / rois
    np.testing.assert_allclose(net.params["bbox_pred"][0].diff, dpred.T @ b["fc7"].data, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(net.params["bbox_pred"][1].diff, dpred.sum(0), rtol=1e-3, atol=1e-7)
    assert net.params["rpn_bbox_pred"][0].diff.any()  # the RPN regression is trained too
    assert net.params["conv1"][0].diff.any()  # through ROI pooling and the RPN down the whole trunk


def test_zf_end2end_trains_with_the_fork_solver_and_its_weights_load_into_the_test_net(faster_rcnn_lib, tmp_path):
    caffe.set_random_seed(6)
    solver = caffe.SGDSolver(str(solver_file(tmp_path, base_lr=0.0005)))
    solver.net.layers[0].set_roidb(roidb())
    pretrained(solver.net, 2)
    before = solver.net.params["bbox_pred"][0].data.copy()
    solver.step(2)  # iter_size 2 in the fork's solver: four forward/backward passes
    assert solver.iter == 2
    assert solver.net.layers[0].cursor == 4
    after = solver.net.params["bbox_pred"][0].data
    assert np.isfinite(after).all() and not np.array_equal(before, after)
    for name in ("rpn_cls_loss", "rpn_loss_bbox", "cls_loss", "bbox_loss"):
        assert np.isfinite(solver.net.blobs[name].data)

    # py-faster-rcnn's snapshot: net.save, then the test net reads the weights by layer name
    weights = tmp_path / "zf_iter_2.caffemodel"
    solver.net.save(str(weights))
    test_net = caffe.Net(str(ZF_TEST), str(weights), caffe.TEST)
    for name in ("conv5", "rpn_bbox_pred", "fc7", "cls_score", "bbox_pred"):
        for got, want in zip(test_net.params[name], solver.net.params[name], strict=True):
            np.testing.assert_array_equal(got.data, want.data)


# ------------------------------------------------------------------------ py-R-FCN's OHEM end-to-end training
def resnet_pretrained(net: caffe.Net, seed: int) -> None:
    """Stand-in for the ImageNet ResNet-50 py-R-FCN copies in: the trunk's convolutions (no fillers in the fork)
    get scaled Gaussian weights, its frozen BatchNorm layers mean 0, variance 1 and scale factor 1."""
    rng = np.random.default_rng(seed)
    for name, layer in net.layer_dict.items():
        blobs = net.params.get(name)
        if not blobs or blobs[0].data.any():
            continue
        if layer.type == "BatchNorm":
            blobs[1].data[...] = 1.0
            blobs[2].data[...] = 1.0
        elif layer.type == "Convolution":
            fan_in = blobs[0].count // blobs[0].shape[0]
            blobs[0].data[...] = rng.normal(0, np.sqrt(1 / fan_in), blobs[0].shape)


def test_rfcn_ohem_train_net_mines_the_hardest_rois_as_the_fork_does(rfcn_lib, tmp_path):
    caffe.set_random_seed(7)
    solver = caffe.SGDSolver(str(solver_file(tmp_path, RFCN_SOLVER, RFCN_TRAIN)))
    net = solver.net
    net.layers[0].set_roidb(roidb())
    resnet_pretrained(net, 3)
    net.forward()
    b = net.blobs
    rois = b["rois"].shape[0]
    assert rois == 160 and b["cls_score"].shape == (160, 21, 1, 1) and b["bbox_pred"].shape == (160, 8, 1, 1)

    # each ROI's loss: its softmax loss plus its (unnormalized) box loss, summed by the Eltwise layer
    labels = b["labels"].data.reshape(-1)
    cls_each = softmax_losses(b["cls_score"].data.reshape(rois, 21), labels)
    z = b["bbox_inside_weights"].data * (b["bbox_pred"].data - b["bbox_targets"].data)
    box_each = smooth_l1_ref(z).reshape(rois, -1).sum(axis=1)
    np.testing.assert_allclose(b["per_roi_loss"].data.reshape(-1), cls_each + box_each, rtol=1e-4, atol=1e-6)

    # OHEM keeps the 128 hardest (one image): their labels and box weights, the rest ignored
    hardest = np.argsort(-b["per_roi_loss"].data.reshape(-1), kind="stable")[:128]
    keep = np.zeros(rois, bool)
    keep[hardest] = True
    np.testing.assert_array_equal(b["labels_ohem"].data.reshape(-1), np.where(keep, labels, -1))
    weights = b["bbox_inside_weights"].data * keep[:, None, None, None]
    np.testing.assert_array_equal(b["bbox_loss_weights_ohem"].data, weights)
    np.testing.assert_allclose(b["loss_cls"].data, cls_each[keep].mean(), rtol=1e-4)
    z_ohem = weights * (b["bbox_pred"].data - b["bbox_targets"].data)
    np.testing.assert_allclose(b["loss_bbox"].data, smooth_l1_ref(z_ohem).sum() / 128, rtol=1e-4)  # PRE_FIXED 128

    # only the mined ROIs send gradient back
    net.clear_param_diffs()
    net.backward()
    cls_diff = np.abs(b["cls_score"].diff.reshape(rois, -1)).sum(axis=1)
    assert (cls_diff[~keep] == 0).all() and (cls_diff[keep] > 0).all()
    assert not b["bbox_pred"].diff[~keep].any()
    assert net.params["rfcn_cls"][0].diff.any() and net.params["res4f_branch2c"][0].diff.any()

    solver.step(1)  # iter_size 2 in the fork's OHEM solver
    assert solver.iter == 1 and np.isfinite(b["loss_cls"].data) and np.isfinite(b["loss_bbox"].data)
