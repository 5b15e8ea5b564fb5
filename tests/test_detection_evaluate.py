"""SSD's evaluation during training (weiliu89/caffe ssd): DetectionEvaluate's rows computed by hand, the fork's
AP versions on small score lists, the solver's mAP (eval_type "detection") and the plateau learning rate."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from gradcheck import layer_net, set_inputs

import caffe
from caffe.errors import LayerError, ShapeError, SolverError
from caffe.layers.detection_evaluate import pixel_jaccard, to_pixels
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_solver_param
from caffe.solver import Plateau, learning_rate_at, plateau_step
from caffe.util.detection_ap import average_precision

A = [0.1, 0.1, 0.5, 0.5]  # class 1
B = [0.6, 0.6, 0.9, 0.9]  # class 1, difficult
C = [0.0, 0.0, 0.5, 0.5]  # class 2
FAR = [0.0, 0.6, 0.1, 0.7]


def _evaluate(det: list[list[float]], gt: list[list[float]], param: str = "num_classes: 4") -> np.ndarray:
    det_a, gt_a = np.array(det, dtype=np.float64), np.array(gt, dtype=np.float64)
    net = layer_net(
        f'type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "y" detection_evaluate_param {{ {param} }}',
        {"det": (1, 1, len(det_a), 7), "gt": (1, 1, len(gt_a), 8)},
    )
    set_inputs(net, {"det": det_a.reshape(1, 1, -1, 7), "gt": gt_a.reshape(1, 1, -1, 8)})
    net.forward()
    return net.blobs["y"].data.reshape(-1, 5).copy()


# image 1 (no ground truth) comes first, class 3 before class 2, class 1 not by score: the top sorts them
DETECTIONS = [
    [1, 1, 0.7, *A],
    [0, 1, 0.6, *A],  # overlap 1 with A, but after the 0.9 one: a duplicate
    [0, 1, 0.9, 0.1, 0.1, 0.5, 0.4],  # overlap 0.75 with A
    [0, 1, 0.8, *B],  # the difficult box
    [0, 1, 0.3, *FAR],  # overlaps nothing
    [0, 3, 0.4, *A],  # class 3 has no ground truth anywhere
    [0, 2, 0.5, 0.25, 0.0, 0.75, 0.5],  # overlap 1/3 with C
    [2, -1, -1, -1, -1, -1, -1],  # DetectionOutput's row for an image without detections
]
TRUTH = [
    [0, 1, 0, *A, 0],
    [0, 1, 1, *B, 1],
    [0, 2, 0, *C, 0],
    [-1, -1, -1, -1, -1, -1, -1, -1],  # the ground truth ends here
    [0, 2, 0, *A, 0],
]


def test_rows_without_difficult_boxes():
    rows = _evaluate(DETECTIONS, TRUTH, "num_classes: 4 evaluate_difficult_gt: false")
    expected = [
        [-1, 1, 1, -1, -1],  # A only: B is difficult
        [-1, 2, 1, -1, -1],  # C (the row after the -1 row is not read)
        [-1, 3, 0, -1, -1],
        [0, 1, 0.9, 1, 0],
        [0, 1, 0.8, 0, 0],  # matched to the difficult box: neither
        [0, 1, 0.6, 0, 1],  # A is taken: a duplicate
        [0, 1, 0.3, 0, 1],
        [0, 2, 0.5, 0, 1],
        [0, 3, 0.4, 0, 1],
        [1, 1, 0.7, 0, 1],  # an image without ground truth
    ]
    np.testing.assert_allclose(rows, expected, rtol=1e-6)


def test_rows_with_difficult_boxes_and_the_background_row_left_out():
    rows = _evaluate(DETECTIONS, TRUTH, "num_classes: 4")
    assert rows[0].tolist() == [-1, 1, 2, -1, -1]
    np.testing.assert_allclose(rows[4], [0, 1, 0.8, 1, 0], rtol=1e-6)
    # background_label_id 3: class 0 is evaluated, class 3 has no count row (and its detection is refused)
    with pytest.raises(LayerError, match="found the background class 3 in the detections"):
        _evaluate(DETECTIONS, TRUTH, "num_classes: 4 background_label_id: 3")
    rows = _evaluate(DETECTIONS[:5], TRUTH[:2], "num_classes: 3 background_label_id: 2")
    np.testing.assert_array_equal(rows[:2, :3], [[-1, 0, 0], [-1, 1, 2]])


def test_image_without_detections_and_no_detection_at_all():
    rows = _evaluate([[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]], TRUTH)
    np.testing.assert_array_equal(rows, [[-1, 1, 2, -1, -1], [-1, 2, 1, -1, -1], [-1, 3, 0, -1, -1]])


def test_a_detection_of_image_minus_one_leaves_a_zero_row():
    """The fork sizes the top by the detections whose class is not -1, and writes those of known images."""
    rows = _evaluate([[-1, 1, 0.5, *A], [0, 1, 0.4, *A]], TRUTH, "num_classes: 2")
    np.testing.assert_allclose(rows, [[-1, 1, 2, -1, -1], [0, 1, 0.4, 1, 0], [0, 0, 0, 0, 0]], rtol=1e-6)


def test_name_size_file_compares_pixels_image_by_image(tmp_path: Path):
    """gt [0, 0, .2, .2] and a detection [.1, .1, .3, .3]: normalized overlap 1/7; in a 10x10 image (sizes and
    intersection +1 per side) 4/14, in a 20 (high) x 40 image 15/75. Each forward takes the file's next line."""
    sizes = tmp_path / "name_size.txt"
    sizes.write_text("img_a 10 10\nimg_b 20 40\n")
    det, gt = [[0, 1, 0.9, 0.1, 0.1, 0.3, 0.3]], [[0, 1, 0, 0.0, 0.0, 0.2, 0.2, 0]]
    param = "num_classes: 2 overlap_threshold: 0.25"
    assert _evaluate(det, gt, param)[1, 3:].tolist() == [0, 1]
    net = layer_net(
        f'type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "y" detection_evaluate_param {{ {param} '
        f'name_size_file: "{sizes}" }}',
        {"det": (1, 1, 1, 7), "gt": (1, 1, 1, 8)},
    )
    set_inputs(net, {"det": np.array(det).reshape(1, 1, 1, 7), "gt": np.array(gt).reshape(1, 1, 1, 8)})
    outcomes = [net.forward()["y"].reshape(-1, 5)[1, 3:].tolist() for _ in range(3)]
    assert outcomes == [[1, 0], [0, 1], [1, 0]]  # 10x10, 20x40, then the first line again


