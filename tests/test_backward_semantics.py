"""Backward as Caffe defines it: from the blobs' current contents, whether or not a forward ran first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from caffe.proto import caffe_pb2 as pb


def build(text: str, phase: int = caffe.TRAIN) -> caffe.Net:
    param = pb.NetParameter()
    text_format.Merge(text, param)
    return caffe.Net(param, phase)


IP = """force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "constant" value: 0.5 } } }
"""


def ip_net() -> tuple[caffe.Net, np.ndarray, np.ndarray]:
    net = build(IP)
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 6
    top_diff = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    net.blobs["x"].data[...] = x
    net.blobs["y"].diff[...] = top_diff
    return net, x, top_diff


def test_inner_product_backward_without_forward():
    net, x, top_diff = ip_net()
    w = net.params["ip"][0].data.copy()
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, top_diff @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip"][0].diff, top_diff.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip"][1].diff, top_diff.sum(0), rtol=1e-5, atol=1e-6)


def test_backward_after_changing_weights_in_place_uses_the_new_weights():
    net, x, top_diff = ip_net()
    net.forward()
    net.blobs["y"].diff[...] = top_diff
    net.params["ip"][0].data[...] *= 3
    new_w = net.params["ip"][0].data.copy()
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, top_diff @ new_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip"][0].diff, top_diff.T @ x, rtol=1e-5, atol=1e-6)


def test_backward_after_an_update_uses_the_updated_weights():
    """Net::Update changes the weights in place (data -= diff): a backward after it differentiates the new ones."""
    net, _x, top_diff = ip_net()
    net.forward()
    net.blobs["y"].diff[...] = top_diff
    net.backward()
    net.update()
    new_w = net.params["ip"][0].data.copy()
    net.blobs["y"].diff[...] = top_diff
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, top_diff @ new_w, rtol=1e-5, atol=1e-6)


def test_backward_after_changing_a_bottom_in_place_uses_the_new_bottom():
    net, x, top_diff = ip_net()
    net.forward()
    net.blobs["y"].diff[...] = top_diff
    net.blobs["x"].data[...] = 2 * x + 1
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, top_diff.T @ (2 * x + 1), rtol=1e-5, atol=1e-6)


def test_backward_after_a_gradient_free_forward():
    net, _x, top_diff = ip_net()
    w = net.params["ip"][0].data.copy()
    with torch.no_grad():
        net.forward()
    net.blobs["y"].diff[...] = top_diff
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, top_diff @ w, rtol=1e-5, atol=1e-6)


PY = """force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "py" type: "Python" bottom: "x" top: "y"
        python_param { module: "pylayers.scale_layers" layer: "TimesParam" param_str: "3" } }
layer { name: "ls" type: "Python" bottom: "y" top: "z"
        python_param { module: "pylayers.scale_layers" layer: "LearnedScale" } }
"""


def test_python_layers_backward_without_forward_is_the_users_formula():
    net = build(PY)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.full((2, 3), 7, dtype=np.float32)  # not 3 * x: no forward ran, backward reads the blobs as they are
    dz = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    net.blobs["x"].data[...] = x
    net.blobs["y"].data[...] = y
    net.blobs["z"].diff[...] = dz
    net.backward()
    # LearnedScale: dw += sum(dz * y), dy = dz * w (w = 2); TimesParam: dx = dy * 3
    np.testing.assert_allclose(net.params["ls"][0].diff, np.sum(dz * y, axis=0), rtol=1e-6)
    np.testing.assert_allclose(net.blobs["y"].diff, dz * 2, rtol=1e-6)
    np.testing.assert_allclose(net.blobs["x"].diff, dz * 6, rtol=1e-6)


def test_python_layer_backward_is_called_with_the_blobs():
    net = build(PY)
    calls = []
    impl = net.layer_dict["py"]
    original = impl.backward

    def spy(top, propagate_down, bottom):
        calls.append((top[0] is net.blobs["y"], list(propagate_down), bottom[0] is net.blobs["x"]))
        original(top, propagate_down, bottom)

    impl.backward = spy
    net.forward()
    net.backward()
    assert calls == [(True, [True], True)]


def test_propagate_down_false_leaves_the_bottom_diff_alone():
    net = build(
        """layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss"
                propagate_down: true propagate_down: false }"""
    )
    net.blobs["x"].data[...] = 1
    net.blobs["t"].data[...] = 5
    net.blobs["t"].diff[...] = 42
    net.forward()
    net.backward()
    assert (net.blobs["t"].diff == 42).all()
    assert np.abs(net.blobs["y"].diff).sum() > 0


def test_a_python_layer_raising_in_setup_is_a_runtime_error(tmp_path, monkeypatch):
    (tmp_path / "raising_layer.py").write_text(
        "import caffe\n\n\nclass Raises(caffe.Layer):\n"
        "    def setup(self, bottom, top):\n"
        "        raise Exception('Need two inputs to compute distance.')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="layer 'p' \\(Python\\) setup failed: Need two inputs"):
        build('layer { name: "p" type: "Python" python_param { module: "raising_layer" layer: "Raises" } }')
    with pytest.raises(RuntimeError, match="bad param_str"):
        build('layer { name: "p" type: "Python" python_param { module: "pylayers.scale_layers" layer: "Broken" } }')


def test_the_solver_path_keeps_the_recorded_graph(monkeypatch):
    """forward then backward with nothing changed between them recomputes nothing (training speed)."""
    net = build(
        """layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 } }
        layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
        layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }"""
    )
    recomputed = []
    original = net._record_layer
    monkeypatch.setattr(net, "_record_layer", lambda i: (recomputed.append(i), original(i)))
    net.blobs["x"].data[...] = 1
    for _ in range(3):
        net.forward_backward()
        net.update()
    assert recomputed == []
    net.params["ip"][0].data[...] += 1  # a change in place: the layer that reads it is recomputed
    net.backward()
    assert recomputed == [1]
