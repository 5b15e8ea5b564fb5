"""The SSD fork's layers (Normalize, Permute, PriorBox, DetectionOutput): hand-computed cases from the fork's
rules, gradient checks, forward parity with OpenCV's cv2.dnn, and the res10 SSD face detector end to end."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import asset
from google.protobuf import text_format
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.proto import caffe_pb2 as pb


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _forward(net: caffe.Net, inputs: dict[str, np.ndarray], top: str = "y") -> np.ndarray:
    set_inputs(net, inputs)
    net.forward()
    return net.blobs[top].data.copy()


def _cv2_forward(net: caffe.Net, tmp_path: Path, inputs: dict[str, np.ndarray], layer: str = "layer") -> np.ndarray:
    """The same net (prototxt + caffemodel written by us) run by cv2.dnn."""
    proto, model = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    param = net.to_proto()
    for lp in param.layer:
        for blob in lp.blobs:
            if not blob.shape.dim:  # cv2 cannot read a 0-axis blob (the fork's shared Normalize scale)
                blob.shape.dim.append(1)
    model.write_bytes(param.SerializeToString())
    proto.write_text(text_format.MessageToString(_without_blobs(param)))
    cv = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    for name, value in inputs.items():
        cv.setInput(value.astype(np.float32), name)
    return cv.forward(layer)


def _without_blobs(param: pb.NetParameter) -> pb.NetParameter:
    for layer in param.layer:
        del layer.blobs[:]
    return param


# ---------------------------------------------------------------------------- proto
def test_proto_uses_the_fork_field_numbers_and_defaults():
    fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    numbers = {name: fields[name].number for name in ("permute_param", "prior_box_param", "norm_param")}
    assert numbers == {"permute_param": 202, "prior_box_param": 203, "norm_param": 206}
    assert fields["detection_output_param"].number == 204
    assert pb.NormalizeParameter().eps == pytest.approx(1e-10)
    assert pb.NormalizeParameter().across_spatial and pb.NormalizeParameter().channel_shared
    prior = pb.PriorBoxParameter()
    assert (prior.flip, prior.clip, prior.offset) == (True, False, 0.5)
    det = pb.DetectionOutputParameter()
    assert (det.share_location, det.background_label_id, det.keep_top_k, det.code_type) == (True, 0, -1, 1)
    assert det.nms_param.nms_threshold == pytest.approx(0.3) and det.nms_param.eta == 1.0
    numbers = {f.name: f.number for f in pb.DetectionOutputParameter.DESCRIPTOR.fields}
    assert numbers["variance_encoded_in_target"] == 8 and numbers["keep_top_k"] == 7 and numbers["clip"] == 1000
    assert pb.SaveOutputParameter.DESCRIPTOR.fields_by_name["resize_param"].number == 7


# ---------------------------------------------------------------------------- Normalize
def _normalize(across: bool, shared: bool, extra: str = "") -> str:
    return (
        'type: "Normalize" bottom: "x" top: "y" norm_param { '
        f"across_spatial: {str(across).lower()} channel_shared: {str(shared).lower()} {extra} }}"
    )


def _normalize_reference(x: np.ndarray, scale: np.ndarray, across: bool, eps: float) -> np.ndarray:
    axes = (1, 2, 3) if across else (1,)
    norm = np.sqrt(np.sum(x * x, axis=axes, keepdims=True) + eps)
    return x / norm * scale.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_forward(across, shared):
    filler = 'scale_filler { type: "gaussian" std: 3 }'
    net = layer_net(_normalize(across, shared, filler + " eps: 0.25"), {"x": (2, 3, 4, 5)})
    scale = net.params["layer"][0].data
    assert scale.shape == (() if shared else (3,))
    x = _rand(2, 3, 4, 5)
    expect = _normalize_reference(x, np.broadcast_to(scale, (3,)), across, float(np.float32(0.25)))
    np.testing.assert_allclose(_forward(net, {"x": x}), expect, rtol=1e-12)


def test_normalize_default_scale_is_one_and_spatial_sums_are_per_position():
    net = layer_net('type: "Normalize" bottom: "x" top: "y" norm_param { across_spatial: false }', {"x": (1, 2, 1, 2)})
    x = np.array([3.0, 1.0, 4.0, 0.0]).reshape(1, 2, 1, 2)  # positions (3, 4) and (1, 0)
    y = _forward(net, {"x": x})
    np.testing.assert_allclose(y.reshape(2, 2), [[0.6, 1.0], [0.8, 0.0]], rtol=1e-9)


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_gradient(across, shared):
    filler = "" if not shared else 'scale_filler { type: "constant" value: 2.5 }'
    net = layer_net(_normalize(across, shared, filler), {"x": (2, 3, 2, 3)})
    check_gradient(net, {"x": _rand(2, 3, 2, 3)}, threshold=1e-6)


@pytest.mark.parametrize("across", [True, False])
def test_normalize_backward_is_the_forks_with_per_channel_scales(across):
    """The fork multiplies the normalization's gradient by the scale afterwards: s * J^T dy."""
    net = layer_net(_normalize(across, False, 'scale_filler { type: "gaussian" }'), {"x": (2, 3, 2, 2)})
    s = net.params["layer"][0].data.copy()
    x, g = _rand(2, 3, 2, 2), _rand(2, 3, 2, 2, seed=4)
    _forward(net, {"x": x})
    net.blobs["y"].diff[...] = g
    net.backward()
    axes = (1, 2, 3) if across else (1,)
    norm = np.sqrt(np.sum(x * x, axis=axes, keepdims=True) + 1e-10)
    dot = np.sum(x * g, axis=axes, keepdims=True)
    fork = (g - x * dot / norm**2) / norm * s.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(net.blobs["x"].diff, fork, rtol=1e-9, atol=1e-12)
    z = x / norm
    np.testing.assert_allclose(net.params["layer"][0].diff, np.sum(z * g, axis=(0, 2, 3)), rtol=1e-9)


# OpenCV refuses per-channel scales with across_spatial (its scale must then have one value).
@pytest.mark.parametrize(("across", "shared"), [(True, True), (False, True), (False, False)])
def test_normalize_matches_cv2(tmp_path, across, shared):
    text = _normalize(across, shared, 'scale_filler { type: "uniform" min: 1 max: 20 }')
    net = layer_net(text, {"x": (2, 4, 5, 6)}, dtype=torch.float32)
    x = _rand(2, 4, 5, 6).astype(np.float32)
    ours = _forward(net, {"x": x})
    np.testing.assert_allclose(ours, _cv2_forward(net, tmp_path, {"x": x}), rtol=1e-5, atol=1e-6)


def test_normalize_errors():
    with pytest.raises(caffe.ShapeError, match="at least 2 axes"):
        layer_net(_normalize(True, True), {"x": (4,)})
    net = layer_net(_normalize(True, False), {"x": (1, 3, 2, 2)})
    net.blobs["x"].reshape(1, 4, 2, 2)
    with pytest.raises(caffe.ShapeError, match=r"layer.*4 channels"):
        net.reshape()


# ---------------------------------------------------------------------------- Permute
def _permute(*order: int) -> str:
    return 'type: "Permute" bottom: "x" top: "y" permute_param { ' + " ".join(f"order: {o}" for o in order) + " }"


@pytest.mark.parametrize(("order", "full"), [((0, 2, 3, 1), (0, 2, 3, 1)), ((3, 1), (3, 1, 0, 2)), ((), (0, 1, 2, 3))])
def test_permute_forward_and_gradient(order, full):
    net = layer_net(_permute(*order), {"x": (2, 3, 4, 5)})
    x = _rand(2, 3, 4, 5)
    y = _forward(net, {"x": x})
    np.testing.assert_array_equal(y, np.transpose(x, full))
    check_gradient(net, {"x": x})


