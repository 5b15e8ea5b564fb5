"""DIGITS' DetectNet (NVIDIA/caffe's layers), checked in these ways:

- The grid labels of ``DetectNetTransformation`` computed by hand for boxes chosen to hit each rule (coverage
  size, the grid's edges, class mapping, overwriting, cropping, the normalization weight).
- Its images and boxes against plain array operations (resize, flip, crop, the HSV colour facts), and against
  each other: after random augmentation a bright box in the image lies where its label says.
- ``L1Loss`` by hand and by finite differences; the clustering and scoring layers on hand-made grids.
- NVIDIA/caffe's own DetectNet network (KITTI), trained two iterations here from DIGITS-format LMDBs, its
  validation reporting mAP, precision and recall, and its deploy form run at full size.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from fork_nets import FORKS
from google.protobuf import text_format
from gradcheck import check_gradient, layer_net

import caffe
from caffe.data.datum import datum_to_array, parse_datum
from caffe.data.db import open_db
from caffe.data.detectnet import (
    Augmentation,
    CoverageLabels,
    box_table,
    draw_augmentation,
    read_boxes,
    rotation_matrix,
    transform_boxes,
    transform_image,
)
from caffe.deploy.detection import detectnet_rows
from caffe.errors import CaffeError
from caffe.layers.python import python_layers
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import parse_text, read_binary
from caffe.tools.cli import main

NETWORK = FORKS / "NVIDIA-caffe_kitti_detectnet_network.prototxt"
TWO_CLASSES = FORKS / "NVIDIA-caffe_kitti_detectnet_network-2classes.prototxt"  # cars and pedestrians
SOLVER = FORKS / "NVIDIA-caffe_kitti_detectnet_solver.prototxt"


def _box(x: float, y: float, w: float, h: float, cls: float = 1) -> np.ndarray:
    row = np.zeros(16, np.float32)
    row[:4], row[5] = (x, y, w, h), cls
    return row


def _truth(text: str) -> pb.DetectNetGroundTruthParameter:
    return text_format.Parse(text, pb.DetectNetGroundTruthParameter())


KITTI_TRUTH = "stride: 16 scale_cvg: 0.4 gridbox_type: GRIDBOX_MIN min_cvg_len: 20 obj_norm: true "


# ---------------------------------------------------------------- grid labels, by hand


def test_one_box_labels_the_cells_its_coverage_region_touches():
    labels = CoverageLabels(_truth(KITTI_TRUTH + "image_size_x: 128 image_size_y: 64"))
    assert labels.shape == (9, 4, 8)  # 8 fields + 1 class; 64/16 x 128/16 cells
    out = labels.generate(np.array([_box(20, 10, 40, 30)]))
    # centre (40, 25); 0.4 x (40, 30) = (16, 12), raised to min_cvg_len 20 (and at most the box): x 30..50, y 15..35
    # -> cells x 1..3 (16..64), y 0..2 (0..48), each overlapping it by at least 1x2 pixels
    fg = np.zeros((4, 8), np.float32)
    fg[0:3, 1:4] = 1
    np.testing.assert_array_equal(out[0], fg)
    np.testing.assert_array_equal(out[8], fg)  # coverage of class 0 (KITTI's car, class 1, by default)
    for gy in range(3):
        for gx in range(1, 4):
            left, top = 16 * gx, 16 * gy
            np.testing.assert_allclose(
                out[1:8, gy, gx], [20 - left, 10 - top, 60 - left, 40 - top, 1 / 40, 1 / 30, 256 / 400], rtol=1e-6
            )
    assert not out[:, 3:, :].any() and not out[:, :, [0, 4, 5, 6, 7]].any()
    # a box narrower than min_cvg_len: its region is the box's width (12, x 20..32: cell 1), not 20 (16..36)
    narrow = labels.generate(np.array([_box(20, 10, 12, 40)]))
    assert np.unique(np.argwhere(narrow[0])[:, 1]).tolist() == [1]


def test_gridbox_max_and_the_normalization_weight_without_obj_norm():
    labels = CoverageLabels(_truth("stride: 8 scale_cvg: 0.5 max_cvg_len: 6 image_size_x: 64 image_size_y: 32"))
    out = labels.generate(np.array([_box(8, 8, 40, 16)]))
    # 0.5 x (40, 16) = (20, 8), cut to max_cvg_len 6: centre (28, 16) -> x 25..31, y 13..19: cells x 3, y 1..2
    assert np.argwhere(out[0]).tolist() == [[1, 3], [2, 3]]
    # obj_norm false: max(1, 64 / 36)
    assert out[7, 1, 3] == pytest.approx(64 / 36)
    one = CoverageLabels(_truth("stride: 8 scale_cvg: 1 max_cvg_len: 50 image_size_x: 64 image_size_y: 32"))
    assert one.generate(np.array([_box(0, 0, 32, 16)]))[7].max() == 1.0  # max(1, 64 / 512)


def test_classes_map_to_channels_later_boxes_win_and_others_are_left_out():
    labels = CoverageLabels(
        _truth(
            KITTI_TRUTH
            + "image_size_x: 64 image_size_y: 64 object_class { src: 1 dst: 0 } object_class { src: 8 dst: 1 }"
        )
    )
    assert labels.shape == (10, 4, 4)
    car, person = _box(0, 0, 32, 32, 1), _box(16, 16, 32, 32, 8)
    van, flat = _box(0, 32, 30, 30, 2), _box(40, 40, 0, 20, 1)  # unmapped class; no area
    out = labels.generate(np.array([car, person, van, flat]))
    # the car's region x, y 6..26 -> cells 0..1; the person's 22..42 -> cells 1..2; cell (1, 1) is the person's
    assert np.argwhere(out[8]).tolist() == [[0, 0], [0, 1], [1, 0]]
    assert np.argwhere(out[9]).tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    assert out[1, 1, 1] == 16 - 16 and out[3, 1, 1] == 48 - 16  # the person's box, relative to the cell
    assert out[0].sum() == 7


def test_boxes_are_cut_to_the_image_when_crop_bboxes_is_on():
    text = KITTI_TRUTH + "image_size_x: 64 image_size_y: 32 crop_bboxes: "
    box = np.array([_box(-20, 4, 50, 20)])  # from x -20 to 30: inside, 0..30
    cut, kept = (
        CoverageLabels(_truth(text + "true")).generate(box),
        CoverageLabels(_truth(text + "false")).generate(box),
    )
    assert cut[1, 0, 0] == 0 and cut[5, 0, 0] == pytest.approx(1 / 30)
    assert kept[1, 0, 0] == -20 and kept[5, 0, 0] == pytest.approx(1 / 50)


def test_the_box_table_round_trips_and_a_bad_header_is_refused():
    boxes = np.array([_box(1, 2, 3, 4), _box(5, 6, 7, 8, 8)])
    table = box_table(boxes, 4)
    assert table.shape == (1, 5, 16) and table[0, 0, :2].tolist() == [2, 16]
    np.testing.assert_array_equal(read_boxes(table), boxes)
    for header, message in (((2, 15), "rows of 15"), ((5, 16), "room for 4"), ((1.5, 16), "1.5 boxes")):
        bad = table.copy()
        bad[0, 0, :2] = header
        with pytest.raises(ValueError, match=message):
            read_boxes(bad)


# ---------------------------------------------------------------- images and boxes


def _bright_box_image(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    img = np.full((h, w, 3), 30, np.float32)
    x, y, bw, bh = box
    img[y : y + bh, x : x + bw] = 220
    return img


def test_test_phase_resizes_image_and_boxes_to_the_network_size():
    img = np.random.default_rng(0).uniform(0, 255, (32, 48, 3)).astype(np.float32)
    aug = Augmentation(scale=(96, 64))
    out = transform_image(img, aug, (96, 64), np.float32([0.1, 0.2, 0.3]))
    expect = cv2.resize(img / 255 - np.float32([0.1, 0.2, 0.3]), (96, 64), interpolation=cv2.INTER_CUBIC) * 255
    np.testing.assert_allclose(out, expect, atol=1e-4)
    moved = transform_boxes(np.array([_box(4, 6, 10, 8)]), aug, (48, 32))
    np.testing.assert_allclose(moved[0, :4], [8, 12, 20, 16])


def test_flip_and_centred_crop_match_plain_array_indexing():
    img = np.random.default_rng(1).uniform(0, 255, (96, 160, 3)).astype(np.float32)
    param = pb.DetectNetAugmentationParameter(
        flip_prob=1, crop_prob=0, scale_prob=0, rotation_prob=0, hue_rotation_prob=0, desaturation_prob=0
    )
    aug = draw_augmentation(param, (160, 96), (128, 64), np.random.default_rng(0).random)
    assert aug == Augmentation(scale=(160, 96), flip=True, crop_offset=(16, 16))
    out = transform_image(img, aug, (128, 64), None)
    np.testing.assert_allclose(out, img[:, ::-1][16:80, 16:144], rtol=1e-6)
    moved = transform_boxes(np.array([_box(10, 20, 30, 40)]), aug, (160, 96))
    assert moved[0, :4].tolist() == [160 - 10 - 30 - 1 - 16, 20 - 16, 30, 40]  # the fork's flip keeps its -1


def test_draws_follow_the_forks_order_and_formulas():
    param = pb.DetectNetAugmentationParameter(
        hue_rotation_prob=1, hue_rotation=30, desaturation_prob=1, desaturation_max=0.8, flip_prob=0.5,
        scale_prob=1, scale_min=0.8, scale_max=1.2, rotation_prob=0, crop_prob=1, shift_x=32, shift_y=10,
    )  # fmt: skip
    draws = iter([0.0, 0.75, 0.0, 0.5, 0.4, 0.0, 0.25, 0.9, 0.0, 0.1, 0.6])
    aug = draw_augmentation(param, (200, 100), (128, 64), lambda: next(draws))
    assert aug.hue_rotation == pytest.approx(15)  # (0.75 - 0.5) x 2 x 30
    assert aug.saturation == pytest.approx(0.6)  # 1 - 0.5 x 0.8
    assert aug.flip  # 0.4 < 0.5
    assert aug.scale == (180, 90)  # factor 0.8 + 0.4 x 0.25 = 0.9
    # round(0.1 x (180 - 128 + 32) - 16) = round(-7.6); round(0.6 x (90 - 64 + 10) - 5) = round(16.6)
    assert aug.crop_offset == (-8, 17) and aug.rotation == 0


def test_hue_rotation_and_desaturation_do_what_hsv_says():
    red, green, grey = np.float32([0, 0, 255]), np.float32([0, 255, 0]), 255 * 0.5
    img = np.broadcast_to(red, (4, 4, 3)).copy()
    turned = transform_image(img, Augmentation(scale=(4, 4), hue_rotation=120), (4, 4), None)
    np.testing.assert_allclose(turned, np.broadcast_to(green, (4, 4, 3)), atol=1e-3)
    img[:] = (grey, grey, 255)  # a pale red: desaturated fully, every channel takes the value (max)
    flat = transform_image(img, Augmentation(scale=(4, 4), saturation=0.0), (4, 4), None)
    np.testing.assert_allclose(flat, np.full((4, 4, 3), 255), atol=1e-3)


@pytest.mark.parametrize("seed", range(8))
def test_after_random_augmentation_each_label_points_at_its_bright_box(seed: int):
    param = pb.DetectNetAugmentationParameter(
        crop_prob=1, shift_x=16, shift_y=16, flip_prob=0.5, scale_prob=1, scale_min=0.8, scale_max=1.2,
        rotation_prob=0, hue_rotation_prob=1, hue_rotation=30, desaturation_prob=1, desaturation_max=0.5,
    )  # fmt: skip
    box = (50, 30, 40, 24)
    img = _bright_box_image(160, 96, box)
    aug = draw_augmentation(param, (160, 96), (128, 80), np.random.default_rng(seed).random)
    out = transform_image(img, aug, (128, 80), np.float32([30 / 255] * 3))
    x, y, w, h = transform_boxes(np.array([_box(*box)]), aug, (160, 96))[0, :4]
    ys, xs = np.nonzero(out[..., 0] > 80)  # the box, not the mean-valued background
    # the fork's flip puts the box one pixel left of the mirrored pixels (width - x - w - 1)
    left = x + (1 if aug.flip else 0) * float(aug.scale[0]) / 160
    right, bottom = min(left + w, 128), min(y + h, 80)  # the part inside the crop
    assert abs(xs.min() - max(left, 0)) <= 1.5 and abs(ys.min() - max(y, 0)) <= 1.5
    assert abs(xs.max() + 1 - right) <= 1.5 and abs(ys.max() + 1 - bottom) <= 1.5


def test_rotation_turns_the_box_centre_with_the_image():
    box = (60, 20, 30, 16)
    img = _bright_box_image(160, 96, box)
    aug = Augmentation(scale=(160, 96), rotation=7.0, crop_offset=(10, 12))
    out = transform_image(img, aug, (160, 96), np.float32([30 / 255] * 3))
    ys, xs = np.nonzero(out[..., 0] > 100)
    x, y, w, h = transform_boxes(np.array([_box(*box)]), aug, (160, 96))[0, :4]
    assert (w, h) == (30, 16)  # sizes are kept, centres turn
    assert abs(xs.mean() + 0.5 - (x + w / 2)) < 0.6 and abs(ys.mean() + 0.5 - (y + h / 2)) < 0.6
    m = rotation_matrix((160, 96), 7.0)
    assert math.degrees(math.atan2(m[1, 0], m[0, 0])) == pytest.approx(7.0, abs=1e-4)


# ---------------------------------------------------------------- the layers


def _transform_net(extra: str = "", phase: int = caffe.TRAIN, images: tuple = (2, 3, 48, 80)) -> caffe.Net:
    text = (
        'type: "DetectNetTransformation" bottom: "img" bottom: "boxes" top: "data" top: "label" '
        f"detectnet_groundtruth_param {{ {KITTI_TRUTH} image_size_x: 64 image_size_y: 32 }} {extra}"
    )
    return layer_net(text, {"img": images, "boxes": (images[0], 1, 4, 16)}, phase=phase, force_backward=False)


def test_transformation_layer_in_test_phase_and_its_errors():
    net = _transform_net("transform_param { mean_value: 127 }", caffe.TEST, images=(2, 3, 16, 32))
    img = np.random.default_rng(2).uniform(0, 255, (2, 3, 16, 32))
    tables = np.stack([box_table(np.array([_box(2, 2, 12, 8)]), 3), box_table(np.zeros((0, 16)), 3)])
    net.blobs["img"].data[...], net.blobs["boxes"].data[...] = img, tables
    net.forward()
    assert net.blobs["data"].data.shape == (2, 3, 32, 64) and net.blobs["label"].data.shape == (2, 9, 2, 4)
    expect = (
        cv2.resize(
            (img[0].transpose(1, 2, 0) / 255 - 127 / 255).astype(np.float32), (64, 32), interpolation=cv2.INTER_CUBIC
        )
        * 255
    )
    np.testing.assert_allclose(net.blobs["data"].data[0].transpose(1, 2, 0), expect, atol=1e-3)
    label = net.blobs["label"].data
    assert label[0, 0, 0, 0] == 1 and label[0, 1, 0, 0] == 4 and label[1].sum() == 0  # the box doubled: x 4
    tables[1, 0, 0, 1] = 12
    net.blobs["boxes"].data[...] = tables
    with pytest.raises(CaffeError, match=r"layer 'layer'.*image 1 of the batch.*rows of 12"):
        net.forward()
    for extra, message in (
        ("transform_param { crop_size: 8 }", "crop_size is not read"),
        ("transform_param { mean_value: 1 mean_value: 2 }", "1 or 3 values"),
    ):
        with pytest.raises(CaffeError, match=message):
            _transform_net(extra)
    with pytest.raises(CaffeError, match="3-channel"):
        _transform_net(images=(2, 1, 16, 16))


def test_transformation_layer_draws_follow_the_random_seed(monkeypatch: pytest.MonkeyPatch):
    def run() -> tuple[np.ndarray, np.ndarray]:
        caffe.set_random_seed(5)
        net = _transform_net("detectnet_augmentation_param { flip_prob: 0.5 scale_prob: 1 shift_x: 8 }")
        net.blobs["img"].data[...] = np.arange(2 * 3 * 48 * 80).reshape(2, 3, 48, 80) % 255
        net.blobs["boxes"].data[...] = np.stack([box_table(np.array([_box(10, 10, 30, 20)]), 3)] * 2)
        net.forward()
        return net.blobs["data"].data.copy(), net.blobs["label"].data.copy()

    (a, la), (b, lb) = run(), run()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    monkeypatch.setattr("caffe.layers.detectnet.default_threads", lambda: 1)  # the same, transformed in one thread
    c, lc = run()
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(la, lc)
    assert not np.array_equal(a[0], a[1]) or not np.array_equal(la[0], la[1])  # each image its own draw


def test_l1_loss_by_hand_and_by_finite_differences():
    net = layer_net('type: "L1Loss" bottom: "a" bottom: "b" top: "l"', {"a": (2, 3), "b": (2, 3)})
    a, b = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, 0.0]]), np.array([[0.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    net.blobs["a"].data[...], net.blobs["b"].data[...] = a, b
    assert net.forward()["l"] == pytest.approx((1 + 2 + 0.5 + 1) / 2)
    net.blobs["l"].diff[...] = 1
    net.backward()
    np.testing.assert_allclose(net.blobs["a"].diff, [[0.5, -0.5, 0], [0.5, -0.5, 0]])
    np.testing.assert_allclose(net.blobs["b"].diff, -net.blobs["a"].diff)
    rng = np.random.default_rng(3)
    check_gradient(net, {"a": rng.normal(size=(2, 3)), "b": rng.normal(size=(2, 3))})


def _python_net(module: str, cls: str, param_str: str, shapes: dict, tops: list[str]) -> caffe.Net:
    bottoms = " ".join(f'bottom: "{n}"' for n in shapes)
    text = (
        f'type: "Python" {bottoms} {" ".join(f"top: {t!r}" for t in tops)}'.replace("'", '"')
        + f' python_param {{ module: "caffe.layers.detectnet.{module}" layer: "{cls}" param_str: "{param_str}" }}'
    )
    return layer_net(text, shapes, force_backward=False)


def test_cluster_detections_groups_the_cells_votes():
    net = _python_net(
        "clustering",
        "ClusterDetections",
        "64, 32, 8, 0.5, 1, 0.2, 10, 1",
        {"cvg": (1, 1, 4, 8), "bb": (1, 4, 4, 8)},
        ["det"],
    )
    cvg, bb = np.zeros((1, 1, 4, 8)), np.zeros((1, 4, 4, 8))
    cvg[0, 0, 1:3, 2:4] = 0.9  # four cells propose the box (20, 10)-(40, 30), each relative to its corner
    for gy in (1, 2):
        for gx in (2, 3):
            bb[0, :, gy, gx] = (20 - 8 * gx, 10 - 8 * gy, 40 - 8 * gx, 30 - 8 * gy)
    cvg[0, 0, 0, 7] = 0.9  # a lone cell: a group of one, under the group threshold 1
    bb[0, :, 0, 7] = (0, 0, 8, 20)
    cvg[0, 0, 3, 0] = 0.4  # under the coverage threshold
    net.blobs["cvg"].data[...], net.blobs["bb"].data[...] = cvg, bb
    det = net.forward()["det"]
    assert det.shape == (1, 50, 5)
    np.testing.assert_allclose(det[0, 0], [20, 10, 40, 30, np.float16(math.log(4))])
    assert not det[0, 1:].any()
    assert net.layers[-1].type == "ClusterDetections"


def test_ground_truth_round_trip_scores_and_map():
    labels = CoverageLabels(_truth(KITTI_TRUTH + "image_size_x: 128 image_size_y: 64"))
    grid = labels.generate(np.array([_box(20, 10, 40, 30), _box(70, 20, 30.25, 30)]))[None]
    gt = _python_net("clustering", "ClusterGroundtruth", "128,64,16", {"cvg": (1, 1, 4, 8), "bb": (1, 4, 4, 8)}, ["gt"])
    gt.blobs["cvg"].data[...], gt.blobs["bb"].data[...] = grid[:, 8:9], grid[:, 1:5]
    truth = gt.forward()["gt"].copy()
    np.testing.assert_allclose(truth[0, :2], [[20, 10, 60, 40, 0], [70, 20, 100.25, 50, 0]])
    assert not truth[0, 2:].any()

    det = np.zeros((1, 50, 5))
    det[0, 0] = (71, 21, 100, 50, 1.0)  # IoU with the second truth box 0.93: matched
    det[0, 1] = (20, 10, 40, 25, 1.0)  # IoU with the first 0.25: a false detection
    det[0, 2] = (0, 0, 5, 5, 0.5)  # nowhere near: false
    score = _python_net("mean_ap", "ScoreDetections", "", {"gt": (1, 50, 5), "det": (1, 50, 5)}, ["marked"])
    score.blobs["gt"].data[...], score.blobs["det"].data[...] = truth, det
    marked = score.forward()["marked"].copy()
    np.testing.assert_allclose(
        marked[0, :4], [[71, 21, 100, 50, 1], [20, 10, 40, 25, 2], [0, 0, 5, 5, 2], [20, 10, 60, 40, 3]]
    )
    assert not marked[0, 4:].any()
    m = _python_net("mean_ap", "mAP", "128,64,16", {"marked": (1, 50, 5)}, ["mAP", "precision", "recall"])
    m.blobs["marked"].data[...] = marked
    out = m.forward()
    assert (out["precision"][0], out["recall"][0]) == pytest.approx((100 / 3, 50))
    assert out["mAP"][0] == pytest.approx(100 / 3 * 50 / 100)


def test_detectnet_modules_are_built_in_and_need_no_consent():
    net = parse_text(NETWORK.read_text(), pb.NetParameter())
    pythons = [layer for layer in net.layer if layer.type == "Python"]
    assert {layer.python_param.layer for layer in pythons} == {
        "ClusterDetections",
        "ClusterGroundtruth",
        "ScoreDetections",
        "mAP",
    }
    assert python_layers(net) == []  # nothing for a server's --allow_python_layers to allow
    with pytest.raises(CaffeError, match="param_str"):
        _python_net("clustering", "ClusterDetections", "64, 32", {"cvg": (1, 1, 4, 8), "bb": (1, 4, 4, 8)}, ["det"])
    with pytest.raises(CaffeError, match="2 class"):
        _python_net(
            "clustering",
            "ClusterDetections",
            "64,32,8,0.5,1,0.2,10,2",
            {"cvg": (1, 1, 4, 8), "bb": (1, 4, 4, 8)},
            ["d"],
        )


# ---------------------------------------------------------------- NVIDIA/caffe's DetectNet network


def _kitti_folders(root: Path, count: int, seed: int) -> tuple[Path, Path]:
    """``count`` PNG images of grey rectangles (cars, sometimes a pedestrian) and their KITTI label files."""
    rng = np.random.default_rng(seed)
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for k in range(count):
        img = np.full((96, 160, 3), 40, np.uint8)
        lines = []
        for j in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(24, 60)), int(rng.integers(20, 40))
            x, y = int(rng.integers(0, 160 - bw)), int(rng.integers(0, 96 - bh))
            img[y : y + bh, x : x + bw] = 200
            kind = "Pedestrian" if j == 2 else "Car"
            lines.append(f"{kind} 0.00 0 -1.5 {x} {y} {x + bw} {y + bh} 1.5 1.6 3.9 1.0 1.5 {10 + j} 0.1")
        cv2.imwrite(str(images / f"{k:06d}.png"), img)
        (labels / f"{k:06d}.txt").write_text("\n".join(lines) + "\n")
    return images, labels


def _digits_lmdbs(root: Path, count: int, seed: int) -> tuple[Path, Path]:
    """DIGITS' object-detection LMDBs (features, labels), made by ``caffe create_detectnet_db``."""
    images, labels = _kitti_folders(root / "kitti", count, seed)
    assert main(["create_detectnet_db", str(images), str(labels), str(root / "db")]) == 0
    return root / "db" / "features", root / "db" / "labels"


