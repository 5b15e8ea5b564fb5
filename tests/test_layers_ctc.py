"""Text recognition layers of senlinuc/caffe_ocr: WarpCTCLoss, CTCGreedyDecoder, Lstm, Transpose, Reverse, ReverseTime.

Independent truth: CTC probabilities by enumerating every path of a small problem (Graves' definition: merge
repeats, drop blanks), finite differences, edit distances and decodings worked out by hand, and the fork's
Lstm backward written out again here in NumPy step by step (its clipping and continuation rules included).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
from gradcheck import check_gradient, layer_net, run_layer, set_inputs
from ocr_fixtures import text_strips

import caffe
from caffe.errors import LayerError, ShapeError
from caffe.proto import caffe_pb2 as pb

RNG = np.random.default_rng(7)


def test_fields_keep_the_forks_numbers_and_move_lstm_param_off_roi_pooling():
    fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    assert fields["ctc_decoder_param"].number == 158
    assert fields["ctc_loss_param"].number == 159
    assert fields["reverse_param"].number == 160
    assert fields["reverse_time_param"].number == 161
    assert fields["transpose_param"].number == 8266710
    assert fields["roi_pooling_param"].number == 8266711  # py-faster-rcnn's, which caffe_ocr's lstm_param reuses
    assert fields["lstm_param"].number == 18266711


# ------------------------------------------------------------------------------------------- CTC by brute force
def collapse(path: tuple[int, ...], blank: int) -> list[int]:
    out, prev = [], None
    for c in path:
        if c != prev and c != blank:
            out.append(c)
        prev = c
    return out


def ctc_cost(scores: np.ndarray, label: list[int], blank: int) -> float:
    """-log of the summed probability of every path (T x C scores, softmax per step) that collapses to label."""
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    total = 0.0
    for path in itertools.product(range(scores.shape[1]), repeat=scores.shape[0]):
        if collapse(path, blank) == label:
            total += math.prod(p[t, c] for t, c in enumerate(path))
    return -math.log(total) if total > 0 else math.inf


WARP = 'type: "WarpCTCLoss" bottom: "x" bottom: "y" top: "loss"'


def test_loss_is_the_mean_cost_over_the_items_and_blanks_pad_the_labels():
    x = RNG.normal(0, 1.5, (5, 3, 4))
    y = np.array([[1, 2, 0, 0], [3, 0, 3, 0], [2, 2, 1, 0]], float)  # 0 is the blank: padding, anywhere
    net = run_layer(WARP, {"x": x, "y": y})
    labels = [[1, 2], [3, 3], [2, 2, 1]]
    costs = [ctc_cost(x[:, n], labels[n], 0) for n in range(3)]
    np.testing.assert_allclose(net.blobs["loss"].data, np.mean(costs), rtol=1e-10)


def test_blank_index_moves_the_blank():
    x = RNG.normal(0, 1, (4, 2, 3))
    y = np.array([[0, 2], [1, 1]], float)
    net = run_layer(WARP + " ctc_loss_param { blank_index: 2 }", {"x": x, "y": y})
    costs = [ctc_cost(x[:, 0], [0], 2), ctc_cost(x[:, 1], [1, 1], 2)]
    np.testing.assert_allclose(net.blobs["loss"].data, np.mean(costs), rtol=1e-10)


def summed_cost(x: np.ndarray, labels: list[list[int]], lengths: list[int]) -> float:
    total = 0.0
    for n, label in enumerate(labels):
        cost = ctc_cost(x[: lengths[n], n], label, 0)
        total += 0.0 if math.isinf(cost) else cost
    return total


def numeric_gradient(cost: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Central differences of ``cost`` at ``x``, element by element."""
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        out[i] = (cost(xp) - cost(xm)) / (2 * eps)
    return out


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_gradient_is_the_forks_gradient_of_the_summed_costs(weight: float):
    x = RNG.normal(0, 1, (4, 3, 3))
    y = np.array([[1, 2], [2, 0], [1, 1]], float)  # [1, 1] needs 3 steps (a blank between): fits in 4
    net = run_layer(WARP + f" loss_weight: {weight}", {"x": x, "y": y})
    net.backward()
    labels = [[1, 2], [2], [1, 1]]
    numeric = numeric_gradient(lambda v: summed_cost(v, labels, [4] * 3), x)
    # not the mean's gradient: the fork writes the sum's, scaled here by the loss weight (its top diff)
    np.testing.assert_allclose(net.blobs["x"].diff, weight * numeric, atol=1e-7)