def test_permute_matches_cv2(tmp_path):
    net = layer_net(_permute(0, 2, 3, 1), {"x": (2, 3, 4, 5)}, dtype=torch.float32)
    x = _rand(2, 3, 4, 5).astype(np.float32)
    np.testing.assert_array_equal(_forward(net, {"x": x}), _cv2_forward(net, tmp_path, {"x": x}))


def test_permute_errors():
    with pytest.raises(caffe.ShapeError, match="order 4 is out of range"):
        layer_net(_permute(0, 4), {"x": (2, 3, 4, 5)})
    with pytest.raises(caffe.LayerError, match=r"'layer'.*repeats axis 2"):
        layer_net(_permute(2, 2), {"x": (2, 3, 4, 5)})


# ---------------------------------------------------------------------------- PriorBox
def _prior_box(params: str, bottoms: tuple[str, ...] = ("x", "img")) -> str:
    tops = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'type: "PriorBox" {tops} top: "y" prior_box_param {{ {params} }}'


def _prior_net(params: str, feature=(1, 1, 2, 2), image=(1, 3, 20, 20), **kw) -> caffe.Net:
    bottoms = {"x": feature, "img": image} if image else {"x": feature}
    return layer_net(_prior_box(params, tuple(bottoms)), bottoms, **kw)


def _corners(cx: float, cy: float, w: float, h: float, img_w: float, img_h: float) -> list[float]:
    return [(cx - w / 2) / img_w, (cy - h / 2) / img_h, (cx + w / 2) / img_w, (cy + h / 2) / img_h]


def test_prior_box_sizes_ratios_and_order():
    """Per cell (rows, then columns): min_size, sqrt(min*max), then r and 1/r for each aspect ratio."""
    net = _prior_net("min_size: 4 max_size: 9 aspect_ratio: 2 variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2")
    y = net.forward()["y"]
    assert y.shape == (1, 2, 2 * 2 * 4 * 4)
    r = math.sqrt(2)
    expect = []
    for cy in (5, 15):  # step = 20 / 2, offset 0.5
        for cx in (5, 15):
            for w, h in ((4, 4), (6, 6), (4 * r, 4 / r), (4 / r, 4 * r)):
                expect += _corners(cx, cy, w, h, 20, 20)
    np.testing.assert_allclose(y[0, 0], expect, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y[0, 1], [0.1, 0.1, 0.2, 0.2] * 16, rtol=1e-7)


def test_prior_box_flip_duplicates_step_offset_and_image_size():
    params = "min_size: 8 aspect_ratio: 3 aspect_ratio: 3 aspect_ratio: 1 flip: false step: 8 offset: 0.25 img_size: 32"
    net = _prior_net(params, feature=(1, 1, 1, 2), image=None)
    y = net.forward()["y"]
    r = math.sqrt(3)
    expect = []
    for cx in (0.25 * 8, 1.25 * 8):
        expect += _corners(cx, 2, 8, 8, 32, 32) + _corners(cx, 2, 8 * r, 8 / r, 32, 32)
    np.testing.assert_allclose(y[0, 0], expect, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y[0, 1], 0.1, rtol=1e-7)  # the default variance


def test_prior_box_step_h_w_img_h_w_clip_and_integer_sizes():
    params = "min_size: 16.9 step_h: 4 step_w: 10 img_h: 40 img_w: 20 clip: true variance: 0.3"
    y = _prior_net(params, feature=(1, 1, 1, 1), image=None).forward()["y"]
    # the fork truncates min_size to an int: 16, centred at (5, 2), clipped to [0, 1]
    np.testing.assert_allclose(y[0, 0], np.clip(_corners(5, 2, 16, 16, 20, 40), 0, 1), rtol=1e-6)
    np.testing.assert_allclose(y[0, 1], 0.3, rtol=1e-7)