def test_create_detectnet_db_stores_digits_records(tmp_path: Path):
    images, labels = tmp_path / "img", tmp_path / "lab"
    images.mkdir()
    labels.mkdir()
    picture = np.zeros((60, 100, 3), np.uint8)
    picture[10:30, 20:60] = (255, 0, 0)  # blue in BGR
    cv2.imwrite(str(images / "000001.png"), picture)
    (labels / "000001.txt").write_text(
        "Car 0.10 1 -1.0 20 10 60 30 1.5 1.6 3.9 1.0 1.5 20.0 0.2\n"
        "Pedestrian 0.00 0 0.5 70 5 76 50 1.7 0.6 0.8 2.0 1.6 8.0 -0.3\n"
        "Tree 0 0 0 1 1 3 3 1 1 1 0 0 30.0 0\n"
    )
    cv2.imwrite(str(images / "000002.png"), picture)
    (labels / "000002.txt").write_text("")
    cv2.imwrite(str(images / "000003.png"), picture)  # no label file: skipped
    cv2.imwrite(str(images / "000004.png"), np.zeros((90, 100, 3), np.uint8))  # taller than the padding: skipped
    (labels / "000004.txt").write_text("")
    argv = ["--pad_width=120", "--pad_height=80", "--resize_width=240", "--resize_height=160", "--noshuffle"]
    assert (
        main(["create_detectnet_db", *argv, "--min_box_size=10", str(images), str(labels), str(tmp_path / "db")]) == 0
    )
    with (
        open_db(tmp_path / "db" / "features", "lmdb", "read") as f,
        open_db(tmp_path / "db" / "labels", "lmdb", "read") as b,
    ):
        keys = [k for k, _ in f]
        assert keys == [k for k, _ in b] == [b"000000000", b"000000001"]
        stored = datum_to_array(parse_datum(f.get(keys[0]))).transpose(1, 2, 0)  # decoded: BGR
        assert stored.shape == (160, 240, 3)  # padded to 120 x 80 at the top left, then doubled
        assert not stored[122:].any() and not stored[:, 202:].any()  # the black padding
        assert stored[22:58, 42:118].mean(axis=(0, 1)).tolist() == pytest.approx([255, 0, 0], abs=1)
        table = datum_to_array(parse_datum(b.get(keys[0])))
        empty = datum_to_array(parse_datum(b.get(keys[1])))
    assert table.shape == empty.shape == (1, 4, 16)  # the most boxes (3) + the header
    assert table[0, 0, :2].tolist() == [3, 16] and empty[0, 0, :2].tolist() == [0, 16]
    rows = table[0, 1:]
    assert rows[:, 15].tolist() == [30, 20, 8]  # farthest first
    np.testing.assert_allclose(rows[1, :16], [40, 20, 80, 40, -1, 1, 0, 0.2, 0.1, 1, 3.9, 1.6, 1.5, 1, 1.5, 20])
    assert rows[0, 5] == 0 and rows[2, 5] == 0  # an unknown type; a pedestrian 6 pixels wide, under --min_box_size
    assert rows[2, :4].tolist() == [140, 10, 12, 90]
    mean = caffe.io.blobproto_to_array(read_binary(tmp_path / "db" / "mean.binaryproto", pb.BlobProto()))
    np.testing.assert_allclose(mean[0, :, 22:58, 42:118].mean(axis=(1, 2)), [255, 0, 0], atol=1)