def test_boxes_in_pixels_touch_and_undo_padding():
    boxes, sizes = to_pixels(np.array([[0.0, 0.0, 0.2, 0.2], [0.3, 0.2, 0.1, 0.9]], np.float32), (10, 10), None)
    np.testing.assert_allclose(boxes[0], [0, 0, 2, 2], atol=1e-6)
    np.testing.assert_allclose(sizes, [9, 0], rtol=1e-6)  # (2 + 1) * (2 + 1); an inverted box has none
    touching = _evaluate(
        [[0, 1, 0.9, 0.2, 0.0, 0.4, 0.2]], [[0, 1, 0, 0.0, 0.0, 0.2, 0.2, 0]], "num_classes: 2 overlap_threshold: 0.15"
    )
    assert touching[1, 3:].tolist() == [0, 1]  # normalized: touching boxes do not overlap
    in_pixels = [
        to_pixels(np.array([box], np.float32), (10, 10), None) for box in ([0, 0, 0.2, 0.2], [0.2, 0, 0.4, 0.2])
    ]
    assert pixel_jaccard(*in_pixels)[0, 0] == pytest.approx(3 / 15)  # in pixels they share a 1 x 3 column
    # FIT_LARGE_SIZE_AND_PAD into 100x100: a 50 (high) x 100 image fills rows 0.25-0.75
    resize = pb.ResizeParameter(resize_mode=pb.ResizeParameter.FIT_LARGE_SIZE_AND_PAD, height=100, width=100)
    padded = np.array([[0.0, 0.25, 0.5, 0.75], [0.0, 0.0, 0.5, 0.2]], np.float32)
    boxes, sizes = to_pixels(padded, (50, 100), resize)
    np.testing.assert_allclose(boxes, [[0, 0, 50, 50], [0, 0, 50, 10]], atol=1e-4)  # one in the padding: as is
    np.testing.assert_allclose(sizes[0], 51 * 51, rtol=1e-5)


