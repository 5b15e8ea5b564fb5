"""SSD's MultiBoxLoss against hand-computed cases, a loop-by-loop reference of the fork's algorithm
(weiliu89/caffe ssd: MatchBBox, MineHardExamples, EncodeBBox, the Smooth L1 and softmax losses), finite
differences, and a fine-tuning step of the res10 face detector with the loss its .caffemodel embeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import asset
from gradcheck import check_gradient, layer_net, set_inputs

import caffe
from caffe.proto import caffe_pb2 as pb

CENTER = "CENTER_SIZE"


def _layer(params: str = "", extra: str = "") -> str:
    return (
        'type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "prior" bottom: "label" top: "loss" '
        f"multibox_loss_param {{ num_classes: 3 {params} }} {extra}"
    )


def _net(k: int, g: int, n: int = 1, params: str = "", classes: int = 3, dtype=torch.float64, extra: str = ""):
    shapes = {"loc": (n, k * 4), "conf": (n, k * classes), "prior": (1, 2, k * 4), "label": (1, 1, g, 8)}
    text = _layer(params, extra).replace("num_classes: 3", f"num_classes: {classes}")
    return layer_net(text, shapes, dtype=dtype)


def _priors(boxes: list[list[float]], variances=(0.1, 0.1, 0.2, 0.2)) -> np.ndarray:
    b = np.array(boxes, dtype=np.float64)
    return np.stack([b.reshape(-1), np.tile(variances, len(b))])[None]


def _label(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float64)[None, None]


def _run(net: caffe.Net, **values: np.ndarray) -> float:
    set_inputs(net, values)
    return float(net.forward()["loss"])


# ---------------------------------------------------------------------------- hand-computed
def test_hand_computed_center_size_smooth_l1_softmax_with_mined_negatives():
    """4 priors, one face box: prior 0 is the box itself (the bipartite match), prior 1 overlaps it by 1/3
    (a PER_PREDICTION match over 0.3), priors 2 and 3 only touch it (negatives; with two positives and
    neg_pos_ratio 1 both are kept). VALID divides by the 2 matches."""
    priors = [[0.0, 0.0, 0.5, 0.5], [0.0, 0.25, 0.5, 0.75], [0.5, 0.5, 1.0, 1.0], [0.5, 0.0, 1.0, 0.5]]
    net = _net(4, 1, params="code_type: CENTER_SIZE neg_pos_ratio: 1 overlap_threshold: 0.3", classes=2)
    loc = np.array([[0.1, -0.2, 0.3, 0.05, 0.5, 2.0, -0.1, 0.0] + [0.0] * 8])
    conf = np.array([[0.2, 0.1, 1.0, -1.0, 0.3, 0.3, -0.5, 0.7]])  # (background, face) per prior
    loss = _run(net, loc=loc, conf=conf, prior=_priors(priors), label=_label([[0, 1, 0, 0.0, 0.0, 0.5, 0.5, 0]]))
    # encoded targets (variances 0.1, 0.1, 0.2, 0.2): prior 0 all 0; prior 1's centre is 0.25 below the
    # box's, its height 0.5: (0, -0.25 / 0.5 / 0.1, log 1, log 1) = (0, -5, 0, 0)
    sl1 = lambda d: 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5  # noqa: E731
    l_loc = sum(map(sl1, [0.1, -0.2, 0.3, 0.05])) + sum(map(sl1, [0.5, 2.0 + 5.0, -0.1, 0.0]))
    nll = lambda s, c: math.log(sum(math.exp(v) for v in s)) - s[c]  # noqa: E731
    l_conf = nll([0.2, 0.1], 1) + nll([1.0, -1.0], 1) + nll([0.3, 0.3], 0) + nll([-0.5, 0.7], 0)
    assert loss == pytest.approx((l_loc + l_conf) / 2, rel=1e-6)


def test_neg_pos_ratio_keeps_the_worst_negatives_and_normalization_modes():
    priors = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0]]
    values = {
        "loc": np.zeros((1, 16)),
        "conf": np.array([[0.0, 0.0, 0.0, 2.0, 0.0, 1.0, 0.0, 3.0]]),
        "prior": _priors(priors),
        "label": _label([[0, 1, 0, 0.0, 0.0, 0.5, 0.5, 0]]),
    }
    nll = lambda s, c: math.log(sum(math.exp(v) for v in s)) - s[c]  # noqa: E731
    pos = nll([0.0, 0.0], 1)
    # one positive, ratio 1: the negative with the largest background loss is prior 3 (score 3 for the face)
    for mode, divisor in (("VALID", 1), ("FULL", 4), ("BATCH_SIZE", 1), ("NONE", 1)):
        net = _net(4, 1, params="neg_pos_ratio: 1", classes=2, extra=f"loss_param {{ normalization: {mode} }}")
        assert _run(net, **values) == pytest.approx((pos + nll([0.0, 3.0], 0)) / divisor, rel=1e-6), mode
    # without mining every prior counts, background unless matched
    net = _net(4, 1, params="mining_type: NONE", classes=2)
    total = pos + nll([0.0, 2.0], 0) + nll([0.0, 1.0], 0) + nll([0.0, 3.0], 0)
    assert _run(net, **values) == pytest.approx(total, rel=1e-6)


def test_bipartite_then_per_prediction_matching():
    """Two boxes both overlapping prior 0 most: bipartite gives prior 0 to the better box and the other box
    its own best prior, even below the threshold; PER_PREDICTION adds priors over the threshold."""
    from caffe.layers.multibox_loss import match_priors

    priors = np.array(
        [[0.0, 0.0, 0.4, 0.4], [0.05, 0.05, 0.45, 0.45], [0.6, 0.6, 1.0, 1.0], [0.0, 0.0, 0.2, 0.2]], np.float32
    )
    gt = np.array([[0.0, 0.0, 0.4, 0.42], [0.0, 0.0, 0.3, 0.3]], np.float32)
    match, best = match_priors(priors, gt, pb.MultiBoxLossParameter.BIPARTITE, 0.5)
    # prior 0 / box 0 overlap 0.952 is the best pair; box 1's best remaining prior is prior 3 (0.444) over
    # prior 1 (0.327)
    assert match.tolist() == [0, -1, -1, 1]
    assert best[0] == pytest.approx(0.16 / 0.168, rel=1e-6) and best[3] == pytest.approx(0.04 / 0.09, rel=1e-6)
    match, _ = match_priors(priors, gt, pb.MultiBoxLossParameter.PER_PREDICTION, 0.5)
    assert match.tolist() == [0, 0, -1, 1]  # prior 1 overlaps box 0 by 0.652, box 1 by 0.333
    crossing = np.array([[-0.1, 0.0, 0.3, 0.4], [0.0, 0.0, 0.3, 0.3]], np.float32)
    match, _ = match_priors(crossing, gt, pb.MultiBoxLossParameter.PER_PREDICTION, 0.5, ignore_cross_boundary=True)
    assert match.tolist() == [-2, 1]


# ---------------------------------------------------------------------------- reference
def _ref_loc_loss(loc, i, p, g, boxes, var):
    """Smooth L1 of prior ``p``'s prediction in image ``i`` against box ``g`` encoded CENTER_SIZE."""
    k = len(boxes)
    pw, ph = boxes[p][2] - boxes[p][0], boxes[p][3] - boxes[p][1]
    pcx, pcy = (boxes[p][0] + boxes[p][2]) / 2, (boxes[p][1] + boxes[p][3]) / 2
    gcx, gcy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
    target = [
        (gcx - pcx) / pw / var[p][0],
        (gcy - pcy) / ph / var[p][1],
        math.log((g[2] - g[0]) / pw) / var[p][2],
        math.log((g[3] - g[1]) / ph) / var[p][3],
    ]
    total = 0.0
    for d in loc[i].reshape(k, 4)[p] - np.array(target, dtype=np.float64):
        total += 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5
    return total


