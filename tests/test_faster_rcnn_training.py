"""Training the R-CNN forks' nets: the SmoothL1Loss layer and py-faster-rcnn's end-to-end train.prototxt.

SmoothL1Loss is checked against the forks' formulas computed here in NumPy and against finite
differences; the ZF Faster R-CNN training net (tests/data/forks, verbatim) is built by ``caffe.SGDSolver``
from the fork's own solver and trained with stand-ins for py-faster-rcnn's Python layers
(tests/pylayers/faster_rcnn_stubs.py), the way py-faster-rcnn's ``tools/train_net.py`` drives pycaffe.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.proto import caffe_pb2 as pb

FORKS = Path(__file__).parent / "data" / "forks"
ZF_TRAIN = FORKS / "py-faster-rcnn_ZF_faster_rcnn_end2end_train.prototxt"
ZF_SOLVER = FORKS / "py-faster-rcnn_ZF_faster_rcnn_end2end_solver.prototxt"
ZF_TEST = FORKS / "py-faster-rcnn_ZF_faster_rcnn_end2end_test.prototxt"
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


def run(text: str, values: dict[str, np.ndarray]) -> caffe.Net:
    net = layer_net(text, {k: v.shape for k, v in values.items()})
    set_inputs(net, values)
    net.forward()
    return net


# ------------------------------------------------------------------------------------------- the layer
def test_parameter_has_the_fork_field_number_and_reads_from_text():
    assert pb.LayerParameter.DESCRIPTOR.fields_by_name["smooth_l1_loss_param"].number == 8266712  # caffe-fast-rcnn
    param = text_format.Parse("smooth_l1_loss_param { sigma: 3.0 }", pb.LayerParameter())
    assert param.smooth_l1_loss_param.sigma == 3.0
    assert pb.SmoothL1LossParameter().sigma == 1.0


def test_two_bottoms_is_the_mean_over_items_of_summed_smooth_l1():
    pred, target = RNG.normal(0, 2, (4, 3, 2, 2)), RNG.normal(0, 2, (4, 3, 2, 2))
    net = run(loss_text(["p", "t"]), {"p": pred, "t": target})
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
    net = run(text, values)
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
    net = run(loss_text(list(values)), values)
    z = weight * (pred - target)
    np.testing.assert_allclose(net.blobs["loss"].data, smooth_l1_ref(z).sum() / 3, rtol=1e-12)
    net.blobs["loss"].diff[...] = 1.0
    net.backward()
    # weiliu89/caffe's backward: f'(w * d) / N, without the factor w
    np.testing.assert_allclose(net.blobs["p"].diff, smooth_l1_grad_ref(z) / 3, rtol=1e-12)


def test_sigma_zero_gives_zero_as_the_forks_do():
    values = {"p": RNG.normal(0, 1, (2, 3)), "t": RNG.normal(0, 1, (2, 3))}
    assert float(run(loss_text(["p", "t"], 0.0), values).blobs["loss"].data) == 0.0


def test_boundary_takes_the_linear_branch_as_the_forks_do():
    # |x| == 1/sigma^2 is not < 1/sigma^2: value |x| - 0.5/sigma^2, gradient sign(x)
    values = {"p": np.array([[0.25, -0.25]]), "t": np.zeros((1, 2))}
    net = run(loss_text(["p", "t"], 2.0), values)
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
        ({"p": (1, 2, 1, 1, 2), "t": (1, 2, 1, 1, 2)}, r"up to 4 axes"),
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


# ------------------------------------------------------------------- py-faster-rcnn's end-to-end training
@pytest.fixture
def faster_rcnn_lib(tmp_path, monkeypatch):
    """py-faster-rcnn's lib/ layout (roi_data_layer.layer, rpn.*) on sys.path, backed by the stand-ins."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "pylayers"))
    modules = {
        "roi_data_layer/layer.py": "RoIDataLayer",
        "rpn/anchor_target_layer.py": "AnchorTargetLayer",
        "rpn/proposal_layer.py": "ProposalLayer",
        "rpn/proposal_target_layer.py": "ProposalTargetLayer",
    }
    for path, cls in modules.items():
        file = tmp_path / "lib" / path
        file.parent.mkdir(parents=True, exist_ok=True)
        (file.parent / "__init__.py").touch()
        file.write_text(f"from faster_rcnn_stubs import {cls}  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    yield
    for name in list(sys.modules):
        if name.split(".")[0] in ("roi_data_layer", "rpn", "faster_rcnn_stubs"):
            del sys.modules[name]  # later tests must find no 'rpn' package (the built-in Proposal)


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


def solver_file(tmp_path: Path, **overrides: object) -> Path:
    """The fork's solver as py-faster-rcnn's SolverWrapper reads it, train_net pointed at the fixture."""
    param = text_format.Parse(ZF_SOLVER.read_text(), pb.SolverParameter())
    param.train_net = str(ZF_TRAIN)
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
