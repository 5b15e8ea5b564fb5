"""The tutorials' nets, solvers and training scripts (examples/mnist, examples/cifar10, examples/imagenet,
models/bvlc_*): the same definitions as Caffe's, runnable as its tutorials run them.

* every definition parses to the same NetParameter / SolverParameter as Caffe's original file in the
  assets (layer and blob names, fillers, lr/decay multipliers, data sources, solver settings,
  snapshot prefixes), with its own comments;
* every net builds and runs in each phase and stage it declares (file-reading data layers replaced
  by DummyData, as in test_asset_nets), every solver builds its train and test nets and takes steps,
  deploy nets hold the parameters of their train/test nets;
* the scripts call ``caffe train`` with the right solver (and, when resuming, the snapshot file the
  previous solver writes), and the MNIST tutorial runs end to end: get_mnist.sh, create_mnist.sh,
  train_lenet.sh, shortened to 100 iterations.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ASSETS, ROOT, asset
from test_asset_nets import _identity_batchnorm, _states, _with_dummy_data

import caffe
from caffe.data.db import open_db
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_binary, read_net_param, read_text, write_text
from caffe.solver import solver_class
from caffe.upgrade import net_needs_upgrade, upgrade_net_as_needed

MODELS = ("bvlc_reference_caffenet", "bvlc_alexnet", "bvlc_googlenet")
FOLDERS = ("examples/mnist", "examples/cifar10", *(f"models/{m}" for m in MODELS))


def _originals() -> list[str]:
    """Caffe's prototxts of the tutorial folders, relative to the Caffe root (= to caffe-ref/)."""
    return sorted(
        p.relative_to(ASSETS / "caffe-ref").as_posix()
        for folder in FOLDERS
        for p in (ASSETS / "caffe-ref" / folder).glob("*.prototxt")
    )


ORIGINALS = _originals()
SOLVERS = [f for f in ORIGINALS if "solver" in Path(f).name]
NETS = [f for f in ORIGINALS if f not in SOLVERS]
DEPLOY_OF = {
    "examples/mnist/lenet_train_test.prototxt": "examples/mnist/lenet.prototxt",
    "examples/cifar10/cifar10_quick_train_test.prototxt": "examples/cifar10/cifar10_quick.prototxt",
    "examples/cifar10/cifar10_full_train_test.prototxt": "examples/cifar10/cifar10_full.prototxt",
    **{f"models/{m}/train_val.prototxt": f"models/{m}/deploy.prototxt" for m in MODELS},
}
NOTEBOOK_SOLVER = "examples/mnist/lenet_auto_solver.prototxt"  # its nets are written by the LeNet notebook


def test_every_original_has_its_file():
    assert len(ORIGINALS) == 37 and len(SOLVERS) == 22
    assert [f for f in ORIGINALS if not (ROOT / f).is_file()] == []


# ---------------------------------------------------------------------------------------------
# the definitions


def _comments(text: str) -> set[str]:
    return {line.split("#", 1)[1].strip() for line in text.splitlines() if "#" in line} - {""}


@pytest.mark.parametrize("rel", ORIGINALS)
def test_same_definition_as_caffe(rel: str):
    kind = pb.SolverParameter if rel in SOLVERS else pb.NetParameter
    ours, theirs = read_text(ROOT / rel, kind()), read_text(ASSETS / "caffe-ref" / rel, kind())
    if kind is pb.SolverParameter and theirs.HasField("net_param"):
        # the consolidated solver's inline net is in the V1 format (layers {}, blobs_lr): ours is its upgrade
        assert net_needs_upgrade(theirs.net_param) and not net_needs_upgrade(ours.net_param)
        upgrade_net_as_needed(theirs.net_param, rel)
    assert ours == theirs
    if kind is pb.NetParameter:  # the current format: layer {} with Input layers (V1 layers {} and input: are gone)
        assert ours.layer and not ours.layers and not ours.input
    # the files are ours: none of the original's comments
    assert not _comments((ROOT / rel).read_text()) & _comments((ASSETS / "caffe-ref" / rel).read_text())


