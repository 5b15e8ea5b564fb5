"""The R-CNN forks' region layers (ROIPooling, PSROIPooling, Proposal), py-faster-rcnn's Python proposal
layer built in, the consent rule for it, and fork names in unknown-type errors (issue 14, items 2 and 5).

Hand-computed cases follow the forks' rules (caffe-fast-rcnn's ROI rounding and empty bins, caffe-rfcn's
averaging, py-faster-rcnn's anchors, min size and NMS); cv2.dnn gives forward parity where OpenCV has the
type; gradients are checked against finite differences.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import asset
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.errors import LayerError, ParseError, UnknownLayerTypeError
from caffe.layer import layer_class
from caffe.layers.python import consent_refusal, python_layers
from caffe.layers.rcnn import generate_anchors
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import parse_text

FORKS = Path(__file__).parent / "data" / "forks"
ZF_TEST = FORKS / "py-faster-rcnn_ZF_faster_rcnn_end2end_test.prototxt"
RFCN_TEST = FORKS / "py-R-FCN_ResNet-50_rfcn_end2end_test_agnostic.prototxt"
RPN_PYTHON = "python_param { module: 'rpn.proposal_layer' layer: 'ProposalLayer' param_str: \"'feat_stride': 16\" }"
DEFAULT_PROPOSAL = "ratio: 0.5 ratio: 1 ratio: 2 scale: 8 scale: 16 scale: 32"


def _input(shapes: dict[str, tuple[int, ...]]) -> str:
    tops = " ".join(f'top: "{name}"' for name in shapes)
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes.values())
    return f'layer {{ name: "input" type: "Input" {tops} input_param {{ {dims} }} }}\n'


def _run(net: caffe.Net, inputs: dict[str, np.ndarray], top: str) -> np.ndarray:
    set_inputs(net, inputs)
    net.forward()
    return net.blobs[top].data.copy()


def _ours_and_cv2(
    tmp_path: Path,
    text: str,
    inputs: dict[str, np.ndarray],
    out: str,
    cv_text: str | None = None,
    spread: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``out`` of the net ``text`` here (random weights of std 0.1, or ``spread[layer]``) and of ``cv_text``
    (default ``text``) in cv2.dnn with the same weights."""
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    net = caffe.Net(str(proto), caffe.TEST)
    rng = np.random.default_rng(11)
    for name, blobs in net.params.items():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape) * (spread or {}).get(name, 0.1)
    ours = _run(net, inputs, out)
    weights = tmp_path / "net.caffemodel"
    net.save(str(weights))
    proto.write_text(cv_text or text)
    ref = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    for name, value in inputs.items():
        ref.setInput(value.astype(np.float32), name)
    return ours, ref.forward(out)


def _rois(count: int, batch: int, seed: int = 0) -> np.ndarray:
    """Random image-space ROIs (some half-way coordinates, some past the map's edges)."""
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(-20, 300, count), rng.uniform(-20, 250, count)
    rois = np.stack(
        [rng.integers(0, batch, count), x1, y1, x1 + rng.uniform(0, 200, count), y1 + rng.uniform(0, 200, count)], 1
    )
    rois[:6, 1:] = np.round(rois[:6, 1:] * 2) / 2
    return rois.astype(np.float32)


# ---------------------------------------------------------------------------- proto
def test_proto_fields_use_the_forks_numbers():
    fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    assert fields["roi_pooling_param"].number == 8266711  # caffe-fast-rcnn
    assert fields["psroi_pooling_param"].number == 10002  # caffe-rfcn
    assert fields["proposal_param"].number == 1201  # OpenCV's 201 is the SSD fork's multibox_loss_param
    roi = pb.ROIPoolingParameter()
    assert (roi.pooled_h, roi.pooled_w, roi.spatial_scale) == (0, 0, 1.0)
    p = pb.ProposalParameter()
    assert (p.feat_stride, p.base_size, p.min_size, p.pre_nms_topn, p.post_nms_topn) == (16, 16, 16, 6000, 300)
    assert p.nms_thresh == pytest.approx(0.7)
    assert [f.number for f in pb.ProposalParameter.DESCRIPTOR.fields] == list(range(1, 9))
    assert [f.number for f in pb.PSROIPoolingParameter.DESCRIPTOR.fields] == [1, 2, 3]
    assert pb.DropoutParameter.DESCRIPTOR.fields_by_name["scale_train"].number == 2