def _small_detectnet(root: Path, network: Path = NETWORK) -> pb.NetParameter:
    """The fork's DetectNet as a user shrinks it for a quick run: 256x128 inputs, batch 2, our LMDBs."""
    net = parse_text(network.read_text(), pb.NetParameter())
    sources = {"train": _digits_lmdbs(root / "train", 4, 0), "val": _digits_lmdbs(root / "val", 2, 1)}
    for layer in net.layer:
        if layer.type == "Data":
            images, labels = sources["train" if layer.name.startswith("train") else "val"]
            layer.data_param.source = str(images if layer.name.endswith("data") else labels)
            layer.data_param.batch_size = 2
        elif layer.type == "DetectNetTransformation":
            layer.detectnet_groundtruth_param.image_size_x, layer.detectnet_groundtruth_param.image_size_y = 256, 128
        elif layer.type == "Input":
            layer.input_param.shape[0].dim[2:] = [128, 256]
        elif layer.python_param.param_str:
            rest = layer.python_param.param_str.split(",")[2:]
            layer.python_param.param_str = ",".join(["256", "128", *rest])
    return net


@pytest.mark.parametrize("network", [NETWORK, TWO_CLASSES], ids=["cars", "cars_and_pedestrians"])
def test_nvidia_detectnet_trains_and_validates_with_map(
    network: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    solver = parse_text(SOLVER.read_text(), pb.SolverParameter())
    assert solver.test_state[0].stage == ["val"] and solver.solver_type == pb.SolverParameter.ADAM
    solver.ClearField("net")
    solver.net_param.CopyFrom(_small_detectnet(tmp_path, network))
    classes = 2 if network == TWO_CLASSES else 1
    suffixes = [f"-class{k}" for k in range(classes)] if classes > 1 else [""]
    solver.test_iter[:], solver.test_interval, solver.max_iter, solver.display = [1], 2, 2, 1
    solver.solver_mode, solver.snapshot, solver.snapshot_after_train, solver.random_seed = (
        pb.SolverParameter.CPU,
        0,
        False,
        1,
    )
    s = caffe.get_solver(solver)
    with caplog.at_level(logging.INFO, logger="caffe"):
        s.solve()
    lines = [r.getMessage() for r in caplog.records]
    outputs = [f"{name}{suffix}" for suffix in suffixes for name in ("mAP", "precision", "recall")]
    for output in (*outputs, "loss_bbox", "loss_coverage"):
        found = [line for line in lines if "Test net output" in line and f": {output} = " in line]
        assert found, output
        assert math.isfinite(float(found[-1].split(" = ")[1].split()[0]))
    assert s.net.blobs["transformed_data"].data.shape == (2, 3, 128, 256)
    coverage = s.net.blobs["coverage-label"].data
    assert coverage.shape == (2, classes, 8, 16) and coverage.any()
    test = s.test_nets[0]
    truth = test.blobs[f"bbox-list-label{suffixes[0]}"].data
    assert truth.shape == (2, 50, 5) and truth[:, 0, 2].min() > 0  # every validation image has a car


def test_an_oracle_scores_100_percent_through_the_forks_validation_layers(tmp_path: Path):
    """The validation net's own grid labels given back as the network's coverage and boxes: the fork's clustering
    (its KITTI param_str: 3 votes needed, eps 0.02, at least 22 pixels high) finds every truth box again, and the
    scoring layers report precision, recall and mAP 100."""
    images, labels = tmp_path / "img", tmp_path / "lab"
    images.mkdir()
    labels.mkdir()
    for k, boxes in enumerate([[(10, 10, 60, 50), (90, 30, 150, 80)], [(40, 20, 100, 90)]]):
        img = np.full((96, 160, 3), 40, np.uint8)
        lines = []
        for x1, y1, x2, y2 in boxes:
            img[y1:y2, x1:x2] = 200
            lines.append(f"Car 0 0 0 {x1} {y1} {x2} {y2} 1.5 1.6 3.9 1 1.5 10 0")
        cv2.imwrite(str(images / f"{k:06d}.png"), img)
        (labels / f"{k:06d}.txt").write_text("\n".join(lines) + "\n")
    assert main(["create_detectnet_db", "--noshuffle", str(images), str(labels), str(tmp_path / "db")]) == 0
    net = _small_detectnet(tmp_path / "unused")
    for layer in net.layer:
        if layer.type == "Data" and layer.name.startswith("val"):
            layer.data_param.source = str(tmp_path / "db" / ("features" if layer.name.endswith("data") else "labels"))
    net.state.phase, net.state.stage[:] = caffe.TEST, ["val"]
    val = caffe.Net(net, caffe.TEST)
    val.forward()
    truth = val.blobs["bbox-list-label"].data.copy()
    assert (truth[:, :, 2] > 0).sum() == 3  # three boxes (the images squashed from 160 x 96 to 256 x 128)
    cluster = next(layer for layer in net.layer if layer.name == "cluster").python_param.param_str
    oracle = _python_net("clustering", "ClusterDetections", cluster, {"cvg": (2, 1, 8, 16), "bb": (2, 4, 8, 16)}, ["d"])
    oracle.blobs["cvg"].data[...] = val.blobs["coverage-label"].data
    oracle.blobs["bb"].data[...] = val.blobs["bbox-label"].data
    found = oracle.forward()["d"].copy()
    assert (found[:, :, 2] > 0).sum() == 3 and found[:, :, 4].max() > math.log(3)
    score = _python_net("mean_ap", "ScoreDetections", "", {"gt": (2, 50, 5), "det": (2, 50, 5)}, ["marked"])
    score.blobs["gt"].data[...], score.blobs["det"].data[...] = truth, found
    m = _python_net("mean_ap", "mAP", "256,128,16", {"marked": (2, 50, 5)}, ["mAP", "precision", "recall"])
    m.blobs["marked"].data[...] = score.forward()["marked"]
    out = m.forward()
    assert (out["mAP"][0], out["precision"][0], out["recall"][0]) == (100, 100, 100)


def test_the_two_class_detectnet_deploys_as_a_two_class_detector(tmp_path: Path):
    """NVIDIA/caffe's cars-and-pedestrians DetectNet: its deploy form is a DetectionModel of two classes, one
    clustering top each (random weights but fixed boxes, the input shrunk to 256 x 128)."""
    net = parse_text(TWO_CLASSES.read_text(), pb.NetParameter())
    for layer in net.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[2:] = [128, 256]
        elif layer.name == "cluster":  # every cell votes, all boxes group: a detection per class
            layer.python_param.param_str = "256, 128, 16, 0.0, 1, 100.0, 0, 2"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "deploy.prototxt").write_text(text_format.MessageToString(net))
    random = caffe.Net(str(folder / "deploy.prototxt"), caffe.TEST)
    random.params["bbox/regressor"][0].data[...] = 0  # every cell proposes a 32 x 32 box around it
    random.params["bbox/regressor"][1].data[...] = [-8, -8, 24, 24]
    random.save(str(folder / "weights.caffemodel"))
    model = caffe.deploy.open_model(caffe.deploy.find_model(folder), warn=False)
    assert isinstance(model, caffe.deploy.DetectionModel) and model.classes == 2
    assert model.class_tops == ("bbox-list-class0", "bbox-list-class1") and not model.confidence_is_probability
    image = np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8)
    found = model.detect([image], threshold=0.0)[0]
    assert sorted(d.label for d in found) == [0, 1]  # both classes' tops read
    for d in found:  # the mean of the 16 x 8 cells' boxes, (112, 48)-(144, 80) of 256 x 128, in 200 x 100 pixels
        np.testing.assert_allclose(d.box, [87.5, 37.5, 112.5, 62.5])
        assert d.confidence == pytest.approx(math.log(128), abs=1e-2)