def test_an_item_that_cannot_be_aligned_costs_nothing_and_gets_no_gradient():
    x = RNG.normal(0, 1, (3, 2, 3))
    y = np.array([[1, 1, 1], [1, 2, 0]], float)  # three 1s need 5 steps
    net = run_layer(WARP, {"x": x, "y": y})
    net.backward()
    np.testing.assert_allclose(net.blobs["loss"].data, ctc_cost(x[:, 1], [1, 2], 0) / 2, rtol=1e-10)
    assert not net.blobs["x"].diff[:, 0].any()
    assert net.blobs["x"].diff[:, 1].any()


def test_sequence_indicator_form_reads_lengths_and_shifted_targets():
    T, N = 5, 2
    x = RNG.normal(0, 1, (T, N, 4))
    indicators = np.array([[0, 0], [1, 1], [1, 1], [1, 0], [1, 1]], float)  # item 1 restarts at t = 3
    targets = np.array([[0, 2], [1, -1], [-1, -1], [-1, -1], [-1, -1]], float)  # blank 0: every target + 1
    net = run_layer(
        'type: "WarpCTCLoss" bottom: "x" bottom: "i" bottom: "t" top: "loss"', {"x": x, "i": indicators, "t": targets}
    )
    costs = [ctc_cost(x[:5, 0], [1, 2], 0), ctc_cost(x[:3, 1], [3], 0)]
    np.testing.assert_allclose(net.blobs["loss"].data, np.mean(costs), rtol=1e-10)
    net.backward()
    assert not net.blobs["x"].diff[3:, 1].any()  # steps past item 1's length


def test_length_form_reads_lengths_and_targets_per_item():
    x = RNG.normal(0, 1, (4, 2, 3))
    values = {"x": x, "s": np.array([4.0, 2.0]), "l": np.array([2.0, 1.0]), "t": np.array([[1.0, 2.0], [2.0, 0.0]])}
    net = run_layer('type: "WarpCTCLoss" bottom: "x" bottom: "s" bottom: "l" bottom: "t" top: "loss"', values)
    costs = [ctc_cost(x[:4, 0], [1, 2], 0), ctc_cost(x[:2, 1], [2], 0)]  # targets are (L, N): item 0 reads 1, 2
    np.testing.assert_allclose(net.blobs["loss"].data, np.mean(costs), rtol=1e-10)


@pytest.mark.parametrize(
    ("text", "values", "error", "message"),
    [
        (WARP, {"x": (4, 2, 3), "y": np.array([[1, 3], [1, 0]])}, LayerError, "item 0 has label 3"),
        (WARP, {"x": (4, 2, 3), "y": np.array([[1, -1], [1, 0]])}, LayerError, "item 0 has label -1"),
        (
            WARP + " ctc_loss_param { blank_index: 3 }",
            {"x": (4, 2, 3), "y": np.ones((2, 1))},
            LayerError,
            "blank_index 3",
        ),
        (WARP, {"x": (4, 2, 3, 2), "y": np.ones((2, 1))}, ShapeError, r"\(T, N, C\)"),
        (WARP, {"x": (4, 2, 3), "y": np.ones((3, 1))}, ShapeError, r"bottom 1 must be \(N, L\)"),
    ],
)
def test_bad_inputs_name_the_layer(text: str, values: dict, error: type, message: str):
    arrays = {k: (RNG.normal(0, 1, v) if isinstance(v, tuple) else v.astype(float)) for k, v in values.items()}
    with pytest.raises(error, match=message):
        run_layer(text, arrays)


def test_float32_agrees_with_float64():
    x = RNG.normal(0, 2, (12, 4, 6))
    y = RNG.integers(1, 6, (4, 5)).astype(float)
    nets = []
    for dtype in ("float32", "float64"):
        net = layer_net(WARP, {"x": x.shape, "y": y.shape}, dtype=getattr(__import__("torch"), dtype))
        set_inputs(net, {"x": x, "y": y})
        net.forward()
        net.backward()
        nets.append(net)
    np.testing.assert_allclose(nets[0].blobs["loss"].data, nets[1].blobs["loss"].data, rtol=1e-5)
    np.testing.assert_allclose(nets[0].blobs["x"].diff, nets[1].blobs["x"].diff, atol=1e-5)


