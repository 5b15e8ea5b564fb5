"""``caffe train``, ``caffe test`` and ``caffe time`` on LeNet and a few hundred MNIST digits.

Training runs in a subprocess, as users run it (signals included); scoring, timing and usage
errors run in this process through ``caffe.tools.cli.main``.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, asset

import caffe
from caffe.data.datum import array_to_datum
from caffe.data.db import open_db
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_binary
from caffe.tools.cli import main

TRAINED = "models/lenet_mnist_newformat/lenet_iter_10000.caffemodel"
RUN = "import sys; from caffe.tools.cli import main; sys.exit(main())"
FLOAT = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"


# ---------------------------------------------------------------------------------------------
# fixtures


def _mnist(images: str, labels: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(asset(f"mnist/{images}")) as f:
        f.read(16)
        x = np.frombuffer(f.read(n * 28 * 28), np.uint8).reshape(n, 1, 28, 28)
    with gzip.open(asset(f"mnist/{labels}")) as f:
        f.read(8)
        y = np.frombuffer(f.read(n), np.uint8)
    return x, y


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with 320 training and 200 test digits as LMDBs and LeNet's train/test net reading them."""
    root = tmp_path_factory.mktemp("mnist")
    for name, files, n in (
        ("train", ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"), 320),
        ("test", ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"), 200),
    ):
        x, y = _mnist(*files, n)
        with open_db(root / f"mnist_{name}_lmdb", "lmdb", "new") as db:
            txn = db.transaction()
            for i in range(n):
                txn.put(b"%08d" % i, array_to_datum(x[i], int(y[i])).SerializeToString())
            txn.commit()
    net = asset("caffe-ref/examples/mnist/lenet_train_test.prototxt").read_text()
    net = net.replace("examples/mnist/mnist_train_lmdb", str(root / "mnist_train_lmdb"))
    net = net.replace("examples/mnist/mnist_test_lmdb", str(root / "mnist_test_lmdb"))
    (root / "lenet_train_test.prototxt").write_text(net)
    return root


def write_solver(folder: Path, name: str, net: Path, **fields: object) -> Path:
    settings: dict[str, object] = {
        "net": f'"{net}"',
        "test_iter": 2,
        "test_interval": 30,
        "base_lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "lr_policy": '"inv"',
        "gamma": 0.0001,
        "power": 0.75,
        "display": 20,
        "max_iter": 60,
        "snapshot": 30,
        "snapshot_prefix": f'"{folder / name}"',
        "solver_mode": "CPU",
    }
    settings.update(fields)
    path = folder / f"{name}_solver.prototxt"
    path.write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
    return path


def caffe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", RUN, *args]


def env() -> dict[str, str]:
    """The subprocesses' environment: this checkout on the path; the eager training engine, as the endless
    runs these tests stop with signals would otherwise compile first (tests/test_train_step.py tests that)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "CAFFE_TRAIN_ENGINE": os.environ.get("CAFFE_TRAIN_ENGINE", "eager")}


def run_caffe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(caffe_cmd(*args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)


def messages(log: str) -> list[str]:
    """The messages of glog lines (the text after ``file:line] ``)."""
    return [m.group(1) for m in re.finditer(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] (.*)$", log, re.M)]


def assert_in_order(lines: list[str], patterns: list[str]) -> None:
    at = 0
    for pattern in patterns:
        for k in range(at, len(lines)):
            if re.search(pattern, lines[k]):
                at = k + 1
                break
        else:
            raise AssertionError(f"no line matching {pattern!r} after line {at}:\n" + "\n".join(lines[at : at + 40]))


def blobs(caffemodel: Path) -> dict[str, list[np.ndarray]]:
    net = read_binary(caffemodel, pb.NetParameter())
    return {layer.name: [_values(b) for b in layer.blobs] for layer in net.layer if layer.blobs}


def _values(blob: pb.BlobProto) -> np.ndarray:
    """A blob's values, flat: float32 ``data``, or float64 ``double_data`` (a double net's snapshot)."""
    return np.asarray(blob.double_data, np.float64) if len(blob.double_data) else np.asarray(blob.data, np.float32)


@pytest.fixture(scope="module")
def trained(mnist: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One 60-iteration training (gflags' ``-flag value`` spelling), shared by the tests that read its results."""
    folder = mnist / "base"
    folder.mkdir()
    solver = write_solver(folder, "lenet", mnist / "lenet_train_test.prototxt")
    proc = run_caffe("train", "-solver", str(solver), "-events", str(folder / "events.jsonl"), cwd=folder)
    return folder, proc


