"""Training on several processes (issue 13): Caffe's multi-GPU semantics on torch.distributed, CPU and gloo.

Two ranks with batch B must end with the weights of one process with batch 2B: the exchange averages the
diffs before clipping, iter_size normalization and weight decay. Rank 0 alone logs, tests and snapshots; a
lost rank ends the others with an error naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_cli_train import blobs, caffe_cmd, env, messages, mnist, write_solver  # noqa: F401  (fixture)

from caffe import parallel
from caffe.tools import train as train_tool

# A net fed by Input blobs the script fills: rank r of N takes rows r*B..(r+1)*B of each fixed 2B batch.
NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: %(b)d dim: 1 dim: 8 dim: 8 } shape { dim: %(b)d } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

SCRIPT = """
import multiprocessing as mp
import sys

import numpy as np

import caffe
from caffe import parallel


def train(solver, folder, batch, iters, rank, size):
    rng = np.random.RandomState(7)
    for it in range(iters):
        x = rng.randn(2 * batch, 1, 8, 8).astype(np.float32)
        y = rng.randint(0, 3, len(x)).astype(np.float32)
        lo, hi = rank * len(x) // size, (rank + 1) * len(x) // size
        solver.net.blobs["data"].data[...] = x[lo:hi]
        solver.net.blobs["label"].data[...] = y[lo:hi]
        solver.step(1)
    np.savez(f"{folder}/rank{rank}_of{size}.npz", *[b.data for b in solver.net.learnable_params])


def pycaffe_rank(folder, batch, iters, uid, rank, size):  # the flow of Caffe's python/train.py
    caffe.init_log()
    caffe.set_solver_count(size)
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)
    solver = caffe.get_solver(folder + "/solver.prototxt")
    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()
    solver.add_callback(nccl)
    train(solver, folder, batch, iters, rank, size)


if __name__ == "__main__":
    folder, batch, iters, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if how == "pycaffe":
        uid = caffe.NCCL.new_uid()
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=pycaffe_rank, args=(folder, batch, iters, uid, r, 2)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        sys.exit(max(p.exitcode for p in procs))
    caffe.init_log()
    rank, size = parallel.init("cpu")
    train(caffe.get_solver(folder + "/solver.prototxt"), folder, batch, iters, rank, size)
    parallel.shutdown()
