"""LSTMUnit, RNN and LSTM: blob layout, forward against NumPy, Caffe's gradients and state rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import requires_gpu
from gradcheck import check_gradient, layer_net, set_inputs

import caffe

T, N, H = 3, 2, 3
X_SHAPE = (T, N, 2, 2)  # D = 4 inputs per step
XS_SHAPE = (N, 3)  # Ds = 3 static inputs
# Mid-sequence resets: stream 1 restarts at t=1, stream 0 at t=2; every stream starts at t=0.
CONT = np.array([[0, 0], [1, 0], [0, 1]], dtype=np.float64)

FILLERS = 'weight_filler { type: "uniform" min: -0.6 max: 0.6 } bias_filler { type: "uniform" min: -0.3 max: 0.3 }'


def recurrent_net(kind: str, *, static: bool = False, expose: bool = False, t: int = T, n: int = N, extra: str = ""):
    bottoms: dict[str, tuple[int, ...]] = {"x": (t, n, *X_SHAPE[2:]), "cont": (t, n)}
    if static:
        bottoms["x_static"] = (n, *XS_SHAPE[1:])
    tops = ["out"]
    if expose:
        for s in ("h", "c") if kind == "LSTM" else ("h",):
            bottoms[f"{s}_0"] = (1, n, H)
            tops.append(f"{s}_T")
    text = (
        f'name: "rec" type: "{kind}" '
        + " ".join(f'bottom: "{b}"' for b in bottoms)
        + " "
        + " ".join(f'top: "{t}"' for t in tops)
        + f" recurrent_param {{ num_output: {H} {FILLERS} {'expose_hidden: true' if expose else ''} {extra} }}"
    )
    return layer_net(text, bottoms)


def params(net) -> list[np.ndarray]:
    return [b.data.copy() for b in net.params["rec"]]


# ---------------------------------------------------------------------------- NumPy references
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_lstm_unit(c_prev, gates, cont):
    """Caffe's LSTMUnit on (N, H), (N, 4H), (N,)."""
    h = c_prev.shape[-1]
    i = sigmoid(gates[:, :h])
    f = cont[:, None] * sigmoid(gates[:, h : 2 * h])
    o = sigmoid(gates[:, 2 * h : 3 * h])
    g = np.tanh(gates[:, 3 * h :])
    c = f * c_prev + i * g
    return c, o * np.tanh(c)


def np_recurrent(kind, x, cont, blobs, x_static=None, h0=None, c0=None):
    """Step-by-step Caffe equations with Caffe's blob layout; returns (top, h_T, c_T)."""
    steps, streams = cont.shape
    w_x, b_x = blobs[0], blobs[1]
    k = 2
    static_term = 0.0
    if x_static is not None:
        static_term = x_static.reshape(streams, -1) @ blobs[2].T
        k = 3
    w_h = blobs[k]
    h = np.zeros((streams, H)) if h0 is None else h0.reshape(streams, H)
    c = np.zeros((streams, H)) if c0 is None else c0.reshape(streams, H)
    outs = []
    for t in range(steps):
        pre = x[t].reshape(streams, -1) @ w_x.T + b_x + static_term + (cont[t][:, None] * h) @ w_h.T
        if kind == "LSTM":
            c, h = np_lstm_unit(c, pre, cont[t])
            outs.append(h)
        else:
            h = np.tanh(pre)
            outs.append(np.tanh(h @ blobs[k + 1].T + blobs[k + 2]))
    return np.stack(outs), h, c


def random_inputs(rng, static=False, cont=CONT, t=T, n=N):
    values = {"x": rng.uniform(-1, 1, (t, n, *X_SHAPE[2:])), "cont": cont.copy()}
    if static:
        values["x_static"] = rng.uniform(-1, 1, (n, *XS_SHAPE[1:]))
    return values


# ---------------------------------------------------------------------------- LSTMUnit
UNIT = 'name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "gates" bottom: "cont" top: "c" top: "h"'
UNIT_SHAPES = {"c_prev": (1, N, H), "gates": (1, N, 4 * H), "cont": (1, N)}