def test_ssd_caffemodel_multibox_loss_field_201_stays_unknown():
    """The res10 SSD .caffemodel carries MultiBoxLoss's multibox_loss_param as field 201: no clash."""
    net = pb.NetParameter()
    net.ParseFromString(asset("models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel").read_bytes())
    loss = [layer for layer in net.layer if layer.type == "MultiBoxLoss"]
    assert loss and not loss[0].HasField("proposal_param")


# ---------------------------------------------------------------------------- ROIPooling
def _roi_net(pooled: tuple[int, int], scale: float, x_shape: tuple[int, ...], rois: int) -> caffe.Net:
    text = (
        'type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" '
        f"roi_pooling_param {{ pooled_h: {pooled[0]} pooled_w: {pooled[1]} spatial_scale: {scale} }}"
    )
    return layer_net(text, {"x": x_shape, "rois": (rois, 5)})


def test_roi_pooling_rounds_half_away_from_zero():
    """ROI (1, 1, 5, 7) * 0.5 = (0.5, 0.5, 2.5, 3.5) rounds to cells (1, 1)-(3, 4): 4 rows x 3 columns;
    2x2 bins of 2 rows and 1.5 columns: rows [1, 3) and [3, 5), columns [1, 3) and [2, 4). With
    x[h, w] = -(1 + 6h + w) each bin's maximum is its top-left cell."""
    x = -(1.0 + np.arange(36.0)).reshape(1, 1, 6, 6)
    y = _run(_roi_net((2, 2), 0.5, x.shape, 1), {"x": x, "rois": np.array([[0, 1, 1, 5, 7]])}, "y")
    np.testing.assert_array_equal(y[0, 0], [[-8.0, -9.0], [-20.0, -21.0]])


def test_roi_pooling_empty_bins_are_zero():
    """ROI (8, 0, 18, 2) * 0.5 = cells (4, 0)-(9, 1): 6 columns in 2 bins, [4, 7) clipped to [4, 6) and
    [7, 10) clipped to nothing (0); an ROI wholly outside the map is all zeros."""
    x = -(1.0 + np.arange(36.0)).reshape(1, 1, 6, 6)
    rois = np.array([[0, 8, 0, 18, 2], [0, 40, 40, 60, 60]])
    y = _run(_roi_net((1, 2), 0.5, x.shape, 2), {"x": x, "rois": rois}, "y")
    np.testing.assert_array_equal(y[:, 0], [[[-5.0, 0.0]], [[0.0, 0.0]]])


def test_roi_pooling_refuses_bad_batch_index():
    net = _roi_net((2, 2), 1.0, (1, 1, 4, 4), 1)
    with pytest.raises(LayerError, match="batch indices"):
        _run(net, {"x": np.zeros((1, 1, 4, 4)), "rois": np.array([[1, 0, 0, 2, 2]])}, "y")


def test_roi_pooling_gradient_goes_to_the_argmax():
    rois = _rois(4, 2, seed=3)
    rois[:, 1:] /= 8
    net = _roi_net((2, 3), 0.5, (2, 2, 6, 7), len(rois))
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 7))
    check_gradient(net, {"x": x, "rois": rois}, check_bottoms=["x"], step=1e-6, max_elements=100)


def test_roi_pooling_ties_send_the_gradient_to_the_first_maximum():
    """The fork scans each bin row by row and keeps a value only if it is greater: ties go to the first."""
    net = _roi_net((1, 2), 1.0, (1, 1, 4, 4), 1)
    _run(net, {"x": np.zeros((1, 1, 4, 4)), "rois": np.array([[0, 0, 0, 3, 3]])}, "y")
    net.blobs["y"].diff[...] = [[[[1.0, 2.0]]]]
    net.backward()
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2] = 1.0, 2.0
    np.testing.assert_array_equal(net.blobs["x"].diff[0, 0], expected)


def test_roi_pooling_matches_cv2(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 20, 24)).astype(np.float32)
    rois = _rois(40, 2)
    layer = (
        'layer { name: "y" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" '
        "roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.0625 } }"
    )
    text = _input({"x": x.shape, "rois": rois.shape}) + layer
    ours, ref = _ours_and_cv2(tmp_path, text, {"x": x, "rois": rois}, "y")
    assert ours.shape == ref.shape == (40, 8, 3, 4)
    np.testing.assert_array_equal(ours, ref)