def _ref_nms(bxs, scores, threshold, top_k, size, iou):
    """The fork's ApplyNMS, loop by loop: indices by descending score (stable), top_k, greedy."""
    pending = sorted(range(len(scores)), key=lambda q: -scores[q])
    if top_k > -1:
        pending = pending[:top_k]
    out = []
    while pending:
        best = pending.pop(0)
        if size(bxs[best]) < 1e-5:
            continue
        out.append(best)
        if top_k > -1 and len(out) >= top_k:
            break
        pending = [q for q in pending if not size(bxs[q]) < 1e-5 and not iou(bxs[best], bxs[q]) > threshold]
    return out


def _reference(loc, conf, prior, label, classes, neg_pos_ratio=3.0, threshold=0.5, neg_overlap=0.5, hard=0, nms=None):
    """The fork's SSD defaults (shared location, PER_PREDICTION, MAX_NEGATIVE, CENTER_SIZE, Smooth L1,
    softmax, VALID), written loop by loop as its C++ does, in float32; ``hard``: HARD_EXAMPLE mining with that
    sample_size; ``nms``: (nms_threshold, top_k) of the mining's NMS on the priors (use_prior_for_nms)."""
    f = np.float32
    n, k = loc.shape[0], prior.shape[2] // 4
    boxes, var = prior[0, 0].reshape(k, 4).astype(f), prior[0, 1].reshape(k, 4).astype(f)

    def size(b):
        return f(0) if b[2] < b[0] or b[3] < b[1] else f((b[2] - b[0]) * (b[3] - b[1]))

    def iou(a, b):
        if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
            return f(0)
        w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
        if w <= 0 or h <= 0:
            return f(0)
        inter = f(w * h)
        return f(inter / f(size(a) + size(b) - inter))

    gts: dict[int, list] = {}
    for row in label.reshape(-1, 8).astype(f):
        if int(row[0]) != -1:
            gts.setdefault(int(row[0]), []).append((row[3:7], int(row[1])))
    loc_sum = conf_sum = 0.0
    matches_total = 0
    for i in range(n):
        gt = gts.get(i, [])
        match, best = [-1] * k, [f(0)] * k
        ov = {}
        for p in range(k):
            for j, (g, _) in enumerate(gt):
                o = iou(boxes[p], g)
                if o > 1e-6:
                    best[p] = max(best[p], o)
                    ov[p, j] = o
        pool = list(range(len(gt)))
        while pool:
            top, pick = f(-1), None
            for p in range(k):
                if match[p] != -1:
                    continue
                for j in pool:
                    if (p, j) in ov and ov[p, j] > top:
                        top, pick = ov[p, j], (p, j)
            if pick is None:
                break
            match[pick[0]], best[pick[0]] = pick[1], top
            pool.remove(pick[1])
        for p in range(k):
            if match[p] == -1:
                top, pick = f(-1), -1
                for j in range(len(gt)):
                    if (p, j) in ov and ov[p, j] >= f(threshold) and ov[p, j] > top:
                        top, pick = ov[p, j], j
                if pick != -1:
                    match[p], best[p] = pick, top
        positives = [p for p in range(k) if match[p] > -1]
        negatives = []
        if gt:
            scores = conf[i].reshape(k, classes).astype(f)

            def conf_loss(p, lab, scores=scores):
                s = scores[p]
                prob = f(np.exp(s[lab] - s.max()) / np.exp(s - s.max()).sum())
                return f(-np.log(max(prob, f(1.1754944e-38))))

            if hard:
                cand = [
                    (f(conf_loss(p, gt[match[p]][1]) + _ref_loc_loss(loc, i, p, gt[match[p]][0], boxes, var))
                    if match[p] > -1
                    else conf_loss(p, 0), p)
                    for p in range(k)
                ]  # fmt: skip
                keep = min(hard, k)
            else:
                cand = [(conf_loss(p, 0), p) for p in range(k) if match[p] == -1 and best[p] < f(neg_overlap)]
                keep = min(int(f(len(positives)) * f(neg_pos_ratio)), len(cand))
            if nms:
                order = _ref_nms([boxes[p] for _, p in cand], [v for v, _ in cand], *nms, size, iou)
                selected = [cand[o][1] for o in order[:keep]]
            else:
                selected = [p for _, p in sorted(cand, key=lambda t: (-t[0], t[1]))[:keep]]
            if hard:
                positives = [p for p in positives if p in selected]
            negatives = sorted(p for p in selected if match[p] == -1)
        matches_total += len(positives)
        for p in positives:
            g, lab = gt[match[p]]
            loc_sum += _ref_loc_loss(loc, i, p, g, boxes, var)
            s = conf[i].reshape(k, classes)[p]
            conf_sum += math.log(np.exp(s - s.max()).sum()) + s.max() - s[lab]
        for p in negatives:
            s = conf[i].reshape(k, classes)[p]
            conf_sum += math.log(np.exp(s - s.max()).sum()) + s.max() - s[0]
    return (loc_sum + conf_sum) / max(1, matches_total)


