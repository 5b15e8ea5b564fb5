"""jolibrain/caffe's (DeepDetect's) sequence layers: CtcLoss, LabelsequenceAccuracy, ContinuationIndicator.

Truth: CTC costs summed over every path by brute force and their finite differences (tests/test_layers_ctc.py),
the fork's accuracy rule worked by hand, and a CRNN written in the fork's layout (Permute to time-major,
ContinuationIndicator feeding BVLC's LSTM, InnerProduct on axis 2, CtcLoss) that learns.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import run_layer
from test_layers_ctc import ctc_cost, numeric_gradient, scores_for, summed_cost

import caffe
from caffe.errors import LayerError, ShapeError
from caffe.proto import caffe_pb2 as pb

RNG = np.random.default_rng(11)


def test_fields_leave_the_forks_clashing_numbers_to_caffe_ocr():
    fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    assert fields["continuation_indicator_param"].number == 3158  # the fork's 158 is caffe_ocr's ctc_decoder_param
    assert fields["labelsequence_accuracy_param"].number == 3159  # and 159 its ctc_loss_param
    ctc = pb.CTCLossParameter.DESCRIPTOR.fields_by_name
    assert {name: ctc[name].number for name in ("alphabet_size", "time_step", "blank_label")} == {
        "alphabet_size": 11,
        "time_step": 13,
        "blank_label": 14,
    }


def ctc_layer(classes: int, steps: int, blank: int) -> str:
    return (
        'type: "CtcLoss" bottom: "x" bottom: "y" top: "loss" '
        f"ctc_loss_param {{ alphabet_size: {classes} time_step: {steps} blank_label: {blank} }}"
    )


def test_ctc_loss_is_the_mean_cost_with_the_blank_label_as_padding():
    x = RNG.normal(0, 1.5, (5, 3, 4))
    y = np.array([[1, 3, 3, 3], [0, 3, 0, 3], [2, 2, 1, 3]], float)  # 3 is the blank: padding, anywhere
    net = run_layer(ctc_layer(4, 5, 3), {"x": x, "y": y})
    labels = [[1], [0, 0], [2, 2, 1]]
    costs = [ctc_cost(x[:, n], labels[n], 3) for n in range(3)]
    np.testing.assert_allclose(net.blobs["loss"].data, np.mean(costs), rtol=1e-10)


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_ctc_loss_reads_time_step_steps_and_its_gradient_is_the_summed_costs(weight: float):
    """time_step 3 of T = 4: the fork's warp-ctc reads the first 3 steps (time-major) and writes no gradient to
    the last one; the gradient is that of the summed costs, times the loss weight (as WarpCTCLoss)."""
    x = RNG.normal(0, 1, (4, 2, 3))
    y = np.array([[1, 2], [2, 0]], float)
    net = run_layer(ctc_layer(3, 3, 0) + f" loss_weight: {weight}", {"x": x, "y": y})
    labels = [[1, 2], [2]]
    np.testing.assert_allclose(net.blobs["loss"].data, summed_cost(x, labels, [3, 3]) / 2, rtol=1e-10)
    net.backward()
    numeric = numeric_gradient(lambda v: summed_cost(v, labels, [3, 3]), x)
    np.testing.assert_allclose(net.blobs["x"].diff, weight * numeric, atol=1e-7)
    assert not net.blobs["x"].diff[3].any()


@pytest.mark.parametrize(
    ("text", "y", "error", "message"),
    [
        (ctc_layer(4, 4, 0), [[1, 2], [1, 0]], LayerError, "alphabet_size 4 must be the 3 classes"),
        (ctc_layer(3, 0, 0), [[1, 2], [1, 0]], LayerError, "time_step must be set"),
        (ctc_layer(3, 5, 0), [[1, 2], [1, 0]], ShapeError, "time_step 5 is more than the bottom's 4 steps"),
        (ctc_layer(3, 4, 3), [[1, 2], [1, 0]], LayerError, "blank_index 3"),
        (ctc_layer(3, 4, 0), [[0, 0], [0, 0]], LayerError, "every label is the blank"),
        (ctc_layer(3, 4, 0), [[1, -1], [1, 0]], LayerError, "item 0 has label -1"),
        (ctc_layer(3, 4, 0), [[1, 3], [1, 0]], LayerError, "item 0 has label 3"),
        (ctc_layer(3, 4, 0), [[1, 2], [1, 0], [1, 1]], ShapeError, r"bottom 1 must be \(N, L\)"),
    ],
)
def test_ctc_loss_refuses_what_the_fork_checks(text: str, y: list, error: type, message: str):
    with pytest.raises(error, match=message):
        run_layer(text, {"x": RNG.normal(0, 1, (4, 2, 3)), "y": np.array(y, float)})


def test_labelsequence_accuracy_is_the_fraction_of_exact_best_paths():
    blank = 4
    paths = [
        [0, 0, 4, 1, 1],  # -> 0 1: exact
        [0, 4, 0, 4, 2],  # -> 0 0 2 (the blank splits the repeat): labels 0 2, not exact
        [3, 3, 3, 3, 3],  # -> 3: exact (labels padded with blanks anywhere)
        [4, 4, 4, 4, 4],  # -> nothing: labels 1, not exact
    ]
    labels = np.array([[0, 1, 4], [0, 2, 4], [4, 3, 4], [1, 4, 4]], float)
    net = run_layer(
        'type: "LabelsequenceAccuracy" bottom: "x" bottom: "y" top: "acc" '
        f"labelsequence_accuracy_param {{ blank_label: {blank} }}",
        {"x": scores_for(paths, 5).transpose(1, 0, 2), "y": labels},  # batch-major
        phase=caffe.TEST,
    )
    assert net.blobs["acc"].data.shape == () and float(net.blobs["acc"].data) == 0.5


@pytest.mark.parametrize(
    ("param", "bottom", "shape"),
    [("time_step: 6 axis: 1", (6, 3, 8), (6, 3)), ("time_step: 4 batch_size: 2", (9, 5), (4, 2))],
    ids=["axis", "batch_size"],
)
def test_continuation_indicator_starts_each_sequence_at_step_0(param: str, bottom: tuple, shape: tuple):
    net = run_layer(
        f'type: "ContinuationIndicator" bottom: "x" top: "c" continuation_indicator_param {{ {param} }}',
        {"x": RNG.normal(0, 1, bottom)},
    )
    expected = np.ones(shape)
    expected[0] = 0
    np.testing.assert_array_equal(net.blobs["c"].data, expected)


def test_continuation_indicator_without_a_bottom_takes_batch_size():
    """The fork's first version (its captcha example's deploy net has no bottom on the layer)."""
    net = run_layer(
        'type: "ContinuationIndicator" top: "c" continuation_indicator_param { time_step: 3 batch_size: 2 }', {}
    )
    np.testing.assert_array_equal(net.blobs["c"].data, [[0, 0], [1, 1], [1, 1]])
    with pytest.raises(LayerError, match=r"without a bottom, continuation_indicator_param\.batch_size must be set"):
        run_layer('type: "ContinuationIndicator" top: "c" continuation_indicator_param { time_step: 3 }', {})


def test_continuation_indicator_needs_a_time_step():
    with pytest.raises(LayerError, match="time_step must be set"):
        run_layer('type: "ContinuationIndicator" bottom: "x" top: "c"', {"x": np.ones((2, 3))})


# ------------------------------------------------------------------------------- a CRNN in the fork's layout
def crnn(steps: int, classes: int, batch: int, hidden: int = 24) -> str:
    """Input (N, 1, 8, T) -> convolution -> (N, C, T) -> time-major -> ContinuationIndicator + 2 LSTMs -> scores
    (T, N, classes) -> CtcLoss; LabelsequenceAccuracy on the batch-major scores. Blank: the last class."""
    blank = classes - 1
    return f"""
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: {batch} dim: 1 dim: 8 dim: {steps} }} shape {{ dim: {batch} dim: 3 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 16 kernel_h: 8 kernel_w: 3 pad_w: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "reshape" type: "Reshape" bottom: "conv" top: "reshape"
  reshape_param {{ shape {{ dim: 0 dim: 16 dim: {steps} }} }} }}
