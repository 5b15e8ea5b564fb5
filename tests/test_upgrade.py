"""Tests for caffe.upgrade: V0/V1 nets, data transformation, inputs, BatchNorm and solver upgrades."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from caffe import upgrade
from caffe.errors import NetError, SolverError
from caffe.proto import caffe_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("CAFFE_TEST_ASSETS", ROOT.parent / "shared" / "assets"))
DATA = Path(__file__).resolve().parent / "data" / "upgrade"

V1_DIRS = ("lenet_mnist_v1format_2014", "cifar10_quick_v1format_2014", "cifar10_full_v1format_2014")
V1_NET_FILES = (
    "lenet_mnist_v1format_2014/lenet.prototxt",
    "lenet_mnist_v1format_2014/lenet_train_test.prototxt",
    "cifar10_quick_v1format_2014/cifar10_quick.prototxt",
    "cifar10_quick_v1format_2014/cifar10_quick_train_test.prototxt",
    "cifar10_full_v1format_2014/cifar10_full.prototxt",
    "cifar10_full_v1format_2014/cifar10_full_train_test.prototxt",
)
V1_SOLVER_FILES = (
    "lenet_mnist_v1format_2014/lenet_solver.prototxt",
    "cifar10_quick_v1format_2014/cifar10_quick_solver.prototxt",
    "cifar10_quick_v1format_2014/cifar10_quick_solver_lr1.prototxt",
    "cifar10_full_v1format_2014/cifar10_full_solver.prototxt",
)
V1_CAFFEMODELS = (
    "lenet_mnist_v1format_2014/lenet_iter_10000.caffemodel",
    "cifar10_quick_v1format_2014/cifar10_quick_iter_4000.caffemodel",
    "cifar10_quick_v1format_2014/cifar10_quick_iter_5000.caffemodel",
    "cifar10_full_v1format_2014/cifar10_full_iter_70000.caffemodel",
)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def asset(relative: str) -> Path:
    """Path of a test asset; a missing asset fails the test (never skips it)."""
    path = ASSETS / relative
    if not path.exists():
        pytest.fail(f"missing test asset {path} (set CAFFE_TEST_ASSETS)")
    return path


def model(relative: str) -> Path:
    return asset(f"models/{relative}")


def parse_net(text: str) -> pb.NetParameter:
    return text_format.Parse(text, pb.NetParameter())


def read_net(path: Path) -> pb.NetParameter:
    return parse_net(path.read_text())


def read_binary_net(path: Path) -> pb.NetParameter:
    net = pb.NetParameter()
    net.ParseFromString(path.read_bytes())
    return net


def as_text(message) -> str:
    return text_format.MessageToString(message)


def assert_same(actual, expected) -> None:
    """Compare two messages through their text form, for a readable diff on failure."""
    assert as_text(actual) == as_text(expected)


def v1_type(name: str) -> int:
    return pb.V1LayerParameter.LayerType.Value(name)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def test_every_v1_layer_type_has_a_name():
    assert set(upgrade.V1_LAYER_TYPES) == set(pb.V1LayerParameter.LayerType.keys())
    assert upgrade.upgrade_v1_layer_type(v1_type("NONE")) == ""
    assert upgrade.upgrade_v1_layer_type(v1_type("SOFTMAX_LOSS")) == "SoftmaxWithLoss"
    assert upgrade.upgrade_v1_layer_type(v1_type("IM2COL")) == "Im2col"
    assert upgrade.upgrade_v1_layer_type(v1_type("TANH")) == "TanH"


def test_unknown_v1_layer_type_value():
    with pytest.raises(NetError, match="unknown V1 layer type"):
        upgrade.upgrade_v1_layer_type(999)


def test_v1_copied_params_are_all_the_v1_param_messages():
    v1_params = {f.name for f in pb.V1LayerParameter.DESCRIPTOR.fields if f.name.endswith("_param") and f.message_type}
    assert set(upgrade.V1_COPIED_PARAMS) == v1_params
    current = set(pb.LayerParameter.DESCRIPTOR.fields_by_name)
    assert v1_params <= current


def test_v0_tables_point_at_real_fields():
    for v1_name in upgrade.V0_LAYER_TYPES.values():
        pb.V1LayerParameter.LayerType.Value(v1_name)
    for field, targets in upgrade.V0_TYPED_FIELDS.items():
        assert field in pb.V0LayerParameter.DESCRIPTOR.fields_by_name
        for v0_type, path in targets.items():
            assert v0_type in upgrade.V0_LAYER_TYPES
            message = pb.V1LayerParameter()
            *parents, leaf = path.split(".")
            for name in parents:
                message = getattr(message, name)
            assert leaf in message.DESCRIPTOR.fields_by_name, path
    assert upgrade.upgrade_v0_layer_type("conv") == v1_type("CONVOLUTION")
    assert upgrade.upgrade_v0_layer_type("images") == v1_type("IMAGE_DATA")
    with pytest.raises(NetError, match="'padding'"):
        upgrade.upgrade_v0_layer_type("padding")


# ---------------------------------------------------------------------------------------------
# V1 assets
# ---------------------------------------------------------------------------------------------


def test_v1_asset_folders_hold_the_expected_files():
    for directory in V1_DIRS:
        found = {p.name for p in model(directory).glob("*.prototxt")}
        expected = {Path(f).name for f in V1_NET_FILES + V1_SOLVER_FILES if f.startswith(directory + "/")}
        assert found == expected, directory


@pytest.mark.parametrize("relative", V1_NET_FILES)
def test_v1_prototxt_upgrade(relative):
    original = read_net(model(relative))
    assert len(original.layers) > 0 and len(original.layer) == 0
    assert upgrade.net_needs_upgrade(original)
    assert upgrade.net_needs_v1_to_v2_upgrade(original)
    assert not upgrade.net_needs_v0_to_v1_upgrade(original)

    net = pb.NetParameter()
    net.CopyFrom(original)
    assert upgrade.upgrade_net_as_needed(net, relative) is net
    assert not upgrade.net_needs_upgrade(net)
    assert len(net.layers) == 0
    assert not net.input and not net.input_dim and not net.input_shape
    assert net.name == original.name

    layers = list(net.layer)
    if original.input:
        input_layer = layers.pop(0)
        assert (input_layer.name, input_layer.type) == ("input", "Input")
        assert list(input_layer.top) == list(original.input)
        assert [list(s.dim) for s in input_layer.input_param.shape] == [list(original.input_dim)]
    assert len(layers) == len(original.layers)
    for old, new in zip(original.layers, layers):
        assert new.name == old.name
        assert new.type == upgrade.V1_LAYER_TYPES[pb.V1LayerParameter.LayerType.Name(old.type)]
        assert list(new.bottom) == list(old.bottom) and list(new.top) == list(old.top)
        assert [spec.lr_mult for spec in new.param] == list(old.blobs_lr)
        decays = [spec.decay_mult for spec in new.param if spec.HasField("decay_mult")]
        assert decays == list(old.weight_decay)
        assert list(new.include) == list(old.include)
        for field in upgrade.V1_COPIED_PARAMS:
            assert new.HasField(field) == old.HasField(field)
            if old.HasField(field):
                assert getattr(new, field) == getattr(old, field)

    again = pb.NetParameter()
    again.CopyFrom(net)
    upgrade.upgrade_net_as_needed(again, relative)
    assert again == net
    assert parse_net(as_text(net)) == net


def test_lenet_train_test_values():
    net = upgrade.upgrade_net_as_needed(read_net(model(V1_NET_FILES[1])))
    assert [layer.type for layer in net.layer] == [
        "Data",
        "Data",
        "Convolution",
        "Pooling",
        "Convolution",
        "Pooling",
        "InnerProduct",
        "ReLU",
        "InnerProduct",
        "Accuracy",
        "SoftmaxWithLoss",
    ]
    train, test = net.layer[0], net.layer[1]
    assert [rule.phase for rule in train.include] == [pb.TRAIN]
    assert [rule.phase for rule in test.include] == [pb.TEST]
    assert train.data_param.source == "examples/mnist/mnist_train_lmdb"
    assert train.data_param.backend == pb.DataParameter.LMDB
    assert train.data_param.batch_size == 64 and test.data_param.batch_size == 100
    assert train.transform_param.scale == pytest.approx(0.00390625)
    conv1 = net.layer[2]
    assert [(p.lr_mult, p.HasField("decay_mult")) for p in conv1.param] == [(1.0, False), (2.0, False)]
    assert conv1.convolution_param.num_output == 20
    assert list(conv1.convolution_param.kernel_size) == [5]
    assert conv1.convolution_param.weight_filler.type == "xavier"
    assert net.layer[3].pooling_param.pool == pb.PoolingParameter.MAX
    assert net.layer[6].inner_product_param.num_output == 500
    assert list(net.layer[-1].bottom) == ["ip2", "label"]


def test_cifar10_full_values():
    net = upgrade.upgrade_net_as_needed(read_net(model(V1_NET_FILES[5])))
    by_name = {layer.name: layer for layer in net.layer if layer.name != "cifar"}
    ip1 = by_name["ip1"]
    assert [(p.lr_mult, p.decay_mult) for p in ip1.param] == [(1.0, 250.0), (2.0, 0.0)]
    assert len(by_name["conv3"].param) == 0
    norm1 = by_name["norm1"]
    assert norm1.type == "LRN"
    assert norm1.lrn_param.norm_region == pb.LRNParameter.WITHIN_CHANNEL
    assert norm1.lrn_param.alpha == pytest.approx(5e-05)
    assert by_name["pool2"].pooling_param.pool == pb.PoolingParameter.AVE
    assert by_name["loss"].type == "SoftmaxWithLoss"
    assert net.layer[0].transform_param.mean_file == "examples/cifar10/mean.binaryproto"


@pytest.mark.parametrize(
    ("relative", "reference", "dims"),
    [
        (V1_NET_FILES[0], "mnist/lenet.prototxt", [64, 1, 28, 28]),
        (V1_NET_FILES[1], "mnist/lenet_train_test.prototxt", None),
        (V1_NET_FILES[2], "cifar10/cifar10_quick.prototxt", [1, 3, 32, 32]),
        (V1_NET_FILES[3], "cifar10/cifar10_quick_train_test.prototxt", None),
        (V1_NET_FILES[4], "cifar10/cifar10_full.prototxt", [1, 3, 32, 32]),
        (V1_NET_FILES[5], "cifar10/cifar10_full_train_test.prototxt", None),
    ],
)
def test_v1_upgrade_matches_caffes_own_conversion(relative, reference, dims):
    """Caffe's examples were converted with its upgrade tool; ours must give the same nets.

    Known hand edits in Caffe's copies: the Input layer is named "data", and the CIFAR-10 data
    layers read LMDB instead of LevelDB.
    """
    net = upgrade.upgrade_net_as_needed(read_net(model(relative)), relative)
    expected = read_net(asset(f"caffe-ref/examples/{reference}"))
    if dims is not None:
        assert (net.layer[0].name, list(net.layer[0].input_param.shape[0].dim)) == ("input", dims)
        net.layer[0].name = "data"
    if reference.startswith("cifar10/") and dims is None:
        for ours, theirs in zip(net.layer[:2], expected.layer[:2]):
            assert ours.data_param.source.endswith("_leveldb")
            ours.data_param.CopyFrom(theirs.data_param)
    assert_same(net, expected)


def test_lenet_deploy_equals_new_format_asset():
    net = upgrade.upgrade_net_as_needed(read_net(model(V1_NET_FILES[0])))
    expected = read_net(model("lenet_mnist_newformat/lenet.prototxt"))
    net.layer[0].name = expected.layer[0].name
    assert_same(net, expected)


@pytest.mark.parametrize("relative", V1_CAFFEMODELS)
def test_v1_caffemodel_upgrade_keeps_blobs(relative):
    original = read_binary_net(model(relative))
    assert len(original.layers) > 0
    assert upgrade.net_needs_upgrade(original)
    net = pb.NetParameter()
    net.CopyFrom(original)
    upgrade.upgrade_net_as_needed(net, relative)
    assert not upgrade.net_needs_upgrade(net)
    assert len(net.layers) == 0
    assert [layer.name for layer in net.layer] == [layer.name for layer in original.layers]
    total = 0
    for old, new in zip(original.layers, net.layer):
        assert new.type == upgrade.V1_LAYER_TYPES[pb.V1LayerParameter.LayerType.Name(old.type)]
        assert len(new.blobs) == len(old.blobs)
        for old_blob, new_blob in zip(old.blobs, new.blobs):
            assert (new_blob.num, new_blob.channels, new_blob.height, new_blob.width) == (
                old_blob.num,
                old_blob.channels,
                old_blob.height,
                old_blob.width,
            )
            values = np.asarray(new_blob.data, dtype=np.float32)
            assert values.size == old_blob.num * old_blob.channels * old_blob.height * old_blob.width
            np.testing.assert_array_equal(values, np.asarray(old_blob.data, dtype=np.float32))
            total += values.size
        assert [p.lr_mult for p in new.param] == list(old.blobs_lr)
        assert list(new.loss_weight) == list(old.loss_weight)
    assert total > 0
    assert [layer.type for layer in net.layer if layer.blobs][:1] == ["Convolution"]
    # The upgraded weights survive a binary round trip.
    assert pb.NetParameter.FromString(net.SerializeToString()) == net


def test_lenet_caffemodel_weight_count():
    net = upgrade.upgrade_net_as_needed(read_binary_net(model(V1_CAFFEMODELS[0])))
    sizes = {layer.name: [len(b.data) for b in layer.blobs] for layer in net.layer if layer.blobs}
    assert sizes == {"conv1": [500, 20], "conv2": [25000, 50], "ip1": [400000, 500], "ip2": [5000, 10]}


@pytest.mark.parametrize("relative", V1_SOLVER_FILES)
def test_v1_era_solvers_need_no_upgrade(relative):
    solver = text_format.Parse(model(relative).read_text(), pb.SolverParameter())
    before = pb.SolverParameter()
    before.CopyFrom(solver)
    assert not upgrade.solver_needs_type_upgrade(solver)
    assert upgrade.upgrade_solver_as_needed(solver, relative) == before


# ---------------------------------------------------------------------------------------------
# input fields
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dims"),
    [("det1", [1, 3, 12, 12]), ("det2", [1, 3, 24, 24]), ("det3", [1, 3, 48, 48]), ("det4", [1, 15, 24, 24])],
)
def test_mtcnn_input_fields_become_input_layer(name, dims):
    path = model(f"mtcnn_face_caffe/{name}.prototxt")
    original = read_net(path)
    assert list(original.input) == ["data"] and list(original.input_dim) == dims
    assert upgrade.net_needs_upgrade(original) and upgrade.net_needs_input_upgrade(original)
    assert not upgrade.net_needs_v1_to_v2_upgrade(original)

    net = upgrade.upgrade_net_as_needed(read_net(path), str(path))
    assert not upgrade.net_needs_upgrade(net)
    assert not net.input and not net.input_dim and not net.input_shape
    first = net.layer[0]
    assert (first.name, first.type, list(first.top), list(first.bottom)) == ("input", "Input", ["data"], [])
    assert [list(shape.dim) for shape in first.input_param.shape] == [dims]
    assert list(net.layer[1:]) == list(original.layer)


def test_det1_exact_text():
    net = upgrade.upgrade_net_as_needed(read_net(model("mtcnn_face_caffe/det1.prototxt")))
    assert as_text(net.layer[0]) == (
        'name: "input"\ntype: "Input"\ntop: "data"\ninput_param {\n  shape {\n'
        "    dim: 1\n    dim: 3\n    dim: 12\n    dim: 12\n  }\n}\n"
    )
    assert [layer.name for layer in net.layer[1:4]] == ["conv1", "PReLU1", "pool1"]


@pytest.mark.parametrize("name", ["mobilenet_deploy", "mobilenet_v2_deploy"])
def test_mobilenet_input_fields(name):
    net = read_net(model(f"mobilenet_caffe_shicai/{name}.prototxt"))
    count = len(net.layer)
    assert upgrade.net_needs_input_upgrade(net)
    upgrade.upgrade_net_as_needed(net, name)
    assert not upgrade.net_needs_upgrade(net)
    assert len(net.layer) == count + 1
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 3, 224, 224]]


def test_input_shape_and_multiple_inputs():
    net = parse_net(
        'input: "a" input_shape { dim: 2 dim: 3 } input: "b" input_shape { dim: 5 } '
        'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "c" }'
    )
    upgrade.upgrade_net_input(net)
    expected = parse_net(
        'layer { name: "input" type: "Input" top: "a" top: "b" '
        "  input_param { shape { dim: 2 dim: 3 } shape { dim: 5 } } } "
        'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "c" }'
    )
    assert_same(net, expected)


def test_two_inputs_from_input_dim():
    net = parse_net('input: "x" input: "y" input_dim: [1, 2, 3, 4, 5, 6, 7, 8]')
    upgrade.upgrade_net_input(net)
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert list(net.layer[0].top) == ["x", "y"]


def test_input_without_shape_is_dropped():
    """Old .caffemodel files list inputs without dims: the fields are just removed."""
    net = parse_net('input: "data" layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }')
    upgrade.upgrade_net_input(net)
    assert not net.input
    assert [layer.name for layer in net.layer] == ["relu"]


@pytest.mark.parametrize(
    "text",
    [
        'input: "x" input_dim: 1 input_dim: 2',
        'input: "x" input: "y" input_shape { dim: 1 }',
        'input: "x" input_shape { dim: 1 } input_dim: [1, 1, 1, 1]',
    ],
)
def test_inconsistent_input_fields(text):
    with pytest.raises(NetError, match=r"^deploy\.prototxt: "):
        upgrade.upgrade_net_input(parse_net(text), "deploy.prototxt")


# ---------------------------------------------------------------------------------------------
# V0 nets
# ---------------------------------------------------------------------------------------------


def test_v0_fixture_upgrades_to_hand_written_net(caplog):
    net = read_net(DATA / "v0_net.prototxt")
    assert upgrade.net_needs_v0_to_v1_upgrade(net) and upgrade.net_needs_upgrade(net)
    with caplog.at_level(logging.INFO, logger="caffe"):
        upgrade.upgrade_net_as_needed(net, "v0_net.prototxt")
    assert_same(net, read_net(DATA / "v0_net_upgraded.prototxt"))
    assert not upgrade.net_needs_upgrade(net)
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Successfully upgraded")]
    assert len(warnings) == 2
    assert "V0LayerParameter" in warnings[0] and "V1LayerParameter" in warnings[1]
    assert all("v0_net.prototxt" in message for message in warnings)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_v0_net_to_v1_step():
    net = read_net(DATA / "v0_net.prototxt")
    assert upgrade.upgrade_v0_net(net, "v0_net.prototxt") is True
    assert not upgrade.net_needs_v0_to_v1_upgrade(net)
    assert upgrade.net_needs_v1_to_v2_upgrade(net)
    names = [layer.name for layer in net.layers]
    assert "pad1" not in names and "pad2" not in names
    conv1 = net.layers[names.index("conv1")]
    assert conv1.type == v1_type("CONVOLUTION")
    assert list(conv1.bottom) == ["data"]
    assert list(conv1.convolution_param.pad) == [2]
    assert list(conv1.blobs_lr) == [1, 2] and list(conv1.weight_decay) == [1, 0]
    data = net.layers[0]
    assert data.type == v1_type("DATA")
    assert data.data_param.batch_size == 32 and data.transform_param.crop_size == 24
    assert not data.HasField("layer")


def test_v0_padding_fold_with_two_consumers_is_idempotent():
    net = parse_net(
        'input: "img" '
        'layers { layer { name: "pad" type: "padding" pad: 3 } bottom: "img" top: "padded" } '
        'layers { layer { name: "c1" type: "conv" num_output: 4 kernelsize: 7 } bottom: "padded" top: "c1" } '
        'layers { layer { name: "p1" type: "pool" pool: MAX kernelsize: 7 } bottom: "padded" top: "p1" }'
    )
    upgrade.upgrade_v0_padding_layers(net)
    expected = parse_net(
        'input: "img" '
        'layers { layer { name: "c1" type: "conv" num_output: 4 kernelsize: 7 pad: 3 } bottom: "img" top: "c1" } '
        'layers { layer { name: "p1" type: "pool" pool: MAX kernelsize: 7 pad: 3 } bottom: "img" top: "p1" }'
    )
    assert_same(net, expected)
    upgrade.upgrade_v0_padding_layers(net)
    assert_same(net, expected)


def test_v0_deploy_net_with_inputs():
    net = parse_net(
        'name: "deploy" input: "data" input_dim: [10, 3, 8, 8] '
        'layers { layer { name: "ip" type: "innerproduct" num_output: 2 } bottom: "data" top: "ip" } '
        'layers { layer { name: "prob" type: "softmax" } bottom: "ip" top: "prob" }'
    )
    upgrade.upgrade_net_as_needed(net, "deploy.prototxt")
    expected = parse_net(
        'name: "deploy" '
        'layer { name: "input" type: "Input" top: "data" input_param { shape { dim: [10, 3, 8, 8] } } } '
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } } '
        'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }'
    )
    assert_same(net, expected)


def test_v0_layer_parameter_for_data_layer_kinds():
    text = (
        'layers { layer { name: "img" type: "images" source: "list.txt" batchsize: 8 rand_skip: 2 '
        "  shuffle_images: true new_height: 40 new_width: 30 cropsize: 28 mirror: true } "
        '  top: "img" top: "img_label" } '
        'layers { layer { name: "win" type: "window_data" source: "windows.txt" batchsize: 4 meanfile: "m.bp" '
        "  det_fg_threshold: 0.25 det_bg_threshold: 0.75 det_fg_fraction: 0.5 det_context_pad: 16 "
        '  det_crop_mode: "square" } top: "win" top: "win_label" } '
        'layers { layer { name: "h5" type: "hdf5_data" source: "h5.txt" batchsize: 16 } top: "h5" } '
        'layers { layer { name: "cat" type: "concat" concat_dim: 1 } bottom: "img" bottom: "win" top: "cat" } '
        'layers { layer { name: "info" type: "infogain_loss" source: "H.bp" } bottom: "cat" bottom: "img_label" } '
        'layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "out.h5" } } '
        '  bottom: "h5" } '
        'layers { layer { name: "flat" type: "flatten" } bottom: "h5" top: "flat" }'
    )
    net = parse_net(text)
    assert upgrade.upgrade_v0_net(net) is True
    upgrade.upgrade_v1_net(net)
    expected = parse_net(
        'layer { name: "img" type: "ImageData" top: "img" top: "img_label" '
        "  transform_param { mirror: true crop_size: 28 } "
        '  image_data_param { source: "list.txt" batch_size: 8 rand_skip: 2 shuffle: true '
        "    new_height: 40 new_width: 30 } } "
        'layer { name: "win" type: "WindowData" top: "win" top: "win_label" '
        '  transform_param { mean_file: "m.bp" } '
        '  window_data_param { source: "windows.txt" batch_size: 4 fg_threshold: 0.25 bg_threshold: 0.75 '
        '    fg_fraction: 0.5 context_pad: 16 crop_mode: "square" } } '
        'layer { name: "h5" type: "HDF5Data" top: "h5" hdf5_data_param { source: "h5.txt" batch_size: 16 } } '
        'layer { name: "cat" type: "Concat" bottom: "img" bottom: "win" top: "cat" concat_param { concat_dim: 1 } } '
        'layer { name: "info" type: "InfogainLoss" bottom: "cat" bottom: "img_label" '
        '  infogain_loss_param { source: "H.bp" } } '
        'layer { name: "out" type: "HDF5Output" bottom: "h5" hdf5_output_param { file_name: "out.h5" } } '
        'layer { name: "flat" type: "Flatten" bottom: "h5" top: "flat" }'
    )
    assert_same(net, expected)


def test_v0_pool_methods():
    for method in ("MAX", "AVE", "STOCHASTIC"):
        connection = text_format.Parse(
            f'layer {{ name: "p" type: "pool" pool: {method} kernelsize: 2 stride: 2 }} bottom: "x" top: "p"',
            pb.V1LayerParameter(),
        )
        out = pb.V1LayerParameter()
        assert upgrade.upgrade_v0_layer_parameter(connection, out) is True
        assert pb.PoolingParameter.PoolMethod.Name(out.pooling_param.pool) == method
        assert (out.pooling_param.kernel_size, out.pooling_param.stride) == (2, 2)


def test_v0_parameter_that_does_not_apply_is_reported(caplog):
    connection = text_format.Parse(
        'layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "x"', pb.V1LayerParameter()
    )
    out = pb.V1LayerParameter()
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert upgrade.upgrade_v0_layer_parameter(connection, out, "old.prototxt") is False
    assert out.type == v1_type("RELU") and out.name == "r"
    assert not out.HasField("inner_product_param") and not out.HasField("convolution_param")
    assert any("num_output" in r.getMessage() and "'r'" in r.getMessage() for r in caplog.records)


def test_v0_net_with_problems_logs_error_and_continues(caplog):
    net = parse_net(
        'layers { layer { name: "d" type: "data" source: "s" batchsize: 1 } top: "d" } '
        'layers { layer { name: "r" type: "relu" kernelsize: 3 } bottom: "d" top: "d" }'
    )
    with caplog.at_level(logging.INFO, logger="caffe"):
        upgrade.upgrade_net_as_needed(net, "old.prototxt")
    assert [layer.type for layer in net.layer] == ["Data", "ReLU"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("kernelsize" in m for m in errors)
    assert any("continuing anyway" in m and "old.prototxt" in m for m in errors)


def test_unknown_v0_layer_type():
    net = parse_net('layers { layer { name: "mystery" type: "warp" } bottom: "a" top: "b" } input: "a"')
    with pytest.raises(NetError) as info:
        upgrade.upgrade_net_as_needed(net, "old.prototxt")
    message = str(info.value)
    assert message.startswith("old.prototxt: ") and "'mystery'" in message and "'warp'" in message
    assert "\n" not in message


def test_padding_into_non_conv_layer():
    net = parse_net(
        'input: "a" layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "a" top: "p" } '
        'layers { layer { name: "act" type: "relu" } bottom: "p" top: "r" }'
    )
    with pytest.raises(NetError, match=r"^old\.prototxt: layer 'act' \(relu\): only a conv or pool"):
        upgrade.upgrade_net_as_needed(net, "old.prototxt")


def test_padding_consumer_with_two_bottoms():
    net = parse_net(
        'input: "a" input: "b" layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "a" top: "p" } '
        'layers { layer { name: "c" type: "conv" } bottom: "p" bottom: "b" top: "c" }'
    )
    with pytest.raises(NetError, match=r"'c'.*exactly one bottom"):
        upgrade.upgrade_v0_padding_layers(net, "old.prototxt")


def test_v0_unknown_bottom():
    net = parse_net('layers { layer { name: "r" type: "relu" } bottom: "nowhere" top: "r" }')
    with pytest.raises(NetError, match=r"'r'.*bottom 'nowhere'"):
        upgrade.upgrade_net_as_needed(net, "old.prototxt")


def test_v0_mixed_with_v1_layers():
    net = parse_net(
        'layers { layer { name: "d" type: "data" source: "s" } top: "d" } '
        'layers { name: "relu" type: RELU bottom: "d" top: "d" }'
    )
    with pytest.raises(NetError, match=r"^mixed\.prototxt: layer 'relu' is a V1"):
        upgrade.upgrade_net_as_needed(net, "mixed.prototxt")


def test_v0_mixed_with_current_layers():
    net = parse_net(
        'layers { layer { name: "d" type: "data" source: "s" } top: "d" } '
        'layer { name: "relu" type: "ReLU" bottom: "d" top: "d" }'
    )
    with pytest.raises(NetError, match=r"^mixed\.prototxt: .*'relu'"):
        upgrade.upgrade_net_as_needed(net, "mixed.prototxt")


# ---------------------------------------------------------------------------------------------
# data transformation fields
# ---------------------------------------------------------------------------------------------


def test_data_transformation_upgrade():
    net = parse_net(
        'layers { name: "d" type: DATA top: "d" '
        '  data_param { source: "db" batch_size: 5 scale: 0.5 mean_file: "m.bp" crop_size: 7 mirror: true } } '
        'layers { name: "i" type: IMAGE_DATA top: "i" image_data_param { source: "l.txt" crop_size: 3 } } '
        'layers { name: "w" type: WINDOW_DATA top: "w" window_data_param { source: "w.txt" mirror: false } } '
        'layers { name: "c" type: CONVOLUTION bottom: "d" top: "c" convolution_param { num_output: 1 } }'
    )
    assert upgrade.net_needs_data_upgrade(net)
    upgrade.upgrade_net_data_transformation(net)
    assert not upgrade.net_needs_data_upgrade(net)
    expected = parse_net(
        'layers { name: "d" type: DATA top: "d" data_param { source: "db" batch_size: 5 } '
        '  transform_param { scale: 0.5 mean_file: "m.bp" crop_size: 7 mirror: true } } '
        'layers { name: "i" type: IMAGE_DATA top: "i" image_data_param { source: "l.txt" } '
        "  transform_param { crop_size: 3 } } "
        'layers { name: "w" type: WINDOW_DATA top: "w" window_data_param { source: "w.txt" } '
        "  transform_param { mirror: false } } "
        'layers { name: "c" type: CONVOLUTION bottom: "d" top: "c" convolution_param { num_output: 1 } }'
    )
    assert_same(net, expected)


def test_data_transformation_upgrade_through_upgrade_net_as_needed(caplog):
    net = parse_net(
        'name: "old" layers { name: "d" type: DATA top: "d" top: "l" include { phase: TRAIN } '
        '  data_param { source: "db" batch_size: 5 scale: 0.25 } }'
    )
    with caplog.at_level(logging.INFO, logger="caffe"):
        upgrade.upgrade_net_as_needed(net, "old.prototxt")
    expected = parse_net(
        'name: "old" layer { name: "d" type: "Data" top: "d" top: "l" include { phase: TRAIN } '
        '  transform_param { scale: 0.25 } data_param { source: "db" batch_size: 5 } }'
    )
    assert_same(net, expected)
    done = [r for r in caplog.records if r.getMessage().startswith("Successfully")]
    assert len(done) == 2
    assert "transform" in done[0].getMessage()


def test_data_fields_of_non_data_layers_are_ignored():
    net = parse_net('layers { name: "c" type: CONVOLUTION data_param { scale: 2 } }')
    assert not upgrade.net_needs_data_upgrade(net)


# ---------------------------------------------------------------------------------------------
# V1 layers in detail
# ---------------------------------------------------------------------------------------------


BLOB_VALUES = ", ".join(str(i + 0.5) for i in range(21))
BLOB_TEXT = "blobs { shape { dim: 7 dim: 3 } data: [" + BLOB_VALUES + "] }"


def test_v1_layer_param_specs_rules_and_loss_weight():
    v1 = text_format.Parse(
        'name: "ip" type: INNER_PRODUCT bottom: "x" top: "y" '
        'param: "w_shared" param: "b_shared" blob_share_mode: PERMISSIVE '
        "blobs_lr: 1 blobs_lr: 2 blobs_lr: 3 weight_decay: 0.5 loss_weight: 0.1 "
        'include { phase: TEST stage: "deploy" } exclude { min_level: 2 } '
        "inner_product_param { num_output: 7 axis: 2 } " + BLOB_TEXT,
        pb.V1LayerParameter(),
    )
    out = pb.LayerParameter()
    assert upgrade.upgrade_v1_layer(v1, out) is True
    expected = text_format.Parse(
        'name: "ip" type: "InnerProduct" bottom: "x" top: "y" loss_weight: 0.1 '
        'param { name: "w_shared" share_mode: PERMISSIVE lr_mult: 1 decay_mult: 0.5 } '
        'param { name: "b_shared" lr_mult: 2 } param { lr_mult: 3 } '
        'include { phase: TEST stage: "deploy" } exclude { min_level: 2 } '
        "inner_product_param { num_output: 7 axis: 2 } " + BLOB_TEXT,
        pb.LayerParameter(),
    )
    assert_same(out, expected)


def test_v1_layer_copies_every_param_message():
    v1 = pb.V1LayerParameter(name="all", type=v1_type("SLICE"))
    for field in upgrade.V1_COPIED_PARAMS:
        param = getattr(v1, field)
        param.SetInParent()
    v1.slice_param.slice_point.extend([1, 3])
    v1.threshold_param.threshold = 0.3
    v1.power_param.power = 2
    out = pb.LayerParameter()
    upgrade.upgrade_v1_layer(v1, out)
    for field in upgrade.V1_COPIED_PARAMS:
        assert out.HasField(field), field
        assert getattr(out, field) == getattr(v1, field)
    assert out.type == "Slice"


def test_v1_layer_with_v0_part_is_reported(caplog):
    v1 = text_format.Parse('name: "r" type: RELU layer { name: "r" type: "relu" }', pb.V1LayerParameter())
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert upgrade.upgrade_v1_layer(v1, pb.LayerParameter(), "x.prototxt") is False
    assert "V0" in caplog.records[0].getMessage()


def test_v1_and_current_layers_mixed():
    net = parse_net(
        'layers { name: "old" type: RELU bottom: "a" top: "a" } layer { name: "new" type: "ReLU" bottom: "a" top: "a" }'
    )
    assert upgrade.net_needs_upgrade(net)
    with pytest.raises(NetError, match=r"^mixed\.prototxt: refusing .*'new'.*'old'"):
        upgrade.upgrade_net_as_needed(net, "mixed.prototxt")


def test_v1_net_keeps_net_level_fields():
    net = parse_net(
        'name: "n" force_backward: true debug_info: true state { phase: TEST level: 3 } '
        'layers { name: "r" type: RELU bottom: "a" top: "b" }'
    )
    assert upgrade.upgrade_v1_net(net) is True
    expected = parse_net(
        'name: "n" force_backward: true debug_info: true state { phase: TEST level: 3 } '
        'layer { name: "r" type: "ReLU" bottom: "a" top: "b" }'
    )
    assert_same(net, expected)


# ---------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------


def test_batchnorm_upgrade():
    net = parse_net(
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" '
        '  param { lr_mult: 1 decay_mult: 1 name: "mean" } param { lr_mult: 1 } param { lr_mult: 1 } } '
        'layer { name: "bn_ok" type: "BatchNorm" bottom: "x" top: "x" } '
        'layer { name: "conv" type: "Convolution" bottom: "x" top: "y" param { lr_mult: 1 } param { lr_mult: 2 } '
        "  param { lr_mult: 3 } }"
    )
    assert upgrade.net_needs_batchnorm_upgrade(net) and upgrade.net_needs_upgrade(net)
    upgrade.upgrade_net_as_needed(net, "bn.prototxt")
    assert not upgrade.net_needs_upgrade(net)
    expected = parse_net(
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" '
        '  param { lr_mult: 0 decay_mult: 0 name: "mean" } param { lr_mult: 0 decay_mult: 0 } '
        "  param { lr_mult: 0 decay_mult: 0 } } "
        'layer { name: "bn_ok" type: "BatchNorm" bottom: "x" top: "x" } '
        'layer { name: "conv" type: "Convolution" bottom: "x" top: "y" param { lr_mult: 1 } param { lr_mult: 2 } '
        "  param { lr_mult: 3 } }"
    )
    assert_same(net, expected)


def test_batchnorm_with_other_param_count_is_left_alone():
    net = parse_net('layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } }')
    assert not upgrade.net_needs_batchnorm_upgrade(net)


def test_open_nsfw_batchnorm_layers_are_already_frozen():
    """open_nsfw's 53 BatchNorm layers declare three param specs, all with lr_mult 0 and decay_mult 0.

    Caffe's count-only check would still report them as needing the upgrade (which then changes
    nothing); ours reports them as current.
    """
    net = read_net(model("open_nsfw_resnet50_1by2/deploy.prototxt"))
    batchnorms = [layer for layer in net.layer if layer.type == "BatchNorm"]
    assert len(batchnorms) == 53
    assert all(len(layer.param) == 3 for layer in batchnorms)
    assert not upgrade.net_needs_batchnorm_upgrade(net)
    assert not upgrade.net_needs_upgrade(net)
    before = pb.NetParameter()
    before.CopyFrom(net)
    upgrade.upgrade_net_batchnorm(net)
    assert net == before


def test_caffe_example_batchnorm_gets_decay_mult_zero(caplog):
    """Caffe's own cifar10_full_sigmoid_train_test_bn declares ``param { lr_mult: 0 }`` three times:
    decay_mult keeps its default 1, so even this current example goes through the BatchNorm upgrade."""
    relative = "caffe-ref/examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt"
    original = read_net(asset(relative))
    assert upgrade.net_needs_upgrade(original) and upgrade.net_needs_batchnorm_upgrade(original)
    assert not upgrade.net_needs_v1_to_v2_upgrade(original) and not upgrade.net_needs_input_upgrade(original)
    net = pb.NetParameter()
    net.CopyFrom(original)
    with caplog.at_level(logging.INFO, logger="caffe"):
        upgrade.upgrade_net_as_needed(net, relative)
    assert not upgrade.net_needs_upgrade(net)
    [record] = [r for r in caplog.records if r.getMessage().startswith("Successfully")]
    assert "BatchNorm" in record.getMessage()
    changed = 0
    for old, new in zip(original.layer, net.layer):
        if old.type == "BatchNorm":
            assert [(p.lr_mult, p.decay_mult) for p in new.param] == [(0.0, 0.0)] * 3
            changed += 1
        else:
            assert new == old
    assert changed == 3


# ---------------------------------------------------------------------------------------------
# current format is left alone
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative",
    [
        "models/lenet_mnist_newformat/lenet.prototxt",
        "models/squeezenet_v1.1/deploy.prototxt",
        "caffe-ref/examples/mnist/lenet_train_test.prototxt",
        "models/open_nsfw_resnet50_1by2/deploy.prototxt",
        "caffe-ref/examples/cifar10/cifar10_full_train_test.prototxt",
    ],
)
def test_current_format_is_unchanged(relative, caplog):
    net = read_net(asset(relative))
    before = pb.NetParameter()
    before.CopyFrom(net)
    assert not upgrade.net_needs_upgrade(net)
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert upgrade.upgrade_net_as_needed(net, relative) == before
    assert not caplog.records


def test_current_format_caffemodel_is_unchanged():
    net = read_binary_net(model("lenet_mnist_newformat/lenet_iter_10000.caffemodel"))
    assert not upgrade.net_needs_upgrade(net)


# ---------------------------------------------------------------------------------------------
# solver
# ---------------------------------------------------------------------------------------------

SOLVER_TEXT = (
    'net: "examples/mnist/lenet_train_test.prototxt" test_iter: 100 test_interval: 500 base_lr: 0.01 '
    'momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75 max_iter: 10000 '
    'snapshot_prefix: "examples/mnist/lenet" solver_mode: GPU '
)


@pytest.mark.parametrize(
    ("enum", "name"),
    [
        ("SGD", "SGD"),
        ("NESTEROV", "Nesterov"),
        ("ADAGRAD", "AdaGrad"),
        ("RMSPROP", "RMSProp"),
        ("ADADELTA", "AdaDelta"),
        ("ADAM", "Adam"),
    ],
)
def test_solver_type_upgrade(enum, name):
    solver = text_format.Parse(SOLVER_TEXT + f"solver_type: {enum}", pb.SolverParameter())
    assert upgrade.solver_needs_type_upgrade(solver)
    assert upgrade.upgrade_solver_type(solver) is True
    expected = text_format.Parse(SOLVER_TEXT + f'type: "{name}"', pb.SolverParameter())
    assert_same(solver, expected)
    assert not upgrade.solver_needs_type_upgrade(solver)
    assert upgrade.upgrade_solver_type(solver) is False


def test_upgrade_solver_as_needed_logs(caplog):
    solver = text_format.Parse(SOLVER_TEXT + "solver_type: ADAM", pb.SolverParameter())
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert upgrade.upgrade_solver_as_needed(solver, "adam_solver.prototxt") is solver
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    [record] = [r for r in caplog.records if r.getMessage().startswith("Successfully")]
    assert "adam_solver.prototxt" in record.getMessage() and "solver_type" in record.getMessage()


def test_conflicting_solver_type_and_enum():
    solver = text_format.Parse(SOLVER_TEXT + 'solver_type: ADAM type: "SGD"', pb.SolverParameter())
    with pytest.raises(SolverError, match=r"^s\.prototxt: .*ADAM.*SGD"):
        upgrade.upgrade_solver_as_needed(solver, "s.prototxt")


def test_consistent_solver_type_and_enum():
    solver = text_format.Parse(SOLVER_TEXT + 'solver_type: NESTEROV type: "Nesterov"', pb.SolverParameter())
    upgrade.upgrade_solver_as_needed(solver)
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")


def test_explicit_sgd_enum_sets_type():
    """``solver_type: SGD`` is the enum's default value but still counts as set."""
    solver = text_format.Parse("solver_type: SGD", pb.SolverParameter())
    upgrade.upgrade_solver_as_needed(solver)
    assert solver.HasField("type") and solver.type == "SGD"
