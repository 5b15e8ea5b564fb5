"""Solvers: Caffe's update rules, lr policies, the training loop's logging and options, pycaffe's API.

The update rules are checked the way Caffe's own test_gradient_based_solver.cpp does: a least-squares
problem (HDF5Data -> InnerProduct -> EuclideanLoss), whose gradient is known in closed form, is
trained a few steps, and every step's weights and history blobs are compared with an independent
float64 NumPy implementation of Caffe's equations (sgd_solver.cpp, nesterov_solver.cpp, ...).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe.proto import caffe_pb2 as pb


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Solve() snapshots after training (snapshot_after_train), without a prefix into the CWD."""
    monkeypatch.chdir(tmp_path)


# ----------------------------------------------------------------------------------------------
# the least-squares problem

N_ROWS, C, H, W = 12, 3, 2, 2  # 12 samples of 12 features; batch 4 -> 3 batches per epoch
D = C * H * W
LR_MULT = (1.5, 2.0)  # weights, bias
DECAY_MULT = (0.5, 0.0)


def write_h5_data(folder: Path, rows: int = N_ROWS, seed: int = 0, shape: tuple[int, ...] = (C, H, W)) -> Path:
    """An HDF5Data source (list file) with float32 'data' (rows x shape) and 'targets' (rows x 1)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(rows, *shape)).astype(np.float32)
    targets = rng.normal(size=(rows, 1)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "data.h5", "w") as f:
        f["data"], f["targets"] = data, targets
    listing = folder / "list.txt"
    listing.write_text(f"{folder / 'data.h5'}\n")
    return listing


def read_h5_data(listing: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(listing.read_text().strip(), "r") as f:
        return np.asarray(f["data"], np.float64).reshape(len(f["data"]), -1), np.asarray(f["targets"], np.float64)


def least_squares_net(listing: Path, batch: int = 4) -> str:
    return f"""
    name: "LeastSquares"
    layer {{ name: "data" type: "HDF5Data" top: "data" top: "targets"
            hdf5_data_param {{ source: "{listing}" batch_size: {batch} }} }}
    layer {{ name: "innerprod" type: "InnerProduct" bottom: "data" top: "innerprod"
            param {{ lr_mult: {LR_MULT[0]} decay_mult: {DECAY_MULT[0]} }}
            param {{ lr_mult: {LR_MULT[1]} decay_mult: {DECAY_MULT[1]} }}
            inner_product_param {{ num_output: 1 weight_filler {{ type: "gaussian" std: 1 }}
                                   bias_filler {{ type: "gaussian" std: 1 }} }} }}
    layer {{ name: "loss" type: "EuclideanLoss" bottom: "innerprod" bottom: "targets" top: "loss" }}
    """


def make_solver(solver_text: str, net_text: str) -> caffe.Solver:
    param = text_format.Parse(solver_text, pb.SolverParameter())
    text_format.Parse(net_text, param.net_param)
    return caffe.get_solver(param)


# ----------------------------------------------------------------------------------------------
# the reference: Caffe's equations in float64 NumPy


def ref_rate(p: pb.SolverParameter, it: int, current_step: list[int]) -> float:
    """GetLearningRate (sgd_solver.cpp); ``current_step`` is a one-element list (multistep state)."""
    policy = p.lr_policy
    if policy == "fixed":
        return p.base_lr
    if policy == "step":
        return p.base_lr * p.gamma ** (it // p.stepsize)
    if policy == "exp":
        return p.base_lr * p.gamma**it
    if policy == "inv":
        return p.base_lr * (1.0 + p.gamma * it) ** (-p.power)
    if policy == "multistep":
        if current_step[0] < len(p.stepvalue) and it >= p.stepvalue[current_step[0]]:
            current_step[0] += 1
        return p.base_lr * p.gamma ** current_step[0]
    if policy == "poly":
        return p.base_lr * (1.0 - it / p.max_iter) ** p.power
    if policy == "sigmoid":
        return p.base_lr / (1.0 + math.exp(-p.gamma * (it - p.stepsize)))
    raise AssertionError(policy)


def least_squares_grads(X: np.ndarray, T: np.ndarray, w: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Gradient of E = 1/(2N) ||X w^T + b - t||^2 (EuclideanLoss) for w (1 x D) and b (1,)."""
    residual = X @ w.T + b - T  # N x 1
    return [residual.T @ X / len(X), residual.sum(0) / len(X)]