# ------------------------------------------------------------------------------ BVLC pull request 4681's CTCLoss
PR_CTC = 'type: "CTCLoss" bottom: "x" bottom: "i" bottom: "t" top: "loss"'


def pr_inputs(x: np.ndarray, starts: list[int], targets: list[list[float]]) -> dict[str, np.ndarray]:
    """Indicators (T, N) with item n's next sequence starting at ``starts[n]`` (T: none) and (T, N) targets."""
    steps, items = x.shape[0], x.shape[1]
    indicators = np.ones((steps, items))
    indicators[0] = 0
    target = -np.ones((steps, items))
    for n in range(items):
        indicators[starts[n] :, n] = 0
        target[: len(targets[n]), n] = targets[n]
    return {"x": x, "i": indicators, "t": target}


def test_pr_ctc_loss_blank_defaults_to_the_last_class_and_targets_are_not_shifted():
    x = RNG.normal(0, 1, (5, 2, 4))
    net = run_layer(PR_CTC, pr_inputs(x, [5, 3], [[0, 2], [1]]))
    costs = [ctc_cost(x[:5, 0], [0, 2], 3), ctc_cost(x[:3, 1], [1], 3)]
    np.testing.assert_allclose(net.blobs["loss"].data, np.mean(costs), rtol=1e-10)
    net = run_layer(PR_CTC + " ctc_loss_param { blank_index: 0 }", pr_inputs(x, [5, 3], [[3, 2], [1]]))
    costs = [ctc_cost(x[:5, 0], [3, 2], 0), ctc_cost(x[:3, 1], [1], 0)]
    np.testing.assert_allclose(net.blobs["loss"].data, np.mean(costs), rtol=1e-10)


def test_pr_ctc_loss_ends_targets_at_the_blank_and_collapses_repeats_when_asked():
    x = RNG.normal(0, 1, (4, 1, 3))
    net = run_layer(PR_CTC, pr_inputs(x, [4], [[1, 2, 5]]))  # 2 is the blank: the targets end at it
    np.testing.assert_allclose(net.blobs["loss"].data, ctc_cost(x[:, 0], [1], 2), rtol=1e-10)
    text = PR_CTC + " ctc_loss_param { preprocess_collapse_repeated: true }"
    net = run_layer(text, pr_inputs(x, [4], [[1, 1, 0]]))
    np.testing.assert_allclose(net.blobs["loss"].data, ctc_cost(x[:, 0], [1, 0], 2), rtol=1e-10)
    with pytest.raises(LayerError, match="item 0 has label 1 after an ending label"):
        run_layer(PR_CTC, pr_inputs(x, [4], [[2, 1]]))


def test_pr_ctc_loss_gradient_is_the_summed_costs_and_an_impossible_item_costs_infinity():
    x = RNG.normal(0, 1, (4, 2, 3))
    net = run_layer(PR_CTC + " loss_weight: 0.5", pr_inputs(x, [4, 4], [[1, 0], [0]]))
    net.backward()
    numeric = numeric_gradient(lambda v: ctc_cost(v[:, 0], [1, 0], 2) + ctc_cost(v[:, 1], [0], 2), x)
    np.testing.assert_allclose(net.blobs["x"].diff, 0.5 * numeric, atol=1e-7)
    # [0, 0] needs 3 steps (a blank between), item 1 has 2: the pull request adds an infinite cost and
    # back-propagates the softmax of its steps
    net = run_layer(PR_CTC, pr_inputs(x, [4, 2], [[1, 0], [0, 0]]))
    assert np.isinf(net.blobs["loss"].data)
    net.backward()
    softmax = np.exp(x[:2, 1]) / np.exp(x[:2, 1]).sum(1, keepdims=True)
    np.testing.assert_allclose(net.blobs["x"].diff[:2, 1], softmax, rtol=1e-10)
    assert not net.blobs["x"].diff[2:, 1].any()
    single = run_layer(PR_CTC, pr_inputs(x[:, :1], [4], [[1, 0]]))
    single.backward()
    np.testing.assert_allclose(net.blobs["x"].diff[:, :1], single.blobs["x"].diff, rtol=1e-10)


@pytest.mark.parametrize(
    ("param", "message"),
    [("output_delay: 1", "output_delay is not supported"), ("ctc_merge_repeated: false", "is not supported")],
)
def test_pr_ctc_loss_refuses_what_it_does_not_compute(param: str, message: str):
    x = RNG.normal(0, 1, (4, 1, 3))
    with pytest.raises(LayerError, match=message):
        run_layer(PR_CTC + f" ctc_loss_param {{ {param} }}", pr_inputs(x, [4], [[1]]))