def test_nvidia_detectnet_deploy_form_runs_at_full_size():
    net = caffe.Net(str(NETWORK), caffe.TEST)  # no stage: Input, the Power shift, the network, the clustering
    assert list(net.inputs) == ["data"] and net.blobs["data"].data.shape == (1, 3, 384, 1248)
    assert "loss_bbox" not in net.blobs and "mAP" not in net.blobs
    net.blobs["data"].data[...] = np.random.default_rng(0).uniform(0, 255, (1, 3, 384, 1248))
    out = net.forward()
    assert out["bbox-list"].shape == (1, 50, 5)
    assert net.blobs["coverage"].data.shape == (1, 1, 24, 78) and net.blobs["bboxes"].data.shape == (1, 4, 24, 78)


# ---------------------------------------------------------------- deploying a DetectNet model

BRIGHTNESS_DETECTOR = """
name: "brightness_detectnet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 64 dim: 128 } } }
layer { name: "cells" type: "Pooling" bottom: "data" top: "cells"
        pooling_param { pool: AVE kernel_size: 16 stride: 16 } }
layer { name: "cvg" type: "Convolution" bottom: "cells" top: "coverage"
        convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "bb" type: "Convolution" bottom: "cells" top: "bboxes"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer {
  name: "cluster" type: "Python" bottom: "coverage" bottom: "bboxes" top: "bbox-list"
  python_param { module: "caffe.layers.detectnet.clustering" layer: "ClusterDetections"
                 param_str: "128, 64, 16, 0.5, 1, 1.0, 8, 1" }
}
"""