layer {{ name: "permuted" type: "Permute" bottom: "reshape" top: "permuted"
  permute_param {{ order: 2 order: 0 order: 1 }} }}
layer {{ name: "indicator" type: "ContinuationIndicator" bottom: "permuted" top: "indicator"
  continuation_indicator_param {{ time_step: {steps} axis: 1 }} }}
layer {{ name: "lstm1" type: "LSTM" bottom: "permuted" bottom: "indicator" top: "lstm1"
  recurrent_param {{ num_output: {hidden} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "lstm2" type: "LSTM" bottom: "lstm1" bottom: "indicator" top: "lstm2"
  recurrent_param {{ num_output: {hidden} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "lstm2" top: "fc"
  inner_product_param {{ num_output: {classes} axis: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "ctc" type: "CtcLoss" bottom: "fc" bottom: "label" top: "ctc_loss"
  ctc_loss_param {{ alphabet_size: {classes} time_step: {steps} blank_label: {blank} }} }}
layer {{ name: "permute_fc" type: "Permute" bottom: "fc" top: "batch_major"
  permute_param {{ order: 1 order: 0 order: 2 }} }}
layer {{ name: "accuracy" type: "LabelsequenceAccuracy" bottom: "batch_major" bottom: "label" top: "accuracy"
  labelsequence_accuracy_param {{ blank_label: {blank} }} }}
"""


def bars(labels: np.ndarray, steps: int) -> np.ndarray:
    """Images (N, 1, 8, steps) that draw each label as a bar of height label + 1 in its own third of the width."""
    images = np.zeros((len(labels), 1, 8, steps))
    width = steps // 3
    for n, row in enumerate(labels):
        for k, label in enumerate(row):
            images[n, 0, 8 - 2 * (int(label) + 1) :, k * width + 1 : (k + 1) * width - 1] = 1.0
    return images


def test_a_crnn_in_the_forks_layout_learns_to_read(tmp_path):
    steps, classes, batch = 12, 4, 16  # classes 0-2 and the blank 3
    (tmp_path / "net.prototxt").write_text(crnn(steps, classes, batch))
    param = pb.SolverParameter(net=str(tmp_path / "net.prototxt"), base_lr=0.01, lr_policy="fixed", type="Adam")
    param.momentum, param.momentum2, param.max_iter, param.random_seed = 0.9, 0.999, 1000, 3
    solver = caffe.get_solver(param)
    net = solver.net
    rng = np.random.default_rng(3)
    losses, accuracies = [], []
    for _ in range(150):
        labels = rng.integers(0, 3, (batch, 3)).astype(float)
        net.blobs["data"].data[...] = bars(labels, steps)
        net.blobs["label"].data[...] = labels
        solver.step(1)
        losses.append(float(net.blobs["ctc_loss"].data))
        accuracies.append(float(net.blobs["accuracy"].data))
    assert net.blobs["indicator"].data.shape == (steps, batch)
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])
    assert np.mean(accuracies[-10:]) > 0.9 and np.mean(accuracies[:10]) < 0.2
