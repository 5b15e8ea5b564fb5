"""Training speed: neocaffe's solver against the same net and update as a plain PyTorch loop, on one device.

    python benchmarks/train.py [--iters 60] [--rounds 3] [--no-write] [--device cuda] [--out FILE]

LeNet on MNIST (Caffe's lenet_train_test.prototxt and lenet_solver.prototxt, batch 64, the data
from an LMDB through the Data layer) and CaffeNet (caffe-ref bvlc_reference_caffenet/train_val.prototxt
with random weights from its fillers, batch 32, DummyData input). The peer is the same network
written as a torch.nn module, trained with torch.optim.SGD (momentum, weight decay, the per-layer
learning-rate multipliers as parameter groups) on tensors already in memory. Rounds alternate
between the two; medians are reported; the table goes to docs/benchmarks.md (``--device cuda``: both on
GPU 0, timed between ``torch.cuda.synchronize()`` calls, in a section of its own).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from common import assets_dir, machine_info, median, write_docs_section
from google.protobuf import text_format

import caffe
from caffe.data.datum import array_to_datum
from caffe.data.db import item_key, open_db
from caffe.proto import caffe_pb2 as pb

SECTION = "## Training"
GPU_SECTION = "## Training, GPU"


def drop_test_layers(net: pb.NetParameter) -> None:
    keep = [layer for layer in net.layer if not any(r.phase == pb.TEST for r in layer.include)]
    del net.layer[:]
    net.layer.extend(keep)


# ---------------------------------------------------------------------------- LeNet
def mnist_lmdb(folder: Path, count: int = 6400) -> tuple[Path, np.ndarray, np.ndarray]:
    with gzip.open(assets_dir() / "mnist" / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:count]
    with gzip.open(assets_dir() / "mnist" / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    path = folder / "mnist_lmdb"
    with open_db(path, "lmdb", "new") as db:
        txn = db.transaction()
        for i, (im, lb) in enumerate(zip(images, labels, strict=True)):
            txn.put(item_key(i, ""), array_to_datum(im, int(lb)).SerializeToString())
        txn.commit()
    return path, images, labels


def use_device(device: torch.device) -> None:
    """Let the solvers built from now on run on ``device`` (neocaffe's mode and GPU id)."""
    if device.type == "cuda":
        caffe.set_device(device.index or 0)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()


def sync(device: torch.device | None) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def device_info(device: torch.device) -> str:
    """The device's description for the report."""
    info = machine_info()
    if device.type != "cuda":
        return f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}."
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    return (
        f"GPU: {torch.cuda.get_device_name(device)}; torch {info['torch']}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}; TF32 allowed for convolutions {tf32[0]}, matmuls {tf32[1]} "
        "(PyTorch's defaults, the same for both columns)."
    )


def lenet_solver(db: Path) -> caffe.Solver:
    net = text_format.Parse(
        (assets_dir() / "caffe-ref/examples/mnist/lenet_train_test.prototxt").read_text(), pb.NetParameter()
    )
    drop_test_layers(net)
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(db)
    solver = text_format.Parse(
        (assets_dir() / "caffe-ref/examples/mnist/lenet_solver.prototxt").read_text(), pb.SolverParameter()
    )
    solver.ClearField("net")
    solver.ClearField("test_iter")
    solver.ClearField("test_interval")
    solver.net_param.CopyFrom(net)
    solver.display = 0
    solver.snapshot = 0
    solver.solver_mode = pb.SolverParameter.CPU
    return caffe.get_solver(solver)


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.ip1, self.ip2 = nn.Linear(800, 500), nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2, 2)
        x = F.max_pool2d(self.conv2(x), 2, 2)
        return self.ip2(F.relu(self.ip1(x.flatten(1))))


# ---------------------------------------------------------------------------- CaffeNet
def caffenet_solver(batch: int) -> caffe.Solver:
    net = text_format.Parse(
        (assets_dir() / "caffe-ref/models/bvlc_reference_caffenet/train_val.prototxt").read_text(), pb.NetParameter()
    )
    drop_test_layers(net)
    for layer in net.layer:
        if layer.type == "Data":
            tops, name = list(layer.top), layer.name
            layer.Clear()
            layer.name, layer.type = name, "DummyData"
            layer.top.extend(tops)
            p = layer.dummy_data_param
            p.shape.add().dim.extend([batch, 3, 227, 227])
            p.shape.add().dim.append(batch)
            p.data_filler.add(type="constant", value=1.0)
            p.data_filler.add(type="constant", value=3.0)
    solver = pb.SolverParameter(
        base_lr=0.01,
        lr_policy="step",
        gamma=0.1,
        stepsize=100000,
        momentum=0.9,
        weight_decay=0.0005,
        max_iter=1000,
        solver_mode=pb.SolverParameter.CPU,
    )
    solver.net_param.CopyFrom(net)
    return caffe.get_solver(solver)


class CaffeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.fc6, self.fc7, self.fc8 = nn.Linear(9216, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000)
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrn(F.max_pool2d(F.relu(self.conv1(x)), 3, 2, ceil_mode=True))
        x = self.lrn(F.max_pool2d(F.relu(self.conv2(x)), 3, 2, ceil_mode=True))
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        x = F.max_pool2d(F.relu(self.conv5(x)), 3, 2, ceil_mode=True).flatten(1)
        x = F.dropout(F.relu(self.fc6(x)), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return self.fc8(x)


def torch_step_fn(model: nn.Module, lr: float, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """One SGD iteration of the plain PyTorch peer: weights lr x1 / decay x1, biases lr x2 / decay x0."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": weights, "lr": lr, "weight_decay": 0.0005}, {"params": biases, "lr": 2 * lr, "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
    )
    state = {"i": 0}

    def step() -> None:
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def rate(step, iters: int, device: torch.device | None = None) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return iters / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=60, help="LeNet iterations per round (CaffeNet: iters / 20)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both sides train")
    parser.add_argument("--out", type=Path, help="also write the section (markdown) to this file")
    args = parser.parse_args(argv)
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(2)
    caffe.set_random_seed(0)
    use_device(device)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        db, images, labels = mnist_lmdb(Path(tmp))
        solver = lenet_solver(db)
        assert solver.net.device.type == device.type, f"neocaffe's net is on {solver.net.device}, not {device}"
        x = torch.from_numpy(images.astype(np.float32) * 0.00390625).to(device)
        y = torch.from_numpy(labels.astype(np.int64)).to(device)
        batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x) - 63, 64)]
        plain = torch_step_fn(LeNet().to(device), 0.01, batches)
        solver.step(5)
        plain()
        ours, peer = [], []
        for r in range(args.rounds):
            ours.append(rate(lambda: solver.step(1), args.iters, device))
            peer.append(rate(plain, args.iters, device))
            print(f"LeNet round {r + 1}: neocaffe {ours[-1]:.1f} it/s, plain PyTorch {peer[-1]:.1f} it/s", flush=True)
        results["LeNet (MNIST, batch 64)"] = (ours, peer)
    solver = caffenet_solver(32)
    assert solver.net.device.type == device.type, f"neocaffe's net is on {solver.net.device}, not {device}"
    model = CaffeNet().to(device)
    xb = torch.ones(32, 3, 227, 227, device=device)
    yb = torch.full((32,), 3, dtype=torch.int64, device=device)
    plain = torch_step_fn(model, 0.01, [(xb, yb)])
    solver.step(1)
    plain()
    ours, peer = [], []
    n = max(2, args.iters // 20)
    for r in range(args.rounds):
        ours.append(rate(lambda: solver.step(1), n, device))
        peer.append(rate(plain, n, device))
        print(f"CaffeNet round {r + 1}: neocaffe {ours[-1]:.2f} it/s, plain PyTorch {peer[-1]:.2f} it/s", flush=True)
    results["CaffeNet (batch 32, random weights)"] = (ours, peer)

    gpu = device.type == "cuda"
    lines = [
        GPU_SECTION if gpu else SECTION,
        "",
        f"Reproduce with `python benchmarks/train.py{' --device cuda' if gpu else ''}`. {device_info(device)}",
        ("Both sides on the same GPU, timed between `torch.cuda.synchronize()` calls. " if gpu else "")
        + "Training iterations per second (forward, backward and the solver's update), medians of "
        f"{args.rounds} alternating rounds. neocaffe: `caffe.get_solver(...)` + `step(1)` on Caffe's own "
        "prototxts (LeNet reads its batches from an LMDB through the Data layer; CaffeNet uses DummyData). "
        "Peer: the same network as a `torch.nn` module with `torch.optim.SGD` (momentum 0.9, weight decay, "
        "biases at 2x lr) on tensors already in memory.",
        "",
        "| model | neocaffe it/s | plain PyTorch it/s | neocaffe / PyTorch |",
        "|---|---|---|---|",
    ]
    for name, (ours, peer) in results.items():
        ratio = median([o / p for o, p in zip(ours, peer, strict=True)])
        lines.append(f"| {name} | {median(ours):.2f} | {median(peer):.2f} | {ratio:.2f}x |")
    lines.append("")
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    if not args.no_write:
        write_docs_section(lines[0], "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