@pytest.mark.parametrize(
    "params",
    [
        "min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false "
        "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5",
        "min_size: 45 max_size: 99 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: true variance: 0.1",
        "min_size: 10 aspect_ratio: 0.5 flip: false clip: false step_h: 7 step_w: 9 offset: 0.3 variance: 0.2",
        # OpenCV ignores img_h/img_w (it always reads bottom[1]), so they equal the image's size here
        "min_size: 20 max_size: 50 clip: false img_h: 75 img_w: 100 variance: 0.1",
    ],
)
def test_prior_box_matches_cv2(tmp_path, params):
    net = _prior_net(params, feature=(1, 4, 5, 7), image=(1, 3, 75, 100), dtype=torch.float32)
    inputs = {"x": _rand(1, 4, 5, 7), "img": _rand(1, 3, 75, 100)}
    ours = _forward(net, inputs)
    np.testing.assert_allclose(ours, _cv2_forward(net, tmp_path, inputs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("aspect_ratio: 2", "must provide min_size"),
        ("min_size: 10 max_size: 5", "greater than min_size"),
        ("min_size: 10 variance: 0.1 variance: 0.2", "1 or 4 values"),
        ("min_size: 10 step: 4 step_h: 4 step_w: 4", "either step or step_h/step_w"),
        ("min_size: 10 img_h: 4", "must be positive"),
    ],
)
def test_prior_box_errors(params, message):
    with pytest.raises(caffe.LayerError, match=message):
        _prior_net(params)
    with pytest.raises(caffe.LayerError, match="needs the image as bottom"):
        _prior_net("min_size: 4", image=None)


# ---------------------------------------------------------------------------- DetectionOutput
def _detection_net(params: str, num: int, priors: int, classes: int, loc_classes: int = 1, **kw) -> caffe.Net:
    text = (
        'type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "y" '
        f"detection_output_param {{ num_classes: {classes} {params} }}"
    )
    shapes = {"loc": (num, priors * loc_classes * 4), "conf": (num, priors * classes), "prior": (1, 2, priors * 4)}
    return layer_net(text, shapes, force_backward=False, **kw)


PRIORS = np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9]])


def _detect(params: str, scores: np.ndarray, loc=None, priors=PRIORS, variance=(0.1, 0.1, 0.2, 0.2), **kw):
    """Run DetectionOutput on one image: scores (P, C), loc (P, L, 4) (zeros: the priors themselves)."""
    p, c = scores.shape
    loc = np.zeros((p, 1, 4)) if loc is None else loc
    net = _detection_net(params, 1, p, c, loc.shape[1], **kw)
    prior = np.stack([priors.reshape(-1), np.tile(variance, p)]).reshape(1, 2, -1)
    inputs = {"loc": loc.reshape(1, -1), "conf": scores.reshape(1, -1), "prior": prior}
    return _forward(net, inputs)[0, 0]


def _row(label: int, score: float, box, image: int = 0) -> list[float]:
    return [image, label, score, *box]


def test_detection_output_nms_threshold_top_k_and_confidence():
    scores = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])  # background 0, class 1
    out = _detect("nms_param { nms_threshold: 0.45 }", scores)
    # prior 1 overlaps prior 0 (IoU 0.905) and is suppressed; prior 2 is kept
    np.testing.assert_allclose(out, [_row(1, 0.9, PRIORS[0]), _row(1, 0.7, PRIORS[2])], rtol=1e-6)
    loose = _detect("nms_param { nms_threshold: 0.95 }", scores)
    np.testing.assert_allclose(loose[:, 2], [0.9, 0.8, 0.7], rtol=1e-6)
    np.testing.assert_allclose(_detect("nms_param { nms_threshold: 0.95 top_k: 2 }", scores)[:, 2], [0.9, 0.8])
    only = _detect("nms_param { nms_threshold: 0.45 } confidence_threshold: 0.75", scores)
    np.testing.assert_allclose(only, [_row(1, 0.9, PRIORS[0])], rtol=1e-6)