def test_tutorial_facts():
    """What the MNIST and ImageNet tutorials say about these files."""
    solver = read_text(ROOT / "examples/mnist/lenet_solver.prototxt", pb.SolverParameter())
    assert (solver.net, solver.test_iter[:], solver.test_interval) == (
        "examples/mnist/lenet_train_test.prototxt",
        [100],
        500,
    )
    assert (solver.base_lr, solver.momentum, solver.lr_policy, solver.max_iter) == (
        pytest.approx(0.01),
        pytest.approx(0.9),
        "inv",
        10000,
    )
    assert (solver.snapshot, solver.snapshot_prefix, solver.solver_mode) == (
        5000,
        "examples/mnist/lenet",
        pb.SolverParameter.GPU,
    )
    net = read_net_param(ROOT / "examples/mnist/lenet_train_test.prototxt")
    data = [layer for layer in net.layer if layer.type == "Data"]
    assert [(d.data_param.source, d.data_param.batch_size) for d in data] == [
        ("examples/mnist/mnist_train_lmdb", 64),
        ("examples/mnist/mnist_test_lmdb", 100),
    ]
    assert data[0].transform_param.scale == pytest.approx(1 / 256)
    caffenet = read_text(ROOT / "models/bvlc_reference_caffenet/solver.prototxt", pb.SolverParameter())
    assert (caffenet.max_iter, caffenet.stepsize, caffenet.test_interval, caffenet.snapshot) == (
        450000,
        100000,
        1000,
        10000,
    )
    train_val = read_net_param(ROOT / caffenet.net)
    assert [layer.data_param.source for layer in train_val.layer if layer.type == "Data"] == [
        "examples/imagenet/ilsvrc12_train_lmdb",
        "examples/imagenet/ilsvrc12_val_lmdb",
    ]


def _batch(rel: str) -> int:
    return 1 if rel.startswith("models/") else 2  # the ImageNet nets: one image


def _fill_inputs(net: caffe.Net, rng: np.random.Generator, batch: int) -> None:
    for name in net.inputs:
        blob = net.blobs[name]
        if blob.shape[0] > batch:
            blob.reshape(batch, *blob.shape[1:])
        blob.data[...] = rng.uniform(0, 1, blob.shape)
    net.reshape()


@pytest.mark.parametrize("rel", NETS)
def test_net_builds_and_runs(rel: str):
    param = _with_dummy_data(Path(rel), read_net_param(ROOT / rel), batch=_batch(rel))
    rng = np.random.default_rng(0)
    for phase, stages in _states(param):
        net = caffe.Net(param, phase, stages=list(stages))
        _identity_batchnorm(net)
        _fill_inputs(net, rng, _batch(rel))
        out = net.forward()
        assert out, f"{rel} ({phase}, {stages}) has no outputs"
        for name, value in out.items():
            assert np.isfinite(value).all(), f"{rel} ({phase}): {name}"
        if rel in DEPLOY_OF.values():
            classes = 1000 if rel.startswith("models/") else 10
            assert out["prob"].shape == (net.blobs["data"].shape[0], classes)
            np.testing.assert_allclose(out["prob"].sum(axis=1), 1, rtol=1e-5)
        if phase == caffe.TRAIN:
            net.backward()
            assert all(np.isfinite(p.diff).all() for p in net.learnable_params)


@pytest.mark.parametrize("train_val, deploy", DEPLOY_OF.items())
def test_deploy_net_takes_the_trained_weights(train_val: str, deploy: str):
    """Every learnable layer of the deploy net is in the train/test net, with the same parameter shapes."""
    trained = caffe.Net(_with_dummy_data(Path(train_val), read_net_param(ROOT / train_val)), caffe.TEST)
    served = caffe.Net(str(ROOT / deploy), caffe.TEST)
    learnable = {name: [b.shape for b in blobs] for name, blobs in served.params.items()}
    assert learnable and all(trained.params[name] for name in learnable)
    assert {name: [b.shape for b in trained.params[name]] for name in learnable} == learnable
    missing = set(trained.params) - set(learnable)
    if "googlenet" in deploy:  # deployed without its two auxiliary classifiers
        assert missing and all(name.startswith(("loss1/", "loss2/")) for name in missing)
    else:
        assert not missing