# ---------------------------------------------------------------------------------------------
# caffe train


def test_train_logs_snapshots_and_events(trained: tuple[Path, subprocess.CompletedProcess[str]]):
    folder, proc = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = messages(proc.stderr)
    assert_in_order(
        lines,
        [
            r"^Use CPU\.$",
            r"^Starting Optimization$",
            r"^Solving LeNet$",
            r"^Learning Rate Policy: inv$",
            r"^Iteration 0, Testing net \(#0\)$",
            rf"^    Test net output #0: accuracy = {FLOAT}$",
            rf"^    Test net output #1: loss = {FLOAT} \(\* 1 = {FLOAT} loss\)$",
            rf"^Iteration 20 \({FLOAT} iter/s, {FLOAT}s/20 iters\), loss = {FLOAT}$",
            rf"^    Train net output #0: loss = {FLOAT} \(\* 1 = {FLOAT} loss\)$",
            rf"^Iteration 20, lr = {FLOAT}$",
            r"^Snapshotting to binary proto file .*lenet_iter_30\.caffemodel$",
            r"^Snapshotting solver state to binary proto file .*lenet_iter_30\.solverstate$",
            r"^Iteration 30, Testing net \(#0\)$",
            rf"^Iteration 40 \({FLOAT} iter/s",
            r"^Snapshotting to binary proto file .*lenet_iter_60\.caffemodel$",
            rf"^Iteration 60, loss = {FLOAT}$",
            r"^Iteration 60, Testing net \(#0\)$",
            r"^Optimization Done\.$",  # the solver's
            r"^Optimization Done\.$",  # and the tool's, as in Caffe
        ],
    )
    assert "Optimization stopped early." not in lines
    for it in (30, 60):
        assert (folder / f"lenet_iter_{it}.caffemodel").is_file()
        assert (folder / f"lenet_iter_{it}.solverstate").is_file()
    # it learned something: the final test accuracy beats chance by far
    accuracy = [float(m.group(1)) for m in re.finditer(rf"Test net output #0: accuracy = ({FLOAT})", proc.stderr)]
    assert len(accuracy) == 3 and accuracy[-1] > 0.5
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and not events[-1]["stopped_early"]
    assert [e["iter"] for e in events if e["event"] == "train"] == [0, 20, 40]
    assert [e["iter"] for e in events if e["event"] == "test"] == [0, 30, 60]
    assert [e["iter"] for e in events if e["event"] == "snapshot"] == [30, 60]
    assert events[0]["solver"].endswith("lenet_solver.prototxt") and events[0]["max_iter"] == 60
    assert all(np.isfinite(e["loss"]) and e["lr"] > 0 for e in events if e["event"] == "train")