# ---------------------------------------------------------------------------- PSROIPooling
def _psroi_net(output_dim: int, group: int, scale: float, x_shape: tuple[int, ...], rois: int) -> caffe.Net:
    text = (
        'type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" psroi_pooling_param { '
        f"spatial_scale: {scale} output_dim: {output_dim} group_size: {group} }}"
    )
    return layer_net(text, {"x": x_shape, "rois": (rois, 5)})


def test_psroi_pooling_averages_each_bin_of_its_own_channel():
    """x[c, h, w] = 100c + 10h + w; ROI (0, 0, 3, 3): cells 0..round(3)+1 = 4, bins of 2x2 cells; output
    channel 1's bin (i, j) averages input channel (1 * 2 + i) * 2 + j = 4 + 2i + j. A ROI corner at 0.5
    rounds (half away) to 1: ROI (0.5, 0, 2.4, 3) has columns [1, 3), one per bin."""
    c, h, w = np.meshgrid(np.arange(8), np.arange(4), np.arange(4), indexing="ij")
    x = (100.0 * c + 10 * h + w)[None]
    rois = np.array([[0, 0, 0, 3, 3], [0, 0.5, 0, 2.4, 3]])
    y = _run(_psroi_net(2, 2, 1.0, x.shape, 2), {"x": x, "rois": rois}, "y")
    np.testing.assert_allclose(y[0, 0], [[5.5, 107.5], [225.5, 327.5]])
    np.testing.assert_allclose(y[0, 1], [[405.5, 507.5], [625.5, 727.5]])
    np.testing.assert_allclose(y[1, 0], [[6.0, 107.0], [226.0, 327.0]])


def test_psroi_pooling_empty_bins_and_required_fields():
    x = np.ones((1, 4, 4, 4))
    y = _run(_psroi_net(1, 2, 1.0, x.shape, 1), {"x": x, "rois": np.array([[0, 10, 10, 20, 20]])}, "y")
    np.testing.assert_array_equal(y, np.zeros((1, 1, 2, 2)))
    text = (
        'type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" psroi_pooling_param { output_dim: 1 group_size: 2 }'
    )
    with pytest.raises(LayerError, match="spatial_scale is required"):
        layer_net(text, {"x": (1, 4, 4, 4), "rois": (1, 5)})
    with pytest.raises(caffe.errors.ShapeError, match="output_dim \\* group_size\\^2 = 8 channels"):
        _psroi_net(2, 2, 1.0, (1, 4, 4, 4), 1)


def test_psroi_pooling_gradient():
    rois = _rois(5, 2, seed=4)
    rois[:, 1:] /= 10
    net = _psroi_net(2, 3, 0.5, (2, 18, 9, 10), len(rois))
    x = np.random.default_rng(2).standard_normal((2, 18, 9, 10))
    check_gradient(net, {"x": x, "rois": rois}, check_bottoms=["x"])


def test_psroi_pooling_matches_cv2(tmp_path: Path):
    x = np.random.default_rng(5).standard_normal((2, 27, 20, 24)).astype(np.float32)
    rois = _rois(40, 2, seed=6)
    layer = (
        'layer { name: "y" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" '
        "psroi_pooling_param { spatial_scale: 0.0625 output_dim: 3 group_size: 3 } }"
    )
    ours, ref = _ours_and_cv2(tmp_path, _input({"x": x.shape, "rois": rois.shape}) + layer, {"x": x, "rois": rois}, "y")
    assert ours.shape == ref.shape == (40, 3, 3, 3)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- Proposal