# ------------------------------------------------------------------------------------------- CTCGreedyDecoder
def scores_for(paths: list[list[int]], classes: int) -> np.ndarray:
    """(T, N, C) scores whose best class at each step follows ``paths``."""
    x = RNG.uniform(0, 1, (len(paths[0]), len(paths), classes))
    for n, path in enumerate(paths):
        for t, c in enumerate(path):
            x[t, n, c] = 2.0
    return x


def test_decoder_merges_repeats_drops_blanks_and_pads_with_minus_one():
    x = scores_for([[1, 1, 0, 1, 2, 2], [0, 0, 0, 0, 0, 3]], 4)
    net = run_layer('type: "CTCGreedyDecoder" bottom: "x" top: "seq"', {"x": x}, caffe.TEST)
    np.testing.assert_array_equal(net.blobs["seq"].data.reshape(2, 6), [[1, 1, 2, -1, -1, -1], [3, -1, -1, -1, -1, -1]])
    net = run_layer(
        'type: "CTCGreedyDecoder" bottom: "x" top: "seq" '
        "ctc_decoder_param { ctc_merge_repeated: false blank_index: -1 }",
        {"x": x},
        caffe.TEST,
    )  # blank: the last class (3)
    np.testing.assert_array_equal(net.blobs["seq"].data.reshape(2, 6), [[1, 1, 0, 1, 2, 2], [0, 0, 0, 0, 0, -1]])


def test_decoder_accuracy_is_one_minus_the_mean_normalised_edit_distance_and_the_exact_fraction():
    x = scores_for([[1, 0, 2, 3], [2, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], 4)  # decodes 1 2 3 / 2 / 1 1 / -
    labels = np.array([[1, 2, 3, 0], [3, 2, -1, 5], [1, 0, 0, 0], [0, 0, 0, 0]], float)  # blanks skipped, -1 ends
    net = run_layer('type: "CTCGreedyDecoder" bottom: "x" bottom: "y" top: "acc"', {"x": x, "y": labels}, caffe.TEST)
    # distances: 0/3; [3, 2] vs [2]: 1/2; [1] vs [1, 1]: 1/2; both empty: 0 and not counted exact (the fork)
    np.testing.assert_allclose(net.blobs["acc"].data.reshape(2), [1 - (0 + 0.5 + 0.5 + 0) / 4, 1 / 4])


def test_edit_distance():
    from caffe.layers.ctc import edit_distance

    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 4]) == 2
    assert edit_distance([1, 2, 3, 4], [2, 1, 3, 5]) == 3
    assert edit_distance([7, 8], [7, 8]) == 0


# ------------------------------------------------------------------------------------------- Transpose, Reverse
def test_transpose_moves_every_axis():
    x = RNG.normal(0, 1, (2, 3, 1, 5))
    net = run_layer('type: "Transpose" bottom: "x" top: "y" transpose_param { dim: 3 dim: 0 dim: 2 dim: 1 }', {"x": x})
    np.testing.assert_array_equal(net.blobs["y"].data, x.transpose(3, 0, 2, 1))
    check_gradient(net, {"x": x})
    with pytest.raises(ShapeError, match="must name each of the bottom's 4 axes"):
        run_layer('type: "Transpose" bottom: "x" top: "y" transpose_param { dim: 3 dim: 0 dim: 1 }', {"x": x})


def test_reverse_flips_one_axis():
    x = RNG.normal(0, 1, (4, 2, 3))
    for axis in (0, 2):
        net = run_layer(f'type: "Reverse" bottom: "x" top: "y" reverse_param {{ axis: {axis} }}', {"x": x})
        np.testing.assert_array_equal(net.blobs["y"].data, np.flip(x, axis))
    check_gradient(net, {"x": x})
    with pytest.raises(ShapeError, match=r"reverse_param\.axis 3 is out of range"):
        run_layer('type: "Reverse" bottom: "x" top: "y" reverse_param { axis: 3 }', {"x": x})