def test_resume_from_snapshot_continues_at_iteration_30(
    mnist: Path, trained: tuple[Path, subprocess.CompletedProcess[str]]
):
    base, _ = trained
    folder = mnist / "resumed"
    folder.mkdir()
    solver = write_solver(folder, "resumed", mnist / "lenet_train_test.prototxt")
    proc = run_caffe("train", f"--solver={solver}", f"--snapshot={base / 'lenet_iter_30.solverstate'}", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = messages(proc.stderr)
    assert_in_order(
        lines,
        [
            r"^Resuming from .*lenet_iter_30\.solverstate$",
            r"^SGDSolver: restoring history$",
            r"^Solving LeNet$",
            r"^Iteration 30, Testing net \(#0\)$",
            rf"^Iteration 40 \({FLOAT} iter/s",
            r"^Snapshotting to binary proto file .*resumed_iter_60\.caffemodel$",
            r"^Optimization Done\.$",
        ],
    )
    assert not any(re.match(r"Iteration (0|20) ", line) for line in lines)
    assert not (folder / "resumed_iter_30.caffemodel").exists()
    # 30 iterations of 64 digits end where the 320-digit database starts again, so the resumed
    # training saw the same batches as the uninterrupted one: the same weights come out
    resumed, straight = blobs(folder / "resumed_iter_60.caffemodel"), blobs(base / "lenet_iter_60.caffemodel")
    assert resumed.keys() == straight.keys()
    for name in straight:
        for a, b in zip(resumed[name], straight[name]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)


def test_finetune_copies_the_layers_it_shares_and_fills_the_renamed_one(mnist: Path):
    folder = mnist / "finetune"
    folder.mkdir()
    net = (mnist / "lenet_train_test.prototxt").read_text()
    net = re.sub(r'name: "ip2"', 'name: "ip2_new"', net)
    assert net.count('"ip2_new"') == 1
    (folder / "finetune.prototxt").write_text(net)
    solver = write_solver(folder, "ft", folder / "finetune.prototxt", max_iter=0, snapshot=0)
    weights = asset(TRAINED)
    proc = run_caffe("train", f"--solver={solver}", f"--weights={weights},{weights}", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = messages(proc.stderr)
    # both files, into the train net and then the test net
    assert sum(line == f"Finetuning from {weights}" for line in lines) == 4
    for layer in ("conv1", "conv2", "ip1"):
        assert f"Copying source layer {layer}" in lines
    assert "Ignoring source layer ip2" in lines
    assert "Copying source layer ip2" not in lines
    assert_in_order(lines, [r"^Creating training net", r"^Finetuning from", r"^Creating test net", r"^Finetuning"])
    got, source = blobs(folder / "ft_iter_0.caffemodel"), blobs(weights)
    for layer in ("conv1", "conv2", "ip1"):
        for a, b in zip(got[layer], source[layer]):
            np.testing.assert_array_equal(a, b)
    w, b = got["ip2_new"]
    bound = np.sqrt(3.0 / 500)  # xavier: uniform in +-sqrt(3 / fan_in), fan_in = 500
    assert w.shape == source["ip2"][0].shape and not np.allclose(w, source["ip2"][0])
    assert np.abs(w).max() <= bound and 0.8 < w.std() / (bound / np.sqrt(3)) < 1.2
    np.testing.assert_array_equal(b, 0)  # constant filler


def test_snapshot_and_weights_together_is_an_error(capsys: pytest.CaptureFixture[str]):
    rc = main(["train", "--solver=s.prototxt", "--snapshot=x.solverstate", "--weights=w.caffemodel"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Give a snapshot to resume training or weights to finetune but not both" in err


class Follower:
    """A ``caffe train`` subprocess whose log is read line by line as it comes."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(caffe_cmd(*args), cwd=cwd, env=env(), stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.proc.kill()
                raise AssertionError(f"no line matching {pattern!r}; log ends:\n" + "\n".join(self.lines[-30:]))
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def finish(self, timeout: float = 120) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return rc


def test_sigint_snapshot_effect_snapshots_and_goes_on_then_sighup_stop(mnist: Path):
    folder = mnist / "signals"
    folder.mkdir()
    solver = write_solver(folder, "sig", mnist / "lenet_train_test.prototxt", max_iter=100000, display=5, snapshot=0)
    run = Follower(
        "train",
        f"--solver={solver}",
        f"--weights={asset(TRAINED)}",  # test nets get the weights too: the first test scores high
        "--sigint_effect=snapshot",
        "--sighup_effect=stop",
        f"--events={folder / 'events.jsonl'}",
        cwd=folder,
    )
    accuracy = float(run.wait_for(rf"Test net output #0: accuracy = ({FLOAT})").group(1))
    assert accuracy > 0.9
    run.wait_for(r"\] Iteration \d+ \(")
    run.proc.send_signal(signal.SIGINT)
    snap = int(run.wait_for(r"Snapshotting to binary proto file .*sig_iter_(\d+)\.caffemodel$").group(1))
    run.wait_for(r"Snapshotting solver state to binary proto file")
    later = int(run.wait_for(r"\] Iteration (\d+) \(").group(1))
    assert later > snap  # training went on after the snapshot
    run.proc.send_signal(signal.SIGHUP)
    assert run.finish() == 0
    lines = messages("\n".join(run.lines))
    stops = re.findall(r"sig_iter_(\d+)\.caffemodel$", "\n".join(lines), re.M)
    assert len(stops) == 2 and int(stops[1]) > later  # the snapshot of the stop, after the last display
    assert_in_order(lines, [r"^Optimization stopped early\.$", r"^Optimization Done\.$"])
    for it in (snap, int(stops[1])):
        assert (folder / f"sig_iter_{it}.caffemodel").is_file() and (folder / f"sig_iter_{it}.solverstate").is_file()
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["stopped_early"]


def test_sigint_stops_cleanly_even_when_repeated(mnist: Path):
    folder = mnist / "stop"
    folder.mkdir()
    solver = write_solver(folder, "stop", mnist / "lenet_train_test.prototxt", max_iter=100000, display=5, snapshot=0)
    run = Follower("train", f"--solver={solver}", cwd=folder)
    run.wait_for(r"\] Iteration \d+ \(")
    run.proc.send_signal(signal.SIGINT)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 0
    log = "\n".join(run.lines)
    assert "Traceback" not in log and "Interrupted" not in log
    lines = messages(log)
    assert_in_order(
        lines,
        [
            r"^Snapshotting to binary proto file .*stop_iter_\d+\.caffemodel$",
            r"^Snapshotting solver state to binary proto file",
            r"^Optimization stopped early\.$",
            r"^Optimization Done\.$",
        ],
    )
    assert lines.count("Optimization Done.") == 1  # only the tool's: the solver stopped early
    assert not any(line.startswith("Iteration 100000") for line in lines)


def test_train_on_a_gpu_without_cuda_is_a_clear_error(mnist: Path, capsys: pytest.CaptureFixture[str]):
    if caffe.common.cuda_available():
        pytest.skip("this machine has a CUDA device")
    solver = write_solver(mnist, "nogpu", mnist / "lenet_train_test.prototxt")
    assert main(["train", f"--solver={solver}", "--gpu=0"]) == 1
    err = capsys.readouterr().err
    assert "--gpu=0: no CUDA device is available" in err and "Traceback" not in err


def test_missing_solver_file_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["train", f"--solver={tmp_path / 'nope.prototxt'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.prototxt" in err[0] and err[0].startswith("E")


@pytest.mark.parametrize(
    ("flag", "solver_mode", "used", "listed"),
    [
        ("--gpu=all", "CPU", 0, "0, 1"),
        ("--gpu=1,0", "CPU", 1, "1, 0"),
        ("", "GPU\ndevice_id: 1", 1, "1"),  # no --gpu: the solver's mode and device
    ],
)
def test_gpu_flag_picks_the_device(
    mnist: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    solver_mode: str,
    used: int,
    listed: str,
):
    """The --gpu logic on a pretend two-GPU machine (the net itself stays on the CPU)."""
    import torch

    import caffe.tools.train as train_tool

    chosen: list[int] = []
    monkeypatch.setattr(caffe.common, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Pretend GPU {i}")
    monkeypatch.setattr(train_tool, "_use_gpu", chosen.append)
    launched: list[int] = []  # several GPUs: one process per GPU (tests/test_distributed.py runs the launcher)
    monkeypatch.setattr(caffe.parallel, "launch", lambda n, target: launched.append(n) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    solver = write_solver(
        tmp_path, "gpu", mnist / "lenet_train_test.prototxt", max_iter=0, snapshot=0, solver_mode=solver_mode
    )
    assert main(["train", f"--solver={solver}", *([flag] if flag else [])]) == 0
    lines = messages(capsys.readouterr().err)
    several = "," in listed
    assert (chosen, launched) == (([], [2]) if several else ([used], []))
    assert f"Using GPUs {listed}" in lines and f"GPU {used}: Pretend GPU {used}" in lines
    assert main(["train", f"--solver={solver}", "--gpu=2"]) == 1
    assert "GPU 2 does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# caffe test and caffe time


def test_test_logs_each_batch_and_the_means(mnist: Path, capsys: pytest.CaptureFixture[str]):
    model, weights = mnist / "lenet_train_test.prototxt", asset(TRAINED)
    assert main(["test", f"--model={model}", f"--weights={weights}", "--iterations=3"]) == 0
    lines = messages(capsys.readouterr().err)
    assert "Use CPU." in lines and "Running for 3 iterations." in lines
    batches = [line for line in lines if line.startswith("Batch ")]
    assert [b.split(" = ")[0] for b in batches] == [f"Batch {i}, {n}" for i in range(3) for n in ("accuracy", "loss")]
    loss = float(next(line for line in lines if line.startswith("Loss: "))[6:])
    accuracy = float(next(line for line in lines if line.startswith("accuracy = "))[11:])
    mean = re.search(rf"^loss = ({FLOAT}) \(\* 1 = ({FLOAT}) loss\)$", "\n".join(lines), re.M)
    assert mean is not None
    # the same three batches in Python (the test database's 200 digits, batch 100: it wraps once)
    net = caffe.Net(str(model), caffe.TEST, weights=str(weights))
    outs = [{k: float(v) for k, v in net.forward().items()} for _ in range(3)]
    expected_acc = np.mean([o["accuracy"] for o in outs])
    expected_loss = np.mean([o["loss"] for o in outs])
    assert accuracy == pytest.approx(expected_acc, rel=1e-5) and accuracy > 0.95
    assert float(mean.group(1)) == pytest.approx(expected_loss, rel=1e-5)
    assert float(mean.group(2)) == pytest.approx(expected_loss, rel=1e-5)
    assert loss == pytest.approx(expected_loss, rel=1e-5)


LENET_LAYERS = ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]


@pytest.mark.parametrize(
    ("model", "phase", "layers"),
    [
        ("mnist", "", LENET_LAYERS),
        ("deploy", "TEST", ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob"]),
    ],
)
def test_time_reports_every_layer_and_the_totals(
    mnist: Path, capsys: pytest.CaptureFixture[str], model: str, phase: str, layers: list[str]
):
    path = mnist / "lenet_train_test.prototxt" if model == "mnist" else asset("caffe-ref/examples/mnist/lenet.prototxt")
    engine = caffe.inference_engine()
    argv = ["time", "-model", str(path), "-iterations", "2"] + ([f"--phase={phase}"] if phase else [])
    assert main(argv) == 0
    assert caffe.inference_engine() == engine  # put back
    lines = messages(capsys.readouterr().err)
    per_layer = []
    for name in layers:
        per_layer += [rf"^ *{name}\tforward: {FLOAT} ms\.$", rf"^ *{name}\tbackward: {FLOAT} ms\.$"]
    assert_in_order(
        lines,
        [
            r"^Use CPU\.$",
            r"eager engine",
            r"^Performing Forward$",
            rf"^Initial loss: {FLOAT}$",
            r"^Performing Backward$",
            r"^\*\*\* Benchmark begins \*\*\*$",
            r"^Testing for 2 iterations\.$",
            rf"^Iteration: 1 forward-backward time: {FLOAT} ms\.$",
            rf"^Iteration: 2 forward-backward time: {FLOAT} ms\.$",
            r"^Average time per layer: $",
            *per_layer,
            rf"^Average Forward pass: {FLOAT} ms\.$",
            rf"^Average Backward pass: {FLOAT} ms\.$",
            rf"^Average Forward-Backward: {FLOAT} ms\.$",
            rf"^Total Time: {FLOAT} ms\.$",
            r"^\*\*\* Benchmark ends \*\*\*$",
        ],
    )
    assert f"{'conv1':>10}\tforward:" in "\n".join(lines)  # names right-aligned in 10 columns, as Caffe's
    # a deploy net has no loss: its learnable layers still time their parameter gradients, as in Caffe
    assert any("need no backward" in line for line in lines) == (model == "deploy")


# ---------------------------------------------------------------------------------------------
# usage errors


@pytest.mark.parametrize(
    "argv",
    [
        ["train"],
        ["train", "--solver=s.prototxt", "--bogus=1"],
        ["train", "--solver=s.prototxt", "extra"],
        ["train", "--solver=s.prototxt", "--sigint_effect=explode"],
        ["train", "--solver=s.prototxt", "--level=high"],
        ["test", "--model=m.prototxt"],
        ["test", "--weights=w.caffemodel"],
        ["time"],
        ["time", "--model=m.prototxt", "--phase=FOO"],
        ["time", "--model=m.prototxt", "--iterations=0"],
    ],
)
def test_wrong_or_missing_flags_print_the_usage(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "usage: caffe <command> <args>" in err and f"caffe {argv[0]}: error:" in err
    assert "--gpu" in err and ("--solver" in err if argv[0] == "train" else "--model" in err)


def test_usage_documents_the_events_flag(capsys: pytest.CaptureFixture[str]):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--events" in out and "JSON" in out and "--sigint_effect" in out