def test_set_up_errors_name_the_layer(tmp_path: Path):
    with pytest.raises(LayerError, match=r"layer 'layer' \(DetectionEvaluate\).*num_classes"):
        _evaluate(DETECTIONS, TRUTH, "overlap_threshold: 0.5")
    with pytest.raises(LayerError, match=r"name_size_file.*missing\.txt"):
        _evaluate(DETECTIONS, TRUTH, f'num_classes: 4 name_size_file: "{tmp_path / "missing.txt"}"')
    (tmp_path / "bad.txt").write_text("img_a 10 ten\n")
    with pytest.raises(LayerError, match=r"bad\.txt: expected 'name height width' per image"):
        _evaluate(DETECTIONS, TRUTH, f'num_classes: 4 name_size_file: "{tmp_path / "bad.txt"}"')
    with pytest.raises(LayerError, match="FIT_SMALL_SIZE"):
        _evaluate(DETECTIONS, TRUTH, "num_classes: 4 resize_param { resize_mode: FIT_SMALL_SIZE height: 3 width: 3 }")
    text = 'type: "DetectionEvaluate" bottom: "d" bottom: "g" top: "y" detection_evaluate_param { num_classes: 2 }'
    with pytest.raises(ShapeError, match=r"\(1, 1, N, 8\)"):
        layer_net(text, {"d": (1, 1, 2, 7), "g": (1, 1, 2, 7)})


def _loop_overlap(a: np.ndarray, b: np.ndarray, size: tuple[int, int] | None) -> float:
    """JaccardOverlap of two boxes, normalized or (``size``) in pixels with +1 per side, one at a time."""
    one = 0.0
    if size is not None:
        a, b = (np.clip(box, 0, 1) * [size[1], size[0], size[1], size[0]] for box in (a, b))
        one = 1.0
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        inter = [0.0, 0.0, 0.0, 0.0]
    else:
        inter = [max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]
    iw, ih = inter[2] - inter[0] + one, inter[3] - inter[1] + one
    if iw <= 0 or ih <= 0:
        return 0.0
    area = [0.0 if x[2] < x[0] or x[3] < x[1] else (x[2] - x[0] + one) * (x[3] - x[1] + one) for x in (a, b)]
    return iw * ih / (area[0] + area[1] - iw * ih)


def _loop_rows(det: np.ndarray, gt: np.ndarray, classes: int, difficult_too: bool, sizes: list) -> list[list[float]]:
    """The fork's evaluation one detection at a time (background 0, threshold 0.5), a reference."""
    found: dict = {}
    for row in det:
        if row[0] != -1:
            found.setdefault(int(row[0]), {}).setdefault(int(row[1]), []).append(row)
    truth: dict = {}
    for row in gt:
        if row[0] == -1:
            break
        truth.setdefault(int(row[0]), {}).setdefault(int(row[1]), []).append(row)
    out = []
    for c in range(1, classes):
        boxes = [r for image in truth.values() for r in image.get(c, [])]
        out.append([-1, c, sum(1 for r in boxes if difficult_too or not r[7]), -1, -1])
    for n, image in enumerate(sorted(found)):
        size = sizes[n % len(sizes)] if sizes else None
        for label in sorted(found[image]):
            gts = truth.get(image, {}).get(label)
            if label == -1:
                continue
            if gts is None:
                out += [[image, label, r[2], 0, 1] for r in found[image][label]]
                continue
            taken = [False] * len(gts)
            for r in sorted(found[image][label], key=lambda r: -r[2]):
                overlaps = [_loop_overlap(r[3:7], g[3:7], size) for g in gts]
                j = int(np.argmax(overlaps))
                if overlaps[j] < 0.5:
                    out.append([image, label, r[2], 0, 1])
                elif gts[j][7] and not difficult_too:
                    out.append([image, label, r[2], 0, 0])
                else:
                    out.append([image, label, r[2], int(not taken[j]), int(taken[j])])
                    taken[j] = True
    return out


@pytest.mark.parametrize(("difficult_too", "sizes"), [(True, []), (False, []), (False, [(30, 20), (12, 50), (7, 9)])])
def test_rows_equal_a_one_at_a_time_evaluation(tmp_path: Path, difficult_too: bool, sizes: list):
    """Random images of jittered ground-truth boxes (scores with ties), against :func:`_loop_rows`."""
    rng = np.random.default_rng(7)
    name_size = tmp_path / "sizes.txt"
    name_size.write_text("".join(f"img{k} {h} {w}\n" for k, (h, w) in enumerate(sizes)))
    param = f"num_classes: 4 evaluate_difficult_gt: {str(difficult_too).lower()}"
    param += f' name_size_file: "{name_size}"' if sizes else ""
    kinds = set()
    for _ in range(5):
        corners = np.sort(rng.random((12, 2, 2)), axis=1).reshape(12, 4)[:, [0, 2, 1, 3]]
        gt = np.column_stack(
            [rng.integers(0, 3, 12), rng.integers(1, 4, 12), np.zeros(12), corners, rng.random(12) < 0.3]
        )
        picks = rng.integers(0, 12, 30)
        boxes = gt[picks, 3:7] + rng.normal(0, 0.05, (30, 4))
        det = np.column_stack([gt[picks, 0], gt[picks, 1], rng.choice([0.3, 0.5, 0.7, 0.9], 30), boxes])
        det[rng.random(30) < 0.2, 1] = rng.integers(1, 4)  # some with a class the box does not have
        det = det[np.lexsort((det[:, 1], det[:, 0]))]  # DetectionOutput's order: by image, then class
        rows = _evaluate(det.tolist(), gt.tolist(), param)
        expected = _loop_rows(det.astype(np.float32), gt.astype(np.float32), 4, difficult_too, sizes)
        np.testing.assert_allclose(rows, expected, rtol=1e-6)
        kinds |= {(int(r[3]), int(r[4])) for r in expected if r[0] != -1}
    assert kinds == ({(1, 0), (0, 1)} if difficult_too else {(1, 0), (0, 1), (0, 0)})


# ---------------------------------------------------------------------------- average precision
def _ap(hits: list[int], positives: int, version: str, scores: list[float] | None = None) -> float:
    scores = scores if scores is not None else [1.0 - 0.1 * k for k in range(len(hits))]
    return average_precision(np.array(scores), np.array(hits), positives, version)


def test_average_precision_by_hand():
    # tp, fp, tp of 2 boxes: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    assert _ap([1, 0, 1], 2, "11point") == pytest.approx((6 * 1 + 5 * 2 / 3) / 11, rel=1e-6)  # recall 0..0.5: 1
    assert _ap([1, 0, 1], 2, "Integral") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, rel=1e-6)
    assert _ap([1, 0, 1], 2, "MaxIntegral") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, rel=1e-6)
    # fp, tp, tp: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; the envelope lifts the first half to 2/3
    assert _ap([0, 1, 1], 2, "Integral") == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3, rel=1e-6)
    assert _ap([0, 1, 1], 2, "MaxIntegral") == pytest.approx(2 / 3, rel=1e-6)
    assert _ap([0, 1, 1], 2, "11point") == pytest.approx(2 / 3, rel=1e-6)
    # a box never found caps the recall: 1 of 2 found first, precision 1 up to recall 0.5
    assert _ap([1], 2, "11point") == pytest.approx(6 / 11, rel=1e-6)
    assert _ap([1], 2, "Integral") == pytest.approx(0.5, rel=1e-6)


def test_average_precision_sorts_by_score_ties_in_order_and_keeps_float32_recall():
    assert _ap([0, 1], 1, "Integral", scores=[0.2, 0.9]) == pytest.approx(1.0)  # sorted: tp first
    assert _ap([1, 0], 1, "Integral", scores=[0.5, 0.5]) == pytest.approx(1.0)
    assert _ap([0, 1], 1, "Integral", scores=[0.5, 0.5]) == pytest.approx(0.5)
    # 7 of 10 found: float32(0.7) < 0.7, so the 0.7 point has no precision in the fork (7/11, not 8/11)
    assert _ap([1] * 7 + [0], 10, "11point") == pytest.approx(7 / 11, rel=1e-6)
    assert _ap([1, 1], 0, "11point") == 0.0
    assert _ap([], 3, "Integral") == 0.0
    with pytest.raises(ValueError, match="unknown ap_version 'VOC'"):
        _ap([1], 1, "VOC")