@pytest.mark.parametrize("rel", [s for s in SOLVERS if s != NOTEBOOK_SOLVER])
def test_solver_builds_its_nets_and_steps(rel: str, tmp_path: Path):
    param = read_text(ROOT / rel, pb.SolverParameter())
    if param.HasField("net"):
        assert (ROOT / param.net).is_file(), param.net
        net = read_net_param(ROOT / param.net)
        param.ClearField("net")
    else:
        net = param.net_param
    assert (ROOT / param.snapshot_prefix).parent.is_dir()  # the prefixes are relative to the Caffe root
    param.net_param.CopyFrom(_with_dummy_data(Path(rel), net, batch=_batch(rel)))
    n_tests = max(len(param.test_state), 1)
    assert len(param.test_iter) == n_tests
    param.test_iter[:] = [1] * n_tests
    param.max_iter, param.display, param.snapshot_prefix = 1, 1, str(tmp_path / "snap")
    solver = solver_class(param.type)(param)
    assert type(solver).type_name == param.type
    assert len(solver.test_nets) == n_tests
    _identity_batchnorm(solver.net)
    solver.step(1)
    assert solver.iter == 1 and np.isfinite(solver.smoothed_loss)
    for i in range(n_tests):
        assert all(np.isfinite(v).all() for v in np.atleast_1d(list(solver.test(i).values())))


# ---------------------------------------------------------------------------------------------
# the scripts

TRAIN_SCRIPTS = {
    "examples/mnist/train_lenet.sh": ["examples/mnist/lenet_solver.prototxt"],
    "examples/mnist/train_lenet_adam.sh": ["examples/mnist/lenet_solver_adam.prototxt"],
    "examples/mnist/train_lenet_rmsprop.sh": ["examples/mnist/lenet_solver_rmsprop.prototxt"],
    "examples/mnist/train_lenet_consolidated.sh": ["examples/mnist/lenet_consolidated_solver.prototxt"],
    "examples/mnist/train_mnist_autoencoder.sh": ["examples/mnist/mnist_autoencoder_solver.prototxt"],
    "examples/mnist/train_mnist_autoencoder_adadelta.sh": ["examples/mnist/mnist_autoencoder_solver_adadelta.prototxt"],
    "examples/mnist/train_mnist_autoencoder_adagrad.sh": ["examples/mnist/mnist_autoencoder_solver_adagrad.prototxt"],
    "examples/mnist/train_mnist_autoencoder_nesterov.sh": ["examples/mnist/mnist_autoencoder_solver_nesterov.prototxt"],
    "examples/cifar10/train_quick.sh": [
        "examples/cifar10/cifar10_quick_solver.prototxt",
        "examples/cifar10/cifar10_quick_solver_lr1.prototxt",
    ],
    "examples/cifar10/train_full.sh": [
        "examples/cifar10/cifar10_full_solver.prototxt",
        "examples/cifar10/cifar10_full_solver_lr1.prototxt",
        "examples/cifar10/cifar10_full_solver_lr2.prototxt",
    ],
    "examples/cifar10/train_full_sigmoid.sh": ["examples/cifar10/cifar10_full_sigmoid_solver.prototxt"],
    "examples/cifar10/train_full_sigmoid_bn.sh": ["examples/cifar10/cifar10_full_sigmoid_solver_bn.prototxt"],
    "examples/imagenet/train_caffenet.sh": ["models/bvlc_reference_caffenet/solver.prototxt"],
    "examples/imagenet/resume_training.sh": ["models/bvlc_reference_caffenet/solver.prototxt"],
}
SCRIPTS = [*TRAIN_SCRIPTS, "examples/cifar10/create_cifar10.sh"]