def test_detection_output_keep_top_k_across_classes_groups_by_label():
    scores = np.array([[0.0, 0.9, 0.3], [0.0, 0.1, 0.2], [0.0, 0.6, 0.95]])
    params = "nms_param { nms_threshold: 0.45 } keep_top_k: 3"
    out = _detect(params, scores)
    # best three overall: 0.95 (class 2, prior 2), 0.9 (class 1, prior 0), 0.6 (class 1, prior 2)
    expect = [_row(1, 0.9, PRIORS[0]), _row(1, 0.6, PRIORS[2]), _row(2, 0.95, PRIORS[2])]
    np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_detection_output_share_location_false_and_no_background():
    scores = np.array([[0.8, 0.1], [0.1, 0.2], [0.1, 0.7]])
    loc = np.zeros((3, 2, 4))
    loc[:, 1, :] = 1.0  # class 1's boxes move by variance * 1
    out = _detect("share_location: false background_label_id: -1 nms_param { nms_threshold: 0.45 }", scores, loc)
    shifted = PRIORS + np.array([0.1, 0.1, 0.2, 0.2])
    expect = [_row(0, 0.8, PRIORS[0]), _row(0, 0.1, PRIORS[2]), _row(1, 0.7, shifted[2]), _row(1, 0.2, shifted[1])]
    np.testing.assert_allclose(out, expect, rtol=1e-6)
    shared = _detect("background_label_id: -1 nms_param { nms_threshold: 0.45 } keep_top_k: 1", scores)
    np.testing.assert_allclose(shared, [_row(0, 0.8, PRIORS[0])], rtol=1e-6)


@pytest.mark.parametrize(
    ("code", "in_target", "loc", "expect"),
    [
        ("CORNER", False, [1, -1, 2, 0.5], [0.3, 0.1, 0.6 + 0.4, 0.4 + 0.1]),
        ("CORNER", True, [0.1, -0.1, 0.4, 0.1], [0.3, 0.1, 1.0, 0.5]),
        ("CENTER_SIZE", False, [1, -1, math.log(2) / 0.2, 0], [0.04, 0.18, 0.84, 0.38]),
        ("CENTER_SIZE", True, [0.1, -0.1, math.log(2), 0], [0.04, 0.18, 0.84, 0.38]),
        ("CORNER_SIZE", False, [1, -1, 2, 0.5], [0.2 + 0.04, 0.2 - 0.02, 0.6 + 0.16, 0.4 + 0.02]),
        ("CORNER_SIZE", True, [0.1, -0.1, 0.4, 0.1], [0.24, 0.18, 0.76, 0.42]),
    ],
)
def test_detection_output_code_types(code, in_target, loc, expect):
    prior = np.array([[0.2, 0.2, 0.6, 0.4]])  # width 0.4, height 0.2, centre (0.4, 0.3)
    params = f"code_type: {code} variance_encoded_in_target: {str(in_target).lower()}"
    out = _detect(params, np.array([[0.0, 0.5]]), np.array(loc, dtype=float).reshape(1, 1, 4), prior)
    np.testing.assert_allclose(out, [_row(1, 0.5, expect)], rtol=1e-5, atol=1e-6)


def test_detection_output_no_detection_rows_and_clip():
    scores = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    out = _detect("confidence_threshold: 0.5", scores)
    np.testing.assert_array_equal(out, [[0, -1, -1, -1, -1, -1, -1]])
    net = _detection_net("confidence_threshold: 0.5", 2, 3, 2)
    prior = np.stack([PRIORS.reshape(-1), np.full(12, 0.1)]).reshape(1, 2, -1)
    inputs = {"loc": np.zeros((2, 12)), "conf": np.tile(scores.reshape(1, -1), (2, 1)), "prior": prior}
    np.testing.assert_array_equal(_forward(net, inputs)[0, 0], [[0, *[-1] * 6], [1, *[-1] * 6]])
    loc = np.array([-5.0, 0, 5, 0]).reshape(1, 1, 4)
    clipped = _detect("clip: true", np.array([[0.0, 0.5]]), loc, PRIORS[:1])
    np.testing.assert_allclose(clipped, [_row(1, 0.5, [0, 0.1, 1, 0.5])], rtol=1e-6)