def test_lstm_unit_forward_matches_caffe_equations():
    rng = np.random.default_rng(1)
    net = layer_net(UNIT, UNIT_SHAPES)
    c_prev, gates = rng.uniform(-1, 1, (1, N, H)), rng.uniform(-2, 2, (1, N, 4 * H))
    cont = np.array([[1.0, 0.0]])
    set_inputs(net, {"c_prev": c_prev, "gates": gates, "cont": cont})
    net.forward()
    c, h = np_lstm_unit(c_prev[0], gates[0], cont[0])
    np.testing.assert_allclose(net.blobs["c"].data[0], c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(net.blobs["h"].data[0], h, rtol=1e-12, atol=1e-12)
    # cont = 0 drops c_prev entirely
    np.testing.assert_allclose(c[1], sigmoid(gates[0, 1, :H]) * np.tanh(gates[0, 1, 3 * H :]))


@pytest.mark.parametrize("cont", [[1.0, 0.0], [1.0, 1.0]])
def test_lstm_unit_gradient(cont):
    rng = np.random.default_rng(2)
    net = layer_net(UNIT, UNIT_SHAPES)
    inputs = {"c_prev": rng.uniform(-1, 1, (1, N, H)), "gates": rng.uniform(-1, 1, (1, N, 4 * H))}
    inputs["cont"] = np.array([cont])
    assert net.bottom_need_backward[-1] == [True, True, False]  # no gradient to cont
    check_gradient(net, inputs)


def test_lstm_unit_non_binary_cont_uses_caffe_forget_gate_rule():
    """Caffe differentiates f = cont * sigmoid(f') as f * (1 - f)."""
    rng = np.random.default_rng(3)
    net = layer_net(UNIT, UNIT_SHAPES)
    c_prev, gates, cont = rng.uniform(-1, 1, (1, N, H)), rng.uniform(-1, 1, (1, N, 4 * H)), np.array([[0.5, 0.25]])
    set_inputs(net, {"c_prev": c_prev, "gates": gates, "cont": cont})
    net.forward()
    net.blobs["c"].diff[...] = 1.0
    net.blobs["h"].diff[...] = 0.0
    net.backward()
    f = cont[0][:, None] * sigmoid(gates[0, :, H : 2 * H])
    np.testing.assert_allclose(net.blobs["gates"].diff[0, :, H : 2 * H], c_prev[0] * f * (1 - f), rtol=1e-12)
    np.testing.assert_allclose(net.blobs["c_prev"].diff[0], f, rtol=1e-12)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"gates": (1, N, 4 * H + 1)}, "4 \\* 3 = 12 channels"),
        ({"cont": (1, N + 1)}, r"cont.*\(1, 3\).*\(1, 2, 3\)"),
        ({"cont": (1, N, 1)}, "'cont' must have 2 axes"),
        ({"c_prev": (2, N, H)}, "single timestep"),
    ],
)
def test_lstm_unit_bad_shapes(shapes, message):
    with pytest.raises(caffe.LayerError, match=message):
        layer_net(UNIT, {**UNIT_SHAPES, **shapes})


# ---------------------------------------------------------------------------- parameter layout
@pytest.mark.parametrize(
    ("kind", "static", "expected"),
    [
        ("LSTM", False, [(4 * H, 4), (4 * H,), (4 * H, H)]),
        ("LSTM", True, [(4 * H, 4), (4 * H,), (4 * H, 3), (4 * H, H)]),
        ("RNN", False, [(H, 4), (H,), (H, H), (H, H), (H,)]),
        ("RNN", True, [(H, 4), (H,), (H, 3), (H, H), (H, H), (H,)]),
    ],
)
def test_param_blobs_follow_caffes_unrolled_net(kind, static, expected):
    fillers = 'weight_filler { type: "constant" value: 0.5 } bias_filler { type: "constant" value: -0.25 }'
    text = (
        f'name: "rec" type: "{kind}" bottom: "x" bottom: "cont" '
        + ('bottom: "x_static" ' if static else "")
        + f'top: "out" recurrent_param {{ num_output: {H} {fillers} }}'
    )
    bottoms = {"x": X_SHAPE, "cont": (T, N)} | ({"x_static": XS_SHAPE} if static else {})
    net = layer_net(text, bottoms)
    blobs = net.params["rec"]
    assert [b.shape for b in blobs] == expected
    # biases are exactly the 1-axis blobs (b_c / b_h, b_o) and get the bias filler
    for b in blobs:
        assert np.all(b.data == (-0.25 if len(b.shape) == 1 else 0.5))
    assert net.blobs["out"].shape == (T, N, H)