def brightness_detector(folder: Path) -> Path:
    """A DetectNet-shaped deploy model: a cell's coverage is its mean brightness (0-1), every cell proposes the
    32x32 box 8 pixels up and left of its corner; neighbours group (eps 1.0), so a bright 32x32 square of 2x2
    cells is found as itself, voted by 4 cells."""
    folder.mkdir()
    (folder / "deploy.prototxt").write_text(BRIGHTNESS_DETECTOR)
    net = caffe.Net(str(folder / "deploy.prototxt"), caffe.TEST)
    net.params["cvg"][0].data[...] = 1 / (3 * 255)
    net.params["cvg"][1].data[...] = 0
    net.params["bb"][0].data[...] = 0
    net.params["bb"][1].data[...] = [-8, -8, 24, 24]
    net.save(str(folder / "weights.caffemodel"))
    return folder


def test_detectnet_rows_become_ssd_rows():
    rows = np.zeros((50, 5))
    rows[0] = (10, 20, 50, 40, 1.5)
    rows[1] = (0, 0, 8, 8, 0.0)
    other = np.zeros((50, 5))
    other[0] = (64, 0, 128, 32, 2.0)
    out = detectnet_rows([rows, other], 3, 128, 64)
    np.testing.assert_allclose(
        out,
        [
            [3, 0, 1.5, 10 / 128, 20 / 64, 50 / 128, 40 / 64],
            [3, 0, 0, 0, 0, 8 / 128, 8 / 64],
            [3, 1, 2, 0.5, 0, 1, 0.5],
        ],
    )


