"""Caffe's file formats: every asset prototxt/caffemodel reads (old formats upgraded), bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ASSETS, asset

import caffe
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_binary, read_net_param, read_net_param_binary, read_solver_param, to_text
from caffe.weights import blob_proto_to_array

SSD = "models/res10_ssd_face_prototxt_only/deploy.prototxt"


def _all(pattern: str) -> list[Path]:
    found = sorted(ASSETS.rglob(pattern))
    assert found, f"no {pattern} under {ASSETS}"
    return found


def _is_solver(path: Path) -> bool:
    return "solver" in path.name


@pytest.mark.parametrize("path", _all("*.prototxt"), ids=lambda p: str(p.relative_to(ASSETS)))
def test_every_prototxt_parses(path: Path):
    if _is_solver(path):
        solver = read_solver_param(path)
        assert solver.type in ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
        return
    net = read_net_param(path)
    assert len(net.layer) > 0 and len(net.layers) == 0  # upgraded to the current format
    assert not net.input and not net.input_dim  # legacy inputs became an Input layer
    assert all(layer.type for layer in net.layer)


@pytest.mark.parametrize("path", _all("*.caffemodel"), ids=lambda p: str(p.relative_to(ASSETS)))
def test_every_caffemodel_reads(path: Path):
    net = read_net_param_binary(path)
    blobs = [b for layer in net.layer for b in layer.blobs]
    assert blobs and len(net.layers) == 0
    for b in blobs:
        arr = blob_proto_to_array(b)
        assert arr.size > 0 and np.isfinite(arr).all()


def test_ssd_fork_prototxt_parses_and_an_unknown_type_is_still_named(tmp_path: Path):
    param = read_net_param(asset(SSD))
    assert {"Normalize", "PriorBox", "Permute", "DetectionOutput"} <= {layer.type for layer in param.layer}
    renamed = tmp_path / "deploy.prototxt"
    renamed.write_text(asset(SSD).read_text().replace('type: "PriorBox"', 'type: "PriorBoxV9"'))
    with pytest.raises(caffe.UnknownLayerTypeError, match="unknown type 'PriorBoxV9'"):
        caffe.Net(str(renamed), caffe.TEST)


def _unknown_fields(message, path: str = "net") -> list[str]:
    """Where ``message`` (recursively) holds fields our caffe.proto does not know, with their numbers."""
    from google.protobuf import unknown_fields

    found = [f"{path}: {f.field_number}" for f in unknown_fields.UnknownFieldSet(message)]
    for field, value in message.ListFields():
        if field.message_type is not None:
            for i, item in enumerate(value if field.is_repeated else [value]):
                found += _unknown_fields(item, f"{path}.{field.name}[{i}]")
    return found


def test_ssd_training_net_embedded_in_res10_parses_with_the_forks_numbers():
    """The res10 face detector's .caffemodel embeds its SSD training net (AnnotatedData, MultiBoxLoss): every
    field of it is one of ours, with the values the fork's training script sets."""
    net = read_net_param_binary(asset("models/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel"))
    assert _unknown_fields(net) == []
    data = next(layer for layer in net.layer if layer.type == "AnnotatedData")
    t = data.transform_param
    assert len(t.resize_param) == 1
    assert (t.resize_param[0].height, t.resize_param[0].width, t.resize_param[0].resize_mode) == (
        300,
        300,
        pb.ResizeParameter.WARP,
    )
    assert t.expand_param.max_expand_ratio == 4 and t.distort_param.hue_delta == 18
    assert t.emit_constraint.emit_type == pb.EmitConstraint.CENTER
    samplers = data.annotated_data_param.batch_sampler
    assert len(samplers) == 7 and samplers[1].sample_constraint.min_jaccard_overlap == pytest.approx(0.1)
    assert samplers[1].sampler.min_aspect_ratio == 0.5 and samplers[1].max_trials == 50
    loss = next(layer for layer in net.layer if layer.type == "MultiBoxLoss")
    m = loss.multibox_loss_param
    assert (m.num_classes, m.code_type, m.mining_type) == (2, pb.PriorBoxParameter.CENTER_SIZE, m.MAX_NEGATIVE)
    assert m.neg_pos_ratio == 3 and m.overlap_threshold == 0.5 and m.match_type == m.PER_PREDICTION
    assert list(loss.bottom) == ["mbox_loc", "mbox_conf", "mbox_priorbox", "label"]


def test_v1_lenet_weights_upgrade_with_legacy_shapes():
    net = read_net_param_binary(asset("models/lenet_mnist_v1format_2014/lenet_iter_10000.caffemodel"))
    types = {layer.name: layer.type for layer in net.layer}
    assert types["conv1"] == "Convolution" and types["ip2"] == "InnerProduct"
    conv1 = next(layer for layer in net.layer if layer.name == "conv1")
    assert blob_proto_to_array(conv1.blobs[0]).shape == (20, 1, 5, 5)


def test_mean_binaryproto_reads():
    mean = read_binary(asset("models/imagenet-common/imagenet_mean.binaryproto"), pb.BlobProto())
    arr = blob_proto_to_array(mean)
    assert arr.shape == (1, 3, 256, 256)


# ---------------------------------------------------------------------------- bad files
def test_malformed_prototxt_reports_file_line_column(tmp_path: Path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  typo_field: 3\n}\n')
    with pytest.raises(caffe.ParseError, match=r"bad\.prototxt:4:3: .*typo_field") as e:
        caffe.Net(str(bad), caffe.TEST)
    assert "\n" not in str(e.value)
    unbalanced = tmp_path / "unbalanced.prototxt"
    unbalanced.write_text('layer {\n  name: "a"\n')
    with pytest.raises(caffe.ParseError, match=r"unbalanced\.prototxt:2:\d+: Expected \"}\""):
        read_net_param(unbalanced)
    wrong_type = tmp_path / "wrongtype.prototxt"
    wrong_type.write_text('layer { name: "a" type: "Input" input_param { shape { dim: "x" } } }\n')
    with pytest.raises(caffe.ParseError, match=r"wrongtype\.prototxt:1:\d+"):
        read_net_param(wrong_type)


def test_missing_files_are_clear(tmp_path: Path):
    with pytest.raises(caffe.CaffeError, match=r"Could not open file .*nope\.prototxt"):
        caffe.Net(str(tmp_path / "nope.prototxt"), caffe.TEST)
    with pytest.raises(caffe.ParseError, match="not found"):
        read_net_param(tmp_path / "nope.prototxt")


def test_garbage_and_truncated_caffemodels(tmp_path: Path):
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    with pytest.raises(caffe.WeightsError, match=r"garbage\.caffemodel: not a valid caffemodel"):
        read_net_param_binary(garbage)
    real = asset("models/lenet_mnist_newformat/lenet_iter_10000.caffemodel").read_bytes()
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(real[: len(real) // 2])
    with pytest.raises(caffe.WeightsError, match=r"truncated\.caffemodel.*truncated or corrupt"):
        read_net_param_binary(truncated)
    text = tmp_path / "text.caffemodel"
    text.write_text('name: "LeNet"\nlayer { name: "x" }\n')
    with pytest.raises(caffe.WeightsError, match="looks like a text prototxt"):
        read_net_param_binary(text)


def test_text_round_trip_is_lossless():
    net = read_net_param(asset("models/open_nsfw_resnet50_1by2/deploy.prototxt"))
    again = pb.NetParameter()
    from google.protobuf import text_format

    text_format.Parse(to_text(net), again)
    assert again == net