def test_caffemodel_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    net = recurrent_net("LSTM", static=True)
    inputs = random_inputs(rng, static=True)
    set_inputs(net, inputs)
    expected = net.forward()["out"].copy()
    net.save(tmp_path / "lstm.caffemodel")
    other = recurrent_net("LSTM", static=True)
    other.copy_from(tmp_path / "lstm.caffemodel")
    set_inputs(other, inputs)
    np.testing.assert_array_equal(other.forward()["out"], expected)


# ---------------------------------------------------------------------------- forward
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
def test_forward_matches_numpy_with_resets(kind, static):
    rng = np.random.default_rng(5)
    net = recurrent_net(kind, static=static)
    inputs = random_inputs(rng, static=static)
    set_inputs(net, inputs)
    out = net.forward()["out"]
    ref, _, _ = np_recurrent(kind, inputs["x"], CONT, params(net), inputs.get("x_static"))
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    # the reset at (t=1, n=1) really cuts the stream off its past
    assert not np.allclose(
        ref, np_recurrent(kind, inputs["x"], np.ones_like(CONT), params(net), inputs.get("x_static"))[0]
    )


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_expose_hidden_forward(kind):
    rng = np.random.default_rng(6)
    net = recurrent_net(kind, expose=True, static=True)
    cont = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float64)  # stream 0 continues from h_0/c_0
    inputs = random_inputs(rng, static=True, cont=cont)
    inputs["h_0"] = rng.uniform(-1, 1, (1, N, H))
    if kind == "LSTM":
        inputs["c_0"] = rng.uniform(-1, 1, (1, N, H))
    set_inputs(net, inputs)
    out = net.forward()
    ref, h_t, c_t = np_recurrent(
        kind, inputs["x"], cont, params(net), inputs["x_static"], inputs["h_0"], inputs.get("c_0")
    )
    np.testing.assert_allclose(out["out"], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["h_T"], h_t[None], rtol=1e-12, atol=1e-12)
    if kind == "LSTM":
        np.testing.assert_allclose(out["c_T"], c_t[None], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out["out"][-1], out["h_T"][0])
    # no state is carried between passes when the state is exposed
    np.testing.assert_allclose(net.forward()["out"], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_state_carries_across_forward_passes(kind):
    """Caffe's TestForward: a sequence in one pass equals the same sequence one step per pass."""
    rng = np.random.default_rng(7)
    net = recurrent_net(kind)
    cont = np.ones((T, N))
    cont[0] = 0
    inputs = random_inputs(rng, cont=cont)
    set_inputs(net, inputs)
    full = net.forward()["out"].copy()
    # continuing with cont = 1 starts from the last pass's final state
    set_inputs(net, {"cont": np.ones((T, N))})
    second = net.forward()["out"].copy()
    blobs = params(net)
    _, h_t, c_t = np_recurrent(kind, inputs["x"], cont, blobs)
    ref, _, _ = np_recurrent(kind, inputs["x"], np.ones((T, N)), blobs, h0=h_t, c0=c_t)
    np.testing.assert_allclose(second, ref, rtol=1e-12, atol=1e-12)

    net.layers[-1].reset()
    for t in range(T):  # one timestep per pass (T may change between passes)
        set_inputs(net, {"x": inputs["x"][t : t + 1], "cont": cont[t : t + 1]})
        np.testing.assert_allclose(net.forward()["out"][0], full[t], rtol=1e-12, atol=1e-12)
    for t in range(T):  # all cont = 0: every pass restarts, so only t = 0 agrees
        set_inputs(net, {"x": inputs["x"][t : t + 1], "cont": np.zeros((1, N))})
        step = net.forward()["out"][0]
        assert np.allclose(step, full[t]) == (t == 0)


def test_carried_state_when_the_number_of_streams_changes():
    """Caffe keeps the state blob's memory when it shrinks and reallocates (zeros) when it grows."""
    rng = np.random.default_rng(8)
    net = recurrent_net("LSTM")
    inputs = random_inputs(rng)
    set_inputs(net, inputs)
    net.forward()
    blobs = params(net)
    _, h_t, c_t = np_recurrent("LSTM", inputs["x"], CONT, blobs)
    ones = np.ones((T, 1))
    small = random_inputs(rng, cont=ones, n=1)
    set_inputs(net, small)
    ref, _, _ = np_recurrent("LSTM", small["x"], ones, blobs, h0=h_t[:1], c0=c_t[:1])
    np.testing.assert_allclose(net.forward()["out"], ref, rtol=1e-12, atol=1e-12)
    big = random_inputs(rng, cont=np.ones((T, 3)), n=3)
    set_inputs(net, big)
    ref, _, _ = np_recurrent("LSTM", big["x"], np.ones((T, 3)), blobs)
    np.testing.assert_allclose(net.forward()["out"], ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
def test_gradient(kind, static):
    rng = np.random.default_rng(9)
    net = recurrent_net(kind, static=static)
    inputs = random_inputs(rng, static=static)
    expected = ["x", "x_static"] if static else ["x"]
    assert [b for b, need in zip(net.bottom_names["rec"], net.bottom_need_backward[-1]) if need] == expected
    check_gradient(net, inputs)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_expose_hidden_gradient_follows_caffe(kind):
    """x, x_static and params get exact gradients of the sequence top; as in Caffe's unrolled net, the
    initial-state bottoms get none and diffs put on the final-state tops are ignored."""
    rng = np.random.default_rng(10)
    net = recurrent_net(kind, static=True, expose=True)
    cont = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float64)
    inputs = random_inputs(rng, static=True, cont=cont)
    states = ["h_0", "c_0"] if kind == "LSTM" else ["h_0"]
    for s in states:
        inputs[s] = rng.uniform(-1, 1, (1, N, H))
    set_inputs(net, inputs)
    weight = rng.standard_normal((T, N, H))

    def objective() -> float:
        return float(np.sum(net.forward()["out"] * weight))

    objective()
    net.clear_param_diffs()
    net.blobs["out"].diff[...] = weight
    for top in net.top_names["rec"][1:]:
        net.blobs[top].diff[...] = rng.standard_normal((1, N, H))
    for s in states:
        net.blobs[s].diff[...] = 7.0
    net.backward()
    for s in states:
        assert np.all(net.blobs[s].diff == 0)
    targets = [net.blobs["x"], net.blobs["x_static"], *net.params["rec"]]
    analytic = [b.diff.copy() for b in targets]
    step = 1e-5
    for blob, grad in zip(targets, analytic, strict=True):
        flat = blob.data.reshape(-1)
        for i in range(flat.size):
            v = flat[i]
            flat[i] = v + step
            up = objective()
            flat[i] = v - step
            down = objective()
            flat[i] = v
            assert abs((up - down) / (2 * step) - grad.reshape(-1)[i]) < 1e-6 * max(1.0, abs(grad.reshape(-1)[i]))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("bottoms", "message"),
    [
        ({"cont": (T + 1, N)}, r"'cont' shape \(4, 2\).*x shape \(3, 2, 2, 2\)"),
        ({"cont": (T, N + 1)}, r"'cont' shape \(3, 3\).*x shape \(3, 2, 2, 2\)"),
        ({"cont": (T, N, 1)}, r"exactly 2 axes.*\(3, 2, 1\)"),
        ({"x": (T,), "cont": (T, N)}, r"at least 2 axes.*\(3,\)"),
        ({"x_static": (N + 1, 3)}, r"'x_static' shape \(3, 3\).*\(3, 2, 2, 2\)"),
    ],
)
def test_bad_input_shapes(bottoms, message):
    all_bottoms = {"x": X_SHAPE, "cont": (T, N), **bottoms}
    text = (
        'name: "rec" type: "LSTM" '
        + " ".join(f'bottom: "{b}"' for b in all_bottoms)
        + f' top: "out" recurrent_param {{ num_output: {H} }}'
    )
    with pytest.raises(caffe.ShapeError, match=message):
        layer_net(text, all_bottoms)


def test_num_output_is_required():
    with pytest.raises(caffe.LayerError, match="num_output must be positive, got 0"):
        layer_net('type: "RNN" bottom: "x" bottom: "cont" top: "o"', {"x": X_SHAPE, "cont": (T, N)})


def test_expose_hidden_checks_state_shapes_and_counts():
    bottoms = {"x": X_SHAPE, "cont": (T, N), "h_0": (1, N, H), "c_0": (1, N, H + 1)}
    text = (
        'name: "rec" type: "LSTM" bottom: "x" bottom: "cont" bottom: "h_0" bottom: "c_0" '
        f'top: "h" top: "h_T" top: "c_T" recurrent_param {{ num_output: {H} expose_hidden: true }}'
    )
    with pytest.raises(caffe.ShapeError, match=r"'c_0' shape \(1, 2, 4\) must be \(1, 2, 3\)"):
        layer_net(text, bottoms)
    with pytest.raises(caffe.LayerError, match="exactly 3 top"):
        layer_net(text.replace('top: "c_T" ', ""), {**bottoms, "c_0": (1, N, H)})
    with pytest.raises(caffe.LayerError, match="at least 4 bottom"):
        layer_net(text.replace('bottom: "c_0" ', ""), {k: v for k, v in bottoms.items() if k != "c_0"})