def least_squares_loss(X: np.ndarray, T: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    return float(((X @ w.T + b - T) ** 2).sum() / (2 * len(X)))


def reference_training(
    p: pb.SolverParameter, X: np.ndarray, T: np.ndarray, params: list[np.ndarray], steps: int, batch: int = 4
) -> list[tuple[list[np.ndarray], list[np.ndarray], float]]:
    """Caffe's Step/ApplyUpdate, update by update: returns (params, history, loss) after each.

    ``batch`` is the data layer's batch; an iteration reads ``iter_size`` of them in turn, sums their
    gradients, clips the sum (ClipGradients), then divides by iter_size (Normalize), regularizes and
    computes the solver type's update (ComputeUpdateValue); the loss is the iteration's mean loss.
    """
    params = [x.astype(np.float64).copy() for x in params]
    n = len(params)
    history = [np.zeros_like(x) for x in params] * (2 if p.type in ("AdaDelta", "Adam") else 1)
    history = [h.copy() for h in history]
    current_step = [0]
    out = []
    rows, cursor = len(X), 0
    for it in range(steps):
        grads = [np.zeros_like(x) for x in params]
        loss = 0.0
        for _ in range(p.iter_size):
            idx = [(cursor + k) % rows for k in range(batch)]
            cursor += batch
            grads = [a + g for a, g in zip(grads, least_squares_grads(X[idx], T[idx], *params))]
            loss += least_squares_loss(X[idx], T[idx], *params)
        rate = ref_rate(p, it, current_step)
        if p.clip_gradients >= 0:
            norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
            if norm > p.clip_gradients:
                grads = [g * (p.clip_gradients / norm) for g in grads]
        for i in range(n):
            w, g = params[i], grads[i] / p.iter_size
            decay = p.weight_decay * DECAY_MULT[i]
            g = g + decay * (w if p.regularization_type == "L2" else np.sign(w))
            r = rate * LR_MULT[i]
            h = history[i]
            if p.type == "SGD":
                history[i] = p.momentum * h + r * g
                update = history[i]
            elif p.type == "Nesterov":
                history[i] = p.momentum * h + r * g
                update = (1 + p.momentum) * history[i] - p.momentum * h
            elif p.type == "AdaGrad":
                history[i] = h + g * g
                update = r * g / (np.sqrt(history[i]) + p.delta)
            elif p.type == "RMSProp":
                history[i] = p.rms_decay * h + (1 - p.rms_decay) * g * g
                update = r * g / (np.sqrt(history[i]) + p.delta)
            elif p.type == "AdaDelta":
                history[i] = p.momentum * h + (1 - p.momentum) * g * g
                u = g * np.sqrt((history[n + i] + p.delta) / (history[i] + p.delta))
                history[n + i] = p.momentum * history[n + i] + (1 - p.momentum) * u * u
                update = r * u
            elif p.type == "Adam":
                t = it + 1
                history[i] = p.momentum * h + (1 - p.momentum) * g
                history[n + i] = p.momentum2 * history[n + i] + (1 - p.momentum2) * g * g
                correction = math.sqrt(1 - p.momentum2**t) / (1 - p.momentum**t)
                update = r * correction * history[i] / (np.sqrt(history[n + i]) + p.delta)
            else:
                raise AssertionError(p.type)
            params[i] = w - update
        out.append(([x.copy() for x in params], [h.copy() for h in history], loss / p.iter_size))
    return out


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str, rtol: float = 1e-6, scale: float = 0.0) -> None:
    """Relative error against the quantity's magnitude (``scale``: e.g. its largest value so far, so
    that a value passing near zero is not held to float32 digits it cannot have)."""
    actual, expected = np.asarray(actual, np.float64).reshape(-1), np.asarray(expected, np.float64).reshape(-1)
    scale = max(float(np.abs(expected).max()), scale, 1e-30)
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}\n actual   {actual}\n expected {expected}"