def _random_case(rng, n=3, k=40, classes=4):
    centres = rng.uniform(0.1, 0.9, size=(k, 2))
    sizes = rng.uniform(0.1, 0.5, size=(k, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    rows = []
    for i in range(n - 1):  # the last image has no box
        for _ in range(int(rng.integers(1, 4))):
            c, s = rng.uniform(0.2, 0.8, 2), rng.uniform(0.15, 0.5, 2)
            rows.append([i, int(rng.integers(1, classes)), 0, *(c - s / 2), *(c + s / 2), 0])
    rows.append([-1] * 8)  # padding
    return {
        "loc": rng.normal(0, 0.5, size=(n, k * 4)),
        "conf": rng.normal(0, 1.0, size=(n, k * classes)),
        "prior": _priors(boxes.tolist()),
        "label": _label(rows),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_batches_match_the_forks_algorithm_written_out(seed: int):
    rng = np.random.default_rng(seed)
    values = _random_case(rng)
    g = values["label"].shape[2]
    net = _net(40, g, n=3, params="code_type: CENTER_SIZE overlap_threshold: 0.3", classes=4)
    expected = _reference(values["loc"], values["conf"], values["prior"], values["label"], 4, threshold=0.3)
    assert _run(net, **values) == pytest.approx(expected, rel=1e-5)


_ON_PRIORS = "use_prior_for_nms: true"


@pytest.mark.parametrize(
    ("params", "hard", "nms"),
    [
        ("mining_type: HARD_EXAMPLE sample_size: 10", 10, None),
        ("nms_param { nms_threshold: 0.3 top_k: 30 } use_prior_for_nms: true", 0, (0.3, 30)),
        (
            "mining_type: HARD_EXAMPLE sample_size: 12 nms_param { nms_threshold: 0.45 top_k: 25 } " + _ON_PRIORS,
            12,
            (0.45, 25),
        ),
    ],
    ids=["hard-example", "max-negative-nms", "hard-example-nms"],
)
def test_other_minings_match_the_forks_algorithm_written_out(params: str, hard: int, nms):
    for seed in (5, 6):
        values = _random_case(np.random.default_rng(seed))
        g = values["label"].shape[2]
        net = _net(40, g, n=3, params=f"code_type: CENTER_SIZE overlap_threshold: 0.3 {params}", classes=4)
        expected = _reference(
            values["loc"], values["conf"], values["prior"], values["label"], 4, threshold=0.3, hard=hard, nms=nms
        )
        assert _run(net, **values) == pytest.approx(expected, rel=1e-5), seed


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    values = _random_case(rng, n=2, k=12, classes=3)
    net = _net(12, values["label"].shape[2], n=2, params="code_type: CENTER_SIZE neg_pos_ratio: 2", classes=3)
    check_gradient(net, values, check_bottoms=["loc", "conf"], kink=None)


def test_propagate_down_false_leaves_its_term_out_and_difficult_boxes():
    rng = np.random.default_rng(4)
    values = _random_case(rng, n=2, k=12, classes=3)
    both = _run(_net(12, values["label"].shape[2], n=2, classes=3), **values)
    down = "propagate_down: false propagate_down: true propagate_down: false propagate_down: false"
    no_loc = _run(_net(12, values["label"].shape[2], n=2, classes=3, extra=down), **values)
    assert no_loc < both
    values["label"][0, 0, 0, 7] = 1  # the first box is difficult
    kept = _run(_net(12, values["label"].shape[2], n=2, classes=3), **values)
    dropped = _run(_net(12, values["label"].shape[2], n=2, classes=3, params="use_difficult_gt: false"), **values)
    assert kept == pytest.approx(both) and dropped != pytest.approx(both)


def test_no_box_in_the_batch_gives_zero_loss_and_zero_gradient():
    net = _net(4, 1, n=2, classes=2)
    values = {
        "loc": np.ones((2, 16)),
        "conf": np.ones((2, 8)),
        "prior": _priors([[0, 0, 0.5, 0.5]] * 4),
        "label": _label([[-1] * 8]),
    }
    assert _run(net, **values) == 0.0
    net.backward()
    assert not net.blobs["loc"].diff.any() and not net.blobs["conf"].diff.any()


def test_refusals_are_clear():
    with pytest.raises(caffe.LayerError, match="num_classes"):
        layer_net(
            'type: "MultiBoxLoss" bottom: "a" bottom: "b" bottom: "c" bottom: "d" top: "l"',
            {"a": (1, 4), "b": (1, 2), "c": (1, 2, 4), "d": (1, 1, 1, 8)},
        )
    with pytest.raises(caffe.ShapeError, match="needs 3 values per image"):
        layer_net(_layer(), {"loc": (1, 4), "conf": (1, 4), "prior": (1, 2, 4), "label": (1, 1, 1, 8)})
    with pytest.raises(caffe.LayerError, match="sample_size must be positive"):
        _net(1, 1, params="mining_type: HARD_EXAMPLE sample_size: 0")
    net = _net(1, 1, classes=2)
    values = {"loc": np.zeros((1, 4)), "conf": np.zeros((1, 2)), "prior": _priors([[0, 0, 1, 1]])}
    with pytest.raises(caffe.LayerError, match=r"label bottom row 0 holds a non-finite value"):
        _run(net, **values, label=_label([[0, 1, 0, np.nan, 0, 1, 1, 0]]))
    with pytest.raises(caffe.LayerError, match=r"has label 7, not in \[0, 2\)"):
        _run(net, **values, label=_label([[0, 7, 0, 0, 0, 1, 1, 0]]))
    with pytest.raises(caffe.LayerError, match="background label 0"):
        _run(
            net,
            loc=np.zeros((1, 4)),
            conf=np.zeros((1, 2)),
            prior=_priors([[0, 0, 1, 1]]),
            label=_label([[0, 0, 0, 0, 0, 1, 1, 0]]),
        )


# ---------------------------------------------------------------------------- a real detector
def test_res10_face_detector_fine_tunes_with_its_own_multibox_loss(tmp_path):
    """The res10 SSD face detector's deploy net with DetectionOutput replaced by the MultiBoxLoss its
    .caffemodel embeds (num_classes 2, CENTER_SIZE, MAX_NEGATIVE): from its trained weights, a few SGD
    steps on one labelled image lower the loss."""
    from caffe.protoio import read_net_param, read_net_param_binary

    trained = asset("models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel")
    loss_layer = next(layer for layer in read_net_param_binary(trained).layer if layer.type == "MultiBoxLoss")
    net = read_net_param(asset("models/res10_ssd_face_prototxt_only/deploy.prototxt"))
    # the training net's loss reads the raw confidences: no softmax head, no DetectionOutput
    head = {"mbox_conf_reshape", "mbox_conf_softmax", "mbox_conf_flatten", "detection_out"}
    keep = [layer for layer in net.layer if layer.name not in head and layer.type != "DetectionOutput"]
    del net.layer[:]
    net.layer.extend(keep)
    label_input = net.layer.add(name="label_input", type="Input", top=["label"])
    label_input.input_param.shape.add(dim=[1, 1, 1, 8])
    mbox = net.layer.add()
    mbox.CopyFrom(loss_layer)
    del mbox.include[:]
    assert list(mbox.bottom) == ["mbox_loc", "mbox_conf", "mbox_priorbox", "label"]
    train = tmp_path / "train.prototxt"
    train.write_text(str(net))
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{train}" base_lr: 0.0001 lr_policy: "fixed" momentum: 0.9 max_iter: 100 display: 0')
    s = caffe.get_solver(str(solver))
    s.net.copy_from(str(trained))
    image = np.random.default_rng(0).uniform(-60, 60, size=s.net.blobs["data"].shape)
    s.net.blobs["data"].data[...] = image
    s.net.blobs["label"].data[...] = [[[[0, 1, 0, 0.3, 0.2, 0.6, 0.7, 0]]]]
    first = float(s.net.forward()["mbox_loss"])
    s.step(3)
    s.net.blobs["data"].data[...] = image
    s.net.blobs["label"].data[...] = [[[[0, 1, 0, 0.3, 0.2, 0.6, 0.7, 0]]]]
    after = float(s.net.forward()["mbox_loss"])
    assert np.isfinite(first) and after < first


_TINY_SSD = """
name: "tiny_ssd"
layer { name: "in" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 16 dim: 16 } shape { dim: 1 dim: 1 dim: 2 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "loc" type: "Convolution" bottom: "feat" top: "loc"
        convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "conf" type: "Convolution" bottom: "feat" top: "conf"
        convolution_param { num_output: 6 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "locp" type: "Permute" bottom: "loc" top: "locp" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "locf" type: "Flatten" bottom: "locp" top: "locf" }
layer { name: "confp" type: "Permute" bottom: "conf" top: "confp"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conff" type: "Flatten" bottom: "confp" top: "conff" }
layer { name: "prior" type: "PriorBox" bottom: "feat" bottom: "data" top: "prior"
        prior_box_param { min_size: 6 aspect_ratio: 2 flip: false
                          variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "loss" type: "MultiBoxLoss" bottom: "locf" bottom: "conff" bottom: "prior" bottom: "label" top: "loss"
        multibox_loss_param { num_classes: 3 code_type: CENTER_SIZE } }
"""


def test_a_small_ssd_trains_and_the_compiled_engine_leaves_it_eager(tmp_path):
    """PriorBox, Permute, Flatten and MultiBoxLoss in a solver: the loss falls on a fixed batch; asked for the
    compiled engine, the solver trains eagerly and says why (the matching reads the values on the CPU, and the
    label blob changes shape from batch to batch)."""
    (tmp_path / "net.prototxt").write_text(_TINY_SSD)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 max_iter: 10 '
        "display: 0 random_seed: 1"
    )
    s = caffe.get_solver(str(tmp_path / "solver.prototxt"), engine="compiled")
    engine = s.train_engine_for(10)
    assert engine.name == "eager"
    assert "layer 'loss' (MultiBoxLoss)" in str(caffe.train_step.capture_obstacle(s.net))
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16))
    losses = []
    for _ in range(5):
        s.net.blobs["data"].data[...] = x
        s.net.blobs["label"].data[...] = [[[[0, 1, 0, 0.1, 0.1, 0.5, 0.6, 0], [1, 2, 0, 0.4, 0.3, 0.9, 0.8, 0]]]]
        s.step(1)
        losses.append(float(s.net.blobs["loss"].data))
    assert losses[-1] < 0.8 * losses[0]