@pytest.mark.parametrize("copy_remaining", [False, True])
def test_reverse_time_reverses_each_stream_within_its_length(copy_remaining: bool):
    x = RNG.normal(0, 1, (4, 3, 2))
    lengths = np.array([4.0, 2.0, 0.0])
    flag = str(copy_remaining).lower()
    text = f'type: "ReverseTime" bottom: "x" bottom: "n" top: "y" reverse_time_param {{ copy_remaining: {flag} }}'
    net = run_layer(text, {"x": x, "n": lengths})
    expected = np.zeros_like(x) if not copy_remaining else x.copy()
    expected[:, 0] = x[::-1, 0]
    expected[:2, 1] = x[1::-1, 1]
    np.testing.assert_array_equal(net.blobs["y"].data, expected)
    check_gradient(net, {"x": x, "n": lengths}, check_bottoms=["x"])
    with pytest.raises(LayerError, match="stream 0 has length 5"):
        run_layer(text, {"x": x, "n": np.array([5.0, 1.0, 1.0])})


# ------------------------------------------------------------------------------------------- Lstm (junhyukoh)
def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def fork_lstm(x, w_i, w_h, b, clip=None, h0=None, c0=None, top_diff=None, threshold=0.0):
    """The fork's forward and backward written out (gates i, f, o, g; cont from clip or t > 0)."""
    T, N, _ = x.shape
    H = w_h.shape[1]
    h0 = np.zeros((N, H)) if h0 is None else h0
    c0 = np.zeros((N, H)) if c0 is None else c0
    pre = x @ w_i.T + b
    gate, h, c = np.zeros((T, N, 4 * H)), np.zeros((T, N, H)), np.zeros((T, N, H))
    conts = np.zeros((T, N), bool)
    for t in range(T):
        hp, cp = (h[t - 1], c[t - 1]) if t else (h0, c0)
        cont = (clip[t] != 0) if clip is not None else np.full(N, t > 0)
        conts[t] = cont
        pre[t] += np.where(cont[:, None], hp @ w_h.T, 0)
        gate[t, :, :H] = sigmoid(pre[t, :, :H])
        gate[t, :, H : 2 * H] = np.where(cont[:, None], sigmoid(pre[t, :, H : 2 * H]), 0)
        gate[t, :, 2 * H : 3 * H] = sigmoid(pre[t, :, 2 * H : 3 * H])
        gate[t, :, 3 * H :] = np.tanh(pre[t, :, 3 * H :])
        i, f, o, g = np.split(gate[t], 4, axis=1)
        c[t] = f * cp + i * g
        h[t] = o * np.tanh(c[t])
    if top_diff is None:
        return h, None
    dh, dc = top_diff.copy(), np.zeros((T, N, H))
    dpre = np.zeros_like(gate)
    for t in reversed(range(T)):
        i, f, o, g = np.split(gate[t], 4, axis=1)
        cp = c[t - 1] if t else c0
        tc = np.tanh(c[t])
        dc[t] += dh[t] * o * (1 - tc * tc)
        if t:
            dc[t - 1] = np.where(conts[t][:, None], dc[t] * f, 0)
        df = np.where(conts[t][:, None], dc[t] * cp, 0)
        dpre[t] = np.concatenate(
            [dc[t] * g * i * (1 - i), df * f * (1 - f), dh[t] * tc * o * (1 - o), dc[t] * i * (1 - g * g)], axis=1
        )
        if threshold > 0:
            dpre[t] = np.clip(dpre[t], -threshold, threshold)
        if t:
            dh[t - 1] += np.where(conts[t][:, None], dpre[t] @ w_h, 0)
    dw_i = np.einsum("tng,tni->gi", dpre, x)
    hprev = np.concatenate([h0[None], h[:-1]])
    dw_h = np.einsum("tng,tnh->gh", dpre, hprev)  # every step's h_{t-1}, kept or not (the fork's gemm)
    return h, (dpre @ w_i, dw_i, dw_h, dpre.sum((0, 1)))


LSTM = (
    'type: "Lstm" bottom: "x" top: "h" lstm_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } '
    'bias_filler { type: "uniform" min: -0.5 max: 0.5 } }'
)