SOLVER_SETTINGS = {
    "SGD": "momentum: 0.9",
    "Nesterov": "momentum: 0.9",
    "AdaGrad": "delta: 1e-6",
    "RMSProp": "rms_decay: 0.95 delta: 1e-6",
    "AdaDelta": "momentum: 0.95 delta: 1e-6",
    "Adam": "momentum: 0.9 momentum2: 0.999 delta: 1e-8",
}
POLICIES = {
    "step": "lr_policy: 'step' stepsize: 2 gamma: 0.5",
    "inv": "lr_policy: 'inv' gamma: 0.5 power: 0.75",
    "multistep": "lr_policy: 'multistep' stepvalue: 1 stepvalue: 3 stepvalue: 4 gamma: 0.3",
}
STEPS = 6


def run_and_compare(tmp_path: Path, solver_text: str, steps: int = STEPS, batch: int = 4) -> caffe.Solver:
    listing = write_h5_data(tmp_path)
    solver = make_solver(solver_text, least_squares_net(listing, batch))
    X, T = read_h5_data(listing)
    start = [b.data.copy() for b in solver.net.params["innerprod"]]
    assert start[0].shape == (1, D) and start[1].shape == (1,)
    expected = reference_training(solver.param, X, T, start, steps, batch)
    # each array's magnitude over the run (from the start)
    p_scale = [max(np.abs(a).max() for a in [start[i]] + [e[0][i] for e in expected]) for i in range(2)]
    h_scale = [max(np.abs(e[1][i]).max() for e in expected) for i in range(len(expected[0][1]))]
    for k in range(steps):
        solver.step(1)
        assert solver.iter == k + 1
        exp_params, exp_history, _ = expected[k]
        for i, (blob, want) in enumerate(zip(solver.net.params["innerprod"], exp_params)):
            assert_close(blob.data, want, f"iteration {k + 1}, param {i}", scale=p_scale[i])
        assert len(solver.history) == len(exp_history)
        for i, (blob, want) in enumerate(zip(solver.history, exp_history)):
            assert_close(blob.data, want, f"iteration {k + 1}, history {i}", scale=h_scale[i])
    return solver


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("kind", sorted(SOLVER_SETTINGS))
def test_update_rule_matches_caffe_equations(tmp_path: Path, kind: str, policy: str):
    base_lr = 0.5 if kind == "AdaDelta" else 0.1
    run_and_compare(
        tmp_path,
        f"type: '{kind}' base_lr: {base_lr} weight_decay: 0.01 max_iter: 100 {POLICIES[policy]} "
        f"{SOLVER_SETTINGS[kind]}",
    )


def test_l1_regularization_adds_decay_times_sign(tmp_path: Path):
    run_and_compare(
        tmp_path,
        "type: 'SGD' base_lr: 0.1 momentum: 0.9 weight_decay: 0.05 regularization_type: 'L1' " + POLICIES["step"],
    )


def test_unknown_regularization_type_is_refused(tmp_path: Path):
    listing = write_h5_data(tmp_path)
    solver = make_solver(
        "base_lr: 0.1 lr_policy: 'fixed' weight_decay: 0.05 regularization_type: 'L3'", least_squares_net(listing)
    )
    with pytest.raises(caffe.SolverError, match="regularization_type 'L3'"):
        solver.step(1)


