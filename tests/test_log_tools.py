"""``parse_log`` and ``plot_training_log``: Caffe's tables and charts from training logs (ours and a 2014 Caffe log)."""

from __future__ import annotations

import io
import itertools
import logging
import math
import shutil
import sys
from pathlib import Path

import pytest
from conftest import asset
from google.protobuf import text_format

import caffe
from caffe.proto import caffe_pb2 as pb
from caffe.tools import entry
from caffe.tools.cli import main
from caffe.tools.log_tools import (
    CHART_TYPES,
    chart_series,
    csv_text,
    log_label,
    parse_log,
    read_training_log,
    read_training_log_file,
)
from caffe.util import glog

CAFFE_2014_LOG = "models/cifar10_quick_v1format_2014/train_log.txt"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cifar_log(tmp_path: Path) -> Path:
    """The 2014 Caffe log (4000 iterations, then resumed to 5000 at a tenth of the rate), named ``.log``."""
    path = tmp_path / "cifar10_quick.log"
    shutil.copyfile(asset(CAFFE_2014_LOG), path)
    return path


def test_caffe_2014_log_tables():
    train, test = parse_log(asset(CAFFE_2014_LOG))
    # 40 displays in the first run (0..3900), 10 after the resume (4000..4900); tests at 0..4000, 4000..5000.
    assert len(train) == 50 and len(test) == 12
    assert [r["NumIters"] for r in test] == [*range(0, 4001, 500), 4000, 4500, 5000]
    assert all(list(r) == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"] for r in test)
    assert all(list(r) == ["NumIters", "Seconds", "LearningRate", "loss"] for r in train)
    # "Solving" at 00:37:55.565062; first test output at 00:38:01.829377, first train output at 00:38:01.939870.
    assert test[0] == {"NumIters": 0.0, "Seconds": 6.264315, "LearningRate": 0.001, "accuracy": 0.0926, "loss": 2.30268}
    assert train[0] == {"NumIters": 0.0, "Seconds": 6.374808, "LearningRate": 0.001, "loss": 2.30245}
    assert test[10] == {
        "NumIters": 4500.0,
        "Seconds": 1096.306618,  # 00:56:11.871680
        "LearningRate": 0.0001,
        "accuracy": 0.7492,
        "loss": 0.755227,
    }
    # A row has the rate printed before it: the resumed run's first display still shows the old rate.
    assert (train[40]["NumIters"], train[40]["LearningRate"], train[40]["loss"]) == (4000.0, 0.001, 0.719556)
    assert (train[41]["NumIters"], train[41]["LearningRate"]) == (4100.0, 0.0001)
    assert train[-1]["NumIters"] == 4900.0 and train[-1]["loss"] == 0.482015
    assert test[-1]["accuracy"] == 0.7491 and test[-1]["Seconds"] == 1220.937907  # 00:58:16.502969
    parsed = read_training_log_file(asset(CAFFE_2014_LOG))
    # 50 displays + the two runs' closing "Iteration N, loss = x" lines (00:58:09.727504 the last).
    assert len(parsed.loss) == 52 and parsed.loss[-1] == (5000.0, 1214.162442, 0.565611)
    # The chart's rates are at their own iterations: 0.0001 from the resumed run's first one (00:54:07.814259).
    assert len(parsed.lr) == 50 and parsed.lr[40] == (4000.0, 972.249197, 0.0001)


def test_parse_log_command_writes_caffe_csv(cifar_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "tables"
    assert main(["parse_log", str(cifar_log), str(out), "--verbose"]) == 0
    assert f"Wrote {out / 'cifar10_quick.log.train'}" in capsys.readouterr().out
    test_csv = (out / "cifar10_quick.log.test").read_bytes().decode()
    lines = test_csv.split("\r\n")  # the csv module's default dialect, as Caffe's script wrote
    assert lines[0] == "NumIters,Seconds,LearningRate,accuracy,loss"
    assert lines[1] == "0.0,6.264315,0.001,0.0926,2.30268"
    assert lines[2] == "500.0,114.766253,0.001,0.5551,1.26168"
    assert len(lines) == 14 and lines[-1] == ""
    train_csv = (out / "cifar10_quick.log.train").read_text()
    assert train_csv.splitlines()[:2] == ["NumIters,Seconds,LearningRate,loss", "0.0,6.374808,0.001,2.30245"]
    assert main(["parse_log", str(cifar_log), str(out), "-delimiter", "\\t"]) == 0
    assert (out / "cifar10_quick.log.test").read_text().splitlines()[1] == "0.0\t6.264315\t0.001\t0.0926\t2.30268"


def test_console_entry_point(cifar_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "argv", ["parse_log", str(cifar_log), str(tmp_path), "--delimiter=;"])
    assert entry.parse_log() == 0
    assert (tmp_path / "cifar10_quick.log.train").read_text().startswith("NumIters;Seconds;LearningRate;loss")
    assert callable(entry.plot_training_log)


TINY_NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
"""


@pytest.fixture
def own_log(tmp_path: Path) -> Path:
    """The glog output of a short training by our solver (display 1, a step rate, tests every 4 iterations)."""
    param = pb.SolverParameter()
    text_format.Merge(TINY_NET, param.net_param)
    param.base_lr, param.lr_policy, param.gamma, param.stepsize = 0.1, "step", 0.5, 4
    param.display, param.max_iter, param.test_interval = 1, 8, 4
    param.test_iter.append(2)
    param.snapshot_after_train = False
    param.snapshot_prefix = str(tmp_path / "tiny")
    logger = logging.getLogger("caffe")
    saved = (list(logger.handlers), logger.level)
    buf = io.StringIO()
    glog.setup(stream=buf)
    try:
        caffe.get_solver(param).solve()
    finally:
        logger.handlers[:], logger.level = saved[0], saved[1]
    path = tmp_path / "tiny.log"
    path.write_text(buf.getvalue())
    return path


def test_log_of_our_training(own_log: Path):
    text = own_log.read_text()
    train, test = parse_log(own_log)
    assert [r["NumIters"] for r in train] == [float(i) for i in range(8)]
    assert [r["NumIters"] for r in test] == [0.0, 4.0, 8.0]
    assert list(test[0]) == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    for row in test:
        assert f"Test net output #0: accuracy = {row['accuracy']:g}\n" in text
        assert f"Test net output #1: loss = {row['loss']:g} " in text
    for row in train:
        assert f"Train net output #0: loss = {row['loss']:g} " in text
    # Rates as Caffe's table has them: each row the rate printed before it (the first row's copied).
    assert [r["LearningRate"] for r in train] == [0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05]
    assert all(0 <= a["Seconds"] <= b["Seconds"] < 60 for a, b in itertools.pairwise(train))
    parsed = read_training_log_file(own_log)
    assert [p[2] for p in parsed.lr] == [0.1] * 4 + [0.05] * 4  # the series the chart draws: exact
    assert [p[0] for p in parsed.loss] == [float(i) for i in range(9)]  # displays and the final loss


def _glog(stamp: str, message: str) -> str:
    return f"I{stamp}  4242 solver.py:1] {message}"


def test_seconds_across_midnight_and_new_year(tmp_path: Path):
    lines = [
        _glog("1231 23:59:50.000000", "Solving tiny"),
        _glog("1231 23:59:55.500000", "Iteration 0, Testing net (#0)"),
        _glog("1231 23:59:56.000000", "    Test net output #0: accuracy = 0.5"),
        _glog("0101 00:00:10.250000", "Iteration 0 (0 iter/s, 0s/1 iters), loss = 0.7"),
        _glog("0101 00:00:10.250001", "    Train net output #0: loss = 0.7 (* 1 = 0.7 loss)"),
        _glog("0101 00:00:10.300000", "Iteration 0, lr = 0.01"),
        _glog("0102 00:00:09.000000", "Iteration 1 (0 iter/s, 0s/1 iters), loss = 0.6"),
        _glog("0102 00:00:09.000000", "    Train net output #0: loss = 0.6 (* 1 = 0.6 loss)"),
        _glog("0102 00:00:09.100000", "Iteration 1, lr = 0.01"),
    ]
    path = tmp_path / "newyear.log"
    path.write_text("\n".join(lines) + "\n")
    for train, test in (parse_log(path), parse_log(path, year=2023)):
        assert [r["Seconds"] for r in train] == [20.250001, 86419.0]
        assert len(test) == 1 and test[0]["Seconds"] == 6.0 and math.isnan(test[0]["LearningRate"])
    # 29 February in a year without one: the year moves back to a leap year.
    leap = [
        _glog("0229 23:59:59.000000", "Solving tiny"),
        _glog("0301 00:00:01.000000", "Iteration 0 (0 iter/s, 0s/1 iters), loss = 0.7"),
        _glog("0301 00:00:01.500000", "    Train net output #0: loss = 0.7 (* 1 = 0.7 loss)"),
    ]
    assert read_training_log(leap, year=2023).train[0]["Seconds"] == 2.5


def test_robust_to_odd_lines():
    lines = [
        "$ ./train.sh",
        _glog("0510 10:00:00.000000", "Starting Optimization"),
        _glog("0510 10:00:01.000000", "Iteration 0, Testing net (#0)"),
        "",
        "  } garbage that is not a glog line",
        _glog("0510 10:00:02.000000", "    Test net output #0: accuracy = nan"),
        _glog("0510 10:00:02.000000", "    Test net output #1: loss = -inf (* 1 = -inf loss)"),
        "I0510 10:00:03.000000",
    ]
    # No "Solving" line: seconds count from the first glog line; the lone test row is kept (Caffe lost it).
    parsed = read_training_log(lines, year=2015)
    assert parsed.train == [] and len(parsed.test) == 1
    row = parsed.test[0]
    assert row["Seconds"] == 2.0 and math.isnan(row["accuracy"]) and row["loss"] == -math.inf
    assert csv_text(parsed.test).splitlines() == ["NumIters,Seconds,LearningRate,accuracy,loss", "0.0,2.0,nan,nan,-inf"]
    assert read_training_log(["not a log", ""]).test == []


def test_csv_columns_follow_the_log_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    lines = [_glog("0510 10:00:00.000000", "Solving net")]
    for it, second in ((0, 1), (100, 2), (200, 3)):
        lines += [
            _glog(f"0510 10:00:0{second}.000000", f"Iteration {it}, Testing net (#0)"),
            _glog(f"0510 10:00:0{second}.100000", "    Test net output #0: top-5 = 0.9"),
            _glog(f"0510 10:00:0{second}.200000", "    Test net output #1: accuracy = 0.5"),
            _glog(f"0510 10:00:0{second}.300000", "    Test net output #2: loss = 1e-05 (* 1 = 1e-05 loss)"),
            _glog(f"0510 10:00:0{second}.400000", f"Iteration {it}, lr = {0.01 / (it + 1)}"),
        ]
    log_path = tmp_path / "order.log"
    log_path.write_text("\n".join(lines))
    assert main(["parse_log", str(log_path), str(tmp_path), "--verbose"]) == 0
    assert f"Not writing {tmp_path / 'order.log.train'}; no lines to write" in capsys.readouterr().out
    assert not (tmp_path / "order.log.train").exists()
    rows = (tmp_path / "order.log.test").read_text().splitlines()
    assert rows[0] == "NumIters,Seconds,LearningRate,top-5,accuracy,loss"
    # The first row's rate is the second row's (it ran before any "lr = " line), then each the one before.
    assert rows[1:] == [
        "0.0,1.1,0.01,0.9,0.5,1e-05",
        "100.0,2.1,0.01,0.9,0.5,1e-05",
        "200.0,3.1,9.900990099009902e-05,0.9,0.5,1e-05",
    ]
    parsed = read_training_log_file(log_path)
    xs, ys, column = chart_series(parsed, 0)  # test accuracy: found by name, not Caffe's output #0
    assert (xs, ys, column) == ([0.0, 100.0, 200.0], [0.5, 0.5, 0.5], "accuracy")


def test_chart_types_are_caffes():
    assert CHART_TYPES == (
        "Test accuracy  vs. Iters",
        "Test accuracy  vs. Seconds",
        "Test loss  vs. Iters",
        "Test loss  vs. Seconds",
        "Train learning rate  vs. Iters",
        "Train learning rate  vs. Seconds",
        "Train loss  vs. Iters",
        "Train loss  vs. Seconds",
    )
    assert log_label("/runs/cifar10_quick.log") == "cifar10_quick"


@pytest.mark.parametrize("chart_type", [0, 3, 4, 7])
def test_plot_training_log_writes_a_png(chart_type: int, cifar_log: Path, own_log: Path, tmp_path: Path):
    png = tmp_path / f"chart{chart_type}.png"
    assert main(["plot_training_log", str(chart_type), str(png), str(cifar_log), str(own_log)]) == 0
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_plot_training_log_errors(cifar_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    png = str(tmp_path / "c.png")
    for argv, message in (
        (["9", png, str(cifar_log)], "9 is not a valid chart type"),
        (["-1", png, str(cifar_log)], "-1 is not a valid chart type"),
        (["accuracy", png, str(cifar_log)], "accuracy is not a valid chart type"),
        (["0", png], "expected CHART_TYPE OUTPUT.png LOG"),
        (["0", str(tmp_path / "c.jpg"), str(cifar_log)], "must end in .png"),
        (["0", png, str(tmp_path / "missing.log")], "log file not found"),
        (["0", png, str(asset(CAFFE_2014_LOG))], "must end in '.log'"),
    ):
        assert main(["plot_training_log", *argv]) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "7: Train loss  vs. Seconds" in err, argv
    assert not Path(png).exists()
    assert main(["plot_training_log", "--help"]) == 0
    assert "0: Test accuracy  vs. Iters" in capsys.readouterr().out


def test_nothing_to_plot_and_missing_log(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    train_only = tmp_path / "train_only.log"
    train_only.write_text(
        "\n".join(
            [
                _glog("0510 10:00:00.000000", "Solving net"),
                _glog("0510 10:00:01.000000", "Iteration 0 (0 iter/s, 0s/1 iters), loss = 0.7"),
                _glog("0510 10:00:01.000000", "    Train net output #0: loss = 0.7 (* 1 = 0.7 loss)"),
            ]
        )
    )
    with caplog.at_level(logging.WARNING, logger="caffe"):
        assert main(["plot_training_log", "0", str(tmp_path / "c.png"), str(train_only)]) == 1
        assert "nothing to plot: no log has test accuracy values" in caplog.text
        assert main(["plot_training_log", "6", str(tmp_path / "c.png"), str(train_only)]) == 0
        assert main(["parse_log", str(tmp_path / "missing.log"), str(tmp_path)]) == 1
        assert "cannot read log file" in caplog.text and "missing.log" in caplog.text
        assert main(["parse_log", str(train_only), str(tmp_path), "--delimiter", ";;"]) == 1


def test_glog_handler_follows_stderr_after_a_redirection_ends(monkeypatch: pytest.MonkeyPatch):
    """The handler glog.setup() adds writes to the current sys.stderr: a background thread logging after a
    redirection of stderr ended (its stream closed) writes to stderr, not a 'Logging error' traceback."""
    errors: list[BaseException | None] = []
    monkeypatch.setattr(logging.Handler, "handleError", lambda self, record: errors.append(sys.exc_info()[1]))
    logger = logging.getLogger("caffe")
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))  # restored after the test
    monkeypatch.setattr(logger, "level", logger.level)
    redirected, later = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", redirected)
    glog.setup()
    logger.info("while redirected")
    assert "while redirected" in redirected.getvalue()
    monkeypatch.setattr(sys, "stderr", later)
    redirected.close()
    logger.info("after the redirection")
    assert "after the redirection" in later.getvalue() and not errors
    fixed = io.StringIO()
    glog.setup(stream=fixed)  # a stream of its own stays its stream
    logger.info("to the given stream")
    assert "to the given stream" in fixed.getvalue() and "to the given stream" not in later.getvalue()