def test_input_size_cannot_change_after_setup():
    net = recurrent_net("RNN")
    net.blobs["x"].reshape(T, N, 5)
    with pytest.raises(caffe.ShapeError, match=r"\(3, 2, 5\) has 5 inputs per step; the layer was set up for 4"):
        net.forward()


def test_debug_info_logs(caplog):
    net = recurrent_net("RNN", extra="debug_info: true")
    set_inputs(net, random_inputs(np.random.default_rng(11)))
    with caplog.at_level("INFO", logger="caffe"):
        net.forward()
    assert "[Forward] Layer rec" in caplog.text


def test_float32_forward_agrees_with_float64():
    rng = np.random.default_rng(12)
    net64 = recurrent_net("LSTM", static=True)
    inputs = random_inputs(rng, static=True)
    set_inputs(net64, inputs)
    ref = net64.forward()["out"].copy()
    from caffe.proto import caffe_pb2 as pb

    param = pb.NetParameter()
    param.CopyFrom(net64.net_param)
    net32 = caffe.Net(param, caffe.TEST, dtype=torch.float32)
    for src, dst in zip(net64.params["rec"], net32.params["rec"], strict=True):
        dst.data[...] = src.data
    set_inputs(net32, inputs)
    np.testing.assert_allclose(net32.forward()["out"], ref, rtol=1e-5, atol=1e-6)


@requires_gpu
def test_gpu_matches_cpu_including_carried_state():
    rng = np.random.default_rng(13)
    net = recurrent_net("LSTM", static=True)
    inputs = random_inputs(rng, static=True)
    set_inputs(net, inputs)
    first = net.forward()["out"].copy()
    set_inputs(net, {"cont": np.ones((T, N))})
    second = net.forward()["out"].copy()
    net.layers[-1].reset()
    caffe.set_mode_gpu()
    set_inputs(net, inputs)
    np.testing.assert_allclose(net.forward()["out"], first, rtol=1e-10, atol=1e-12)
    set_inputs(net, {"cont": np.ones((T, N))})
    np.testing.assert_allclose(net.forward()["out"], second, rtol=1e-10, atol=1e-12)