def _state_file(solver_rel: str, iteration: int) -> str:
    """The .solverstate a solver writes at ``iteration`` (which must be one it snapshots at)."""
    p = read_text(ROOT / solver_rel, pb.SolverParameter())
    assert iteration % p.snapshot == 0 or (iteration == p.max_iter and p.snapshot_after_train)
    hdf5 = p.snapshot_format == pb.SolverParameter.HDF5
    return f"{p.snapshot_prefix}_iter_{iteration}.solverstate{'.h5' if hdf5 else ''}"


def _caffe_env(tmp_path: Path, body: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "caffe").write_text(f"#!/bin/sh\n{body}\n")
    (bindir / "caffe").chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("CAFFE_DATA_MIRROR", None)
    return env


def _real_caffe(tmp_path: Path) -> dict[str, str]:
    """A ``caffe`` on PATH running this checkout with this interpreter."""
    run = f'exec "{sys.executable}" -c "import sys; from caffe.tools.cli import main; sys.exit(main())" "$@"'
    return _caffe_env(tmp_path, run)


def _layout(base: Path, *files: str) -> Path:
    for f in files:
        (base / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, base / f)
    return base


def _run(root: Path, script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"./{script}", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_executable_bash(script: str):
    path = ROOT / script
    assert os.access(path, os.X_OK)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -e\n" in text
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0


@pytest.mark.parametrize("script", TRAIN_SCRIPTS)
def test_script_calls_caffe_train(script: str, tmp_path: Path):
    """The calls (recorded by a stand-in ``caffe``), arguments passed on; resumes name the state written before."""
    solvers = TRAIN_SCRIPTS[script]
    root = _layout(tmp_path / "root", script, *solvers)
    calls = tmp_path / "calls"
    env = _caffe_env(tmp_path, f'for a in "$@"; do printf "%s|" "$a"; done >> "{calls}"; echo >> "{calls}"')
    got = _run(root, script, env, "--gpu=0", "--stage=a b")
    assert got.returncode == 0, got.stderr
    expected = []
    for i, solver in enumerate(solvers):
        resume = []
        if i:  # from the previous stage's last snapshot
            last = read_text(ROOT / solvers[i - 1], pb.SolverParameter()).max_iter
            resume = [f"--snapshot={_state_file(solvers[i - 1], last)}"]
        elif script.endswith("resume_training.sh"):
            resume = [f"--snapshot={_state_file(solver, 10000)}"]
        expected.append(["train", f"--solver={solver}", *resume, "--gpu=0", "--stage=a b"])
    assert [line.split("|")[:-1] for line in calls.read_text().splitlines()] == expected


def test_scripts_say_to_run_from_the_caffe_root(tmp_path: Path):
    env = _caffe_env(tmp_path, "exit 3")
    for script in (
        "examples/mnist/train_lenet.sh",
        "examples/cifar10/train_quick.sh",
        "examples/cifar10/create_cifar10.sh",
    ):
        got = subprocess.run([str(ROOT / script)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
        assert got.returncode == 1 and "run this script from the Caffe root" in got.stderr, script


def test_create_cifar10_then_the_quick_net_reads_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """create_cifar10.sh on small batch files (the real ones hold 10,000 images each)."""
    root = _layout(
        tmp_path / "root", "examples/cifar10/create_cifar10.sh", "examples/cifar10/cifar10_quick_train_test.prototxt"
    )
    data = root / "data" / "cifar10"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        records = rng.integers(0, 256, (8, 1 + 3 * 32 * 32), dtype=np.uint8)
        records[:, 0] %= 10
        (data / f"{name}.bin").write_bytes(records.tobytes())
        images[name] = records[:, 1:].reshape(-1, 3, 32, 32)
    got = _run(root, "examples/cifar10/create_cifar10.sh", _real_caffe(tmp_path))
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.splitlines() == ["Creating lmdb...", "Computing image mean...", "Done."]
    example = root / "examples" / "cifar10"
    for db, n in (("cifar10_train_lmdb", 40), ("cifar10_test_lmdb", 8)):
        with open_db(example / db, "lmdb") as d:
            assert len(d) == n
    blob = read_binary(example / "mean.binaryproto", pb.BlobProto())
    mean = np.array(blob.data, np.float32).reshape(blob.num, blob.channels, blob.height, blob.width)
    train = np.concatenate([images[f"data_batch_{i}"] for i in range(1, 6)]).astype(np.float64)
    np.testing.assert_allclose(mean[0], train.mean(axis=0), atol=1e-3)

    monkeypatch.chdir(root)  # the net's sources and mean file are relative to the Caffe root
    net = caffe.Net("examples/cifar10/cifar10_quick_train_test.prototxt", caffe.TEST)
    net.forward()
    assert net.blobs["data"].shape == (100, 3, 32, 32)
    np.testing.assert_allclose(net.blobs["data"].data[0], images["test_batch"][0] - mean[0], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# the MNIST tutorial, end to end

TUTORIAL = [
    "data/mnist/get_mnist.sh",
    "examples/mnist/create_mnist.sh",
    "examples/mnist/train_lenet.sh",
    "examples/mnist/lenet_solver.prototxt",
    "examples/mnist/lenet_train_test.prototxt",
]


def test_mnist_tutorial(tmp_path: Path):
    """The three commands from the Caffe root, the solver shortened to 100 iterations (seeded)."""
    root = _layout(tmp_path / "root", *TUTORIAL, "examples/mnist/lenet.prototxt")
    env = _real_caffe(tmp_path)
    solver_file = root / "examples/mnist/lenet_solver.prototxt"
    solver = read_text(solver_file, pb.SolverParameter())
    solver.max_iter, solver.snapshot, solver.test_interval, solver.random_seed = 100, 50, 100, 1701
    solver.test_initialization = False
    write_text(solver_file, solver)  # solver_mode stays GPU: the CPU is used where there is no CUDA

    got = _run(root, TUTORIAL[0], {**env, "CAFFE_DATA_MIRROR": str(asset("mnist"))})
    assert got.returncode == 0, got.stdout + got.stderr
    got = _run(root, TUTORIAL[1], env)
    assert got.returncode == 0, got.stdout + got.stderr
    got = _run(root, TUTORIAL[2], env)
    log = got.stdout + got.stderr
    assert got.returncode == 0, log

    for line in (
        "Solving LeNet",
        "Learning Rate Policy: inv",
        "Iteration 0, lr = 0.01",
        "Iteration 100, Testing net (#0)",
        "Snapshotting to binary proto file examples/mnist/lenet_iter_50.caffemodel",
        "Snapshotting solver state to binary proto file examples/mnist/lenet_iter_100.solverstate",
        "Optimization Done.",
    ):
        assert line in log
    import torch

    if not torch.cuda.is_available():
        assert "Use CPU." in log
    accuracy = [float(v) for v in re.findall(r"Test net output #0: accuracy = ([0-9.]+)", log)]
    assert len(accuracy) == 1 and accuracy[0] > 0.9, accuracy
    assert re.search(r"Test net output #1: loss = [0-9.]+ \(\* 1 = [0-9.]+ loss\)", log)
    example = root / "examples" / "mnist"
    snapshots = sorted(p.name for p in example.glob("lenet_iter_*"))
    assert snapshots == [f"lenet_iter_{i}.{ext}" for i in (100, 50) for ext in ("caffemodel", "solverstate")]
    state = read_binary(example / "lenet_iter_100.solverstate", pb.SolverState())
    assert (state.iter, state.learned_net) == (100, "examples/mnist/lenet_iter_100.caffemodel")

    # the trained weights in the deploy net, on the first 64 test digits
    net = caffe.Net(str(example / "lenet.prototxt"), caffe.TEST, weights=str(example / "lenet_iter_100.caffemodel"))
    raw = (root / "data/mnist/t10k-images-idx3-ubyte").read_bytes()
    digits = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:64]
    labels = np.frombuffer((root / "data/mnist/t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)[:64]
    net.blobs["data"].data[...] = digits * np.float32(1 / 256)
    assert (net.forward()["prob"].argmax(axis=1) == labels).mean() > 0.85
