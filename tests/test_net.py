"""Net construction and execution rules, checked against Caffe's documented behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from caffe.net import filter_net, insert_splits
from caffe.proto import caffe_pb2 as pb


def netp(text: str) -> pb.NetParameter:
    return text_format.Parse(text, pb.NetParameter())


def build(text: str, phase: int = caffe.TRAIN, **kw) -> caffe.Net:
    return caffe.Net(netp(text), phase, **kw)


MLP = """
name: "mlp"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 5 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
"""


def fill_mlp(net: caffe.Net, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    y = np.array([0, 2, 1, 2], dtype=np.float32)
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = y
    return x, y


def torch_mlp(net: caffe.Net, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
    w1, b1 = (torch.tensor(b.data, requires_grad=True) for b in net.params["ip1"])
    w2, b2 = (torch.tensor(b.data, requires_grad=True) for b in net.params["ip2"])
    h = torch.relu(torch.tensor(x) @ w1.T + b1)
    logits = h @ w2.T + b2
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y).long())
    return loss, [w1, b1, w2, b2]


# ---------------------------------------------------------------------------- building
def test_phase_filter_and_split_names():
    train = build(MLP, caffe.TRAIN)
    test = build(MLP, caffe.TEST)
    assert "acc" not in train.layer_dict
    assert list(train.layer_dict) == ["data", "ip1", "relu1", "ip2", "loss"]
    # TEST: label and ip2 each feed two layers -> Caffe's split layers and blob names
    assert list(test.layer_dict) == [
        "data",
        "label_data_1_split",
        "ip1",
        "relu1",
        "ip2",
        "ip2_ip2_0_split",
        "loss",
        "acc",
    ]
    assert test.bottom_names["loss"] == ["ip2_ip2_0_split_0", "label_data_1_split_0"]
    assert test.bottom_names["acc"] == ["ip2_ip2_0_split_1", "label_data_1_split_1"]
    assert test.outputs == ["acc", "loss"]  # sorted, as Caffe's std::set
    assert test.inputs == ["data", "label"]


def test_state_rules_levels_and_stages():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }
    layer { name: "a" type: "ReLU" bottom: "x" top: "a" include { min_level: 1 } }
    layer { name: "b" type: "ReLU" bottom: "x" top: "b" include { max_level: 0 } }
    layer { name: "c" type: "ReLU" bottom: "x" top: "c" include { stage: "deploy" } }
    layer { name: "d" type: "ReLU" bottom: "x" top: "d" exclude { stage: "deploy" } }
    layer { name: "e" type: "ReLU" bottom: "x" top: "e" include { stage: "s1" stage: "s2" } }
    layer { name: "f" type: "ReLU" bottom: "x" top: "f" include { not_stage: "s1" } }
    layer { name: "g" type: "ReLU" bottom: "x" top: "g" include { phase: TRAIN } include { stage: "s2" } }
    """
    p = netp(text)

    def names(level=0, stages=(), phase=caffe.TEST):
        q = pb.NetParameter()
        q.CopyFrom(p)
        q.state.phase = phase
        q.state.level = level
        q.state.stage.extend(stages)
        return [lp.name for lp in filter_net(q).layer]

    assert names() == ["in", "b", "d", "f"]
    assert names(level=1) == ["in", "a", "d", "f"]
    assert names(stages=["deploy"]) == ["in", "b", "c", "f"]
    assert names(stages=["s1", "s2"]) == ["in", "b", "d", "e", "g"]
    assert names(phase=caffe.TRAIN) == ["in", "b", "d", "f", "g"]
    # through the pycaffe constructor
    net = caffe.Net(p, caffe.TEST, level=1, stages=["deploy"])
    assert [n for n in net.layer_dict] == ["in", "x_in_0_split", "a", "c", "f"]


def test_include_and_exclude_together_is_an_error():
    with pytest.raises(caffe.NetError, match="either include rules or exclude rules"):
        build('layer { name: "x" type: "Input" top: "x" include { phase: TEST } exclude { phase: TRAIN } }')