"""

SOLVER = """net: "%(net)s"
base_lr: 0.1
momentum: 0.9
weight_decay: 0.01
lr_policy: "fixed"
display: 0
max_iter: 1000
random_seed: 5
iter_size: %(iter_size)d
clip_gradients: %(clip)s
"""


def _torchrun(nproc: int, *args: str) -> list[str]:
    """torchrun's command line, run in a test's folder: its agent's log folder goes there too (by default a
    new ``torchelastic_*`` folder in the temporary folder per run, never removed)."""
    start = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*start, "--log-dir=torchrun-logs", *args]


def _run(cmd: list[str], folder: Path, *path: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in ``folder`` (``path`` added to PYTHONPATH); it must succeed (its stderr tail is the
    message when it does not)."""
    environ = env()
    environ["PYTHONPATH"] = os.pathsep.join([*path, environ["PYTHONPATH"]])
    proc = subprocess.run(cmd, cwd=folder, env=environ, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _tiny(folder: Path, batch: int, iter_size: int, clip: float) -> None:
    (folder / "net.prototxt").write_text(NET % {"b": batch})
    (folder / "solver.prototxt").write_text(
        SOLVER % {"net": folder / "net.prototxt", "iter_size": iter_size, "clip": clip}
    )
    (folder / "script.py").write_text(SCRIPT)


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def _close(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("iter_size", "clip", "how"),
    [(1, -1.0, "torchrun"), (2, 0.05, "torchrun"), (2, 0.05, "pycaffe")],
)
def test_two_ranks_of_batch_b_train_as_one_process_of_batch_2b(tmp_path: Path, iter_size: int, clip: float, how: str):
    """Through torchrun, or pycaffe's ``set_solver_count``/``set_solver_rank``/``NCCL`` as Caffe's
    ``python/train.py`` uses them."""
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, batch in ((one, 8), (two, 4)):
        folder.mkdir()
        _tiny(folder, batch, iter_size, clip)
    iters = "15"
    _run([sys.executable, str(one / "script.py"), str(one), "4", iters, "alone"], one)
    script = [str(two / "script.py"), str(two), "4", iters, how]
    pair = _run(_torchrun(2, *script) if how == "torchrun" else [sys.executable, *script], two)
    if clip > 0:
        assert "Gradient clipping: scaling down gradients" in pair.stderr
    ref = _weights(one / "rank0_of1.npz")
    r0, r1 = _weights(two / "rank0_of2.npz"), _weights(two / "rank1_of2.npz")
    for a, b in zip(r0, r1, strict=True):
        assert a.tobytes() == b.tobytes()  # every rank holds bitwise the same weights
    assert _close(r0, ref) <= 1e-5


def test_python_layers_train_on_every_rank(tmp_path: Path):
    """Each rank imports the Python layer's module (Caffe's CLI refuses Python layers with several GPUs): a
    learnable per-channel scale written in Python trains on 2 ranks as in one process of double batch."""
    one, two = tmp_path / "one", tmp_path / "two"
    scale = """layer { name: "scale" type: "Python" bottom: "ip" top: "scaled"
        python_param { module: "pylayers.scale_layers" layer: "LearnedScale" } }
layer { name: "loss" """
    for folder, batch in ((one, 8), (two, 4)):
        folder.mkdir()
        _tiny(folder, batch, 1, -1.0)
        net = folder / "net.prototxt"
        net.write_text(
            net.read_text()
            .replace('layer { name: "loss" ', scale, 1)
            .replace('"ip" bottom: "label"', '"scaled" bottom: "label"')
        )
    tests = str(Path(__file__).parent)
    _run([sys.executable, str(one / "script.py"), str(one), "4", "8", "alone"], one, tests)
    _run(_torchrun(2, str(two / "script.py"), str(two), "4", "8", "torchrun"), two, tests)
    ref = _weights(one / "rank0_of1.npz")
    r0, r1 = _weights(two / "rank0_of2.npz"), _weights(two / "rank1_of2.npz")
    assert len(ref) == 5  # conv (2), ip (2), the Python layer's scale
    assert all(a.tobytes() == b.tobytes() for a, b in zip(r0, r1, strict=True))
    assert not np.allclose(ref[4], 2.0) and _close(r0, ref) <= 1e-5  # the scale learned, the same on both


def _count(lines: list[str], prefix: str) -> int:
    return sum(line.startswith(prefix) for line in lines)


@pytest.mark.parametrize(
    ("iter_size", "clip", "dtype", "iters"),
    [(1, -1.0, "double", 60), (2, 0.5, "double", 60), (2, 0.5, "float", 10)],
)
def test_torchrun_lenet_matches_one_process_of_double_batch_and_logs_once(
    mnist: Path,  # noqa: F811
    iter_size: int,
    clip: float,
    dtype: str,
    iters: int,
):
    """``torchrun --nproc-per-node 2 -m caffe train``: the tutorial's LeNet with batch 32 per rank (data sharded
    by record) ends with the weights of one process with batch 64; rank 0 alone logs, tests and snapshots;
    under ``debug_info`` every rank checks that it holds rank 0's weights bitwise after each displayed
    iteration.

    60 iterations are compared in double precision (``--dtype double``): in float32 the two runs' gradients
    differ by summation order (~1e-7), and a MAX-pooling window whose two largest inputs lie that close
    (measured: -0.16487463 vs -0.16487466 in conv1 at iteration 14) sends its gradient to the other input in
    the other run, a real difference that momentum carries on (1e-3 by iteration 60; the same net with AVE
    pooling stays within 1.2e-6). Float32 is compared over 10 iterations, before any such flip.
    """
    runs = {}
    for name, batch, nproc in (("one", 64, 1), ("two", 32, 2)):
        folder = mnist / f"lenet_{name}_{iter_size}_{clip}_{dtype}"
        folder.mkdir()
        net = (mnist / "lenet_train_test.prototxt").read_text().replace("batch_size: 64", f"batch_size: {batch}")
        (folder / "net.prototxt").write_text(net)
        solver = write_solver(
            folder,
            "lenet",
            folder / "net.prototxt",
            max_iter=iters,
            snapshot=iters // 2,
            test_interval=iters // 2,
            display=iters // 2,
            random_seed=3,
            debug_info="true",
            iter_size=iter_size,
            clip_gradients=clip,
        )
        events = f"--events={folder / 'events.jsonl'}"
        args = ("-m", "caffe", "train", f"--solver={solver}", f"--dtype={dtype}", events)
        cmd = _torchrun(nproc, *args) if nproc > 1 else [sys.executable, *args]
        runs[name] = folder, messages(_run(cmd, folder).stderr)
    (one, single), (two, lines) = runs["one"], runs["two"]
    half = iters // 2
    for prefix in (
        "Solving LeNet",
        f"Iteration {half}, Testing net (#0)",
        f"Iteration {iters}, Testing net (#0)",
        f"Iteration {half} (",
        f"Iteration {half}, lr = ",
        "Snapshotting to binary proto file",
        "Optimization Done.",
        "Gradient clipping: scaling down gradients",
    ):
        assert _count(lines, prefix) == _count(single, prefix), prefix
    if clip > 0:
        assert _count(lines, "Gradient clipping: scaling down gradients") > 0
    kinds = [json.loads(line)["event"] for line in (two / "events.jsonl").read_text().splitlines()]
    assert kinds == [json.loads(line)["event"] for line in (one / "events.jsonl").read_text().splitlines()]
    assert kinds.count("start") == 1 and kinds.count("done") == 1  # rank 0 alone writes the event file
    names = sorted(p.name for p in two.glob("lenet_iter_*"))
    expected = sorted(f"lenet_iter_{i}.{ext}" for i in (half, iters) for ext in ("caffemodel", "solverstate"))
    assert names == expected
    ref, got = blobs(one / f"lenet_iter_{iters}.caffemodel"), blobs(two / f"lenet_iter_{iters}.caffemodel")
    assert ref.keys() == got.keys()
    assert _close([w for k in got for w in got[k]], [w for k in ref for w in ref[k]]) <= 1e-5


@contextlib.contextmanager
def _two_ranks(folder: Path, *args: str) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[Path]]]:
    """Two ``caffe train`` processes joined by hand (torchrun's environment, no agent), logging to files;
    whichever still runs at the end is killed."""
    port = parallel.new_address().rpartition(":")[2]
    logs = [folder / f"rank{rank}.log" for rank in (0, 1)]
    procs = []
    for rank in (0, 1):
        rank_env = {
            **env(),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        with logs[rank].open("w") as out:
            procs.append(subprocess.Popen(caffe_cmd("train", *args), cwd=folder, env=rank_env, stdout=out, stderr=out))
    try:
        yield procs, logs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _wait_for(text: str, log: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def _endless(folder: Path, data: Path) -> Path:
    folder.mkdir()
    return write_solver(
        folder,
        "lenet",
        data / "lenet_train_test.prototxt",
        max_iter=100000,
        snapshot=0,
        test_interval=100000,
        display=5,
    )


def test_a_killed_rank_ends_the_other_with_an_error_naming_it(mnist: Path):  # noqa: F811
    folder = mnist / "killed"
    solver = _endless(folder, mnist)
    with _two_ranks(folder, f"--solver={solver}") as ((root, other), logs):
        _wait_for("Iteration 5 (", logs[0], root)
        other.kill()
        other.wait(30)
        killed_at = time.monotonic()
        root.wait(90)
        assert time.monotonic() - killed_at < 60
    assert root.returncode == 1
    last = logs[0].read_text().strip().splitlines()[-1]
    assert "rank 0: lost rank 1 during " in last, last


def test_sigint_to_one_rank_stops_all_after_a_snapshot(mnist: Path):  # noqa: F811
    folder = mnist / "sigint"
    solver = _endless(folder, mnist)
    with _two_ranks(folder, f"--solver={solver}") as ((root, other), logs):
        _wait_for("Iteration 5 (", logs[0], root)
        other.send_signal(signal.SIGINT)  # not the rank that logs: the request still reaches rank 0
        assert root.wait(60) == 0 and other.wait(60) == 0, logs[0].read_text()[-3000:]
    lines = messages(logs[0].read_text())
    assert _count(lines, "Optimization stopped early.") == 1
    assert len(list(folder.glob("lenet_iter_*.caffemodel"))) == 1 and not messages(logs[1].read_text())


def test_two_ranks_resume_bit_identical(mnist: Path):  # noqa: F811
    """A 2-rank LeNet run of 60 iterations resumed from its ``_iter_30`` snapshot ends bitwise where the
    uninterrupted one does (weights, history, data position and the ranks' shards)."""
    folder = mnist / "resume"
    folder.mkdir()
    solver = write_solver(
        folder,
        "lenet",
        mnist / "lenet_train_test.prototxt",
        max_iter=60,
        snapshot=30,
        test_interval=100000,
        display=30,
        random_seed=3,
    )
    _run(_torchrun(2, "-m", "caffe", "train", f"--solver={solver}"), folder)
    final = (folder / "lenet_iter_60.caffemodel").read_bytes()
    (folder / "lenet_iter_60.caffemodel").unlink()
    state = folder / "lenet_iter_30.solverstate"
    resumed = _run(_torchrun(2, "-m", "caffe", "train", f"--solver={solver}", f"--snapshot={state}"), folder)
    assert _count(messages(resumed.stderr), "Resuming from") == 1
    assert (folder / "lenet_iter_60.caffemodel").read_bytes() == final


def test_gpu_list_starts_one_process_per_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``--gpu 0,1`` hands the flags to one process per GPU (up to where CUDA is needed)."""
    started: list[tuple[int, object]] = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(train_tool, "_gpu_ids", lambda spec: [0, 1])
    monkeypatch.setattr(train_tool.torch.cuda, "get_device_name", lambda i: f"fake {i}")
    monkeypatch.setattr(parallel, "launch", lambda n, target: started.append((n, target)) or 0)
    solver = tmp_path / "s.prototxt"
    solver.write_text('net: "n.prototxt"\n')
    assert train_tool.train([f"--solver={solver}", "--gpu=0,1"]) == 0
    [(n, target)] = started
    assert n == 2 and target.args == ([f"--solver={solver}", "--gpu=0,1"],)  # type: ignore[attr-defined]


def test_launch_runs_ranks_that_join_one_group(mnist: Path):  # noqa: F811
    """The launcher behind ``--gpu 0,1``, on the CPU: two ranks train together, rank 0 snapshots once."""
    folder = mnist / "launched"
    folder.mkdir()
    solver = write_solver(
        folder, "lenet", mnist / "lenet_train_test.prototxt", max_iter=6, snapshot=0, test_interval=100000, display=3
    )
    code = f"""
import functools, sys
from caffe import parallel
from caffe.tools import train
sys.exit(parallel.launch(2, functools.partial(train._rank_main, ["--solver={solver}"])))
"""
    lines = messages(_run([sys.executable, "-c", code], folder).stderr)
    assert _count(lines, "Solving LeNet") == 1 and _count(lines, "Iteration 3 (") == 1
    assert [p.name for p in folder.glob("lenet_iter_*.caffemodel")] == ["lenet_iter_6.caffemodel"]


# ---------------------------------------------------------------------------- CUDA (skipped without a GPU)
from conftest import requires_gpu  # noqa: E402

NCCL_SCRIPT = """
import datetime, sys
import torch
import torch.distributed as dist
from caffe import parallel

torch.cuda.set_device(0)
dist.init_process_group(
    "nccl", store=dist.FileStore(sys.argv[1], 1), rank=0, world_size=1, timeout=datetime.timedelta(seconds=60)
)
assert dist.get_backend() == "nccl" and parallel.world() == (0, 1) and parallel.joined()
dev = torch.device("cuda", 0)
for dtype in (torch.float32, torch.float64):
    a = torch.arange(6, dtype=dtype, device=dev).reshape(2, 3)
    b = torch.full((4,), 2.5, dtype=dtype, device=dev)
    want = [a.clone(), b.clone()]
    parallel.broadcast([a, b])
    parallel.average([a, b])
    parallel.check_identical([a, b], "the test tensors")
    assert a.device == dev and b.device == dev
    assert all(torch.equal(x, y) for x, y in zip([a, b], want))
assert parallel.max_over_ranks(3) == 3
parallel.barrier()
dist.destroy_process_group()
print("NCCL world of 1: broadcast, average, check_identical, max_over_ranks, barrier on", torch.cuda.get_device_name(0))
"""


@requires_gpu
def test_cuda_nccl_one_rank_exchanges_cuda_tensors(tmp_path: Path):
    """caffe.parallel's collectives on CUDA tensors in an NCCL process group of one rank (``WORLD_SIZE=1``
    makes ``parallel.init`` a no-op, so the group is made with torch.distributed directly)."""
    (tmp_path / "nccl.py").write_text(NCCL_SCRIPT)
    proc = _run([sys.executable, str(tmp_path / "nccl.py"), str(tmp_path / "store")], tmp_path)
    assert "NCCL world of 1:" in proc.stdout


@requires_gpu
def test_cuda_two_ranks_sharing_one_gpu_through_gloo_match_one_gpu_process_of_double_batch(
    mnist: Path,  # noqa: F811
):
    """``torchrun --nproc-per-node 2 -m caffe train --gpu 0`` on a machine with one GPU: both ranks take GPU 0
    and, without a GPU each, join through gloo (exchanging CUDA tensors); LeNet with batch 32 per rank ends
    with the weights of one GPU process of batch 64, in float32 over 20 iterations (see the docstring of
    ``test_torchrun_lenet_matches_one_process_of_double_batch_and_logs_once`` for why not longer); under
    ``debug_info`` every rank checks after each iteration that it holds rank 0's weights bitwise."""
    iters, runs = 20, {}
    fields = {"max_iter": iters, "snapshot": iters, "test_interval": iters, "display": 10, "debug_info": "true"}
    text = (mnist / "lenet_train_test.prototxt").read_text()
    for name, batch, nproc in (("one", 64, 1), ("two", 32, 2)):
        folder = mnist / f"cuda_gloo_{name}"
        folder.mkdir()
        (folder / "net.prototxt").write_text(text.replace("batch_size: 64", f"batch_size: {batch}"))
        solver = write_solver(folder, "lenet", folder / "net.prototxt", random_seed=3, **fields)
        args = ("-m", "caffe", "train", f"--solver={solver}", "--gpu=0")
        cmd = _torchrun(nproc, *args) if nproc > 1 else [sys.executable, *args]
        runs[name] = folder, messages(_run(cmd, folder).stderr)
    (one, _), (two, lines) = runs["one"], runs["two"]
    ranks = [line for line in lines if line.startswith("Rank ")]
    assert sorted(line.split(":")[0] for line in ranks) == ["Rank 0 of 2", "Rank 1 of 2"], ranks
    assert all(": GPU 0 (" in line and line.endswith(", gloo backend") for line in ranks), ranks
    assert _count(lines, "Optimization Done.") == 1
    ref, got = blobs(one / f"lenet_iter_{iters}.caffemodel"), blobs(two / f"lenet_iter_{iters}.caffemodel")
    assert ref.keys() == got.keys()
    worst = _close([w for k in got for w in got[k]], [w for k in ref for w in ref[k]])
    print(f"2 gloo ranks on one GPU vs 1 GPU process, {iters} iterations: max|Δw|/max|w| = {worst:.3e}")
    assert worst <= 1e-4
