"""The ``caffe`` command: usage, unknown commands, and the upgrade tools."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import asset

from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_binary, read_text
from caffe.tools.cli import main, normalize_flags


def test_usage_and_unknown_command(capsys: pytest.CaptureFixture[str]):
    assert main([]) == 1
    assert "usage: caffe <command>" in capsys.readouterr().err
    assert main(["frobnicate"]) == 1
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_gflags_spellings_are_accepted():
    assert normalize_flags(["-solver=s.prototxt", "-gpu", "0", "--weights=a,b", "-1"]) == [
        "--solver=s.prototxt",
        "--gpu",
        "0",
        "--weights=a,b",
        "-1",
    ]


def test_upgrade_net_proto_text_and_binary(tmp_path: Path):
    out = tmp_path / "lenet.prototxt"
    assert (
        main(["upgrade_net_proto_text", str(asset("models/lenet_mnist_v1format_2014/lenet.prototxt")), str(out)]) == 0
    )
    net = read_text(out, pb.NetParameter())
    assert len(net.layer) and not len(net.layers) and net.layer[0].type == "Input"
    weights = tmp_path / "lenet.caffemodel"
    src = asset("models/lenet_mnist_v1format_2014/lenet_iter_10000.caffemodel")
    assert main(["upgrade_net_proto_binary", str(src), str(weights)]) == 0
    upgraded = read_binary(weights, pb.NetParameter())
    assert not len(upgraded.layers) and upgraded.layer[1].type == "Convolution" and len(upgraded.layer[1].blobs) == 2


def test_already_current_file_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.ERROR, logger="caffe"):
        rc = main(
            ["upgrade_net_proto_text", str(asset("caffe-ref/examples/mnist/lenet.prototxt")), str(tmp_path / "x")]
        )
    assert rc == 0 and "already in latest proto format" in caplog.text


def test_upgrade_solver_proto_text(tmp_path: Path):
    old = tmp_path / "old_solver.prototxt"
    old.write_text('net: "n.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n')
    new = tmp_path / "solver.prototxt"
    assert main(["upgrade_solver_proto_text", str(old), str(new)]) == 0
    solver = read_text(new, pb.SolverParameter())
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")


def test_wrong_arguments_print_usage(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["upgrade_net_proto_text", "only-one"]) == 1
    assert "Usage: upgrade_net_proto_text" in caplog.text


def test_bad_input_file_is_one_clean_error(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: \n")
    with caplog.at_level(logging.ERROR, logger="caffe"):
        assert main(["upgrade_net_proto_text", str(bad), str(tmp_path / "out")]) == 1
    assert "bad.prototxt:2:1" in caplog.text or "bad.prototxt:1:" in caplog.text


def test_device_query_runs_and_names_the_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="caffe"):
        assert main(["device_query"]) == 0
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")]
    if names:  # Linux on x86 (platform.processor() is empty there: the name comes from /proc/cpuinfo)
        assert f"CPU: {names[0]}, " in caplog.text


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