def test_split_carries_loss_weight_to_first_output():
    p = netp(
        """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "e" type: "EuclideanLoss" bottom: "x" bottom: "x" top: "l" loss_weight: 2 }
        layer { name: "r" type: "ReLU" bottom: "l" top: "r" }
        """
    )
    q = insert_splits(p)
    split = next(lp for lp in q.layer if lp.name == "l_e_0_split")
    assert list(split.top) == ["l_e_0_split_0", "l_e_0_split_1"]
    assert list(split.loss_weight) == [2.0, 0.0]
    assert not next(lp for lp in q.layer if lp.name == "e").loss_weight  # moved to the split
    assert next(lp for lp in q.layer if lp.name == "r").bottom[0] == "l_e_0_split_1"


def test_unknown_bottom_and_duplicate_top_errors():
    with pytest.raises(caffe.NetError, match=r"unknown bottom blob 'nope' \(layer 'r', bottom index 0\)"):
        build('layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }')
    with pytest.raises(caffe.NetError, match="top blob 'x' produced by multiple sources"):
        build(
            """
            layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }
            layer { name: "b" type: "Input" top: "x" input_param { shape { dim: 1 } } }
            """
        )


def test_unknown_type_names_layer_and_suggests():
    with pytest.raises(caffe.UnknownLayerTypeError, match=r"layer 'c1' has unknown type 'Convolutoin'.*'Convolution'"):
        build('layer { name: "c1" type: "Convolutoin" }')
    with pytest.raises(caffe.UnknownLayerTypeError, match="unknown layer types Bar, Foo"):
        build('layer { name: "a" type: "Foo" } layer { name: "b" type: "Bar" }')
    # only the types about as close as the closest: a typo of InnerProduct does not suggest MarginInnerProduct
    with pytest.raises(caffe.UnknownLayerTypeError, match=r"did you mean 'InnerProduct'\?$"):
        build('layer { name: "ip" type: "InnerProdcut" }')
    with pytest.raises(caffe.UnknownLayerTypeError, match=r"did you mean 'ROIPooling', 'PSROIPooling'\?$"):
        build('layer { name: "r" type: "ROIPoolng" }')


def test_in_place_layers_share_the_blob():
    net = build(MLP, caffe.TEST)
    assert net.top_names["relu1"] == ["ip1"] == net.bottom_names["relu1"]
    fill_mlp(net)
    net.forward()
    assert (net.blobs["ip1"].data >= 0).all()


def test_loss_weights_and_needs():
    net = build(MLP, caffe.TEST)
    w = net.blob_loss_weights
    assert w["loss"] == 1.0 and w["acc"] == 0.0 and w["ip2"] == 0.0
    names = list(net.layer_dict)
    need = dict(zip(names, net.layer_need_backward, strict=True))
    assert need["loss"] and need["ip2"] and need["ip1"] and not need["acc"] and not need["data"]
    # the data blob does not need backward without force_backward
    assert net.bottom_need_backward[names.index("ip1")] == [False]


def test_loss_weight_scales_loss_and_gradient():
    text = MLP.replace('top: "loss" }', 'top: "loss" loss_weight: 2.5 }')
    a, b = build(MLP), build(text)
    for n in (a, b):
        fill_mlp(n)
    b.copy_from(a.to_proto())
    la, lb = a._forward(0, len(a.layers) - 1), b._forward(0, len(b.layers) - 1)
    assert lb == pytest.approx(2.5 * la, rel=1e-6)
    a.backward()
    b.backward()
    np.testing.assert_allclose(b.params["ip1"][0].diff, 2.5 * a.params["ip1"][0].diff, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- forward/backward
def test_forward_backward_match_plain_torch():
    net = build(MLP)
    x, y = fill_mlp(net)
    out = net.forward()
    ref, params = torch_mlp(net, x, y)
    assert out["loss"] == pytest.approx(float(ref.detach()), rel=1e-5)
    net.clear_param_diffs()
    net.backward()
    ref.backward()
    for blob, p in zip(net.params["ip1"] + net.params["ip2"], params, strict=True):
        np.testing.assert_allclose(blob.diff, p.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_param_diffs_accumulate_until_cleared():
    net = build(MLP)
    fill_mlp(net)
    net.forward()
    net.backward()
    once = net.params["ip1"][0].diff.copy()
    net.backward()
    np.testing.assert_allclose(net.params["ip1"][0].diff, 2 * once, rtol=1e-5)
    net.clear_param_diffs()
    assert not net.params["ip1"][0].diff.any()


def test_forward_kwargs_start_end_and_blobs():
    net = build(MLP, caffe.TEST)
    x, y = fill_mlp(net)
    out = net.forward(data=x, label=y, blobs=["ip1"])
    assert set(out) == {"acc", "loss", "ip1"}
    with pytest.raises(caffe.NetError, match="do not match the net's inputs"):
        net.forward(data=x)
    with pytest.raises(caffe.ShapeError, match="not batch sized"):
        net.forward(data=x[:2], label=y[:2])
    # partial forward: ends at ip2 and returns its tops
    ip2 = net.forward(end="ip2")
    assert list(ip2) == ["ip2"]
    before = net.blobs["ip2"].data.copy()
    net.blobs["ip1"].data[...] = 0
    net.forward(start="ip2", end="ip2")
    np.testing.assert_allclose(net.blobs["ip2"].data, np.broadcast_to(net.params["ip2"][1].data, before.shape))


def test_backward_from_outputs_with_force_backward():
    net = build("force_backward: true\n" + MLP, caffe.TEST)
    x, y = fill_mlp(net)
    net.forward()
    grads = net.backward()
    assert set(grads) == {"data", "label"}
    _, _ = torch_mlp(net, x, y)
    xt = torch.tensor(x, requires_grad=True)
    w1, b1, w2, b2 = (torch.tensor(b.data) for b in net.params["ip1"] + net.params["ip2"])
    loss = torch.nn.functional.cross_entropy(torch.relu(xt @ w1.T + b1) @ w2.T + b2, torch.tensor(y).long())
    loss.backward()
    np.testing.assert_allclose(grads["data"], xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert not grads["label"].any()  # labels never get a gradient


def test_propagate_down_false_stops_gradient():
    text = MLP.replace(
        'layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"',
        'layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" propagate_down: false',
    )
    net = build(text)
    fill_mlp(net)
    net.forward()
    net.backward()
    assert net.params["ip2"][0].diff.any()
    assert not net.params["ip1"][0].diff.any()
    assert not net.layer_need_backward[list(net.layer_dict).index("ip1")]


def test_lr_mult_zero_means_no_param_gradient():
    text = MLP.replace(
        'top: "ip1"\n        inner_product_param',
        'top: "ip1"\n        param { lr_mult: 0 } param { lr_mult: 0 decay_mult: 3 }\n        inner_product_param',
    )
    net = build(text)
    assert net.params_lr[:2] == [0.0, 0.0] and net.params_weight_decay[:2] == [1.0, 3.0]
    fill_mlp(net)
    net.forward()
    net.backward()
    assert not net.params["ip1"][0].diff.any() and net.params["ip2"][0].diff.any()


def test_backward_range_equals_full_backward():
    a = build(MLP)
    fill_mlp(a)
    a.forward()
    a.backward()
    full = [b.diff.copy() for b in a.params["ip1"]]
    a.clear_param_diffs()
    a.forward()
    a.backward(start="loss", end="ip2")
    assert not a.params["ip1"][0].diff.any()
    a.backward(start="relu1", end="ip1")
    for blob, ref in zip(a.params["ip1"], full, strict=True):
        np.testing.assert_allclose(blob.diff, ref, rtol=1e-6)


def test_parameter_sharing_strict_and_permissive():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" } param { name: "b" }
            inner_product_param { num_output: 4 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "b" bottom: "x" top: "loss" }
    """
    net = build(text)
    assert net.params["a"][0] is net.params["b"][0]
    assert len(net.learnable_params) == 2
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    net.backward()
    w = torch.tensor(net.params["a"][0].data, requires_grad=True)
    bias = torch.tensor(net.params["a"][1].data, requires_grad=True)
    xt = torch.tensor(x)
    out = (xt @ w.T + bias) @ w.T + bias
    (((out - xt) ** 2).sum() / 2 / 2).backward()
    np.testing.assert_allclose(net.params["a"][0].diff, w.grad.numpy(), rtol=1e-4, atol=1e-6)

    bad = text.replace(
        'param { name: "w" } param { name: "b" }\n            inner_product_param { num_output: 4 } }',
        'param { name: "w" } param { name: "b2" }\n            inner_product_param { num_output: 2 } }',
    )
    bad = bad.replace('bottom: "b" bottom: "x"', 'bottom: "b" bottom: "b"')
    with pytest.raises(caffe.NetError, match=r"cannot share param 'w'.*shape mismatch"):
        build(bad)

    permissive = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 6 } } }
    layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
            inner_product_param { num_output: 6 bias_term: false weight_filler { type: "gaussian" } } }
    layer { name: "s" type: "Reshape" bottom: "a" top: "s" reshape_param { shape { dim: 2 dim: 3 dim: 2 dim: 1 } } }
    layer { name: "c" type: "Convolution" bottom: "s" top: "c" param { name: "w" share_mode: PERMISSIVE }
            convolution_param { num_output: 12 kernel_size: 1 bias_term: false } }
    """
    # conv weight (12, 3, 1, 1) shares the 36 values of the (6, 6) inner-product weight
    net = build(permissive)
    np.testing.assert_array_equal(net.params["c"][0].data.reshape(6, 6), net.params["a"][0].data)
    net.params["a"][0].data[0, 0] = 42.0
    assert net.params["c"][0].data[0, 0, 0, 0] == 42.0


# ---------------------------------------------------------------------------- blobs
def test_blob_views_share_memory_and_reshape():
    net = build(MLP, caffe.TEST)
    data = net.blobs["data"]
    view = data.data
    view[...] = 3.0
    assert (net.blobs["data"].data == 3.0).all()
    assert data.shape == (4, 5) and (data.num, data.channels, data.height, data.width) == (4, 5, 1, 1)
    assert data.count == 20
    data.reshape(2, 5)
    net.blobs["label"].reshape(2)
    net.reshape()
    assert net.blobs["ip2"].shape == (2, 3)
    net.forward()
    assert net.blobs["ip2"].data.shape == (2, 3)


def test_forward_all_pads_and_trims():
    net = build(MLP, caffe.TEST)
    x = np.random.default_rng(1).standard_normal((10, 5)).astype(np.float32)
    y = np.zeros(10, dtype=np.float32)
    out = net.forward_all(data=x, label=y, blobs=["ip2"])
    assert out["ip2"].shape == (10, 3)
    net.forward(data=x[8:10].repeat(2, axis=0), label=y[:4])
    np.testing.assert_allclose(out["ip2"][8], net.blobs["ip2"].data[0], rtol=1e-5)


def test_set_mode_gpu_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(caffe.DeviceError, match="no CUDA device"):
        caffe.set_mode_gpu()


# ---------------------------------------------------------------------------- Python and MemoryData layers
PY = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "py" type: "Python" bottom: "x" top: "y"
        python_param { module: "pylayers.scale_layers" layer: "TimesParam" param_str: "3" } }
layer { name: "ls" type: "Python" bottom: "y" top: "z"
        python_param { module: "pylayers.scale_layers" layer: "LearnedScale" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "x" top: "loss" }
"""


def test_python_layers_forward_backward_and_blobs():
    net = build("force_backward: true\n" + PY, caffe.TRAIN)
    py = net.layer_dict["py"]
    assert py.k == 3.0 and py.setup_phase == caffe.TRAIN and py.type == "Python"
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["x"].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs["z"].data, 6 * x)
    assert list(net.params) == ["ls"]
    net.backward()
    # loss = sum((6x - x)^2) / (2*2); d/dx through both paths
    dz = (6 * x - x) / 2
    np.testing.assert_allclose(net.params["ls"][0].diff, np.sum(dz * 3 * x, axis=0), rtol=1e-5)
    np.testing.assert_allclose(net.blobs["x"].diff, dz * 6 - dz, rtol=1e-5)


def test_in_place_python_layers_backward_like_separate_ones():
    """A Python layer whose top is its bottom (TimesParam: its backward needs only diffs) reads the top diff and
    writes the bottom diff in the same buffer, as in Caffe (it used to get zeros: every gradient below it
    vanished, silently)."""
    grads = []
    for top in ("t", "z"):
        net = build(
            f"""force_backward: true
            layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
            layer {{ name: "ls" type: "Python" bottom: "x" top: "z"
                    python_param {{ module: "pylayers.scale_layers" layer: "LearnedScale" }} }}
            layer {{ name: "py" type: "Python" bottom: "z" top: "{top}"
                    python_param {{ module: "pylayers.scale_layers" layer: "TimesParam" param_str: "3" }} }}
            layer {{ name: "loss" type: "EuclideanLoss" bottom: "{top}" bottom: "x" top: "loss" }}""",
            caffe.TRAIN,
        )
        net.blobs["x"].data[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
        net.forward()
        net.backward()
        grads.append((net.params["ls"][0].diff.copy(), net.blobs["x"].diff.copy()))
    (separate_w, separate_x), (in_place_w, in_place_x) = grads
    assert np.abs(separate_w).min() > 0
    np.testing.assert_array_equal(in_place_w, separate_w)
    np.testing.assert_array_equal(in_place_x, separate_x)


def test_python_layer_errors_name_the_layer():
    with pytest.raises(caffe.LayerError, match=r"layer 'p' .*cannot import Python module 'no_such_module'"):
        build('layer { name: "p" type: "Python" python_param { module: "no_such_module" layer: "X" } }')
    with pytest.raises(caffe.LayerError, match="has no class 'Nope'"):
        build('layer { name: "p" type: "Python" python_param { module: "pylayers.scale_layers" layer: "Nope" } }')
    with pytest.raises(caffe.LayerError, match="layer 'p' \\(Python\\) setup failed: bad param_str"):
        build('layer { name: "p" type: "Python" python_param { module: "pylayers.scale_layers" layer: "Broken" } }')


def test_memory_data_and_set_input_arrays():
    net = build(
        """
        layer { name: "m" type: "MemoryData" top: "data" top: "label"
                memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
        """,
        caffe.TEST,
    )
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    labels = np.array([1, 2, 3, 4], dtype=np.float32)
    net.set_input_arrays(data, labels)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [1, 2])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[2:])
    with pytest.raises(caffe.LayerError, match="multiple of batch size"):
        net.set_input_arrays(data[:3], labels[:3])
    with pytest.raises(caffe.LayerError, match="must be float32"):
        net.set_input_arrays(data.astype(np.float64), labels)


def test_forward_backward_all_in_batches():
    net = build("force_backward: true\n" + MLP, caffe.TEST)
    x = np.random.default_rng(2).standard_normal((6, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2], dtype=np.float32)
    outs, diffs = net.forward_backward_all(data=x, label=y)
    assert diffs["data"].shape == (6, 5) and outs["loss"].shape == (2,)  # one loss per batch of 4
    net.forward(data=x[:4], label=y[:4])
    np.testing.assert_allclose(net.backward()["data"], diffs["data"][:4], rtol=1e-5)


def test_share_with_uses_the_other_nets_parameters():
    train, test = build(MLP, caffe.TRAIN), build(MLP, caffe.TEST)
    test.share_with(train)
    train.params["ip1"][0].data[...] = 0.5
    assert (test.params["ip1"][0].data == 0.5).all()
    fill_mlp(test)
    fill_mlp(train)
    np.testing.assert_allclose(test.forward()["loss"], train.forward()["loss"], rtol=1e-6)