def test_caffe_detect_finds_the_bright_square_with_a_detectnet_model(tmp_path: Path, capsys: pytest.CaptureFixture):
    model = brightness_detector(tmp_path / "model")
    image = np.zeros((128, 256, 3), np.uint8)
    image[32:96, 64:128] = 255  # the input squashes it to 128 x 64: cells x 2-3, y 1-2
    cv2.imwrite(str(tmp_path / "square.png"), image)
    assert main(["detect", "--format=json", str(model), str(tmp_path / "square.png")]) == 0
    found = json.loads(capsys.readouterr().out)[0]["detections"]
    assert len(found) == 1
    assert found[0]["label"] == "0" and found[0]["confidence"] == pytest.approx(math.log(4), abs=1e-3)
    np.testing.assert_allclose(found[0]["box"], [64, 32, 128, 96])  # in the original image's pixels


def test_caffe_serve_detects_with_a_detectnet_model_without_python_consent(tmp_path: Path):
    from fastapi.testclient import TestClient

    from caffe.serve import create_app, load_model

    model = brightness_detector(tmp_path / "model")
    served = load_model(f"detectnet={model}")  # the server's default: Python layers not allowed
    assert served.kind == "detection"
    image = np.zeros((64, 128, 3), np.uint8)
    image[16:48, 32:64] = 255
    ok, png = cv2.imencode(".png", image)
    assert ok
    with TestClient(create_app([served])) as c:
        r = c.post("/models/detectnet/detect", files={"file": ("square.png", png.tobytes(), "image/png")})
    assert r.status_code == 200, r.text
    (found,) = r.json()["detections"]
    np.testing.assert_allclose(found["box"], [32, 16, 64, 48])