def test_clip_gradients_scales_the_global_l2_norm(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver = run_and_compare(
            tmp_path, "type: 'SGD' base_lr: 0.1 momentum: 0.9 clip_gradients: 0.05 " + POLICIES["inv"]
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Gradient clipping")]
    assert len(lines) == STEPS  # the gradient is far above 0.05 at every step
    m = re.fullmatch(
        r"Gradient clipping: scaling down gradients \(L2 norm (\S+) > 0\.05\) by scale factor (\S+)", lines[0]
    )
    assert m, lines[0]
    assert float(m[2]) == pytest.approx(0.05 / float(m[1]), rel=1e-5)
    assert solver.param.clip_gradients == pytest.approx(0.05)


def test_clip_gradients_off_by_default_and_above_the_norm(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="caffe"):
        run_and_compare(tmp_path, "type: 'SGD' base_lr: 0.1 momentum: 0.9 clip_gradients: 1e6 " + POLICIES["step"])
        run_and_compare(tmp_path / "b", "type: 'SGD' base_lr: 0.1 momentum: 0.9 " + POLICIES["step"])
    assert "Gradient clipping" not in caplog.text


def test_iter_size_accumulates_clips_the_sum_then_normalizes(tmp_path: Path):
    """iter_size 2 of batch 2: ClipGradients sees the summed diff, Normalize divides it afterwards."""
    run_and_compare(
        tmp_path,
        "type: 'SGD' base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 iter_size: 2 "
        "clip_gradients: 0.3 " + POLICIES["step"],
        batch=2,
    )


def test_iter_size_2_of_batch_32_equals_batch_64(tmp_path: Path):
    listing = write_h5_data(tmp_path, rows=256)
    weights = []
    for batch, iter_size in ((64, 1), (32, 2), (32, 1)):
        caffe.set_random_seed(1701)
        solver = make_solver(
            f"type: 'Nesterov' base_lr: 0.05 momentum: 0.9 weight_decay: 0.01 iter_size: {iter_size} "
            + POLICIES["step"],
            least_squares_net(listing, batch),
        )
        solver.step(5)
        weights.append([b.data.copy() for b in solver.net.learnable_params])
    for a, b in zip(weights[0], weights[1]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    # while half the data per update does train differently
    assert not all(np.allclose(a, b, rtol=1e-3) for a, b in zip(weights[0], weights[2]))


def test_iter_size_must_be_positive(tmp_path: Path):
    with pytest.raises(caffe.SolverError, match="iter_size"):
        make_solver("base_lr: 0.1 iter_size: 0", least_squares_net(write_h5_data(tmp_path)))


# ----------------------------------------------------------------------------------------------
# learning rate policies


def tiny_solver(settings: str = "") -> caffe.Solver:
    """A solver over DummyData -> InnerProduct -> EuclideanLoss (no files)."""
    net = """
    name: "Tiny"
    layer { name: "data" type: "DummyData" top: "data" top: "target"
            dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 }
                               data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 1 weight_filler { type: "gaussian" } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
    """
    return make_solver(settings, net)


def rate_at(solver: caffe.Solver, it: int) -> float:
    solver.iter = it
    return solver.learning_rate()


def test_lenet_inv_policy_prints_caffes_numbers(caplog: pytest.LogCaptureFixture):
    solver = tiny_solver("base_lr: 0.01 lr_policy: 'inv' gamma: 0.0001 power: 0.75 momentum: 0.9 display: 100")
    assert f"{rate_at(solver, 100):g}" == "0.00992565"
    assert f"{rate_at(solver, 10000):g}" == "0.00594604"
    assert rate_at(solver, 0) == pytest.approx(0.01, rel=1e-7)
    solver.iter = 100
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.step(1)
    assert "Iteration 100, lr = 0.00992565" in [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(
    ("settings", "formula"),
    [
        ("lr_policy: 'fixed'", lambda it: 0.1),
        ("lr_policy: 'step' gamma: 0.1 stepsize: 3", lambda it: 0.1 * 0.1 ** (it // 3)),
        ("lr_policy: 'exp' gamma: 0.9", lambda it: 0.1 * 0.9**it),
        ("lr_policy: 'inv' gamma: 0.01 power: 0.5", lambda it: 0.1 * (1 + 0.01 * it) ** -0.5),
        ("lr_policy: 'poly' power: 2", lambda it: 0.1 * (1 - it / 20) ** 2),
        ("lr_policy: 'poly' power: 1", lambda it: 0.1 * (1 - it / 20)),
        ("lr_policy: 'sigmoid' gamma: 0.5 stepsize: 8", lambda it: 0.1 / (1 + math.exp(-0.5 * (it - 8)))),
    ],
    ids=["fixed", "step", "exp", "inv", "poly2", "poly1", "sigmoid"],
)
def test_lr_policy_formula(settings: str, formula):
    solver = tiny_solver(f"base_lr: 0.1 max_iter: 20 {settings}")
    for it in range(20):
        assert rate_at(solver, it) == pytest.approx(formula(it), rel=1e-6, abs=1e-12), it


def test_sigmoid_far_before_its_step_is_zero_not_an_overflow():
    """1 / (1 + exp(1000)): C++ gives 0 (exp overflows to inf)."""
    solver = tiny_solver("base_lr: 0.1 lr_policy: 'sigmoid' gamma: 0.01 stepsize: 100000")
    assert rate_at(solver, 0) == 0.0
    assert rate_at(solver, 100000) == pytest.approx(0.05, rel=1e-6)


def test_step_policy_sets_current_step():
    solver = tiny_solver("base_lr: 0.1 lr_policy: 'step' gamma: 0.5 stepsize: 4")
    for it in range(13):
        rate_at(solver, it)
        assert solver.current_step == it // 4


def test_multistep_advances_one_step_per_call_and_logs(caplog: pytest.LogCaptureFixture):
    solver = tiny_solver("base_lr: 1 lr_policy: 'multistep' gamma: 0.1 stepvalue: 3 stepvalue: 5 stepvalue: 6")
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.step(8)
    status = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MultiStep")]
    assert status == [
        "MultiStep Status: Iteration 3, step = 1",
        "MultiStep Status: Iteration 5, step = 2",
        "MultiStep Status: Iteration 6, step = 3",
    ]
    assert solver.current_step == 3
    assert solver.learning_rate() == pytest.approx(1e-3, rel=1e-6)
    # Caffe's multistep catches up one stepvalue per call (a solver moved past several at once)
    fresh = tiny_solver("base_lr: 1 lr_policy: 'multistep' gamma: 0.1 stepvalue: 3 stepvalue: 5")
    assert [rate_at(fresh, 10) for _ in range(3)] == pytest.approx([0.1, 0.01, 0.01], rel=1e-6)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("lr_policy: 'cosine'", "unknown lr_policy 'cosine'"),
        ("", "unknown lr_policy ''"),  # lr_policy has no default in caffe.proto
        ("lr_policy: 'step' gamma: 0.1", "'step' needs a positive stepsize"),
        ("lr_policy: 'sigmoid' gamma: 0.1", "'sigmoid' needs a positive stepsize"),
        # sgd_solver.cpp: CHECK_GE(gamma, 0) for step, exp, inv, multistep and sigmoid
        ("lr_policy: 'step' gamma: -0.1 stepsize: 2", "lr_policy 'step' needs gamma >= 0, got -0.1"),
        ("lr_policy: 'exp' gamma: -0.1", "needs gamma >= 0"),
        ("lr_policy: 'inv' gamma: -0.1 power: 1", "needs gamma >= 0"),
        ("lr_policy: 'multistep' gamma: -0.1 stepvalue: 1", "needs gamma >= 0"),
    ],
)
def test_bad_lr_policy_is_a_solver_error(settings: str, message: str):
    solver = tiny_solver(f"base_lr: 0.1 {settings}")
    with pytest.raises(caffe.SolverError, match=re.escape(message)) as info:
        solver.step(1)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# the training loop: display, average_loss, testing, seeds

FLOAT = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)"


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "caffe"]


def test_display_lines_and_average_loss(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Caffe's log lines, with the displayed loss smoothed over the last ``average_loss`` iterations."""
    listing = write_h5_data(tmp_path)
    solver = make_solver(
        "type: 'SGD' base_lr: 0.1 momentum: 0.9 display: 1 average_loss: 3 max_iter: 6 snapshot_after_train: false "
        + POLICIES["step"],
        least_squares_net(listing),
    )
    X, T = read_h5_data(listing)
    start = [b.data.copy() for b in solver.net.params["innerprod"]]
    ref = reference_training(solver.param, X, T, start, 7)
    losses = [r[2] for r in ref]  # loss of iteration k, computed with the weights before update k
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.solve()
    lines = messages(caplog)
    display = [
        re.fullmatch(rf"Iteration (\d+) \(({FLOAT}) iter/s, ({FLOAT})s/1 iters\), loss = ({FLOAT})", m) for m in lines
    ]
    display = [m for m in display if m]
    assert [int(m[1]) for m in display] == list(range(6))
    outputs = [re.fullmatch(rf"    Train net output #0: loss = ({FLOAT}) \(\* 1 = ({FLOAT}) loss\)", m) for m in lines]
    outputs = [m for m in outputs if m]
    assert len(outputs) == 6
    rates = [re.fullmatch(rf"Iteration (\d+), lr = ({FLOAT})", m) for m in lines]
    rates = [m for m in rates if m]
    assert [int(m[1]) for m in rates] == list(range(6))
    for k in range(6):
        window = losses[max(0, k - 2) : k + 1]
        assert float(display[k][4]) == pytest.approx(sum(window) / len(window), rel=2e-5), k
        # the train output is this iteration's own (unsmoothed) loss, times its loss weight 1
        assert float(outputs[k][1]) == pytest.approx(losses[k], rel=2e-5)
        assert outputs[k][1] == outputs[k][2]
        assert float(rates[k][2]) == pytest.approx(0.1 * 0.5 ** (k // 2), rel=1e-6)
        assert f"{float(rates[k][2]):g}" == rates[k][2]  # 6 significant digits, as C++ streams print
    # Solve's last pass: a forward with the final weights (the data reader's 7th batch), smoothed too
    final = [m for m in lines if re.fullmatch(rf"Iteration 6, loss = {FLOAT}", m)]
    assert len(final) == 1
    assert float(final[0].split(" = ")[1]) == pytest.approx(sum(losses[4:7]) / 3, rel=2e-5)
    assert lines[-1] == "Optimization Done."
    assert "Learning Rate Policy: step" in lines


def test_average_loss_must_be_positive(tmp_path: Path):
    with pytest.raises(caffe.SolverError, match="average_loss"):
        make_solver("base_lr: 0.1 average_loss: 0", least_squares_net(write_h5_data(tmp_path)))


def solver_with_test_net(tmp_path: Path, settings: str) -> caffe.Solver:
    listing = write_h5_data(tmp_path)
    return make_solver(
        f"type: 'SGD' base_lr: 0.01 lr_policy: 'fixed' test_iter: 3 test_interval: 2 max_iter: 4 {settings}",
        least_squares_net(listing),
    )


@pytest.mark.parametrize("initialization", [True, False])
def test_test_interval_and_test_initialization(tmp_path: Path, caplog: pytest.LogCaptureFixture, initialization: bool):
    solver = solver_with_test_net(tmp_path, f"test_initialization: {str(initialization).lower()}")
    assert len(solver.test_nets) == 1 and solver.test_nets[0].phase == caffe.TEST
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.solve()
    tested = [
        int(m[1]) for m in (re.fullmatch(r"Iteration (\d+), Testing net \(#0\)", x) for x in messages(caplog)) if m
    ]
    assert tested == ([0, 2, 4] if initialization else [2, 4])
    outputs = [m for m in messages(caplog) if m.startswith("    Test net output")]
    assert len(outputs) == len(tested)
    assert all(re.fullmatch(rf"    Test net output #0: loss = ({FLOAT}) \(\* 1 = \1 loss\)", m) for m in outputs)
    assert not any(m.startswith("Test loss:") for m in messages(caplog))  # test_compute_loss is off


def test_test_compute_loss_and_test_output_means(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    solver = solver_with_test_net(tmp_path, "test_compute_loss: true")
    X, T = read_h5_data(Path(tmp_path / "list.txt"))
    w, b = (x.data.astype(np.float64) for x in solver.net.params["innerprod"])
    # the test net shares the train net's weights; its own reader starts at row 0: 3 batches of 4
    expected = np.mean([least_squares_loss(X[k : k + 4], T[k : k + 4], w, b) for k in (0, 4, 8)])
    with caplog.at_level(logging.INFO, logger="caffe"):
        results = solver.test(0)
    lines = messages(caplog)
    loss_line = [m for m in lines if m.startswith("Test loss: ")]
    assert len(loss_line) == 1
    assert float(loss_line[0].split(": ")[1]) == pytest.approx(expected, rel=2e-5)
    assert results["loss"] == pytest.approx(expected, rel=1e-5)
    assert f"    Test net output #0: loss = {results['loss']:g} (* 1 = {results['loss']:g} loss)" in lines


def dropout_net() -> str:
    return """
    name: "Random"
    layer { name: "data" type: "DummyData" top: "data" top: "target"
            dummy_data_param { shape { dim: 8 dim: 5 } shape { dim: 8 dim: 2 }
                               data_filler { type: "gaussian" } data_filler { type: "uniform" } } }
    layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
            inner_product_param { num_output: 6 weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } }
    layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" }
    layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "target" top: "loss" }
    """


def test_random_seed_makes_a_cpu_run_repeatable():
    def run(seed: int, global_seed: int) -> list[np.ndarray]:
        caffe.set_random_seed(global_seed)  # the solver's random_seed must override this
        solver = make_solver(f"base_lr: 0.1 lr_policy: 'fixed' momentum: 0.9 random_seed: {seed}", dropout_net())
        solver.step(5)
        return [b.data.copy() for b in solver.net.learnable_params]

    first, again, other = run(7, 1), run(7, 2), run(8, 1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


# ----------------------------------------------------------------------------------------------
# pycaffe's solver interface


def write_solver_files(tmp_path: Path, settings: str = "", kind: str = "SGD") -> Path:
    listing = write_h5_data(tmp_path / "data")
    (tmp_path / "net.prototxt").write_text(least_squares_net(listing))
    path = tmp_path / "solver.prototxt"
    path.write_text(
        f'net: "{tmp_path / "net.prototxt"}"\ntype: "{kind}"\nbase_lr: 0.05\nlr_policy: "fixed"\n'
        f'max_iter: 7\ndisplay: 0\nsnapshot_prefix: "{tmp_path / "snap"}"\n{settings}\n'
    )
    return path


@pytest.mark.parametrize("kind", sorted(SOLVER_SETTINGS))
def test_get_solver_and_solver_classes(tmp_path: Path, kind: str):
    path = write_solver_files(tmp_path, SOLVER_SETTINGS[kind], kind)
    solver = caffe.get_solver(str(path))
    cls = getattr(caffe, f"{kind}Solver")
    assert type(solver) is cls and isinstance(solver, caffe.Solver)
    direct = cls(str(path))
    assert type(direct) is cls
    assert solver.iter == 0 and solver.test_nets == []
    assert isinstance(solver.net, caffe.Net) and list(solver.net.params) == ["innerprod"]
    assert len(solver.history) == (4 if kind in ("AdaDelta", "Adam") else 2)


def test_param_step_solve_and_settable_base_lr(tmp_path: Path):
    solver = caffe.SGDSolver(str(write_solver_files(tmp_path, "test_iter: 1 test_interval: 100")))
    p = solver.param
    assert (p.max_iter, p.display, p.base_lr) == (7, 0, pytest.approx(0.05))
    assert len(solver.test_nets) == 1
    # the test net shares the train net's weights
    assert solver.test_nets[0].params["innerprod"][0].data is not None
    np.testing.assert_array_equal(
        solver.test_nets[0].params["innerprod"][0].data, solver.net.params["innerprod"][0].data
    )
    before = solver.net.params["innerprod"][0].data.copy()
    solver.param.base_lr = 0.0  # pycaffe: base_lr is writable; a zero rate leaves the weights alone
    solver.step(2)
    assert solver.iter == 2
    np.testing.assert_array_equal(solver.net.params["innerprod"][0].data, before)
    solver.param.base_lr = 0.05
    solver.step(1)
    assert solver.iter == 3 and not np.array_equal(solver.net.params["innerprod"][0].data, before)
    np.testing.assert_array_equal(
        solver.test_nets[0].params["innerprod"][0].data, solver.net.params["innerprod"][0].data
    )
    solver.solve()
    assert solver.iter == 7
    assert (tmp_path / "snap_iter_7.caffemodel").is_file() and (tmp_path / "snap_iter_7.solverstate").is_file()


def test_manual_loop_with_apply_update_equals_step(tmp_path: Path):
    path = write_solver_files(tmp_path, "momentum: 0.9 weight_decay: 0.01")
    caffe.set_random_seed(3)
    stepped = caffe.SGDSolver(str(path))
    caffe.set_random_seed(3)
    manual = caffe.SGDSolver(str(path))
    stepped.step(3)
    for _ in range(3):
        manual.net.clear_param_diffs()
        manual.net.forward()
        manual.net.backward()
        manual.apply_update()
    assert manual.iter == 3
    for a, b in zip(stepped.net.learnable_params, manual.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    for a, b in zip(stepped.history, manual.history):
        np.testing.assert_array_equal(a.data, b.data)


def test_callbacks_run_in_caffes_order(tmp_path: Path):
    solver = caffe.SGDSolver(str(write_solver_files(tmp_path, "momentum: 0.9")))
    weights = solver.net.params["innerprod"][0]
    events: list[tuple] = []

    def on_start():
        events.append(("start", solver.iter, float(np.abs(weights.diff).sum()), weights.data.copy()))

    def on_gradients_ready():
        events.append(("gradients", solver.iter, float(np.abs(weights.diff).sum()), weights.data.copy()))

    solver.net.before_forward(lambda i: events.append(("forward", solver.iter)) if i == 0 else None)
    solver.add_callback(on_start, on_gradients_ready)
    solver.step(2)
    assert [e[:2] for e in events] == [(what, it) for it in (0, 1) for what in ("start", "forward", "gradients")]
    # on_start: diffs cleared, no update yet; on_gradients_ready: diffs computed, weights not yet updated
    assert events[0][2] == 0 and events[2][2] > 0
    np.testing.assert_array_equal(events[0][3], events[2][3])
    assert not np.array_equal(events[2][3], events[3][3])


SOLVER_ERRORS = [
    ('train_net: "{net}"\nnet: "{net}"', "exactly one train net"),
    ("", "exactly one train net"),
    ('train_net: "{net}"\ntest_net: "{net}"\ntest_interval: 10', "test_iter must be specified for each test network"),
    ('net: "{net}"\ntest_iter: 2', "test_interval must be positive"),
    ('net: "{net}"\nsnapshot: 10', "snapshot is specified but snapshot_prefix is not"),
    ('net: "{net}"\nsnapshot: 10\nsnapshot_prefix: "{tmp}/missing/dir/snap"', "cannot write to snapshot prefix"),
    ('net: "{net}"\ntype: "Adagrad"', "unknown solver type 'Adagrad'"),
    ('net: "{net}"\ntype: "AdaGrad"\nmomentum: 0.9', "momentum cannot be used with AdaGrad"),
    ('net: "{net}"\ntype: "RMSProp"\nrms_decay: 1.0', "rms_decay should lie in [0, 1)"),
]


@pytest.mark.parametrize(("text", "message"), SOLVER_ERRORS, ids=[m for _, m in SOLVER_ERRORS])
def test_solver_errors_are_one_line(tmp_path: Path, text: str, message: str):
    listing = write_h5_data(tmp_path / "data")
    net = tmp_path / "net.prototxt"
    net.write_text(least_squares_net(listing))
    path = tmp_path / "solver.prototxt"
    path.write_text(text.format(net=net, tmp=tmp_path) + '\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    with pytest.raises(caffe.SolverError, match=re.escape(message)) as info:
        caffe.get_solver(str(path))
    assert "\n" not in str(info.value)


def test_debug_info_prints_caffes_per_layer_lines(tmp_path, caplog):
    import logging

    from google.protobuf import text_format

    from caffe.proto import caffe_pb2 as pb

    net = text_format.Parse(
        """
        layer { name: "d" type: "DummyData" top: "x" top: "y"
                dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                                   data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
        """,
        pb.NetParameter(),
    )
    solver = pb.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=2, display=1, debug_info=True)
    solver.net_param.CopyFrom(net)
    s = caffe.get_solver(solver)
    with caplog.at_level(logging.INFO, logger="caffe"):
        s.step(1)
    text = caplog.text
    for line in (
        "[Forward] Layer ip, top blob ip data: ",
        "[Forward] Layer ip, param blob 0 data: ",
        "[Backward] Layer loss, bottom blob ip diff: ",
        "[Backward] Layer ip, param blob 0 diff: ",
        "[Backward] All net params (data, diff): L1 norm = (",
        "[Update] Layer ip, param 0 data: ",
    ):
        assert line in text, line