def _loop_ap(scores: np.ndarray, hits: np.ndarray, positives: int, version: str) -> float:
    """ComputeAP step by step in float32, as the fork's loops run (a reference for the vectorized one)."""
    order = sorted(range(len(scores)), key=lambda k: -scores[k])  # stable
    f32, tp, fp, prec, rec = np.float32, 0, 0, [], []
    for k in order:
        tp, fp = tp + int(hits[k]), fp + 1 - int(hits[k])
        prec.append(f32(tp) / f32(tp + fp))
        rec.append(f32(tp) / f32(positives))
    ap = f32(0)
    if version == "11point":  # from the highest recall down, recall compared in double as C++ promotes it
        best, start = [f32(0)] * 11, len(prec) - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if float(rec[i]) < j / 10:
                    start = i
                    if j > 0:
                        best[j - 1] = best[j]
                    break
                best[j] = max(best[j], prec[i])
        for j in range(10, -1, -1):
            ap = f32(ap + best[j] / f32(11))
    elif version == "MaxIntegral":
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(len(prec) - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            if abs(cur_rec - rec[i]) > f32(1e-6):
                ap = f32(ap + cur_prec * abs(cur_rec - rec[i]))
            cur_rec = rec[i]
        ap = f32(ap + cur_rec * cur_prec)
    else:
        previous = f32(0)
        for q, r in zip(prec, rec, strict=True):
            if abs(r - previous) > f32(1e-6):
                ap = f32(ap + q * abs(r - previous))
            previous = r
    return float(ap)


@pytest.mark.parametrize("version", ["11point", "MaxIntegral", "Integral"])
def test_average_precision_equals_the_step_by_step_loops(version: str):
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(1, 40))
        scores = rng.choice(np.linspace(0.05, 0.95, 10), n).astype(np.float32)  # ties included
        hits = (rng.random(n) < 0.5).astype(np.int64)
        positives = int(hits.sum() + rng.integers(0, 4)) or 1
        assert average_precision(scores, hits, positives, version) == _loop_ap(scores, hits, positives, version)


# ---------------------------------------------------------------------------- the solver
FORK_SOLVER = """
train_net: "train.prototxt"
test_net: "test.prototxt"
test_iter: 619
test_interval: 10000
base_lr: 0.001
display: 10
max_iter: 120000
lr_policy: "multistep"
gamma: 0.1
momentum: 0.9
weight_decay: 0.0005
snapshot: 80000
snapshot_prefix: "models/VGGNet/VOC0712/SSD_300x300/VGG_VOC0712_SSD_300x300"
solver_mode: GPU
device_id: 0
debug_info: false
snapshot_after_train: true
test_initialization: false
average_loss: 10
stepvalue: 80000
stepvalue: 100000
stepvalue: 120000
iter_size: 1
type: "SGD"
eval_type: "detection"
ap_version: "11point"
show_per_class_result: true
plateau_winsize: 1000
plateau_winsize: 2000
"""


def test_fork_solver_fields_parse_with_their_moved_numbers(tmp_path: Path):
    path = tmp_path / "solver.prototxt"
    path.write_text(FORK_SOLVER)
    p = read_solver_param(path)
    assert (p.eval_type, p.ap_version, p.show_per_class_result, list(p.plateau_winsize)) == (
        "detection",
        "11point",
        True,
        [1000, 2000],
    )
    fields = pb.SolverParameter.DESCRIPTOR.fields_by_name
    assert [fields[f].number for f in ("eval_type", "ap_version", "plateau_winsize", "show_per_class_result")] == [
        1041,
        1042,
        1043,
        1044,
    ]
    assert (fields["layer_wise_reduce"].number, fields["weights"].number) == (41, 42)
    assert pb.LayerParameter.DESCRIPTOR.fields_by_name["detection_evaluate_param"].number == 205
    assert (pb.SolverParameter().eval_type, pb.SolverParameter().ap_version) == ("classification", "Integral")


_NET = """
name: "ssd_eval"
layer { name: "in" type: "Input" top: "data" top: "feat" top: "locf" top: "conff" top: "label"
        input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } shape { dim: 1 dim: 8 dim: 4 dim: 4 }
                      shape { dim: 1 dim: 128 } shape { dim: 1 dim: 128 } shape { dim: 1 dim: 1 dim: 3 dim: 8 } } }
layer { name: "fixed" type: "Input" top: "fixed_det" include { phase: TEST }
        input_param { shape { dim: 1 dim: 1 dim: 4 dim: 7 } } }
layer { name: "prior" type: "PriorBox" bottom: "feat" bottom: "data" top: "prior"
        prior_box_param { min_size: 4 aspect_ratio: 2 flip: false variance: 0.1 } }
layer { name: "loss" type: "MultiBoxLoss" bottom: "locf" bottom: "conff" bottom: "prior" bottom: "label" top: "loss"
        include { phase: TRAIN } multibox_loss_param { num_classes: 4 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "locf" bottom: "conff" bottom: "prior"
        top: "detection_out" include { phase: TEST }
        detection_output_param { num_classes: 4 confidence_threshold: 0.5 keep_top_k: 20 nms_param { top_k: 40 } } }
layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out" bottom: "label"
        top: "detection_eval" include { phase: TEST } detection_evaluate_param { num_classes: 4 } }
layer { name: "fixed_eval" type: "DetectionEvaluate" bottom: "fixed_det" bottom: "label"
        top: "fixed_eval" include { phase: TEST } detection_evaluate_param { num_classes: 4 } }
"""
_LABEL = [[0, 1, 0, *A, 0], [0, 1, 1, *B, 0], [0, 2, 0, *C, 0]]
# class 1: tp (A), a duplicate of A, tp (B): 11point AP (6 + 5 * 2/3) / 11; class 2: one fp, AP 0; class 3: no
# ground truth and no detection, AP not computed but counted: mAP = AP(class 1) / 3
_FIXED = [[0, 1, 0.9, *A], [0, 1, 0.8, *A], [0, 1, 0.7, *B], [0, 2, 0.6, *FAR]]
_CLASS_1 = (6 + 5 * 2 / 3) / 11


def _eval_solver(
    tmp_path: Path, extra: str = "", kind: str = 'eval_type: "detection" ap_version: "11point"'
) -> caffe.Solver:
    (tmp_path / "net.prototxt").write_text(_NET)
    path = tmp_path / "solver.prototxt"
    path.write_text(
        f'net: "{tmp_path / "net.prototxt"}" test_iter: 2 test_interval: 100 base_lr: 0.01 lr_policy: "fixed" '
        f"max_iter: 1 display: 0 random_seed: 1 {kind} {extra}"
    )
    s = caffe.get_solver(str(path))
    net = s.test_nets[0]
    net.blobs["label"].data[...] = np.array(_LABEL).reshape(1, 1, 3, 8)
    net.blobs["fixed_det"].data[...] = np.array(_FIXED).reshape(1, 1, 4, 7)
    rng = np.random.default_rng(0)  # 32 priors: 2 per cell of the 4x4 feature map
    net.blobs["locf"].data[...], net.blobs["conff"].data[...] = rng.normal(0, 0.1, (1, 128)), rng.random((1, 128))
    return s


def test_solver_logs_the_mean_ap_of_each_output(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    s = _eval_solver(tmp_path, "show_per_class_result: true")
    with caplog.at_level(logging.INFO, logger="caffe"):
        results = s.test(0)
    lines = [r.getMessage() for r in caplog.records]
    assert results["fixed_eval"] == pytest.approx(_CLASS_1 / 3, rel=1e-6)
    assert 0.0 <= results["detection_eval"] <= 1.0  # DetectionOutput's keep_top_k 20 detections, scored alike
    assert s.test_nets[0].blobs["detection_eval"].data.shape == (1, 1, 3 + 20, 5)
    assert f"    Test net output #1: fixed_eval = {_CLASS_1 / 3:g}" in lines
    per_class = [line for line in lines if line.startswith("class")]
    assert per_class[-2:] == [f"class1: {_CLASS_1:g}", "class2: 0"]  # fixed_eval's, after detection_eval's
    assert "Missing true_pos for label: 3" in lines


def test_solver_detection_errors(tmp_path: Path):
    with pytest.raises(SolverError, match="unknown ap_version 'VOC'"):
        _eval_solver(tmp_path, kind='eval_type: "detection" ap_version: "VOC"')
    with pytest.raises(SolverError, match="unknown eval_type 'segmentation'"):
        _eval_solver(tmp_path, kind='eval_type: "segmentation"')


def test_detection_eval_type_needs_evaluation_outputs(tmp_path: Path):
    net = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }'
    param = text_format.Parse(
        'test_iter: 1 test_interval: 1 base_lr: 0.1 lr_policy: "fixed" eval_type: "detection"', pb.SolverParameter()
    )
    text_format.Parse(net, param.net_param)
    with pytest.raises(SolverError, match=r"test net output 'x' has shape \(1, 3\).*DetectionEvaluate"):
        caffe.get_solver(param).test(0)