def test_detection_output_errors():
    with pytest.raises(caffe.LayerError, match="must specify num_classes"):
        layer_net(
            'type: "DetectionOutput" bottom: "a" bottom: "b" bottom: "c" top: "y"',
            {"a": (1, 4), "b": (1, 2), "c": (1, 2, 4)},
        )
    with pytest.raises(caffe.ShapeError, match=r"confidence bottom .* needs 6 channels"):
        layer_net(
            'type: "DetectionOutput" bottom: "a" bottom: "b" bottom: "c" top: "y" '
            "detection_output_param { num_classes: 3 }",
            {"a": (1, 8), "b": (1, 4), "c": (1, 2, 8)},
        )


def _sorted_rows(rows: np.ndarray) -> np.ndarray:
    rows = rows[np.any(rows != 0, axis=1)]  # cv2 pads with zero rows
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


@pytest.mark.parametrize("code", ["CORNER", "CENTER_SIZE"])
@pytest.mark.parametrize("share", [True, False])
def test_detection_output_matches_cv2(tmp_path, code, share):
    num, priors, classes = 2, 60, 4
    rng = np.random.default_rng(7)
    lo = rng.uniform(0, 0.7, (priors, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.05, 0.3, (priors, 2))], axis=1)
    prior = np.stack([boxes.reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], priors)]).reshape(1, 2, -1)
    loc_classes = 1 if share else classes
    params = (
        f"share_location: {str(share).lower()} code_type: {code} nms_param {{ nms_threshold: 0.45 top_k: 40 }} "
        "keep_top_k: 25 confidence_threshold: 0.05 background_label_id: 0"  # cv2 requires the last one
    )
    net = _detection_net(params, num, priors, classes, loc_classes, dtype=torch.float32)
    conf = rng.dirichlet(np.ones(classes), (num, priors)).reshape(num, -1)
    inputs = {"loc": rng.normal(0, 1, (num, priors * loc_classes * 4)), "conf": conf, "prior": prior}
    inputs = {k: v.astype(np.float32) for k, v in inputs.items()}
    ours, ref = _forward(net, inputs)[0, 0], _cv2_forward(net, tmp_path, inputs)[0, 0]
    assert len(ours) == 2 * 25
    np.testing.assert_allclose(_sorted_rows(ours), _sorted_rows(ref), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- the res10 SSD face detector
def _face_input(name: str) -> np.ndarray:
    image = cv2.imread(str(asset(f"models/mtcnn_face_caffe/{name}")), cv2.IMREAD_COLOR)
    return cv2.dnn.blobFromImage(cv2.resize(image, (300, 300)), 1.0, (300, 300), (104.0, 177.0, 123.0))


@pytest.mark.parametrize(("name", "faces"), [("test1.jpg", 2), ("test2.jpg", 1)])
def test_res10_ssd_face_detector_matches_cv2(name, faces):
    proto = asset("models/res10_ssd_face_prototxt_only/deploy.prototxt")
    weights = asset("models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel")
    blob = _face_input(name)
    cv = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv.setInput(blob)
    ref = cv.forward()[0, 0]
    net = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    net.blobs["data"].data[...] = blob
    ours = net.forward()["detection_out"][0, 0]
    assert ours.shape[1] == 7 and 0 < len(ours) <= 200
    kept = ref[: len(ours)]
    assert not np.any(ref[len(ours) :])  # cv2 pads its 200 rows with zeros
    np.testing.assert_array_equal(ours[:, :2], kept[:, :2])
    np.testing.assert_allclose(ours[:, 2], kept[:, 2], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours[:, 3:], kept[:, 3:], atol=1e-4, rtol=0)
    assert int(np.sum(ours[:, 2] > 0.5)) == int(np.sum(ref[:, 2] > 0.5)) == faces