@pytest.mark.parametrize("threshold", [0.0, 0.002])
def test_lstm_forward_and_backward_follow_the_fork(threshold: float):
    x = RNG.normal(0, 1, (5, 2, 4))
    text = LSTM.replace("num_output: 3", f"num_output: 3 clipping_threshold: {threshold}")
    net = run_layer(text, {"x": x})
    w_i, w_h, b = (blob.data.copy() for blob in net.params["layer"])
    assert (w_i.shape, w_h.shape, b.shape) == ((12, 4), (12, 3), (12,))
    top_diff = RNG.normal(0, 1, (5, 2, 3))
    h, grads = fork_lstm(x, w_i, w_h, b, top_diff=top_diff, threshold=float(np.float32(threshold)))  # a proto float
    np.testing.assert_allclose(net.blobs["h"].data, h, rtol=1e-10, atol=1e-12)
    net.clear_param_diffs()
    net.blobs["h"].diff[...] = top_diff
    net._backward(1, 1)
    np.testing.assert_allclose(net.blobs["x"].diff, grads[0], rtol=1e-9, atol=1e-12)
    for blob, expected in zip(net.params["layer"], grads[1:], strict=True):
        np.testing.assert_allclose(blob.diff, expected, rtol=1e-9, atol=1e-12)
    if threshold == 0:
        check_gradient(net, {"x": x})


def test_lstm_with_continuation_carries_the_state_and_follows_the_forks_w_h_rule():
    x = RNG.normal(0, 1, (6, 1, 4))
    clip = np.array([[0.0], [1], [1], [0], [1], [1]])
    text = LSTM.replace('bottom: "x"', 'bottom: "x" bottom: "clip"')
    net = layer_net(text, {"x": (3, 1, 4), "clip": (3, 1)}, phase=caffe.TRAIN)
    w_i, w_h, b = (blob.data.copy() for blob in net.params["layer"])
    whole, _ = fork_lstm(x, w_i, w_h, b, clip=clip)
    set_inputs(net, {"x": x[:3], "clip": clip[:3]})
    net.forward()
    np.testing.assert_allclose(net.blobs["h"].data, whole[:3], rtol=1e-10)
    h_T, c_T = net.blobs["h"].data[-1].copy(), None
    set_inputs(net, {"x": x[3:], "clip": np.array([[1.0], [1], [1]])})  # continues the first pass
    net.forward()
    cont_whole, _ = fork_lstm(x, w_i, w_h, b, clip=np.array([[0.0], [1], [1], [1], [1], [1]]))
    np.testing.assert_allclose(net.blobs["h"].data, cont_whole[3:], rtol=1e-10)
    # a restart inside the pass: W_h's gradient still counts h_{t-1} there (the fork's), h gets none through it
    set_inputs(net, {"x": x[3:], "clip": clip[3:]})
    net.layers[1].reset()
    net.forward()
    top_diff = RNG.normal(0, 1, (3, 1, 3))
    net.clear_param_diffs()
    net.blobs["h"].diff[...] = top_diff
    net._backward(1, 1)
    h, grads = fork_lstm(x[3:], w_i, w_h, b, clip=clip[3:], top_diff=top_diff)
    np.testing.assert_allclose(net.blobs["h"].data, h, rtol=1e-10)
    np.testing.assert_allclose(net.blobs["x"].diff, grads[0], rtol=1e-9, atol=1e-12)
    for blob, expected in zip(net.params["layer"], grads[1:], strict=True):
        np.testing.assert_allclose(blob.diff, expected, rtol=1e-9, atol=1e-12)
    assert h_T is not None and c_T is None


def test_lstm_refuses_several_streams_with_continuation_and_a_changed_input_size():
    text = LSTM.replace('bottom: "x"', 'bottom: "x" bottom: "clip"')
    with pytest.raises(ShapeError, match="single stream"):
        layer_net(text, {"x": (3, 2, 4), "clip": (3, 2)})
    net = layer_net(LSTM, {"x": (3, 2, 4)})
    with pytest.raises(ShapeError, match=r"must be \(T, N, 4\)"):
        set_inputs(net, {"x": np.zeros((3, 2, 5))})
    with pytest.raises(LayerError, match="num_output must be positive"):
        layer_net('type: "Lstm" bottom: "x" top: "h"', {"x": (3, 2, 4)})


# ------------------------------------------------------------------------------------------- a small CRNN learns
def test_a_small_crnn_learns_to_read(crnn_weights):
    net = caffe.Net(str(crnn_weights / "crnn.prototxt"), caffe.TEST, weights=str(crnn_weights / "crnn.caffemodel"))
    images, labels = text_strips(np.random.default_rng(1), 16)
    net.blobs["data"].data[...] = images
    net.blobs["label"].data[...] = labels
    net.forward()
    edit_accuracy, exact = net.blobs["acc"].data.reshape(2)
    assert float(net.blobs["ctc"].data) < 0.5, float(net.blobs["ctc"].data)
    assert edit_accuracy > 0.9 and exact > 0.7, (edit_accuracy, exact)