# ---------------------------------------------------------------------------- plateau
def test_plateau_steps_after_a_window_without_a_new_minimum():
    p = pb.SolverParameter(base_lr=0.1, gamma=0.5, lr_policy="plateau", plateau_winsize=[3, 2])
    losses = [5.0, 4.0, 4.5, 4.5, 4.2, 3.9, 4.1, 4.1, 4.1, 4.1, 4.1]
    step, state, steps = 0, Plateau(), []
    for it, loss in enumerate(losses):
        step, state = plateau_step(p, it, step, state, loss)
        steps.append(step)
    # minimum at 1; 3 iterations later (4) step 1, an event; new minimum at 5; 2 later (7) step 2; no more
    assert steps == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert learning_rate_at(p, 7, 2)[0] == pytest.approx(0.1 * 0.25, rel=1e-6)


def test_plateau_in_the_solver(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A net whose loss never changes: the first iteration sets the minimum, then a step every window."""
    net = """layer { name: "in" type: "Input" top: "x" top: "y"
                     input_param { shape { dim: 1 dim: 2 } shape { dim: 1 dim: 2 } } }
             layer { name: "loss" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "loss" }"""
    param = text_format.Parse(
        'base_lr: 1 gamma: 0.1 lr_policy: "plateau" plateau_winsize: 2 plateau_winsize: 3 max_iter: 7 display: 1',
        pb.SolverParameter(),
    )
    text_format.Parse(net, param.net_param)
    s = caffe.get_solver(param)
    with caplog.at_level(logging.INFO, logger="caffe"):
        s.step(7)
    lines = [r.getMessage() for r in caplog.records]
    assert "Plateau Status: Iteration 2, step = 1" in lines and "Plateau Status: Iteration 5, step = 2" in lines
    assert "Plateau Status: Iteration 0, current minimum_loss = 0" in lines
    assert "Iteration 6, lr = 0.01" in lines


def test_caffe_test_reports_the_mean_ap_of_detection_evaluate_outputs(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """``caffe test`` on a net ending in DetectionEvaluate: the rows' count changes from net to net, so they are
    gathered over the iterations and reported as a mean AP (``--ap_version``), not averaged value by value."""
    import h5py

    from caffe.tools.train import test as caffe_test

    rows = np.array(_FIXED, dtype=np.float32)
    label = np.array([*_LABEL, [-1] * 8], dtype=np.float32)  # padded to the detections' count: ends the truth
    with h5py.File(tmp_path / "fixed.h5", "w") as f:
        f["det"], f["label"] = rows, label
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'fixed.h5'}\n")
    (tmp_path / "net.prototxt").write_text(f"""
        layer {{ name: "h5" type: "HDF5Data" top: "det" top: "label"
                 hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 4 }} }}
        layer {{ name: "d" type: "Reshape" bottom: "det" top: "d"
                 reshape_param {{ shape {{ dim: 1 dim: 1 dim: -1 dim: 7 }} }} }}
        layer {{ name: "g" type: "Reshape" bottom: "label" top: "g"
                 reshape_param {{ shape {{ dim: 1 dim: 1 dim: -1 dim: 8 }} }} }}
        layer {{ name: "fixed_eval" type: "DetectionEvaluate" bottom: "d" bottom: "g" top: "fixed_eval"
                 detection_evaluate_param {{ num_classes: 4 }} }}
    """)
    weights = tmp_path / "none.caffemodel"
    weights.write_bytes(pb.NetParameter(name="none").SerializeToString())
    args = [f"--model={tmp_path / 'net.prototxt'}", f"--weights={weights}", "--iterations=2"]
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert caffe_test([*args, "--ap_version=11point"]) == 0
    # the same batch twice: every count and detection doubled, the same precision-recall curve
    assert f"fixed_eval = {np.float32(_CLASS_1 / 3):g} (mean AP, 11point)" in [r.getMessage() for r in caplog.records]


def test_non_finite_rows_are_layer_errors():
    """A NaN or infinite image or class in the rows ends in the layer's error, not Python's (int(inf) overflows)."""
    for det, truth in (
        ([[0, np.nan, 0.5, *A]], [[0, 1, 0, *A, 0]]),
        ([[np.inf, 1, 0.5, *A]], [[0, 1, 0, *A, 0]]),
        ([[0, 1, 0.5, *A]], [[np.inf, 1, 0, *A, 0]]),
    ):
        with pytest.raises(LayerError, match=r"\(DetectionEvaluate\) forward failed"):
            _evaluate(det, truth, "num_classes: 4")
