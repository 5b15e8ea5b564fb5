"""caffe.draw and ``caffe draw_net``: GoogLeNet to PNG, labels, colours, phase/stage filters, errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pydot
import pytest
from conftest import ROOT, asset
from google.protobuf import text_format
from PIL import Image

from caffe import draw
from caffe.proto import caffe_pb2 as pb
from caffe.tools.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

NET = """
name: "small"
layer { name: "train_data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "x" batch_size: 64 } }
layer { name: "test_data" type: "Data" top: "data" top: "label" include { phase: TEST }
        data_param { source: "y" batch_size: 100 } }
layer { name: "deploy_only" type: "Input" top: "data" include { phase: TEST stage: "deploy" } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "frozen" type: "InnerProduct" bottom: "pool1" top: "ip" param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" exclude { stage: "deploy" } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" exclude { phase: TRAIN } }
"""


def small_net() -> pb.NetParameter:
    return text_format.Parse(NET, pb.NetParameter())


def layer_nodes(graph: pydot.Dot) -> dict[str, pydot.Node]:
    """Layer nodes by layer name (blob nodes have no record shape)."""
    return {n.get_name().strip('"').rsplit("_", 1)[0]: n for n in graph.get_nodes() if n.get("shape") == "record"}


def test_draw_net_renders_googlenet_to_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    prototxt = asset("caffe-ref/models/bvlc_googlenet/train_val.prototxt")
    out = tmp_path / "googlenet.png"
    assert main(["draw_net", str(prototxt), str(out), "--rankdir", "TB", "--phase", "TEST"]) == 0
    assert f"Drawing net to {out}" in capsys.readouterr().out
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = Image.open(io.BytesIO(data))
    image.load()
    width, height = image.size
    # 3 classifier heads and 9 inception modules, stacked top to bottom: far taller than wide
    assert height > 5000 and 1000 < width < height
    assert image.getextrema()[0][0] < 100 < image.getextrema()[0][1]  # not a blank canvas


def test_graph_structure_labels_and_colours():
    graph = draw.get_pydot_graph(small_net(), "LR", display_lrm=True)
    assert graph.get_rankdir() == "LR" and graph.get_name() == "small"
    nodes = layer_nodes(graph)
    assert set(nodes) == {"train_data", "test_data", "deploy_only", "conv1", "relu1", "pool1", "frozen", "loss", "acc"}
    conv_label = r'"conv1\n(Convolution)\nkernel size: 5\nstride: 2\npad: 1\nlr mult: 1.0, 2.0"'
    assert nodes["conv1"].get("label") == conv_label
    assert nodes["pool1"].get("label") == r'"pool1\n(Pooling AVE)\nkernel size: 3\nstride: 2\npad: 0"'
    assert nodes["frozen"].get("label") == r'"frozen\n(InnerProduct)"'  # lr mult 0, 0 is not shown
    fills = {name: node.get("fillcolor") for name, node in nodes.items()}
    assert [fills[k] for k in ("conv1", "pool1", "frozen", "loss")] == ["#FF5050", "#FF9900", "#CC33FF", "#6495ED"]
    assert fills["relu1"] == "#90EE90"  # in place
    edges = {(e.get_source().strip('"'), e.get_destination().strip('"')): e.get("label") for e in graph.get_edges()}
    assert edges[("train_data_Data", "data_blob")] == "Batch 64"
    assert edges[("conv1_Convolution", "conv1_blob")] == "20" and edges[("frozen_InnerProduct", "ip_blob")] == "10"
    assert edges[("conv1_blob", "relu1_ReLU")] == '""'
    blobs = {n.get_name().strip('"'): n for n in graph.get_nodes() if n.get("shape") != "record"}
    assert blobs["ip_blob"].get("shape") == "octagon" and blobs["loss_blob"].get("shape") is None
    top_bottom = layer_nodes(draw.get_pydot_graph(small_net(), "TB"))
    assert top_bottom["conv1"].get("label") == '"conv1 (Convolution) kernel size: 5 stride: 2 pad: 1"'


@pytest.mark.parametrize(
    ("kwargs", "drawn"),
    [
        ({"phase": "TRAIN"}, {"train_data", "loss"}),
        ({"phase": pb.TEST}, {"test_data", "deploy_only", "loss", "acc"}),  # pycaffe reads only the phases
        ({"phase": "TEST", "stages": ["deploy"]}, {"test_data", "deploy_only", "acc"}),  # Caffe's rules in full
        ({"phase": "TEST", "level": 0}, {"test_data", "loss", "acc"}),
        ({"stages": "deploy"}, {"train_data", "test_data", "deploy_only", "acc"}),  # either phase
        ({"phase": "ALL"}, {"train_data", "test_data", "deploy_only", "loss", "acc"}),
    ],
)
def test_phase_and_stage_filters(kwargs: dict, drawn: set[str]):
    common = {"conv1", "relu1", "pool1", "frozen"}
    assert set(layer_nodes(draw.get_pydot_graph(small_net(), "LR", **kwargs))) == common | drawn


def test_draw_net_to_file_formats(tmp_path: Path):
    draw.draw_net_to_file(small_net(), tmp_path / "net.svg", "BT", phase="TEST")
    svg = (tmp_path / "net.svg").read_text()
    assert "<svg" in svg and "test_data" in svg and "train_data" not in svg
    draw.draw_net_to_file(small_net(), tmp_path / "net.raw")
    assert (tmp_path / "net.raw").read_text().startswith("digraph small {")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.raw", "net.svg"]  # no temporary files left
    with pytest.raises(ValueError, match="no extension"):
        draw.draw_net_to_file(small_net(), tmp_path / "net")
    with pytest.raises(RuntimeError, match="Graphviz could not draw format 'nosuchformat'"):
        draw.draw_net(small_net(), "LR", ext="nosuchformat")
    with pytest.raises(ValueError, match="Unknown phase: DEPLOY"):
        draw.get_pydot_graph(small_net(), "LR", phase="DEPLOY")


def test_v1_nets_are_upgraded_before_drawing():
    v1 = text_format.Parse(asset("models/lenet_mnist_v1format_2014/lenet.prototxt").read_text(), pb.NetParameter())
    nodes = layer_nodes(draw.get_pydot_graph(v1, "LR"))
    assert nodes["conv1"].get("label").startswith(r'"conv1\n(Convolution)')


def test_command_errors_and_the_pycaffe_script(tmp_path: Path):
    prototxt = asset("caffe-ref/examples/mnist/lenet.prototxt")
    assert main(["draw_net", str(prototxt), str(tmp_path / "x.png"), "--phase", "DEPLOY"]) == 1
    assert main(["draw_net", str(prototxt), str(tmp_path / "noext")]) == 1
    assert main(["draw_net", str(tmp_path / "missing.prototxt"), str(tmp_path / "x.png")]) == 1
    assert not list(tmp_path.iterdir())
    out = tmp_path / "lenet.png"
    script = [sys.executable, str(ROOT / "python" / "draw_net.py"), str(prototxt), str(out), "--display_lrm"]
    result = subprocess.run(script, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC
