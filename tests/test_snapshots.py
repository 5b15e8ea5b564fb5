"""Snapshots: Caffe's file names and formats, exact resume, the 2014 LeNet solverstate, atomic writes.

Resume and the data position: Caffe's SolverState holds the iteration, the weights file, current_step
and the history blobs - not the position of the data readers, which Caffe starts again at the first
record. Here a restore fast-forwards the Data layers to where the interrupted run was
(``test_restore_continues_the_data_where_the_run_was``), so "100 iterations + restore + 100" equals
200 straight iterations bit for bit.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, asset
from google.protobuf import text_format

import caffe
from caffe.data.datum import array_to_datum
from caffe.data.db import item_key, open_db
from caffe.proto import caffe_pb2 as pb
from caffe.weights import blob_proto_to_array


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Solve() snapshots after training (snapshot_after_train), without a prefix into the CWD."""
    monkeypatch.chdir(tmp_path)


KINDS = {
    "SGD": "momentum: 0.9",
    "Nesterov": "momentum: 0.9",
    "AdaGrad": "delta: 1e-6",
    "RMSProp": "rms_decay: 0.95",
    "AdaDelta": "momentum: 0.95 delta: 1e-6",
    "Adam": "momentum: 0.9 momentum2: 0.999",
}
FORMATS = {"BINARYPROTO": ("caffemodel", "solverstate"), "HDF5": ("caffemodel.h5", "solverstate.h5")}


def write_lmdb(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    with open_db(path, "lmdb", "new") as db:
        txn = db.transaction()
        for i, (img, label) in enumerate(zip(images, labels)):
            txn.put(item_key(i, f"item{i}"), array_to_datum(img, label=int(label)).SerializeToString())
        txn.commit()
    return path


def small_lmdb(folder: Path, count: int = 20) -> Path:
    """``count`` 1x6x6 uint8 images; label = index % 3 (so a batch's labels show where the reader is)."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (count, 1, 6, 6), dtype=np.uint8)
    return write_lmdb(folder / "train_lmdb", images, np.arange(count) % 3)


def mlp_net(source: Path, batch: int = 4) -> str:
    return f"""
    name: "MLP"
    layer {{ name: "data" type: "Data" top: "data" top: "label"
            data_param {{ source: "{source}" backend: LMDB batch_size: {batch} }}
            transform_param {{ scale: 0.00390625 }} }}
    layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
            param {{ lr_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
            inner_product_param {{ num_output: 8 weight_filler {{ type: "xavier" }}
                                   bias_filler {{ type: "constant" value: 0.1 }} }} }}
    layer {{ name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }}
    layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
            inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
    """


def make_solver(tmp_path: Path, settings: str, kind: str = "SGD") -> caffe.Solver:
    """The MLP over ``tmp_path``/train_lmdb (made once), snapshots to ``tmp_path``/snaps/mlp_iter_N.*."""
    param = text_format.Parse(
        f"type: '{kind}' base_lr: 0.05 weight_decay: 0.001 {KINDS[kind]} "
        f"snapshot_prefix: '{tmp_path / 'snaps' / 'mlp'}' {settings}",
        pb.SolverParameter(),
    )
    (tmp_path / "snaps").mkdir(exist_ok=True)
    source = tmp_path / "train_lmdb"
    text_format.Parse(mlp_net(source if source.exists() else small_lmdb(tmp_path)), param.net_param)
    return caffe.get_solver(param)


def read_state(path: Path) -> pb.SolverState:
    state = pb.SolverState()
    state.ParseFromString(path.read_bytes())
    return state


def read_model(path: Path) -> pb.NetParameter:
    model = pb.NetParameter()
    model.ParseFromString(path.read_bytes())
    return model


def params_of(solver: caffe.Solver) -> list[np.ndarray]:
    return [b.data.copy() for b in solver.net.learnable_params]


# ----------------------------------------------------------------------------------------------
# names, contents, formats


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_snapshot_file_names_and_snapshot_after_train(tmp_path: Path, fmt: str):
    solver = make_solver(tmp_path, f"lr_policy: 'fixed' max_iter: 5 snapshot: 2 snapshot_format: {fmt}")
    solver.solve()
    model_ext, state_ext = FORMATS[fmt]
    names = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    # every `snapshot` iterations, and once more after training (5 is not a multiple of 2)
    assert names == sorted(f"mlp_iter_{i}.{ext}" for i in (2, 4, 5) for ext in (model_ext, state_ext))

    other = tmp_path / "b"
    other.mkdir()
    solver = make_solver(other, f"lr_policy: 'fixed' max_iter: 4 snapshot: 2 snapshot_format: {fmt}")
    solver.solve()  # 4 is a multiple of 2: no second snapshot at the end
    assert sorted(p.name for p in (other / "snaps").iterdir()) == sorted(
        f"mlp_iter_{i}.{ext}" for i in (2, 4) for ext in (model_ext, state_ext)
    )

    third = tmp_path / "c"
    third.mkdir()
    solver = make_solver(
        third, f"lr_policy: 'fixed' max_iter: 3 snapshot: 2 snapshot_after_train: false snapshot_format: {fmt}"
    )
    solver.solve()
    assert sorted(p.name for p in (third / "snaps").iterdir()) == [f"mlp_iter_2.{model_ext}", f"mlp_iter_2.{state_ext}"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_solverstate_contents(tmp_path: Path, kind: str):
    solver = make_solver(tmp_path, "lr_policy: 'step' stepsize: 3 gamma: 0.5 max_iter: 4 snapshot: 4", kind)
    solver.solve()
    state_file = tmp_path / "snaps" / "mlp_iter_4.solverstate"
    model_file = tmp_path / "snaps" / "mlp_iter_4.caffemodel"
    state = read_state(state_file)
    assert state.iter == 4
    assert state.learned_net == str(model_file)  # the name as written, as Caffe's SnapshotFilename makes it
    assert state.current_step == 1  # set by GetLearningRate at iteration 3: 3 // 3
    params = solver.net.learnable_params
    assert len(state.history) == len(params) * (2 if kind in ("AdaDelta", "Adam") else 1) == len(solver.history)
    for i, proto in enumerate(state.history):
        assert tuple(proto.shape.dim) == params[i % len(params)].shape
        np.testing.assert_array_equal(blob_proto_to_array(proto), solver.history[i].data)
    # the weights file holds the current weights, without diffs (snapshot_diff is off)
    model = read_model(model_file)
    stored = [blob for layer in model.layer for blob in layer.blobs]
    assert len(stored) == len(params)
    for proto, blob in zip(stored, params):
        np.testing.assert_array_equal(blob_proto_to_array(proto), blob.data)
        assert len(proto.diff) == 0


def test_hdf5_solverstate_layout_is_caffes(tmp_path: Path):
    solver = make_solver(
        tmp_path,
        "lr_policy: 'multistep' stepvalue: 1 stepvalue: 2 max_iter: 3 snapshot: 3 snapshot_format: HDF5",
        "Adam",
    )
    solver.solve()
    state_file = tmp_path / "snaps" / "mlp_iter_3.solverstate.h5"
    model_file = tmp_path / "snaps" / "mlp_iter_3.caffemodel.h5"
    with h5py.File(state_file, "r") as f:
        assert sorted(f.keys()) == ["current_step", "history", "iter", "learned_net"]
        # hdf5_save_int: a 1-element int dataset
        for name, value in (("iter", 3), ("current_step", 2)):
            assert f[name].shape == (1,) and f[name].dtype == np.int32 and f[name][0] == value
        # hdf5_save_string (H5LTmake_dataset_string): scalar, fixed-length, NUL-terminated; Caffe's
        # hdf5_load_string reads H5LTget_dataset_info's size bytes into a char buffer
        ds = f["learned_net"]
        tid = ds.id.get_type()
        assert ds.shape == () and tid.get_class() == h5py.h5t.STRING and not tid.is_variable_str()
        raw = np.asarray(ds[()]).tobytes().ljust(tid.get_size(), b"\0")
        assert raw == str(model_file).encode() + b"\0"
        history = f["history"]
        assert (
            sorted(history.keys(), key=int) == [str(i) for i in range(len(solver.history))] and len(solver.history) == 8
        )
        for i, blob in enumerate(solver.history):
            assert history[str(i)].dtype == np.float32
            np.testing.assert_array_equal(history[str(i)][()], blob.data)
    with h5py.File(model_file, "r") as f:
        assert sorted(f["data"].keys()) == ["data", "ip1", "ip2", "loss", "relu"]
        np.testing.assert_array_equal(f["data/ip1/0"][()], solver.net.params["ip1"][0].data)
        np.testing.assert_array_equal(f["data/ip2/0"][()], solver.net.params["ip2"][0].data)
        assert "diff" not in f


def write_caffe_style_hdf5_state(path: Path, solver: caffe.Solver, learned_net: str, iteration: int, step: int):
    """A .solverstate.h5 as Caffe's HDF5 calls lay it out (H5LT int datasets, NULLTERM string)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("iter", data=np.array([iteration], np.int32))
        f.create_dataset("current_step", data=np.array([step], np.int32))
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(len(learned_net) + 1)
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        dset = h5py.h5d.create(f.id, b"learned_net", tid, h5py.h5s.create(h5py.h5s.SCALAR))
        dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(learned_net.encode() + b"\0", dtype=f"S{len(learned_net) + 1}"))
        group = f.create_group("history")
        for i, blob in enumerate(solver.history):
            group[str(i)] = np.full(blob.shape, 0.25 + i, np.float32)


def test_restores_a_caffe_written_hdf5_state(tmp_path: Path):
    solver = make_solver(tmp_path, "lr_policy: 'fixed' snapshot_format: HDF5", "SGD")
    model = tmp_path / "snaps" / "caffe.caffemodel.h5"
    solver.net.save_hdf5(model)
    saved = params_of(solver)
    write_caffe_style_hdf5_state(tmp_path / "snaps" / "caffe.solverstate.h5", solver, str(model), 42, 3)
    fresh = make_solver(tmp_path, "lr_policy: 'fixed' snapshot_format: HDF5", "SGD")
    fresh.restore(str(tmp_path / "snaps" / "caffe.solverstate.h5"))
    assert (fresh.iter, fresh.current_step) == (42, 3)
    for a, b in zip(params_of(fresh), saved):
        np.testing.assert_array_equal(a, b)
    for i, blob in enumerate(fresh.history):
        assert np.all(blob.data == np.float32(0.25 + i))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_snapshot_diff_writes_the_diffs(tmp_path: Path, fmt: str):
    solver = make_solver(
        tmp_path, f"lr_policy: 'fixed' max_iter: 2 snapshot: 2 snapshot_diff: true snapshot_format: {fmt}"
    )
    solver.solve()
    model_ext = FORMATS[fmt][0]
    model_file = tmp_path / "snaps" / f"mlp_iter_2.{model_ext}"
    params = solver.net.learnable_params
    # after Net::Update the diffs hold the last update step (for SGD: the momentum history)
    for blob, hist in zip(params, solver.history):
        np.testing.assert_array_equal(blob.diff, hist.data)
        assert np.abs(blob.diff).sum() > 0
    if fmt == "HDF5":
        with h5py.File(model_file, "r") as f:
            for name in ("ip1", "ip2"):
                for j, blob in enumerate(solver.net.params[name]):
                    np.testing.assert_array_equal(f[f"diff/{name}/{j}"][()], blob.diff)
                    np.testing.assert_array_equal(f[f"data/{name}/{j}"][()], blob.data)
    else:
        stored = [blob for layer in read_model(model_file).layer for blob in layer.blobs]
        for proto, blob in zip(stored, params):
            np.testing.assert_array_equal(blob_proto_to_array(proto, diff=True), blob.diff)
            np.testing.assert_array_equal(blob_proto_to_array(proto), blob.data)


def test_snapshot_method_and_log_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    solver = make_solver(tmp_path, "lr_policy: 'fixed'")
    solver.step(3)
    with caplog.at_level(logging.INFO, logger="caffe"):
        model, state = solver.snapshot()
    prefix = tmp_path / "snaps" / "mlp_iter_3"
    assert (model, state) == (f"{prefix}.caffemodel", f"{prefix}.solverstate")
    lines = [r.getMessage() for r in caplog.records]
    assert f"Snapshotting to binary proto file {prefix}.caffemodel" in lines
    assert f"Snapshotting solver state to binary proto file {prefix}.solverstate" in lines
    solver.param.snapshot_format = pb.SolverParameter.HDF5
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.snapshot()
    lines = [r.getMessage() for r in caplog.records]
    assert f"Snapshotting to HDF5 file {prefix}.caffemodel.h5" in lines
    assert f"Snapshotting solver state to HDF5 file {prefix}.solverstate.h5" in lines


# ----------------------------------------------------------------------------------------------
# exact resume


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_resume_is_exact(tmp_path: Path, kind: str, fmt: str):
    # multistep: current_step (2 at iteration 100) must come back from the state, or iteration 100
    # would run at the rate of step 1
    settings = (
        "lr_policy: 'multistep' gamma: 0.5 stepvalue: 30 stepvalue: 60 stepvalue: 150 "
        f"max_iter: 200 snapshot: 100 snapshot_format: {fmt}"
    )
    straight = make_solver(tmp_path, settings, kind)
    straight.solve()
    assert straight.iter == 200
    model_ext, state_ext = FORMATS[fmt]
    state_file = tmp_path / "snaps" / f"mlp_iter_100.{state_ext}"
    assert state_file.is_file() and (tmp_path / "snaps" / f"mlp_iter_100.{model_ext}").is_file()
    final_state = (tmp_path / "snaps" / f"mlp_iter_200.{state_ext}").read_bytes()
    expected_params, expected_history = params_of(straight), [h.data.copy() for h in straight.history]

    caffe.set_random_seed(99)  # other initial weights: all must come from the snapshot
    resumed = make_solver(tmp_path, settings, kind)
    if kind == "SGD":
        resumed.solve(str(state_file))
    else:
        resumed.restore(str(state_file))
        assert resumed.iter == 100 and resumed.current_step == 2
        resumed.step(100)
        resumed.snapshot()
    assert resumed.iter == 200
    for a, b in zip(params_of(resumed), expected_params):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(resumed.history, expected_history):
        np.testing.assert_array_equal(a.data, b)
    if fmt == "BINARYPROTO":  # the final snapshots are the same bytes
        assert (tmp_path / "snaps" / f"mlp_iter_200.{state_ext}").read_bytes() == final_state


def test_restore_continues_the_data_where_the_run_was(tmp_path: Path):
    """Unlike Caffe (whose readers start again at the first record), a restored solver's Data layer reads
    what the interrupted run would have read next: records 8-11 after 2 iterations of batch 4."""
    solver = make_solver(tmp_path, "lr_policy: 'fixed' max_iter: 2 snapshot: 2")
    solver.solve()  # read records 0-7
    solver.step(1)
    expected = solver.net.blobs["label"].data.copy()  # records 8-11
    resumed = make_solver(tmp_path, "lr_policy: 'fixed'")
    resumed.restore(str(tmp_path / "snaps" / "mlp_iter_2.solverstate"))
    resumed.step(1)
    assert resumed.iter == 3
    np.testing.assert_array_equal(resumed.net.blobs["label"].data, expected)


def test_resume_mid_epoch_with_iter_size_is_exact(tmp_path: Path):
    """A snapshot in the middle of an epoch (20 records, 2 x 4 per iteration): the resumed run reads on
    from record 4 of the second pass and ends with the uninterrupted run's weights."""
    settings = "lr_policy: 'fixed' iter_size: 2 max_iter: 7 snapshot: 3"
    straight = make_solver(tmp_path, settings)
    straight.solve()
    expected = params_of(straight)
    resumed = make_solver(tmp_path, settings)
    resumed.solve(str(tmp_path / "snaps" / "mlp_iter_3.solverstate"))
    assert resumed.iter == 7
    for a, b in zip(params_of(resumed), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def solver_param_with(tmp_path: Path, layer: str) -> pb.SolverParameter:
    """The MLP with ``layer`` inserted after ``relu`` (on ``ip1``), 6 iterations, a snapshot at 3."""
    param = text_format.Parse(
        f"type: 'SGD' base_lr: 0.05 momentum: 0.9 snapshot_prefix: '{tmp_path / 'snaps' / 'mlp'}' "
        "lr_policy: 'fixed' max_iter: 6 snapshot: 3",
        pb.SolverParameter(),
    )
    (tmp_path / "snaps").mkdir()
    net = mlp_net(small_lmdb(tmp_path)).replace('layer { name: "ip2"', layer + '\n    layer { name: "ip2"')
    assert layer in net
    text_format.Parse(net, param.net_param)
    return param


def resumed_from_iter_3(tmp_path: Path, param: pb.SolverParameter) -> list[np.ndarray]:
    """The parameters after resuming from the iteration-3 snapshot, torch's RNG set elsewhere meanwhile."""
    torch.manual_seed(1234)  # another random state: the one that matters comes from the snapshot
    resumed = caffe.get_solver(param)
    resumed.solve(str(tmp_path / "snaps" / "mlp_iter_3.solverstate"))
    return params_of(resumed)


def test_resume_with_dropout_is_exact(tmp_path: Path):
    """torch's random-number state is kept beside the solver state (``.solverstate.rng``), so the Dropout
    masks after a restore are the uninterrupted run's."""
    param = solver_param_with(tmp_path, 'layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" }')
    straight = caffe.get_solver(param)
    straight.solve()
    assert (tmp_path / "snaps" / "mlp_iter_3.solverstate.rng").is_file()
    expected = params_of(straight)
    for a, b in zip(resumed_from_iter_3(tmp_path, param), expected, strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "snaps" / "mlp_iter_3.solverstate.rng").unlink()  # a state written by Caffe: resumes, masks differ
    other = resumed_from_iter_3(tmp_path, param)
    assert any(not np.array_equal(a, b) for a, b in zip(other, expected, strict=True))


def test_snapshot_and_resume_with_a_python_layer(tmp_path: Path):
    """A user's Python layer may draw torch random numbers: its net snapshots (with the RNG state) and resumes
    exactly."""
    param = solver_param_with(
        tmp_path,
        'layer { name: "noise" type: "Python" bottom: "ip1" top: "ip1"\n'
        '        python_param { module: "pylayers.scale_layers" layer: "TorchNoise" } }',
    )
    straight = caffe.get_solver(param)
    straight.solve()
    assert (tmp_path / "snaps" / "mlp_iter_3.solverstate.rng").is_file()
    for a, b in zip(resumed_from_iter_3(tmp_path, param), params_of(straight), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restore_errors(tmp_path: Path):
    solver = make_solver(tmp_path, "lr_policy: 'fixed' max_iter: 1 snapshot: 1")
    solver.solve()
    adam = make_solver(tmp_path, "lr_policy: 'fixed'", "Adam")
    with pytest.raises(caffe.SolverError, match="incorrect length of history blobs"):
        adam.restore(str(tmp_path / "snaps" / "mlp_iter_1.solverstate"))
    with pytest.raises(caffe.SolverError, match="not found"):
        solver.restore(str(tmp_path / "snaps" / "missing.solverstate"))


# ----------------------------------------------------------------------------------------------
# the 2014 LeNet solverstate (V1 prototxts)

LENET = "models/lenet_mnist_v1format_2014"


def mnist_subset(path: Path, count: int) -> Path:
    """The first ``count`` MNIST test digits as an LMDB of raw 1x28x28 Datums (as convert_mnist_data)."""
    with gzip.open(asset("mnist/t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(16 + count * 784)[16:], np.uint8).reshape(count, 1, 28, 28)
    with gzip.open(asset("mnist/t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(8 + count)[8:], np.uint8)
    return write_lmdb(path, images, labels)


def lenet_layout(root: Path) -> Path:
    """Caffe's examples/mnist layout under ``root``: the V1 prototxts, the snapshot, small LMDBs."""
    mnist = root / "examples" / "mnist"
    mnist.mkdir(parents=True)
    for name in ("lenet_solver.prototxt", "lenet_train_test.prototxt", "lenet_iter_10000.caffemodel"):
        shutil.copy(asset(f"{LENET}/{name}"), mnist / name)
    mnist_subset(mnist / "mnist_train_lmdb", 192)
    mnist_subset(mnist / "mnist_test_lmdb", 100)
    return mnist


def test_restore_2014_lenet_solverstate_and_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    lenet_layout(tmp_path)
    monkeypatch.chdir(tmp_path)  # the solver, the net and learned_net name paths relative to Caffe's root
    solver = caffe.get_solver("examples/mnist/lenet_solver.prototxt")
    assert type(solver) is caffe.SGDSolver and len(solver.test_nets) == 1
    state = read_state(asset(f"{LENET}/lenet_iter_10000.solverstate"))
    model = read_model(asset(f"{LENET}/lenet_iter_10000.caffemodel"))
    assert state.learned_net == "examples/mnist/lenet_iter_10000.caffemodel"
    solver.restore(str(asset(f"{LENET}/lenet_iter_10000.solverstate")))
    assert solver.iter == 10000 and solver.current_step == 0
    assert len(solver.history) == 8
    for blob, proto in zip(solver.history, state.history):
        np.testing.assert_array_equal(blob.data.reshape(-1), blob_proto_to_array(proto).reshape(-1))
    v1_blobs = {layer.name: list(layer.blobs) for layer in model.layers}
    for name in ("conv1", "conv2", "ip1", "ip2"):
        for blob, proto in zip(solver.net.params[name], v1_blobs[name]):
            np.testing.assert_array_equal(blob.data.reshape(-1), blob_proto_to_array(proto).reshape(-1))

    # one update by hand: SGD with the restored momentum history, lr 0.00594604 at iteration 10000,
    # blobs_lr 1/2 (weights/biases), weight_decay 0.0005 on all (V1 weight_decay defaults to 1)
    params, history = solver.net.learnable_params, [h.data.astype(np.float64) for h in solver.history]
    before = [b.data.astype(np.float64) for b in params]
    grads: list[np.ndarray] = []
    solver.add_callback(lambda: None, lambda: grads.extend(b.diff.astype(np.float64) for b in params))
    solver.param.test_iter[0] = 2  # keep the test at iteration 10000 short
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.step(1)
    rate = 0.01 * (1 + 0.0001 * 10000) ** -0.75
    for i, blob in enumerate(params):
        expected = before[i] - (0.9 * history[i] + rate * (1 + i % 2) * (grads[i] + 0.0005 * before[i]))
        np.testing.assert_allclose(blob.data, expected, rtol=1e-5, atol=1e-7)
    lines = [r.getMessage() for r in caplog.records]
    assert "Iteration 10000, lr = 0.00594604" in lines
    assert "Iteration 10000, Testing net (#0)" in lines
    # the trained LeNet is good on these digits
    accuracy = [float(m.split(" = ")[1]) for m in lines if m.startswith("    Test net output #0: accuracy")]
    assert accuracy and accuracy[0] >= 0.95
    train_loss = [float(m.split(" = ")[1].split()[0]) for m in lines if m.startswith("    Train net output #0: loss")]
    assert train_loss and train_loss[0] < 0.3
    solver.step(2)
    assert solver.iter == 10003
    solver.snapshot()
    assert Path("examples/mnist/lenet_iter_10003.caffemodel").is_file()
    assert read_state(Path("examples/mnist/lenet_iter_10003.solverstate")).iter == 10003


def test_restore_finds_learned_net_beside_the_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run from elsewhere: 'examples/mnist/lenet_iter_10000.caffemodel' is not under the CWD, but beside the state."""
    mnist = lenet_layout(tmp_path / "root")
    solver_param = pb.SolverParameter()
    text_format.Parse((mnist / "lenet_solver.prototxt").read_text(), solver_param)
    solver_param.net = str(mnist / "lenet_train_test.prototxt")
    net_text = (mnist / "lenet_train_test.prototxt").read_text().replace("examples/mnist", str(mnist))
    (mnist / "lenet_train_test.prototxt").write_text(net_text)
    solver_param.snapshot_prefix = str(mnist / "lenet")
    monkeypatch.chdir(tmp_path)
    solver = caffe.get_solver(solver_param)
    solver.restore(str(asset(f"{LENET}/lenet_iter_10000.solverstate")))
    model = read_model(asset(f"{LENET}/lenet_iter_10000.caffemodel"))
    conv1 = next(layer for layer in model.layers if layer.name == "conv1")
    np.testing.assert_array_equal(solver.net.params["conv1"][0].data.reshape(-1), np.asarray(conv1.blobs[0].data))
    assert solver.iter == 10000


# ----------------------------------------------------------------------------------------------
# atomicity


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_failed_state_write_leaves_previous_snapshot_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str):
    solver = make_solver(tmp_path, f"lr_policy: 'fixed' snapshot_format: {fmt}")
    model_ext, state_ext = FORMATS[fmt]
    snaps = tmp_path / "snaps"
    solver.step(1)
    solver.snapshot()
    good = {p.name: p.read_bytes() for p in snaps.iterdir()}
    assert sorted(good) == [f"mlp_iter_1.{model_ext}", f"mlp_iter_1.{state_ext}"]

    class Interrupted(Exception):
        pass

    # interrupt the solver state in the middle of its writing: the model file is complete by then
    if fmt == "HDF5":
        real = h5py.Group.create_dataset

        def create_dataset(self, name, *args, **kwargs):
            if name == "1" and self.name == "/history":
                raise Interrupted("disk full")
            return real(self, name, *args, **kwargs)

        monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    else:
        real_fsync, calls = os.fsync, []

        def fsync(fd):
            calls.append(fd)
            if len(calls) == 2:  # the second file (the solverstate) has been written, not yet renamed
                raise Interrupted("disk full")
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    solver.step(1)
    with pytest.raises(Interrupted):
        solver.snapshot()
    monkeypatch.undo()
    names = sorted(p.name for p in snaps.iterdir())
    # no temporary files, no half-written state; the model written before the interruption is complete
    assert names == sorted([*good, f"mlp_iter_2.{model_ext}"])
    for name, data in good.items():
        assert (snaps / name).read_bytes() == data
    fresh = make_solver(tmp_path, f"lr_policy: 'fixed' snapshot_format: {fmt}")
    fresh.net.copy_from(str(snaps / f"mlp_iter_2.{model_ext}"))
    for a, b in zip(params_of(fresh), params_of(solver)):
        np.testing.assert_array_equal(a, b)
    fresh.restore(str(snaps / f"mlp_iter_1.{state_ext}"))
    assert fresh.iter == 1


CHILD = r"""
import os, sys, time, h5py, torch, caffe
# a slow disk: the writes take a while, so that the kills land in them too
_fsync, _create = os.fsync, h5py.Group.create_dataset
os.fsync = lambda fd: (time.sleep(0.02), _fsync(fd))[1]
h5py.Group.create_dataset = lambda self, *a, **k: (time.sleep(0.005), _create(self, *a, **k))[1]
from google.protobuf import text_format
from caffe.proto import caffe_pb2 as pb
caffe.set_mode_cpu()
torch.set_num_threads(1)
folder = sys.argv[1]
param = text_format.Parse('''
  base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 snapshot_prefix: "%s/big"
  net_param { name: "Big"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1000 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 1000 weight_filler { type: "constant" } } }
  }''' % folder, pb.SolverParameter())
solver = caffe.get_solver(param)
solver.iter = 7
counter = int(sys.argv[2])
while True:
    counter += 1
    for blob in solver.net.learnable_params + solver.history:
        blob.data[...] = counter
    solver.param.snapshot_format = pb.SolverParameter.HDF5 if counter % 2 else pb.SolverParameter.BINARYPROTO
    solver.snapshot()
    print(counter, flush=True)
"""


def whole_value(arrays: list[np.ndarray]) -> int:
    """The one value the big net's weight and bias (or their histories) hold; asserts both are whole."""
    assert [a.size for a in arrays] == [1000 * 1000, 1000]
    value = int(arrays[0].flat[0])
    assert all(np.all(a == value) for a in arrays)
    return value


def check_binary_snapshot(folder: Path) -> tuple[int | None, int | None]:
    """The counter value in big_iter_7.caffemodel / .solverstate (None: absent); asserts they are whole."""
    values: list[int | None] = []
    model_file, state_file = folder / "big_iter_7.caffemodel", folder / "big_iter_7.solverstate"
    if model_file.exists():
        blobs = read_model(model_file).layer[1].blobs
        arrays = [blob_proto_to_array(b) for b in blobs]
        values.append(whole_value(arrays))
    else:
        values.append(None)
    if state_file.exists():
        state = read_state(state_file)
        assert state.iter == 7 and len(state.history) == 2
        arrays = [blob_proto_to_array(b) for b in state.history]
        values.append(whole_value(arrays))
    else:
        values.append(None)
    return values[0], values[1]


def check_hdf5_snapshot(folder: Path) -> tuple[int | None, int | None]:
    values: list[int | None] = []
    model_file, state_file = folder / "big_iter_7.caffemodel.h5", folder / "big_iter_7.solverstate.h5"
    if model_file.exists():
        with h5py.File(model_file, "r") as f:
            arrays = [f["data/ip/0"][()], f["data/ip/1"][()]]
        values.append(whole_value(arrays))
    else:
        values.append(None)
    if state_file.exists():
        with h5py.File(state_file, "r") as f:
            assert int(f["iter"][0]) == 7
            arrays = [f["history/0"][()], f["history/1"][()]]
        values.append(whole_value(arrays))
    else:
        values.append(None)
    return values[0], values[1]


def test_sigkill_during_snapshots_never_leaves_a_corrupt_file(tmp_path: Path):
    """A process snapshotting a 4 MB net in a loop (both formats in turn) is SIGKILLed at random moments.

    Snapshot k fills the weights and the history with k and writes format k % 2 (odd: HDF5) at the
    same names each time. After every kill each file present must be whole, and hold either the last
    completed snapshot of its format or the one being written (``last + 1``).
    """
    folder = tmp_path / "snaps"
    folder.mkdir()
    rng = random.Random(1234)
    checks = {0: check_binary_snapshot, 1: check_hdf5_snapshot}
    previous: dict[int, tuple[int | None, int | None]] = {0: (None, None), 1: (None, None)}
    counter = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(folder), str(counter)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            first = proc.stdout.readline()  # a first snapshot is complete in this run
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        done = [int(x) for x in (first + out).split()]
        assert done, err
        in_progress = done[-1] + 1
        for parity, check in checks.items():
            model, state = check(folder)
            ours = [k for k in done if k % 2 == parity]
            # before: this run's last completed snapshot of the format, else what the files held
            before = (ours[-1], ours[-1]) if ours else previous[parity]
            extra = {in_progress} if in_progress % 2 == parity else set()
            assert model in {before[0], *extra}, (check.__name__, model, before, extra)
            assert state in {before[1], *extra}, (check.__name__, state, before, extra)
            assert state is None or state <= model  # the weights are written first
            previous[parity] = (model, state)
        names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
        assert names <= {f"big_iter_7.{ext}" for pair in FORMATS.values() for ext in pair}
        counter = in_progress  # the next run writes above anything written so far


# ----------------------------------------------------------------------------------------------
# double precision (Caffe's Dtype=double)


@pytest.fixture
def double():
    """Nets built inside the test compute in float64 (``caffe.set_dtype``); float again afterwards."""
    caffe.set_dtype("double")
    try:
        yield
    finally:
        caffe.set_dtype("float")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_double_snapshots_hold_doubles_and_resume_exactly(tmp_path: Path, fmt: str, double: None):
    settings = f"lr_policy: 'inv' gamma: 0.001 power: 0.75 max_iter: 40 snapshot: 20 snapshot_format: {fmt}"
    straight = make_solver(tmp_path, settings)
    assert straight.net.dtype == torch.float64 and straight.history[0].data.dtype == np.float64
    straight.step(7)
    base, gamma, power = (float(np.float32(v)) for v in (0.05, 0.001, 0.75))  # the proto's float fields
    rate = base * (1 + gamma * 7) ** -power
    assert straight.learning_rate() == pytest.approx(rate, rel=1e-15)
    assert straight.learning_rate() != float(np.float32(rate))  # computed in Caffe's Dtype, not rounded to float
    straight.step(33)
    model_ext, state_ext = FORMATS[fmt]
    model, state = (tmp_path / "snaps" / f"mlp_iter_20.{ext}" for ext in (model_ext, state_ext))
    if fmt == "BINARYPROTO":
        blob = read_model(model).layer[1].blobs[0]
        assert len(blob.double_data) == 8 * 36 and not len(blob.data)
        assert all(len(h.double_data) and not len(h.data) for h in read_state(state).history)
    else:
        with h5py.File(model) as f:
            assert f["data/ip1/0"].dtype == np.float64
        with h5py.File(state) as f:
            assert f["history/0"].dtype == np.float64
    caffe.set_random_seed(99)
    resumed = make_solver(tmp_path, settings)
    resumed.restore(str(state))
    resumed.step(20)
    for a, b in zip(params_of(resumed), params_of(straight)):
        np.testing.assert_array_equal(a, b)  # bitwise: no float32 rounding on the way through the files


def test_float_net_reads_a_double_caffemodel(tmp_path: Path, double: None):
    solver = make_solver(tmp_path, "lr_policy: 'fixed' max_iter: 3 snapshot: 3")
    solver.solve()
    weights = params_of(solver)
    caffe.set_dtype("float")
    param = pb.NetParameter()
    text_format.Parse(mlp_net(tmp_path / "train_lmdb"), param)
    net = caffe.Net(param, caffe.TRAIN, weights=str(tmp_path / "snaps" / "mlp_iter_3.caffemodel"))
    got = [b.data for b in net.learnable_params]
    assert all(g.dtype == np.float32 for g in got)
    for g, w in zip(got, weights, strict=True):
        np.testing.assert_array_equal(g, w.astype(np.float32))