def test_default_anchors_are_py_faster_rcnns():
    """generate_anchors(base 16, ratios 0.5/1/2, scales 8/16/32): py-faster-rcnn's well-known 9."""
    expected = [
        [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
        [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
        [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
    ]  # fmt: skip
    np.testing.assert_array_equal(generate_anchors(16, (0.5, 1.0, 2.0), (8.0, 16.0, 32.0)), expected)


def _proposal_net(params: str, width: int, tops: int = 2) -> caffe.Net:
    top = 'top: "rois" top: "scores"' if tops == 2 else 'top: "rois"'
    text = f'type: "Proposal" bottom: "s" bottom: "d" bottom: "im_info" {top} proposal_param {{ {params} }}'
    return layer_net(text, {"s": (1, 2, 1, width), "d": (1, 4, 1, width), "im_info": (1, 3)}, dtype=torch.float32)


def _one_anchor_inputs(dx: list[float], scores: list[float]) -> dict[str, np.ndarray]:
    """One 16x16 anchor ([0, 15] around each cell) per cell of a 1 x len(dx) map, shifted by ``dx``."""
    width = len(dx)
    deltas = np.zeros((1, 4, 1, width))
    deltas[0, 0, 0] = dx
    s = np.stack([1 - np.array(scores), np.array(scores)])[None, :, None, :]
    return {"s": s, "d": deltas, "im_info": np.array([[16, 16 * width, 1.0]])}


def test_proposal_min_size_clip_and_nms_by_hand():
    """Anchors [0,0,15,15], [16,0,31,15], [32,0,47,15] (16 wide). Decoding keeps the centre at x1 + 8 and
    puts the corners 8 either side (py-faster-rcnn's asymmetry): the first becomes [0, 0, 16, 16], clipped to
    [0, 0, 16, 15]; the second, moved left by 0.5 * 16, [8, 0, 24, 15], overlapping the first by
    9 * 16 / (272 + 272 - 144) = 0.36; the third, moved right by 8, [40, 0, 56, 15] clipped to [40, 0, 47, 15]:
    8 wide, under min_size 16."""
    inputs = _one_anchor_inputs([0.0, -0.5, 0.5], [0.9, 0.8, 0.7])
    one = "ratio: 1 scale: 1 nms_thresh: {} min_size: {}"
    net = _proposal_net(one.format(0.7, 16), 3)
    rois = _run(net, inputs, "rois")
    np.testing.assert_allclose(rois, [[0, 0, 0, 16, 15], [0, 8, 0, 24, 15]])
    np.testing.assert_allclose(net.blobs["scores"].data, [[0.9], [0.8]], rtol=1e-6)
    rois = _run(_proposal_net(one.format(0.3, 16), 3), inputs, "rois")
    np.testing.assert_allclose(rois, [[0, 0, 0, 16, 15]])
    rois = _run(_proposal_net(one.format(0.3, 0), 3), inputs, "rois")
    np.testing.assert_allclose(rois, [[0, 0, 0, 16, 15], [0, 40, 0, 47, 15]])
    rois = _run(_proposal_net(one.format(0.7, 0) + " post_nms_topn: 2", 3, tops=1), inputs, "rois")
    assert rois.shape == (2, 5)


def _rpn_inputs(height: int, width: int, seed: int = 1, spread: float = 0.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((1, 2, 9, height, width))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {
        "s": probs.reshape(1, 18, height, width).astype(np.float32),
        "d": (spread * rng.standard_normal((1, 36, height, width))).astype(np.float32),
        "im_info": np.array([[height * 16, width * 16, 1.0]], np.float32),
    }


def _proposal_text(inputs: dict[str, np.ndarray], layer: str) -> str:
    body = 'name: "rois" bottom: "s" bottom: "d" bottom: "im_info" top: "rois" top: "scores" '
    return _input({k: v.shape for k, v in inputs.items()}) + f"layer {{ {body} {layer} }}"


def test_proposal_matches_cv2(tmp_path: Path):
    """OpenCV skips min_size and pads to post_nms_topn rows with zeros; min_size 0 here, padding cut."""
    inputs = _rpn_inputs(8, 10, spread=0.5)
    text = _proposal_text(inputs, f'type: "Proposal" proposal_param {{ {DEFAULT_PROPOSAL} min_size: 0 }}')
    ours, ref = _ours_and_cv2(tmp_path, text, inputs, "rois")
    assert 0 < len(ours) < len(ref) == 300
    np.testing.assert_allclose(ours, ref[: len(ours)], rtol=1e-6, atol=3e-5)
    assert not ref[len(ours) :].any()


def test_python_proposal_layer_is_built_in_and_matches_cv2(tmp_path: Path):
    """py-faster-rcnn's prototxt line, no rpn module anywhere: the built-in Proposal with the TEST config."""
    inputs = _rpn_inputs(8, 10)
    text = _proposal_text(inputs, f'type: "Python" {RPN_PYTHON}')
    cv_text = _proposal_text(inputs, f'type: "Proposal" proposal_param {{ {DEFAULT_PROPOSAL} }}')
    ours, ref = _ours_and_cv2(tmp_path, text, inputs, "rois", cv_text)
    assert 0 < len(ours) <= 300
    np.testing.assert_allclose(ours, ref[: len(ours)], rtol=1e-6, atol=3e-5)
    net = caffe.Net(_write(tmp_path, text), caffe.TEST)
    assert net.layers[-1].type == "Proposal"
    train = caffe.Net(_write(tmp_path, text), caffe.TRAIN)
    assert (train.layers[-1].settings.pre_nms_topn, train.layers[-1].settings.post_nms_topn) == (12000, 2000)
    assert (net.layers[-1].settings.pre_nms_topn, net.layers[-1].settings.min_size) == (6000, 16)


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return str(path)


def test_param_str_scales_and_errors(tmp_path: Path):
    inputs = _rpn_inputs(4, 5)
    scaled = RPN_PYTHON.replace("'feat_stride': 16", "{'feat_stride': 16, 'scales': [4, 8]}")
    text = _proposal_text(inputs, f'type: "Python" {scaled}')
    text = text.replace("dim: 18", "dim: 12").replace("dim: 36", "dim: 24")
    net = caffe.Net(_write(tmp_path, text), caffe.TEST)
    assert net.layers[-1].anchor_count == 6
    bad = RPN_PYTHON.replace("'feat_stride': 16", "'stride': 16")
    with pytest.raises(LayerError, match="feat_stride"):
        caffe.Net(_write(tmp_path, _proposal_text(inputs, f'type: "Python" {bad}')), caffe.TEST)


# ---------------------------------------------------------------------------- a small Faster R-CNN
def _faster_rcnn_text(proposal: str) -> str:
    """conv (stride 16) -> RPN heads (softmax over the 2 x 9 scores) -> proposals -> ROIPooling -> fc."""
    layers = f"""
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 8 kernel_size: 16 stride: 16 }} }}
layer {{ name: "rpn_conv" type: "Convolution" bottom: "conv" top: "rpn_conv"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 }} }}
layer {{ name: "rpn_relu" type: "ReLU" bottom: "rpn_conv" top: "rpn_conv" }}
layer {{ name: "rpn_cls_score" type: "Convolution" bottom: "rpn_conv" top: "rpn_cls_score"
  convolution_param {{ num_output: 18 kernel_size: 1 }} }}
layer {{ name: "rpn_bbox_pred" type: "Convolution" bottom: "rpn_conv" top: "rpn_bbox_pred"
  convolution_param {{ num_output: 36 kernel_size: 1 }} }}
layer {{ name: "rpn_cls_score_reshape" type: "Reshape" bottom: "rpn_cls_score" top: "rpn_cls_score_reshape"
  reshape_param {{ shape {{ dim: 0 dim: 2 dim: -1 dim: 0 }} }} }}
layer {{ name: "rpn_cls_prob" type: "Softmax" bottom: "rpn_cls_score_reshape" top: "rpn_cls_prob" }}
layer {{ name: "rpn_cls_prob_reshape" type: "Reshape" bottom: "rpn_cls_prob" top: "rpn_cls_prob_reshape"
  reshape_param {{ shape {{ dim: 0 dim: 18 dim: -1 dim: 0 }} }} }}
layer {{ name: "proposal" bottom: "rpn_cls_prob_reshape" bottom: "rpn_bbox_pred" bottom: "im_info" top: "rois"
  {proposal} }}
layer {{ name: "roi_pool" type: "ROIPooling" bottom: "conv" bottom: "rois" top: "pool"
  roi_pooling_param {{ pooled_w: 3 pooled_h: 3 spatial_scale: 0.0625 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param {{ num_output: 5 }} }}
layer {{ name: "cls_prob" type: "Softmax" bottom: "fc" top: "cls_prob" }}
"""
    return _input({"data": (1, 3, 96, 128), "im_info": (1, 3)}) + layers


def test_small_faster_rcnn_runs_end_to_end_like_cv2(tmp_path: Path):
    """The Python proposal layer here, OpenCV's native Proposal there: the same class scores per ROI (small
    bbox deltas, so that no proposal is under min_size, which OpenCV does not apply)."""
    data = np.random.default_rng(7).standard_normal((1, 3, 96, 128)).astype(np.float32)
    inputs = {"data": data, "im_info": np.array([[96, 128, 1.0]], np.float32)}
    text = _faster_rcnn_text(f'type: "Python" {RPN_PYTHON}')
    cv_text = _faster_rcnn_text(f'type: "Proposal" proposal_param {{ {DEFAULT_PROPOSAL} }}')
    ours, ref = _ours_and_cv2(tmp_path, text, inputs, "cls_prob", cv_text, {"rpn_bbox_pred": 0.005})
    assert ours.shape[1] == 5 and 0 < len(ours) <= len(ref)
    np.testing.assert_allclose(ours, ref[: len(ours)], rtol=1e-4, atol=1e-6)


def test_dropout_scale_train_false_scales_at_test_time():
    """caffe-fast-rcnn's Dropout (py-faster-rcnn's fc6/fc7): TEST multiplies by 1 - ratio, TRAIN does not scale."""
    text = 'type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.25 scale_train: false }'
    x = np.ones((4, 50))
    test = layer_net(text, {"x": x.shape}, dtype=torch.float32, force_backward=False)
    np.testing.assert_allclose(_run(test, {"x": x}, "y"), 0.75 * x)
    train = layer_net(text, {"x": x.shape}, phase=caffe.TRAIN, dtype=torch.float32, force_backward=False)
    assert set(np.unique(_run(train, {"x": x}, "y"))) == {0.0, 1.0}


def test_py_faster_rcnn_zf_test_prototxt_runs():
    """rbgirshick/py-faster-rcnn's ZF end2end test.prototxt as published (Python proposal layer, ROIPooling,
    Dropout's scale_train), random weights, a 128x160 image."""
    _, out = _run_fork_test_net(ZF_TEST, 0.01)
    assert out["cls_prob"].shape[1] == 21 and out["bbox_pred"].shape[1] == 84


def test_py_r_fcn_resnet50_test_prototxt_runs():
    """YuwenXiong/py-R-FCN's ResNet-50 rfcn_end2end test_agnostic.prototxt as published (Python proposal
    layer, PSROIPooling of 21 and 8 x 7 x 7 position-sensitive maps), random weights, a 128x160 image."""
    net, out = _run_fork_test_net(RFCN_TEST, 0.05)
    assert out["cls_prob"].shape[1] == 21 and out["bbox_pred"].shape[1] == 8
    pooled = net.blobs["psroipooled_cls_rois"].data
    assert pooled.shape == (len(out["cls_prob"]), 21, 7, 7) and np.isfinite(pooled).all()


def _run_fork_test_net(path: Path, spread: float) -> tuple[caffe.Net, dict[str, np.ndarray]]:
    """Build a fork's test prototxt, fill random weights (BatchNorm: mean 0, variance 1), run a 128x160
    image with its im_info; check the ROIs and the class probabilities of each."""
    net = caffe.Net(str(path), caffe.TEST)
    gen = torch.Generator().manual_seed(0)
    types = {name: layer.type for name, layer in zip(net._layer_names, net.layers, strict=True)}
    for name, blobs in net.params.items():
        for k, b in enumerate(blobs):
            if types[name] == "BatchNorm":
                b.data[...] = float(k > 0)
            else:
                b.data[...] = (torch.randn(b.data.shape, generator=gen) * spread).numpy()
    rng = np.random.default_rng(0)
    inputs = {"data": rng.standard_normal((1, 3, 128, 160)) * 50, "im_info": np.array([[128, 160, 1.0]])}
    set_inputs(net, inputs)
    out = {name: value.copy() for name, value in net.forward().items()}
    rois = net.blobs["rois"].data
    assert 0 < len(rois) <= 300 and len(out["cls_prob"]) == len(out["bbox_pred"]) == len(rois)
    assert rois[:, 1:].min() >= 0 and rois[:, 3].max() <= 159 and rois[:, 4].max() <= 127
    np.testing.assert_allclose(out["cls_prob"].sum(1), 1.0, rtol=1e-5)
    assert net.layers[list(net._layer_names).index("proposal")].type == "Proposal"
    return net, out


# ---------------------------------------------------------------------------- consent
def _net_param(text: str) -> pb.NetParameter:
    return parse_text(text, pb.NetParameter())


USER_LAYER = 'layer { name: "mine" type: "Python" bottom: "x" top: "y" python_param { module: "my" layer: "L" } }\n'
RPN_LAYER = f'layer {{ name: "proposal" type: "Python" bottom: "s" bottom: "d" top: "rois" {RPN_PYTHON} }}\n'


def test_consent_refuses_user_python_layers_not_the_built_in_proposal():
    user = _net_param(USER_LAYER)
    refusal = consent_refusal(user, "deploy.prototxt", False, "caffe serve")
    assert refusal and "layer 'mine'" in refusal and "--allow_python_layers" in refusal
    assert consent_refusal(user, "deploy.prototxt", True, "caffe serve") is None
    rpn = _net_param(RPN_LAYER)
    assert python_layers(rpn) == []
    assert consent_refusal(rpn, "deploy.prototxt", False, "caffe serve") is None
    both = _net_param(RPN_LAYER + USER_LAYER)
    assert [layer.name for layer in python_layers(both)] == ["mine"]


@pytest.fixture
def user_rpn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A user's own ``rpn`` package on sys.path (removed again, with its modules, afterwards)."""
    package = tmp_path / "user" / "rpn"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "proposal_layer.py").write_text(
        "import caffe\n\n\nclass ProposalLayer(caffe.Layer):\n"
        "    def reshape(self, bottom, top):\n        top[0].reshape(2, 5)\n\n"
        "    def forward(self, bottom, top):\n        top[0].data[...] = 7.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "user"))
    yield package
    for name in ("rpn.proposal_layer", "rpn"):
        sys.modules.pop(name, None)


def test_users_own_rpn_module_wins_and_needs_consent(tmp_path: Path, user_rpn: Path):
    rpn = _net_param(RPN_LAYER)
    assert [layer.name for layer in python_layers(rpn)] == ["proposal"]
    assert "layer 'proposal'" in consent_refusal(rpn, "deploy.prototxt", False, "caffe serve")
    inputs = _rpn_inputs(2, 3)
    net = caffe.Net(_write(tmp_path, _proposal_text(inputs, f'type: "Python" {RPN_PYTHON}')), caffe.TEST)
    assert net.layers[-1].type == "Python"
    np.testing.assert_array_equal(_run(net, inputs, "rois"), np.full((2, 5), 7.0))


def test_training_modules_of_py_faster_rcnn_are_named():
    text = 'type: "Python" bottom: "x" top: "y" python_param { module: "rpn.anchor_target_layer" layer: "Target" }'
    with pytest.raises(LayerError, match="py-faster-rcnn's RPN training layer"):
        layer_net(text, {"x": (1, 2)})


# ---------------------------------------------------------------------------- unknown types
@pytest.mark.parametrize(
    ("type_name", "fork"),
    [
        ("Region", "darknet's region layer"),
        ("ROIAlign", "Mask R-CNN"),
    ],
)
def test_unknown_fork_types_name_their_fork(type_name: str, fork: str):
    with pytest.raises(UnknownLayerTypeError, match=f"layer 'l' has unknown type '{type_name}' \\(a Caffe fork's type"):
        layer_class(type_name, "l")
    with pytest.raises(UnknownLayerTypeError, match=fork):
        layer_class(type_name, "l")


def test_truly_unknown_types_keep_the_plain_error(tmp_path: Path):
    with pytest.raises(UnknownLayerTypeError, match=r"^layer 'l' has unknown type 'Qwxz'$"):
        layer_class("Qwxz", "l")
    with pytest.raises(UnknownLayerTypeError, match="did you mean 'ROIPooling'"):
        layer_class("ROIPoolin", "l")


def test_fork_prototxt_with_unknown_fields_names_the_fork(tmp_path: Path):
    text = _input({"x": (1, 2)}) + 'layer { name: "region" type: "Region" bottom: "x" }'
    with pytest.raises(UnknownLayerTypeError, match=r"Region.*from the YOLOv2 Caffe ports"):
        caffe.Net(_write(tmp_path, text), caffe.TEST)
    with pytest.raises(ParseError):
        parse_text("layer { name: 'x' type: 'ReLU' relu_param { nonsense: 1 } }", pb.NetParameter())