def test_transformation_layer_subtracts_a_mean_file_resized_to_the_images(tmp_path: Path):
    mean = np.empty((1, 3, 5, 7), np.float32)
    mean[0, :] = np.array([10.0, 20.0, 30.0])[:, None, None]  # a constant mean: resized, still constant
    (tmp_path / "mean.binaryproto").write_bytes(caffe.io.array_to_blobproto(mean).SerializeToString())
    extra = f'transform_param {{ mean_file: "{tmp_path / "mean.binaryproto"}" }}'
    net = layer_net(
        'type: "DetectNetTransformation" bottom: "img" bottom: "boxes" top: "data" top: "label" '
        f"detectnet_groundtruth_param {{ {KITTI_TRUTH} image_size_x: 32 image_size_y: 16 }} {extra}",
        {"img": (1, 3, 16, 32), "boxes": (1, 1, 2, 16)},
        phase=caffe.TEST,
        force_backward=False,
    )
    img = np.random.default_rng(4).uniform(0, 255, (1, 3, 16, 32))
    net.blobs["img"].data[...] = img
    net.blobs["boxes"].data[...] = box_table(np.zeros((0, 16)), 1)
    net.forward()
    np.testing.assert_allclose(net.blobs["data"].data, img - mean[:, :, :1, :1], atol=1e-3)
